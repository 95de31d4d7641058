//! A replica's side of budget leases (`[leases]`): it reads the lease log, credits the grants
//! made to it to its allocations' leases, asks for more ahead of need, and gives back what its
//! calls do not use. The request path only ever touches the lease in memory
//! (`tollgate_engine::lease::LeaseCell`); everything here runs on a thread of its own.
//!
//! A lease is asked for when a call found it short, or when what it has left is under half
//! of what the replica's recent spend and its largest call need (`leases.horizon_ms`, and
//! [`LEASE_ASKS_AHEAD`] of the largest hold asked). It goes back when no call has held from it
//! for `leases.idle_ms`, when its epoch ends, when another replica was denied for want of room
//! at a level it is charged to (so the last nanos of a budget go where they are needed), and
//! when the replica stops.
//!
//! **Invariant:** a grant is credited only once and only to the process life that asked for
//! it: ask numbers start at the life's start instant, and a grant answering an earlier life's
//! ask is left uncredited (that life's leases count as spent until their periods end, never
//! as available twice). Nanos taken out of a lease to return are returned exactly once: the
//! returns wait in order in a queue, the first is written again until a write of it is
//! acknowledged (a write that timed out may have landed), and each carries an id the fold
//! counts once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tollgate_engine::lease::{
    Folded, LeaseBook, LeaseCell, LeaseRecord, LeaseSnapshot, Limit, Terms,
};
use tollgate_engine::{Allocation, Level, Period, UnixMs};
use tollgate_sink::leases::{LeaseLogError, LeaseReader, LeaseWriter};

use crate::clock::{millis, now_ms};
use crate::config::LeasesConfig;
use crate::limits::{LEASE_ASKS_AHEAD, LEASE_TICK, RATE_SLICE_FORGET_AFTER};
use crate::metrics::Counter;
use crate::operator::report;
use crate::state::{Gateway, SharedRate};

/// The newest version of lease records this build reads and writes. A record is written at
/// the lowest version that holds it: 1 for a budget's lease, 2 for a rate limit's (which a
/// build that reads only 1 refuses, loudly, rather than misreads).
pub const LEASE_VERSION: u32 = 2;

fn version_of(record: &LeaseRecord) -> u32 {
    let on = match record {
        LeaseRecord::Ask { on, .. }
        | LeaseRecord::Grant { on, .. }
        | LeaseRecord::Deny { on, .. }
        | LeaseRecord::Return { on, .. } => *on,
    };
    if on.is_rate() { 2 } else { 1 }
}

/// Longest one poll of the lease log waits for a record.
const POLL: Duration = Duration::from_millis(10);

/// Records read in one go before the task looks at its leases again.
const READ_BATCH_MAX: usize = 1_000;

/// After a denial, the replica waits this long before it asks again for the allocation.
const DENIED_BACKOFF: Duration = Duration::from_millis(50);

/// How often the fold forgets the rate limits' minutes that are over.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Envelope<'a> {
    version: u32,
    record: &'a LeaseRecord,
}

#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

#[derive(Deserialize)]
struct Owned {
    record: LeaseRecord,
}

/// Why a record read from the lease log was not folded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Written by a newer build.
    #[error("lease record version {found} is newer than this build reads ({LEASE_VERSION})")]
    Version {
        /// The record's version.
        found: u32,
    },
    /// Not a lease record.
    #[error("not a lease record: {0}")]
    Malformed(String),
}

/// A record as written to the log.
#[must_use]
pub fn encode(record: &LeaseRecord) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        version: version_of(record),
        record,
    })
    .unwrap_or_default()
}

/// The record in a payload read from the log.
pub fn decode(payload: &[u8]) -> Result<LeaseRecord, Refusal> {
    let versioned: Versioned =
        serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if versioned.version > LEASE_VERSION || versioned.version == 0 {
        return Err(Refusal::Version {
            found: versioned.version,
        });
    }
    let owned: Owned =
        serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    Ok(owned.record)
}

/// Every leased allocation's lease now, for `/metrics` and the admin API.
#[must_use]
pub fn snapshots(gateway: &Gateway) -> Vec<(Arc<str>, LeaseSnapshot)> {
    gateway
        .directory
        .allocations()
        .into_iter()
        .filter_map(|a| {
            let snapshot = a.budget.lease()?.snapshot();
            (snapshot.granted_total > 0).then(|| (Arc::clone(&a.name), snapshot))
        })
        .collect()
}

/// A lease gauge: its name, its help, and how it is read from a lease.
type Series = (&'static str, &'static str, fn(&LeaseSnapshot) -> i128);

/// The leases in Prometheus text, one series per allocation that has held one.
pub fn render(out: &mut String, gateway: &Gateway) {
    use std::fmt::Write as _;
    let leases = snapshots(gateway);
    if leases.is_empty() {
        return;
    }
    let series: [Series; 5] = [
        (
            "tollgate_lease_available_nanos",
            "Nanos of this replica's lease on the allocation not held by a call.",
            |s| i128::from(s.available),
        ),
        (
            "tollgate_lease_granted_nanos",
            "Nanos granted to this replica on the allocation since it started.",
            |s| i128::from(s.granted_total),
        ),
        (
            "tollgate_lease_returned_nanos",
            "Nanos this replica gave back on the allocation since it started.",
            |s| i128::from(s.returned_total),
        ),
        (
            "tollgate_lease_expired_nanos",
            "Of those, nanos given back because their lease epoch had ended.",
            |s| i128::from(s.expired_total),
        ),
        (
            "tollgate_lease_fail_open_nanos",
            "Nanos this replica credited itself on the allocation, cut off from every coordinator.",
            |s| i128::from(s.opened_total),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (allocation, snapshot) in &leases {
            let _ = writeln!(
                out,
                "{name}{{allocation=\"{}\"}} {}",
                crate::metrics::escape_label(allocation),
                value(snapshot)
            );
        }
    }
}

/// What the task knows of one allocation's lease between looks.
#[derive(Debug, Default)]
struct Watch {
    /// The ask in flight, what it wanted, and when it was written.
    asked: Option<(u64, u64, Instant)>,
    denied_at: Option<Instant>,
    /// Since when this replica's asks have gone unanswered (none answered since one was
    /// first tried): past `ask_timeout`, it is cut off from every coordinator.
    unanswered_since: Option<Instant>,
    /// The lease epoch this replica last failed open in (`leases.fail_open`): once per epoch.
    opened: Option<i64>,
    /// When (wall clock, ms) the ask in flight was written: a rate's denial counts only in
    /// the minute it was asked in.
    asked_at_ms: Option<i64>,
    /// Nanos consumed (granted less returned less available) when the window began, and when.
    window: Option<(i128, Instant)>,
    /// Nanos consumed over the last whole window.
    recent: u64,
}

impl Watch {
    /// Brings what was consumed over the last whole `horizon` up to date, from `consumed` now.
    fn track(&mut self, consumed: i128, horizon: Duration) {
        match self.window {
            Some((from, since)) if since.elapsed() >= horizon => {
                self.recent = u64::try_from((consumed - from).max(0)).unwrap_or(u64::MAX);
                self.window = Some((consumed, Instant::now()));
            }
            None => self.window = Some((consumed, Instant::now())),
            Some(_) => {}
        }
    }

    /// Whether an ask is in flight (for less than `ask_timeout`) or a denial is too recent to
    /// ask again.
    fn waiting(&self, ask_timeout: Duration) -> bool {
        self.asked
            .is_some_and(|(_, _, at)| at.elapsed() < ask_timeout)
            || self
                .denied_at
                .is_some_and(|at| at.elapsed() < DENIED_BACKOFF)
    }
}

/// The replica's lease task.
struct Holder {
    gateway: Arc<Gateway>,
    replica: String,
    config: LeasesConfig,
    reader: LeaseReader,
    writer: LeaseWriter,
    runtime: tokio::runtime::Runtime,
    book: LeaseBook,
    /// This life's first ask number: grants for earlier ones are an earlier life's.
    life_base: u64,
    next_ask: u64,
    /// By what the lease is on and its allocation (key or team).
    watches: HashMap<(Limit, Arc<str>), Watch>,
    /// Returns not yet acknowledged, oldest first.
    returns: VecDeque<(LeaseRecord, u64)>,
    /// The id of the next return: it starts at the life's start, like the asks'.
    next_return: u64,
    failing: bool,
    /// When the fold last forgot the rate limits' minutes that are over.
    forgot_at: Instant,
}

/// The running lease task.
pub struct LeaseTask {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for LeaseTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTask").finish_non_exhaustive()
    }
}

/// Why the lease task could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseStartError {
    /// The lease log could not be read or written.
    #[error(transparent)]
    Log(#[from] LeaseLogError),
    /// The log was not read to its end in time.
    #[error("the lease topic was not read to its end within {0:?}")]
    Timeout(Duration),
    /// The thread or its runtime could not be made.
    #[error("the lease task: {0}")]
    Io(#[from] std::io::Error),
}

impl LeaseTask {
    /// Reads the lease log to its end (within `catch_up_max`), then follows it on a thread of
    /// its own.
    pub fn start(
        gateway: Arc<Gateway>,
        config: LeasesConfig,
        replica: &str,
        catch_up_max: Duration,
    ) -> Result<LeaseTask, LeaseStartError> {
        let reader = LeaseReader::new(&config.log, replica)?;
        let writer = LeaseWriter::new(&config.log)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let life_base = u64::try_from(now_ms().0).unwrap_or(0).saturating_mul(1_000);
        let mut holder = Holder {
            gateway,
            replica: replica.to_owned(),
            config,
            reader,
            writer,
            runtime,
            book: LeaseBook::new(),
            life_base,
            next_ask: life_base,
            watches: HashMap::new(),
            returns: VecDeque::new(),
            next_return: life_base,
            failing: false,
            forgot_at: Instant::now(),
        };
        holder.catch_up(catch_up_max)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-leases".into())
            .spawn(move || {
                let mut looked = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    holder.read();
                    if looked.elapsed() >= LEASE_TICK {
                        looked = Instant::now();
                        holder.look(now_ms());
                        holder.look_rates(now_ms());
                        holder.flush_returns();
                    }
                }
                holder.give_all_back();
                holder.flush_returns();
            })?;
        Ok(LeaseTask { stop, thread })
    }

    /// Stops: every unused lease goes back first.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl Holder {
    /// Reads the log to its end. The brokers' errors are retried until `max` has passed (a
    /// topic just made may have no leader for a moment); then the last one refuses the start.
    fn catch_up(&mut self, max: Duration) -> Result<(), LeaseStartError> {
        let deadline = Instant::now() + max;
        loop {
            let read = self.read_to_end();
            match read {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() >= deadline => {
                    return Err(LeaseStartError::Timeout(max));
                }
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Ok(false) => {}
                Err(_) => std::thread::sleep(POLL * 10),
            }
        }
    }

    /// Folds what there is to read; whether that was everything the log held when asked.
    fn read_to_end(&mut self) -> Result<bool, LeaseLogError> {
        while let Some(record) = self.reader.poll(POLL)? {
            self.fold(&record.payload);
        }
        self.reader.caught_up()
    }

    fn read(&mut self) {
        for _ in 0..READ_BATCH_MAX {
            match self.reader.poll(POLL) {
                Ok(Some(record)) => {
                    self.failing = false;
                    self.fold(&record.payload);
                }
                Ok(None) => return,
                Err(e) => {
                    if !self.failing {
                        report(&format!("{e}; leases are not renewed until it answers"));
                    }
                    self.failing = true;
                    return;
                }
            }
        }
    }

    fn lease_of(&self, allocation: &str) -> Option<Arc<Allocation>> {
        self.gateway
            .directory
            .allocation(allocation)
            .ok()
            .filter(|a| a.budget.lease().is_some())
    }

    fn fold(&mut self, payload: &[u8]) {
        let metrics = &self.gateway.metrics;
        let record = match decode(payload) {
            Ok(record) => record,
            Err(e) => {
                metrics.add(Counter::LeaseRefused, 1);
                report(&format!("lease topic: {e}; the record is skipped"));
                return;
            }
        };
        let folded = self.book.apply(&record);
        if matches!(folded, Folded::Granted { .. } | Folded::Returned { .. }) {
            self.count_cluster(&record);
        }
        match (&record, folded) {
            (
                LeaseRecord::Grant { ask, .. },
                Folded::Granted {
                    replica,
                    on,
                    allocation,
                    epoch,
                    nanos,
                },
            ) if replica == self.replica && *ask >= self.life_base && on.is_rate() => {
                if let Some(rates) = self.gateway.rates_of(on, &allocation)
                    && let Some(shared) = rates.shared(on)
                {
                    let watch = self.watches.entry((on, allocation.into())).or_default();
                    watch.unanswered_since = None;
                    if watch.asked.is_some_and(|(asked, _, _)| asked == *ask) {
                        watch.asked = None;
                    }
                    shared.slice.grant(epoch, nanos);
                    metrics.add(Counter::RateSliceGranted, nanos);
                }
            }
            (
                LeaseRecord::Grant { ask, .. },
                Folded::Granted {
                    replica,
                    allocation,
                    epoch,
                    nanos,
                    ..
                },
            ) if replica == self.replica && *ask >= self.life_base => {
                if let Some(a) = self.lease_of(&allocation) {
                    let watch = self
                        .watches
                        .entry((Limit::Allocation, Arc::clone(&a.name)))
                        .or_default();
                    watch.unanswered_since = None;
                    if let Some((_, want, _)) = watch.asked.filter(|(asked, _, _)| asked == ask) {
                        watch.asked = None;
                        if let Some(lease) = a.budget.lease() {
                            lease.set_scarce(nanos < want);
                        }
                    }
                    if let Some(lease) = a.budget.lease() {
                        lease.grant(epoch, nanos);
                    }
                    metrics.add(Counter::LeaseGrantedNanos, nanos);
                }
            }
            (_, Folded::Void { .. }) => metrics.add(Counter::LeaseVoid, 1),
            (
                _,
                Folded::Returned {
                    replica,
                    on,
                    allocation,
                    nanos,
                },
            ) if replica == self.replica && on.is_rate() => {
                if let Some(rates) = self.gateway.rates_of(on, &allocation)
                    && let Some(shared) = rates.shared(on)
                {
                    shared.slice.returned(nanos);
                }
            }
            (
                _,
                Folded::Returned {
                    replica,
                    allocation,
                    nanos,
                    ..
                },
            ) if replica == self.replica => {
                if let Some(lease) = self
                    .lease_of(&allocation)
                    .as_ref()
                    .and_then(|a| a.budget.lease())
                {
                    lease.returned(nanos);
                }
            }
            (
                LeaseRecord::Deny {
                    replica,
                    ask,
                    on,
                    allocation,
                    level,
                    name,
                    ..
                },
                _,
            ) => {
                if *replica == self.replica {
                    if *ask >= self.life_base && on.is_rate() {
                        metrics.add(Counter::LeaseDenied, 1);
                        let watch = self
                            .watches
                            .entry((*on, Arc::from(allocation.as_str())))
                            .or_default();
                        let minute = Period::Minute.index(now_ms());
                        // Denied in the minute it was asked in: that minute is given out. A
                        // denial read after its minute ended says nothing of this one.
                        let current = watch
                            .asked_at_ms
                            .is_some_and(|at| Period::Minute.index(UnixMs(at)) == minute);
                        watch.asked = None;
                        watch.asked_at_ms = None;
                        watch.unanswered_since = None;
                        if current {
                            watch.denied_at = Some(Instant::now());
                            if let Some(rates) = self.gateway.rates_of(*on, allocation)
                                && let Some(shared) = rates.shared(*on)
                            {
                                let end = Period::Minute.end(minute).map_or(i64::MAX, |e| e.0);
                                shared.slice.deny(end);
                            }
                        }
                    } else if *ask >= self.life_base {
                        metrics.add(Counter::LeaseDenied, 1);
                        if let Some(lease) = self
                            .lease_of(allocation)
                            .as_ref()
                            .and_then(|a| a.budget.lease())
                        {
                            lease.set_scarce(true);
                        }
                        let watch = self
                            .watches
                            .entry((Limit::Allocation, Arc::from(allocation.as_str())))
                            .or_default();
                        watch.asked = None;
                        watch.unanswered_since = None;
                        watch.denied_at = Some(Instant::now());
                    }
                } else {
                    self.recall(*level, name);
                }
            }
            _ => {}
        }
    }

    /// What the cluster holds of the record's allocation at its own level, by the fold, kept
    /// on its lease for the admin API and `tollgate spend`.
    fn count_cluster(&self, record: &LeaseRecord) {
        let (LeaseRecord::Grant {
            allocation,
            on: Limit::Allocation,
            ..
        }
        | LeaseRecord::Return {
            allocation,
            on: Limit::Allocation,
            ..
        }) = record
        else {
            return;
        };
        let Some(a) = self.lease_of(allocation) else {
            return;
        };
        let Some(terms) = Terms::of(&a, now_ms()) else {
            return;
        };
        if let (Some((charge, _)), Some(lease)) = (
            terms
                .limits
                .iter()
                .find(|(c, _)| c.level == Limit::Allocation),
            a.budget.lease(),
        ) {
            lease.set_cluster_nanos(self.book.net(&terms.team, charge));
        }
    }

    /// Another replica was denied at `level` `name`: what this one holds unused there goes
    /// back, so the budget's (or the minute's) last nanos go where calls wait for them.
    fn recall(&mut self, level: Limit, name: &str) {
        let now = now_ms();
        let level = match level {
            Limit::Allocation => Level::Allocation,
            Limit::Project => Level::Project,
            Limit::Team => Level::Team,
            Limit::KeyRequests | Limit::KeyTokens | Limit::TeamRequests | Limit::TeamTokens => {
                if let Some(rates) = self.gateway.rates_of(level, name)
                    && let Some(shared) = rates.shared(level)
                    && let Some((epoch, units)) = shared.slice.take_unused(now.0, 0)
                {
                    self.give_back(&shared.team, level, name, epoch, units);
                }
                return;
            }
        };
        for a in self.gateway.directory.allocations() {
            if a.level_name(level).as_ref() != name {
                continue;
            }
            if let Some((epoch, nanos)) = a.budget.lease().and_then(|l| l.take_unused(now, 0)) {
                self.give_back_lease(&a, epoch, nanos);
            }
        }
    }

    /// Looks at every lease: returns what is over or idle, asks ahead of need.
    fn look(&mut self, now: UnixMs) {
        for a in self.gateway.directory.allocations() {
            let Some(lease) = a.budget.lease() else {
                continue;
            };
            for (epoch, nanos) in lease.take_ended() {
                self.gateway.metrics.add(Counter::LeaseExpiredNanos, nanos);
                lease.expired(nanos);
                self.give_back_lease(&a, epoch, nanos);
            }
            let idle = lease
                .used_at()
                .is_none_or(|at| now.0.saturating_sub(at.0) > millis(self.config.idle));
            let limited = a.budget_cells().iter().any(|c| c.limit().is_some());
            if idle || !limited {
                if let Some((epoch, nanos)) = lease.take_unused(now, 0) {
                    self.give_back_lease(&a, epoch, nanos);
                }
                lease.take_short();
                continue;
            }
            if let Some((epoch, nanos)) = lease.take_unused(now, u64::MAX) {
                // The epoch is over: all of it goes back, for the periods it was charged to.
                self.gateway.metrics.add(Counter::LeaseExpiredNanos, nanos);
                lease.expired(nanos);
                self.give_back_lease(&a, epoch, nanos);
            }
            self.ask_if_short(&a, lease, now);
        }
    }

    fn ask_if_short(&mut self, a: &Arc<Allocation>, lease: &LeaseCell, now: UnixMs) {
        let snapshot = lease.snapshot();
        let consumed = i128::from(snapshot.granted_total) + i128::from(snapshot.opened_total)
            - i128::from(snapshot.returned_total)
            - i128::from(snapshot.available);
        let (horizon, ask_timeout) = (self.config.horizon, self.config.ask_timeout);
        let watch = self
            .watches
            .entry((Limit::Allocation, Arc::clone(&a.name)))
            .or_default();
        watch.track(consumed, horizon);
        let short = lease.take_short();
        let target = watch
            .recent
            .max(lease.ask_largest().saturating_mul(LEASE_ASKS_AHEAD));
        let available = u64::try_from(snapshot.available.max(0)).unwrap_or(0);
        let expired = now.0 >= snapshot.epoch;
        let wanting = short.is_some_and(|s| s > available);
        let low = expired || available < target / 2 || wanting;
        if !low {
            // Not in need: an ask lost earlier says nothing of the coordinators now.
            watch.unanswered_since = None;
        }
        let fail_open = self.config.fail_open.0;
        if wanting
            && fail_open > 0
            && watch
                .unanswered_since
                .is_some_and(|since| since.elapsed() >= ask_timeout)
            && let Some(terms) = Terms::of(a, now)
            && watch.opened != Some(terms.epoch)
        {
            // Cut off from every coordinator, with calls waiting: the stated margin, once.
            watch.opened = Some(terms.epoch);
            lease.open(terms.epoch, fail_open);
            self.gateway
                .metrics
                .add(Counter::LeaseFailOpenNanos, fail_open);
            report(&format!(
                "no coordinator has answered for {:?}: allocation `{}` fails open by {} nanos \
                 until its lease epoch ends (leases.fail_open)",
                ask_timeout, a.name, fail_open
            ));
        }
        if !low || watch.waiting(ask_timeout) {
            return;
        }
        let least = short.unwrap_or(0).saturating_sub(available).max(1);
        let want = target.saturating_sub(available).max(least);
        self.ask(&a.team().name, Limit::Allocation, &a.name, want, least);
    }

    /// Looks at this replica's slices of the rate limits it shares: returns what is idle, asks
    /// when a call found a slice short, when a slice in use is low, and when a busy slice's
    /// minute ends (so the next minute's grant is there as calls come).
    fn look_rates(&mut self, now: UnixMs) {
        if self.forgot_at.elapsed() >= FORGET_INTERVAL {
            self.forgot_at = Instant::now();
            let before = UnixMs(now.0.saturating_sub(millis(RATE_SLICE_FORGET_AFTER)));
            self.book.forget_rates_before(before);
            self.watches
                .retain(|(on, _), w| !on.is_rate() || w.asked.is_some() || w.recent > 0);
        }
        for rates in self.gateway.shared_rates() {
            for shared in [&rates.shared_requests, &rates.shared_tokens]
                .into_iter()
                .flatten()
            {
                self.look_rate(shared, now);
            }
        }
    }

    fn look_rate(&mut self, shared: &SharedRate, now: UnixMs) {
        let slice = &shared.slice;
        let idle = slice
            .used_at()
            .is_none_or(|at| now.0.saturating_sub(at.0) > millis(self.config.idle));
        if idle {
            if let Some((epoch, units)) = slice.take_unused(now.0, 0) {
                self.give_back(&shared.team, shared.on, &shared.name, epoch, units);
            }
            slice.take_short();
            return;
        }
        let snapshot = slice.snapshot();
        // Units a minute left unused were dropped, not consumed.
        let consumed = i128::from(snapshot.granted_total)
            - i128::from(snapshot.returned_total)
            - i128::from(snapshot.expired_total)
            - i128::from(snapshot.available);
        let (horizon, ask_timeout) = (self.config.horizon, self.config.ask_timeout);
        let watch = self
            .watches
            .entry((shared.on, Arc::clone(&shared.name)))
            .or_default();
        watch.track(consumed, horizon);
        let short = slice.take_short();
        let expired = now.0 >= snapshot.epoch;
        // Tokens spent past a grant are owed to the next one: an ask covers them first.
        let debt = slice
            .owed()
            .saturating_add(snapshot.available.min(0).unsigned_abs());
        let available = if expired {
            0
        } else {
            u64::try_from(snapshot.available.max(0)).unwrap_or(0)
        };
        let target = watch.recent.max(1);
        let low = short.is_some() || (watch.recent > 0 && (expired || available < target / 2));
        if !low || watch.waiting(ask_timeout) {
            return;
        }
        // The debt is asked for, never required: a minute's allowance may be less than it, and
        // each grant pays part of it off.
        let least = short.unwrap_or(1).saturating_sub(available).max(1);
        let want = target
            .saturating_sub(available)
            .saturating_add(debt)
            .max(least);
        self.ask(&shared.team, shared.on, &shared.name, want, least);
    }

    /// Asks for `want` (at least `least`) of the lease `on` `name` in `team`'s tree.
    fn ask(&mut self, team: &str, on: Limit, name: &str, want: u64, least: u64) {
        self.next_ask = self.next_ask.wrapping_add(1);
        let ask = self.next_ask;
        self.watches
            .entry((on, Arc::from(name)))
            .or_default()
            .unanswered_since
            .get_or_insert_with(Instant::now);
        let record = LeaseRecord::Ask {
            replica: self.replica.clone(),
            ask,
            team: team.to_owned(),
            on,
            allocation: name.to_owned(),
            want_nanos: want,
            least_nanos: least,
        };
        if self.write(&record) {
            self.gateway.metrics.add(Counter::LeaseAsks, 1);
            if let Some(watch) = self.watches.get_mut(&(on, Arc::from(name))) {
                watch.asked = Some((ask, want, Instant::now()));
                watch.asked_at_ms = Some(now_ms().0);
            }
        }
    }

    /// Queues a return of `nanos` of `a`'s lease for `epoch`.
    fn give_back_lease(&mut self, a: &Allocation, epoch: i64, nanos: u64) {
        self.give_back(&a.team().name, Limit::Allocation, &a.name, epoch, nanos);
    }

    /// Queues a return of `units` of the lease `on` `name` (an allocation, a key's id or a
    /// team's name) in `team`'s tree for `epoch`, behind the returns not yet acknowledged.
    fn give_back(&mut self, team: &str, on: Limit, name: &str, epoch: i64, units: u64) {
        self.next_return = self.next_return.wrapping_add(1);
        let record = LeaseRecord::Return {
            replica: self.replica.clone(),
            id: self.next_return,
            team: team.to_owned(),
            on,
            allocation: name.to_owned(),
            epoch,
            nanos: units,
        };
        self.returns.push_back((record, units));
    }

    /// Writes the queued returns in order, each until a write of it is acknowledged; stops at
    /// the first that fails (tried again at the next look).
    fn flush_returns(&mut self) {
        while let Some((record, nanos)) = self.returns.front().cloned() {
            if !self.write(&record) {
                return;
            }
            self.returns.pop_front();
            let rate = matches!(&record, LeaseRecord::Return { on, .. } if on.is_rate());
            let counter = if rate {
                Counter::RateSliceReturned
            } else {
                Counter::LeaseReturnedNanos
            };
            self.gateway.metrics.add(counter, nanos);
        }
    }

    fn give_all_back(&mut self) {
        let now = now_ms();
        for a in self.gateway.directory.allocations() {
            let Some(lease) = a.budget.lease() else {
                continue;
            };
            let mut back = lease.take_ended();
            back.extend(lease.take_unused(now, 0));
            for (epoch, nanos) in back {
                self.give_back_lease(&a, epoch, nanos);
            }
        }
        for rates in self.gateway.shared_rates() {
            for shared in [&rates.shared_requests, &rates.shared_tokens]
                .into_iter()
                .flatten()
            {
                if let Some((epoch, units)) = shared.slice.take_unused(now.0, 0) {
                    self.give_back(&shared.team, shared.on, &shared.name, epoch, units);
                }
            }
        }
    }

    fn write(&mut self, record: &LeaseRecord) -> bool {
        let payload = encode(record);
        match self
            .runtime
            .block_on(self.writer.write(record.team(), &payload))
        {
            Ok(_) => true,
            Err(e) => {
                report(&format!("{e}; a lease record was not written"));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_newer_version_is_refused_not_misread() {
        let record = LeaseRecord::Return {
            replica: "gw-a".into(),
            id: 3,
            team: "ml".into(),
            on: Limit::Allocation,
            allocation: "ml-train".into(),
            epoch: 1_769_904_000_000,
            nanos: 42,
        };
        let written = encode(&record);
        assert!(written.starts_with(br#"{"version":1,"#));
        assert_eq!(decode(&written), Ok(record));
        let rate = LeaseRecord::Ask {
            replica: "gw-a".into(),
            ask: 4,
            team: "ml".into(),
            on: Limit::KeyRequests,
            allocation: "key_00000000000000ff".into(),
            want_nanos: 30,
            least_nanos: 1,
        };
        let written = encode(&rate);
        assert!(written.starts_with(br#"{"version":2,"#));
        assert_eq!(decode(&written), Ok(rate));
        let newer = br#"{"version":3,"record":{"kind":"quota"}}"#;
        assert_eq!(decode(newer), Err(Refusal::Version { found: 3 }));
        assert!(matches!(
            decode(br#"{"version":1,"record":{"kind":"grant"}}"#),
            Err(Refusal::Malformed(_))
        ));
    }
}
