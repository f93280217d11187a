//! Envoy rate-limit configuration in envoyproxy/ratelimit's YAML shape, one
//! domain per file, validated with errors that name the path in the YAML:
//!
//! ```yaml
//! domain: api
//! descriptors:
//!   - key: user_id                 # any value: a limit per user id
//!     rate_limit: {unit: minute, requests_per_unit: 60, name: per-user}
//!   - key: path
//!     value: /login                # this value only (a trailing * matches a prefix)
//!     rate_limit: {unit: second, requests_per_unit: 5, algorithm: sliding_window}
//!     shadow_mode: true            # count and report, but answer OK
//!     descriptors: [...]           # nested entries of the same descriptor
//! ```
//!
//! Extended with `algorithm` (`fixed_window`, Envoy's, when unset;
//! `sliding_window`, `gcra` or `token_bucket`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::services::ratelimit::{Algorithm, FailMode, Limit, LimitSpec, MAX_LIMIT};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    domain: String,
    #[serde(default)]
    descriptors: Vec<NodeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    #[serde(default)]
    descriptors: Vec<NodeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<ReplaceFile>,
    #[serde(default)]
    algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceFile {
    name: String,
}

/// Envoy's units, as `RateLimitResponse.RateLimit.Unit` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Week = 7,
}

impl Unit {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            _ => return None,
        })
    }

    /// From the wire (`RateLimitOverride.unit`, envoy.type.v3 numbering:
    /// 1 second … 4 day, 5 month).
    pub fn from_override(n: i32) -> Option<Self> {
        Some(match n {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            _ => return None,
        })
    }

    /// The window, aligned to the epoch as envoyproxy/ratelimit's (a month
    /// is 30 days).
    pub fn window(self) -> Duration {
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
        })
    }
}

/// What a matched descriptor is held to.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Never limited, never counted.
    Unlimited,
    /// `requests_per_unit: 0`: every request is over the limit.
    Blocked,
    Limited(Limit),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub kind: Kind,
    pub requests_per_unit: u64,
    pub unit: Unit,
    pub name: String,
    pub replaces: Vec<String>,
}

/// How a node matches an entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Exact(String),
    Prefix(String),
    /// No value: any value, each with its own counter.
    Any,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub key: String,
    pub value: Value,
    pub rule: Option<Rule>,
    pub shadow: bool,
    /// The node's place, for metrics: `key` or `key_value`, joined by `.`.
    pub path: Arc<str>,
    pub children: Vec<Node>,
}

/// Every configured domain.
#[derive(Debug, Clone, Default)]
pub struct Domains(pub BTreeMap<String, Vec<Node>>);

/// A rule from a `rate_limit:` block.
fn rule(r: &RateLimitFile) -> Result<Rule, String> {
    let unit = match (&r.unit, r.unlimited) {
        (Some(_), true) => return Err("unit: not with unlimited".to_owned()),
        (None, true) => Unit::Second,
        (None, false) => {
            return Err("unit: is required (second, minute, hour, day, week or month)".to_owned());
        }
        (Some(u), false) => Unit::parse(u).ok_or_else(|| {
            format!("unit: must be second, minute, hour, day, week or month, got `{u}`")
        })?,
    };
    let algorithm = match r.algorithm.as_deref() {
        None | Some("fixed_window") => Algorithm::FixedWindow,
        Some("sliding_window") => Algorithm::SlidingWindow,
        Some("gcra") => Algorithm::Gcra,
        Some("token_bucket") => Algorithm::TokenBucket,
        Some(other) => {
            return Err(format!(
                "algorithm: must be fixed_window, sliding_window, gcra or token_bucket, got `{other}`"
            ));
        }
    };
    let rpu = r.requests_per_unit.unwrap_or(0);
    if !r.unlimited && r.requests_per_unit.is_none() {
        return Err("requests_per_unit: is required".to_owned());
    }
    if rpu > MAX_LIMIT {
        return Err(format!("requests_per_unit: must be at most {MAX_LIMIT}"));
    }
    let name = r.name.clone().unwrap_or_default();
    let replaces: Vec<String> = r.replaces.iter().map(|x| x.name.clone()).collect();
    if replaces.iter().any(|x| x.is_empty() || *x == name) {
        return Err("replaces: names must be non-empty and not the rule's own name".to_owned());
    }
    let kind = if r.unlimited {
        Kind::Unlimited
    } else if rpu == 0 {
        Kind::Blocked
    } else {
        Kind::Limited(limit(algorithm, rpu, unit.window())?)
    };
    Ok(Rule {
        kind,
        requests_per_unit: rpu,
        unit,
        name,
        replaces,
    })
}

/// The limit of an algorithm at `rpu` per `window`.
pub fn limit(algorithm: Algorithm, rpu: u64, window: Duration) -> Result<Limit, String> {
    let refill = (algorithm == Algorithm::TokenBucket).then_some((Some(rpu), "refill"));
    Limit::parse(LimitSpec {
        algorithm,
        limit: (Some(rpu), "requests_per_unit"),
        period: (Some(window), "unit"),
        refill,
        fail_mode: FailMode::Closed,
    })
    .map_err(|v| {
        v.into_iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn nodes(files: &[NodeFile], at: &str, parent: &str, problems: &mut Vec<String>) -> Vec<Node> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if f.key.is_empty() {
            problems.push(format!("{here}.key: must not be empty"));
            continue;
        }
        if !seen.insert((f.key.clone(), f.value.clone())) {
            problems.push(format!(
                "{here}: another descriptor at this level has the same key and value"
            ));
        }
        let value = match f.value.as_deref() {
            None | Some("") => Value::Any,
            Some(v) if v.ends_with('*') => Value::Prefix(v.trim_end_matches('*').to_owned()),
            Some(v) => Value::Exact(v.to_owned()),
        };
        let label = match &f.value {
            Some(v) if !v.is_empty() => format!("{}_{v}", f.key),
            _ => f.key.clone(),
        };
        let path: Arc<str> = if parent.is_empty() {
            Arc::from(label)
        } else {
            Arc::from(format!("{parent}.{label}"))
        };
        let rule = f.rate_limit.as_ref().and_then(|r| {
            rule(r)
                .map_err(|e| problems.push(format!("{here}.rate_limit.{e}")))
                .ok()
        });
        let _ = f.detailed_metric;
        out.push(Node {
            key: f.key.clone(),
            value,
            rule,
            shadow: f.shadow_mode,
            children: nodes(
                &f.descriptors,
                &format!("{here}.descriptors"),
                &path,
                problems,
            ),
            path,
        });
    }
    out
}

/// Parses one domain file (YAML); every problem, with its path.
pub fn parse(text: &str, source: &str) -> Result<(String, Vec<Node>), Vec<String>> {
    let file: DomainFile = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| vec![format!("{source}: {e}")])?;
    let mut problems = Vec::new();
    if file.domain.is_empty() {
        problems.push("domain: must not be empty".to_owned());
    }
    let tree = nodes(&file.descriptors, "descriptors", "", &mut problems);
    if problems.is_empty() {
        Ok((file.domain, tree))
    } else {
        Err(problems
            .into_iter()
            .map(|p| format!("{source}: {p}"))
            .collect())
    }
}

/// Loads every file; a domain in two files is an error.
pub fn load(files: &[impl AsRef<Path>]) -> Result<Domains, Vec<String>> {
    let mut domains = BTreeMap::new();
    let mut problems = Vec::new();
    for path in files {
        let path = path.as_ref();
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(format!("{shown}: {e}")),
            Ok(text) => match parse(&text, &shown) {
                Err(mut p) => problems.append(&mut p),
                Ok((domain, tree)) => {
                    if domains.insert(domain.clone(), tree).is_some() {
                        problems.push(format!("{shown}: domain `{domain}` is configured twice"));
                    }
                }
            },
        }
    }
    if problems.is_empty() {
        Ok(Domains(domains))
    } else {
        Err(problems)
    }
}
