//! [`Setting`] for the value types settings use: numbers, text, paths,
//! addresses, durations (humantime strings), options and named maps.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{Bound, Bounded, Problems, Setting, join};

macro_rules! plain_setting {
    ($($ty:ty => $json:literal),* $(,)?) => {$(
        impl Setting for $ty {
            fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$ty as Deserialize>::deserialize(d)
            }
            fn schema() -> Value {
                json!({ "type": $json })
            }
            fn show(&self) -> String {
                self.to_string()
            }
            fn effective(&self) -> Value {
                json!(*self)
            }
        }
    )*};
}
plain_setting!(bool => "boolean", u32 => "integer", u64 => "integer", usize => "integer");

macro_rules! numeric_bound {
    ($($ty:ty),*) => {$(
        impl Bound for $ty {
            fn describe(schema: &mut Value, min: Self, max: Self) {
                schema["minimum"] = json!(min);
                schema["maximum"] = json!(max);
            }
            fn show(self) -> String {
                self.to_string()
            }
        }
        impl Bounded<$ty> for $ty {
            fn value(&self) -> Option<$ty> {
                Some(*self)
            }
        }
    )*};
}
numeric_bound!(u32, u64, usize);

impl Setting for String {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as Deserialize>::deserialize(d)
    }
    fn schema() -> Value {
        json!({ "type": "string" })
    }
    fn show(&self) -> String {
        format!("`\"{self}\"`")
    }
}

impl Setting for PathBuf {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <PathBuf as Deserialize>::deserialize(d)
    }
    fn schema() -> Value {
        json!({ "type": "string", "minLength": 1 })
    }
    fn show(&self) -> String {
        format!("`{}`", self.display())
    }
}

/// An address as operators write it: `127.0.0.1:50051`, `[::1]:50051`,
/// `localhost:50051` (resolved once, the first address) or `:50051` (every
/// interface).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = "e.g. `0.0.0.0:50051`, `127.0.0.1:0`, `localhost:50051` or `:50051`";
    if let Some(port) = text.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
            .map_err(|_| format!("`{text}` is not an address: {example}"));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: {example}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{text}` is not an address: {example}"));
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("`{text}`: {e} ({example})"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address ({example})"))
}

impl Setting for SocketAddr {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as Deserialize>::deserialize(d)?;
        parse_addr(&text).map_err(serde::de::Error::custom)
    }
    fn schema() -> Value {
        json!({ "type": "string", "minLength": 1 })
    }
    fn show(&self) -> String {
        format!("`{self}`")
    }
}

/// Durations are written as humantime strings: `500ms`, `2s`, `1m`, `1h30m`.
pub const DURATION_PATTERN: &str = "^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$";

impl Setting for Duration {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d)
    }
    fn schema() -> Value {
        json!({ "type": "string", "pattern": DURATION_PATTERN })
    }
    fn show(&self) -> String {
        format!("`{}`", crate::validate::duration(*self))
    }
}

impl Bound for Duration {
    fn describe(schema: &mut Value, min: Self, max: Self) {
        schema["x-minimum"] = json!(crate::validate::duration(min));
        schema["x-maximum"] = json!(crate::validate::duration(max));
    }
    fn show(self) -> String {
        crate::validate::duration(self)
    }
}

impl Bounded<Duration> for Duration {
    fn value(&self) -> Option<Duration> {
        Some(*self)
    }
}

/// A field that may be left unset.
impl<T: Setting> Setting for Option<T> {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Inner<T>(T);
        impl<'de, T: Setting> Deserialize<'de> for Inner<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                T::deserialize(d).map(Inner)
            }
        }
        Ok(Option::<Inner<T>>::deserialize(d)?.map(|inner| inner.0))
    }
    fn schema() -> Value {
        T::schema()
    }
    fn show(&self) -> String {
        match self {
            Some(v) => v.show(),
            None => "unset".to_owned(),
        }
    }
    fn effective(&self) -> Value {
        self.as_ref().map_or(Value::Null, Setting::effective)
    }
    fn check(&self, path: &str, problems: &mut Problems) {
        if let Some(v) = self {
            v.check(path, problems);
        }
    }
}

impl<B: Bound, T: Bounded<B>> Bounded<B> for Option<T> {
    fn value(&self) -> Option<B> {
        self.as_ref().and_then(Bounded::value)
    }
}

/// Named entries, e.g. rate-limit policies.
impl<T: Setting> Setting for BTreeMap<String, T> {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Inner<T>(T);
        impl<'de, T: Setting> Deserialize<'de> for Inner<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                T::deserialize(d).map(Inner)
            }
        }
        Ok(BTreeMap::<String, Inner<T>>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }
    fn schema() -> Value {
        json!({ "type": "object", "additionalProperties": T::schema() })
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "none".to_owned()
        } else {
            format!("{} entries", self.len())
        }
    }
    fn check(&self, path: &str, problems: &mut Problems) {
        for (name, value) in self {
            value.check(&join(path, name), problems);
        }
    }
    fn effective(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.clone(), v.effective()))
                .collect(),
        )
    }
}

/// A list, e.g. API keys or method patterns; problems name `path[i]`.
impl<T: Setting> Setting for Vec<T> {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Inner<T>(T);
        impl<'de, T: Setting> Deserialize<'de> for Inner<T> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                T::deserialize(d).map(Inner)
            }
        }
        Ok(Vec::<Inner<T>>::deserialize(d)?
            .into_iter()
            .map(|v| v.0)
            .collect())
    }
    fn schema() -> Value {
        json!({ "type": "array", "items": T::schema() })
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "none".to_owned()
        } else {
            self.iter()
                .map(Setting::show)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
    fn check(&self, path: &str, problems: &mut Problems) {
        for (i, value) in self.iter().enumerate() {
            value.check(&format!("{path}[{i}]"), problems);
        }
    }
    fn effective(&self) -> Value {
        Value::Array(self.iter().map(Setting::effective).collect())
    }
}

#[cfg(test)]
mod addr_tests {
    use super::parse_addr;

    #[test]
    fn addresses_take_hostnames_and_a_bare_port() {
        assert_eq!(
            parse_addr("127.0.0.1:0").unwrap().to_string(),
            "127.0.0.1:0"
        );
        assert_eq!(parse_addr(":50051").unwrap().to_string(), "0.0.0.0:50051");
        assert!(parse_addr("localhost:5").unwrap().ip().is_loopback());
        assert_eq!(parse_addr("[::1]:7").unwrap().port(), 7);
        for bad in ["", "localhost", ":x", "host:99999", "not-an-address"] {
            let err = parse_addr(bad).unwrap_err();
            assert!(err.contains("e.g."), "{bad}: {err}");
        }
    }
}
