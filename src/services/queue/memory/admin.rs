//! Dead letters, statistics and schedules of a queue in memory.

use super::state::{QueueState, St, TenantQueues, delivery, parse_id};
use crate::services::queue::NewMessage;
use crate::services::queue::store::StoredSchedule;
use crate::services::queue::{Dead, Stats};

impl QueueState {
    /// Moves a message back in with no attempts used (a redrive).
    pub(super) fn revive(&mut self, n: u64, now: u64) {
        let Some(m) = self.msgs.get_mut(&n) else {
            return;
        };
        m.attempts = 0;
        m.reason.clear();
        m.due = now;
        m.token.clear();
        let group = m.group.clone();
        if !group.is_empty() && self.group_active.contains_key(&group) {
            m.st = St::Queued;
            self.group_queue.entry(group).or_default().push_back(n);
        } else {
            if !group.is_empty() {
                self.group_active.insert(group, n);
            }
            self.place(n, now);
        }
    }
    pub fn fire(
        &mut self,
        id: &str,
        expected: u64,
        next: u64,
        m: &NewMessage,
        limits: crate::services::queue::store::Limits,
        now: u64,
    ) -> bool {
        match self.schedules.get_mut(id) {
            Some((_, at)) if *at == expected => *at = next,
            _ => return false,
        }
        self.enqueue(m, now, limits.max_messages);
        true
    }

    pub fn schedule_list(&self) -> Vec<StoredSchedule> {
        self.schedules
            .iter()
            .map(|(id, (definition, next))| StoredSchedule {
                id: id.clone(),
                definition: definition.clone(),
                next_ms: *next,
            })
            .collect()
    }

    pub fn list_dead(&self, cursor: u64, limit: usize) -> Vec<Dead> {
        self.dead
            .range(cursor + 1..)
            .take(limit)
            .filter_map(|(dq, id)| {
                let m = self.msgs.get(id)?;
                let mut d = delivery(*id, m);
                d.token.clear();
                d.lease_expires_ms = 0;
                Some(Dead {
                    delivery: d,
                    died_ms: m.died,
                    reason: m.reason.clone(),
                    cursor: *dq,
                })
            })
            .collect()
    }

    fn dead_ids(&self, ids: &[String], limit: usize) -> Vec<u64> {
        if ids.is_empty() {
            self.dead.values().take(limit).copied().collect()
        } else {
            ids.iter().filter_map(|id| parse_id(id)).collect()
        }
    }

    pub fn redrive(&mut self, ids: &[String], limit: usize, now: u64) -> u64 {
        let mut n = 0;
        for id in self.dead_ids(ids, limit) {
            let Some(dq) = self
                .msgs
                .get(&id)
                .filter(|m| m.st == St::Dead)
                .map(|m| m.dq)
            else {
                continue;
            };
            self.dead.remove(&dq);
            self.revive(id, now);
            n += 1;
        }
        n
    }

    pub fn purge(&mut self, ids: &[String], limit: usize) -> u64 {
        let mut n = 0;
        for id in self.dead_ids(ids, limit) {
            let Some(dq) = self
                .msgs
                .get(&id)
                .filter(|m| m.st == St::Dead)
                .map(|m| m.dq)
            else {
                continue;
            };
            self.dead.remove(&dq);
            self.msgs.remove(&id);
            n += 1;
        }
        n
    }

    pub fn stats(&self, now: u64) -> Stats {
        // A lease that ran out counts as waiting until the next lease
        // notices it (as `stats.lua` counts it).
        let live = self.leased.iter().filter(|(until, _)| *until > now).count() as u64;
        let expired = self.leased.len() as u64 - live;
        let (delayed, leased, dead) = (self.delayed.len() as u64, live, self.dead.len() as u64);
        let waiting = (self.ready.len() as u64 + expired)
            .max(self.held().saturating_sub(delayed + leased + dead));
        let oldest = self
            .ready
            .iter()
            .take(100)
            .filter_map(|(_, id)| self.msgs.get(id).map(|m| m.enqueued))
            .min();
        let minute = now / 60_000;
        let into = (now % 60_000) as f64 / 60_000.0;
        let bucket = |m: u64| self.rates.get(&m).copied().unwrap_or_default();
        let (cur, prev) = (bucket(minute), bucket(minute.saturating_sub(1)));
        let per_second = |c: u64, p: u64| (c as f64 + p as f64 * (1.0 - into)) / 60.0;
        Stats {
            waiting,
            delayed,
            leased,
            dead,
            oldest_waiting_ms: oldest.map(|at| now.saturating_sub(at)),
            paused: self.paused,
            enqueued_total: self.totals.enqueued,
            acked_total: self.totals.acked,
            retried_total: self.totals.retried,
            dead_total: self.totals.dead,
            expired_total: self.totals.expired,
            enqueue_rate: per_second(cur.0, prev.0),
            ack_rate: per_second(cur.1, prev.1),
        }
    }
}

impl TenantQueues {
    pub fn put_schedule(&mut self, queue: &str, s: &StoredSchedule, max: usize) -> bool {
        self.scheduled.insert(queue.to_owned());
        let q = self.queues.entry(queue.to_owned()).or_default();
        if !q.schedules.contains_key(&s.id) && q.schedules.len() >= max {
            return false;
        }
        q.schedules
            .insert(s.id.clone(), (s.definition.clone(), s.next_ms));
        true
    }
}
