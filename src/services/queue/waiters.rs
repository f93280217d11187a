//! Wake-ups for long-polls. A waiting `Lease` or `Consume` sleeps on its
//! queue's `Notify`: an enqueue (or redrive, give-back, schedule tick)
//! through this replica wakes one waiter per message at once; one through another replica is found by
//! the next look, every `queue.poll_interval`. A wait holds no Redis
//! connection: it is a timer and a `Notify`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::keys::Tenant;
use crate::store::memory::lock;

pub struct Waiters {
    queues: Mutex<HashMap<(Tenant, String), Weak<Notify>>>,
    pub poll_interval: Duration,
}

impl Waiters {
    pub fn new(poll_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            queues: Mutex::new(HashMap::new()),
            poll_interval,
        })
    }

    /// The queue's wake-up, shared by its waiters while any holds it.
    pub fn subscribe(&self, tenant: &Tenant, queue: &str) -> Arc<Notify> {
        let mut queues = lock(&self.queues);
        let key = (tenant.clone(), queue.to_owned());
        if let Some(notify) = queues.get(&key).and_then(Weak::upgrade) {
            return notify;
        }
        if queues.len() > 10_000 {
            queues.retain(|_, w| w.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        queues.insert(key, Arc::downgrade(&notify));
        notify
    }

    /// Wakes as many of the queue's waiters as messages became ready, not
    /// all of them: each waiter takes at least one, and with many
    /// long-polls on a queue, waking all would send every one to Redis to
    /// find nothing. `ready` past [`WAKE_ALL_PAST`] (a resumed queue:
    /// `u64::MAX`) wakes every waiter.
    pub fn notify(&self, tenant: &Tenant, queue: &str, ready: u64) {
        let notify = lock(&self.queues)
            .get(&(tenant.clone(), queue.to_owned()))
            .and_then(Weak::upgrade);
        let Some(notify) = notify else { return };
        if ready > WAKE_ALL_PAST {
            notify.notify_waiters();
        } else {
            for _ in 0..ready {
                notify.notify_one();
            }
        }
    }
}

/// Most waiters woken one by one; past it, all at once.
pub const WAKE_ALL_PAST: u64 = 64;
