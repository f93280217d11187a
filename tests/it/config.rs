//! One source for every settings bound: the Rust settings types. The
//! configuration reference (`docs/configuration.md`), the full JSON Schema
//! (`docs/configuration.schema.json`) and the Helm chart's
//! `values.schema.json` `config` subtree are generated from them; these
//! tests fail when a committed copy drifts. To regenerate:
//!
//! ```sh
//! DATALAYER_BLESS=1 cargo test --features echo --test it config::
//! ```

use std::path::{Path, PathBuf};

use datalayer::config::{Settings, json_schema, reference};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Keys the chart sets itself, so it does not offer them under `config`.
const CHART_OWNED: &[(&str, &[&str], &str)] = &[
    (
        "server",
        &["addr"],
        "server.addr is set by the chart from containerPorts.grpc.",
    ),
    (
        "redis",
        &["url", "mode"],
        "redis.url comes from a Secret (redis.url / redis.existingSecret values) and redis.mode from the redis.mode value.",
    ),
    (
        "metrics",
        &["enabled", "addr"],
        "metrics.enabled and metrics.addr follow the metrics.enabled and containerPorts.metrics values.",
    ),
];

/// The schema as the chart offers it: the product's, without the keys the
/// chart owns, and without the example service.
fn chart_config_schema() -> Value {
    let mut schema = json_schema();
    let properties = schema["properties"].as_object_mut().expect("sections");
    properties.shift_remove("echo");
    for (section, keys, note) in CHART_OWNED {
        let section = &mut properties[*section];
        for key in *keys {
            section["properties"]
                .as_object_mut()
                .expect("fields")
                .shift_remove(*key);
        }
        let text = section["description"].as_str().unwrap_or("").to_owned();
        section["description"] = Value::String(format!("{text} {note}").trim().to_owned());
    }
    schema
}

fn product_schema() -> Value {
    let mut schema = json_schema();
    schema["properties"]
        .as_object_mut()
        .expect("sections")
        .shift_remove("echo");
    schema
}

fn product_reference() -> String {
    // The reference documents the product: the example service is left out.
    let text = reference();
    match text.find("#### `echo`") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("json") + "\n"
}

/// Compares `path` with `expected`, or rewrites it when blessing.
fn check_generated(path: &Path, expected: &str) {
    if std::env::var_os("DATALAYER_BLESS").is_some() {
        std::fs::write(path, expected).expect("write");
        return;
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date with the settings types; run \
         `DATALAYER_BLESS=1 cargo test --features echo --test it config::` and commit it",
        path.display()
    );
}

const REFERENCE_HEADER: &str = "# Configuration reference\n\n\
<!-- Generated from the settings types in src/ by tests/it/config.rs; do not edit. -->\n\n\
Settings load as defaults < file (`--config FILE` or `DATALAYER_CONFIG`; TOML, YAML or JSON) \
< environment (`DATALAYER__SECTION__KEY`, e.g. `DATALAYER__REDIS__URL`). Durations are \
written as `500ms`, `2s`, `1m`, `1h30m`. Every key is validated at start-up, and every \
problem is reported at once, naming its key.\n\n";

#[test]
fn the_configuration_reference_is_generated_from_the_settings_types() {
    let expected = format!("{REFERENCE_HEADER}{}", product_reference());
    check_generated(&repo().join("docs/configuration.md"), &expected);
}

#[test]
fn the_json_schema_is_generated_from_the_settings_types() {
    check_generated(
        &repo().join("docs/configuration.schema.json"),
        &pretty(&product_schema()),
    );
}

#[test]
fn the_helm_schema_config_subtree_is_generated_from_the_settings_types() {
    let path = repo().join("helm/datalayer/values.schema.json");
    let mut chart: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("chart schema")).expect("json");
    let description = chart["properties"]["config"]["description"].clone();
    let mut config = chart_config_schema();
    if !description.is_null() {
        config["description"] = description;
    }
    chart["properties"]["config"] = config;
    check_generated(&path, &pretty(&chart));
}

#[test]
fn defaults_are_valid_and_every_problem_is_reported_at_once() {
    assert!(Settings::default().problems().is_empty());
    let mut bad = Settings::default();
    bad.cache.max_key_bytes = 0;
    bad.session.max_sessions_per_user = 0;
    bad.server.max_timeout = std::time::Duration::from_millis(1);
    bad.keys.namespace = "no:colons".into();
    let keys: Vec<String> = bad.problems().0.into_iter().map(|p| p.key).collect();
    for key in [
        "cache.max_key_bytes",
        "session.max_sessions_per_user",
        "server.max_timeout",
        "keys.namespace",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
}

#[test]
fn the_schema_carries_the_bounds_validation_enforces() {
    let schema = json_schema();
    let cache = &schema["properties"]["cache"]["properties"];
    assert_eq!(cache["max_key_bytes"]["minimum"], 1);
    assert_eq!(cache["max_key_bytes"]["maximum"], 4096);
    let session = &schema["properties"]["session"]["properties"];
    assert_eq!(session["max_sessions_per_user"]["maximum"], 10_000);
    // The same bound refuses the value at start-up.
    let mut settings = Settings::default();
    settings.session.max_sessions_per_user = 10_001;
    assert_eq!(
        settings.problems().0[0].key,
        "session.max_sessions_per_user"
    );
}
