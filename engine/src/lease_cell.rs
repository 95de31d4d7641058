//! A replica's lease on one allocation ([`LeaseCell`]): the request path's side of budget
//! leases, kept in the allocation's budget cell. What a lease is, and how grants are decided
//! and folded, is the `lease` module's; this one holds and settles in one word.

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::hold::Hold;
use crate::sync::{AtomicI64, AtomicU64, AtomicU128, Ordering};
use crate::time::UnixMs;

const ORDER: Ordering = Ordering::SeqCst;

/// How often, at most, a call writes its instant into a lease (ms): enough to tell an idle
/// lease, without every call writing a word the others read.
const USED_AT_RESOLUTION_MS: i64 = 100;

fn pack(epoch: i64, available: i64) -> u128 {
    (u128::from(epoch as u64) << 64) | u128::from(available as u64)
}

fn unpack(word: u128) -> (i64, i64) {
    ((word >> 64) as u64 as i64, word as u64 as i64)
}

fn signed(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One replica's lease on one allocation: what the coordinator granted it for the current
/// epoch and calls have not yet held.
///
/// The epoch is the instant the lease ends (ms): the earliest end of the periods of the levels
/// it was charged to. A lease for a later epoch replaces the current one in one swap; what the
/// old one had left is kept to be returned for the periods it was charged in.
#[derive(Debug)]
pub struct LeaseCell {
    /// The epoch and the nanos available in it, as one word. Available is signed: a settle
    /// above its hold takes it below zero, and the next grant pays that back first.
    word: AtomicU128,
    granted_total: AtomicU64,
    returned_total: AtomicU64,
    /// Nanos taken back because their epoch had ended, ever.
    expired_total: AtomicU64,
    /// Nanos this replica credited itself, cut off from every coordinator (`leases.fail_open`),
    /// ever.
    opened_total: AtomicU64,
    /// Of the current epoch's nanos, those this replica credited itself and no coordinator
    /// granted: taken out first when nanos are taken to return, so a return never gives back
    /// what was not granted.
    unbacked: AtomicU64,
    /// The largest hold asked for (its most): what a lease should be able to serve at once.
    ask_largest: AtomicU64,
    /// The smallest least that found too little here since the lease task last looked
    /// (`u64::MAX`: none): what an ask must at least bring.
    short: AtomicU64,
    /// 1 when the coordinator last answered this replica with less than it wanted: the budget
    /// is near its end, and a call should hold what there is rather than wait for its bound.
    scarce: AtomicU64,
    /// When a call last held here, to [`USED_AT_RESOLUTION_MS`].
    used_at: AtomicI64,
    /// What the whole cluster holds at the allocation's level, as this replica's fold of the
    /// lease log last counted it: granted less returned, every replica's.
    cluster_nanos: AtomicU64,
    /// Nanos of epochs that are over, by epoch: returned for the periods they were charged to.
    ended: Mutex<Vec<(i64, u64)>>,
}

/// A lease's counters at one instant, for `/metrics` and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaseSnapshot {
    /// The epoch's end (ms since the Unix epoch); 0 before the first grant.
    pub epoch: i64,
    /// Nanos granted and not held by a call (below zero after a call cost more than its hold).
    pub available: i64,
    /// Nanos granted to this replica, ever.
    pub granted_total: u64,
    /// Nanos returned by it, ever.
    pub returned_total: u64,
    /// Of those, nanos returned because their epoch had ended.
    pub expired_total: u64,
    /// Nanos it credited itself, cut off from every coordinator, ever (`leases.fail_open`).
    pub opened_total: u64,
    /// Nanos the whole cluster holds at the allocation's level (spent, in flight and unused),
    /// as the replica's fold last counted them.
    pub cluster_nanos: u64,
}

impl Default for LeaseCell {
    fn default() -> Self {
        LeaseCell::new()
    }
}

impl LeaseCell {
    /// A lease with nothing granted.
    #[must_use]
    pub fn new() -> LeaseCell {
        LeaseCell {
            word: AtomicU128::new(pack(0, 0)),
            granted_total: AtomicU64::new(0),
            returned_total: AtomicU64::new(0),
            expired_total: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
            unbacked: AtomicU64::new(0),
            ask_largest: AtomicU64::new(0),
            short: AtomicU64::new(u64::MAX),
            scarce: AtomicU64::new(0),
            used_at: AtomicI64::new(i64::MIN),
            cluster_nanos: AtomicU64::new(0),
            ended: Mutex::new(Vec::new()),
        }
    }

    /// Holds between `least` and `most` of the lease at `at_ms`, as much as it has. Returns
    /// what is available when that is less than `least` or the epoch is over (the lease task
    /// is told, and asks for more).
    pub(crate) fn try_reserve(&self, at_ms: i64, least: u64, most: u64) -> Result<Hold, i64> {
        self.touch(at_ms);
        if most > self.ask_largest.load(ORDER) {
            self.ask_largest.fetch_max(most, ORDER);
        }
        loop {
            let word = self.word.load(ORDER);
            let (epoch, available) = unpack(word);
            if at_ms >= epoch || available < signed(least) {
                if least < self.short.load(ORDER) {
                    self.short.fetch_min(least, ORDER);
                }
                return Err(if at_ms >= epoch { 0 } else { available });
            }
            let amount = signed(most).min(available).max(signed(least));
            if self
                .word
                .compare_exchange(word, pack(epoch, available - amount), ORDER, ORDER)
                .is_ok()
            {
                return Ok(Hold {
                    nanos: amount.unsigned_abs(),
                    period: epoch,
                    limited: true,
                });
            }
        }
    }

    /// Gives back a hold without spending it.
    pub(crate) fn release(&self, hold: Hold) {
        self.settle(hold, 0);
    }

    /// Spends `actual` of a hold and gives the rest back: to the lease while its epoch lasts,
    /// to the ended epoch's return otherwise.
    pub(crate) fn settle(&self, hold: Hold, actual: u64) {
        if !hold.limited {
            return;
        }
        loop {
            let word = self.word.load(ORDER);
            let (epoch, available) = unpack(word);
            if epoch != hold.period {
                let unused = hold.nanos.saturating_sub(actual);
                if unused > 0 {
                    self.end(hold.period, unused);
                }
                return;
            }
            let next = available
                .saturating_add(signed(hold.nanos))
                .saturating_sub(signed(actual));
            if self
                .word
                .compare_exchange(word, pack(epoch, next), ORDER, ORDER)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Spends `amount` with no hold (usage booked as a fact): taken from the lease, below zero
    /// if need be, while the epoch is `at_ms`'s; whether it was.
    pub(crate) fn spend(&self, at_ms: i64, amount: u64) -> bool {
        loop {
            let word = self.word.load(ORDER);
            let (epoch, available) = unpack(word);
            if at_ms >= epoch {
                return false;
            }
            let next = available.saturating_sub(signed(amount));
            if self
                .word
                .compare_exchange(word, pack(epoch, next), ORDER, ORDER)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn end(&self, epoch: i64, nanos: u64) {
        let mut ended = lock(&self.ended);
        match ended.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, total)) => *total = total.saturating_add(nanos),
            None => ended.push((epoch, nanos)),
        }
    }

    /// Adds a grant of `nanos` for `epoch`. A grant for a later epoch than the lease's
    /// replaces it (its remainder is kept to return); one for an earlier epoch is kept to
    /// return at once.
    pub fn grant(&self, epoch: i64, nanos: u64) {
        self.grant_replacing(epoch, nanos);
    }

    /// [`grant`](LeaseCell::grant), telling what was available in the lease a later epoch's
    /// grant replaced (below zero where calls spent past it).
    pub(crate) fn grant_replacing(&self, epoch: i64, nanos: u64) -> Option<i64> {
        self.granted_total.fetch_add(nanos, ORDER);
        loop {
            let word = self.word.load(ORDER);
            let (current, available) = unpack(word);
            if epoch < current {
                self.end(epoch, nanos);
                return None;
            }
            let next = if epoch == current {
                pack(epoch, available.saturating_add(signed(nanos)))
            } else {
                pack(epoch, signed(nanos))
            };
            if self.word.compare_exchange(word, next, ORDER, ORDER).is_ok() {
                if epoch > current {
                    let unbacked = self.unbacked.swap(0, ORDER);
                    let granted = available.max(0).unsigned_abs().saturating_sub(unbacked);
                    if granted > 0 {
                        self.end(current, granted);
                    }
                }
                return (epoch > current).then_some(available);
            }
        }
    }

    /// Remembers that a call used the lease at `at_ms` (to [`USED_AT_RESOLUTION_MS`]).
    fn touch(&self, at_ms: i64) {
        if self.used_at.load(ORDER) < at_ms.saturating_sub(USED_AT_RESOLUTION_MS) {
            self.used_at.store(at_ms, ORDER);
        }
    }

    /// Whether the lease has at least `least` for a call at `at_ms`; when it has not, `least`
    /// is remembered as [`take_short`](LeaseCell::take_short) tells, as a refused hold is.
    pub(crate) fn covers(&self, at_ms: i64, least: u64) -> bool {
        self.touch(at_ms);
        let (epoch, available) = unpack(self.word.load(ORDER));
        if at_ms < epoch && available >= signed(least) {
            return true;
        }
        if least < self.short.load(ORDER) {
            self.short.fetch_min(least, ORDER);
        }
        false
    }

    /// Takes what is available beyond `keep` out of the lease, to be returned: the epoch and
    /// the nanos taken, or `None` when there is nothing beyond `keep`. At or after the epoch's
    /// end everything is taken.
    pub fn take_unused(&self, now: UnixMs, keep: u64) -> Option<(i64, u64)> {
        loop {
            let word = self.word.load(ORDER);
            let (epoch, available) = unpack(word);
            let keep = if now.0 >= epoch { 0 } else { signed(keep) };
            if available <= keep {
                return None;
            }
            if self
                .word
                .compare_exchange(word, pack(epoch, keep), ORDER, ORDER)
                .is_ok()
            {
                let taken = (available - keep).unsigned_abs();
                // What this replica credited itself goes first, and nowhere: it was never
                // granted.
                let unbacked = self
                    .unbacked
                    .fetch_update(ORDER, ORDER, |u| Some(u.saturating_sub(taken)))
                    .unwrap_or(0);
                let granted = taken.saturating_sub(unbacked);
                return (granted > 0).then_some((epoch, granted));
            }
        }
    }

    /// Credits `nanos` for `epoch` that no coordinator granted: a replica cut off from every
    /// coordinator failing open (`leases.fail_open`). Spent like a grant, never returned.
    pub fn open(&self, epoch: i64, nanos: u64) {
        if epoch < self.snapshot().epoch {
            // A later grant came meanwhile: the replica is not cut off.
            return;
        }
        self.opened_total.fetch_add(nanos, ORDER);
        // Granted at no cost, then counted as this replica's own: the grant's total is the
        // coordinators' alone.
        self.grant_replacing(epoch, nanos);
        self.granted_total.fetch_sub(nanos, ORDER);
        if self.snapshot().epoch == epoch {
            self.unbacked.fetch_add(nanos, ORDER);
        }
    }

    /// Counts nanos taken back because their epoch had ended.
    pub fn expired(&self, nanos: u64) {
        self.expired_total.fetch_add(nanos, ORDER);
    }

    /// The nanos of epochs that are over, to return, by epoch; emptied.
    pub fn take_ended(&self) -> Vec<(i64, u64)> {
        std::mem::take(&mut *lock(&self.ended))
    }

    /// Notes what the whole cluster holds at the allocation's level, by the fold.
    pub fn set_cluster_nanos(&self, nanos: u64) {
        self.cluster_nanos.store(nanos, ORDER);
    }

    /// Counts nanos the coordinator has taken back.
    pub fn returned(&self, nanos: u64) {
        self.returned_total.fetch_add(nanos, ORDER);
    }

    /// The smallest least refused for want of lease since the last call (`None`: none was),
    /// and resets it.
    pub fn take_short(&self) -> Option<u64> {
        let short = self.short.swap(u64::MAX, ORDER);
        (short != u64::MAX).then_some(short)
    }

    /// Whether the coordinator last gave this replica less than it asked for: calls should
    /// then hold what there is, not wait for their whole bound.
    #[must_use]
    pub fn scarce(&self) -> bool {
        self.scarce.load(ORDER) != 0
    }

    /// Notes whether the coordinator's last answer gave what was asked.
    pub fn set_scarce(&self, scarce: bool) {
        self.scarce.store(u64::from(scarce), ORDER);
    }

    /// The largest hold a call has asked for here.
    #[must_use]
    pub fn ask_largest(&self) -> u64 {
        self.ask_largest.load(ORDER)
    }

    /// When a call last held here (to a tenth of a second); `None` if none has.
    #[must_use]
    pub fn used_at(&self) -> Option<UnixMs> {
        let at = self.used_at.load(ORDER);
        (at != i64::MIN).then_some(UnixMs(at))
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> LeaseSnapshot {
        let (epoch, available) = unpack(self.word.load(ORDER));
        LeaseSnapshot {
            epoch,
            available,
            granted_total: self.granted_total.load(ORDER),
            returned_total: self.returned_total.load(ORDER),
            expired_total: self.expired_total.load(ORDER),
            opened_total: self.opened_total.load(ORDER),
            cluster_nanos: self.cluster_nanos.load(ORDER),
        }
    }
}
