//! Who calls ([`Principal`]), what a method is (a read, a write, an
//! administrative change) and the patterns that allow it. A leaf module:
//! the listener's authorizer ([`crate::auth`]) and the call path
//! ([`crate::grpc`]) both use it.
//!
//! A method is `package.Service/Method`. Patterns match it with `*` for any
//! run of characters; `read` matches every read, `read:<pattern>` the reads
//! of the services matching the pattern. What counts as a read is decided
//! by the method's name (below), so a new service's methods are classified
//! without a list to update; a test prints every served method's class.

use std::sync::Arc;

use crate::keys::Tenant;

/// Who a call acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Tenant,
    /// The key's id, `cert:<common name>`, or `anonymous`.
    pub id: Arc<str>,
}

/// How a method uses the data it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads (a `read` key may call it).
    Read,
    /// Changes data.
    Write,
    /// Changes what others see or can do (flag changes, resets,
    /// revocations, dead-letter redrives and purges): audited.
    Admin,
}

/// Method names that only read, by prefix.
const READ_PREFIXES: &[&str] = &[
    "Get",
    "List",
    "Count",
    "Peek",
    "Explain",
    "Validate",
    "Export",
    "Resolve",
    "EventStream",
    "Watch",
    "Top",
    "Rank",
    "Records",
    "Around",
    "Stats",
    "Query",
    "Unique",
    "ServerReflectionInfo",
];

/// Method names that are administrative on any service, by prefix.
const ADMIN_PREFIXES: &[&str] = &["Reset", "Revoke", "Purge", "Redrive", "Pause", "Resume"];

/// Methods named like reads that change something: a cache lease, a
/// session's sliding expiry (`Get` with `touch`).
const WRITES_NAMED_LIKE_READS: &[(&str, &str)] = &[
    ("datalayer.cache.v1.CacheService", "GetOrLease"),
    ("datalayer.session.v1.SessionService", "Get"),
];

/// Flag changes change what every caller is served: all are audited.
const FLAG_SERVICE: &str = "datalayer.flags.v1.FlagService";
const FLAG_WRITES: &[&str] = &["Put", "Patch", "Delete", "SetState", "Import"];

/// Board definitions and record removals change what every player sees.
const LEADERBOARD_SERVICE: &str = "datalayer.leaderboard.v1.LeaderboardService";
const LEADERBOARD_ADMIN: &[&str] = &[
    "CreateLeaderboard",
    "UpdateLeaderboard",
    "DeleteLeaderboard",
    "DeleteRecord",
];

/// Deleting a topic drops every subscriber's messages; a push destination
/// sends a queue's data to a URL.
const ADMIN_METHODS: &[(&str, &str)] = &[
    ("datalayer.topic.v1.TopicService", "DeleteTopic"),
    ("datalayer.queue.v1.QueueService", "SetDestination"),
];

/// Services whose every method is a read whatever its name.
const READ_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "datalayer.audit.v1.AuditService",
];

/// The class of `service/method`.
pub fn classify(service: &str, method: &str) -> Access {
    if service == FLAG_SERVICE && FLAG_WRITES.contains(&method)
        || service == LEADERBOARD_SERVICE && LEADERBOARD_ADMIN.contains(&method)
        || ADMIN_METHODS.contains(&(service, method))
    {
        return Access::Admin;
    }
    if ADMIN_PREFIXES.iter().any(|p| method.starts_with(p)) {
        return Access::Admin;
    }
    // RateLimitService/Check consumes budget: a write, despite its name.
    if service.starts_with("datalayer.ratelimit.")
        || service.starts_with("envoy.service.ratelimit.")
    {
        return Access::Write;
    }
    if WRITES_NAMED_LIKE_READS.contains(&(service, method)) {
        return Access::Write;
    }
    if READ_SERVICES.contains(&service) || READ_PREFIXES.iter().any(|p| method.starts_with(p)) {
        Access::Read
    } else {
        Access::Write
    }
}

/// One `allow` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `package.Service/Method` with `*` wildcards.
    Method(String),
    /// Reads of the services matching the pattern (`*`: all).
    Reads(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 256
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/*-".contains(&b))
        };
        if text == "read" {
            return Ok(Pattern::Reads("*".to_owned()));
        }
        if let Some(services) = text.strip_prefix("read:") {
            return if ok(services) && !services.contains('/') {
                Ok(Pattern::Reads(services.to_owned()))
            } else {
                Err(format!(
                    "`{text}`: read:<service pattern>, e.g. read:datalayer.cache.v1.*"
                ))
            };
        }
        if ok(text) && (text == "*" || text.contains('/')) {
            Ok(Pattern::Method(text.to_owned()))
        } else {
            Err(format!(
                "`{text}`: a package.Service/Method pattern (`*` matches anything), `read` or read:<service pattern>"
            ))
        }
    }

    pub fn allows(&self, service: &str, method: &str) -> bool {
        match self {
            Pattern::Method(p) => glob(p, &format!("{service}/{method}")),
            Pattern::Reads(p) => glob(p, service) && classify(service, method) == Access::Read,
        }
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A list of patterns: what one key or certificate may call.
#[derive(Debug, Clone, Default)]
pub struct Allow(Vec<Pattern>);

impl Allow {
    /// Parses every entry (the configuration was validated already; an
    /// entry that does not parse allows nothing).
    pub fn new(entries: &[String]) -> Self {
        Self(
            entries
                .iter()
                .filter_map(|e| Pattern::parse(e).ok())
                .collect(),
        )
    }

    pub fn allows(&self, service: &str, method: &str) -> bool {
        self.0.iter().any(|p| p.allows(service, method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs() {
        assert!(glob("*", "a.B/C"));
        assert!(glob(
            "datalayer.cache.v1.CacheService/*",
            "datalayer.cache.v1.CacheService/Get"
        ));
        assert!(!glob(
            "datalayer.cache.v1.CacheService/*",
            "datalayer.session.v1.SessionService/Get"
        ));
        assert!(glob("*/Get*", "x.Y/GetMany"));
        assert!(!glob("*/Get*", "x.Y/Set"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "aXbYc") && !glob("a*b*c", "acb"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[test]
    fn reads_writes_and_admin() {
        assert_eq!(
            classify("datalayer.cache.v1.CacheService", "Get"),
            Access::Read
        );
        assert_eq!(
            classify("datalayer.cache.v1.CacheService", "Set"),
            Access::Write
        );
        assert_eq!(
            classify("datalayer.ratelimit.v1.RateLimitService", "Check"),
            Access::Write
        );
        assert_eq!(
            classify("datalayer.ratelimit.v1.RateLimitService", "Reset"),
            Access::Admin
        );
        assert_eq!(classify(FLAG_SERVICE, "Put"), Access::Admin);
        assert_eq!(classify(FLAG_SERVICE, "List"), Access::Read);
        assert_eq!(
            classify("datalayer.state.v1.StateService", "Put"),
            Access::Write
        );
        assert_eq!(classify("grpc.health.v1.Health", "Watch"), Access::Read);
        assert_eq!(
            classify("datalayer.cache.v1.CacheService", "GetOrLease"),
            Access::Write
        );
        assert_eq!(
            classify("datalayer.session.v1.SessionService", "Get"),
            Access::Write
        );
    }

    /// Bounded fuzz: random text never panics the parser or the matcher.
    #[test]
    fn random_patterns_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"*/.:_-aZ09read{} \xff";
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((x >> (i % 8 * 8)) as usize + i) % alphabet.len()] as char)
                .collect();
            if let Ok(p) = Pattern::parse(&text) {
                let _ = p.allows("datalayer.cache.v1.CacheService", "Get");
            }
            let _ = glob(&text, "datalayer.cache.v1.CacheService/Get");
            let _ = glob("*a*", &text);
        }
    }

    #[test]
    fn patterns_parse_and_allow() {
        let reads = Pattern::parse("read").unwrap();
        assert!(reads.allows("datalayer.cache.v1.CacheService", "Get"));
        assert!(!reads.allows("datalayer.cache.v1.CacheService", "Set"));
        let cache_reads = Pattern::parse("read:datalayer.cache.*").unwrap();
        assert!(cache_reads.allows("datalayer.cache.v1.CacheService", "GetMany"));
        assert!(!cache_reads.allows("datalayer.state.v1.StateService", "Get"));
        for bad in ["", "Get", "read:", "read:a/b", "a b/c", "x{y}/z"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
