//! One error type for every service, and its one mapping to gRPC.
//!
//! * a caller's mistake is `INVALID_ARGUMENT` with a `google.rpc.BadRequest`
//!   naming each bad field;
//! * a store that is down or too slow for the deadline is `UNAVAILABLE`
//!   with `google.rpc.RetryInfo`;
//! * `INTERNAL` is kept for our own bugs (e.g. a script answering nonsense),
//!   never for input.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// Versions are exact in Lua's doubles up to 2^53; no version the service
/// issues is larger, so a larger `expected_version` is a caller's mistake.
pub const MAX_VERSION: u64 = 1 << 53;

/// An `expected_version` as sent, checked against [`MAX_VERSION`].
pub fn expected_version(v: Option<u64>, field: &str) -> Result<Option<u64>, FieldViolation> {
    match v {
        Some(v) if v > MAX_VERSION => Err(FieldViolation::new(
            field,
            format!("must be at most 2^53 ({MAX_VERSION}); use a version this service returned"),
        )),
        other => Ok(other),
    }
}

/// A protobuf `Duration` from a request: absent stays `None`; negative or
/// malformed ones are the caller's mistake, named by `field`.
pub fn proto_duration(
    d: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, FieldViolation> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldViolation::new(
            field,
            "must be a non-negative duration with nanos in [0, 1e9)",
        ));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

/// One bad field: the field's path in the request (`checks[2].key`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation under a parent field: `key` becomes `checks[3].key`.
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the state forbids it (e.g. a cap).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// Collects every bad field of a request, so one answer names them all.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps the violation, if any; passes the value on.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.0.push(v)).ok()
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }

    /// `INVALID_ARGUMENT` with every violation, or nothing to answer.
    pub fn finish(self) -> Result<(), Error> {
        self.into_result().map_err(Error::InvalidArgument)
    }
}

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::InvalidArgument(vec![v])
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) => Self::Unavailable(msg),
            StoreError::Internal(msg) => Self::Internal(msg),
        }
    }
}

/// How soon a client should retry after `UNAVAILABLE`.
const UNAVAILABLE_RETRY_DELAY: Duration = Duration::from_millis(250);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(violations) => {
                let message = format!("invalid argument: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::Unavailable(msg) => Status::with_error_details(
                Code::Unavailable,
                format!("store unavailable: {msg}"),
                ErrorDetails::with_retry_info(Some(UNAVAILABLE_RETRY_DELAY)),
            ),
            Error::Internal(msg) => Status::internal(msg),
        }
    }
}
