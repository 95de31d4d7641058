//! Budget leases: how replicas that share a budget spend it to the last nano and never past
//! it, with no network call on the request path.
//!
//! Each team's budget tree (the team, its projects, their allocations) is owned by one
//! coordinator at a time. A replica holds a **lease** on an allocation: nanos the coordinator
//! has charged, ahead of the spend, against every limited level the allocation reaches. A call
//! holds from its replica's [`LeaseCell`] as it holds from the budget cells, in one
//! compare-and-swap; the lease is topped up ahead of need and what is not used goes back.
//!
//! Grants and returns are records on a log ([`LeaseRecord`]) that every coordinator and
//! replica folds the same way ([`LeaseBook`]). Each grant has a token no other grant has, and
//! names the token of the tree's grant it follows (`follows`); the fold counts it only when
//! that is the tree's last counted grant. So when two coordinators grant at once (one of them
//! not yet aware it has lost the tree) the log's order decides, the same for every reader: a
//! counted grant was decided knowing every grant counted before it, and the same money is
//! never granted twice.
//!
//! **Invariant:** the nanos of the grants the fold counts, less what it has counted back, never
//! exceed a level's limit in a period, whatever the number of coordinators writing and however
//! stale their view ([`LeaseBook::propose`] grants only within the room its fold and its own
//! grants not yet read back leave). A replica holds only within its lease, so when every call
//! costs at most its hold the cluster's spend stays within the limit.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::budget::Level;
use crate::identity::Allocation;
pub use crate::lease_cell::{LeaseCell, LeaseSnapshot};
pub use crate::rate_slice::{RateSlice, Short};
use crate::time::{Period, UnixMs};

/// What a lease is on and charged to: a level of a budget tree, in nanos, or a per-minute rate
/// limit of a key or a team, in requests or tokens. The budget levels are written as
/// [`Level`]'s names, so a budget lease's records read as they did before rates were leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// An allocation's budget.
    #[default]
    Allocation,
    /// A project's budget.
    Project,
    /// A team's budget.
    Team,
    /// A key's requests per minute.
    KeyRequests,
    /// A key's tokens per minute.
    KeyTokens,
    /// A team's requests per minute.
    TeamRequests,
    /// A team's tokens per minute.
    TeamTokens,
}

impl From<Level> for Limit {
    fn from(level: Level) -> Limit {
        match level {
            Level::Allocation => Limit::Allocation,
            Level::Project => Limit::Project,
            Level::Team => Limit::Team,
        }
    }
}

impl Limit {
    /// An allocation's budget: what a record is about unless it says otherwise.
    #[must_use]
    pub fn is_allocation(&self) -> bool {
        *self == Limit::Allocation
    }

    /// A per-minute rate limit, leased by the minute ([`Terms::rate`]).
    #[must_use]
    pub fn is_rate(self) -> bool {
        matches!(
            self,
            Limit::KeyRequests | Limit::KeyTokens | Limit::TeamRequests | Limit::TeamTokens
        )
    }

    /// The name used in error bodies and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Allocation => "allocation",
            Limit::Project => "project",
            Limit::Team => "team",
            Limit::KeyRequests => "key_requests",
            Limit::KeyTokens => "key_tokens",
            Limit::TeamRequests => "team_requests",
            Limit::TeamTokens => "team_tokens",
        }
    }
}

/// One limit a lease is charged to: the limit, its name and the period it is charged in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Charge {
    /// A budget level, or a rate limit (charged by the [`Period::Minute`]).
    pub level: Limit,
    /// The allocation's, project's or team's name; the key's id or the team's name for a rate.
    pub name: String,
    /// Its period's kind.
    pub period: Period,
    /// The period's number ([`Period::index`]).
    pub index: i64,
}

/// A record of the lease log. Every record is about one team's tree (`team`), and the log
/// keeps the records of one tree in one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaseRecord {
    /// A replica asks for more of an allocation's budget.
    Ask {
        /// The replica asking.
        replica: String,
        /// Its number for the ask, increasing: an answer names it.
        ask: u64,
        /// The team whose tree the allocation is in.
        team: String,
        /// What the lease is on: an allocation's budget unless it names a rate limit.
        #[serde(default, skip_serializing_if = "Limit::is_allocation")]
        on: Limit,
        /// The allocation; for a rate, the key's id or the team's name.
        allocation: String,
        /// How much it would like.
        want_nanos: u64,
        /// The least it can use: a grant of less is a denial.
        least_nanos: u64,
    },
    /// A coordinator grants nanos of an allocation's budget to a replica.
    Grant {
        /// The replica granted to.
        replica: String,
        /// The ask it answers.
        ask: u64,
        /// The team's tree.
        team: String,
        /// What the lease is on: an allocation's budget unless it names a rate limit.
        #[serde(default, skip_serializing_if = "Limit::is_allocation")]
        on: Limit,
        /// The allocation; for a rate, the key's id or the team's name.
        allocation: String,
        /// This grant's token: its coordinator's id and a number it never uses again.
        grant: String,
        /// The token of the tree's grant this one follows (empty for the first): counted only
        /// if that is the tree's last counted grant.
        follows: String,
        /// When the lease ends (ms): the earliest end of the charged levels' periods.
        epoch: i64,
        /// The nanos granted.
        nanos: u64,
        /// The limited levels charged, with their periods.
        charges: Vec<Charge>,
        /// The coordinator that granted it.
        coordinator: String,
    },
    /// A coordinator had too little room for an ask's least.
    Deny {
        /// The replica denied.
        replica: String,
        /// The ask it answers.
        ask: u64,
        /// The team's tree.
        team: String,
        /// What the lease is on: an allocation's budget unless it names a rate limit.
        #[serde(default, skip_serializing_if = "Limit::is_allocation")]
        on: Limit,
        /// The allocation; for a rate, the key's id or the team's name.
        allocation: String,
        /// The level (or rate) with too little room.
        level: Limit,
        /// That level's name.
        name: String,
        /// The room it had, not counting leases held and unused.
        room_nanos: u64,
    },
    /// A replica gives back unused nanos of a lease. A return may be written more than once
    /// (a write that timed out may have landed, so it is written again until one is
    /// acknowledged); its `id` makes the fold count it once.
    Return {
        /// The replica returning.
        replica: String,
        /// Its number for the return, increasing across the replica's returns and lives: the
        /// fold counts a return of a tree only when its id is above the replica's last there.
        id: u64,
        /// The team's tree.
        team: String,
        /// What the lease is on: an allocation's budget unless it names a rate limit.
        #[serde(default, skip_serializing_if = "Limit::is_allocation")]
        on: Limit,
        /// The allocation; for a rate, the key's id or the team's name.
        allocation: String,
        /// The lease's epoch.
        epoch: i64,
        /// The nanos returned.
        nanos: u64,
    },
}

impl LeaseRecord {
    /// The team whose tree the record is about: the log's key.
    #[must_use]
    pub fn team(&self) -> &str {
        match self {
            LeaseRecord::Ask { team, .. }
            | LeaseRecord::Grant { team, .. }
            | LeaseRecord::Deny { team, .. }
            | LeaseRecord::Return { team, .. } => team,
        }
    }
}

/// What the fold made of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Folded {
    /// A grant counted: the replica holds `nanos` more for `epoch`.
    Granted {
        /// The replica granted to.
        replica: String,
        /// What the lease is on.
        on: Limit,
        /// The allocation, key or team.
        allocation: String,
        /// The lease's epoch.
        epoch: i64,
        /// The nanos.
        nanos: u64,
    },
    /// A grant that follows a grant that is not the tree's last: it grants nothing.
    Void {
        /// The coordinator that wrote it.
        coordinator: String,
    },
    /// A return counted, of at most what the replica held for the epoch.
    Returned {
        /// The replica.
        replica: String,
        /// What the lease is on.
        on: Limit,
        /// The allocation, key or team.
        allocation: String,
        /// The nanos counted back.
        nanos: u64,
    },
    /// An ask or a denial: nothing changes hands.
    Nothing,
}

/// A lease a replica holds for an epoch, as the fold counts it.
#[derive(Clone, Debug, Default)]
struct Held {
    charges: Vec<Charge>,
    granted: u64,
    returned: u64,
}

/// One team's tree, folded.
#[derive(Debug, Default)]
struct Tree {
    /// The token of the last grant counted.
    last: String,
    /// Nanos granted less returned, by charged level and period.
    net: HashMap<Charge, u64>,
    /// By replica, what the lease is on, allocation (key or team) and epoch.
    held: HashMap<(String, Limit, String, i64), Held>,
    /// A coordinator's own grants written and not yet read back, in the order written.
    ahead: VecDeque<Ahead>,
    /// The id of each replica's last return counted here.
    returned: HashMap<String, u64>,
}

#[derive(Debug)]
struct Ahead {
    grant: String,
    nanos: u64,
    charges: Vec<Charge>,
}

/// What the budget tree allows a lease on one allocation: its limited levels, with their
/// periods and limits at an instant, and the epoch those periods give a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The team's tree.
    pub team: String,
    /// Each limited level, charged in its period, and its limit.
    pub limits: Vec<(Charge, u64)>,
    /// The earliest end of those periods (ms); `i64::MAX` when none ends.
    pub epoch: i64,
}

impl Terms {
    /// The terms of a lease on `allocation` at `now`; `None` when no level has a limit (its
    /// calls need no lease).
    #[must_use]
    pub fn of(allocation: &Allocation, now: UnixMs) -> Option<Terms> {
        let mut limits = Vec::new();
        let mut epoch = i64::MAX;
        for (level, cell) in Level::ALL.into_iter().zip(allocation.budget_cells()) {
            let Some(limit) = cell.limit() else { continue };
            let period = cell.period();
            let index = period.index(now);
            if let Some(end) = period.end(index) {
                epoch = epoch.min(end.0);
            }
            let charge = Charge {
                level: level.into(),
                name: allocation.level_name(level).to_string(),
                period,
                index,
            };
            limits.push((charge, limit.0));
        }
        (!limits.is_empty()).then(|| Terms {
            team: allocation.team().name.to_string(),
            limits,
            epoch,
        })
    }

    /// The terms of a lease on the per-minute rate limit `on` of `name` (a key's id or a
    /// team's name, in `team`'s tree) at `now`: `per_minute` units in the minute holding `now`.
    #[must_use]
    pub fn rate(team: &str, on: Limit, name: &str, per_minute: u64, now: UnixMs) -> Terms {
        let index = Period::Minute.index(now);
        let charge = Charge {
            level: on,
            name: name.to_owned(),
            period: Period::Minute,
            index,
        };
        Terms {
            team: team.to_owned(),
            limits: vec![(charge, per_minute)],
            epoch: Period::Minute.end(index).map_or(i64::MAX, |end| end.0),
        }
    }
}

/// A coordinator's answer to an ask, to be written to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Grant this record (a [`LeaseRecord::Grant`]).
    Grant(LeaseRecord),
    /// Deny with this record (a [`LeaseRecord::Deny`]).
    Deny(LeaseRecord),
}

/// The fold of a lease log: every tree's last counted grant, what is granted and returned by
/// level and period, and what each replica holds. Coordinators and replicas fold the same log
/// the same way; only a coordinator proposes.
#[derive(Debug, Default)]
pub struct LeaseBook {
    trees: HashMap<String, Tree>,
    /// The number of this coordinator's next grant token.
    next_grant: u64,
}

/// An ask to decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AskFor<'a> {
    /// The replica asking.
    pub replica: &'a str,
    /// Its number for the ask.
    pub ask: u64,
    /// What the lease is on.
    pub on: Limit,
    /// The allocation, key or team.
    pub allocation: &'a str,
    /// How much it would like.
    pub want_nanos: u64,
    /// The least it can use.
    pub least_nanos: u64,
}

impl LeaseBook {
    /// An empty fold.
    #[must_use]
    pub fn new() -> LeaseBook {
        LeaseBook::default()
    }

    /// Folds in the next record of the log.
    pub fn apply(&mut self, record: &LeaseRecord) -> Folded {
        match record {
            LeaseRecord::Grant {
                replica,
                team,
                on,
                allocation,
                grant,
                follows,
                epoch,
                nanos,
                charges,
                coordinator,
                ..
            } => {
                let tree = self.trees.entry(team.clone()).or_default();
                let ours = tree.ahead.front().is_some_and(|a| a.grant == *grant);
                if *follows != tree.last {
                    if ours {
                        // Ours, voided: every grant of ours after it follows it, void too.
                        tree.ahead.clear();
                    }
                    return Folded::Void {
                        coordinator: coordinator.clone(),
                    };
                }
                tree.last.clone_from(grant);
                if ours {
                    tree.ahead.pop_front();
                } else {
                    // Another coordinator's grant took the place ours were to follow.
                    tree.ahead.clear();
                }
                for charge in charges {
                    let net = tree.net.entry(charge.clone()).or_default();
                    *net = net.saturating_add(*nanos);
                }
                let held = tree
                    .held
                    .entry((replica.clone(), *on, allocation.clone(), *epoch))
                    .or_default();
                for charge in charges {
                    if !held.charges.contains(charge) {
                        held.charges.push(charge.clone());
                    }
                }
                held.granted = held.granted.saturating_add(*nanos);
                Folded::Granted {
                    replica: replica.clone(),
                    on: *on,
                    allocation: allocation.clone(),
                    epoch: *epoch,
                    nanos: *nanos,
                }
            }
            LeaseRecord::Return {
                replica,
                id,
                team,
                on,
                allocation,
                epoch,
                nanos,
            } => {
                let tree = self.trees.entry(team.clone()).or_default();
                let last = tree.returned.entry(replica.clone()).or_insert(0);
                if *id <= *last {
                    // Written again after a write that was not acknowledged had landed.
                    return Folded::Nothing;
                }
                *last = *id;
                let Some(held) =
                    tree.held
                        .get_mut(&(replica.clone(), *on, allocation.clone(), *epoch))
                else {
                    return Folded::Nothing;
                };
                let nanos = (*nanos).min(held.granted.saturating_sub(held.returned));
                held.returned = held.returned.saturating_add(nanos);
                for charge in &held.charges {
                    if let Some(net) = tree.net.get_mut(charge) {
                        *net = net.saturating_sub(nanos);
                    }
                }
                Folded::Returned {
                    replica: replica.clone(),
                    on: *on,
                    allocation: allocation.clone(),
                    nanos,
                }
            }
            LeaseRecord::Ask { .. } | LeaseRecord::Deny { .. } => Folded::Nothing,
        }
    }

    /// Nanos granted less returned at `charge`, with this coordinator's own grants not yet
    /// read back.
    fn used(tree: &Tree, charge: &Charge) -> u64 {
        let folded = tree.net.get(charge).copied().unwrap_or(0);
        tree.ahead
            .iter()
            .filter(|a| a.charges.contains(charge))
            .fold(folded, |sum, a| sum.saturating_add(a.nanos))
    }

    /// A coordinator's answer to `ask` under `terms`: a grant of as much of what it wants as
    /// every limited level has room for, or a denial naming the level without room for its
    /// least. A grant is remembered as written ahead of the fold, so the next proposal counts
    /// it and follows it, until the grant is read back (or another coordinator's grant takes
    /// its place and voids it). `coordinator` must be unique to this process's life: grant
    /// tokens are made from it.
    pub fn propose(&mut self, ask: &AskFor<'_>, terms: &Terms, coordinator: &str) -> Decision {
        let tree = self.trees.entry(terms.team.clone()).or_default();
        let mut room = u64::MAX;
        let mut tightest: Option<&Charge> = None;
        for (charge, limit) in &terms.limits {
            let left = limit.saturating_sub(Self::used(tree, charge));
            if left < room || tightest.is_none() {
                room = left;
                tightest = Some(charge);
            }
        }
        let nanos = ask.want_nanos.min(room);
        if nanos < ask.least_nanos.max(1) {
            let (level, name) = tightest.map_or((ask.on, ask.allocation.to_owned()), |c| {
                (c.level, c.name.clone())
            });
            return Decision::Deny(LeaseRecord::Deny {
                replica: ask.replica.to_owned(),
                ask: ask.ask,
                team: terms.team.clone(),
                on: ask.on,
                allocation: ask.allocation.to_owned(),
                level,
                name,
                room_nanos: room,
            });
        }
        let follows = tree
            .ahead
            .back()
            .map_or_else(|| tree.last.clone(), |a| a.grant.clone());
        self.next_grant = self.next_grant.wrapping_add(1);
        let grant = format!("{coordinator}/{}", self.next_grant);
        let charges: Vec<Charge> = terms.limits.iter().map(|(c, _)| c.clone()).collect();
        tree.ahead.push_back(Ahead {
            grant: grant.clone(),
            nanos,
            charges: charges.clone(),
        });
        Decision::Grant(LeaseRecord::Grant {
            replica: ask.replica.to_owned(),
            ask: ask.ask,
            team: terms.team.clone(),
            on: ask.on,
            allocation: ask.allocation.to_owned(),
            grant,
            follows,
            epoch: terms.epoch,
            nanos,
            charges,
            coordinator: coordinator.to_owned(),
        })
    }

    /// Forgets this coordinator's grants written and not read back (their writes failed, or
    /// it is giving the tree up): they will fold as void if they land after another's.
    pub fn forget_ahead(&mut self) {
        for tree in self.trees.values_mut() {
            tree.ahead.clear();
        }
    }

    /// What `replica` holds `on` `allocation` (key or team) for `epoch` as the fold counts it:
    /// granted less returned.
    #[must_use]
    pub fn held(&self, team: &str, replica: &str, on: Limit, allocation: &str, epoch: i64) -> u64 {
        self.trees
            .get(team)
            .and_then(|t| {
                t.held
                    .get(&(replica.to_owned(), on, allocation.to_owned(), epoch))
            })
            .map_or(0, |h| h.granted.saturating_sub(h.returned))
    }

    /// Nanos granted less returned at `charge`, as folded.
    #[must_use]
    pub fn net(&self, team: &str, charge: &Charge) -> u64 {
        self.trees
            .get(team)
            .and_then(|t| t.net.get(charge))
            .copied()
            .unwrap_or(0)
    }

    /// Drops what the fold keeps for leases whose epoch ended before `before` and periods that
    /// ended before it: nothing can be granted or spent in them any more.
    pub fn forget_before(&mut self, before: UnixMs) {
        self.forget(before, |_| true);
    }

    /// [`forget_before`](LeaseBook::forget_before) for rate limits' leases alone: their
    /// minutes end far sooner than budgets' periods.
    pub fn forget_rates_before(&mut self, before: UnixMs) {
        self.forget(before, Limit::is_rate);
    }

    fn forget(&mut self, before: UnixMs, which: fn(Limit) -> bool) {
        for tree in self.trees.values_mut() {
            tree.held
                .retain(|(_, on, _, epoch), _| !which(*on) || *epoch >= before.0);
            tree.net.retain(|charge, _| {
                !which(charge.level)
                    || charge
                        .period
                        .end(charge.index)
                        .is_none_or(|end| end >= before)
            });
        }
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;

    fn charge(level: Level, name: &str) -> Charge {
        Charge {
            level: level.into(),
            name: name.to_owned(),
            period: Period::Total,
            index: 0,
        }
    }

    fn terms(allocation: u64, team: u64) -> Terms {
        Terms {
            team: "t".to_owned(),
            limits: vec![
                (charge(Level::Allocation, "a"), allocation),
                (charge(Level::Team, "t"), team),
            ],
            epoch: i64::MAX,
        }
    }

    fn ask<'a>(replica: &'a str, ask: u64, want: u64, least: u64) -> AskFor<'a> {
        AskFor {
            replica,
            ask,
            on: Limit::Allocation,
            allocation: "a",
            want_nanos: want,
            least_nanos: least,
        }
    }

    fn granted(decision: Decision) -> LeaseRecord {
        match decision {
            Decision::Grant(record) => record,
            Decision::Deny(record) => panic!("denied: {record:?}"),
        }
    }

    #[test]
    fn a_coordinator_grants_within_the_tightest_level_and_counts_its_own_grants_ahead() {
        let mut book = LeaseBook::new();
        let first = granted(book.propose(&ask("r1", 1, 600, 10), &terms(1_000, 800), "c"));
        // Not read back yet: the next proposal counts it all the same.
        let second = granted(book.propose(&ask("r2", 1, 600, 10), &terms(1_000, 800), "c"));
        let Decision::Deny(LeaseRecord::Deny {
            level, room_nanos, ..
        }) = book.propose(&ask("r3", 1, 600, 10), &terms(1_000, 800), "c")
        else {
            panic!("the team's 800 are granted");
        };
        assert_eq!((level, room_nanos), (Limit::Team, 0));
        assert!(matches!(
            book.apply(&first),
            Folded::Granted { nanos: 600, .. }
        ));
        assert!(matches!(
            book.apply(&second),
            Folded::Granted { nanos: 200, .. }
        ));
        assert_eq!(book.net("t", &charge(Level::Team, "t")), 800);
        // A return makes room again, and never counts back more than was held.
        let back = LeaseRecord::Return {
            replica: "r1".into(),
            id: 1,
            team: "t".into(),
            on: Limit::Allocation,
            allocation: "a".into(),
            epoch: i64::MAX,
            nanos: 5_000,
        };
        assert!(matches!(
            book.apply(&back),
            Folded::Returned { nanos: 600, .. }
        ));
        // The same return written again (a write not acknowledged that had landed) counts once.
        assert_eq!(book.apply(&back), Folded::Nothing);
        assert_eq!(book.held("t", "r1", Limit::Allocation, "a", i64::MAX), 0);
        let third = granted(book.propose(&ask("r3", 2, 600, 10), &terms(1_000, 800), "c"));
        assert!(matches!(
            book.apply(&third),
            Folded::Granted { nanos: 600, .. }
        ));
    }

    #[test]
    fn of_two_coordinators_granting_at_once_the_log_order_decides_and_money_is_granted_once() {
        let mut old = LeaseBook::new();
        let mut new = LeaseBook::new();
        let from_old = granted(old.propose(&ask("r1", 1, 900, 10), &terms(1_000, 1_000), "old"));
        let from_new = granted(new.propose(&ask("r2", 1, 900, 10), &terms(1_000, 1_000), "new"));
        // The new owner's grant lands first; the old one's takes a number already taken.
        let mut reader = LeaseBook::new();
        assert!(matches!(reader.apply(&from_new), Folded::Granted { .. }));
        assert_eq!(
            reader.apply(&from_old),
            Folded::Void {
                coordinator: "old".into()
            }
        );
        assert_eq!(reader.net("t", &charge(Level::Allocation, "a")), 900);
        // The old coordinator, folding the same log, forgets its grant and sees the room gone.
        old.apply(&from_new);
        old.apply(&from_old);
        let Decision::Deny(_) = old.propose(&ask("r1", 2, 900, 200), &terms(1_000, 1_000), "old")
        else {
            panic!("only 100 is left");
        };
    }

    #[test]
    fn a_lease_holds_within_what_was_granted_and_an_ended_epoch_is_kept_to_return() {
        let lease = LeaseCell::new();
        assert_eq!(lease.try_reserve(10, 5, 50), Err(0));
        assert_eq!(lease.try_reserve(10, 9, 50), Err(0));
        assert_eq!(lease.take_short(), Some(5));
        assert_eq!(lease.take_short(), None);
        lease.grant(1_000, 100);
        let hold = lease.try_reserve(10, 5, 80).unwrap();
        assert_eq!(hold.nanos, 80);
        assert_eq!(lease.try_reserve(10, 30, 30), Err(20));
        lease.settle(hold, 30);
        assert_eq!(lease.snapshot().available, 70);
        let hold = lease.try_reserve(20, 10, 60).unwrap();
        // A grant for the next epoch replaces this one; what it had and the hold's unused part
        // are kept to return for the old epoch.
        lease.grant(2_000, 500);
        lease.settle(hold, 15);
        assert_eq!(lease.take_ended(), vec![(1_000, 10 + 45)]);
        assert_eq!(lease.snapshot().available, 500);
        assert_eq!(lease.take_unused(UnixMs(1_500), 200), Some((2_000, 300)));
        assert_eq!(lease.take_unused(UnixMs(2_000), 0), Some((2_000, 200)));
        // A call past the epoch's end finds no lease.
        assert_eq!(lease.try_reserve(2_000, 1, 1), Err(0));
    }

    #[test]
    fn what_a_replica_credits_itself_failing_open_is_spent_first_never_returned() {
        let lease = LeaseCell::new();
        lease.grant(1_000, 100);
        lease.open(1_000, 50);
        let snapshot = lease.snapshot();
        assert_eq!((snapshot.available, snapshot.granted_total), (150, 100));
        assert_eq!(snapshot.opened_total, 50);
        let hold = lease.try_reserve(10, 30, 30).unwrap();
        lease.settle(hold, 30);
        // 120 left: the 50 credited go first and nowhere, the other 70 go back.
        assert_eq!(lease.take_unused(UnixMs(20), 0), Some((1_000, 70)));
        lease.open(1_000, 40);
        lease.grant(2_000, 10);
        // The next epoch's grant replaced a lease of only credited nanos: nothing to return.
        assert_eq!(lease.take_ended(), vec![]);
        // A credit for an epoch already replaced is not taken.
        lease.open(1_000, 40);
        assert_eq!(lease.snapshot().available, 10);
    }

    proptest::proptest! {
        /// Three replicas share one per-minute limit through a coordinator's book: whatever
        /// their asks, takes and returns, and however the clock steps across minutes (grants
        /// read late, for a minute already over, included), no minute admits more than the
        /// limit.
        #[test]
        fn replicas_never_take_more_than_a_minutes_allowance(
            limit in 1u64..40,
            steps in proptest::collection::vec((0usize..3, 0u8..5, 1u64..20, 0i64..15_000), 1..300),
        ) {
            use std::collections::HashMap;
            let slices = [RateSlice::new(), RateSlice::new(), RateSlice::new()];
            let names = ["r0", "r1", "r2"];
            let mut book = LeaseBook::new();
            let mut late: Vec<(usize, i64, u64)> = Vec::new();
            let (mut now, mut asks, mut returns) = (0i64, 0u64, 0u64);
            let mut admitted: HashMap<i64, u64> = HashMap::new();
            for (who, action, amount, step) in steps {
                now += step;
                match action {
                    0 | 1 => {
                        if slices[who].take(now, 1).is_ok() {
                            *admitted.entry(now.div_euclid(60_000)).or_default() += 1;
                        }
                    }
                    2 | 3 => {
                        asks += 1;
                        let terms = Terms::rate("t", Limit::KeyRequests, "key_1", limit, UnixMs(now));
                        let ask = AskFor {
                            replica: names[who],
                            ask: asks,
                            on: Limit::KeyRequests,
                            allocation: "key_1",
                            want_nanos: amount,
                            least_nanos: 1,
                        };
                        if let Decision::Grant(record) = book.propose(&ask, &terms, "c") {
                            book.apply(&record);
                            if let LeaseRecord::Grant { epoch, nanos, .. } = record {
                                // Half the grants reach their replica at the next step.
                                if action == 2 {
                                    slices[who].grant(epoch, nanos);
                                } else {
                                    late.push((who, epoch, nanos));
                                }
                            }
                        }
                    }
                    _ => {
                        if let Some((epoch, units)) = slices[who].take_unused(now, 0) {
                            returns += 1;
                            book.apply(&LeaseRecord::Return {
                                replica: names[who].into(),
                                id: returns,
                                team: "t".into(),
                                on: Limit::KeyRequests,
                                allocation: "key_1".into(),
                                epoch,
                                nanos: units,
                            });
                        }
                    }
                }
                if action != 3 {
                    for (who, epoch, nanos) in late.drain(..) {
                        slices[who].grant(epoch, nanos);
                    }
                }
            }
            for (minute, n) in admitted {
                proptest::prop_assert!(n <= limit, "{} admitted in minute {} under {}", n, minute, limit);
            }
        }
    }

    proptest::proptest! {
        /// Two coordinators propose from views of the log that lag it by any amount, their
        /// grants and the replicas' returns land in any order; whatever the log's order, the
        /// grants the fold counts never take a level past its limit.
        #[test]
        fn stale_coordinators_never_grant_past_a_limit(
            limit_a in 0u64..5_000,
            limit_t in 0u64..5_000,
            steps in proptest::collection::vec((0usize..2, 0usize..4, 1u64..2_000, 0u64..300, proptest::bool::ANY), 1..120),
        ) {
            let terms = terms(limit_a, limit_t);
            let mut log: Vec<LeaseRecord> = Vec::new();
            let mut books = [LeaseBook::new(), LeaseBook::new()];
            let mut read = [0usize, 0usize];
            let mut truth = LeaseBook::new();
            let mut truth_read = 0;
            let mut asks = 0;
            for (who, lag, want, least, give_back) in steps {
                // This coordinator catches up to within `lag` records of the log's end.
                let target = log.len().saturating_sub(lag).max(read[who]);
                for record in &log[read[who]..target] {
                    books[who].apply(record);
                }
                read[who] = target;
                asks += 1;
                let replica = if asks % 2 == 0 { "r1" } else { "r2" };
                if let Decision::Grant(record) =
                    books[who].propose(&ask(replica, asks, want, least), &terms, &who.to_string())
                {
                    log.push(record);
                }
                if give_back {
                    let held = {
                        for record in &log[truth_read..] {
                            truth.apply(record);
                        }
                        truth_read = log.len();
                        truth.held("t", replica, Limit::Allocation, "a", i64::MAX)
                    };
                    log.push(LeaseRecord::Return {
                        replica: replica.into(),
                        id: asks,
                        team: "t".into(),
                        on: Limit::Allocation,
                        allocation: "a".into(),
                        epoch: i64::MAX,
                        nanos: held / 2,
                    });
                }
                let mut fold = LeaseBook::new();
                for record in &log {
                    fold.apply(record);
                }
                proptest::prop_assert!(fold.net("t", &charge(Level::Allocation, "a")) <= limit_a);
                proptest::prop_assert!(fold.net("t", &charge(Level::Team, "t")) <= limit_t);
            }
        }
    }
}
