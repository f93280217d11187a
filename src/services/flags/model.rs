//! Flags as flagd defines them: a flag set document
//! `{"flags": {...}, "metadata": {...}, "$evaluators": {...}}` and each
//! flag's `state`, `variants`, `defaultVariant`, `targeting`, `metadata`.
//! Every problem is reported with its path into the JSON, e.g.
//! `flags.bot-enabled.defaultVariant`.

use serde_json::{Map, Value};

use super::Settings;
use crate::validate::{FieldViolation, Invalid, quote};

/// Longest flag key and flag-set name, in characters.
pub const MAX_NAME_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Enabled,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Enabled => "ENABLED",
            State::Disabled => "DISABLED",
        }
    }
}

/// A flag whose shape is valid (its targeting is checked when compiled).
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDef {
    pub state: State,
    pub variants: Map<String, Value>,
    /// `None`: no default variant; the caller's default applies.
    pub default_variant: Option<String>,
    /// `None` for no targeting (absent, null or `{}`).
    pub targeting: Option<Value>,
    pub metadata: Map<String, Value>,
}

/// A parsed flag set document; flags are kept as JSON, parsed one by one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub flags: Vec<(String, Value)>,
    pub metadata: Map<String, Value>,
    pub evaluators: Map<String, Value>,
}

fn bad(path: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(path, description)
}

/// A flag key or flag-set name: 1 to 256 characters, no control characters.
pub fn name(value: &str, field: &str) -> Result<(), FieldViolation> {
    if value.is_empty()
        || value.chars().count() > MAX_NAME_CHARS
        || value.chars().any(char::is_control)
    {
        return Err(bad(
            field,
            format!("must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Metadata: an object of strings, numbers and booleans.
fn metadata(
    value: Option<&Value>,
    path: &str,
    problems: &mut Vec<FieldViolation>,
) -> Map<String, Value> {
    match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => {
            for (key, v) in map {
                if key.is_empty() {
                    problems.push(bad(path, "metadata keys must not be empty"));
                }
                if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    problems.push(bad(
                        &format!("{path}.{key}"),
                        "metadata values are strings, numbers or booleans",
                    ));
                }
            }
            map.clone()
        }
        Some(_) => {
            problems.push(bad(path, "must be an object"));
            Map::new()
        }
    }
}

/// Parses one flag; `path` names it (`flags.my-flag`).
pub fn parse_flag(value: &Value, path: &str) -> Result<FlagDef, Invalid> {
    let Value::Object(flag) = value else {
        return Err(Invalid::one(path, "a flag is a JSON object"));
    };
    let mut problems = Vec::new();
    for key in flag.keys() {
        if !matches!(
            key.as_str(),
            "state"
                | "variants"
                | "defaultVariant"
                | "targeting"
                | "metadata"
                | "source"
                | "selector"
        ) {
            problems.push(bad(&format!("{path}.{key}"), "is not a flag property"));
        }
    }
    let state = match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED") => State::Enabled,
        Some("DISABLED") => State::Disabled,
        _ => {
            problems.push(bad(
                &format!("{path}.state"),
                "must be \"ENABLED\" or \"DISABLED\"",
            ));
            State::Disabled
        }
    };
    let variants = match flag.get("variants") {
        Some(Value::Object(v)) if !v.is_empty() => v.clone(),
        _ => {
            problems.push(bad(
                &format!("{path}.variants"),
                "must be an object of at least one variant",
            ));
            Map::new()
        }
    };
    let default_variant = match flag.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(_) => {
            problems.push(bad(
                &format!("{path}.defaultVariant"),
                "must be a variant name, or null",
            ));
            None
        }
    };
    if let Some(default) = &default_variant
        && !variants.is_empty()
        && !variants.contains_key(default)
    {
        problems.push(bad(
            &format!("{path}.defaultVariant"),
            format!("{} is not one of the variants", quote(default)),
        ));
    }
    let targeting = match flag.get("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.is_empty() => None,
        Some(t @ Value::Object(_)) => Some(t.clone()),
        Some(_) => {
            problems.push(bad(
                &format!("{path}.targeting"),
                "must be a JSON Logic object",
            ));
            None
        }
    };
    let metadata = metadata(
        flag.get("metadata"),
        &format!("{path}.metadata"),
        &mut problems,
    );
    if problems.is_empty() {
        Ok(FlagDef {
            state,
            variants,
            default_variant,
            targeting,
            metadata,
        })
    } else {
        Err(Invalid(problems))
    }
}

/// Parses a document's shape: its flags are returned as JSON, to be
/// parsed one by one (a source file keeps its good flags).
pub fn parse_document(text: &str, settings: &Settings) -> Result<Document, Invalid> {
    if text.len() > settings.max_document_bytes {
        return Err(Invalid::one(
            "document",
            format!(
                "must be at most {} bytes (flags.max_document_bytes), got {}",
                settings.max_document_bytes,
                text.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Invalid::one("document", format!("is not JSON: {e}")))?;
    let Value::Object(doc) = value else {
        return Err(Invalid::one("document", "must be a JSON object"));
    };
    let mut problems = Vec::new();
    for key in doc.keys() {
        if !matches!(
            key.as_str(),
            "flags" | "metadata" | "$evaluators" | "$schema"
        ) {
            problems.push(bad(key, "is not a flag set property"));
        }
    }
    let flags = match doc.get("flags") {
        Some(Value::Object(flags)) => flags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => Vec::new(),
        Some(_) => {
            problems.push(bad("flags", "must be an object of flags by key"));
            Vec::new()
        }
    };
    let flags: Vec<(String, Value)> = flags;
    if flags.len() > settings.max_flags_per_set {
        problems.push(bad(
            "flags",
            format!(
                "at most {} flags per set (flags.max_flags_per_set), got {}",
                settings.max_flags_per_set,
                flags.len()
            ),
        ));
    }
    for (key, _) in &flags {
        if let Err(v) = name(key, &format!("flags.{key}")) {
            problems.push(v);
        }
    }
    let metadata = metadata(doc.get("metadata"), "metadata", &mut problems);
    let evaluators = match doc.get("$evaluators") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(e)) => e.clone(),
        Some(_) => {
            problems.push(bad("$evaluators", "must be an object of named rules"));
            Map::new()
        }
    };
    if problems.is_empty() {
        Ok(Document {
            flags,
            metadata,
            evaluators,
        })
    } else {
        Err(Invalid(problems))
    }
}

/// The document-level part of a set as stored: metadata and evaluators.
pub fn set_meta_json(metadata: &Map<String, Value>, evaluators: &Map<String, Value>) -> String {
    serde_json::json!({"metadata": metadata, "$evaluators": evaluators}).to_string()
}

/// Reads what [`set_meta_json`] wrote.
pub fn parse_set_meta(text: &str) -> (Map<String, Value>, Map<String, Value>) {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let get = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    (get("metadata"), get("$evaluators"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_point_into_the_json() {
        let flag = serde_json::json!({
            "state": "ON",
            "variants": {"a": 1},
            "defaultVariant": "b",
            "targeting": [1],
            "metadata": {"x": {"nested": true}},
            "extra": 1
        });
        let Invalid(problems) = parse_flag(&flag, "flags.f").unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flags.f.extra",
                "flags.f.state",
                "flags.f.defaultVariant",
                "flags.f.targeting",
                "flags.f.metadata.x"
            ]
        );
    }

    #[test]
    fn a_boolean_default_variant_names_its_variant() {
        let flag = serde_json::json!({
            "state": "ENABLED",
            "variants": {"true": 1, "false": 2},
            "defaultVariant": false,
            "targeting": {}
        });
        let def = parse_flag(&flag, "f").unwrap();
        assert_eq!(def.default_variant.as_deref(), Some("false"));
        assert_eq!(def.targeting, None);
    }
}
