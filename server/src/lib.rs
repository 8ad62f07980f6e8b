//! The one binary of Esh3ar. `esh` (or `esh serve`) runs every stage of the pipeline in one
//! process on the embedded backends; the other subcommands are small clients of the API.
//!
//! - `config`: [`Config`], the `ESH_*` variables and their flags.
//! - `secrets`: the admin token and HS256 secret, generated at first start and kept in the
//!   data directory.
//! - `platform`: [`Platform`], which wires backends, the status writer, the deliverer, the
//!   router and the HTTP listener together and stops them in order.
//!
//! The binary (`main.rs`) adds signal handling, logging and the client commands
//! (`client.rs`). The end-to-end tests under `tests/` start a [`Platform`] in-process, or
//! the real binary for crash and shutdown tests.

pub mod config;
pub mod platform;
mod push;
pub mod secrets;

pub use config::{Config, Stage};
pub use platform::{Platform, PlatformError};
