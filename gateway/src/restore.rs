//! At start, the spend of the current periods is read back from the durable event log, so a
//! restart never gives a budget back; and the ids of resource records booked within the
//! ledger's window are remembered again, so a record resent after a restart changes nothing.
//!
//! Every settled call's event carries the instant it was booked at and its cost; summing the
//! events of each level's current period gives exactly what the budget table held before the
//! restart (the table and the events agree to the nano). A record that is not an event is
//! skipped and counted; a damaged record stops start-up with its segment and offset.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_sink::log::{LogError, LogReader};

use tollgate_engine::ledger::{RecordIndex, RecordKey, fingerprint};
use tollgate_engine::{
    Allocation, BudgetCell, Directory, EventKind, Level, Nanos, UnixMs, UsageEvent,
};

fn cell_of(allocation: &Allocation, level: Level) -> Option<&BudgetCell> {
    Level::ALL
        .into_iter()
        .zip(allocation.budget_cells())
        .find_map(|(l, cell)| (l == level).then_some(cell))
}

/// What was restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Events read.
    pub events: u64,
    /// Lines that were not events.
    pub skipped: u64,
    /// Budget cells given back their spend.
    pub cells: u64,
    /// Resource record ids remembered again.
    pub records: u64,
}

/// Reads `records` (the log from its start), raises every cell's spend in its current period
/// (at `now`) to the sum of the period's events, and puts the ids of resource records within
/// the window back into `index`. An index that fills up stops taking ids (new records are then
/// refused until old ones age out), which is safe; the count restored is reported.
pub fn restore_spend(
    directory: &Directory,
    records: LogReader,
    now: UnixMs,
    index: &mut RecordIndex,
) -> Result<Restored, LogError> {
    let mut restored = Restored::default();
    // Sums by level and name (one cell each) for the cell's current period, with an
    // allocation that reaches the cell.
    let mut sums: HashMap<(Level, Arc<str>), (Arc<Allocation>, u64)> = HashMap::new();
    for record in records {
        let (_, payload) = record?;
        let Ok(event) = UsageEvent::from_json(&payload) else {
            restored.skipped += 1;
            continue;
        };
        restored.events += 1;
        if event.kind != EventKind::Tokens
            && index.check_age(event.ts_ms, now).is_ok()
            && index
                .insert(
                    RecordKey::of(&event.request_id),
                    fingerprint(&event),
                    event.ts_ms,
                )
                .is_ok()
        {
            restored.records += 1;
        }
        if event.cost_nanos == Nanos::ZERO {
            continue;
        }
        let Some(name) = event.allocation.as_deref() else {
            continue;
        };
        // An allocation no longer configured has no cells to restore.
        let Ok(allocation) = directory.allocation(name) else {
            continue;
        };
        for (level, cell) in Level::ALL.into_iter().zip(allocation.budget_cells()) {
            let period = cell.period();
            if period.index(event.ts_ms) != period.index(now) {
                continue;
            }
            let key = (level, Arc::clone(allocation.level_name(level)));
            let entry = sums
                .entry(key)
                .or_insert_with(|| (Arc::clone(&allocation), 0));
            entry.1 = entry.1.saturating_add(event.cost_nanos.0);
        }
    }
    for ((level, _), (allocation, spent)) in sums {
        if let Some(cell) = cell_of(&allocation, level) {
            cell.restore_spent(cell.period().index(now), Nanos(spent));
            restored.cells += 1;
        }
    }
    Ok(restored)
}
