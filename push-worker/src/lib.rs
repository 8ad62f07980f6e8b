//! push-worker
