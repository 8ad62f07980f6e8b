//! Readiness of a part that a stage does not own (the push providers for ingest's
//! `/health/ready`): stages meet through this trait instead of depending on each other.

use async_trait::async_trait;

#[async_trait]
pub trait ReadinessProbe: Send + Sync + 'static {
    /// Succeeds while the part works; the error says what fails.
    async fn check(&self) -> Result<(), String>;
}
