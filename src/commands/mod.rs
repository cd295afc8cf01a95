//! One module per subcommand.

pub mod bench;
pub mod convert;
pub mod inspect;
pub mod perplexity;
pub mod pipeline;
pub mod plan;
pub mod quantize;
pub mod verify;
