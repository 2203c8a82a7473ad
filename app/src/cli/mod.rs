//! Command-line options of the binaries.
//!
//! - [`gateway`]: the gateway options shared by `roomcast` and `roomcast-gateway`, the data
//!   directory and token minting.
//! - [`worker`]: `roomcast-worker` and its `replay` subcommand.

pub mod gateway;
pub mod worker;
