//! FlagService's reads that evaluate or stream: Validate, Explain, Watch,
//! ListAudit, ListFlagSets.

use super::*;

fn dry_run_value(value: &Option<Value>) -> String {
    value.as_ref().map_or("null".to_owned(), Value::to_string)
}

impl Handler {
    pub(super) async fn validate(
        &self,
        _ctx: Ctx,
        req: pb::ValidateRequest,
    ) -> Result<pb::ValidateResponse, Error> {
        if req.contexts.len() > 100 {
            return Err(Error::invalid("contexts", "at most 100 sample contexts"));
        }
        let doc = match parse_document(&req.document, &self.0.settings) {
            Ok(doc) => doc,
            Err(Invalid(problems)) => {
                return Ok(pb::ValidateResponse {
                    problems: problems
                        .into_iter()
                        .map(|p| pb::Problem {
                            path: format!("document.{}", p.field)
                                .trim_end_matches('.')
                                .to_owned(),
                            description: p.description,
                        })
                        .collect(),
                    results: Vec::new(),
                });
            }
        };
        let (flags, problems) = self.checked_document(&doc, "document");
        let contexts: Vec<_> = req.contexts.iter().map(struct_to_json).collect();
        let mut results = Vec::new();
        for (key, text) in &flags {
            let flag = CompiledFlag::new(
                key,
                text,
                0,
                &doc.evaluators,
                self.0.settings.max_targeting_depth,
            );
            for (i, context) in contexts.iter().enumerate() {
                let data = eval::rule_context(
                    key,
                    context,
                    &self.0.registry.static_context,
                    super::super::now_secs(),
                );
                let run = eval::resolve(&flag, &doc.metadata, data, Kind::Any);
                results.push(match run {
                    Ok(r) => pb::DryRun {
                        key: key.clone(),
                        context: i as u32,
                        value: dry_run_value(&r.value),
                        variant: r.variant.unwrap_or_default(),
                        reason: r.reason.as_str().into(),
                        error: String::new(),
                    },
                    Err(e) => pb::DryRun {
                        key: key.clone(),
                        context: i as u32,
                        value: "null".into(),
                        variant: String::new(),
                        reason: "ERROR".into(),
                        error: e.to_string(),
                    },
                });
            }
        }
        Ok(pb::ValidateResponse {
            problems: problems
                .into_iter()
                .map(|p| pb::Problem {
                    path: p.field,
                    description: p.description,
                })
                .collect(),
            results,
        })
    }

    pub(super) async fn explain(
        &self,
        ctx: Ctx,
        req: pb::ExplainRequest,
    ) -> Result<pb::ExplainResponse, Error> {
        names(&req.flag_set, &req.key)?;
        self.0.ensure(&ctx.tenant).await;
        let selector = (!req.flag_set.is_empty()).then_some(req.flag_set.as_str());
        let (set, flag) = self.0.registry.lookup(&ctx.tenant, selector, &req.key)?;
        let context = req.context.as_ref().map(struct_to_json).unwrap_or_default();
        let data = eval::rule_context(
            &req.key,
            &context,
            &self.0.registry.static_context,
            super::super::now_secs(),
        );
        let evaluated_context = data.as_object().map(json_to_struct);
        let (run, taken) =
            ops::recording(|| eval::resolve(&flag, &set.metadata, data.clone(), Kind::Any));
        let matched = explain_rule(&flag, &set.evaluators, &data);
        let fractional = taken
            .into_iter()
            .map(|b| pb::FractionalBucket {
                bucket_by: b.bucket_by.to_string(),
                hash: b.hash,
                bucket: b.bucket,
                total_weight: b.total_weight,
                variant: match &b.variant {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            })
            .collect();
        Ok(match run {
            Ok(r) => pb::ExplainResponse {
                value: dry_run_value(&r.value),
                variant: r.variant.unwrap_or_default(),
                reason: r.reason.as_str().into(),
                matched,
                fractional,
                error: String::new(),
                evaluated_context,
            },
            Err(e) => pb::ExplainResponse {
                value: "null".into(),
                variant: String::new(),
                reason: "ERROR".into(),
                matched,
                fractional,
                error: e.to_string(),
                evaluated_context,
            },
        })
    }

    pub(super) async fn list_audit(
        &self,
        ctx: Ctx,
        req: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse, Error> {
        model::name(&req.flag_set, "flag_set")?;
        let limit = match req.limit {
            0 => 100,
            n if n > 1000 => return Err(Error::invalid("limit", "at most 1000")),
            n => n as usize,
        };
        let before = (!req.before.is_empty()).then_some(req.before.as_str());
        let entries = ctx
            .store(
                self.0
                    .store
                    .audit(&ctx.tenant, &req.flag_set, limit + 1, before),
            )
            .await?;
        let more = entries.len() > limit;
        let entries: Vec<_> = entries.into_iter().take(limit).collect();
        let next_before = if more {
            entries.last().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at: Some(timestamp_out(e.at_us)),
                    flag_set: req.flag_set.clone(),
                    key: e.key,
                    action: e.action,
                    before: e.before,
                    after: e.after,
                    actor: e.actor,
                    version: e.version,
                    id: e.id,
                })
                .collect(),
            next_before,
        })
    }

    pub(super) async fn list_flag_sets(
        &self,
        ctx: Ctx,
        _req: pb::ListFlagSetsRequest,
    ) -> Result<pb::ListFlagSetsResponse, Error> {
        let mut versions = ctx.store(self.0.store.versions(&ctx.tenant)).await?;
        versions.sort();
        let mut flag_sets = Vec::new();
        for (name, version) in versions {
            let flags = match self.0.registry.set(&ctx.tenant, &name) {
                Some(set) if set.version == version => set.flags.len(),
                _ => ctx
                    .store(self.0.store.load(&ctx.tenant, &name))
                    .await?
                    .map_or(0, |s| s.flags.len()),
            };
            flag_sets.push(pb::FlagSetInfo {
                name,
                flags: flags as u32,
                version,
            });
        }
        Ok(pb::ListFlagSetsResponse { flag_sets })
    }

    pub(super) async fn watch(
        &self,
        ctx: Ctx,
        req: pb::WatchRequest,
    ) -> Result<impl Stream<Item = Result<pb::WatchResponse, Error>> + Send + 'static, Error> {
        if !req.flag_set.is_empty() {
            model::name(&req.flag_set, "flag_set")?;
        }
        self.0.ensure(&ctx.tenant).await;
        let tenant = ctx.tenant.clone();
        let only = (!req.flag_set.is_empty()).then_some(req.flag_set);
        let changes = BroadcastStream::new(self.0.registry.subscribe());
        Ok(changes
            .filter_map(move |change| {
                let out: Vec<Result<pb::WatchResponse, Error>> = match change {
                    Ok(c) if c.tenant == tenant && only.as_ref().is_none_or(|s| *s == c.set) => c
                        .flags
                        .iter()
                        .map(|(key, kind)| {
                            Ok(pb::WatchResponse {
                                flag_set: c.set.clone(),
                                key: key.clone(),
                                r#type: match kind {
                                    ChangeType::Write => pb::ChangeType::Write,
                                    ChangeType::Update => pb::ChangeType::Update,
                                    ChangeType::Delete => pb::ChangeType::Delete,
                                } as i32,
                                version: c.version,
                            })
                        })
                        .collect(),
                    Ok(_) => Vec::new(),
                    Err(_) => vec![Err(Error::ResourceExhausted(
                        "this watcher fell behind the changes; watch again and re-read".into(),
                    ))],
                };
                async move { (!out.is_empty()).then(|| futures::stream::iter(out)) }
            })
            .flatten())
    }
}

/// Which rule decided: for a top-level `if`, the first condition that
/// held; otherwise the rule as a whole.
fn explain_rule(
    flag: &CompiledFlag,
    evaluators: &serde_json::Map<String, Value>,
    data: &Value,
) -> String {
    let Ok(def) = &flag.def else {
        return "the flag cannot be read".into();
    };
    if def.state == model::State::Disabled {
        return "the flag is disabled".into();
    }
    let Some(rule) = &def.targeting else {
        return "no targeting: the default variant".into();
    };
    let Some(Value::Array(branches)) = rule.get("if") else {
        return "targeting (one rule)".into();
    };
    for (i, condition) in branches.chunks(2).enumerate() {
        if condition.len() < 2 {
            return format!(
                "targeting.if[{}]: no condition held: the else branch",
                2 * i
            );
        }
        let holds = logic::prepare(&condition[0], evaluators, 64)
            .and_then(|p| logic::compile(&p))
            .ok()
            .and_then(|c| logic::ENGINE.evaluate(&c, Arc::new(data.clone())).ok())
            .is_some_and(|v| truthy(&v));
        if holds {
            return format!("targeting.if[{}] held", 2 * i);
        }
    }
    "targeting.if: no condition held".into()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}
