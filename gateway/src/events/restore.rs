//! At start, the spend of the current periods comes back into the budget table, so a restart
//! never gives a budget back; and the ids of resource records booked within the ledger's window
//! are remembered again, so a record resent after a restart changes nothing.
//!
//! Both come from the event log, folded: a `Folded` holds each allocation's spend by hour (spend
//! older than `HORIZON` collapsed into one sum, which only a `total` period still counts) and
//! the resource records within the window, up to a log offset. The syncer thread keeps folding
//! the synced log and writes the fold to `state/spend.checkpoint` every
//! `events.checkpoint_interval_ms` and at shutdown; a start reads the checkpoint and folds only
//! the log after it, and log segments below every reader's position (the checkpoint's, the
//! Parquet writer's, the Kafka shipper's) can be removed. Every settled call's event carries the
//! instant it was booked at and its cost, and period boundaries fall on whole hours, so summing
//! hours of a level's current period gives exactly what the table held (the table and the events
//! agree to the nano). A record that is not an event is skipped and counted; a damaged record
//! stops start-up with its segment and offset.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tollgate_sink::log::{LogError, LogReader};

use tollgate_engine::ledger::{RecordIndex, RecordKey, fingerprint};
use tollgate_engine::{
    Allocation, BudgetCell, Directory, EventKind, Level, Nanos, Period, UnixMs, UsageEvent,
};

/// The checkpoint's file in the state folder.
pub const CHECKPOINT_FILE: &str = "spend.checkpoint";
/// Spend older than this is kept as one sum per allocation: no day, week or month period that
/// is current can reach back further (a week begun in the previous month included).
pub const HORIZON_MS: i64 = 40 * 86_400_000;
/// Largest checkpoint read back.
const CHECKPOINT_BYTES_MAX: u64 = 4 << 30;

const HOUR_MS: i64 = 3_600_000;

/// A budget cell, by its level and the name of its team, project or allocation.
type CellKey = (Level, Arc<str>);

fn cell_of(allocation: &Allocation, level: Level) -> Option<&BudgetCell> {
    Level::ALL
        .into_iter()
        .zip(allocation.budget_cells())
        .find_map(|(l, cell)| (l == level).then_some(cell))
}

/// What was restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Events read from the log (after the checkpoint).
    pub events: u64,
    /// Lines that were not events.
    pub skipped: u64,
    /// Budget cells given back their spend.
    pub cells: u64,
    /// Resource record ids remembered again.
    pub records: u64,
    /// The log offset the checkpoint covered (0 without one).
    pub checkpoint_offset: u64,
}

/// The event log folded for restoring: spend by allocation and hour, resource records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    /// Version of this format.
    v: u32,
    /// The next log offset not folded in.
    pub next_offset: u64,
    /// Spend by allocation and hour (start of the hour, ms), nano-units.
    hours: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Spend older than the horizon, by allocation: counted only by `total` periods.
    before: BTreeMap<String, u64>,
    /// Resource records: key (hex), fingerprint, instant.
    records: Vec<(String, u64, i64)>,
}

impl Default for Folded {
    fn default() -> Folded {
        Folded::new()
    }
}

impl Folded {
    /// An empty fold from offset 0, in this version's format.
    #[must_use]
    pub fn new() -> Folded {
        Folded {
            v: 1,
            next_offset: 0,
            hours: BTreeMap::new(),
            before: BTreeMap::new(),
            records: Vec::new(),
        }
    }

    /// Folds the record at `offset`; returns false when it is not an event.
    pub fn fold(&mut self, offset: u64, payload: &[u8]) -> bool {
        self.next_offset = self.next_offset.max(offset + 1);
        let Ok(event) = UsageEvent::from_json(payload) else {
            return false;
        };
        if event.kind != EventKind::Tokens {
            self.records.push((
                format!("{:032x}", RecordKey::of(&event.request_id).0),
                fingerprint(&event),
                event.ts_ms.0,
            ));
        }
        if event.cost_nanos != Nanos::ZERO
            && let Some(allocation) = event.allocation.as_deref()
        {
            let hour = event.ts_ms.0.div_euclid(HOUR_MS) * HOUR_MS;
            let sum = self
                .hours
                .entry(allocation.to_owned())
                .or_default()
                .entry(hour)
                .or_insert(0);
            *sum = sum.saturating_add(event.cost_nanos.0);
        }
        true
    }

    /// Folds hours older than the horizon into the per-allocation sum and forgets records
    /// older than `record_window_ms`, so the fold stays bounded by live periods.
    pub fn compact(&mut self, now: UnixMs, record_window_ms: i64) {
        let horizon = now.0.saturating_sub(HORIZON_MS);
        for (allocation, hours) in &mut self.hours {
            let old: Vec<i64> = hours.range(..horizon).map(|(h, _)| *h).collect();
            for hour in old {
                if let Some(nanos) = hours.remove(&hour) {
                    let sum = self.before.entry(allocation.clone()).or_insert(0);
                    *sum = sum.saturating_add(nanos);
                }
            }
        }
        self.hours.retain(|_, hours| !hours.is_empty());
        let oldest = now.0.saturating_sub(record_window_ms);
        self.records.retain(|(_, _, at)| *at >= oldest);
    }

    /// Gives every cell of `directory` its current period's spend (at `now`) and puts the
    /// resource records within the window back into `index`. An index that fills up stops
    /// taking ids (new records are then refused until old ones age out), which is safe.
    pub fn apply(&self, directory: &Directory, now: UnixMs, index: &mut RecordIndex) -> Restored {
        let mut restored = Restored::default();
        for (key, fingerprint, at) in &self.records {
            let Ok(key) = u128::from_str_radix(key, 16) else {
                continue;
            };
            if index.check_age(UnixMs(*at), now).is_ok()
                && index
                    .insert(RecordKey(key), *fingerprint, UnixMs(*at))
                    .is_ok()
            {
                restored.records += 1;
            }
        }
        // The allocations configured, each once (an allocation no longer configured has no
        // cells to restore).
        let mut seen = std::collections::BTreeSet::new();
        let allocations: Vec<(&String, Arc<Allocation>)> = self
            .hours
            .keys()
            .chain(self.before.keys())
            .filter(|name| seen.insert(*name))
            .filter_map(|name| Some((name, directory.allocation(name).ok()?)))
            .collect();
        let clocks = self.cell_clocks(&allocations, now);
        // Sums by cell, with an allocation that reaches the cell. A cell with nothing spent in
        // its current period is still set to that period, so other replicas' spend of older
        // periods (reconciled next) is not booked into a period the table has left.
        let mut sums: HashMap<CellKey, (Arc<Allocation>, u64)> = HashMap::new();
        for (name, allocation) in &allocations {
            for (level, cell) in Level::ALL.into_iter().zip(allocation.budget_cells()) {
                let key = (level, Arc::clone(allocation.level_name(level)));
                let clock = clocks.get(&key).copied().unwrap_or(now);
                let spent = self.spent_in_period(name, cell.period(), clock);
                let entry = sums
                    .entry(key)
                    .or_insert_with(|| (Arc::clone(allocation), 0));
                entry.1 = entry.1.saturating_add(spent);
            }
        }
        for (key, (allocation, spent)) in sums {
            let clock = clocks.get(&key).copied().unwrap_or(now);
            if let Some(cell) = cell_of(&allocation, key.0) {
                cell.restore_spent(cell.period().index(clock), Nanos(spent));
                restored.cells += 1;
            }
        }
        restored
    }

    /// Each cell's clock: `now`, or the newest hour spent at the cell if later. A wall clock
    /// stepped back since must not reopen an older period: the running table never goes back
    /// to one, and the newer period's spend would be handed back when the clock caught up.
    fn cell_clocks(
        &self,
        allocations: &[(&String, Arc<Allocation>)],
        now: UnixMs,
    ) -> HashMap<CellKey, UnixMs> {
        let mut clocks: HashMap<CellKey, UnixMs> = HashMap::new();
        for (name, allocation) in allocations {
            let newest = self
                .hours
                .get(*name)
                .and_then(|hours| hours.keys().next_back())
                .map_or(now, |hour| UnixMs(now.0.max(*hour)));
            for level in Level::ALL {
                let clock = clocks
                    .entry((level, Arc::clone(allocation.level_name(level))))
                    .or_insert(newest);
                *clock = (*clock).max(newest);
            }
        }
        clocks
    }

    /// What allocation `name` spent in `period`'s period holding `clock` (with the spend
    /// older than the horizon for a `total` period).
    fn spent_in_period(&self, name: &str, period: Period, clock: UnixMs) -> u64 {
        let current = period.index(clock);
        let mut spent: u64 = self.hours.get(name).map_or(0, |hours| {
            hours
                .iter()
                .filter(|(hour, _)| period.index(UnixMs(**hour)) == current)
                .fold(0u64, |sum, (_, nanos)| sum.saturating_add(*nanos))
        });
        if period == Period::Total {
            spent = spent.saturating_add(self.before.get(name).copied().unwrap_or(0));
        }
        spent
    }

    /// Reads the checkpoint at `path`, or the one before it (`<path>.prev`) when that one is
    /// damaged; `None` when neither can be read (the log is then folded from its start, and
    /// reported). Log segments are removed only below both, so either restores exactly.
    ///
    /// A damaged newest checkpoint is moved aside (`<path>.damaged`, kept for the operator):
    /// left in place, the next save would make it `.prev` over the good one, and a second
    /// damage before the save after would leave no checkpoint that covers the log's start.
    #[must_use]
    pub fn load(path: &Path) -> Option<Folded> {
        if let Some(folded) = Folded::load_one(path) {
            return Some(folded);
        }
        let folded = Folded::load_one(&previous(path))?;
        if path.exists() {
            let aside = path.with_extension("damaged");
            match std::fs::rename(path, &aside) {
                Ok(()) => crate::operator::report(&format!(
                    "{}: damaged, moved to {}; restored from {}",
                    path.display(),
                    aside.display(),
                    previous(path).display()
                )),
                Err(e) => crate::operator::report(&format!(
                    "{}: damaged and could not be moved aside ({e})",
                    path.display()
                )),
            }
        }
        Some(folded)
    }

    fn load_one(path: &Path) -> Option<Folded> {
        let file = std::fs::File::open(path).ok()?;
        let mut text = Vec::new();
        if file
            .take(CHECKPOINT_BYTES_MAX)
            .read_to_end(&mut text)
            .is_err()
        {
            return None;
        }
        match serde_json::from_slice::<Folded>(&text) {
            Ok(folded) if folded.v == 1 => Some(folded),
            _ => {
                crate::operator::report(&format!(
                    "{}: not a spend checkpoint this version reads; restoring from the whole log",
                    path.display()
                ));
                None
            }
        }
    }

    /// Writes the checkpoint to `path` (temporary name, synced, renamed, folder synced).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        // The checkpoint before stays, as `.prev`: a damaged newest one falls back to it.
        if path.exists() {
            std::fs::rename(path, previous(path))?;
        }
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Where the checkpoint before `path` is kept.
fn previous(path: &Path) -> std::path::PathBuf {
    path.with_extension("prev")
}

/// Folds `records` (the log from `folded.next_offset`) into `folded`, then restores the table
/// and the record index from it (at `now`).
pub fn restore_spend(
    directory: &Directory,
    folded: &mut Folded,
    records: LogReader,
    now: UnixMs,
    index: &mut RecordIndex,
) -> Result<Restored, LogError> {
    let checkpoint_offset = folded.next_offset;
    let mut events = 0;
    let mut skipped = 0;
    for record in records {
        let (offset, payload) = record?;
        if folded.fold(offset, &payload) {
            events += 1;
        } else {
            skipped += 1;
        }
    }
    let mut restored = folded.apply(directory, now, index);
    restored.events = events;
    restored.skipped = skipped;
    restored.checkpoint_offset = checkpoint_offset;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::{AllocationSpec, BudgetSpec};

    fn event(allocation: &str, ts: i64, cost: u64) -> Vec<u8> {
        let mut event = UsageEvent::sample();
        event.allocation = Some(allocation.into());
        event.ts_ms = UnixMs(ts);
        event.cost_nanos = Nanos(cost);
        event.to_json()
    }

    fn directory() -> Directory {
        let directory = Directory::new();
        let spec = |limit: Option<u64>, period| BudgetSpec {
            limit: limit.map(Nanos),
            period,
            soft_limit_percent: 80,
        };
        directory
            .add_team("t", "acme", spec(None, Period::Total))
            .unwrap();
        directory
            .add_project("p", "t", spec(None, Period::Week))
            .unwrap();
        directory
            .add_allocation(AllocationSpec {
                name: "a".into(),
                project: "p".into(),
                cost_center: String::new(),
                models: tollgate_engine::AllowList::Any,
                budget: spec(Some(1_000_000), Period::Month),
                tight: Default::default(),
            })
            .unwrap();
        directory
    }

    #[test]
    fn a_checkpoint_restores_what_the_whole_log_does() {
        // 2026-11-24T12:00:00Z, a Tuesday.
        let now = UnixMs(1_795_521_600_000);
        let day = 86_400_000;
        let log = [
            event("a", now.0 - 100 * day, 7), // long ago: only the team's total
            event("a", now.0 - 30 * day, 11), // last month
            event("a", now.0 - 2 * day, 13),  // this month, this week (Sunday is last week)
            event("a", now.0 - day, 17),      // this week
            event("a", now.0 - 60_000, 19),   // this hour
            b"not an event".to_vec(),
        ];
        let whole = {
            let mut folded = Folded::new();
            for (i, record) in log.iter().enumerate() {
                folded.fold(i as u64, record);
            }
            folded
        };
        // A checkpoint taken after three records and compacted, then the rest folded in.
        let mut checkpointed = Folded::new();
        for (i, record) in log.iter().enumerate().take(3) {
            checkpointed.fold(i as u64, record);
        }
        checkpointed.compact(now, 62 * day);
        let path = std::env::temp_dir()
            .join(format!("tollgate-checkpoint-{}", std::process::id()))
            .join(CHECKPOINT_FILE);
        checkpointed.save(&path).unwrap();
        let mut restored = Folded::load(&path).unwrap();
        assert_eq!(restored, checkpointed);
        for (i, record) in log.iter().enumerate().skip(3) {
            restored.fold(i as u64, record);
        }
        assert_eq!(restored.next_offset, 6);
        let spent = |folded: &Folded| {
            let directory = directory();
            let mut index = RecordIndex::new(62 * day, 1000);
            folded.apply(&directory, now, &mut index);
            let a = directory.allocation("a").unwrap();
            a.budget_cells().map(|cell| cell.snapshot(now).spent.0)
        };
        // Month: 13 + 17 + 19; week (Monday on): 17 + 19... and Sunday's 13 is last week.
        let expected = [13 + 17 + 19, 17 + 19, 7 + 11 + 13 + 17 + 19];
        assert_eq!(spent(&whole), expected);
        assert_eq!(spent(&restored), expected);
        // A damaged newest checkpoint falls back to the one before; with both damaged (or
        // foreign) none is trusted and the start folds the whole log.
        restored.save(&path).unwrap();
        for damaged in [&b"{\"v\": 1, \"next_off"[..], b"\xff\xfe", b"{\"v\": 9}"] {
            std::fs::write(&path, damaged).unwrap();
            assert_eq!(Folded::load(&path), Some(checkpointed.clone()));
            assert!(!path.exists(), "the damaged newest is moved aside");
            let aside = std::fs::metadata(path.with_extension("damaged")).unwrap();
            assert_eq!(aside.len(), damaged.len() as u64, "kept for the operator");
        }
        // So the save after keeps the good one as `.prev`, not the damaged one.
        restored.save(&path).unwrap();
        assert_eq!(
            Folded::load_one(&previous(&path)),
            Some(checkpointed.clone())
        );
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(Folded::load(&path), Some(checkpointed.clone()));
        std::fs::write(previous(&path), b"{").unwrap();
        assert_eq!(Folded::load(&path), None);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        assert_eq!(Folded::load(&path), None, "no checkpoint yet");
    }

    #[test]
    fn a_clock_stepped_back_restores_the_newest_period_seen() {
        // 2026-11-24T12:00:00Z; the allocation's period is a month, the project's a week.
        let now = UnixMs(1_795_521_600_000);
        let day = 86_400_000;
        let mut folded = Folded::new();
        folded.fold(0, &event("a", now.0 - day, 5));
        // Spent while the clock read six days later (the next week), then stepped back.
        folded.fold(1, &event("a", now.0 + 6 * day, 7));
        let directory = directory();
        folded.apply(&directory, now, &mut RecordIndex::new(62 * day, 10));
        let a = directory.allocation("a").unwrap();
        let [allocation, project, team] = a.budget_cells().map(|cell| cell.snapshot(now));
        // The month holds both; the week is the later one, with only its own spend.
        assert_eq!(allocation.spent.0, 12);
        assert_eq!(
            (project.period_index, project.spent.0),
            (Period::Week.index(UnixMs(now.0 + 6 * day)), 7)
        );
        assert_eq!(team.spent.0, 12);
    }
}
