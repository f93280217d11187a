//! Reservations: a check whose cost is an estimate (an LLM call's most
//! tokens), settled later with the cost actually used.
//!
//! A reserving check consumes its estimate like any check, and beside the
//! state it leaves a *marker*: the state right after the charge, living as
//! long as the state does (its reset horizon). `Settle` reads the marker to
//! give back at most what the reservation still holds back now, so a
//! refund never hands out units that other checks consumed after it:
//!
//! * GCRA: the charge's part of the arrival time that has not elapsed yet;
//! * token bucket: the charge's tokens that refills have not replaced yet;
//! * fixed window: while the charge's window is the stored one;
//! * sliding window: from the charge's window, current or previous.
//!
//! The marker is then flagged settled (a second Settle changes nothing).
//! When it is gone the reservation's units no longer count, so there is
//! nothing to give back. A cost above the estimate is consumed whether or
//! not it fits, as `Report` does.

use super::algorithm::State;
use super::{Algorithm, Decision, Limit};
use crate::validate::{FieldViolation, quote};

/// A reservation as its token carries it: `<id>.<reserved cost>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// 16 lowercase hex digits: names the marker.
    pub id: String,
    pub cost: u64,
}

const ID_HEX: usize = 16;

impl Reservation {
    /// A new reservation of `cost` units with a random id.
    pub fn new(cost: u64) -> Result<Self, getrandom::Error> {
        Ok(Self {
            id: crate::random::hex(ID_HEX / 2)?,
            cost,
        })
    }

    /// Reads a token (`CheckResponse.reservation`).
    pub fn parse(token: &str, field: &str) -> Result<Self, FieldViolation> {
        let bad = || {
            FieldViolation::new(
                field,
                format!(
                    "is not a reservation (CheckResponse.reservation of a Check with reserve = true), got {}",
                    quote(&token.chars().take(40).collect::<String>())
                ),
            )
        };
        let (id, cost) = token.split_once('.').ok_or_else(bad)?;
        let cost: u64 = cost.parse().map_err(|_| bad())?;
        if !crate::random::is_hex(id, ID_HEX) || cost == 0 {
            return Err(bad());
        }
        Ok(Self {
            id: id.to_owned(),
            cost,
        })
    }

    /// A reservation never exceeds its limit (a check over it is
    /// rejected): a larger one was issued for another limit.
    pub fn fits(&self, limit: &Limit, field: &str) -> Result<(), FieldViolation> {
        if self.cost <= limit.limit {
            return Ok(());
        }
        Err(FieldViolation::new(
            field,
            format!(
                "reserved {} units, more than this limit ({}): it was made for another limit",
                self.cost, limit.limit
            ),
        ))
    }

    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.cost)
    }
}

/// How a Settle went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleResult {
    Settled,
    AlreadySettled,
    /// The marker is gone: the reservation no longer counts.
    Expired,
}

impl SettleResult {
    /// The scripts' code: 1, 2, 3.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Settled),
            2 => Some(Self::AlreadySettled),
            3 => Some(Self::Expired),
            _ => None,
        }
    }
}

/// A settled reservation: how, and the limit's state after it (`allowed`
/// false when the cost above the estimate did not fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub result: SettleResult,
    pub decision: Decision,
}

/// What Settle does to the state: `give_back` units returned, or `extra`
/// units consumed whether or not they fit (at most one is non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub give_back: u64,
    pub extra: u64,
}

impl Settlement {
    pub fn new(reserved: u64, used: u64) -> Self {
        Self {
            give_back: reserved.saturating_sub(used),
            extra: used.saturating_sub(reserved),
        }
    }
}

/// The state after giving back up to `units` of the reservation whose
/// charge left `marker`; `None` when nothing changes. The twin of
/// `give_back` in `lua/settle.lua`.
pub fn give_back(
    limit: &Limit,
    marker: State,
    current: Option<State>,
    units: u64,
    now: u64,
) -> Option<State> {
    match (marker, current?) {
        (
            State::Gcra {
                tat_us: held_until, ..
            },
            State::Gcra { tat_us, frac },
        ) => {
            if tat_us <= now {
                return None;
            }
            let (q, r) = (limit.period_us / limit.limit, limit.period_us % limit.limit);
            let give = (units * q + units * r / limit.limit).min(held_until.saturating_sub(now));
            if give == 0 {
                return None;
            }
            let tat = tat_us - give;
            Some(if tat <= now {
                State::Gcra {
                    tat_us: now,
                    frac: 0,
                }
            } else {
                State::Gcra { tat_us: tat, frac }
            })
        }
        (
            State::TokenBucket {
                tokens: after,
                last_us: refill_from,
            },
            State::TokenBucket { tokens, last_us },
        ) => {
            let refilled = if now > refill_from {
                (now - refill_from) / limit.period_us * limit.refill
            } else {
                0
            };
            let held = (limit.limit as i64 - after - refilled as i64).max(0) as u64;
            let give = units.min(held);
            (give > 0).then(|| State::TokenBucket {
                tokens: (tokens + give as i64).min(limit.limit as i64),
                last_us,
            })
        }
        (
            State::Window {
                window: charged, ..
            },
            State::Window {
                window,
                count,
                prev,
            },
        ) => {
            if window == charged && count > 0 {
                Some(State::Window {
                    window,
                    count: count - units.min(count),
                    prev,
                })
            } else if limit.algorithm == Algorithm::SlidingWindow
                && window == charged + 1
                && prev > 0
            {
                Some(State::Window {
                    window,
                    count,
                    prev: prev - units.min(prev),
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::ratelimit::FailMode;

    fn limit(algorithm: Algorithm, limit: u64, period_us: u64, refill: u64) -> Limit {
        Limit {
            algorithm,
            limit,
            period_us,
            refill,
            fail_mode: FailMode::Closed,
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let l = limit(Algorithm::Gcra, 100, 1_000_000, 100);
        let r = Reservation::new(40).unwrap();
        assert_eq!(Reservation::parse(&r.token(), "reservation").unwrap(), r);
        assert!(r.fits(&l, "reservation").is_ok());
        let big = Reservation::parse("0123456789abcdef.101", "reservation").unwrap();
        assert_eq!(
            big.fits(&l, "reservation").unwrap_err().field,
            "reservation"
        );
        for bad in [
            "",
            "abc",
            "0123456789abcdef.0",
            "0123456789ABCDEF.5",
            "0123456789abcde.5",
            "0123456789abcdef.x",
        ] {
            let e = Reservation::parse(bad, "reservation").unwrap_err();
            assert_eq!(e.field, "reservation", "{bad}");
        }
    }

    #[test]
    fn gcra_gives_back_only_what_has_not_elapsed() {
        // 10 per second: 100 ms per unit. A charge of 5 at t=0 ends at 500 ms.
        let l = limit(Algorithm::Gcra, 10, 1_000_000, 10);
        let marker = State::Gcra {
            tat_us: 500_000,
            frac: 0,
        };
        let now_state = Some(State::Gcra {
            tat_us: 700_000,
            frac: 0,
        });
        // At 100 ms, 400 ms of the charge are still held: 3 units = 300 ms.
        assert_eq!(
            give_back(&l, marker, now_state, 3, 100_000),
            Some(State::Gcra {
                tat_us: 400_000,
                frac: 0
            })
        );
        // At 450 ms only 50 ms are held back.
        assert_eq!(
            give_back(&l, marker, now_state, 3, 450_000),
            Some(State::Gcra {
                tat_us: 650_000,
                frac: 0
            })
        );
        // Past the charge: nothing.
        assert_eq!(give_back(&l, marker, now_state, 3, 500_000), None);
    }

    #[test]
    fn a_token_bucket_gives_back_what_refills_have_not_replaced() {
        // 10 tokens, 1 per 100 ms. The charge left 2 at t=0.
        let l = limit(Algorithm::TokenBucket, 10, 100_000, 1);
        let marker = State::TokenBucket {
            tokens: 2,
            last_us: 0,
        };
        let current = Some(State::TokenBucket {
            tokens: 1,
            last_us: 0,
        });
        assert_eq!(
            give_back(&l, marker, current, 5, 50_000),
            Some(State::TokenBucket {
                tokens: 6,
                last_us: 0
            })
        );
        // Six refills since: 8 - 6 = 2 tokens still missing.
        assert_eq!(
            give_back(&l, marker, current, 5, 650_000),
            Some(State::TokenBucket {
                tokens: 3,
                last_us: 0
            })
        );
        assert_eq!(give_back(&l, marker, current, 5, 800_000), None);
    }

    #[test]
    fn windows_give_back_from_the_charged_window_only() {
        let fixed = limit(Algorithm::FixedWindow, 10, 1_000_000, 10);
        let sliding = limit(Algorithm::SlidingWindow, 10, 1_000_000, 10);
        let marker = State::Window {
            window: 7,
            count: 6,
            prev: 0,
        };
        let same = Some(State::Window {
            window: 7,
            count: 8,
            prev: 1,
        });
        let next = Some(State::Window {
            window: 8,
            count: 2,
            prev: 8,
        });
        assert_eq!(
            give_back(&fixed, marker, same, 5, 0),
            Some(State::Window {
                window: 7,
                count: 3,
                prev: 1
            })
        );
        assert_eq!(give_back(&fixed, marker, next, 5, 0), None);
        assert_eq!(
            give_back(&sliding, marker, next, 5, 0),
            Some(State::Window {
                window: 8,
                count: 2,
                prev: 3
            })
        );
        assert_eq!(give_back(&sliding, marker, None, 5, 0), None);
    }
}
