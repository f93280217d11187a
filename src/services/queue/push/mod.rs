//! Push delivery: a queue with a destination has its messages POSTed to an
//! HTTP URL by the service itself (QStash's model). `sign.rs` signs each
//! delivery; `store.rs` keeps destinations; `dispatch.rs` delivers.
//!
//! Delivery is the pull queue's lease cycle run by the service: a replica
//! leases a message (for the destination's timeout and a margin), POSTs it
//! and acks it on a 2xx, or nacks it (the queue's backoff, then the dead
//! letters). So everything a pull queue promises holds: an accepted
//! message is delivered at least once, across replica and Redis restarts,
//! and a replica that dies mid-delivery only delays it by its lease.
//!
//! Destinations are an egress risk: only hosts in `queue.push.allowed_hosts`
//! are accepted (none by default), redirects are never followed, answers
//! are read up to `queue.push.max_response_bytes`, and every delivery has
//! a timeout.

pub mod dispatch;
pub mod sign;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{mins, secs};
use crate::validate::{self, FieldViolation, Invalid};

/// Longest URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most extra headers of a destination.
pub const MAX_HEADERS: usize = 16;

crate::section! {
    /// Push delivery: where the service may send messages, and how.
    pub struct PushSettings {
        /// Hosts a destination or callback URL may name: `name:port`, or a
        /// bare `name` for the scheme's default port (80, 443); every other
        /// host and port is refused. Empty: push delivery is off.
        pub allowed_hosts: Vec<String> = Vec::new();
        /// File of HS256 signing keys, one per line: the first signs, the
        /// second (the next key) is published to receivers ahead of a
        /// rotation. Required for push delivery.
        pub signing_key_file: Option<PathBuf> = None;
        /// A delivery's timeout when its destination gives none.
        pub default_timeout: Duration = secs(10), range(secs(1), mins(5));
        /// Longest timeout a destination may ask for.
        pub max_timeout: Duration = mins(5), range(secs(1), mins(30));
        /// Most bytes of an answer read (the rest is dropped).
        pub max_response_bytes: usize = 64 * 1024, range(0, 16 * 1024 * 1024);
        /// Most deliveries one destination may have in flight per replica.
        pub max_parallelism: u32 = 100, range(1, 10_000);
        /// Most push queues per tenant.
        pub max_destinations: usize = 1000, range(1, 100_000);
        /// How often the replica looks for new or changed destinations and
        /// for messages to push.
        pub poll_interval: Duration = crate::settings::ms(200), range(crate::settings::ms(10), secs(60));
    }
}

/// A queue's destination, validated, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub url: String,
    pub timeout_ms: u64,
    pub parallelism: u32,
    pub rate_per_second: f64,
    pub callback_url: String,
    pub failure_callback_url: String,
    pub headers: BTreeMap<String, String>,
}

impl PushSettings {
    /// Whether `url` is an http(s) URL to an allowed host; the parsed URL.
    pub fn url(&self, text: &str, field: &str) -> Result<url::Url, FieldViolation> {
        if text.len() > MAX_URL_BYTES {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {MAX_URL_BYTES} bytes, got {}", text.len()),
            ));
        }
        let url = url::Url::parse(text).map_err(|e| {
            FieldViolation::new(
                field,
                format!("is not a URL ({e}), got {}", validate::quote(text)),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return Err(FieldViolation::new(
                field,
                "must be an http:// or https:// URL without credentials",
            ));
        }
        if !self.allowed(&url) {
            return Err(FieldViolation::new(
                field,
                format!(
                    "host {} is not in queue.push.allowed_hosts",
                    validate::quote(url.host_str().unwrap_or(""))
                ),
            ));
        }
        Ok(url)
    }

    /// Whether the URL's host and port are allowed: an entry `host:port`
    /// allows that port, a bare `host` the scheme's default port (80, 443).
    pub fn allowed(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let default = url::Url::parse(&format!("{}://x", url.scheme()))
            .ok()
            .and_then(|u| u.port_or_known_default());
        self.allowed_hosts.iter().any(|a| {
            let (name, allowed_port) = match a.rsplit_once(':') {
                Some((n, p)) if !n.contains(']') || n.ends_with(']') => (n, p.parse::<u16>().ok()),
                _ => (a.as_str(), None),
            };
            name.eq_ignore_ascii_case(host)
                && match allowed_port {
                    Some(p) => p == port,
                    None => Some(port) == default,
                }
        })
    }

    /// A destination from its wire parts (the handler converts).
    #[allow(clippy::too_many_arguments)]
    pub fn destination(
        &self,
        url: &str,
        timeout: Option<Duration>,
        parallelism: u32,
        rate_per_second: f64,
        callback_url: &str,
        failure_callback_url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<Destination, Invalid> {
        let optional = |u: &str, field: &str| {
            if u.is_empty() {
                Ok(())
            } else {
                self.url(u, field).map(|_| ())
            }
        };
        let timeout = validate::DurationRange {
            min: Duration::from_millis(100),
            max: self.max_timeout,
            setting: "queue.push.max_timeout",
        }
        .micros(timeout, Some(self.default_timeout), "timeout");
        let parallel = match parallelism {
            0 => Ok(1),
            n if n > self.max_parallelism => Err(FieldViolation::new(
                "parallelism",
                format!(
                    "must be at most {} (queue.push.max_parallelism), got {n}",
                    self.max_parallelism
                ),
            )),
            n => Ok(n),
        };
        let rate = if rate_per_second.is_finite() && rate_per_second >= 0.0 {
            Ok(rate_per_second)
        } else {
            Err(FieldViolation::new(
                "rate_per_second",
                "must be a number ≥ 0 (0: no limit)",
            ))
        };
        let headers_ok = if headers.len() > MAX_HEADERS {
            Err(FieldViolation::new(
                "headers",
                format!("at most {MAX_HEADERS} headers, got {}", headers.len()),
            ))
        } else {
            headers
                .iter()
                .try_for_each(|(k, v)| header(k, v))
                .map_err(|why| FieldViolation::new("headers", why))
        };
        let signing = if self.signing_key_file.is_some() {
            Ok(())
        } else {
            Err(FieldViolation::new(
                "url",
                "push delivery needs queue.push.signing_key_file: every delivery is signed",
            ))
        };
        let (_, timeout_us, parallelism, rate_per_second, _, _, _, _) = validate::all((
            self.url(url, "url"),
            timeout,
            parallel,
            rate,
            optional(callback_url, "callback_url"),
            optional(failure_callback_url, "failure_callback_url"),
            headers_ok,
            signing,
        ))?;
        Ok(Destination {
            url: url.to_owned(),
            timeout_ms: timeout_us / 1000,
            parallelism,
            rate_per_second,
            callback_url: callback_url.to_owned(),
            failure_callback_url: failure_callback_url.to_owned(),
            headers: headers.clone(),
        })
    }
}

/// A header a destination may set: a valid HTTP name and value, not one
/// of the service's own (`datalayer-*`) or of the transport.
pub(super) fn header(name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("datalayer-")
        || ["host", "content-length", "transfer-encoding", "connection"].contains(&lower.as_str())
    {
        return Err(format!("{} is set by the service", validate::quote(name)));
    }
    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
        || http::HeaderValue::from_str(value).is_err()
    {
        return Err(format!(
            "{} is not a valid HTTP header",
            validate::quote(name)
        ));
    }
    Ok(())
}
