//! `flags.*`: where flag sets come from, what every evaluation sees, and
//! the bounds of what may be stored.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use crate::settings::{Problems, Setting, join, ms, secs};

/// A flag set loaded from a file at start-up, under the selector a flagd
/// provider sends (flagd's `--uri` sources).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The flag set's name: what a provider sends as `flagd-selector`,
    /// e.g. `flags/allFlags.json`.
    pub selector: String,
    /// A flagd JSON file.
    pub path: PathBuf,
}

impl Setting for Source {
    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Self as serde::Deserialize>::deserialize(d)
    }
    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["selector", "path"],
            "properties": {
                "selector": {"type": "string", "minLength": 1},
                "path": {"type": "string", "minLength": 1},
            },
        })
    }
    fn show(&self) -> String {
        format!("`{}` from `{}`", self.selector, self.path.display())
    }
}

/// A list of sources.
#[derive(Debug, Clone, Default)]
pub struct Sources(pub Vec<Source>);

impl Setting for Sources {
    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Vec<Source> as serde::Deserialize>::deserialize(d).map(Sources)
    }
    fn schema() -> Value {
        json!({"type": "array", "items": Source::schema()})
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            "none".to_owned()
        } else {
            format!("{} sources", self.0.len())
        }
    }
}

/// Values added to every evaluation context (flagd's `--context-value`).
#[derive(Debug, Clone, Default)]
pub struct StaticContext(pub serde_json::Map<String, Value>);

impl Setting for StaticContext {
    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <BTreeMap<String, Value> as serde::Deserialize>::deserialize(d)
            .map(|m| StaticContext(m.into_iter().collect()))
    }
    fn schema() -> Value {
        json!({"type": "object"})
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            "none".to_owned()
        } else {
            format!("{} values", self.0.len())
        }
    }
}

crate::section! {
    /// Feature flags: flagd-compatible evaluation and their administration.
    pub struct Settings {
        /// Flag sets loaded from files at start-up, e.g.
        /// `[{selector = "flags/allFlags.json", path = "/etc/datalayer/flags.json"}]`.
        /// Each is written to the store when its file changed since it was
        /// last loaded; changes made since through FlagService are kept
        /// until the file changes.
        pub sources: Sources = Sources::default();
        /// Values added to every evaluation context; they win over a
        /// caller's values of the same name.
        pub static_context: StaticContext = StaticContext::default();
        /// How often each replica re-reads the flag sets' versions, so it
        /// converges even if it missed a change notice.
        pub resync_interval: Duration = secs(1), range(ms(100), secs(3600));
        /// Interval of flagd's `keep_alive` events on EventStream.
        pub keep_alive: Duration = secs(20), range(secs(1), secs(3600));
        /// Largest flag definition, in bytes.
        pub max_flag_bytes: usize = 64 * 1024, range(64, 1024 * 1024);
        /// Largest flag set document (Import, Validate, a source file).
        pub max_document_bytes: usize = 4 * 1024 * 1024, range(1024, 64 * 1024 * 1024);
        /// Most flags in one flag set.
        pub max_flags_per_set: usize = 5000, range(1, 100_000);
        /// Deepest a targeting rule may nest.
        pub max_targeting_depth: usize = 32, range(2, 256);
        /// Most entries each flag set's audit trail keeps.
        pub max_audit_entries: usize = 1000, range(10, 1_000_000);
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        for (i, source) in self.sources.0.iter().enumerate() {
            let at = join(path, &format!("sources[{i}]"));
            if let Err(v) = super::model::name(&source.selector, "selector") {
                problems.push(join(&at, "selector"), v.description);
            }
            if source.path.as_os_str().is_empty() {
                problems.push(join(&at, "path"), "must name a file");
            }
        }
        for (i, a) in self.sources.0.iter().enumerate() {
            if self.sources.0[..i].iter().any(|b| b.selector == a.selector) {
                problems.push(
                    join(path, &format!("sources[{i}].selector")),
                    format!("`{}` is named by an earlier source", a.selector),
                );
            }
        }
    }
}
