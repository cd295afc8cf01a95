//! The steps of a run, as library functions over parsed settings: convert, quantize,
//! calibrate, imatrix and verify.
//!
//! Each step takes its settings (the `*Args` structs of [`crate::cli`]: `qforge <command>`
//! parses them once from its arguments, and a recipe builds the same structs in
//! [`from_recipe`]) and returns what it did. The commands ([`crate::commands`]) and the
//! pipeline both call these; commands do not call each other's entry points.

pub mod calibrate;
pub mod convert;
pub mod eval;
pub mod from_recipe;
pub mod imatrix;
pub mod quantize;
pub mod verify;
