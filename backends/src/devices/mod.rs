//! The device registry: which devices each user has registered for push notifications
//! (API.md "Devices and preferences", Req 3.1) and how each one fares with its provider
//! (Req 3.5). Keyed for a query-first store: devices by user (the fan-out of a push, `GET
//! /v1/devices`) and the one owner of each token (a token moves to whoever registers it).

use async_trait::async_trait;
use esh_common::{Device, Millis, Platform};

use crate::error::BackendError;

/// What registering a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub device: Device,
    /// `false` when the caller already had the token (nothing new: `200`); `true` for a new
    /// token or one moved from another user (`201`).
    pub created: bool,
}

/// How a provider answered a notification to one device, as the registry counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Accepted: the consecutive failure count starts afresh.
    Accepted,
    /// Failed for good (after its retries): one more consecutive failure.
    Failed,
    /// The provider says the token is unregistered or invalid: inactive at once.
    Unregistered,
}

#[async_trait]
pub trait DeviceRegistry: Send + Sync + 'static {
    /// Registers `token` for `user_id`, active with no failures. The caller's own token is
    /// answered as it is (`created: false`; its platform is updated and it is active again:
    /// the app vouches for it); a token held by another user moves to the caller. `Conflict`
    /// if the caller would hold more than `max_devices` tokens. Atomic per token.
    async fn register(
        &self,
        user_id: &str,
        platform: Platform,
        token: &str,
        now: Millis,
        max_devices: usize,
    ) -> Result<Registered, BackendError>;
    /// The devices of `user_id`, active or not, in token order.
    async fn devices(&self, user_id: &str) -> Result<Vec<Device>, BackendError>;
    /// Removes `token` if `user_id` holds it; `false` if it does not.
    async fn remove(&self, user_id: &str, token: &str) -> Result<bool, BackendError>;
    /// Counts each outcome against its device, in order, in one transaction: `Accepted`
    /// resets the failure count, `Failed` adds one and deactivates the device when the
    /// count reaches `strikes`, `Unregistered` deactivates it. Outcomes for a token that
    /// has moved to another user (or was removed) meanwhile are skipped. Returns the devices
    /// as they are after the change.
    async fn record_outcomes(
        &self,
        outcomes: &[(Device, DeviceOutcome)],
        strikes: u32,
    ) -> Result<Vec<Device>, BackendError>;
}
