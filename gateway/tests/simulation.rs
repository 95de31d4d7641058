//! A seeded simulation of the budget table across replicas, crashes and restarts (TigerBeetle's
//! VOPR in miniature), driving the real engine and the real restore code.
//!
//! Each seed builds a world of one to three replicas sharing an allocation tree (a team by the
//! month, a project by the week, two allocations by the day) and takes thousands of random
//! steps: reserve (at least something, at most a bound), extend a hold, settle within it, drop
//! one, ship a replica's events to the shared topic (sometimes twice, as at-least-once delivery
//! does after a crash), reconcile a replica from the topic, checkpoint (fold the log, keep the
//! checkpoint before it, remove what every reader has), `kill -9` a replica and start it again
//! from its checkpoint and log (sometimes with the newest checkpoint damaged), and move the
//! clock, across period boundaries too, and sometimes back. After every step, for every replica:
//! - **table equals events**: each level's spent is exactly the sum of the events of its
//!   current period that the replica knows (its own log and what it reconciled), the current
//!   period being now's or a later one the level has seen (a clock stepped back never
//!   reopens an older one);
//! - **spend within the limit**: what one replica settled in a period never passes a level's
//!   limit when settles stay within holds (so a lone replica never overspends at all);
//! - **nothing given back at restart**: every level spends at least as much after a restart as
//!   before the crash;
//! - **the log starts where the fold needs it**: a restart never finds records removed that
//!   its checkpoint does not cover.
//!
//! A failing seed is printed; `TOLLGATE_SIMULATION_SEED=<seed>` runs that one alone.
//! `TOLLGATE_SIMULATION_SECONDS` (default 5) bounds a run; a longer run by hand finds more.
#![expect(
    clippy::panic,
    clippy::print_stderr,
    reason = "test code outside a #[test] function: a simulation fails by panicking, after \
              printing its last steps"
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_engine::ledger::RecordIndex;
use tollgate_engine::{
    Allocation, AllocationSpec, AllowList, Ask, BudgetSpec, Directory, EventId, Level, Nanos,
    Period, Reservation, UnixMs, UsageEvent,
};
use tollgate_gateway::events::restore::Folded;

/// Steps one seed takes.
const STEPS: u32 = 3_000;
/// Steps printed when an invariant fails.
const TRACE_STEPS: usize = 24;
/// Holds one replica keeps in flight at most.
const IN_FLIGHT_MAX: usize = 12;
const ALLOCATIONS: [&str; 2] = ["a1", "a2"];
const DAY_MS: i64 = 86_400_000;

/// SplitMix64: a seed gives the same world and steps on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The limits of one world: every level limited, so each can refuse.
#[derive(Clone, Copy)]
struct Limits {
    team: u64,
    project: u64,
    allocation: u64,
}

fn directory(limits: Limits) -> Directory {
    let directory = Directory::new();
    let spec = |limit: u64, period| BudgetSpec {
        limit: Some(Nanos(limit)),
        period,
        soft_limit_percent: 80,
    };
    let made = directory
        .add_team("t", "acme", spec(limits.team, Period::Month))
        .and_then(|_| directory.add_project("p", "t", spec(limits.project, Period::Week)));
    assert!(made.is_ok(), "{made:?}");
    for name in ALLOCATIONS {
        let added = directory.add_allocation(AllocationSpec {
            name: name.into(),
            project: "p".into(),
            cost_center: String::new(),
            models: AllowList::Any,
            budget: spec(limits.allocation, Period::Day),
            tight: Default::default(),
        });
        assert!(added.is_ok(), "{added:?}");
    }
    directory
}

/// One settled call, as the log and the topic carry it.
#[derive(Clone)]
struct Settled {
    id: u128,
    allocation: &'static str,
    at: UnixMs,
    cost: u64,
    payload: Vec<u8>,
}

/// A checkpoint file as a restart finds it.
#[derive(Clone)]
enum Slot {
    Absent,
    Damaged,
    Good(Folded),
}

/// One gateway process and what survives it on disk.
struct Replica {
    origin: usize,
    directory: Directory,
    /// Every event it ever wrote, in log order (offset = index).
    history: Vec<Settled>,
    /// Records below this offset were removed from the log.
    log_first: u64,
    /// The syncer's fold of the log, in memory.
    folded: Folded,
    /// The offset of the checkpoint that becomes `.prev` at the next save.
    previous_offset: u64,
    /// `spend.checkpoint` and `spend.prev` on disk.
    newest: Slot,
    prev: Slot,
    /// Own events shipped to the topic so far.
    shipped: usize,
    /// The topic read so far, and the other replicas' events booked from it.
    reconciled: usize,
    seen: HashSet<u128>,
    in_flight: Vec<(Reservation, &'static str)>,
}

impl Replica {
    fn new(origin: usize, limits: Limits) -> Replica {
        Replica {
            origin,
            directory: directory(limits),
            history: Vec::new(),
            log_first: 0,
            folded: Folded::new(),
            previous_offset: 0,
            newest: Slot::Absent,
            prev: Slot::Absent,
            shipped: 0,
            reconciled: 0,
            seen: HashSet::new(),
            in_flight: Vec::new(),
        }
    }

    fn allocation(&self, name: &str) -> Arc<Allocation> {
        match self.directory.allocation(name) {
            Ok(allocation) => allocation,
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

/// Counts of what a run did, for the report.
#[derive(Default)]
struct Tally {
    steps: u64,
    reserved: u64,
    refused: u64,
    settled: u64,
    restarts: u64,
    damaged_checkpoints: u64,
    rollovers: u64,
    steps_back: u64,
}

struct World {
    rng: Rng,
    now: UnixMs,
    limits: Limits,
    replicas: Vec<Replica>,
    /// The shared topic: (origin, event), in the order shipped, duplicates included.
    topic: Vec<(usize, Settled)>,
    tally: Tally,
    /// The last steps taken, printed when an invariant fails.
    trace: std::collections::VecDeque<String>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let allocation = 1_000_000 + rng.below(50_000_000);
        let limits = Limits {
            allocation,
            project: allocation + rng.below(2 * allocation),
            team: allocation + rng.below(4 * allocation),
        };
        let count = 1 + rng.below(3) as usize;
        // 2026-11-30T20:00:00Z, a Monday evening: days, a week and a month end soon.
        let now = UnixMs(1_796_068_800_000 + rng.below(DAY_MS as u64) as i64);
        World {
            replicas: (0..count)
                .map(|origin| Replica::new(origin, limits))
                .collect(),
            rng,
            now,
            limits,
            topic: Vec::new(),
            tally: Tally::default(),
            trace: std::collections::VecDeque::new(),
        }
    }

    fn step(&mut self) {
        let r = self.rng.below(self.replicas.len() as u64) as usize;
        let choice = self.rng.below(100);
        if self.trace.len() == TRACE_STEPS {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("now {} replica {r} choice {choice}", self.now.0));
        match choice {
            0..30 => self.reserve(r),
            30..54 => self.settle(r),
            54..60 => self.extend(r),
            60..66 => self.drop_one(r),
            66..75 => self.ship(r),
            75..84 => self.reconcile(r),
            84..90 => self.checkpoint(r),
            90..93 => self.crash_and_restart(r),
            _ => self.advance_clock(),
        }
        self.tally.steps += 1;
    }

    fn reserve(&mut self, r: usize) {
        if self.replicas[r].in_flight.len() >= IN_FLIGHT_MAX {
            return self.settle(r);
        }
        let name = ALLOCATIONS[self.rng.below(2) as usize];
        let unit = self.limits.allocation / 150;
        let least = 1 + self.rng.below(unit);
        let ask = Ask {
            least: Nanos(least),
            most: Nanos(least + self.rng.below(4 * unit)),
        };
        let allocation = self.replicas[r].allocation(name);
        match tollgate_engine::reserve_within(&allocation, self.now, ask) {
            Ok(reservation) => {
                assert!(reservation.held() >= ask.least && reservation.held() <= ask.most);
                self.replicas[r].in_flight.push((reservation, name));
                self.tally.reserved += 1;
            }
            Err(_) => self.tally.refused += 1,
        }
    }

    fn take_in_flight(&mut self, r: usize) -> Option<(Reservation, &'static str)> {
        let in_flight = &mut self.replicas[r].in_flight;
        if in_flight.is_empty() {
            return None;
        }
        let i = self.rng.below(in_flight.len() as u64) as usize;
        Some(in_flight.swap_remove(i))
    }

    fn settle(&mut self, r: usize) {
        let Some((reservation, allocation)) = self.take_in_flight(r) else {
            return;
        };
        let held = reservation.held().0;
        let cost = match self.rng.below(4) {
            0 => held,
            1 => 0,
            _ => self.rng.below(held + 1),
        };
        let at = reservation.at();
        let _settlement = reservation.settle(Nanos(cost));
        let id = u128::from(self.rng.next()) << 64 | u128::from(self.rng.next());
        let mut event = UsageEvent::sample();
        event.event_id = EventId::v7(at, &id.to_be_bytes()[6..].try_into().unwrap_or([0; 10]));
        event.allocation = Some(allocation.into());
        event.ts_ms = at;
        event.cost_nanos = Nanos(cost);
        let settled = Settled {
            id: event.event_id.0.as_u128(),
            allocation,
            at,
            cost,
            payload: event.to_json(),
        };
        self.replicas[r].history.push(settled);
        self.tally.settled += 1;
    }

    fn extend(&mut self, r: usize) {
        let unit = self.limits.allocation / 150;
        let least = 1 + self.rng.below(unit);
        let ask = Ask {
            least: Nanos(least),
            most: Nanos(least + self.rng.below(2 * unit)),
        };
        let in_flight = &mut self.replicas[r].in_flight;
        if let Some((reservation, _)) = in_flight.last_mut() {
            let before = reservation.held();
            match reservation.extend(ask) {
                Ok(()) => assert!(reservation.held() >= before.saturating_add(ask.least)),
                Err(_) => assert_eq!(reservation.held(), before, "a refused extension moved"),
            }
        }
    }

    fn drop_one(&mut self, r: usize) {
        if let Some((reservation, _)) = self.take_in_flight(r) {
            reservation.release();
        }
    }

    fn ship(&mut self, r: usize) {
        let replica = &mut self.replicas[r];
        let waiting = replica.history.len() - replica.shipped;
        let count = self.rng.below(waiting as u64 + 1) as usize;
        // After a crash a shipper may send again what it sent but did not see acknowledged.
        let again = if self.rng.chance(10) {
            self.rng.below(3) as usize
        } else {
            0
        };
        let from = replica.shipped.saturating_sub(again);
        for settled in &replica.history[from..replica.shipped + count] {
            self.topic.push((replica.origin, settled.clone()));
        }
        replica.shipped += count;
    }

    fn reconcile(&mut self, r: usize) {
        let replica = &mut self.replicas[r];
        for (origin, settled) in &self.topic[replica.reconciled..] {
            if *origin == replica.origin || !replica.seen.insert(settled.id) {
                continue;
            }
            let allocation = match replica.directory.allocation(settled.allocation) {
                Ok(allocation) => allocation,
                Err(e) => panic!("{e}"),
            };
            tollgate_engine::book(&allocation, settled.at, Nanos(settled.cost));
        }
        replica.reconciled = self.topic.len();
    }

    /// The syncer's maintenance: fold the log, save the checkpoint (the one before it kept as
    /// `.prev`), remove the segments every reader is past (both checkpoints, the shipper).
    fn checkpoint(&mut self, r: usize) {
        let now = self.now;
        let replica = &mut self.replicas[r];
        for (offset, settled) in replica.history.iter().enumerate() {
            if offset as u64 >= replica.folded.next_offset {
                assert!(replica.folded.fold(offset as u64, &settled.payload));
            }
        }
        replica.folded.compact(now, 62 * DAY_MS);
        if !matches!(replica.newest, Slot::Absent) {
            replica.prev = replica.newest.clone();
        }
        replica.newest = Slot::Good(replica.folded.clone());
        let safe = replica
            .previous_offset
            .min(replica.folded.next_offset)
            .min(replica.shipped as u64);
        replica.previous_offset = replica.folded.next_offset;
        replica.log_first = replica.log_first.max(safe);
    }

    /// What a start reads: the newest checkpoint, else the one before it (the damaged newest
    /// moved aside, so the next save cannot make it `.prev`), else none.
    fn load(replica: &mut Replica) -> Option<Folded> {
        match (&replica.newest, &replica.prev) {
            (Slot::Good(folded), _) => Some(folded.clone()),
            (newest, Slot::Good(folded)) => {
                let folded = folded.clone();
                if matches!(newest, Slot::Damaged) {
                    replica.newest = Slot::Absent;
                }
                Some(folded)
            }
            _ => None,
        }
    }

    /// Each level's (period, spent) as `now` sees it, allocation by allocation.
    fn spent(replica: &Replica, now: UnixMs) -> Vec<(i64, u64)> {
        ALLOCATIONS
            .iter()
            .flat_map(|name| {
                replica.allocation(name).budget_cells().map(|cell| {
                    let snapshot = cell.snapshot(now);
                    (snapshot.period_index, snapshot.spent.0)
                })
            })
            .collect()
    }

    fn crash_and_restart(&mut self, r: usize) {
        let now = self.now;
        let before = World::spent(&self.replicas[r], now);
        let limits = self.limits;
        let damage = self.rng.chance(25);
        let replica = &mut self.replicas[r];
        // kill -9: holds in flight vanish with the process; the log and checkpoints stay.
        replica.in_flight.clear();
        if damage && matches!(replica.newest, Slot::Good(_)) {
            replica.newest = Slot::Damaged;
            self.tally.damaged_checkpoints += 1;
        }
        let mut folded = World::load(replica).unwrap_or_default();
        assert!(
            replica.log_first <= folded.next_offset,
            "the log starts at {} but the checkpoint covers only {}: spend would be lost",
            replica.log_first,
            folded.next_offset
        );
        replica.previous_offset = folded.next_offset;
        for (offset, settled) in replica.history.iter().enumerate() {
            if offset as u64 >= folded.next_offset {
                assert!(folded.fold(offset as u64, &settled.payload));
            }
        }
        replica.directory = directory(limits);
        folded.apply(
            &replica.directory,
            now,
            &mut RecordIndex::new(62 * DAY_MS, 1_000),
        );
        replica.folded = folded;
        // A restarted replica reads the topic from its beginning before it serves.
        replica.reconciled = 0;
        replica.seen.clear();
        self.reconcile(r);
        let after = World::spent(&self.replicas[r], now);
        for (level, (b, a)) in before.iter().zip(&after).enumerate() {
            // Spend is given back when the period the level was in holds less after the
            // restart: less in that same period, or an older period restored over one that
            // had spend (the clock catching up would then start it afresh).
            let given_back = match a.0.cmp(&b.0) {
                std::cmp::Ordering::Equal => a.1 < b.1,
                std::cmp::Ordering::Less => b.1 > 0,
                std::cmp::Ordering::Greater => false,
            };
            assert!(
                !given_back,
                "level {level}: (period, spent) {b:?} before the crash, {a:?} after, now {}",
                now.0
            );
        }
        self.tally.restarts += 1;
    }

    /// Moves the wall clock: mostly forward by seconds to hours, sometimes by up to two days,
    /// and sometimes back by up to a day (a clock stepped back by an operator or NTP).
    fn advance_clock(&mut self) {
        let before = Period::Day.index(self.now);
        let ms = match self.rng.below(100) {
            0..10 => -(self.rng.below(DAY_MS as u64) as i64),
            10..25 => self.rng.below(2 * DAY_MS as u64) as i64,
            _ => 1_000 + self.rng.below(2 * 3_600_000) as i64,
        };
        self.now = UnixMs(self.now.0 + ms);
        if ms < 0 {
            self.tally.steps_back += 1;
        } else if Period::Day.index(self.now) != before {
            self.tally.rollovers += 1;
        }
    }

    /// Every invariant, for every replica.
    fn check(&self) {
        for replica in &self.replicas {
            let mut others = HashSet::new();
            let known: Vec<&Settled> = replica
                .history
                .iter()
                .chain(self.topic.iter().filter_map(|(origin, s)| {
                    let booked = *origin != replica.origin && replica.seen.contains(&s.id);
                    (booked && others.insert(s.id)).then_some(s)
                }))
                .collect();
            for name in ALLOCATIONS {
                let allocation = replica.allocation(name);
                for (level, cell) in Level::ALL.into_iter().zip(allocation.budget_cells()) {
                    let period = cell.period();
                    let snapshot = cell.snapshot(self.now);
                    // The cell's period: now's, or a later one it has seen (the clock stepped
                    // back since); the table never returns to an older one.
                    let current = snapshot.period_index;
                    assert!(current >= period.index(self.now));
                    let counts = |s: &Settled| {
                        period.index(s.at) == current
                            && (level != Level::Allocation || s.allocation == name)
                    };
                    let events: u64 = known.iter().filter(|s| counts(s)).map(|s| s.cost).sum();
                    assert_eq!(
                        snapshot.spent.0, events,
                        "replica {}: {name}'s {level:?} level spent {} where its events sum to {events}",
                        replica.origin, snapshot.spent.0
                    );
                    let own: u64 = replica
                        .history
                        .iter()
                        .filter(|s| counts(s))
                        .map(|s| s.cost)
                        .sum();
                    let limit = cell.limit().map_or(u64::MAX, |l| l.0);
                    assert!(
                        own <= limit,
                        "replica {}: {name}'s {level:?} level settled {own}, past its limit {limit}",
                        replica.origin
                    );
                }
            }
        }
    }
}

/// Runs one seed to its end, checking after every step; on a failure the last steps are
/// printed.
fn run(seed: u64) -> Tally {
    let mut world = World::new(seed);
    for _ in 0..STEPS {
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            world.step();
            world.check();
        }));
        if let Err(failure) = stepped {
            eprintln!(
                "the last steps (choice 0..30 reserve, ..54 settle, ..60 extend, ..66 drop, \
                 ..75 ship, ..84 reconcile, ..90 checkpoint, ..93 restart, else the clock):"
            );
            for line in &world.trace {
                eprintln!("  {line}");
            }
            std::panic::resume_unwind(failure);
        }
    }
    world.tally
}

#[test]
fn the_budget_table_keeps_its_invariants_through_random_crashes_restarts_and_reconciles() {
    if let Some(seed) = std::env::var("TOLLGATE_SIMULATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
        return;
    }
    let seconds = std::env::var("TOLLGATE_SIMULATION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut total = Tally::default();
    let mut seeds = 0u64;
    while Instant::now() < deadline {
        let seed = first.wrapping_add(seeds.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let outcome = std::panic::catch_unwind(|| run(seed));
        let Ok(tally) = outcome else {
            panic!("simulation seed {seed} failed; rerun it with TOLLGATE_SIMULATION_SEED={seed}");
        };
        seeds += 1;
        total.steps += tally.steps;
        total.reserved += tally.reserved;
        total.refused += tally.refused;
        total.settled += tally.settled;
        total.restarts += tally.restarts;
        total.damaged_checkpoints += tally.damaged_checkpoints;
        total.rollovers += tally.rollovers;
        total.steps_back += tally.steps_back;
    }
    assert!(seeds > 0 && total.restarts > 0 && total.refused > 0 && total.rollovers > 0);
    println!(
        "simulation: {seeds} seeds, {} steps, {} reserved, {} refused, {} settled, {} restarts \
         ({} from the checkpoint before), {} day rollovers, {} clock steps back, in {seconds} s",
        total.steps,
        total.reserved,
        total.refused,
        total.settled,
        total.restarts,
        total.damaged_checkpoints,
        total.rollovers,
        total.steps_back
    );
}
