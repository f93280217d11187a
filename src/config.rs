//! Typed settings, layered: built-in defaults < optional file < environment.
//!
//! The file comes from `--config FILE` or `DATALAYER_CONFIG` (TOML, YAML or
//! JSON by extension). Environment variables use `DATALAYER__` and `__`
//! between levels: `DATALAYER__REDIS__URL`, `DATALAYER__SERVER__ADDR`,
//! `DATALAYER__RATELIMIT__POLICIES__AUTH__LIMIT`.
//!
//! The [`Settings`] struct itself is derived from the registration list
//! (`services/mod.rs`): the core sections, then one per service. Each
//! section declares its own bounds ([`crate::section!`]), so
//! [`Settings::validate`] reports every problem at once, naming each key,
//! and [`json_schema`] / [`reference`] document exactly what is enforced.

use std::{fmt, path::Path};

use config::{Config, Environment, File};
use serde_json::{Value, json};

pub use crate::services::Settings;
pub use crate::settings::{Problem, Problems};

/// A start-up error that names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{0}")]
    Invalid(InvalidSettings),
}

/// Every problem found, each naming its key.
#[derive(Debug)]
pub struct InvalidSettings(pub Vec<Problem>);

impl fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: `{}`: {}", one.key, one.message),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for p in many {
                    write!(f, "\n  `{}`: {}", p.key, p.message)?;
                }
                Ok(())
            }
        }
    }
}

impl Settings {
    /// Loads defaults < `file` (if any) < `DATALAYER__*` environment, then
    /// validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("DATALAYER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let layered = builder.build()?;
        removed_keys(&layered)?;
        let settings: Settings = layered.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every problem of every section, and those across sections.
    pub fn problems(&self) -> Problems {
        let mut problems = Problems::default();
        for (name, section) in self.sections() {
            section.check_all(name, &mut problems);
        }
        if self.metrics.enabled
            && self.metrics.addr.port() != 0
            && self.metrics.addr.port() == self.server.addr.port()
        {
            problems.push("metrics.addr", "must use another port than server.addr");
        }
        problems
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(InvalidSettings(problems.0)))
        }
    }
}

/// Keys that existed once, with what replaced them: a configuration that
/// still sets one is told so, rather than only that the key is unknown.
const REMOVED: &[(&str, &str)] = &[
    (
        "redis.pipelining",
        "was removed: calls always share redis-rs's multiplexed connections (`redis.connections`); delete the key",
    ),
    (
        "redis.pool_size",
        "was removed with the connection pool: calls share `redis.connections` connections; delete the key",
    ),
    (
        "redis.wait_timeout",
        "was removed with the connection pool: opening a connection is bounded by `redis.connect_timeout`; delete the key",
    ),
];

fn removed_keys(layered: &Config) -> Result<(), ConfigError> {
    let mut problems = Problems::default();
    for (key, why) in REMOVED {
        if layered.get::<config::Value>(key).is_ok() {
            problems.push(*key, *why);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(InvalidSettings(problems.0)))
    }
}

/// The JSON Schema (draft-07) of the whole configuration: what the Helm
/// chart's `values.schema.json` offers under `config`.
pub fn json_schema() -> Value {
    let mut properties = serde_json::Map::new();
    for (name, schema) in Settings::section_schemas() {
        properties.insert(name.to_owned(), schema);
    }
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    })
}

/// The configuration reference as a Markdown table per section, from the
/// same declarations as validation and the schema.
pub fn reference() -> String {
    let mut out = String::new();
    for (name, schema) in Settings::section_schemas() {
        out.push_str(&format!("#### `{name}`\n\n"));
        if let Some(text) = schema["description"].as_str() {
            out.push_str(text);
            out.push_str("\n\n");
        }
        out.push_str("| Key | Default | Bounds | Meaning |\n| --- | --- | --- | --- |\n");
        rows(&mut out, name, &schema);
        out.push('\n');
    }
    out
}

/// One row per key of `schema` under `path`; a nested section (an object
/// with keys of its own, like `server.tls`) gets its rows too.
fn rows(out: &mut String, path: &str, schema: &Value) {
    let Some(fields) = schema["properties"].as_object() else {
        return;
    };
    for (field, s) in fields {
        let key = format!("{path}.{field}");
        out.push_str(&format!(
            "| `{key}` | {} | {} | {} |\n",
            s["x-default"].as_str().unwrap_or(""),
            bounds(s),
            s["description"].as_str().unwrap_or("").replace('|', "\\|"),
        ));
        if s["type"] == "object" && s["properties"].is_object() {
            rows(out, &key, s);
        }
    }
}

fn bounds(schema: &Value) -> String {
    let pair = |lo: &Value, hi: &Value| match (lo, hi) {
        (Value::Null, Value::Null) => None,
        (lo, hi) => Some(format!("{} – {}", plain(lo), plain(hi))),
    };
    if let Some(range) = pair(&schema["minimum"], &schema["maximum"]) {
        return range;
    }
    if let Some(range) = pair(&schema["x-minimum"], &schema["x-maximum"]) {
        return range;
    }
    if let Some(words) = schema["enum"].as_array() {
        return words.iter().map(plain).collect::<Vec<_>>().join(", ");
    }
    String::new()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => other.to_string(),
    }
}
