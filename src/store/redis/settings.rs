//! `redis.*`: where Redis is and how the service talks to it.

use std::{fmt, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserializer;
use serde_json::{Value, json};

use crate::settings::{Problems, Setting, join, ms, secs};

/// A Redis URL (or comma-separated cluster seeds) that never prints its
/// password.
#[derive(Clone)]
pub struct RedisUrl(SecretString);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The comma-separated URLs (one, unless it lists cluster seeds).
    pub fn seeds(&self) -> Vec<&str> {
        self.expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The URL(s) with every secret replaced by `***`, for logs and errors:
    /// the password, a user part that stands alone (redis-rs then takes it
    /// as the password), and `pass` / `password` query parameters (the
    /// form `redis+unix://` and `unix://` URLs carry them in).
    pub fn redacted(&self) -> String {
        self.seeds()
            .into_iter()
            .map(redact)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn redact(seed: &str) -> String {
    let Ok(mut url) = url::Url::parse(seed) else {
        return "<unparsable url>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    } else if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(k.to_ascii_lowercase().as_str(), "pass" | "password");
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Setting for RedisUrl {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(RedisUrl::new)
    }
    fn schema() -> Value {
        json!({ "type": "string", "minLength": 1 })
    }
    fn show(&self) -> String {
        format!("`{}`", self.redacted())
    }
}

crate::setting_enum! {
    /// How Redis is deployed.
    pub enum RedisMode {
        /// One Redis server (or a primary behind one address).
        Standalone = "standalone",
        /// Redis Cluster; `redis.url` lists seed nodes, comma-separated.
        Cluster = "cluster",
    }
    default = Standalone;
}

crate::section! {
    /// Where Redis is and how the service talks to it.
    pub struct RedisSettings {
        /// `redis://[:password@]host:port[/db]`, `rediss://` for TLS, or
        /// `redis+unix:///path`; in cluster mode, seed URLs separated by
        /// commas. Unset: the in-process memory store serves (state per
        /// process, lost on restart).
        pub url: Option<RedisUrl> = None;
        /// `standalone` or `cluster`.
        pub mode: RedisMode = RedisMode::Standalone;
        /// PEM file of the CA that signed Redis's certificate (`rediss://`
        /// behind a private CA).
        pub tls_ca_file: Option<PathBuf> = None;
        /// PEM file of the client certificate shown to Redis (mTLS, with
        /// `redis.tls_key_file`).
        pub tls_cert_file: Option<PathBuf> = None;
        /// PEM file of the client certificate's private key.
        pub tls_key_file: Option<PathBuf> = None;
        /// Connections to one server, each shared by every call: the
        /// commands of concurrent calls go back to back on it (pipelined).
        /// Ignored in cluster mode (one per node).
        pub connections: usize = 2, range(1, 64);
        /// Time to open a connection.
        pub connect_timeout: Duration = ms(500), range(ms(1), secs(60));
        /// How long a call waits for Redis's answer before the store counts
        /// as unavailable for that call (fail-open limits then admit).
        /// A caller's shorter deadline ends the call earlier, as
        /// DEADLINE_EXCEEDED, and never fails open.
        pub command_timeout: Duration = ms(250), range(ms(1), secs(60));
        /// A connection this slow to answer is dropped and reopened.
        pub response_timeout: Duration = secs(2), range(ms(1), secs(600));
    }
    check = RedisSettings::rules;
}

impl RedisSettings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if let Some(url) = &self.url {
            let seeds = url.seeds();
            if seeds.is_empty() {
                problems.push(join(path, "url"), "is empty; unset it for the memory store");
            }
            if self.mode == RedisMode::Standalone && seeds.len() > 1 {
                problems.push(
                    join(path, "url"),
                    "lists several servers; set redis.mode = \"cluster\" for a Redis Cluster",
                );
            }
            for seed in seeds {
                let scheme_ok = url::Url::parse(seed)
                    .map(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                    .unwrap_or(false);
                if !scheme_ok {
                    problems.push(
                        join(path, "url"),
                        format!(
                            "`{}` is not a redis://, rediss:// or redis+unix:// URL \
                             (e.g. redis://redis:6379/0)",
                            redact(seed)
                        ),
                    );
                }
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push(
                join(path, "tls_key_file"),
                "redis.tls_cert_file and redis.tls_key_file go together (mTLS to Redis)",
            );
        }
        if (self.tls_ca_file.is_some() || self.tls_cert_file.is_some())
            && !self
                .url
                .as_ref()
                .is_some_and(|u| u.seeds().iter().all(|s| s.starts_with("rediss://")))
        {
            problems.push(
                join(path, "tls_ca_file"),
                "needs redis.url with rediss:// (TLS) URLs",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_form_is_redacted() {
        for (url, secret) in [
            ("redis://:SECRET@host:6379", "SECRET"),
            ("redis://user:SECRET@host:6379/0", "SECRET"),
            ("redis://SECRET@host", "SECRET"),
            ("rediss://default:SECRET@host:6380", "SECRET"),
            ("redis+unix:///run/redis.sock?pass=SECRET", "SECRET"),
            ("unix:///run/redis.sock?db=1&pass=SECRET", "SECRET"),
            (
                "redis+unix:///run/redis.sock?password=SECRET&user=u",
                "SECRET",
            ),
            ("redis://a:S1@h1:1,redis://b:S2@h2:2", "S1"),
        ] {
            let shown = RedisUrl::new(url).redacted();
            assert!(!shown.contains(secret), "{url} printed as {shown}");
            assert!(!format!("{:?}", RedisUrl::new(url)).contains(secret));
        }
        let shown = RedisUrl::new("unix:///run/redis.sock?db=1&pass=x").redacted();
        assert!(shown.contains("db=1"), "{shown}");
        assert!(
            !RedisUrl::new("redis://a:S1@h1:1,redis://b:S2@h2:2")
                .redacted()
                .contains("S2")
        );
    }
}
