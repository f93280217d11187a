//! Request validation, written once for every service.
//!
//! A parse function returns `Result<T, FieldViolation>` (one bad field) or
//! `Result<T, Invalid>` (several); [`all`] runs a tuple of them and answers
//! either every value or every violation, so a caller learns all that is
//! wrong with a request in one answer and handlers never unwrap a value that
//! was "already checked". [`each`] does the same over a list, naming items
//! `field[i]`.
//!
//! What a violation quotes of the caller's input is bounded by [`quote`]:
//! an error must never echo megabytes back (they travel in trailers).
//!
//! This module is a leaf: it imports nothing from the crate.

use std::{fmt, time::Duration};

/// Most characters of caller input an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// One bad field: its path in the request (`checks[2].key`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation under a parent field: `key` becomes `checks[3].key`.
    pub fn under(mut self, parent: &str) -> Self {
        self.field = join(parent, &self.field);
        self
    }
}

fn join(parent: &str, field: &str) -> String {
    match (parent.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (_, true) => parent.to_owned(),
        _ if field.starts_with('[') => format!("{parent}{field}"),
        _ => format!("{parent}.{field}"),
    }
}

/// Every bad field of a request: the error of a parse that failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invalid(pub Vec<FieldViolation>);

impl Invalid {
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![FieldViolation::new(field, description)])
    }

    /// Every violation under a parent field.
    pub fn under(self, parent: &str) -> Self {
        Self(self.0.into_iter().map(|v| v.under(parent)).collect())
    }

    pub fn violations(&self) -> &[FieldViolation] {
        &self.0
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

impl From<FieldViolation> for Invalid {
    fn from(v: FieldViolation) -> Self {
        Self(vec![v])
    }
}

/// A parse result [`all`] and [`each`] can combine.
pub trait Checked {
    type Value;
    fn into_checked(self) -> Result<Self::Value, Invalid>;
}

impl<T> Checked for Result<T, FieldViolation> {
    type Value = T;
    fn into_checked(self) -> Result<T, Invalid> {
        self.map_err(Invalid::from)
    }
}

impl<T> Checked for Result<T, Invalid> {
    type Value = T;
    fn into_checked(self) -> Result<T, Invalid> {
        self
    }
}

/// Tuples of parse results that [`all`] combines.
pub trait All {
    type Output;
    fn all(self) -> Result<Self::Output, Invalid>;
}

macro_rules! impl_all {
    ($($r:ident $v:ident),+) => {
        // `$r` names both a result type and its value: short and local.
        #[allow(non_camel_case_types)]
        impl<$($r: Checked),+> All for ($($r,)+) {
            type Output = ($($r::Value,)+);
            fn all(self) -> Result<Self::Output, Invalid> {
                let ($($r,)+) = self;
                let mut bad = Vec::new();
                $(
                    let $v = match $r.into_checked() {
                        Ok(value) => Some(value),
                        Err(Invalid(vs)) => {
                            bad.extend(vs);
                            None
                        }
                    };
                )+
                match ($($v,)+) {
                    ($(Some($v),)+) if bad.is_empty() => Ok(($($v,)+)),
                    _ => Err(Invalid(bad)),
                }
            }
        }
    };
}

impl_all!(ra a);
impl_all!(ra a, rb b);
impl_all!(ra a, rb b, rc c);
impl_all!(ra a, rb b, rc c, rd d);
impl_all!(ra a, rb b, rc c, rd d, re e);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g, rh h);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g, rh h, ri i);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g, rh h, ri i, rj j);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g, rh h, ri i, rj j, rk k);
impl_all!(ra a, rb b, rc c, rd d, re e, rf f, rg g, rh h, ri i, rj j, rk k, rl l);

/// Every value of a tuple of parse results, or every violation among them.
pub fn all<A: All>(results: A) -> Result<A::Output, Invalid> {
    results.all()
}

/// Parses every item of a list, naming violations `field[i]...`.
pub fn each<T, R: Checked>(
    items: impl IntoIterator<Item = T>,
    field: &str,
    mut parse: impl FnMut(T) -> R,
) -> Result<Vec<R::Value>, Invalid> {
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match parse(item).into_checked() {
            Ok(value) => parsed.push(value),
            Err(Invalid(vs)) => {
                let at = format!("{field}[{i}]");
                bad.extend(vs.into_iter().map(|v| v.under(&at)));
            }
        }
    }
    if bad.is_empty() {
        Ok(parsed)
    } else {
        Err(Invalid(bad))
    }
}

/// At most [`QUOTE_CHARS`] characters of `value`, then `…(N bytes)`.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("`{value}`"),
        Some((end, _)) => format!("`{}`…({} bytes)", &value[..end], value.len()),
    }
}

/// A caller's key: non-empty, at most `max` bytes.
pub fn key(value: &str, field: &str, max: usize) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

/// Longest name of a collection, queue, lock or schedule, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A name callers choose for a collection, queue, lock or schedule: 1 to
/// 128 bytes of `[A-Za-z0-9_.:-]` (it becomes part of Redis keys).
pub fn name(value: &str, field: &str) -> Result<(), FieldViolation> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "must be 1 to {MAX_NAME_BYTES} bytes of [A-Za-z0-9_.:-], got {}",
                quote(value)
            ),
        ))
    }
}

/// Text of `min..=max` bytes without control characters.
pub fn text(value: &str, field: &str, min: usize, max: usize) -> Result<(), FieldViolation> {
    if value.len() < min || value.len() > max || value.chars().any(char::is_control) {
        let what = if min == 0 {
            format!("must be at most {max} bytes")
        } else {
            format!("must be {min} to {max} bytes")
        };
        return Err(FieldViolation::new(
            field,
            format!("{what} without control characters"),
        ));
    }
    Ok(())
}

/// A list of 1 to `max` items; `setting` names the configured bound.
pub fn batch(len: usize, field: &str, max: usize, setting: &str) -> Result<(), FieldViolation> {
    if len == 0 {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if len > max {
        return Err(FieldViolation::new(
            field,
            format!("at most {max} per call ({setting}), got {len}"),
        ));
    }
    Ok(())
}

/// A duration as settings and messages write it: the largest whole unit
/// (`90d`, `36h`, `250ms`), as `humantime` reads it back.
pub fn duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The range a duration in a request must fall in, and the setting that
/// bounds it, for the error message.
#[derive(Debug, Clone, Copy)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
    pub setting: &'static str,
}

impl DurationRange {
    pub fn up_to(max: Duration, setting: &'static str) -> Self {
        Self {
            min: Duration::from_millis(1),
            max,
            setting,
        }
    }

    /// `value`, else `default`, within the range, in microseconds. Neither
    /// given: `required` says what the caller must do.
    pub fn micros(
        &self,
        value: Option<Duration>,
        default: Option<Duration>,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        let Some(d) = value.or(default) else {
            return Err(FieldViolation::new(field, "is required"));
        };
        if d < self.min || d > self.max {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be between {} and {} ({}), got {}",
                    duration(self.min),
                    duration(self.max),
                    self.setting,
                    duration(d)
                ),
            ));
        }
        Ok(d.as_micros() as u64)
    }
}

/// Versions are exact in Lua's doubles up to 2^53; no version the service
/// issues is larger, so a larger `expected_version` is a caller's mistake.
pub const MAX_VERSION: u64 = 1 << 53;

/// An `expected_version` as sent, checked against [`MAX_VERSION`].
pub fn expected_version(v: Option<u64>, field: &str) -> Result<Option<u64>, FieldViolation> {
    match v {
        Some(v) if v > MAX_VERSION => Err(FieldViolation::new(
            field,
            format!("must be at most 2^53 ({MAX_VERSION}); use a version this service returned"),
        )),
        other => Ok(other),
    }
}

/// An enum field's value: `known` when the wire value maps to one, else a
/// violation naming the number that was sent.
pub fn known<T>(value: Option<T>, raw: i32, field: &str, kind: &str) -> Result<T, FieldViolation> {
    value.ok_or_else(|| FieldViolation::new(field, format!("unknown {kind} {raw}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reports_every_violation_or_every_value() {
        let ok: Result<u8, FieldViolation> = Ok(1);
        let bad: Result<u8, FieldViolation> = Err(FieldViolation::new("a", "bad"));
        let many: Result<u8, Invalid> = Err(Invalid(vec![
            FieldViolation::new("b", "bad"),
            FieldViolation::new("c", "bad"),
        ]));
        assert_eq!(all((ok.clone(), Ok::<_, Invalid>(2))), Ok((1, 2)));
        let err = all((ok, bad, many)).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c"]);
    }

    #[test]
    fn each_names_items_by_index() {
        let err = each(["x", "", "y", ""], "keys", |k| key(k, "", 8)).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["keys[1]", "keys[3]"]);
        let nested = Invalid::one("key", "bad").under("checks[2]");
        assert_eq!(nested.0[0].field, "checks[2].key");
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote("auth"), "`auth`");
        let long = "é".repeat(4 * 1024 * 1024);
        let q = quote(&long);
        assert!(q.len() < 200, "{}", q.len());
        assert!(q.ends_with(&format!("…({} bytes)", long.len())));
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        for (d, text) in [
            (Duration::from_secs(90 * 86_400), "90d"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(90), "90s"),
        ] {
            assert_eq!(duration(d), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), d);
        }
    }

    #[test]
    fn durations_are_bounded_and_defaulted() {
        let range = DurationRange::up_to(Duration::from_secs(60), "cache.max_ttl");
        assert_eq!(
            range.micros(None, Some(Duration::from_secs(1)), "ttl"),
            Ok(1_000_000)
        );
        assert!(range.micros(None, None, "ttl").is_err());
        let too_long = range
            .micros(Some(Duration::from_secs(61)), None, "ttl")
            .unwrap_err();
        assert!(
            too_long.description.contains("cache.max_ttl"),
            "{too_long:?}"
        );
    }
}
