//! Settings types that describe themselves: one declaration gives the
//! struct, its defaults, its bounds, its validation, its JSON Schema (the
//! Helm chart's `values.schema.json`) and its row in the configuration
//! reference — so a bound is written once, beside its field.
//!
//! ```ignore
//! datalayer::section! {
//!     /// Bounds of cache requests.
//!     pub struct Settings {
//!         /// Longest caller key, in bytes.
//!         pub max_key_bytes: usize = 512, range(1, 4096);
//!         /// Longest `ttl`.
//!         pub max_ttl: Duration = days(30), range(secs(1), days(366));
//!     }
//!     check = Settings::rules;   // optional: rules across fields
//! }
//! ```
//!
//! Why not `schemars` + `validator`: their bounds are numbers only, while
//! half of ours are durations written as `"30s"`; and validation must report
//! every problem at once, naming each key.

mod macros;
mod values;

use std::time::Duration;

use serde::Deserializer;
use serde_json::{Map, Value, json};

pub use values::DURATION_PATTERN;

/// Every problem of a configuration, each naming its key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `cache.max_ttl`
    pub key: String,
    pub message: String,
}

impl Problems {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `path.field`, or `field` at the top.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A value a settings field may hold.
pub trait Setting: Sized {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    /// Its JSON Schema (draft-07).
    fn schema() -> Value;
    /// How the reference prints a value of it.
    fn show(&self) -> String;
    /// Problems of the value itself (a section checks its fields' bounds).
    fn check(&self, _path: &str, _problems: &mut Problems) {}
    /// The value as `print-config` shows it (secrets redacted, as `show`).
    fn effective(&self) -> Value {
        Value::String(self.show().trim_matches('`').trim_matches('"').to_owned())
    }
}

/// The object-safe part of a [`Setting`]: its checks.
pub trait Check {
    fn check_all(&self, path: &str, problems: &mut Problems);
    fn effective_value(&self) -> Value;
}

impl<T: Setting> Check for T {
    fn check_all(&self, path: &str, problems: &mut Problems) {
        self.check(path, problems);
    }
    fn effective_value(&self) -> Value {
        self.effective()
    }
}

/// Deserializes any [`Setting`] (the `deserialize_with` of every field).
pub fn de<'de, D: Deserializer<'de>, T: Setting>(d: D) -> Result<T, D::Error> {
    T::deserialize(d)
}

/// A bound type of a `range(min, max)` clause.
pub trait Bound: Copy + PartialOrd {
    /// Adds the bounds to a schema (`minimum`/`maximum`, or words).
    fn describe(schema: &mut Value, min: Self, max: Self);
    fn show(self) -> String;
}

/// A field whose value has a [`Bound`] (itself, or inside an Option).
pub trait Bounded<B: Bound> {
    fn value(&self) -> Option<B>;
}

/// Checks a `range(min, max)` clause.
pub fn check_range<B: Bound>(
    value: &impl Bounded<B>,
    min: B,
    max: B,
    key: &str,
    problems: &mut Problems,
) {
    if let Some(v) = value.value()
        && (v < min || v > max)
    {
        problems.push(
            key,
            format!(
                "must be between {} and {}, got {}",
                min.show(),
                max.show(),
                v.show()
            ),
        );
    }
}

/// Adds a `range(min, max)` clause to a field's schema.
pub fn describe_bound<B: Bound>(schema: &mut Value, _field: &impl Bounded<B>, min: B, max: B) {
    B::describe(schema, min, max);
}

/// Sets a schema's description from doc lines, with the default and the
/// bounds as the reference prints them.
pub fn describe(schema: &mut Value, doc: &[&str], default: String) {
    let text = doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    schema["description"] = json!(text.trim());
    schema["x-default"] = json!(default);
}

/// The schema of a section: an object of exactly these properties.
pub fn object(properties: Map<String, Value>, doc: &[&str]) -> Value {
    let mut schema = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    if !text.is_empty() {
        schema["description"] = json!(text);
    }
    schema
}

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
pub const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
pub const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    crate::section! {
        /// A test section.
        pub struct Sample {
            /// A count.
            pub count: usize = 5, range(1, 10);
            /// A wait.
            pub wait: Option<Duration> = None, range(ms(1), secs(60));
            /// Named things.
            pub named: BTreeMap<String, u64> = BTreeMap::new();
        }
        check = Sample::rules;
    }

    impl Sample {
        fn rules(&self, path: &str, problems: &mut Problems) {
            if self.count == 7 {
                problems.push(join(path, "count"), "must not be 7");
            }
        }
    }

    #[test]
    fn bounds_are_checked_and_described_from_one_place() {
        let mut problems = Problems::default();
        let bad = Sample {
            count: 11,
            wait: Some(secs(61)),
            named: BTreeMap::new(),
        };
        bad.check("sample", &mut problems);
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sample.count", "sample.wait"]);
        let schema = Sample::schema();
        assert_eq!(schema["properties"]["count"]["maximum"], 10);
        assert_eq!(schema["properties"]["wait"]["x-maximum"], "1m");
        assert_eq!(schema["properties"]["count"]["description"], "A count.");
        assert_eq!(schema["properties"]["count"]["x-default"], "5");
    }

    #[test]
    fn cross_field_rules_run_too() {
        let mut problems = Problems::default();
        Sample {
            count: 7,
            ..Sample::default()
        }
        .check("", &mut problems);
        assert_eq!(problems.0[0].key, "count");
    }

    #[test]
    fn values_deserialize_from_config_text() {
        let s: Sample =
            serde_json::from_value(json!({"wait": "250ms", "named": {"a": 3}})).unwrap();
        assert_eq!(s.wait, Some(ms(250)));
        assert_eq!(s.named["a"], 3);
        assert!(serde_json::from_value::<Sample>(json!({"nope": 1})).is_err());
    }
}
