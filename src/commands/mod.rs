//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod imatrix;
pub mod inspect;
pub mod perplexity;
pub mod pipeline;
pub mod plan;
pub mod quantize;
pub mod verify;
