//! `datalayer.flags.v1.FlagService`: writing, reading, explaining and
//! watching flags. Writes are validated strictly (a rule must compile; the
//! problems point into the JSON), compare-and-set capable, audited, and
//! visible to this replica at once and to others within a second.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio_stream::wrappers::BroadcastStream;

use super::Flags;
use super::convert::{json_to_struct, struct_to_json};
use super::eval::{self, CompiledFlag, Kind};
use super::logic;
use super::model::{self, parse_document, parse_flag, parse_set_meta, set_meta_json};
use super::ops;
use super::registry::ChangeType;
use super::store::{Actor, Write};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::timestamp_out;
use crate::proto::datalayer::flags::v1 as pb;
use crate::validate::{self, FieldViolation, Invalid};

pub struct Handler(pub Arc<Flags>);

crate::grpc_service! {
    pb::flag_service_server::{FlagService, FlagServiceServer} for Handler {
        unary Put => put(pb::PutRequest) -> pb::PutResponse;
        unary Patch => patch(pb::PatchRequest) -> pb::PatchResponse;
        unary Delete => delete(pb::DeleteRequest) -> pb::DeleteResponse;
        unary Get => get(pb::GetRequest) -> pb::GetResponse;
        unary List => list(pb::ListRequest) -> pb::ListResponse;
        unary SetState => set_state(pb::SetStateRequest) -> pb::SetStateResponse;
        unary Import => import(pb::ImportRequest) -> pb::ImportResponse;
        unary Export => export(pb::ExportRequest) -> pb::ExportResponse;
        unary Validate => validate(pb::ValidateRequest) -> pb::ValidateResponse;
        unary Explain => explain(pb::ExplainRequest) -> pb::ExplainResponse;
        unary ListAudit => list_audit(pb::ListAuditRequest) -> pb::ListAuditResponse;
        unary ListFlagSets => list_flag_sets(pb::ListFlagSetsRequest) -> pb::ListFlagSetsResponse;
        stream Watch => watch(pb::WatchRequest) -> pb::WatchResponse as WatchStream;
    }
}

/// Tries a read-modify-write this often against concurrent writers.
const CAS_ATTEMPTS: usize = 8;

fn names(set: &str, key: &str) -> Result<((), ()), Invalid> {
    validate::all((model::name(set, "flag_set"), model::name(key, "key")))
}

impl Handler {
    /// A definition checked strictly: it parses, and its rule compiles
    /// against the set's `$evaluators`. Problems are under `field`.
    fn check(&self, ctx: &Ctx, set: &str, text: &str, field: &str) -> Result<String, Invalid> {
        let max = self.0.settings.max_flag_bytes;
        if text.len() > max {
            return Err(Invalid::one(
                field,
                format!(
                    "must be at most {max} bytes (flags.max_flag_bytes), got {}",
                    text.len()
                ),
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Invalid::one(field, format!("is not JSON: {e}")))?;
        let def = parse_flag(&value, field)?;
        if let Some(rule) = &def.targeting {
            let evaluators = self
                .0
                .registry
                .set(&ctx.tenant, set)
                .map(|s| s.evaluators.clone())
                .unwrap_or_default();
            logic::prepare(rule, &evaluators, self.0.settings.max_targeting_depth)
                .and_then(|prepared| logic::compile(&prepared))
                .map_err(|p| {
                    let at = if p.path.is_empty() {
                        format!("{field}.targeting")
                    } else {
                        format!("{field}.targeting.{}", p.path)
                    };
                    Invalid::one(at, p.description)
                })?;
        }
        Ok(value.to_string())
    }

    fn actor<'a>(ctx: &'a Ctx, action: &'a str) -> Actor<'a> {
        // Who, not whose: the key id or certificate that made the change
        // (`anonymous` without authentication).
        Actor {
            action,
            who: ctx.principal(),
        }
    }

    /// A document's flags as stored text, and every problem of them (a
    /// rule must compile against the document's own `$evaluators`).
    fn checked_document(
        &self,
        doc: &model::Document,
        field: &str,
    ) -> (Vec<(String, String)>, Vec<FieldViolation>) {
        let mut problems = Vec::new();
        let mut flags = Vec::new();
        for (key, value) in &doc.flags {
            let at = format!("{field}.flags.{key}");
            match parse_flag(value, &at) {
                Err(Invalid(found)) => problems.extend(found),
                Ok(def) => {
                    if let Some(rule) = &def.targeting
                        && let Err(p) = logic::prepare(
                            rule,
                            &doc.evaluators,
                            self.0.settings.max_targeting_depth,
                        )
                        .and_then(|prepared| logic::compile(&prepared))
                    {
                        let path = if p.path.is_empty() {
                            format!("{at}.targeting")
                        } else {
                            format!("{at}.targeting.{}", p.path)
                        };
                        problems.push(FieldViolation::new(path, p.description));
                    }
                    flags.push((key.clone(), value.to_string()));
                }
            }
        }
        (flags, problems)
    }

    async fn stored(&self, ctx: &Ctx, set: &str, key: &str) -> Result<Option<pb::Flag>, Error> {
        let flag = ctx.store(self.0.store.get(&ctx.tenant, set, key)).await?;
        Ok(flag.map(|f| pb::Flag {
            flag_set: set.to_owned(),
            key: f.key,
            definition: f.definition,
            version: f.version,
        }))
    }

    async fn put(&self, ctx: Ctx, req: pb::PutRequest) -> Result<pb::PutResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.flag_set, &req.key]));
        let (_, definition, expected) = validate::all((
            names(&req.flag_set, &req.key),
            self.check(&ctx, &req.flag_set, &req.definition, "definition"),
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let outcome = ctx
            .store(self.0.store.write(
                &ctx.tenant,
                &req.flag_set,
                &req.key,
                Write::Put(definition),
                expected,
                Self::actor(&ctx, "put"),
            ))
            .await?;
        ctx.store(self.0.refresh(&ctx.tenant, &req.flag_set))
            .await?;
        Ok(pb::PutResponse {
            written: outcome.written,
            version: outcome.version,
        })
    }

    /// Read, change, write with the version read, until no one else wrote
    /// in between (or the caller's expected version does not match).
    async fn modify(
        &self,
        ctx: &Ctx,
        set: &str,
        key: &str,
        expected: Option<u64>,
        action: &str,
        change: impl Fn(&mut Value),
    ) -> Result<(bool, pb::Flag), Error> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .stored(ctx, set, key)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no flag `{key}` in flag set `{set}`")))?;
            if expected.is_some_and(|e| e != current.version) {
                return Ok((false, current));
            }
            let mut value: Value = serde_json::from_str(&current.definition)
                .map_err(|e| Error::DataLoss(format!("the stored flag is not JSON: {e}")))?;
            change(&mut value);
            let definition = self.check(ctx, set, &value.to_string(), "definition")?;
            let outcome = ctx
                .store(self.0.store.write(
                    &ctx.tenant,
                    set,
                    key,
                    Write::Put(definition.clone()),
                    Some(current.version),
                    Self::actor(ctx, action),
                ))
                .await?;
            if outcome.written {
                ctx.store(self.0.refresh(&ctx.tenant, set)).await?;
                return Ok((
                    true,
                    pb::Flag {
                        flag_set: set.to_owned(),
                        key: key.to_owned(),
                        definition,
                        version: outcome.version,
                    },
                ));
            }
        }
        Err(Error::FailedPrecondition(format!(
            "flag `{key}` changed {CAS_ATTEMPTS} times while being patched; try again"
        )))
    }

    async fn patch(&self, ctx: Ctx, req: pb::PatchRequest) -> Result<pb::PatchResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.flag_set, &req.key]));
        let patch = serde_json::from_str::<Value>(&req.merge_patch)
            .map_err(|e| FieldViolation::new("merge_patch", format!("is not JSON: {e}")));
        let (_, patch, expected) = validate::all((
            names(&req.flag_set, &req.key),
            patch,
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let (written, flag) = self
            .modify(&ctx, &req.flag_set, &req.key, expected, "patch", |v| {
                json_patch::merge(v, &patch)
            })
            .await?;
        Ok(pb::PatchResponse {
            written,
            flag: Some(flag),
        })
    }

    async fn set_state(
        &self,
        ctx: Ctx,
        req: pb::SetStateRequest,
    ) -> Result<pb::SetStateResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.flag_set, &req.key]));
        let state = match pb::State::try_from(req.state) {
            Ok(pb::State::Enabled) => Ok("ENABLED"),
            Ok(pb::State::Disabled) => Ok("DISABLED"),
            _ => Err(FieldViolation::new(
                "state",
                "must be STATE_ENABLED or STATE_DISABLED",
            )),
        };
        let (_, state, expected) = validate::all((
            names(&req.flag_set, &req.key),
            state,
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let (written, flag) = self
            .modify(&ctx, &req.flag_set, &req.key, expected, "set_state", |v| {
                v["state"] = Value::String(state.to_owned())
            })
            .await?;
        Ok(pb::SetStateResponse {
            written,
            flag: Some(flag),
        })
    }

    async fn delete(&self, ctx: Ctx, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.flag_set, &req.key]));
        let (_, expected) = validate::all((
            names(&req.flag_set, &req.key),
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let outcome = ctx
            .store(self.0.store.write(
                &ctx.tenant,
                &req.flag_set,
                &req.key,
                Write::Delete,
                expected,
                Self::actor(&ctx, "delete"),
            ))
            .await?;
        ctx.store(self.0.refresh(&ctx.tenant, &req.flag_set))
            .await?;
        Ok(pb::DeleteResponse {
            deleted: outcome.written,
        })
    }

    async fn get(&self, ctx: Ctx, req: pb::GetRequest) -> Result<pb::GetResponse, Error> {
        names(&req.flag_set, &req.key)?;
        let flag = self
            .stored(&ctx, &req.flag_set, &req.key)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no flag `{}` in flag set `{}`",
                    req.key, req.flag_set
                ))
            })?;
        Ok(pb::GetResponse { flag: Some(flag) })
    }

    async fn list(&self, ctx: Ctx, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        model::name(&req.flag_set, "flag_set")?;
        let size = match req.page_size {
            0 => 100,
            n if n > 1000 => return Err(Error::invalid("page_size", "at most 1000")),
            n => n as usize,
        };
        let Some(set) = ctx
            .store(self.0.store.load(&ctx.tenant, &req.flag_set))
            .await?
        else {
            return Ok(pb::ListResponse::default());
        };
        let mut flags: Vec<_> = set
            .flags
            .into_iter()
            .filter(|f| f.key > req.page_token)
            .collect();
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        let next = if flags.len() > size {
            flags[size - 1].key.clone()
        } else {
            String::new()
        };
        Ok(pb::ListResponse {
            flags: flags
                .into_iter()
                .take(size)
                .map(|f| pb::Flag {
                    flag_set: req.flag_set.clone(),
                    key: f.key,
                    definition: f.definition,
                    version: f.version,
                })
                .collect(),
            next_page_token: next,
        })
    }

    async fn import(&self, ctx: Ctx, req: pb::ImportRequest) -> Result<pb::ImportResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.flag_set]));
        model::name(&req.flag_set, "flag_set")?;
        let doc =
            parse_document(&req.document, &self.0.settings).map_err(|e| e.under("document"))?;
        let (flags, problems) = self.checked_document(&doc, "document");
        if !problems.is_empty() {
            return Err(Invalid(problems).into());
        }
        let meta = set_meta_json(&doc.metadata, &doc.evaluators);
        let (version, changed) = ctx
            .store(self.0.store.import(
                &ctx.tenant,
                &req.flag_set,
                &meta,
                &flags,
                req.replace,
                None,
                Self::actor(&ctx, "import"),
            ))
            .await?;
        ctx.store(self.0.refresh(&ctx.tenant, &req.flag_set))
            .await?;
        Ok(pb::ImportResponse {
            version,
            changed: changed.into_iter().map(|(k, _)| k).collect(),
        })
    }

    async fn export(&self, ctx: Ctx, req: pb::ExportRequest) -> Result<pb::ExportResponse, Error> {
        model::name(&req.flag_set, "flag_set")?;
        let set = ctx
            .store(self.0.store.load(&ctx.tenant, &req.flag_set))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no flag set `{}`", req.flag_set)))?;
        let (metadata, evaluators) = parse_set_meta(&set.meta);
        let mut flags = serde_json::Map::new();
        for f in set.flags {
            let value = serde_json::from_str(&f.definition).unwrap_or(Value::Null);
            flags.insert(f.key, value);
        }
        let mut doc = serde_json::json!({"flags": flags});
        if !metadata.is_empty() {
            doc["metadata"] = Value::Object(metadata);
        }
        if !evaluators.is_empty() {
            doc["$evaluators"] = Value::Object(evaluators);
        }
        Ok(pb::ExportResponse {
            document: serde_json::to_string_pretty(&doc).unwrap_or_default(),
            version: set.version,
        })
    }
}

mod read;
