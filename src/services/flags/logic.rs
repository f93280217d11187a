//! Targeting rules: JSON Logic (datalogic-rs, as flagd's own Rust
//! evaluator uses) with flagd's operations ([`super::ops`]).
//!
//! Before a rule is compiled it is prepared: `{"$ref": "name"}` is replaced
//! by the flag set's `$evaluators.name`, flagd's `starts_with`/`ends_with`
//! take the place of the engine's own (which answer false, not null, for
//! non-strings), every operation must be known, and the rule's depth is
//! bounded.

use std::sync::{Arc, LazyLock};

use datalogic_rs::{CompiledLogic, DataLogic, OpCode};
use serde_json::{Map, Value};

use super::ops::{Fractional, SemVer, StringTest};

/// flagd's operations, under the names rules are compiled with.
const CUSTOM: &[&str] = &[
    "fractional",
    "sem_ver",
    "flagd_starts_with",
    "flagd_ends_with",
];

pub static ENGINE: LazyLock<DataLogic> = LazyLock::new(|| {
    let mut engine = DataLogic::new();
    engine.add_operator("fractional".into(), Box::new(Fractional));
    engine.add_operator("sem_ver".into(), Box::new(SemVer));
    engine.add_operator(
        "flagd_starts_with".into(),
        Box::new(StringTest {
            test: |text, part| text.starts_with(part),
        }),
    );
    engine.add_operator(
        "flagd_ends_with".into(),
        Box::new(StringTest {
            test: |text, part| text.ends_with(part),
        }),
    );
    engine
});

/// Why a rule cannot be compiled, and where (`if[0].var`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleProblem {
    pub path: String,
    pub description: String,
}

fn problem(path: &str, description: impl Into<String>) -> RuleProblem {
    RuleProblem {
        path: path.to_owned(),
        description: description.into(),
    }
}

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_owned()
    } else if part.starts_with('[') {
        format!("{path}{part}")
    } else {
        format!("{path}.{part}")
    }
}

/// Resolves `$ref`s, renames flagd's string operations, checks every
/// operation is known and the depth is at most `max_depth`.
pub fn prepare(
    rule: &Value,
    evaluators: &Map<String, Value>,
    max_depth: usize,
) -> Result<Value, RuleProblem> {
    walk(rule, evaluators, "", 0, max_depth)
}

fn walk(
    node: &Value,
    evaluators: &Map<String, Value>,
    path: &str,
    depth: usize,
    max_depth: usize,
) -> Result<Value, RuleProblem> {
    if depth > max_depth {
        return Err(problem(
            path,
            format!("rules nest at most {max_depth} deep (flags.max_targeting_depth)"),
        ));
    }
    match node {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                walk(
                    item,
                    evaluators,
                    &join(path, &format!("[{i}]")),
                    depth + 1,
                    max_depth,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) if map.len() == 1 => {
            let (op, args) = map.iter().next().expect("one entry");
            if op == "$ref" {
                let Some(name) = args.as_str() else {
                    return Err(problem(path, "$ref takes an evaluator's name"));
                };
                let Some(rule) = evaluators.get(name) else {
                    return Err(problem(
                        path,
                        format!("$ref names no evaluator: `{name}` is not in $evaluators"),
                    ));
                };
                // An evaluator may use others; the depth bound stops cycles.
                return walk(rule, evaluators, path, depth + 1, max_depth);
            }
            let name = match op.as_str() {
                "starts_with" => "flagd_starts_with",
                "ends_with" => "flagd_ends_with",
                other => other,
            };
            if name.parse::<OpCode>().is_err() && !CUSTOM.contains(&name) {
                return Err(problem(
                    path,
                    format!("`{op}` is not a JSON Logic or flagd operation"),
                ));
            }
            let args = walk(args, evaluators, &join(path, op), depth + 1, max_depth)?;
            let mut out = Map::new();
            out.insert(name.to_owned(), args);
            Ok(Value::Object(out))
        }
        Value::Object(map) if map.is_empty() => Ok(node.clone()),
        Value::Object(_) => Err(problem(
            path,
            "an object in a rule is an operation: exactly one key",
        )),
        other => Ok(other.clone()),
    }
}

/// Compiles a prepared rule.
pub fn compile(prepared: &Value) -> Result<Arc<CompiledLogic>, RuleProblem> {
    ENGINE
        .compile(prepared)
        .map_err(|e| problem("", format!("does not compile: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_resolve_and_unknown_operations_are_named() {
        let evaluators = json!({"is_ballmer": {"==": [{"var": "email"}, "b@m.com"]}});
        let evaluators = evaluators.as_object().unwrap();
        let rule = json!({"if": [{"$ref": "is_ballmer"}, "hi", null]});
        let prepared = prepare(&rule, evaluators, 32).unwrap();
        assert_eq!(prepared["if"][0]["=="][1], "b@m.com");
        let missing =
            prepare(&json!({"if": [{"$ref": "nope"}, 1, 2]}), evaluators, 32).unwrap_err();
        assert_eq!(missing.path, "if[0]");
        let unknown = prepare(&json!({"invalid": ["x"]}), evaluators, 32).unwrap_err();
        assert!(unknown.description.contains("invalid"));
        let renamed = prepare(
            &json!({"starts_with": [{"var": "id"}, "abc"]}),
            evaluators,
            32,
        )
        .unwrap();
        assert!(renamed.get("flagd_starts_with").is_some());
    }

    #[test]
    fn depth_is_bounded_and_cyclic_refs_stop() {
        let cyclic = json!({"a": {"$ref": "a"}});
        let err = prepare(&json!({"$ref": "a"}), cyclic.as_object().unwrap(), 8).unwrap_err();
        assert!(err.description.contains("deep"), "{err:?}");
    }
}
