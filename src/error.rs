//! The one error every handler returns. [`crate::grpc`] maps it to a gRPC
//! status in exactly one place (`grpc::status`).

use crate::store::StoreError;
use crate::validate::{FieldViolation, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's mistake: every bad field, named.
    #[error("invalid argument: {0}")]
    InvalidArgument(Invalid),
    #[error("{0}")]
    NotFound(String),
    /// A create of what exists (a leaderboard id taken).
    #[error("{0}")]
    AlreadyExists(String),
    /// Well-formed, but the state forbids it (a cap, a lost lease).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota or size the caller hit; retrying as is will not help.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Stored data cannot be read (flagd: a flag whose rule is broken).
    #[error("{0}")]
    DataLoss(String),
    /// The caller's deadline passed before an answer was ready.
    #[error("the call's deadline passed before the store answered")]
    DeadlineExceeded,
    /// The store failed; its kind decides the answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A bug of ours: never caused by input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(Invalid::one(field, description))
    }

    /// Whether a caller's mistake (logged at debug) rather than a failure.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::NotFound(_)
                | Error::AlreadyExists(_)
                | Error::FailedPrecondition(_)
                | Error::ResourceExhausted(_)
        )
    }
}

impl From<Invalid> for Error {
    fn from(v: Invalid) -> Self {
        Self::InvalidArgument(v)
    }
}

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::InvalidArgument(v.into())
    }
}
