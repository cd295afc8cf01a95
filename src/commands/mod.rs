//! One module per subcommand.

pub mod bench;
pub mod convert;
pub mod inspect;
pub mod quantize;
