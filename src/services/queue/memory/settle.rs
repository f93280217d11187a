//! Settling a leased message: ack, nack, lease extension, and cancel, as
//! `lua/ack.lua`, `nack.lua`, `give_back.lua`, `extend.lua` and
//! `cancel.lua` do.

use super::state::{QueueState, St, parse_id};
use crate::services::queue::LeaseCheck;

impl QueueState {
    /// The message under lease `token`, if it is leased now.
    fn leased_by(&self, id: &str, token: &str) -> Option<u64> {
        let id = parse_id(id)?;
        let m = self.msgs.get(&id)?;
        (m.st == St::Leased && m.token == token).then_some(id)
    }

    pub fn ack(&mut self, id: &str, token: &str, now: u64, retention: u64) -> LeaseCheck<()> {
        if let Some(n) = parse_id(id)
            && self.done.get(&n).is_some_and(|(t, _)| t == token)
        {
            return LeaseCheck::Done(());
        }
        let Some(n) = self.leased_by(id, token) else {
            return LeaseCheck::Lost;
        };
        if let Some(m) = self.msgs.get(&n) {
            self.leased.remove(&(m.lease_until, n));
        }
        self.release_group(n, now);
        self.msgs.remove(&n);
        self.done.insert(n, (token.to_owned(), now + retention));
        self.totals.acked += 1;
        self.rate(now, true);
        LeaseCheck::Done(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn nack(
        &mut self,
        id: &str,
        token: &str,
        after: Option<u64>,
        dead: bool,
        reason: &str,
        random: f64,
        now: u64,
    ) -> LeaseCheck<bool> {
        let Some(n) = self.leased_by(id, token) else {
            return LeaseCheck::Lost;
        };
        if let Some(m) = self.msgs.get(&n) {
            self.leased.remove(&(m.lease_until, n));
        }
        let reason = if reason.is_empty() { "nacked" } else { reason };
        if dead {
            self.bury(n, now, reason);
            return LeaseCheck::Done(true);
        }
        LeaseCheck::Done(self.retry_or_dead(n, now, after, reason, random))
    }

    /// A delivery that never reached its consumer: ready again at its old
    /// place, the attempt its lease counted taken back.
    pub fn give_back(&mut self, id: &str, token: &str) -> bool {
        let Some(n) = self.leased_by(id, token) else {
            return false;
        };
        let Some(m) = self.msgs.get_mut(&n) else {
            return false;
        };
        self.leased.remove(&(m.lease_until, n));
        m.attempts = m.attempts.saturating_sub(1);
        m.token.clear();
        m.st = St::Ready;
        self.ready.insert((m.score, n));
        true
    }

    pub fn extend(&mut self, id: &str, token: &str, lease_ms: u64, now: u64) -> LeaseCheck<u64> {
        let Some(n) = self.leased_by(id, token) else {
            return LeaseCheck::Lost;
        };
        let Some(m) = self.msgs.get_mut(&n) else {
            return LeaseCheck::Lost;
        };
        self.leased.remove(&(m.lease_until, n));
        m.lease_until = now + lease_ms;
        self.leased.insert((m.lease_until, n));
        LeaseCheck::Done(m.lease_until)
    }

    pub fn cancel(&mut self, id: &str, now: u64) -> bool {
        let Some(n) = parse_id(id) else { return false };
        let Some(m) = self.msgs.get(&n) else {
            return false;
        };
        match m.st {
            St::Leased => return false,
            St::Ready => {
                self.ready.remove(&(m.score, n));
            }
            St::Delayed => {
                self.delayed.remove(&(m.due, n));
            }
            St::Dead => {
                self.dead.remove(&m.dq);
            }
            St::Queued => {
                if let Some(q) = self.group_queue.get_mut(&m.group) {
                    q.retain(|x| *x != n);
                }
            }
        }
        if m.st != St::Queued {
            self.release_group(n, now);
        }
        self.msgs.remove(&n);
        true
    }
}
