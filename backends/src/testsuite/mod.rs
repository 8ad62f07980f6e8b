//! Conformance suites: each takes a factory for a fresh instance of one trait and checks
//! the contract every implementation must keep. The embedded implementations run them in
//! this crate's tests; real backends run them against real servers (`ESH_TEST_*` URLs).

pub mod blob;
pub mod cache;
pub mod fixtures;
pub mod log;
pub mod store;
