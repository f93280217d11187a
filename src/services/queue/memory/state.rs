//! One queue's state and its transitions, as `lua/prelude.lua` and the
//! scripts define them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::services::queue::{Backoff, Delivery, Enqueued, Leased, MAX_PRIORITY, NewMessage};
use crate::store::memory::Expiring;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
    Ready,
    Delayed,
    Queued,
    Leased,
    Dead,
}

pub(super) struct Msg {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub priority: u32,
    pub group: String,
    pub lease_ms: u64,
    pub expire_at: u64,
    pub enqueued: u64,
    pub score: u64,
    pub due: u64,
    pub st: St,
    pub token: String,
    pub lease_until: u64,
    pub reason: String,
    pub died: u64,
    pub dq: u64,
}

#[derive(Default)]
pub(super) struct Totals {
    pub enqueued: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead: u64,
    pub expired: u64,
}

#[derive(Default)]
pub(super) struct QueueState {
    pub msgs: HashMap<u64, Msg>,
    pub ready: BTreeSet<(u64, u64)>,
    pub delayed: BTreeSet<(u64, u64)>,
    pub leased: BTreeSet<(u64, u64)>,
    pub dead: BTreeMap<u64, u64>,
    pub group_active: HashMap<String, u64>,
    pub group_queue: HashMap<String, VecDeque<u64>>,
    /// dedup id → (first id, until).
    pub dedup: HashMap<String, (u64, u64)>,
    /// Acked: id → (token, until).
    pub done: HashMap<u64, (String, u64)>,
    pub seq: u64,
    pub dseq: u64,
    pub paused: bool,
    pub totals: Totals,
    /// minute → (enqueues, acks).
    pub rates: BTreeMap<u64, (u64, u64)>,
    pub schedules: BTreeMap<String, (String, u64)>,
}

#[derive(Default)]
pub(super) struct TenantQueues {
    pub queues: HashMap<String, QueueState>,
    pub scheduled: BTreeSet<String>,
}

impl Expiring for TenantQueues {
    fn sweep(&mut self, now_us: u64) {
        let now = now_us / 1000;
        for q in self.queues.values_mut() {
            q.dedup.retain(|_, (_, until)| *until > now);
            q.done.retain(|_, (_, until)| *until > now);
            let minute = now / 60_000;
            q.rates.retain(|m, _| *m + 2 >= minute);
        }
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.scheduled.is_empty()
    }
}

pub(super) fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

impl QueueState {
    pub fn held(&self) -> u64 {
        self.msgs.len() as u64
    }

    pub(super) fn place(&mut self, id: u64, now: u64) {
        let Some(m) = self.msgs.get_mut(&id) else {
            return;
        };
        if m.due > now {
            m.st = St::Delayed;
            self.delayed.insert((m.due, id));
        } else {
            m.st = St::Ready;
            self.ready.insert((m.score, id));
        }
    }

    pub(super) fn release_group(&mut self, id: u64, now: u64) {
        let Some(group) = self.msgs.get(&id).map(|m| m.group.clone()) else {
            return;
        };
        if group.is_empty() || self.group_active.get(&group) != Some(&id) {
            return;
        }
        match self
            .group_queue
            .get_mut(&group)
            .and_then(VecDeque::pop_front)
        {
            Some(next) => {
                self.group_active.insert(group, next);
                self.place(next, now);
            }
            None => {
                self.group_active.remove(&group);
                self.group_queue.remove(&group);
            }
        }
    }

    pub(super) fn bury(&mut self, id: u64, now: u64, reason: &str) {
        self.dseq += 1;
        let dq = self.dseq;
        if let Some(m) = self.msgs.get_mut(&id) {
            m.st = St::Dead;
            m.reason = reason.to_owned();
            m.died = now;
            m.dq = dq;
            m.token.clear();
        }
        self.dead.insert(dq, id);
        self.totals.dead += 1;
        self.release_group(id, now);
    }

    /// Retry after `after` ms (else the backoff), or dead; true if dead.
    pub(super) fn retry_or_dead(
        &mut self,
        id: u64,
        now: u64,
        after: Option<u64>,
        reason: &str,
        random: f64,
    ) -> bool {
        let Some(m) = self.msgs.get_mut(&id) else {
            return false;
        };
        if m.attempts >= m.max_attempts {
            self.bury(id, now, reason);
            return true;
        }
        let jitter = (random + id as f64 * 0.618_033_988_7) % 1.0;
        let delay = after.unwrap_or_else(|| m.backoff.delay_ms(m.attempts, jitter));
        m.due = now + delay;
        m.token.clear();
        m.st = St::Delayed;
        self.delayed.insert((m.due, id));
        self.totals.retried += 1;
        false
    }

    fn reap(&mut self, now: u64, random: f64) {
        let gone: Vec<(u64, u64)> = self
            .leased
            .iter()
            .take_while(|(until, _)| *until <= now)
            .take(100)
            .copied()
            .collect();
        for entry in gone {
            self.leased.remove(&entry);
            self.retry_or_dead(entry.1, now, None, "lease expired", random);
        }
    }

    fn promote(&mut self, now: u64) {
        let due: Vec<(u64, u64)> = self
            .delayed
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(1000)
            .copied()
            .collect();
        for entry in due {
            self.delayed.remove(&entry);
            if let Some(m) = self.msgs.get_mut(&entry.1) {
                m.st = St::Ready;
                self.ready.insert((m.score, entry.1));
            }
        }
    }

    pub(super) fn rate(&mut self, now: u64, ack: bool) {
        let bucket = self.rates.entry(now / 60_000).or_default();
        if ack {
            bucket.1 += 1;
        } else {
            bucket.0 += 1;
        }
    }

    pub fn enqueue(&mut self, m: &NewMessage, now: u64, most: u64) -> Enqueued {
        if !m.dedup_id.is_empty()
            && let Some((first, until)) = self.dedup.get(&m.dedup_id)
            && *until > now
        {
            return Enqueued::Duplicate(first.to_string());
        }
        if self.held() >= most {
            return Enqueued::Full;
        }
        self.seq += 1;
        let id = self.seq;
        let priority = m.priority.min(MAX_PRIORITY);
        let msg = Msg {
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            attempts: 0,
            max_attempts: m.max_attempts,
            backoff: m.backoff,
            priority,
            group: m.group.clone(),
            lease_ms: m.lease_ms,
            expire_at: m.expire_at_ms,
            enqueued: now,
            score: (u64::from(MAX_PRIORITY - priority) << 44) + id,
            due: (now + m.delay_ms).max(m.not_before_ms),
            st: St::Ready,
            token: String::new(),
            lease_until: 0,
            reason: String::new(),
            died: 0,
            dq: 0,
        };
        self.msgs.insert(id, msg);
        if !m.dedup_id.is_empty() {
            self.dedup
                .insert(m.dedup_id.clone(), (id, now + m.dedup_window_ms));
        }
        if !m.group.is_empty() && self.group_active.contains_key(&m.group) {
            self.group_queue
                .entry(m.group.clone())
                .or_default()
                .push_back(id);
            if let Some(msg) = self.msgs.get_mut(&id) {
                msg.st = St::Queued;
            }
        } else {
            if !m.group.is_empty() {
                self.group_active.insert(m.group.clone(), id);
            }
            self.place(id, now);
        }
        self.totals.enqueued += 1;
        self.rate(now, false);
        Enqueued::New(id.to_string())
    }

    pub fn lease(
        &mut self,
        max: usize,
        lease_ms: Option<u64>,
        seeds: &[String],
        random: f64,
        now: u64,
    ) -> Leased {
        self.reap(now, random);
        self.promote(now);
        let mut deliveries = Vec::new();
        let mut seeds = seeds.iter();
        while !self.paused && deliveries.len() < max {
            let Some(entry) = self.ready.iter().next().copied() else {
                break;
            };
            self.ready.remove(&entry);
            let id = entry.1;
            let expired = self
                .msgs
                .get(&id)
                .is_some_and(|m| m.expire_at > 0 && m.expire_at <= now);
            if expired {
                self.release_group(id, now);
                self.msgs.remove(&id);
                self.totals.expired += 1;
                continue;
            }
            let Some(m) = self.msgs.get_mut(&id) else {
                continue;
            };
            m.attempts += 1;
            m.token = format!("{}-{}", m.attempts, seeds.next().map_or("", String::as_str));
            m.lease_until = now + lease_ms.unwrap_or(m.lease_ms);
            m.st = St::Leased;
            self.leased.insert((m.lease_until, id));
            deliveries.push(delivery(id, m));
        }
        let next_due_ms = if deliveries.is_empty() {
            self.delayed.iter().next().map(|(at, _)| *at)
        } else {
            None
        };
        Leased {
            deliveries,
            next_due_ms,
        }
    }
}

pub(super) fn delivery(id: u64, m: &Msg) -> Delivery {
    Delivery {
        id: id.to_string(),
        payload: m.payload.clone(),
        headers: m.headers.clone(),
        attempt: m.attempts,
        max_attempts: m.max_attempts,
        token: m.token.clone(),
        lease_expires_ms: m.lease_until,
        enqueued_ms: m.enqueued,
        priority: m.priority,
        group: m.group.clone(),
    }
}
