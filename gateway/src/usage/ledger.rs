//! The resource ledger's state: which record ids were booked (so a resent record changes
//! nothing) and the holds kept for authorized usage, with the sweeper that gives expired holds
//! back.
//!
//! Both live behind short `Mutex`es: the ledger takes batches of accounting records, not the
//! token calls of the request path, which never touches it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tollgate_engine::UnixMs;
use tollgate_engine::ledger::{RecordIndex, ReservationBook};

use crate::clock::now_ms;
use crate::config::LedgerConfig;
use crate::limits::LEDGER_SWEEP_INTERVAL;
use crate::metrics::{Counter, Metrics};

/// The ledger's state: booked record ids and the holds kept for authorized usage.
#[derive(Debug)]
pub struct Ledger {
    /// Its bounds: batch size, body size, holds kept, the record-id window, the default TTL.
    pub config: LedgerConfig,
    pub(super) index: Mutex<RecordIndex>,
    pub(super) book: Mutex<ReservationBook>,
    pruned_at_ms: AtomicI64,
}

/// How often the record index forgets ids that aged out of its window.
const PRUNE_INTERVAL_MS: i64 = 60_000;

/// The shortest pause between sweeps, however short the TTL.
const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(5);

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `d` in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Ledger {
    /// A ledger with `index` (restored from the event log) and no holds.
    #[must_use]
    pub fn new(config: LedgerConfig, index: RecordIndex) -> Ledger {
        Ledger {
            book: Mutex::new(ReservationBook::new(config.reservations_max)),
            index: Mutex::new(index),
            config,
            pruned_at_ms: AtomicI64::new(0),
        }
    }

    /// An empty index with this config's window and bound.
    #[must_use]
    pub fn index_for(config: &LedgerConfig) -> RecordIndex {
        RecordIndex::new(duration_ms(config.record_window), config.records_max)
    }

    /// Holds kept and record ids remembered, for `/metrics`.
    #[must_use]
    pub fn sizes(&self) -> (u64, u64) {
        (
            lock(&self.book).len() as u64,
            lock(&self.index).len() as u64,
        )
    }

    /// Gives back every hold expired at `now` and forgets record ids that aged out; returns
    /// the number of holds given back.
    pub fn sweep(&self, now: UnixMs) -> usize {
        // Dropped outside the lock: releasing touches every level's counters.
        let expired = lock(&self.book).expire(now);
        if now
            .0
            .saturating_sub(self.pruned_at_ms.load(Ordering::Relaxed))
            >= PRUNE_INTERVAL_MS
        {
            self.pruned_at_ms.store(now.0, Ordering::Relaxed);
            lock(&self.index).prune(now);
        }
        expired.len()
    }
}

/// Gives back expired holds in the background, at most [`LEDGER_SWEEP_INTERVAL`] apart (a
/// quarter of the TTL when that is shorter, so a hold outlives its TTL by little).
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sweeper {
    /// Starts sweeping `ledger`, counting what expires in `metrics`.
    #[must_use]
    pub fn start(ledger: Arc<Ledger>, metrics: Arc<Metrics>) -> Sweeper {
        let (stop, mut stopped) = watch::channel(false);
        let interval =
            (ledger.config.reservation_ttl / 4).clamp(SWEEP_INTERVAL_MIN, LEDGER_SWEEP_INTERVAL);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let expired = ledger.sweep(now_ms());
                metrics.add(Counter::ReservationsExpired, expired as u64);
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
        Sweeper { stop, task }
    }

    /// Stops sweeping (holds still kept expire at the next start's first sweep).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
