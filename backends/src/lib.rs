//! The boundaries between the pipeline and the services it stands on, one trait each, with
//! their embedded implementations (the one-process default) and the resolver that picks an
//! implementation from a URL.
//!
//! - `log`: [`MessageLog`], partitioned, durable, with consumer groups (Kafka, embedded).
//! - `store`: [`MessageStore`], the query-first tables of ARCHITECTURE.md (ScyllaDB, embedded SQLite),
//!   and [`MediaCatalog`], the uploads.
//! - `cache`: [`Presence`], [`RecentMessages`], [`RateLimiter`], [`IdempotencyKeys`] (Redis, in-process).
//! - `devices`: [`DeviceRegistry`], the devices registered for push notifications.
//! - `blob`: [`BlobStore`], media files by key (S3 with feature `s3`, a local directory).
//! - `media_links`: media objects as clients see them, with signed URLs.
//! - `bus`: [`DeliveryBus`], how the router reaches the deliverer node holding a socket.
//! - `status_writer`: batches receipts and failures into appends to the status topic.
//! - `freshness`: read-your-writes, by waiting for the store projection to pass the log's head.
//! - `resolver`: `ESH_LOG`, `ESH_STORE`, `ESH_CACHE`, `ESH_BLOBS` URLs → implementations.
//! - `testsuite` (feature `testsuite`): one conformance suite per trait, run against every implementation.

pub mod blob;
pub mod bus;
pub mod cache;
pub mod devices;
pub mod error;
pub mod freshness;
pub mod log;
pub mod media_links;
pub mod resolver;
pub mod status_writer;
pub mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use blob::{BlobStore, ByteStream};
pub use bus::{DeliveryBus, NodeEvent, NodeId};
pub use devices::{DeviceOutcome, DeviceRegistry, Registered};
pub use cache::{Claim, IdempotencyKeys, Presence, RateDecision, RateLimiter, RecentMessages, StoredAnswer};
pub use error::{BackendError, ErrorKind};
pub use log::{Consumed, LogConsumer, MessageLog, Record};
pub use store::{IdempotencyRecord, LogPosition, MediaCatalog, MessageStore, OneWayRole, Projection};
