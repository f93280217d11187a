//! The one mapping of [`Error`] to a gRPC status.
//!
//! * a caller's mistake is `INVALID_ARGUMENT` with a `google.rpc.BadRequest`
//!   naming each bad field;
//! * a store that is down or too slow is `UNAVAILABLE` with
//!   `google.rpc.RetryInfo`; one that refuses until an operator acts
//!   (read-only, wrong password) is `UNAVAILABLE` with no retry hint; one
//!   that is full is `RESOURCE_EXHAUSTED`;
//! * `INTERNAL` is kept for our own bugs, never for input.
//!
//! Whatever a status carries is bounded: a message of at most
//! [`MAX_MESSAGE_CHARS`], at most [`MAX_VIOLATIONS`] violations, so no
//! request can make its error (which travels in trailers) large.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;
use crate::store::StoreErrorKind;

/// How soon a client should retry after a store outage.
pub const RETRY_DELAY: Duration = Duration::from_millis(250);
pub const MAX_MESSAGE_CHARS: usize = 512;
pub const MAX_VIOLATIONS: usize = 50;
const MAX_DETAIL_CHARS: usize = 256;

/// The status code of an error (metrics labels use the same).
pub fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        Error::DataLoss(_) => Code::DataLoss,
        Error::Store(e) => match e.kind {
            StoreErrorKind::Unavailable | StoreErrorKind::Misconfigured => Code::Unavailable,
            StoreErrorKind::Full => Code::ResourceExhausted,
            StoreErrorKind::Internal => Code::Internal,
        },
        Error::Internal(_) => Code::Internal,
    }
}

/// At most `max` characters of `text`, marked when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// "invalid argument: a: why; b: why" of at most [`MAX_MESSAGE_CHARS`],
/// built without formatting more than it keeps.
fn invalid_message(invalid: &crate::validate::Invalid) -> String {
    let mut message = String::from("invalid argument: ");
    for (i, v) in invalid.0.iter().enumerate() {
        if message.len() >= MAX_MESSAGE_CHARS {
            break;
        }
        if i > 0 {
            message.push_str("; ");
        }
        message.push_str(&bounded(&v.field, MAX_DETAIL_CHARS));
        message.push_str(": ");
        message.push_str(&bounded(&v.description, MAX_DETAIL_CHARS));
    }
    bounded(&message, MAX_MESSAGE_CHARS)
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = code_of(&e);
        let message = match &e {
            Error::InvalidArgument(invalid) => invalid_message(invalid),
            other => bounded(&other.to_string(), MAX_MESSAGE_CHARS),
        };
        match e {
            Error::InvalidArgument(invalid) => {
                let violations: Vec<_> = invalid
                    .0
                    .into_iter()
                    .take(MAX_VIOLATIONS)
                    .map(|v| {
                        tonic_types::FieldViolation::new(
                            bounded(&v.field, MAX_DETAIL_CHARS),
                            bounded(&v.description, MAX_DETAIL_CHARS),
                        )
                    })
                    .collect();
                Status::with_error_details(
                    code,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            Error::Store(e) if e.kind == StoreErrorKind::Unavailable => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
            ),
            _ => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::validate::{FieldViolation, Invalid};

    #[test]
    fn statuses_are_bounded_whatever_the_input() {
        let huge = "x".repeat(64 * 1024);
        let invalid = Invalid(
            (0..1000)
                .map(|i| FieldViolation::new(format!("f{i}{huge}"), huge.clone()))
                .collect(),
        );
        let status = Status::from(Error::InvalidArgument(invalid));
        assert!(status.message().chars().count() <= MAX_MESSAGE_CHARS + 1);
        let details = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(details.field_violations.len(), MAX_VIOLATIONS);
        assert!(
            status.details().len() < 64 * 1024,
            "{}",
            status.details().len()
        );
    }

    #[test]
    fn only_outages_promise_a_retry() {
        let outage = Status::from(Error::Store(StoreError::unavailable("down")));
        assert_eq!(outage.code(), Code::Unavailable);
        assert!(outage.get_details_retry_info().is_some());
        let full = Status::from(Error::Store(StoreError::new(StoreErrorKind::Full, "oom")));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(full.get_details_retry_info().is_none());
        let readonly = Status::from(Error::Store(StoreError::new(
            StoreErrorKind::Misconfigured,
            "READONLY",
        )));
        assert_eq!(readonly.code(), Code::Unavailable);
        assert!(readonly.get_details_retry_info().is_none());
    }
}
