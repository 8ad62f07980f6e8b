//! The one error type of every backend; its `kind()` decides retries.

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The request can never succeed (a malformed key, say).
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("unsupported backend url {url:?}: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    /// Worth retrying later.
    Transient,
    /// Retrying will not help.
    Permanent,
}

impl BackendError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::NotFound(_) => ErrorKind::NotFound,
            BackendError::Conflict(_) => ErrorKind::Conflict,
            BackendError::Unavailable(_) | BackendError::Timeout(_) | BackendError::Io(_) => ErrorKind::Transient,
            BackendError::Corrupt(_) | BackendError::Invalid(_) | BackendError::UnsupportedUrl { .. } => {
                ErrorKind::Permanent
            }
        }
    }
}

impl From<BackendError> for esh_common::ApiError {
    fn from(error: BackendError) -> Self {
        match error.kind() {
            ErrorKind::NotFound => esh_common::ApiError::not_found(error.to_string()),
            ErrorKind::Conflict => esh_common::ApiError::conflict(error.to_string()),
            ErrorKind::Transient => esh_common::ApiError::new(esh_common::ErrorCode::Unavailable, error.to_string())
                .with_retry_after(std::time::Duration::from_secs(1)),
            ErrorKind::Permanent => esh_common::ApiError::internal(error.to_string()),
        }
    }
}
