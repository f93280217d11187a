//! `Watch`: a collection's changes, in order, read from its change log.
//!
//! Each watcher reads the log every `state.watch_poll_interval` from where
//! it left off. Every write is numbered and logged, so the numbers a
//! watcher sees must follow each other; a gap means the log was trimmed
//! past the watcher (`state.max_log_entries`), and the stream ends with
//! RESOURCE_EXHAUSTED rather than skip changes silently. A store failure
//! ends the stream too (UNAVAILABLE): the caller watches again and re-reads.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use super::Handler;
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::slots::Slot;
use crate::keys::Tenant;
use crate::proto::datalayer::state::v1 as pb;
use crate::services::state::store::Store;
use crate::services::state::{self as state, Change, ChangeKind};
use crate::store::StoreError;
use crate::validate;

/// Most changes one poll reads.
const POLL_BATCH: usize = 1000;

struct Watcher {
    store: Arc<dyn Store>,
    tenant: Tenant,
    collection: String,
    prefix: String,
    cursor: String,
    last_seq: u64,
    interval: Duration,
    store_timeout: Duration,
    pending: std::collections::VecDeque<pb::WatchResponse>,
    ended: bool,
    _slot: Slot,
}

fn response(change: Change) -> pb::WatchResponse {
    let (kind, version) = match change.kind {
        ChangeKind::Put => (pb::ChangeType::Put, change.seq),
        ChangeKind::Patch => (pb::ChangeType::Patch, change.seq),
        ChangeKind::Delete => (pb::ChangeType::Delete, 0),
    };
    pb::WatchResponse {
        key: change.key,
        r#type: kind as i32,
        version,
    }
}

impl Watcher {
    async fn read(&self) -> Result<state::Changes, Error> {
        let read = self.store.changes(
            &self.tenant,
            &self.collection,
            Some(&self.cursor),
            POLL_BATCH,
        );
        match tokio::time::timeout(self.store_timeout, read).await {
            Ok(result) => result.map_err(Error::Store),
            Err(_) => Err(Error::Store(StoreError::unavailable(
                "the store did not answer a watch's read within redis.command_timeout",
            ))),
        }
    }

    /// The next change, reading the log until there is one.
    async fn next(&mut self) -> Option<Result<pb::WatchResponse, Error>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(change) = self.pending.pop_front() {
                return Some(Ok(change));
            }
            let read = match self.read().await {
                Ok(read) => read,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            };
            let got_any = !read.changes.is_empty();
            for change in read.changes {
                if change.seq != self.last_seq + 1 {
                    self.ended = true;
                    return Some(Err(Error::ResourceExhausted(format!(
                        "this watcher fell behind the change log of {} (state.max_log_entries): changes {} to {} are gone; watch again and re-read",
                        self.collection,
                        self.last_seq + 1,
                        change.seq.saturating_sub(1)
                    ))));
                }
                self.last_seq = change.seq;
                if change.key.starts_with(&self.prefix) {
                    self.pending.push_back(response(change));
                }
            }
            self.cursor = read.cursor;
            if !got_any {
                tokio::time::sleep(self.interval).await;
            }
        }
    }
}

impl Handler {
    pub(super) async fn watch(
        &self,
        ctx: Ctx,
        req: pb::WatchRequest,
    ) -> Result<impl Stream<Item = Result<pb::WatchResponse, Error>> + Send + 'static, Error> {
        validate::all((
            state::name(&req.collection, "collection"),
            self.settings.prefix(&req.prefix, "prefix"),
        ))?;
        let slot = self.watches.take(self.settings.max_watches).map_err(|open| {
            Error::ResourceExhausted(format!(
                "{open} watches are open on this instance, the most state.max_watches allows; close one or watch through another instance"
            ))
        })?;
        let start = ctx
            .store(self.store.changes(&ctx.tenant, &req.collection, None, 0))
            .await?;
        let watcher = Watcher {
            store: self.store.clone(),
            tenant: ctx.tenant.clone(),
            collection: req.collection,
            prefix: req.prefix,
            cursor: start.cursor,
            last_seq: start.last_seq,
            interval: self.settings.watch_poll_interval,
            store_timeout: ctx.store_timeout(),
            pending: Default::default(),
            ended: false,
            _slot: slot,
        };
        Ok(futures::stream::unfold(watcher, |mut w| async move {
            w.next().await.map(|item| (item, w))
        }))
    }
}
