//! One reader per topic per replica, feeding every local fan-out
//! subscriber of the topic: the cost of following a topic is one read per
//! poll, whatever the number of subscribers.
//!
//! The first subscriber of a topic starts its feed: a task that notes the
//! topic's newest id (its *start*), then reads what follows every
//! `topic.poll_interval` (at once when a publish through this replica wakes
//! it) and broadcasts it. Each subscriber has a bounded buffer in the
//! broadcast; one that falls behind is told so and dropped, so a slow
//! subscriber never stalls the others. The feed stops when its last
//! subscriber leaves.
//!
//! A subscriber replays from the store what precedes the live feed: it
//! waits for the feed's start, then reads until it has caught up (every
//! read after the feed's start), so every message after its last replayed
//! one arrives through the feed. It skips what it already replayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use super::store::Store;
use super::{Msg, MsgId};
use crate::keys::Tenant;
use crate::store::memory::lock;

/// What a feed broadcasts.
#[derive(Debug, Clone)]
pub enum Event {
    Msg(Arc<Msg>),
    /// Retention trimmed messages the feed had not read yet; it goes on
    /// from this id.
    Gap(MsgId),
}

pub struct Feed {
    tx: broadcast::Sender<Event>,
    wake: Notify,
    /// The newest id when the feed started (`None` until it knows).
    start: watch::Sender<Option<MsgId>>,
}

impl Feed {
    /// The feed's start, once its first read of the store answered.
    pub async fn start(&self) -> MsgId {
        let mut rx = self.start.subscribe();
        loop {
            if let Some(id) = *rx.borrow_and_update() {
                return id;
            }
            if rx.changed().await.is_err() {
                return MsgId::ZERO;
            }
        }
    }
}

type FeedKey = (Tenant, String);

pub struct Hub {
    store: Arc<dyn Store>,
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
    poll: Duration,
    buffer: usize,
    batch: usize,
    store_timeout: Duration,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, poll: Duration, buffer: usize, batch: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            feeds: Mutex::new(HashMap::new()),
            poll,
            buffer,
            batch,
            store_timeout: Duration::from_secs(5),
        })
    }

    /// A receiver of the topic's feed (started if it was not).
    pub fn attach(
        self: &Arc<Self>,
        tenant: &Tenant,
        topic: &str,
    ) -> (Arc<Feed>, broadcast::Receiver<Event>) {
        let key = (tenant.clone(), topic.to_owned());
        let mut feeds = lock(&self.feeds);
        if let Some(feed) = feeds.get(&key) {
            return (feed.clone(), feed.tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(self.buffer);
        let feed = Arc::new(Feed {
            tx,
            wake: Notify::new(),
            start: watch::channel(None).0,
        });
        feeds.insert(key.clone(), feed.clone());
        tokio::spawn(self.clone().run(key, feed.clone()));
        (feed, rx)
    }

    /// A publish through this replica: its feed reads now.
    pub fn wake(&self, tenant: &Tenant, topic: &str) {
        if let Some(feed) = lock(&self.feeds).get(&(tenant.clone(), topic.to_owned())) {
            feed.wake.notify_one();
        }
    }

    /// Fan-out subscribers of the topic on this replica.
    pub fn subscribers(&self, tenant: &Tenant, topic: &str) -> usize {
        lock(&self.feeds)
            .get(&(tenant.clone(), topic.to_owned()))
            .map_or(0, |f| f.tx.receiver_count())
    }

    /// Whether the feed has subscribers left; if not it is removed (under
    /// the lock `attach` takes, so no subscriber joins a stopping feed).
    fn keep(&self, key: &FeedKey, feed: &Arc<Feed>) -> bool {
        let mut feeds = lock(&self.feeds);
        if feed.tx.receiver_count() > 0 {
            return true;
        }
        if feeds.get(key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(key);
        }
        false
    }

    async fn run(self: Arc<Self>, key: FeedKey, feed: Arc<Feed>) {
        let (tenant, topic) = &key;
        let mut last = loop {
            let read = tokio::time::timeout(self.store_timeout, self.store.last_id(tenant, topic));
            if let Ok(Ok(id)) = read.await {
                break id;
            }
            if !self.keep(&key, &feed) {
                return;
            }
            tokio::time::sleep(self.poll).await;
        };
        feed.start.send_replace(Some(last));
        let mut full = false;
        loop {
            if !full {
                tokio::select! {
                    _ = feed.wake.notified() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                }
            }
            if !self.keep(&key, &feed) {
                return;
            }
            let read = tokio::time::timeout(
                self.store_timeout,
                self.store.read(tenant, topic, last, self.batch),
            );
            let Ok(Ok(read)) = read.await else {
                full = false;
                continue;
            };
            if read.max_deleted > last
                && let Some(first) = read.first_kept
            {
                let _ = feed.tx.send(Event::Gap(first));
            }
            full = read.messages.len() >= self.batch;
            for m in read.messages {
                last = last.max(m.id);
                let _ = feed.tx.send(Event::Msg(Arc::new(m)));
            }
        }
    }
}
