//! The lock-free budget table: per-level atomic counters that admit or refuse a request's
//! reservation in tens of nanoseconds, and never let committed spend pass a limit.
//!
//! Each [`BudgetCell`] (one per allocation, project and team) is four words:
//!
//! - `spent`: a 128-bit word holding the **period number and the spend within it** together,
//!   so a rollover to a new period is one compare-and-swap: `(p, s) -> (p + 1, 0)`. A settle for
//!   a past period finds a newer period in the word and adds nothing; history belongs to events.
//! - `reserved_total` and `released_total`: monotonic (wrapping) sums of holds taken and given
//!   back; their difference is what is in flight. Monotonic counters cannot suffer ABA, so the
//!   compare-and-swap on `reserved_total` that takes a hold proves no other hold was taken since
//!   the admission check read the word.
//! - `limit_nanos`, `u64::MAX` meaning no limit (spend is still counted).
//!
//! **Invariant:** when every settled amount is at most its hold, a cell's spend for a period
//! never exceeds its limit, however many threads race. The admission check reads
//! `released_total`, then `spent`, then `reserved_total`, and a settle writes `spent` before
//! `released_total`; so any settle the check half-sees is counted at its hold or at hold plus
//! actual, never at less than it ends up as. The proof is model-checked under loom
//! (`RUSTFLAGS="--cfg loom"`) and stress-tested below.
//!
//! A [`Reservation`] is a guard in the manner of a pending transfer: `settle(actual)` posts the
//! actual cost and gives the hold back; dropping it unsettled gives the hold back, so a cancelled
//! request never leaks budget.
//!
//! **Invariant:** what a cell holds in flight never goes below zero: a hold is taken only within
//! the limit, and given back once, by a settle or a drop, never more than was held. Taking a
//! hold asserts it in release builds (a compare beside the swap); giving one back checks it in
//! debug builds and under loom, since the check costs a read of a word other threads write.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hold::Hold;
use crate::lease_cell::LeaseCell;
use crate::money::Nanos;
use crate::sync::{AtomicI64, AtomicU64, AtomicU128, Ordering};
use crate::time::{Period, UnixMs};

// SeqCst throughout: on x86_64 and aarch64 it costs nothing over acquire/release for these
// loads and read-modify-writes, and the ordering argument above is then plainly sound.
const ORDER: Ordering = Ordering::SeqCst;

/// What a call whose whole bound does not fit in its budget's room does (an allocation's
/// `tight`). A call that cannot be stopped mid-way can still be held short of its bound when
/// its output is capped at what the hold affords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tight {
    /// Held what there is (at least its least cost), its output capped to fit: the default.
    #[default]
    Clamp,
    /// Waits in line until its whole bound fits, then is held all of it.
    Wait,
    /// Held all of its bound at once, or refused (429 when calls in flight hold the room).
    Refuse,
}

impl Tight {
    /// The name in configs and the admin API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Tight::Clamp => "clamp",
            Tight::Wait => "wait",
            Tight::Refuse => "refuse",
        }
    }
}

/// Which level of the hierarchy a budget sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The allocation a key is bound to.
    Allocation,
    /// The project holding the allocation.
    Project,
    /// The team holding the project.
    Team,
}

impl Level {
    /// Most specific first: the order reservations are taken in.
    pub const ALL: [Level; 3] = [Level::Allocation, Level::Project, Level::Team];

    /// The name used in error bodies and events.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Allocation => "allocation",
            Level::Project => "project",
            Level::Team => "team",
        }
    }
}

/// How a budget is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSpec {
    /// Most that may be spent per period; `None` counts spend without limiting it.
    pub limit: Option<Nanos>,
    /// When the budget starts afresh.
    pub period: Period,
    /// Percentage of the limit at which a one-time warning fires (default 80).
    #[serde(default = "default_soft_limit_percent")]
    pub soft_limit_percent: u8,
}

fn default_soft_limit_percent() -> u8 {
    80
}

impl BudgetSpec {
    /// A budget that only counts.
    #[must_use]
    pub fn unlimited(period: Period) -> BudgetSpec {
        BudgetSpec {
            limit: None,
            period,
            soft_limit_percent: default_soft_limit_percent(),
        }
    }

    /// A limited budget with the default 80 % warning.
    #[must_use]
    pub fn limited(limit: Nanos, period: Period) -> BudgetSpec {
        BudgetSpec {
            limit: Some(limit),
            period,
            soft_limit_percent: default_soft_limit_percent(),
        }
    }
}

const NO_LIMIT: u64 = u64::MAX;

fn pack(period: i64, spent: u64) -> u128 {
    (u128::from(period as u64) << 64) | u128::from(spent)
}

fn unpack(word: u128) -> (i64, u64) {
    ((word >> 64) as u64 as i64, word as u64)
}

/// One level's counters. See the module docs for the protocol.
#[derive(Debug)]
pub struct BudgetCell {
    spent: AtomicU128,
    reserved_total: AtomicU64,
    released_total: AtomicU64,
    limit_nanos: AtomicU64,
    warned_period: AtomicI64,
    pub(crate) period: Period,
    soft_limit_percent: u8,
    /// The allocation's `tight` policy when this is an allocation's cell (kept here, in the
    /// cell's padding, so an allocation stays in its allocator size class; a project's or
    /// team's cell keeps the default and nothing reads it).
    tight: Tight,
    /// The replica's lease on the allocation when replicas share its budget tree (see the
    /// `lease` module); also in the padding, and only ever on an allocation's cell.
    lease: Option<Box<LeaseCell>>,
}

/// Why one cell did not take a hold.
pub(crate) enum Refusal {
    /// No room under the limit even with nothing in flight: the period's budget is spent.
    Exhausted {
        /// The cell's limit.
        limit: u64,
        /// What was left under it.
        remaining: u64,
        /// The period the cell is in.
        period: i64,
    },
    /// Room enough once holds in flight settle, none now.
    Busy {
        /// The cell's limit.
        limit: u64,
        /// What was left under it, holds in flight counted.
        remaining: u64,
        /// The period the cell is in.
        period: i64,
    },
    /// The cell is already in a later period than the caller's clock.
    Ahead {
        /// The cell's period.
        period: i64,
    },
}

/// Most times a reservation re-runs because a cell's period was ahead of the caller's clock.
/// Each retry moves the clock forward to a period start, so two suffice unless clocks race.
pub const CLOCK_CATCH_UP_RETRIES_MAX: usize = 4;

/// The assertion that a hold fits under its limit, failed: out of line, so the check on the
/// hot path is one compare and a branch never taken.
#[cold]
#[inline(never)]
#[expect(
    clippy::panic,
    reason = "the budget's books broken is a bug: stop rather than admit past a limit"
)]
fn hold_over_limit(amount: u64, spent: u64, in_flight: u64, limit: u64) -> ! {
    panic!(
        "hold of {amount} nanos taken over the limit: spent {spent} + in flight {in_flight} + \
         hold > limit {limit}"
    )
}

/// A level's counters at one instant, for reports and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetSnapshot {
    /// The budget period kind (day, week, month or total).
    pub period: Period,
    /// The period's number ([`Period::index`]).
    pub period_index: i64,
    /// The limit, if any.
    pub limit: Option<Nanos>,
    /// Settled spend in this period.
    pub spent: Nanos,
    /// Held by requests in flight.
    pub in_flight: Nanos,
    /// Limit minus spent minus in flight, if limited.
    pub remaining: Option<Nanos>,
    /// When the period ends, if it does.
    pub resets_at: Option<UnixMs>,
}

/// A soft limit crossed by a settle: reported exactly once per level and period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SoftLimitCrossed {
    /// The level whose threshold was crossed.
    pub level: Level,
    /// The allocation's, project's or team's name.
    pub name: Arc<str>,
    /// The level's budget period.
    pub period: Period,
    /// The number of the period crossed in ([`Period::index`]).
    pub period_index: i64,
    /// Spend right after the crossing settle.
    pub spent: Nanos,
    /// The limit the threshold is a share of, as it was at the settle.
    pub limit: Nanos,
    /// The threshold, in percent of the limit (the spec's `soft_limit_percent`).
    pub percent: u8,
}

impl BudgetCell {
    /// A fresh cell with nothing spent.
    #[must_use]
    pub fn new(spec: BudgetSpec) -> BudgetCell {
        BudgetCell {
            spent: AtomicU128::new(pack(i64::MIN, 0)),
            reserved_total: AtomicU64::new(0),
            released_total: AtomicU64::new(0),
            limit_nanos: AtomicU64::new(spec.limit.map_or(NO_LIMIT, |l| l.0.min(NO_LIMIT - 1))),
            warned_period: AtomicI64::new(i64::MIN),
            period: spec.period,
            soft_limit_percent: spec.soft_limit_percent.min(100),
            tight: Tight::Clamp,
            lease: None,
        }
    }

    /// A fresh cell for an allocation whose calls follow `tight`.
    #[must_use]
    pub fn with_tight(spec: BudgetSpec, tight: Tight) -> BudgetCell {
        BudgetCell {
            tight,
            ..BudgetCell::new(spec)
        }
    }

    /// A fresh allocation cell whose calls also hold from a lease.
    #[must_use]
    pub fn leased(spec: BudgetSpec, tight: Tight) -> BudgetCell {
        BudgetCell {
            tight,
            lease: Some(Box::new(LeaseCell::new())),
            ..BudgetCell::new(spec)
        }
    }

    /// The lease kept with the cell ([`BudgetCell::leased`]).
    #[must_use]
    pub fn lease(&self) -> Option<&LeaseCell> {
        self.lease.as_deref()
    }

    /// The `tight` policy kept with the cell ([`BudgetCell::with_tight`]).
    #[must_use]
    pub fn tight(&self) -> Tight {
        self.tight
    }

    /// The cell's period kind.
    #[must_use]
    pub fn period(&self) -> Period {
        self.period
    }

    /// Changes the limit; takes effect for the next admission check. Holds are only taken
    /// while a cell has a limit, so requests admitted while it had none are not counted against
    /// a limit set while they are in flight: their spend is posted when they settle.
    pub fn set_limit(&self, limit: Option<Nanos>) {
        self.limit_nanos
            .store(limit.map_or(NO_LIMIT, |l| l.0.min(NO_LIMIT - 1)), ORDER);
    }

    /// The limit, if any.
    #[must_use]
    pub fn limit(&self) -> Option<Nanos> {
        let limit = self.limit_nanos.load(ORDER);
        (limit != NO_LIMIT).then_some(Nanos(limit))
    }

    /// Loads the spend word, first rolling it over to `now_period` if it lags behind.
    /// Returns the period in force (never older than `now_period`) and its spend.
    fn current(&self, now_period: i64) -> (i64, u64) {
        loop {
            let word = self.spent.load(ORDER);
            let (period, spent) = unpack(word);
            if period >= now_period {
                return (period, spent);
            }
            // Rollover: whoever wins the swap starts the new period at zero; losers re-read.
            if self
                .spent
                .compare_exchange(word, pack(now_period, 0), ORDER, ORDER)
                .is_ok()
            {
                return (now_period, 0);
            }
        }
    }

    /// Counters at `now`.
    #[must_use]
    pub fn snapshot(&self, now: UnixMs) -> BudgetSnapshot {
        let released = self.released_total.load(ORDER);
        let (period_index, spent) = unpack(self.spent.load(ORDER));
        let reserved = self.reserved_total.load(ORDER);
        let now_period = self.period.index(now);
        let (period_index, spent) = if period_index < now_period {
            (now_period, 0)
        } else {
            (period_index, spent)
        };
        let in_flight = reserved.wrapping_sub(released);
        let limit = self.limit();
        BudgetSnapshot {
            period: self.period,
            period_index,
            limit,
            spent: Nanos(spent),
            in_flight: Nanos(in_flight),
            remaining: limit.map(|l| Nanos(l.0.saturating_sub(spent.saturating_add(in_flight)))),
            resets_at: self.period.end(period_index),
        }
    }

    /// Takes a hold of as much of `most` as fits under the limit in period `now_period`, and at
    /// least `least` (`least <= most`). When `least` does not fit, tells apart a spent budget
    /// (settled spend alone leaves no room for `least`) from a busy one (holds in flight take
    /// the room, and give it back as they settle). `own` is what the caller already holds here
    /// (a hold being extended): it is counted as spent in telling them apart, since it is not
    /// coming back to the caller.
    pub(crate) fn try_reserve(
        &self,
        now_period: i64,
        least: u64,
        most: u64,
        own: u64,
    ) -> Result<Hold, Refusal> {
        loop {
            let released = self.released_total.load(ORDER);
            let (period, spent) = self.current(now_period);
            if period > now_period {
                // Another thread's clock has already opened a later period.
                return Err(Refusal::Ahead { period });
            }
            let reserved = self.reserved_total.load(ORDER);
            let limit = self.limit_nanos.load(ORDER);
            if limit == NO_LIMIT {
                // Nothing to guard: count spend at settle, hold nothing.
                return Ok(Hold {
                    nanos: 0,
                    period,
                    limited: false,
                });
            }
            let in_flight = reserved.wrapping_sub(released);
            let used = spent.saturating_add(in_flight);
            let room = limit.saturating_sub(used);
            // Spend past the limit (booked usage, a lowered limit) leaves no room even for
            // nothing: `used + least`, not `room`, which saturates at zero.
            if used.saturating_add(least) > limit {
                let remaining = room;
                return Err(if spent.saturating_add(own).saturating_add(least) > limit {
                    Refusal::Exhausted {
                        limit,
                        remaining,
                        period,
                    }
                } else {
                    Refusal::Busy {
                        limit,
                        remaining,
                        period,
                    }
                });
            }
            let amount = most.min(room).max(least);
            if self
                .reserved_total
                .compare_exchange(reserved, reserved.wrapping_add(amount), ORDER, ORDER)
                .is_ok()
            {
                // The hold is established: the swap proved no other hold was taken since
                // `reserved` was read, so spend and every hold in flight, this one included,
                // are within the limit. The release below checks the other side of it.
                if used.saturating_add(amount) > limit {
                    hold_over_limit(amount, spent, in_flight, limit);
                }
                return Ok(Hold {
                    nanos: amount,
                    period,
                    limited: true,
                });
            }
        }
    }

    /// Gives a hold back without spending it.
    ///
    /// Checks (in debug builds and tests, the loom and model-based tests among them) that the
    /// hold was in flight, so what the cell holds never goes below zero and a settle or a drop
    /// never gives back more than was held. `reserved_total` is read after the release, so it
    /// counts every hold whose release `released_before` counts, and ours: their difference is
    /// at least our hold. The counters wrap, and the difference is read modulo 2^64, as the
    /// admission check reads it. Not in release builds: the extra read of `reserved_total`,
    /// which other threads' reservations are writing, doubled the cost of two threads
    /// reserving and settling on one allocation (461 to 964 ns in `reserve_settle`); the side
    /// that takes a hold keeps its check in release, where it is free.
    pub(crate) fn release(&self, hold: Hold) {
        if hold.nanos > 0 {
            let released_before = self.released_total.fetch_add(hold.nanos, ORDER);
            debug_assert!(
                self.reserved_total
                    .load(ORDER)
                    .wrapping_sub(released_before)
                    >= hold.nanos,
                "release of a {} nanos hold with {} nanos held (released_total {released_before}): \
                 a hold given back twice or never taken",
                hold.nanos,
                self.reserved_total
                    .load(ORDER)
                    .wrapping_sub(released_before)
            );
        }
    }

    /// Posts `actual` against the hold's period (if still current) and gives the hold back.
    /// Returns the spend before and after, when it was posted.
    pub(crate) fn settle(&self, hold: Hold, actual: u64) -> Option<(u64, u64)> {
        let posted = loop {
            let word = self.spent.load(ORDER);
            let (period, spent) = unpack(word);
            let next = if period < hold.period {
                // Nobody has rolled over yet (an unlimited cell is never checked at reserve).
                pack(hold.period, actual)
            } else if period == hold.period {
                pack(period, spent.saturating_add(actual))
            } else {
                // The hold's period is over: its spend is history, kept by the usage event.
                break None;
            };
            if self
                .spent
                .compare_exchange(word, next, ORDER, ORDER)
                .is_ok()
            {
                let before = if period < hold.period { 0 } else { spent };
                break Some((before, unpack(next).1));
            }
        };
        // Written after the spend, so an admission check never sees the hold gone and the spend
        // not yet there.
        self.release(hold);
        posted
    }

    /// Reports the soft limit if spend is at or past it, at most once per period. A late settle
    /// for a period already over reports nothing: its period's warning moment has passed.
    pub(crate) fn crossed(&self, period: i64, before: u64, after: u64) -> Option<(u64, u8)> {
        let limit = self.limit_nanos.load(ORDER);
        if limit == NO_LIMIT {
            return None;
        }
        // Rounded up, so a threshold is never crossed early. The first settle of the period at
        // or above it reports, even if the limit was lowered below the spend or spend was
        // restored past it; the swap on `warned_period` makes that exactly once.
        let threshold = (u128::from(limit) * u128::from(self.soft_limit_percent)).div_ceil(100);
        if u128::from(after) < threshold || (after == before && before == 0) {
            return None;
        }
        let mut warned = self.warned_period.load(ORDER);
        while warned < period {
            match self
                .warned_period
                .compare_exchange(warned, period, ORDER, ORDER)
            {
                Ok(_) => return Some((limit, self.soft_limit_percent)),
                Err(now) => warned = now,
            }
        }
        None
    }

    /// Raises the period's spend to at least `spent` (never lowers it): how reconciliation and
    /// a restart bring in spend that this process did not settle itself.
    pub fn restore_spent(&self, period_index: i64, spent: Nanos) {
        loop {
            let word = self.spent.load(ORDER);
            let (period, current) = unpack(word);
            let next = match period.cmp(&period_index) {
                std::cmp::Ordering::Less => pack(period_index, spent.0),
                std::cmp::Ordering::Equal if current < spent.0 => pack(period, spent.0),
                _ => return,
            };
            if self
                .spent
                .compare_exchange(word, next, ORDER, ORDER)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Why a budget refused a reservation: which level, how much was asked, how much is left.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget exceeded at {level} `{name}`: requested {requested}, remaining {remaining} of {limit} this {period}",
    level = level.as_str(), period = period.as_str()
)]
pub struct BudgetExhausted {
    /// The level that refused.
    pub level: Level,
    /// The allocation's, project's or team's name.
    pub name: Arc<str>,
    /// The budget period of that level.
    pub period: Period,
    /// The limit of that level for the period.
    pub limit: Nanos,
    /// The amount the reservation asked to hold: a call's estimated bound, or the cost of
    /// an authorized quantity.
    pub requested: Nanos,
    /// What was left (limit minus spent minus in-flight reservations).
    pub remaining: Nanos,
    /// When the level's period ends and its budget starts afresh; `None` for `total`.
    pub resets_at: Option<UnixMs>,
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;

    const JAN_15: UnixMs = UnixMs(1_768_435_200_000);

    #[test]
    #[should_panic(expected = "release of a 5 nanos hold with 0 nanos held")]
    fn a_hold_given_back_twice_is_a_bug() {
        let cell = BudgetCell::new(BudgetSpec::limited(Nanos(100), Period::Month));
        let Ok(hold) = cell.try_reserve(Period::Month.index(JAN_15), 5, 5, 0) else {
            panic!("5 of 100 fits");
        };
        cell.release(hold);
        cell.release(hold);
    }
}
