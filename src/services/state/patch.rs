//! JSON documents: RFC 7396 merge patches and RFC 6901 pointer reads.
//!
//! A patch is applied in the service, not in a Lua script: Redis's `cjson`
//! turns an empty array into `{}` and rounds numbers to 14 digits, either of
//! which would silently change a document. The handler reads the document,
//! merges, and writes with the version it read as `expected_version`,
//! retrying on a conflict, so concurrent patches never lose each other's
//! fields (see `grpc.rs`).

use serde_json::Value;

use super::settings::MAX_POINTER_BYTES;
use crate::validate::FieldViolation;

/// A merge patch as sent: any JSON value (a non-object replaces the
/// document, as RFC 7396 says).
pub fn parse_patch(raw: &[u8]) -> Result<Value, FieldViolation> {
    serde_json::from_slice(raw).map_err(|e| {
        FieldViolation::new(
            "merge_patch",
            format!("is not JSON ({e}); a JSON Merge Patch is a JSON value, usually an object"),
        )
    })
}

/// The document after the patch, as bytes; `None` when the stored value is
/// not JSON.
pub fn apply(document: Option<&[u8]>, patch: &Value) -> Option<Vec<u8>> {
    let mut target = match document {
        Some(raw) => serde_json::from_slice(raw).ok()?,
        None => Value::Object(Default::default()),
    };
    json_patch::merge(&mut target, patch);
    serde_json::to_vec(&target).ok()
}

/// Checks a JSON Pointer: empty (the whole document) or `/`-separated
/// tokens where `~` is only `~0` or `~1`.
pub fn pointer(value: &str) -> Result<(), FieldViolation> {
    let bad = |why: &str| {
        Err(FieldViolation::new(
            "json_pointer",
            format!(
                "{why}, got {}: a JSON Pointer (RFC 6901) looks like /settings/tz",
                crate::validate::quote(value)
            ),
        ))
    };
    if value.len() > MAX_POINTER_BYTES {
        return bad(&format!("must be at most {MAX_POINTER_BYTES} bytes"));
    }
    if !value.is_empty() && !value.starts_with('/') {
        return bad("must be empty or start with /");
    }
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return bad("has a ~ that is not ~0 or ~1");
        }
    }
    Ok(())
}

/// The stored document is not JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct NotJson;

/// What a pointer reads in a document. `Ok(None)`: the path is not there.
pub fn read(document: &[u8], pointer: &str) -> Result<Option<Vec<u8>>, NotJson> {
    let value: Value = serde_json::from_slice(document).map_err(|_| NotJson)?;
    Ok(value
        .pointer(pointer)
        .and_then(|part| serde_json::to_vec(part).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let doc = br#"{"a":"b","c":{"d":"e","f":"g"},"n":[]}"#;
        let patch = json!({"a": "z", "c": {"f": null}, "x": 12345678901234567_u64});
        let out: Value = serde_json::from_slice(&apply(Some(doc), &patch).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"a": "z", "c": {"d": "e"}, "n": [], "x": 12345678901234567_u64})
        );
        assert_eq!(apply(Some(b"not json"), &patch), None);
        let created: Value =
            serde_json::from_slice(&apply(None, &json!({"k": 1})).unwrap()).unwrap();
        assert_eq!(created, json!({"k": 1}));
    }

    #[test]
    fn pointers_are_checked_and_read() {
        for ok in ["", "/", "/a/0", "/a~1b/~0"] {
            assert!(pointer(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "/a~", "/a~2"] {
            assert!(pointer(bad).is_err(), "{bad}");
        }
        let doc = br#"{"a/b":{"c":[10,20]}}"#;
        assert_eq!(read(doc, "/a~1b/c/1"), Ok(Some(b"20".to_vec())));
        assert_eq!(read(doc, "/missing"), Ok(None));
        assert_eq!(read(b"\xff", "/a"), Err(NotJson));
    }
}
