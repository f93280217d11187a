//! `datalayer.state.v1.StateService`: the wire ↔ the domain, then the
//! store. Documents are here; counters and locks in `grpc/locks.rs`, the
//! change stream in `grpc/watch.rs`.

mod locks;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use super::store::{Store, WriteLimits};
use super::{ChangeKind, DeleteOutcome, Doc, KeyRange, PutOp, PutOutcome, Settings, patch};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, duration_out};
use crate::proto::datalayer::state::v1 as pb;
use crate::validate::{self, Invalid};

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
    /// `Watch` streams open now (bounded by `state.max_watches`).
    watches: crate::grpc::slots::Slots,
}

crate::grpc_service! {
    pb::state_service_server::{StateService, StateServiceServer} for Handler {
        unary Put => put(pb::PutRequest) -> pb::PutResponse;
        unary Get => get(pb::GetRequest) -> pb::GetResponse;
        unary GetMany => get_many(pb::GetManyRequest) -> pb::GetManyResponse;
        unary Delete => delete(pb::DeleteRequest) -> pb::DeleteResponse;
        unary Patch => patch(pb::PatchRequest) -> pb::PatchResponse;
        unary List => list(pb::ListRequest) -> pb::ListResponse;
        unary Count => count(pb::CountRequest) -> pb::CountResponse;
        unary Increment => increment(pb::IncrementRequest) -> pb::IncrementResponse;
        unary GetCounters => get_counters(pb::GetCountersRequest) -> pb::GetCountersResponse;
        unary AcquireLock => acquire_lock(pb::AcquireLockRequest) -> pb::AcquireLockResponse;
        unary RenewLock => renew_lock(pb::RenewLockRequest) -> pb::RenewLockResponse;
        unary ReleaseLock => release_lock(pb::ReleaseLockRequest) -> pb::ReleaseLockResponse;
        stream Watch => watch(pb::WatchRequest) -> pb::WatchResponse as WatchStream;
    }
}

/// What a patch writes when it creates the document.
const JSON: &str = "application/json";

fn document(collection: &str, key: &str, doc: Doc) -> pb::Document {
    pb::Document {
        collection: collection.to_owned(),
        key: key.to_owned(),
        value: doc.value,
        content_type: doc.content_type,
        version: doc.version,
        ttl: doc.ttl_ms.map(|ms| duration_out(ms * 1000)),
    }
}

fn get_response(collection: &str, key: &str, doc: Option<Doc>) -> pb::GetResponse {
    pb::GetResponse {
        found: doc.is_some(),
        document: doc.map(|d| document(collection, key, d)),
    }
}

fn not_json(collection: &str, key: &str) -> Error {
    Error::FailedPrecondition(format!(
        "document {collection}/{} is not JSON: only JSON documents can be patched or read by json_pointer",
        validate::quote(key)
    ))
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Self {
            store,
            settings,
            watches: Default::default(),
        }
    }

    fn limits(&self) -> WriteLimits {
        WriteLimits {
            max_docs: self.settings.max_docs_per_collection,
            max_log_entries: self.settings.max_log_entries,
        }
    }

    fn names(&self, collection: &str, key: &str) -> Result<((), ()), Invalid> {
        validate::all((
            super::name(collection, "collection"),
            self.settings.key(key, "key"),
        ))
    }

    async fn read(&self, ctx: &Ctx, collection: &str, key: &str) -> Result<Option<Doc>, Error> {
        let mut docs = ctx
            .store(self.store.get_many(
                &ctx.tenant,
                collection,
                std::slice::from_ref(&key.to_owned()),
            ))
            .await?;
        docs.pop()
            .ok_or_else(|| Error::Internal("the store answered no document".to_owned()))
    }

    async fn write(&self, ctx: &Ctx, collection: &str, op: &PutOp) -> Result<PutOutcome, Error> {
        let outcome = ctx
            .store(self.store.put(&ctx.tenant, collection, op, self.limits()))
            .await?;
        if let PutOutcome::Full { count } = outcome {
            return Err(Error::ResourceExhausted(format!(
                "collection {collection} holds {count} documents, the most state.max_docs_per_collection allows; delete some first"
            )));
        }
        Ok(outcome)
    }

    async fn put(&self, ctx: Ctx, req: pb::PutRequest) -> Result<pb::PutResponse, Error> {
        let s = &self.settings;
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|ttl| s.ttl(ttl));
        let (_, _, _, expected_version, ttl_ms) = validate::all((
            self.names(&req.collection, &req.key),
            s.value(&req.value, "value"),
            s.content_type(&req.content_type),
            validate::expected_version(req.expected_version, "expected_version"),
            ttl,
        ))?;
        let op = PutOp {
            key: req.key,
            value: req.value.to_vec(),
            content_type: req.content_type,
            expected_version,
            ttl_ms,
            kind: ChangeKind::Put,
        };
        Ok(match self.write(&ctx, &req.collection, &op).await? {
            PutOutcome::Written { version } => pb::PutResponse {
                written: true,
                version,
            },
            PutOutcome::Conflict { current } | PutOutcome::Full { count: current } => {
                pb::PutResponse {
                    written: false,
                    version: current,
                }
            }
        })
    }

    async fn get(&self, ctx: Ctx, req: pb::GetRequest) -> Result<pb::GetResponse, Error> {
        validate::all((
            self.names(&req.collection, &req.key),
            patch::pointer(&req.json_pointer),
        ))?;
        let mut doc = self.read(&ctx, &req.collection, &req.key).await?;
        if let Some(found) = doc.as_mut()
            && !req.json_pointer.is_empty()
        {
            match patch::read(&found.value, &req.json_pointer) {
                Err(patch::NotJson) => return Err(not_json(&req.collection, &req.key)),
                Ok(None) => doc = None,
                Ok(Some(part)) => {
                    found.value = part;
                    found.content_type = JSON.to_owned();
                }
            }
        }
        Ok(get_response(&req.collection, &req.key, doc))
    }

    async fn get_many(
        &self,
        ctx: Ctx,
        req: pb::GetManyRequest,
    ) -> Result<pb::GetManyResponse, Error> {
        validate::all((
            super::name(&req.collection, "collection"),
            self.settings.keys(&req.keys, "keys"),
        ))?;
        let docs = ctx
            .store(self.store.get_many(&ctx.tenant, &req.collection, &req.keys))
            .await?;
        if docs.len() != req.keys.len() {
            return Err(Error::Internal(
                "the store answered a short batch".to_owned(),
            ));
        }
        let documents = req
            .keys
            .iter()
            .zip(docs)
            .map(|(key, doc)| get_response(&req.collection, key, doc))
            .collect();
        Ok(pb::GetManyResponse { documents })
    }

    async fn delete(&self, ctx: Ctx, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, Error> {
        let (_, expected) = validate::all((
            self.names(&req.collection, &req.key),
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let outcome = ctx
            .store(self.store.delete(
                &ctx.tenant,
                &req.collection,
                &req.key,
                expected,
                self.limits(),
            ))
            .await?;
        Ok(pb::DeleteResponse {
            deleted: outcome == DeleteOutcome::Deleted,
        })
    }

    /// Read, merge, write with the version read as `expected_version`;
    /// another writer in between makes the write a conflict, and the patch
    /// is merged again into what that writer wrote, until the deadline.
    async fn patch(&self, ctx: Ctx, req: pb::PatchRequest) -> Result<pb::PatchResponse, Error> {
        let s = &self.settings;
        let (_, _, merge, expected) = validate::all((
            self.names(&req.collection, &req.key),
            s.value(&req.merge_patch, "merge_patch"),
            patch::parse_patch(&req.merge_patch),
            validate::expected_version(req.expected_version, "expected_version"),
        ))?;
        let (collection, key) = (&req.collection, &req.key);
        let mut attempt: u32 = 0;
        loop {
            let current = self.read(&ctx, collection, key).await?;
            let version = current.as_ref().map_or(0, |d| d.version);
            if expected.is_some_and(|v| v != version) {
                return Ok(pb::PatchResponse {
                    written: false,
                    document: current.map(|d| document(collection, key, d)),
                });
            }
            if current.is_none() && !req.create {
                return Err(Error::NotFound(format!(
                    "no document {collection}/{}; set create to patch into an empty object",
                    validate::quote(key)
                )));
            }
            let merged = patch::apply(current.as_ref().map(|d| d.value.as_slice()), &merge)
                .ok_or_else(|| not_json(collection, key))?;
            if merged.len() > s.max_value_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "the patched document would be {} bytes, more than state.max_value_bytes ({})",
                    merged.len(),
                    s.max_value_bytes
                )));
            }
            // A patch keeps the document's content type and expiry.
            let (content_type, ttl_ms) = current.map_or((JSON.to_owned(), 0), |d| {
                (d.content_type, d.ttl_ms.map_or(0, |ms| ms.max(1)))
            });
            let op = PutOp {
                key: key.clone(),
                value: merged,
                content_type,
                expected_version: Some(version),
                ttl_ms,
                kind: ChangeKind::Patch,
            };
            if let PutOutcome::Written { version } = self.write(&ctx, collection, &op).await? {
                let doc = Doc {
                    value: op.value,
                    content_type: op.content_type,
                    version,
                    ttl_ms: (op.ttl_ms > 0).then_some(op.ttl_ms),
                };
                return Ok(pb::PatchResponse {
                    written: true,
                    document: Some(document(collection, key, doc)),
                });
            }
            // Someone wrote in between: back off a little (more the more
            // often it happens), so racing patches spread out.
            attempt = attempt.saturating_add(1);
            let most = u64::from(attempt.min(10)) * 1000;
            let jitter = getrandom::u64().unwrap_or(0) % most;
            tokio::time::sleep(Duration::from_micros(jitter)).await;
        }
    }

    async fn list(&self, ctx: Ctx, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let s = &self.settings;
        let cursor = if req.cursor.is_empty() {
            Ok(())
        } else {
            s.key(&req.cursor, "cursor")
        };
        let (_, _, _, limit) = validate::all((
            super::name(&req.collection, "collection"),
            s.prefix(&req.prefix, "prefix"),
            cursor,
            s.page_size(req.limit),
        ))?;
        let range = KeyRange {
            prefix: req.prefix,
            after: (!req.cursor.is_empty()).then_some(req.cursor),
        };
        let mut keys = ctx
            .store(self.store.list(&ctx.tenant, &req.collection, &range, limit))
            .await?;
        let next_cursor = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        let mut documents = Vec::new();
        if req.with_values && !keys.is_empty() {
            let docs = ctx
                .store(self.store.get_many(&ctx.tenant, &req.collection, &keys))
                .await?;
            // A document deleted since it was listed leaves the page.
            let (kept, docs): (Vec<String>, Vec<pb::Document>) = keys
                .into_iter()
                .zip(docs)
                .filter_map(|(key, doc)| {
                    let doc = doc?;
                    let out = document(&req.collection, &key, doc);
                    Some((key, out))
                })
                .unzip();
            keys = kept;
            documents = docs;
        }
        Ok(pb::ListResponse {
            keys,
            documents,
            next_cursor,
        })
    }

    async fn count(&self, ctx: Ctx, req: pb::CountRequest) -> Result<pb::CountResponse, Error> {
        super::name(&req.collection, "collection")?;
        let count = ctx
            .store(self.store.count(&ctx.tenant, &req.collection))
            .await?;
        Ok(pb::CountResponse { count })
    }
}
