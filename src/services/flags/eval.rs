//! Evaluating one flag for a context, with flagd's semantics: reasons
//! STATIC / TARGETING_MATCH / DEFAULT / DISABLED, the caller's default
//! (an empty variant) when the flag is disabled or resolves to no variant,
//! and the errors flagd providers understand.

use std::sync::Arc;

use datalogic_rs::CompiledLogic;
use serde_json::{Map, Value};

use super::logic::{self, ENGINE, RuleProblem};
use super::model::{FlagDef, State, parse_flag};
use super::ops;

/// A flag ready to evaluate. A flag whose rule does not compile is kept
/// (it answers PARSE_ERROR), as flagd keeps it.
#[derive(Debug, Clone)]
pub struct CompiledFlag {
    pub key: String,
    /// As stored, for Get and Export.
    pub definition: String,
    pub version: u64,
    pub def: Result<FlagDef, String>,
    pub rule: Result<Option<Arc<CompiledLogic>>, RuleProblem>,
}

impl CompiledFlag {
    /// Parses and compiles a stored definition; never fails (problems are
    /// kept and answered at evaluation).
    pub fn new(
        key: &str,
        definition: &str,
        version: u64,
        evaluators: &Map<String, Value>,
        max_depth: usize,
    ) -> Self {
        let parsed = serde_json::from_str::<Value>(definition)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| parse_flag(&v, key).map_err(|e| e.to_string()));
        let rule = match &parsed {
            Ok(def) => match &def.targeting {
                None => Ok(None),
                Some(rule) => logic::prepare(rule, evaluators, max_depth)
                    .and_then(|prepared| logic::compile(&prepared))
                    .map(Some),
            },
            Err(_) => Ok(None),
        };
        Self {
            key: key.to_owned(),
            definition: definition.to_owned(),
            version,
            def: parsed,
            rule,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    String,
    Int,
    Float,
    Object,
    /// ResolveAll: any type.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Static,
    TargetingMatch,
    Default,
    Disabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
        }
    }
}

/// An answer. `value` and `variant` are `None` when the caller's default
/// applies (disabled, or no variant resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    pub metadata: Map<String, Value>,
}

/// flagd's error codes, as the providers read them from gRPC codes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// NOT_FOUND → FLAG_NOT_FOUND.
    #[error("flag `{0}` is not in the flag set")]
    NotFound(String),
    /// INVALID_ARGUMENT → TYPE_MISMATCH.
    #[error("{0}")]
    TypeMismatch(String),
    /// DATA_LOSS → PARSE_ERROR.
    #[error("{0}")]
    Parse(String),
    /// Any other code → GENERAL.
    #[error("{0}")]
    General(String),
}

/// What a rule sees: the caller's context, the static values (which win:
/// a caller cannot spoof them), `targetingKey`, and `$flagd.flagKey` /
/// `$flagd.timestamp` (seconds).
pub fn rule_context(
    key: &str,
    context: &Map<String, Value>,
    static_context: &Map<String, Value>,
    now_secs: u64,
) -> Value {
    let mut data = context.clone();
    for (k, v) in static_context {
        data.insert(k.clone(), v.clone());
    }
    data.insert(
        "$flagd".into(),
        serde_json::json!({"flagKey": key, "timestamp": now_secs}),
    );
    data.entry("targetingKey").or_insert(Value::Null);
    Value::Object(data)
}

fn default_of(
    def: &FlagDef,
    reason: Reason,
    metadata: Map<String, Value>,
) -> Result<Resolution, EvalError> {
    match &def.default_variant {
        None => Ok(Resolution {
            value: None,
            variant: None,
            reason: Reason::Default,
            metadata,
        }),
        Some(variant) => match def.variants.get(variant) {
            Some(value) => Ok(Resolution {
                value: Some(value.clone()),
                variant: Some(variant.clone()),
                reason,
                metadata,
            }),
            None => Err(EvalError::General(format!(
                "the default variant `{variant}` is not in the variants"
            ))),
        },
    }
}

fn check_type(resolution: &Resolution, kind: Kind) -> Result<(), EvalError> {
    let Some(value) = &resolution.value else {
        return Ok(());
    };
    let fits = match kind {
        Kind::Any => true,
        Kind::Bool => value.is_boolean(),
        Kind::String => value.is_string(),
        Kind::Int => {
            value.as_i64().is_some()
                || value
                    .as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
        }
        Kind::Float => value.is_number(),
        Kind::Object => value.is_object(),
    };
    if fits {
        Ok(())
    } else {
        Err(EvalError::TypeMismatch(format!(
            "the flag's value is {}, not the {kind:?} asked for",
            type_name(value)
        )))
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Evaluates `flag` for `data` (built by [`rule_context`]). `explain`
/// records the fractional splits taken.
pub fn resolve(
    flag: &CompiledFlag,
    set_metadata: &Map<String, Value>,
    data: Value,
    kind: Kind,
) -> Result<Resolution, EvalError> {
    let def = flag
        .def
        .as_ref()
        .map_err(|e| EvalError::Parse(format!("flag `{}` cannot be read: {e}", flag.key)))?;
    let mut metadata = set_metadata.clone();
    metadata.extend(def.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    if def.state == State::Disabled {
        return Ok(Resolution {
            value: None,
            variant: None,
            reason: Reason::Disabled,
            metadata,
        });
    }
    let rule = match &flag.rule {
        Err(p) => {
            return Err(EvalError::Parse(format!(
                "flag `{}`: targeting{}{}: {}",
                flag.key,
                if p.path.is_empty() { "" } else { "." },
                p.path,
                p.description
            )));
        }
        Ok(None) => {
            let resolution = default_of(def, Reason::Static, metadata)?;
            check_type(&resolution, kind)?;
            return Ok(resolution);
        }
        Ok(Some(rule)) => rule,
    };
    let result = ENGINE
        .evaluate(rule, Arc::new(data))
        .map_err(|e| EvalError::Parse(format!("flag `{}`: {}", flag.key, ops::describe(&e))))?;
    let variant = match result {
        Value::Null => {
            let resolution = default_of(def, Reason::Default, metadata)?;
            check_type(&resolution, kind)?;
            return Ok(resolution);
        }
        Value::String(s) => s,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => {
            return Err(EvalError::General(format!(
                "flag `{}`: targeting resolved to {}, not a variant name",
                flag.key,
                type_name(&other)
            )));
        }
    };
    let Some(value) = def.variants.get(&variant) else {
        return Err(EvalError::General(format!(
            "flag `{}`: targeting resolved to `{variant}`, which is not a variant",
            flag.key
        )));
    };
    let resolution = Resolution {
        value: Some(value.clone()),
        variant: Some(variant),
        reason: Reason::TargetingMatch,
        metadata,
    };
    check_type(&resolution, kind)?;
    Ok(resolution)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(def: Value) -> CompiledFlag {
        CompiledFlag::new("f", &def.to_string(), 1, &Map::new(), 32)
    }

    fn eval(flag: &CompiledFlag, context: Value, kind: Kind) -> Result<Resolution, EvalError> {
        let data = rule_context(
            "f",
            context.as_object().unwrap(),
            &Map::new(),
            1_700_000_000,
        );
        resolve(flag, &Map::new(), data, kind)
    }

    #[test]
    fn reasons_follow_flagd() {
        let f = flag(
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
        );
        let r = eval(&f, json!({}), Kind::Bool).unwrap();
        assert_eq!((r.reason, r.value), (Reason::Static, Some(json!(false))));
        let t = flag(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "email"}, "a@b.c"]}, "on", null]}
        }));
        assert_eq!(
            eval(&t, json!({"email": "a@b.c"}), Kind::Bool)
                .unwrap()
                .reason,
            Reason::TargetingMatch
        );
        assert_eq!(
            eval(&t, json!({"email": "x"}), Kind::Bool).unwrap().reason,
            Reason::Default
        );
        assert!(matches!(
            eval(&t, json!({}), Kind::String),
            Err(EvalError::TypeMismatch(_))
        ));
        let d = flag(json!({"state": "DISABLED", "variants": {"a": 1}, "defaultVariant": "a"}));
        let r = eval(&d, json!({}), Kind::Int).unwrap();
        assert_eq!((r.reason, r.variant), (Reason::Disabled, None));
    }

    #[test]
    fn broken_rules_are_parse_errors_and_missing_variants_general() {
        let bad = flag(
            json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"invalid": [1]}}),
        );
        assert!(matches!(
            eval(&bad, json!({}), Kind::Int),
            Err(EvalError::Parse(_))
        ));
        let missing = flag(
            json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [true, "three", "a"]}}),
        );
        assert!(matches!(
            eval(&missing, json!({}), Kind::Int),
            Err(EvalError::General(_))
        ));
    }
}
