//! A replica's slice of a per-minute rate limit that replicas share ([`RateSlice`]): the
//! request path's side of leased rate limits. The coordinator grants each replica part of a
//! minute's allowance ([`Terms::rate`](crate::lease::Terms::rate)); the replica admits within
//! it, with no network call, and asks for more ahead of need.
//!
//! Requests are taken before a call ([`RateSlice::take`]), so the cluster's requests in a
//! minute never pass the allowance. Tokens are known only after a call, so they are charged
//! then ([`RateSlice::charge`]): a slice in debt admits nothing until a grant covers the debt,
//! and tokens charged when the slice has no grant for their minute (or past the minute's end)
//! are owed, taken out of the next grant. So a minute's tokens may pass its allowance by what
//! the calls in flight when it ran out used, and the next minute pays for it.
//!
//! **Invariant:** a slice admits only within units granted for the minute it admits in; units
//! it did not use in an ended minute are worth nothing (the minute's allowance is over) and are
//! never returned or reused.

use crate::lease_cell::LeaseCell;
pub use crate::lease_cell::LeaseSnapshot;
use crate::sync::{AtomicI64, AtomicU64, Ordering};

const ORDER: Ordering = Ordering::SeqCst;

/// One replica's slice of one per-minute limit (a key's or a team's requests or tokens).
#[derive(Debug)]
pub struct RateSlice {
    /// The units granted for the slice's minute (its epoch is the minute's end).
    lease: LeaseCell,
    /// Tokens charged with no grant for the minute they were charged in: taken out of the
    /// next grant.
    owed: AtomicU64,
    /// The end (ms) of the minute in which the coordinator last denied this replica: till
    /// then a call the slice cannot cover is refused, not made to wait.
    denied_until: AtomicI64,
}

/// Why a slice did not admit a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// No grant covers the call yet; the replica asks for one (worth waiting a moment).
    Asking,
    /// The coordinator has no more of this minute to give: refused until `until_ms`.
    Spent {
        /// When the minute ends (ms).
        until_ms: i64,
    },
}

impl Default for RateSlice {
    fn default() -> Self {
        RateSlice::new()
    }
}

impl RateSlice {
    /// An empty slice: nothing granted yet.
    #[must_use]
    pub fn new() -> RateSlice {
        RateSlice {
            lease: LeaseCell::new(),
            owed: AtomicU64::new(0),
            denied_until: AtomicI64::new(i64::MIN),
        }
    }

    fn short(&self, now_ms: i64) -> Short {
        let until_ms = self.denied_until.load(ORDER);
        if now_ms < until_ms {
            Short::Spent { until_ms }
        } else {
            Short::Asking
        }
    }

    /// Takes `units` (requests) for a call at `now_ms`, or says why not. A refusal is
    /// remembered for the replica to ask ([`take_short`](RateSlice::take_short)).
    pub fn take(&self, now_ms: i64, units: u64) -> Result<(), Short> {
        match self.lease.try_reserve(now_ms, units, units) {
            // The units are used: the hold is never given back.
            Ok(_) => Ok(()),
            Err(_) => Err(self.short(now_ms)),
        }
    }

    /// Whether a call at `now_ms` may start: the slice has a grant for the minute and is not
    /// in debt (tokens are charged after the call).
    pub fn check(&self, now_ms: i64) -> Result<(), Short> {
        if self.lease.covers(now_ms, 1) {
            Ok(())
        } else {
            Err(self.short(now_ms))
        }
    }

    /// Charges `units` (tokens) a call used, at `now_ms`: from the minute's grant, below zero
    /// if need be, or owed to the next grant when the slice has none for this minute.
    pub fn charge(&self, now_ms: i64, units: u64) {
        if !self.lease.spend(now_ms, units) {
            self.owed.fetch_add(units, ORDER);
        }
    }

    /// Adds a grant of `units` for the minute ending at `epoch`. A grant for a later minute
    /// starts the slice afresh: what the minute before left unused is worth nothing, and what
    /// it spent past its grant is owed, taken from this grant with whatever else is owed.
    pub fn grant(&self, epoch: i64, units: u64) {
        if let Some(before) = self.lease.grant_replacing(epoch, units)
            && before < 0
        {
            self.owed.fetch_add(before.unsigned_abs(), ORDER);
        }
        // Units left in an ended minute are of no use to anyone: dropped, not returned, and
        // counted as expired (they were neither used nor given back).
        let dropped: u64 = self.lease.take_ended().iter().map(|(_, n)| n).sum();
        if dropped > 0 {
            self.lease.expired(dropped);
        }
        if self.lease.snapshot().epoch == epoch {
            self.denied_until.store(i64::MIN, ORDER);
            let owed = self.owed.swap(0, ORDER);
            if owed > 0 && !self.lease.spend(epoch.saturating_sub(1), owed) {
                self.owed.fetch_add(owed, ORDER);
            }
        }
    }

    /// The coordinator denied this replica in the minute ending at `until_ms`: calls the slice
    /// cannot cover are refused till then.
    pub fn deny(&self, until_ms: i64) {
        self.denied_until.fetch_max(until_ms, ORDER);
    }

    /// What the slice has beyond `keep` for its minute, taken out to return (`None` when there
    /// is nothing, or its minute is over: unused units of an ended minute are not returned).
    pub fn take_unused(&self, now_ms: i64, keep: u64) -> Option<(i64, u64)> {
        let epoch = self.lease.snapshot().epoch;
        if now_ms >= epoch {
            return None;
        }
        self.lease
            .take_unused(crate::time::UnixMs(now_ms), keep)
            .filter(|(e, _)| *e == epoch)
    }

    /// Counts units returned by the fold.
    pub fn returned(&self, units: u64) {
        self.lease.returned(units);
    }

    /// The least a refused call needed since the last look, if one was refused.
    pub fn take_short(&self) -> Option<u64> {
        self.lease.take_short()
    }

    /// Tokens owed to the next grant.
    #[must_use]
    pub fn owed(&self) -> u64 {
        self.owed.load(ORDER)
    }

    /// When a call last used the slice, to 100 ms.
    #[must_use]
    pub fn used_at(&self) -> Option<crate::time::UnixMs> {
        self.lease.used_at()
    }

    /// The slice now: its minute's end, what is available, granted and returned in all.
    #[must_use]
    pub fn snapshot(&self) -> LeaseSnapshot {
        self.lease.snapshot()
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_within_the_minute_granted_and_a_denial_refuses_till_its_end() {
        let slice = RateSlice::new();
        assert_eq!(slice.take(10, 1), Err(Short::Asking));
        assert_eq!(slice.take_short(), Some(1));
        slice.grant(60_000, 2);
        slice.take(10, 1).unwrap();
        slice.take(20, 1).unwrap();
        assert_eq!(slice.take(30, 1), Err(Short::Asking));
        slice.deny(60_000);
        assert_eq!(slice.take(40, 1), Err(Short::Spent { until_ms: 60_000 }));
        // The next minute: the denial is over, and a grant for it admits again.
        assert_eq!(slice.take(60_000, 1), Err(Short::Asking));
        slice.grant(120_000, 1);
        slice.take(60_010, 1).unwrap();
        assert_eq!(slice.snapshot().granted_total, 3);
    }

    #[test]
    fn tokens_spent_past_a_grant_or_outside_one_are_owed_to_the_next() {
        let slice = RateSlice::new();
        // Charged before any grant: owed.
        slice.charge(5, 40);
        assert_eq!(slice.owed(), 40);
        slice.grant(60_000, 100);
        assert_eq!((slice.owed(), slice.snapshot().available), (0, 60));
        slice.check(10).unwrap();
        // A call in flight spends past the grant: the slice is in debt and admits nothing.
        slice.charge(20, 90);
        assert_eq!(slice.check(30), Err(Short::Asking));
        // The next minute's grant pays the debt first.
        slice.grant(120_000, 100);
        assert_eq!(slice.snapshot().available, 70);
        // Charged after the minute's end with no grant for the next: owed again.
        slice.charge(120_000, 25);
        assert_eq!(slice.owed(), 25);
        assert_eq!(slice.take_unused(120_000, 0), None);
    }

    #[test]
    fn only_the_current_minute_is_returned() {
        let slice = RateSlice::new();
        slice.grant(60_000, 10);
        slice.take(1, 3).unwrap();
        assert_eq!(slice.take_unused(2, 2), Some((60_000, 5)));
        assert_eq!(slice.take_unused(60_000, 0), None);
        // A late grant for a minute already over adds nothing usable.
        slice.grant(120_000, 4);
        slice.grant(60_000, 50);
        assert_eq!(slice.snapshot().available, 4);
        // 7 left of the first minute and the late 50: dropped, counted as expired.
        assert_eq!(slice.snapshot().expired_total, 7 - 5 + 50);
    }
}
