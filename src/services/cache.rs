//! `datalayer.v1.CacheService`: parse (validate) → apply (store) → map.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use crate::cache::{self, Bounds, Condition, Found, LeaseResult, SetOp, SetOutcome, SetResult};
use crate::error::{Error, FieldViolation, Violations, expected_version};
use crate::methods;
use crate::proto::{
    self, CacheEntry, DeleteRequest, DeleteResponse, GetManyRequest, GetManyResponse,
    GetOrLeaseRequest, GetOrLeaseResponse, GetRequest, GetResponse, InvalidateTagsRequest,
    InvalidateTagsResponse, LeaseStatus, SetManyRequest, SetManyResponse, SetRequest, SetResponse,
    cache_service_server::CacheService,
};
use crate::rpc::{self, Deadlines};
use crate::services::{duration, to_duration};
use crate::store::CacheStore;

methods!("datalayer.v1.CacheService":
    GET = "Get",
    SET = "Set",
    DELETE = "Delete",
    GET_MANY = "GetMany",
    SET_MANY = "SetMany",
    INVALIDATE_TAGS = "InvalidateTags",
    GET_OR_LEASE = "GetOrLease",
);

pub struct CacheHandler {
    store: Arc<dyn CacheStore>,
    bounds: Bounds,
    deadlines: Deadlines,
}

impl CacheHandler {
    pub fn new(store: Arc<dyn CacheStore>, bounds: Bounds, deadlines: Deadlines) -> Self {
        Self {
            store,
            bounds,
            deadlines,
        }
    }

    /// Validates one write; every bad field is reported, not just the first.
    fn parse_set(&self, req: SetRequest) -> Result<SetOp, Vec<FieldViolation>> {
        let b = &self.bounds;
        let mut bad = Violations::default();
        bad.check(b.key(&req.key, "key"));
        if req.value.len() > b.max_value_bytes {
            bad.push(
                "value",
                format!(
                    "must be at most {} bytes (cache.max_value_bytes), got {}",
                    b.max_value_bytes,
                    req.value.len()
                ),
            );
        }
        if req.content_type.len() > 255 || req.content_type.chars().any(char::is_control) {
            bad.push(
                "content_type",
                "must be at most 255 bytes without control characters",
            );
        }
        bad.check(b.tags(&req.tags, "tags"));
        let condition = match proto::SetCondition::try_from(req.condition) {
            Ok(proto::SetCondition::Unspecified) => Condition::Always,
            Ok(proto::SetCondition::IfAbsent) => Condition::IfAbsent,
            Ok(proto::SetCondition::IfPresent) => Condition::IfPresent,
            Err(_) => {
                bad.push(
                    "condition",
                    format!("unknown SetCondition {}", req.condition),
                );
                Condition::Always
            }
        };
        bad.check(expected_version(req.expected_version, "expected_version"));
        let lease_token = if req.lease_token.is_empty() {
            None
        } else if cache::is_valid_lease_token(&req.lease_token) {
            Some(req.lease_token)
        } else {
            bad.push("lease_token", "is not a token GetOrLease issued");
            None
        };
        let ttl = bad.check(
            to_duration(req.ttl.as_ref(), "ttl")
                .and_then(|ttl| b.ttl(ttl, b.default_ttl, false, "ttl")),
        );
        let stale = bad.check(
            to_duration(req.stale_ttl.as_ref(), "stale_ttl")
                .and_then(|stale| b.ttl(stale, Some(Duration::ZERO), true, "stale_ttl")),
        );
        bad.into_result()?;
        let (Some(ttl_us), Some(stale_us)) = (ttl, stale) else {
            return Err(vec![FieldViolation::new("ttl", "could not be read")]);
        };
        Ok(SetOp {
            key: req.key,
            value: req.value.to_vec(),
            content_type: req.content_type,
            ttl_us,
            stale_us,
            condition,
            expected_version: req.expected_version,
            tags: req.tags,
            lease_token,
        })
    }

    /// Validates a batch of items, naming each bad one `field[i]...`.
    fn parse_all<T, U>(
        &self,
        items: Vec<T>,
        field: &str,
        parse: impl Fn(T) -> Result<U, Vec<FieldViolation>>,
    ) -> Result<Vec<U>, Error> {
        self.bounds.batch(items.len(), field)?;
        let mut parsed = Vec::with_capacity(items.len());
        let mut bad = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match parse(item) {
                Ok(p) => parsed.push(p),
                Err(vs) => bad.extend(vs.into_iter().map(|v| v.under(&format!("{field}[{i}]")))),
            }
        }
        if bad.is_empty() {
            Ok(parsed)
        } else {
            Err(Error::InvalidArgument(bad))
        }
    }

    #[tracing::instrument(skip_all, fields(keys = keys.len()))]
    async fn apply_get(&self, keys: &[String], call: rpc::Call) -> Result<Vec<GetResponse>, Error> {
        let found = call.store(self.store.get_many(keys)).await?;
        Ok(found.into_iter().map(get_response).collect())
    }

    #[tracing::instrument(skip_all, fields(entries = ops.len()))]
    async fn apply_set(&self, ops: &[SetOp], call: rpc::Call) -> Result<Vec<SetResponse>, Error> {
        let results = call.store(self.store.set_many(ops)).await?;
        if results.len() != ops.len() {
            return Err(Error::Internal(
                "the store answered a short batch".to_owned(),
            ));
        }
        Ok(results.into_iter().map(set_response).collect())
    }

    fn lease_ttl_us(&self, ttl: Option<&prost_types::Duration>) -> Result<u64, FieldViolation> {
        let ttl = to_duration(ttl, "lease_ttl")?.unwrap_or(self.bounds.default_lease_ttl);
        if ttl < Duration::from_millis(1) || ttl > self.bounds.max_lease_ttl {
            return Err(FieldViolation::new(
                "lease_ttl",
                format!(
                    "must be between 1ms and {} (cache.max_lease_ttl)",
                    humantime::format_duration(self.bounds.max_lease_ttl)
                ),
            ));
        }
        Ok(ttl.as_micros() as u64)
    }
}

fn entry(found: Found) -> CacheEntry {
    CacheEntry {
        value: found.value,
        content_type: found.content_type,
        version: found.version,
        ttl: Some(duration(found.ttl_us)),
        stale: found.stale,
        expires_in: Some(duration(found.expires_in_us)),
        tags: found.tags,
    }
}

fn get_response(found: Option<Found>) -> GetResponse {
    GetResponse {
        found: found.is_some(),
        entry: found.map(entry),
    }
}

fn set_response(result: SetResult) -> SetResponse {
    let outcome = match result.outcome {
        SetOutcome::Stored => proto::SetOutcome::Stored,
        SetOutcome::ConditionFailed => proto::SetOutcome::ConditionFailed,
        SetOutcome::VersionMismatch => proto::SetOutcome::VersionMismatch,
        SetOutcome::LeaseInvalid => proto::SetOutcome::LeaseInvalid,
    };
    SetResponse {
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

#[tonic::async_trait]
impl CacheService for CacheHandler {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        rpc::serve(&GET, self.deadlines, request, |req, call| async move {
            self.bounds.key(&req.key, "key")?;
            one(self.apply_get(&[req.key], call).await?)
        })
        .await
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        rpc::serve(&SET, self.deadlines, request, |req, call| async move {
            let op = self.parse_set(req).map_err(Error::InvalidArgument)?;
            one(self.apply_set(&[op], call).await?)
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        rpc::serve(&DELETE, self.deadlines, request, |req, call| async move {
            self.bounds.key(&req.key, "key")?;
            let deleted = call.store(self.store.delete(&req.key)).await?;
            Ok(DeleteResponse { deleted })
        })
        .await
    }

    async fn get_many(
        &self,
        request: Request<GetManyRequest>,
    ) -> Result<Response<GetManyResponse>, Status> {
        rpc::serve(&GET_MANY, self.deadlines, request, |req, call| async move {
            let keys = self.parse_all(req.keys, "keys", |key| {
                self.bounds.key(&key, "").map(|()| key).map_err(|v| vec![v])
            })?;
            let entries = self.apply_get(&keys, call).await?;
            Ok(GetManyResponse { entries })
        })
        .await
    }

    async fn set_many(
        &self,
        request: Request<SetManyRequest>,
    ) -> Result<Response<SetManyResponse>, Status> {
        rpc::serve(&SET_MANY, self.deadlines, request, |req, call| async move {
            let ops = self.parse_all(req.entries, "entries", |e| self.parse_set(e))?;
            let results = self.apply_set(&ops, call).await?;
            Ok(SetManyResponse { results })
        })
        .await
    }

    async fn invalidate_tags(
        &self,
        request: Request<InvalidateTagsRequest>,
    ) -> Result<Response<InvalidateTagsResponse>, Status> {
        rpc::serve(
            &INVALIDATE_TAGS,
            self.deadlines,
            request,
            |req, call| async move {
                self.bounds.batch(req.tags.len(), "tags")?;
                for (i, tag) in req.tags.iter().enumerate() {
                    self.bounds.tag(tag, &format!("tags[{i}]"))?;
                }
                let mut tags = req.tags;
                tags.sort();
                tags.dedup();
                let invalidated = call.store(self.store.invalidate_tags(&tags)).await?;
                Ok(InvalidateTagsResponse { invalidated })
            },
        )
        .await
    }

    async fn get_or_lease(
        &self,
        request: Request<GetOrLeaseRequest>,
    ) -> Result<Response<GetOrLeaseResponse>, Status> {
        rpc::serve(
            &GET_OR_LEASE,
            self.deadlines,
            request,
            |req, call| async move {
                let mut bad = Vec::new();
                bad.extend(self.bounds.key(&req.key, "key").err());
                let lease_ttl_us = self
                    .lease_ttl_us(req.lease_ttl.as_ref())
                    .map_err(|v| bad.push(v))
                    .unwrap_or(0);
                if !bad.is_empty() {
                    return Err(Error::InvalidArgument(bad));
                }
                let token = cache::new_lease_token().map_err(|e| {
                    Error::Internal(format!("no randomness for a lease token: {e}"))
                })?;
                let result = call
                    .store(self.store.get_or_lease(&req.key, lease_ttl_us, &token))
                    .await?;
                let mut response = GetOrLeaseResponse::default();
                let (status, found) = match result {
                    LeaseResult::Hit(found) => (LeaseStatus::Hit, Some(found)),
                    LeaseResult::Leased { token, stale } => {
                        response.lease_token = token;
                        (LeaseStatus::Leased, stale)
                    }
                    LeaseResult::Stale(found) => (LeaseStatus::Stale, Some(found)),
                    LeaseResult::Wait { retry_after_us } => {
                        response.retry_after = Some(duration(retry_after_us));
                        (LeaseStatus::Wait, None)
                    }
                };
                response.status = status as i32;
                response.entry = found.map(entry);
                Ok(response)
            },
        )
        .await
    }
}
