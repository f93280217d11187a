//! `datalayer.cache.v1.CacheService`: the wire ↔ the domain, then the store.

use std::sync::Arc;

use super::store::Store;
use super::{Condition, Found, LeaseResult, SetOp, SetOutcome, SetResult, Settings};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, duration_out};
use crate::proto::datalayer::cache::v1 as pb;
use crate::validate::{self, FieldViolation, Invalid};

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
}

crate::grpc_service! {
    pb::cache_service_server::{CacheService, CacheServiceServer} for Handler {
        unary Get => get(pb::GetRequest) -> pb::GetResponse;
        unary Set => set(pb::SetRequest) -> pb::SetResponse;
        unary Delete => delete(pb::DeleteRequest) -> pb::DeleteResponse;
        unary GetMany => get_many(pb::GetManyRequest) -> pb::GetManyResponse;
        unary SetMany => set_many(pb::SetManyRequest) -> pb::SetManyResponse;
        unary InvalidateTags => invalidate_tags(pb::InvalidateTagsRequest) -> pb::InvalidateTagsResponse;
        unary GetOrLease => get_or_lease(pb::GetOrLeaseRequest) -> pb::GetOrLeaseResponse;
    }
}

fn condition(raw: i32) -> Result<Condition, FieldViolation> {
    match pb::SetCondition::try_from(raw) {
        Ok(pb::SetCondition::Unspecified) => Ok(Condition::Always),
        Ok(pb::SetCondition::IfAbsent) => Ok(Condition::IfAbsent),
        Ok(pb::SetCondition::IfPresent) => Ok(Condition::IfPresent),
        Err(_) => Err(FieldViolation::new(
            "condition",
            format!("unknown SetCondition {raw}"),
        )),
    }
}

fn lease_token(token: String) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        Ok(None)
    } else if super::is_valid_lease_token(&token) {
        Ok(Some(token))
    } else {
        Err(FieldViolation::new(
            "lease_token",
            "is not a token GetOrLease issued",
        ))
    }
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Self { store, settings }
    }

    /// Validates one write; every bad field is reported, not just the first.
    fn parse_set(&self, req: pb::SetRequest) -> Result<SetOp, Invalid> {
        let s = &self.settings;
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|ttl| s.ttl(ttl));
        let stale = duration_in(req.stale_ttl.as_ref(), "stale_ttl").and_then(|d| s.stale_ttl(d));
        let (_, _, _, _, condition, expected_version, lease_token, ttl_us, stale_us) =
            validate::all((
                s.key(&req.key, "key"),
                s.value(&req.value),
                s.content_type(&req.content_type),
                s.tags(&req.tags, "tags"),
                condition(req.condition),
                validate::expected_version(req.expected_version, "expected_version"),
                lease_token(req.lease_token),
                ttl,
                stale,
            ))?;
        Ok(SetOp {
            key: req.key,
            value: req.value.to_vec(),
            content_type: req.content_type,
            ttl_us,
            stale_us,
            condition,
            expected_version,
            tags: req.tags,
            lease_token,
        })
    }

    async fn apply_get(&self, ctx: &Ctx, keys: &[String]) -> Result<Vec<pb::GetResponse>, Error> {
        let found = ctx.store(self.store.get_many(&ctx.tenant, keys)).await?;
        Ok(found.into_iter().map(get_response).collect())
    }

    async fn apply_set(&self, ctx: &Ctx, ops: &[SetOp]) -> Result<Vec<pb::SetResponse>, Error> {
        let results = ctx.store(self.store.set_many(&ctx.tenant, ops)).await?;
        if results.len() != ops.len() {
            return Err(Error::Internal(
                "the store answered a short batch".to_owned(),
            ));
        }
        Ok(results.into_iter().map(set_response).collect())
    }

    async fn get(&self, ctx: Ctx, req: pb::GetRequest) -> Result<pb::GetResponse, Error> {
        self.settings.key(&req.key, "key")?;
        one(self.apply_get(&ctx, &[req.key]).await?)
    }

    async fn set(&self, ctx: Ctx, req: pb::SetRequest) -> Result<pb::SetResponse, Error> {
        let op = self.parse_set(req)?;
        one(self.apply_set(&ctx, &[op]).await?)
    }

    async fn delete(&self, ctx: Ctx, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, Error> {
        self.settings.key(&req.key, "key")?;
        let deleted = ctx.store(self.store.delete(&ctx.tenant, &req.key)).await?;
        Ok(pb::DeleteResponse { deleted })
    }

    async fn get_many(
        &self,
        ctx: Ctx,
        req: pb::GetManyRequest,
    ) -> Result<pb::GetManyResponse, Error> {
        self.settings.batch(req.keys.len(), "keys")?;
        let keys = validate::each(req.keys, "keys", |key| {
            self.settings.key(&key, "").map(|()| key)
        })?;
        let entries = self.apply_get(&ctx, &keys).await?;
        Ok(pb::GetManyResponse { entries })
    }

    async fn set_many(
        &self,
        ctx: Ctx,
        req: pb::SetManyRequest,
    ) -> Result<pb::SetManyResponse, Error> {
        self.settings.batch(req.entries.len(), "entries")?;
        let ops = validate::each(req.entries, "entries", |e| self.parse_set(e))?;
        let results = self.apply_set(&ctx, &ops).await?;
        Ok(pb::SetManyResponse { results })
    }

    async fn invalidate_tags(
        &self,
        ctx: Ctx,
        req: pb::InvalidateTagsRequest,
    ) -> Result<pb::InvalidateTagsResponse, Error> {
        self.settings.batch(req.tags.len(), "tags")?;
        validate::each(&req.tags, "tags", |tag| self.settings.tag(tag, ""))?;
        let mut tags = req.tags;
        tags.sort();
        tags.dedup();
        let invalidated = ctx
            .store(self.store.invalidate_tags(&ctx.tenant, &tags))
            .await?;
        Ok(pb::InvalidateTagsResponse { invalidated })
    }

    async fn get_or_lease(
        &self,
        ctx: Ctx,
        req: pb::GetOrLeaseRequest,
    ) -> Result<pb::GetOrLeaseResponse, Error> {
        let lease_ttl = duration_in(req.lease_ttl.as_ref(), "lease_ttl")
            .and_then(|ttl| self.settings.lease_ttl(ttl));
        let (_, lease_ttl_us) = validate::all((self.settings.key(&req.key, "key"), lease_ttl))?;
        let token = super::new_lease_token()
            .map_err(|e| Error::Internal(format!("no randomness for a lease token: {e}")))?;
        let result = ctx
            .store(
                self.store
                    .get_or_lease(&ctx.tenant, &req.key, lease_ttl_us, &token),
            )
            .await?;
        let mut response = pb::GetOrLeaseResponse::default();
        let (status, found) = match result {
            LeaseResult::Hit(found) => (pb::LeaseStatus::Hit, Some(found)),
            LeaseResult::Leased { token, stale } => {
                response.lease_token = token;
                (pb::LeaseStatus::Leased, stale)
            }
            LeaseResult::Stale(found) => (pb::LeaseStatus::Stale, Some(found)),
            LeaseResult::Wait { retry_after_us } => {
                response.retry_after = Some(duration_out(retry_after_us));
                (pb::LeaseStatus::Wait, None)
            }
        };
        response.status = status as i32;
        response.entry = found.map(entry);
        Ok(response)
    }
}

fn entry(found: Found) -> pb::CacheEntry {
    pb::CacheEntry {
        value: found.value,
        content_type: found.content_type,
        version: found.version,
        ttl: Some(duration_out(found.ttl_us)),
        stale: found.stale,
        expires_in: Some(duration_out(found.expires_in_us)),
        tags: found.tags,
    }
}

fn get_response(found: Option<Found>) -> pb::GetResponse {
    pb::GetResponse {
        found: found.is_some(),
        entry: found.map(entry),
    }
}

fn set_response(result: SetResult) -> pb::SetResponse {
    let outcome = match result.outcome {
        SetOutcome::Stored => pb::SetOutcome::Stored,
        SetOutcome::ConditionFailed => pb::SetOutcome::ConditionFailed,
        SetOutcome::VersionMismatch => pb::SetOutcome::VersionMismatch,
        SetOutcome::LeaseInvalid => pb::SetOutcome::LeaseInvalid,
    };
    pb::SetResponse {
        stored: result.outcome == SetOutcome::Stored,
        outcome: outcome as i32,
        version: result.version,
    }
}

fn one<T>(mut answers: Vec<T>) -> Result<T, Error> {
    answers
        .pop()
        .ok_or_else(|| Error::Internal("the store returned no answer".to_owned()))
}
