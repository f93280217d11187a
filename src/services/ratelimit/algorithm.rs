//! The four algorithms as pure functions of (limit, cost, now, state).
//!
//! The memory store calls these; the Lua scripts in `store/redis/lua/` do the
//! same arithmetic step by step. Keep the two in lock-step: every branch here
//! has its twin there.

use super::{Algorithm, Decision, Limit};

/// What a key holds between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Theoretical arrival time in microseconds plus `frac / limit` of one.
    Gcra { tat_us: u64, frac: u64 },
    /// Tokens left (below zero after a forced spend), and the time the
    /// last whole refill interval ended.
    TokenBucket { tokens: i64, last_us: u64 },
    /// The current window's index, its count, and the previous window's count.
    Window { window: u64, count: u64, prev: u64 },
}

/// A decision, and the state to store (with its TTL) when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub write: Option<(State, u64)>,
}

/// What a check does with a cost (the scripts' `c`, `d` and `f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Consumes the cost if it fits.
    Check,
    /// Only decides (the first pass of an all-or-nothing batch).
    Dry,
    /// Consumes it whether or not it fits (usage reported afterwards).
    Force,
}

impl Mode {
    fn consumes(self, allowed: bool) -> bool {
        self == Mode::Force || (allowed && self == Mode::Check)
    }
}

/// Applies one check. `cost` is already clamped to `limit + 1`, unless
/// forced (then bounded by the handler).
pub fn apply(limit: &Limit, cost: u64, now_us: u64, state: Option<State>, mode: Mode) -> Outcome {
    match limit.algorithm {
        Algorithm::Gcra => gcra(limit, cost, now_us, state, mode),
        Algorithm::TokenBucket => token_bucket(limit, cost, now_us, state, mode),
        Algorithm::FixedWindow => fixed_window(limit, cost, now_us, state, mode),
        Algorithm::SlidingWindow => sliding_window(limit, cost, now_us, state, mode),
    }
}

fn gcra(l: &Limit, cost: u64, now: u64, state: Option<State>, mode: Mode) -> Outcome {
    let (limit, period) = (l.limit, l.period_us);
    // The emission interval period/limit is q + r/limit microseconds, kept
    // exact by carrying the fraction in units of 1/limit.
    let (q, r) = (period / limit, period % limit);
    let (mut tat, mut frac) = match state {
        Some(State::Gcra { tat_us, frac }) => (tat_us, frac),
        _ => (now, 0),
    };
    if tat < now {
        tat = now;
        frac = 0;
    }
    let add = cost * r + frac;
    let new_tat = tat + cost * q + add / limit;
    let new_frac = add % limit;
    let new_diff = new_tat - now;
    let allowed = new_diff < period || (new_diff == period && new_frac == 0);
    let consume = mode.consumes(allowed);

    let (tat_after, frac_after) = if consume {
        (new_tat, new_frac)
    } else {
        (tat, frac)
    };
    let diff_after = tat_after - now;
    // Units in use = ceil(diff / interval); computed in f64 exactly as the Lua
    // does, so both stores agree even where it rounds.
    let used = ((diff_after as f64 * limit as f64 + frac_after as f64) / period as f64).ceil();
    let remaining = limit - (used as u64).min(limit);
    let reset_after_us = diff_after + u64::from(frac_after > 0);
    let retry_after_us =
        (!allowed && cost <= limit).then(|| new_tat - period - now + u64::from(new_frac > 0));
    let write = (consume && cost > 0).then_some((
        State::Gcra {
            tat_us: tat_after,
            frac: frac_after,
        },
        reset_after_us,
    ));
    Outcome {
        decision: Decision {
            allowed,
            remaining,
            reset_after_us,
            retry_after_us,
        },
        write,
    }
}

fn token_bucket(l: &Limit, cost: u64, now: u64, state: Option<State>, mode: Mode) -> Outcome {
    let (capacity, refill, interval) = (l.limit, l.refill, l.period_us);
    let (mut tokens, mut last) = match state {
        Some(State::TokenBucket { tokens, last_us }) => (tokens, last_us),
        _ => (capacity as i64, now),
    };
    // Signed: a forced spend may leave the bucket below zero.
    let (capacity, refill, cost) = (capacity as i64, refill as i64, cost as i64);
    if now > last {
        // Never more intervals than it takes to fill the bucket (from
        // below zero too).
        let deficit = if tokens < 0 {
            capacity - tokens
        } else {
            capacity
        };
        let intervals = (((now - last) / interval) as i64).min(deficit / refill + 1);
        tokens = (tokens + intervals * refill).min(capacity);
        last += intervals as u64 * interval;
    }
    if tokens >= capacity {
        // A full bucket's refill clock starts at its next spend.
        last = now;
    }
    let allowed = cost <= tokens;
    let consume = mode.consumes(allowed);
    if consume {
        tokens -= cost;
    }
    let reset_after_us = if tokens >= capacity {
        0
    } else {
        last + ((capacity - tokens) as u64).div_ceil(refill as u64) * interval - now
    };
    let retry_after_us = (!allowed && cost <= capacity)
        .then(|| last + ((cost - tokens) as u64).div_ceil(refill as u64) * interval - now);
    let write = (consume && cost > 0).then_some((
        State::TokenBucket {
            tokens,
            last_us: last,
        },
        reset_after_us,
    ));
    Outcome {
        decision: Decision {
            allowed,
            remaining: tokens.max(0) as u64,
            reset_after_us,
            retry_after_us,
        },
        write,
    }
}

fn fixed_window(l: &Limit, cost: u64, now: u64, state: Option<State>, mode: Mode) -> Outcome {
    let (limit, size) = (l.limit, l.period_us);
    let window = now / size;
    let count = match state {
        Some(State::Window {
            window: w, count, ..
        }) if w == window => count,
        _ => 0,
    };
    let allowed = count + cost <= limit;
    let consume = mode.consumes(allowed);
    let count_after = if consume { count + cost } else { count };
    let until_end = (window + 1) * size - now;
    let reset_after_us = if count_after == 0 { 0 } else { until_end };
    let retry_after_us = (!allowed && cost <= limit).then_some(until_end);
    let write = (consume && cost > 0).then_some((
        State::Window {
            window,
            count: count_after,
            prev: 0,
        },
        until_end,
    ));
    Outcome {
        decision: Decision {
            allowed,
            remaining: limit.saturating_sub(count_after),
            reset_after_us,
            retry_after_us,
        },
        write,
    }
}

fn sliding_window(l: &Limit, cost: u64, now: u64, state: Option<State>, mode: Mode) -> Outcome {
    let (limit, size) = (l.limit, l.period_us);
    let window = now / size;
    let elapsed = now % size;
    let (count, prev) = match state {
        Some(State::Window {
            window: w,
            count,
            prev,
        }) if w == window => (count, prev),
        Some(State::Window {
            window: w, count, ..
        }) if w + 1 == window => (0, count),
        _ => (0, 0),
    };
    // The previous window counts by how much of it the rolling window still
    // covers. f64, in the same order as the Lua, so both round alike.
    let weight = (size - elapsed) as f64 / size as f64;
    let prev_weighted = (prev as f64 * weight).floor() as u64;
    let allowed = prev_weighted + count + cost <= limit;
    let consume = mode.consumes(allowed);
    let count_after = if consume { count + cost } else { count };
    let until_end = size - elapsed;
    let remaining = limit - (prev_weighted + count_after).min(limit);
    let reset_after_us = if count_after > 0 {
        until_end + size
    } else if prev_weighted > 0 {
        until_end
    } else {
        0
    };
    let retry_after_us = (!allowed && cost <= limit).then(|| {
        if count + cost <= limit {
            // Wait, inside this window, for the previous one's share to drop
            // to what is left.
            let room = (limit - count - cost) as f64;
            let target = size as f64 - ((room + 1.0) * size as f64) / prev as f64;
            ((target.floor() as i64 + 1 - elapsed as i64).max(1)) as u64
        } else {
            // Wait for the next window, where this one becomes the previous.
            let room = (limit - cost) as f64;
            if count as f64 <= room {
                until_end
            } else {
                let target = size as f64 - ((room + 1.0) * size as f64) / count as f64;
                until_end + (target.floor() as u64) + 1
            }
        }
    });
    let write = (consume && cost > 0).then_some((
        State::Window {
            window,
            count: count_after,
            prev,
        },
        until_end + size,
    ));
    Outcome {
        decision: Decision {
            allowed,
            remaining,
            reset_after_us,
            retry_after_us,
        },
        write,
    }
}

#[cfg(test)]
mod tests {
    use super::super::FailMode;
    use super::*;

    fn limit(algorithm: Algorithm, limit: u64, period_us: u64, refill: u64) -> Limit {
        Limit {
            algorithm,
            limit,
            period_us,
            refill,
            fail_mode: FailMode::Closed,
        }
    }

    /// Runs `n` unit checks at one instant, returning how many were allowed.
    fn burst(l: &Limit, now: u64, state: &mut Option<State>, n: u64) -> u64 {
        let mut allowed = 0;
        for _ in 0..n {
            let out = apply(l, 1, now, *state, Mode::Check);
            if let Some((s, _)) = out.write {
                *state = Some(s);
            }
            allowed += u64::from(out.decision.allowed);
        }
        allowed
    }

    #[test]
    fn gcra_admits_exactly_the_limit_with_a_fractional_interval() {
        // 3 per second: the interval is 333333 + 1/3 us.
        let l = limit(Algorithm::Gcra, 3, 1_000_000, 3);
        let mut state = None;
        assert_eq!(burst(&l, 10_000_000, &mut state, 10), 3);
        let out = apply(&l, 1, 10_000_000, state, Mode::Check);
        assert_eq!(out.decision.retry_after_us, Some(333_334));
        // At the retry time exactly one more fits.
        assert_eq!(burst(&l, 10_333_334, &mut state, 5), 1);
    }

    #[test]
    fn gcra_reports_remaining_and_reset() {
        let l = limit(Algorithm::Gcra, 10, 10_000_000, 10);
        let mut state = None;
        assert_eq!(burst(&l, 5_000_000, &mut state, 3), 3);
        let out = apply(&l, 0, 5_000_000, state, Mode::Check);
        assert!(out.decision.allowed);
        assert_eq!(out.decision.remaining, 7);
        assert_eq!(out.decision.reset_after_us, 3_000_000);
        assert_eq!(out.write, None, "cost 0 must not write");
    }

    #[test]
    fn token_bucket_refills_whole_intervals() {
        let l = limit(Algorithm::TokenBucket, 5, 1_000_000, 2);
        let mut state = None;
        assert_eq!(burst(&l, 0, &mut state, 10), 5);
        let out = apply(&l, 1, 999_999, state, Mode::Check);
        assert!(!out.decision.allowed);
        assert_eq!(out.decision.retry_after_us, Some(1));
        assert_eq!(burst(&l, 1_000_000, &mut state, 10), 2);
        let out = apply(&l, 0, 1_000_000, state, Mode::Check);
        assert_eq!(out.decision.reset_after_us, 3_000_000);
    }

    #[test]
    fn fixed_window_resets_at_the_boundary() {
        let l = limit(Algorithm::FixedWindow, 4, 1_000, 4);
        let mut state = None;
        assert_eq!(burst(&l, 10_500, &mut state, 9), 4);
        assert_eq!(
            apply(&l, 1, 10_999, state, Mode::Check)
                .decision
                .retry_after_us,
            Some(1)
        );
        assert_eq!(burst(&l, 11_000, &mut state, 9), 4);
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let l = limit(Algorithm::SlidingWindow, 10, 1_000, 10);
        let mut state = None;
        assert_eq!(burst(&l, 5_000, &mut state, 20), 10);
        // A quarter into the next window, 3/4 of the previous 10 still count.
        assert_eq!(burst(&l, 6_250, &mut state, 20), 3);
        let out = apply(&l, 1, 6_250, state, Mode::Check);
        let retry = out.decision.retry_after_us.expect("fits later");
        assert!(
            apply(&l, 1, 6_250 + retry, state, Mode::Check)
                .decision
                .allowed
        );
        assert!(
            !apply(&l, 1, 6_250 + retry - 1, state, Mode::Check)
                .decision
                .allowed
        );
    }

    #[test]
    fn cost_above_the_limit_never_fits_and_changes_nothing() {
        for algorithm in [
            Algorithm::Gcra,
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let l = limit(algorithm, 5, 1_000_000, 5);
            let out = apply(&l, l.clamp_cost(u64::MAX), 0, None, Mode::Check);
            assert!(!out.decision.allowed, "{algorithm:?}");
            assert_eq!(out.decision.retry_after_us, None, "{algorithm:?}");
            assert_eq!(out.write, None, "{algorithm:?}");
            assert_eq!(out.decision.remaining, 5, "{algorithm:?}");
        }
    }
}
