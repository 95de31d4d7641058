//! A coordinator (`leases.coordinate = true`): a member of the consumer group on the lease
//! log, answering the asks of the partitions (the team trees) Kafka gives it.
//!
//! Each partition it is given is read from its beginning and folded
//! (`tollgate_engine::lease::LeaseBook`) before any ask of it is answered; asks read on the
//! way that no grant or denial answered, and that are recent, are answered once the fold is
//! whole. A grant is as much of the ask as every limited level's room allows, by the fold and
//! this coordinator's own grants not yet read back, in the periods of the coordinator's clock.
//!
//! **Invariant:** a coordinator that has lost a partition and does not know it yet (a long
//! pause, a network cut) cannot grant the same money twice: its grants follow the tree's last
//! grant as it saw it, so once the new owner has granted they fold as void for every reader.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tollgate_engine::UnixMs;
use tollgate_engine::lease::{AskFor, Decision, LeaseBook, LeaseRecord, Limit, Terms};
use tollgate_sink::leases::{LeaseMember, LeaseWriter, MemberEvent, Ownership};

use crate::clock::{millis, now_ms};
use crate::config::LeasesConfig;
use crate::control::leases::{LeaseStartError, decode, encode};
use crate::limits::RATE_SLICE_FORGET_AFTER;
use crate::metrics::Counter;
use crate::operator::report;
use crate::state::Gateway;

/// Longest one poll of the group waits.
const POLL: Duration = Duration::from_millis(10);

/// How long the fold keeps ended leases and periods before it forgets them.
const FORGET_AFTER_MS: i64 = 24 * 3_600_000;

/// One partition owned: its fold, and how far it has been read.
#[derive(Debug, Default)]
struct Owned {
    book: LeaseBook,
    /// The offset one past the last record when it was given: the fold is whole past it.
    end: i64,
    /// The offset of the next record to read.
    next: i64,
    /// Asks read before the fold was whole, in order, with when they were written.
    pending: Vec<(LeaseRecord, Option<i64>)>,
    /// Asks answered, seen before the fold was whole.
    answered: HashSet<(String, u64)>,
}

impl Owned {
    fn whole(&self) -> bool {
        self.next >= self.end
    }
}

struct Coordinator {
    gateway: Arc<Gateway>,
    /// Unique to this process's life: grant tokens are made from it.
    id: String,
    config: LeasesConfig,
    member: LeaseMember,
    writer: LeaseWriter,
    runtime: tokio::runtime::Runtime,
    owned: HashMap<i32, Owned>,
    failing: bool,
    forgot_at: Instant,
}

/// The running coordinator.
pub struct CoordinatorTask {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for CoordinatorTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorTask").finish_non_exhaustive()
    }
}

impl CoordinatorTask {
    /// Joins the coordinators' group as replica `replica`, on a thread of its own.
    pub fn start(
        gateway: Arc<Gateway>,
        config: LeasesConfig,
        replica: &str,
    ) -> Result<CoordinatorTask, LeaseStartError> {
        let member = LeaseMember::join(&config.log, &config.group, config.session_timeout)?;
        let writer = LeaseWriter::new(&config.log)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let id = format!("{replica}.{}.{}", std::process::id(), now_ms().0);
        let mut coordinator = Coordinator {
            gateway,
            id,
            config,
            member,
            writer,
            runtime,
            owned: HashMap::new(),
            failing: false,
            forgot_at: Instant::now(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-coordinator".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    coordinator.step();
                }
            })?;
        Ok(CoordinatorTask { stop, thread })
    }

    /// Stops answering; the group gives the partitions to the others.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl Coordinator {
    fn step(&mut self) {
        match self.member.poll(POLL) {
            Ok(Some(MemberEvent::Ownership(Ownership::Assigned(partitions)))) => {
                self.failing = false;
                for partition in partitions {
                    self.take(partition);
                }
            }
            Ok(Some(MemberEvent::Ownership(Ownership::Revoked(partitions)))) => {
                for partition in partitions {
                    self.owned.remove(&partition);
                }
            }
            Ok(Some(MemberEvent::Record(record))) => {
                self.failing = false;
                self.read(
                    record.partition,
                    record.offset,
                    record.timestamp_ms,
                    &record.payload,
                );
            }
            Ok(None) => {}
            Err(e) => {
                if !self.failing {
                    report(&format!("{e}; no lease is granted here until it answers"));
                }
                self.failing = true;
            }
        }
        if self.forgot_at.elapsed() >= Duration::from_secs(60) {
            self.forgot_at = Instant::now();
            let now = now_ms();
            let before = UnixMs(now.0.saturating_sub(FORGET_AFTER_MS));
            let minutes_before = UnixMs(now.0.saturating_sub(millis(RATE_SLICE_FORGET_AFTER)));
            for owned in self.owned.values_mut() {
                owned.book.forget_before(before);
                owned.book.forget_rates_before(minutes_before);
            }
        }
    }

    /// A partition given: folded afresh from its beginning.
    fn take(&mut self, partition: i32) {
        let (start, end) = match self.member.watermarks(partition) {
            Ok(marks) => marks,
            Err(e) => {
                // Not known where the fold is whole: answer nothing there (an ask is asked
                // again); the next rebalance tries again.
                report(&format!(
                    "{e}; partition {partition} is not coordinated here"
                ));
                self.owned.remove(&partition);
                return;
            }
        };
        self.owned.insert(
            partition,
            Owned {
                end,
                next: start,
                ..Owned::default()
            },
        );
    }

    fn read(&mut self, partition: i32, offset: i64, written_ms: Option<i64>, payload: &[u8]) {
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        // A record polled before the partition was given again, or after a gap: the fold
        // must be of every record in order, so it starts over.
        if offset != owned.next {
            if offset > owned.next {
                report(&format!(
                    "lease partition {partition}: record {offset} read where {} was due; it is \
                     read again from its beginning",
                    owned.next
                ));
                self.owned.remove(&partition);
                if self.member.reread(partition).is_ok() {
                    self.take(partition);
                }
            }
            return;
        }
        owned.next = offset + 1;
        let record = match decode(payload) {
            Ok(record) => record,
            Err(e) => {
                self.gateway.metrics.add(Counter::LeaseRefused, 1);
                report(&format!("lease topic: {e}; the record is skipped"));
                return;
            }
        };
        owned.book.apply(&record);
        let was_whole = owned.end <= offset;
        match &record {
            LeaseRecord::Ask { .. } if was_whole => self.answer(partition, &record),
            LeaseRecord::Ask { .. } => owned.pending.push((record, written_ms)),
            LeaseRecord::Grant { replica, ask, .. } | LeaseRecord::Deny { replica, ask, .. }
                if !was_whole =>
            {
                owned.answered.insert((replica.clone(), *ask));
            }
            _ => {}
        }
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        if !was_whole && owned.whole() {
            let pending = std::mem::take(&mut owned.pending);
            let answered = std::mem::take(&mut owned.answered);
            let recent = now_ms()
                .0
                .saturating_sub(i64::try_from(self.config.ask_timeout.as_millis()).unwrap_or(0));
            for (ask, written_ms) in pending {
                let LeaseRecord::Ask {
                    replica, ask: n, ..
                } = &ask
                else {
                    continue;
                };
                if answered.contains(&(replica.clone(), *n))
                    || written_ms.is_some_and(|t| t < recent)
                {
                    continue;
                }
                self.answer(partition, &ask);
            }
        }
    }

    fn answer(&mut self, partition: i32, ask: &LeaseRecord) {
        let LeaseRecord::Ask {
            replica,
            ask: n,
            team,
            on,
            allocation,
            want_nanos,
            least_nanos,
        } = ask
        else {
            return;
        };
        let Some(terms) = self.terms(team, *on, allocation) else {
            // Not known here (yet), or in another team's tree: deny with no room; the replica
            // asks again.
            let deny = LeaseRecord::Deny {
                replica: replica.clone(),
                ask: *n,
                team: team.clone(),
                on: *on,
                allocation: allocation.clone(),
                level: *on,
                name: allocation.clone(),
                room_nanos: 0,
            };
            self.write(partition, &deny, Counter::LeaseDenialsWritten);
            return;
        };
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        let asked = AskFor {
            replica,
            ask: *n,
            on: *on,
            allocation,
            want_nanos: *want_nanos,
            least_nanos: *least_nanos,
        };
        match owned.book.propose(&asked, &terms, &self.id) {
            Decision::Grant(grant) => self.write(partition, &grant, Counter::LeaseGrantsWritten),
            Decision::Deny(deny) => self.write(partition, &deny, Counter::LeaseDenialsWritten),
        }
    }

    /// What a lease `on` `name` (an allocation, a key's id or a team's name) may be granted
    /// within now, if it is known here and in `team`'s tree.
    fn terms(&self, team: &str, on: Limit, name: &str) -> Option<Terms> {
        let now = now_ms();
        if on.is_rate() {
            let (owner, per_minute) = self.gateway.allowance(on, name)?;
            return (*owner == *team).then(|| Terms::rate(team, on, name, per_minute, now));
        }
        let a = self.gateway.directory.allocation(name).ok()?;
        if *a.team().name != *team {
            return None;
        }
        Some(Terms::of(&a, now).unwrap_or_else(|| Terms {
            team: team.to_owned(),
            limits: Vec::new(),
            epoch: i64::MAX,
        }))
    }

    fn write(&mut self, partition: i32, record: &LeaseRecord, counter: Counter) {
        let payload = encode(record);
        match self
            .runtime
            .block_on(self.writer.write(record.team(), &payload))
        {
            Ok(_) => self.gateway.metrics.add(counter, 1),
            Err(e) => {
                report(&format!("{e}; a lease answer was not written"));
                // Whether it landed is unknown: proposals stop counting it, and if it landed
                // after another grant it folds as void.
                if let Some(owned) = self.owned.get_mut(&partition) {
                    owned.book.forget_ahead();
                }
            }
        }
    }
}
