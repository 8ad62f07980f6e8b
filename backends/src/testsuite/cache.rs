//! Conformance of `Presence`, `RecentMessages`, `RateLimiter` and `IdempotencyKeys`.
