//! flagd's custom JSON Logic operations: `fractional`, `sem_ver`,
//! `starts_with`, `ends_with`. On bad input each answers null (not false),
//! so a rule falls through to the default variant, as flagd specifies.
//!
//! `fractional` buckets as flagd's newest evaluators do (the testbed's
//! `@fractional-v3`): the bucketing value — by default `[$flagd.flagKey,
//! targetingKey]` — is encoded as canonical CBOR (integral floats become
//! integers, map keys sorted), hashed with MurmurHash3 x86 32-bit (seed 0),
//! and falls in bucket `(hash * total_weight) >> 32`.

use std::cell::RefCell;

use datalogic_rs::{ContextStack, Error, Evaluator, Operator};
use serde_json::Value;

/// A fractional split taken, for Explain.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucketed {
    pub bucket_by: Value,
    pub hash: u32,
    pub bucket: u64,
    pub total_weight: u64,
    pub variant: Value,
}

thread_local! {
    /// Set while Explain evaluates: every fractional split is recorded.
    static RECORD: RefCell<Option<Vec<Bucketed>>> = const { RefCell::new(None) };
}

/// Runs `f`, returning what it returns and the fractional splits it took.
pub fn recording<T>(f: impl FnOnce() -> T) -> (T, Vec<Bucketed>) {
    RECORD.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let taken = RECORD.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, taken)
}

fn evaluate_all(
    args: &[Value],
    context: &mut ContextStack,
    evaluator: &dyn Evaluator,
) -> datalogic_rs::Result<Vec<Value>> {
    args.iter()
        .map(|a| evaluator.evaluate(a, context))
        .collect()
}

/// A value as flagd's canonical CBOR: integral floats in [-2^63, 2^64) as
/// integers, map keys sorted by encoded length then bytes.
fn canonical(value: &Value) -> ciborium::Value {
    use ciborium::Value as C;
    match value {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::String(s) => C::Text(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                C::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                C::Integer(u.into())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let integral = f.fract() == 0.0 && f >= -9_223_372_036_854_775_808.0;
                if integral && f < 0.0 {
                    C::Integer((f as i64).into())
                } else if integral && f < 18_446_744_073_709_551_616.0 {
                    C::Integer((f as u64).into())
                } else {
                    C::Float(f)
                }
            }
        }
        Value::Array(items) => C::Array(items.iter().map(canonical).collect()),
        Value::Object(map) => {
            let mut entries: Vec<(Vec<u8>, C, C)> = map
                .iter()
                .map(|(k, v)| {
                    let key = C::Text(k.clone());
                    (encode(&key), key, canonical(v))
                })
                .collect();
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
            C::Map(entries.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
    }
}

fn encode(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

/// MurmurHash3 x86 32-bit, seed 0, of the value's canonical CBOR.
pub fn bucket_hash(value: &Value) -> u32 {
    let bytes = encode(&canonical(value));
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap_or(0)
}

/// The most weight a fractional split may total (flagd: MaxInt32).
const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

pub struct Fractional;

impl Operator for Fractional {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        let args = evaluate_all(args, context, evaluator)?;
        let Some(first) = args.first() else {
            return Ok(Value::Null);
        };
        // A first argument that is a bucket means the shorthand: bucket by
        // the flag key and the targeting key.
        let (bucket_by, buckets) = if first.is_array() {
            let data = context.root().data().clone();
            let targeting_key = match data.get("targetingKey") {
                Some(Value::String(key)) if !key.is_empty() => key.clone(),
                _ => return Ok(Value::Null),
            };
            let flag_key = data
                .get("$flagd")
                .and_then(|f| f.get("flagKey"))
                .cloned()
                .unwrap_or(Value::String(String::new()));
            (
                Value::Array(vec![flag_key, Value::String(targeting_key)]),
                &args[..],
            )
        } else {
            (first.clone(), &args[1..])
        };
        if bucket_by.is_null() {
            return Ok(Value::Null);
        }
        let mut split = Vec::with_capacity(buckets.len());
        let mut total: u64 = 0;
        for bucket in buckets {
            let Value::Array(parts) = bucket else {
                return Ok(Value::Null);
            };
            let weight = match parts.as_slice() {
                [_] => 1,
                [_, Value::Number(w)] => match w.as_i64() {
                    Some(w) => w.max(0) as u64,
                    None => return Ok(Value::Null),
                },
                _ => return Ok(Value::Null),
            };
            total = total.saturating_add(weight);
            split.push((parts[0].clone(), weight));
        }
        if total == 0 || total > MAX_TOTAL_WEIGHT {
            return Ok(Value::Null);
        }
        let hash = bucket_hash(&bucket_by);
        let bucket = (u64::from(hash) * total) >> 32;
        let mut end = 0;
        for (variant, weight) in split {
            end += weight;
            if bucket < end {
                RECORD.with(|r| {
                    if let Some(taken) = r.borrow_mut().as_mut() {
                        taken.push(Bucketed {
                            bucket_by: bucket_by.clone(),
                            hash,
                            bucket,
                            total_weight: total,
                            variant: variant.clone(),
                        });
                    }
                });
                return Ok(variant);
            }
        }
        Ok(Value::Null)
    }
}

/// `[value, prefix]` / `[value, suffix]` with strings, else null.
pub struct StringTest {
    pub test: fn(&str, &str) -> bool,
}

impl Operator for StringTest {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        let args = evaluate_all(args, context, evaluator)?;
        Ok(match args.as_slice() {
            [Value::String(text), Value::String(part)] => Value::Bool((self.test)(text, part)),
            _ => Value::Null,
        })
    }
}

/// A version as flagd reads it: `v`/`V` prefix dropped, partial versions
/// padded (`1` → `1.0.0`), numbers as written (`1.2` → `1.2.0`).
fn version(value: &Value) -> Option<semver::Version> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        _ => return None,
    };
    let text = text.strip_prefix(['v', 'V']).unwrap_or(&text);
    let numeric_end = text.find(['-', '+']).unwrap_or(text.len());
    let (numeric, rest) = text.split_at(numeric_end);
    let dots = numeric.matches('.').count();
    let padded = match dots {
        0 => format!("{numeric}.0.0{rest}"),
        1 => format!("{numeric}.0{rest}"),
        _ => text.to_owned(),
    };
    semver::Version::parse(&padded).ok()
}

pub struct SemVer;

impl Operator for SemVer {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        let args = evaluate_all(args, context, evaluator)?;
        let [left, Value::String(op), right] = args.as_slice() else {
            return Ok(Value::Null);
        };
        let (Some(a), Some(b)) = (version(left), version(right)) else {
            return Ok(Value::Null);
        };
        // Build metadata never counts in a comparison (SemVer 2.0.0 §10).
        let order = a.cmp_precedence(&b);
        use std::cmp::Ordering::{Equal, Greater, Less};
        Ok(Value::Bool(match op.as_str() {
            "=" => order == Equal,
            "!=" => order != Equal,
            "<" => order == Less,
            "<=" => order != Greater,
            ">" => order == Greater,
            ">=" => order != Less,
            "^" => a.major == b.major,
            "~" => a.major == b.major && a.minor == b.minor,
            _ => return Ok(Value::Null),
        }))
    }
}

/// Keeps an evaluation error's words, for a PARSE_ERROR message.
pub fn describe(e: &Error) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_hash_as_integers() {
        assert_eq!(bucket_hash(&json!(1.0)), bucket_hash(&json!(1)));
        assert_eq!(bucket_hash(&json!(-2.0)), bucket_hash(&json!(-2)));
        assert_eq!(bucket_hash(&json!(-0.0)), bucket_hash(&json!(0)));
        assert_ne!(bucket_hash(&json!(1.5)), bucket_hash(&json!(1)));
    }

    #[test]
    fn versions_are_read_as_flagd_reads_them() {
        assert_eq!(version(&json!("v1.2")).unwrap().to_string(), "1.2.0");
        assert_eq!(version(&json!(2.0)).unwrap().to_string(), "2.0.0");
        assert_eq!(version(&json!(1.2)).unwrap().to_string(), "1.2.0");
        assert_eq!(
            version(&json!("1.0.0-alpha")).unwrap().to_string(),
            "1.0.0-alpha"
        );
        assert!(version(&json!("2.0.0.0")).is_none());
        assert!(version(&json!("not-a-version")).is_none());
    }
}
