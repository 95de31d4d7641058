//! At start, the spend of the current periods is read back from the local event log, so a
//! restart never gives a budget back.
//!
//! Every settled call's event carries the instant it was booked at and its cost; summing the
//! events of each level's current period gives exactly what the budget table held before the
//! restart (the table and the events agree to the nano). The log is read line by line; a line
//! that is not an event (a write cut by a crash) is skipped and counted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader};
use std::path::Path;
use std::sync::Arc;

use tollgate_engine::{Allocation, BudgetCell, Directory, Level, Nanos, UnixMs, UsageEvent};

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
}

/// Reads `log` and raises every cell's spend in its current period (at `now`) to the sum of
/// the period's events.
pub fn restore_spend(directory: &Directory, log: &Path, now: UnixMs) -> io::Result<Restored> {
    let file = match File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::default()),
        Err(e) => return Err(e),
    };
    let mut restored = Restored::default();
    // Sums by level and name (one cell each) for the cell's current period, with an
    // allocation that reaches the cell.
    let mut sums: HashMap<(Level, Arc<str>), (Arc<Allocation>, u64)> = HashMap::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Ok(event) = UsageEvent::from_json(&line) else {
            restored.skipped += 1;
            continue;
        };
        restored.events += 1;
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
