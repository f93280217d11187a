//! Envoy's global rate-limit protocol (`envoy.service.ratelimit.v3`),
//! served from the same store and algorithms as `RateLimitService`, so
//! Envoy, Istio and Envoy Gateway can use datalayer as their rate-limit
//! service. `config.rs` loads envoyproxy/ratelimit's YAML; `grpc.rs`
//! answers `ShouldRateLimit`.
//!
//! Matching follows envoyproxy/ratelimit: a request descriptor's entries
//! walk the domain's tree, an exact value first, then a prefix (`value:
//! foo*`), then a node without a value (any value, each value counted
//! apart); the limit that applies is the one on the node reached by the
//! last entry. A descriptor that matches nothing is OK.

pub mod config;
mod grpc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use config::{Domains, Kind, Node, Rule, Unit, Value};
pub use grpc::Handler;

use crate::settings::secs;

crate::section! {
    /// Envoy's rate-limit protocol (`envoy.service.ratelimit.v3`).
    pub struct EnvoySettings {
        /// Domain files in envoyproxy/ratelimit's YAML, one domain each.
        /// Empty: every request is OK (no limits).
        pub config_files: Vec<PathBuf> = Vec::new();
        /// How often the files are checked for changes (a change that does
        /// not validate is logged and the previous configuration kept).
        pub reload_interval: Duration = secs(5), range(secs(1), secs(3600));
        /// Answer OK whatever the limits say (statuses still tell), to try
        /// limits out in production.
        pub shadow_mode: bool = false;
        /// Add `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
        /// to the response headers (from the most constrained limit).
        pub response_headers: bool = false;
    }
    check = EnvoySettings::rules;
}

impl EnvoySettings {
    /// The files must load: `check-config` and start-up report every
    /// problem with its path in the YAML.
    fn rules(&self, path: &str, problems: &mut crate::settings::Problems) {
        if let Err(found) = config::load(&self.config_files) {
            for p in found {
                problems.push(crate::settings::join(path, "config_files"), p);
            }
        }
    }
}

/// The configuration in force, swapped whole when the files change.
pub struct Config {
    current: ArcSwap<Domains>,
    files: Vec<PathBuf>,
}

fn stamp(files: &[PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl Config {
    /// Loads the files; every problem, with its path in the YAML.
    pub fn load(settings: &EnvoySettings) -> Result<Arc<Self>, String> {
        let domains = config::load(&settings.config_files).map_err(|p| p.join("\n"))?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(domains),
            files: settings.config_files.clone(),
        }))
    }

    pub fn domains(&self) -> arc_swap::Guard<Arc<Domains>> {
        self.current.load()
    }

    /// Reloads the files every `interval` when they change.
    pub fn watch(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.files.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&me.files);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let now = stamp(&me.files);
                if now == seen {
                    continue;
                }
                seen = now;
                match config::load(&me.files) {
                    Ok(domains) => {
                        me.current.store(Arc::new(domains));
                        metrics::counter!(RELOADS, "result" => "ok").increment(1);
                        tracing::info!("Envoy rate-limit configuration reloaded");
                    }
                    Err(problems) => {
                        metrics::counter!(RELOADS, "result" => "invalid").increment(1);
                        tracing::error!(problems = %problems.join("; "), "Envoy rate-limit configuration not reloaded: the previous one stays");
                    }
                }
            }
        });
    }
}

pub const RELOADS: &str = "datalayer_envoy_ratelimit_config_reloads_total";
/// The `descriptor` label of decisions made by a limit Envoy sent.
pub const OVERRIDE_PATH: &str = "(override)";
pub const DECISIONS: &str = "datalayer_envoy_ratelimit_decisions_total";

/// The node that applies to `entries` (key, value), if any.
pub fn find<'a>(tree: &'a [Node], entries: &[(&str, &str)]) -> Option<&'a Node> {
    let mut level = tree;
    let mut found = None;
    for (key, value) in entries {
        let at_key = || level.iter().filter(|n| n.key == *key);
        let node = at_key()
            .find(|n| n.value == Value::Exact((*value).to_owned()))
            .or_else(|| {
                at_key()
                    .find(|n| matches!(&n.value, Value::Prefix(p) if value.starts_with(p.as_str())))
            })
            .or_else(|| at_key().find(|n| n.value == Value::Any))?;
        found = Some(node);
        level = &node.children;
    }
    found
}

/// The node of a limit that Envoy sent with the descriptor
/// (`RateLimitDescriptor.limit`, from Envoy's `limit` action): as
/// envoyproxy/ratelimit, it replaces the file's rule for that descriptor,
/// counts in a fixed window of its unit, and is never in shadow mode. Its
/// counter is its own (the limit is part of the key), and its metrics say
/// `(override)`: what Envoy sends never becomes a label. `Err` describes a
/// bad field of the override: `(field suffix, problem)`.
pub fn override_node(
    key: &str,
    requests_per_unit: u32,
    unit: i32,
) -> Result<Node, (&'static str, String)> {
    let unit = Unit::from_override(unit).ok_or_else(|| {
        (
            "unit",
            format!("must be SECOND, MINUTE, HOUR, DAY or MONTH (1 to 5), got {unit}"),
        )
    })?;
    let rpu = u64::from(requests_per_unit);
    if rpu > crate::services::ratelimit::MAX_LIMIT {
        return Err((
            "requests_per_unit",
            format!(
                "must be at most {}, got {rpu}",
                crate::services::ratelimit::MAX_LIMIT
            ),
        ));
    }
    let kind = if rpu == 0 {
        Kind::Blocked
    } else {
        Kind::Limited(
            config::limit(
                crate::services::ratelimit::Algorithm::FixedWindow,
                rpu,
                unit.window(),
            )
            .map_err(|e| ("requests_per_unit", e))?,
        )
    };
    Ok(Node {
        key: key.to_owned(),
        value: Value::Any,
        rule: Some(Rule {
            kind,
            requests_per_unit: rpu,
            unit,
            name: String::new(),
            replaces: Vec::new(),
        }),
        shadow: false,
        path: Arc::from(OVERRIDE_PATH),
        children: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 60, name: per-user}
  - key: path
    value: /login
    rate_limit: {unit: second, requests_per_unit: 5, algorithm: sliding_window}
  - key: path
    value: /api/*
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 0}
  - key: remote_address
    descriptors:
      - key: path
        rate_limit: {unlimited: true}
"#;

    #[test]
    fn descriptors_match_exact_then_prefix_then_any() {
        let (domain, tree) = config::parse(YAML, "api.yaml").unwrap();
        assert_eq!(domain, "api");
        assert_eq!(&*find(&tree, &[("user_id", "u1")]).unwrap().path, "user_id");
        assert_eq!(
            &*find(&tree, &[("path", "/login")]).unwrap().path,
            "path_/login"
        );
        let prefixed = find(&tree, &[("path", "/api/v1")]).unwrap();
        assert!(prefixed.shadow && matches!(prefixed.rule.as_ref().unwrap().kind, Kind::Blocked));
        assert!(find(&tree, &[("path", "/other")]).is_none());
        let nested = find(&tree, &[("remote_address", "1.2.3.4"), ("path", "/x")]).unwrap();
        assert!(matches!(
            nested.rule.as_ref().unwrap().kind,
            Kind::Unlimited
        ));
        // The limit is the one reached by the last entry.
        assert!(
            find(&tree, &[("remote_address", "1.2.3.4")])
                .unwrap()
                .rule
                .is_none()
        );
    }

    #[test]
    fn bad_files_name_every_problem_by_path() {
        let bad = "domain: ''\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n  - key: ''\n  - key: b\n    rate_limit: {requests_per_unit: 1}\n";
        let problems = config::parse(bad, "f.yaml").unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("f.yaml: domain: must not be empty"), "{all}");
        assert!(
            all.contains("descriptors[0].rate_limit.unit: must be second"),
            "{all}"
        );
        assert!(
            all.contains("descriptors[1].key: must not be empty"),
            "{all}"
        );
        assert!(
            all.contains("descriptors[2].rate_limit.unit: is required"),
            "{all}"
        );
        let unknown = config::parse("domain: a\nextra: 1\n", "g.yaml").unwrap_err();
        assert!(unknown[0].contains("extra"), "{unknown:?}");
    }
}
