//! Shared vocabulary of every Esh3ar stage: ids, times, the message model and its status
//! state machine, the retry schedule, the public error type, tokens and topic names.
//!
//! Nothing here does I/O. `model` holds the types the contract (API.md) speaks of,
//! `status` the forward-only status rules, `retry` the delivery backoff, `error` the
//! `{"error": {...}}` answer, `records` what the log carries (the wire format itself is
//! `esh-schemas`'), `auth` user tokens (the platform's HS256, identity providers'
//! RS256/ES256 keys parsed from bytes the binary reads), `telemetry` the metrics every stage
//! records and the one recorder they go to.

pub mod auth;
pub mod error;
pub mod health;
pub mod ingress;
pub mod ids;
pub mod model;
pub mod records;
pub mod retry;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod topics;
pub mod view;

pub use error::{ApiError, ErrorCode};
pub use model::*;
pub use status::Status;
pub use time::Millis;
