//! Conformance suites, one per boundary trait, each exported as one macro that expands to
//! one `#[tokio::test]` per property, so every implementation runs every property:
//! [`log_suite!`](crate::log_suite), [`store_suite!`](crate::store_suite),
//! [`cache_suite!`](crate::cache_suite), [`bus_suite!`](crate::bus_suite). The embedded
//! implementations run them in this crate's tests; the Kafka log runs the log suite on
//! librdkafka's mock cluster and on a real broker (`tansu`).

pub mod blob;
pub mod bus;
pub mod cache;
pub mod devices;
pub mod fixtures;
pub mod kafka;
pub mod log;
pub mod store;
