//! The request path's state: budget table, keys, rate card, providers, rate limits, emitter,
//! metrics, ids.
//!
//! Built once from the config at start (by `runtime`); every request holds an `Arc` of it.
//! Nothing here takes a lock on the request path: keys and budgets are the engine's lock-free
//! tables, rate limits are atomics, the rate card is swapped whole. It imports nothing of the
//! control plane, the ledger or restore: they hold it, never the reverse.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use std::num::NonZeroU32;
use tokio::sync::Semaphore;

use tollgate_engine::lease::{Limit, RateSlice};
use tollgate_engine::{
    AllocationSpec, Directory, EventId, Gcra, KeyId, KeyStore, ModelRef, RateCard, UnixMs,
    VirtualKey,
};

use crate::admission::Waiting;
use crate::clock::now_ms;
use crate::config::{Config, RateConfig, allow_list};
use crate::events::emit::Emitter;
use crate::expected::Expected;
use crate::guards::Guards;
use crate::limits::UNAUTHENTICATED_REPORT_INTERVAL_MS;
use crate::metrics::Metrics;
use crate::operator::Sampled;
use crate::prefix::Prefixes;
use crate::providers::Provider;
use crate::routing::Router;

/// Requests- and tokens-per-minute limits of one key or team.
#[derive(Debug)]
pub struct Rates {
    /// Requests per minute, taken at admission (this replica's own, without `[leases]`).
    pub requests: Option<Gcra>,
    /// Tokens per minute, charged after each call (this replica's own, without `[leases]`).
    pub tokens: Option<Gcra>,
    /// With `[leases]`, this replica's slice of the requests the replicas share.
    pub shared_requests: Option<SharedRate>,
    /// With `[leases]`, this replica's slice of the tokens the replicas share.
    pub shared_tokens: Option<SharedRate>,
}

/// This replica's slice of a per-minute limit that every replica shares (`[leases]`): what the
/// lease task asks for, and the slice calls are admitted within.
#[derive(Debug)]
pub struct SharedRate {
    /// Which limit: a key's or a team's, requests or tokens.
    pub on: Limit,
    /// The key's id or the team's name.
    pub name: Arc<str>,
    /// The team whose lease tree holds it.
    pub team: Arc<str>,
    /// The slice.
    pub slice: RateSlice,
}

/// Whose limits a [`Rates`] holds, for the slices it shares with the other replicas.
#[derive(Clone, Copy)]
struct Owner<'a> {
    /// The key's requests and tokens limits, or the team's.
    on: (Limit, Limit),
    name: &'a str,
    team: &'a str,
}

impl Rates {
    fn new(config: RateConfig, shared: Option<Owner<'_>>) -> Option<Rates> {
        if config == RateConfig::default() {
            return None;
        }
        let share = |limit: Option<NonZeroU32>, on: fn(&Owner<'_>) -> Limit| {
            let owner = shared?;
            limit.map(|_| SharedRate {
                on: on(&owner),
                name: Arc::from(owner.name),
                team: Arc::from(owner.team),
                slice: RateSlice::new(),
            })
        };
        // Shared, a limit is the cluster's by the minute, and no replica keeps one of its own:
        // a local limiter would also count the calls the shared one refused.
        let local = |limit: Option<NonZeroU32>| limit.filter(|_| shared.is_none());
        Some(Rates {
            requests: local(config.requests_per_minute).map(Gcra::per_minute),
            tokens: local(config.tokens_per_minute).map(Gcra::per_minute),
            shared_requests: share(config.requests_per_minute, |o| o.on.0),
            shared_tokens: share(config.tokens_per_minute, |o| o.on.1),
        })
    }

    /// The shared slice of `on`, if it is one of these.
    #[must_use]
    pub fn shared(&self, on: Limit) -> Option<&SharedRate> {
        [&self.shared_requests, &self.shared_tokens]
            .into_iter()
            .flatten()
            .find(|s| s.on == on)
    }
}

/// What a model call needs, and nothing more: the request path's handle. Every request, and
/// every streamed body through its ticket, holds an `Arc` of it. The control plane (the admin
/// API and its journal, the resource ledger, replication) holds this handle beside its own
/// state; nothing here reaches back into it.
pub struct Gateway {
    /// The config it was built from (limits and timeouts are read from it per request).
    pub config: Config,
    /// Teams, projects, allocations and their budget cells: the lock-free table every call
    /// reserves in. The admin API adds to it; replication books other replicas' spend in it.
    pub directory: Directory,
    /// Virtual keys, by hash.
    pub keys: KeyStore,
    /// The rate card in force, swapped whole on reload.
    pub card: ArcSwap<RateCard>,
    /// The configured providers' adapters, by provider name (the `provider` of `provider/model`).
    pub providers: HashMap<String, Arc<Provider>>,
    /// Fixed aliases: a public model name to the `provider/model` it stands for.
    pub aliases: HashMap<String, ModelRef>,
    /// The model groups, and the retry budget every call shares.
    pub router: Router,
    /// The queue into the durable usage-event log.
    pub emitter: Emitter,
    /// Counters and histograms behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Slots for requests in flight (`server.requests_in_flight_max`); a request without one
    /// is shed with 503.
    pub in_flight: Arc<Semaphore>,
    /// Calls waiting for budget held by calls in flight, in line by allocation.
    pub waiting: Waiting,
    /// What streams really generate, by key (or agent) and model: what a stream holds.
    pub expected: Expected,
    /// Calls refused without a valid key: counted in metrics, and told the operator in at most
    /// one line a second.
    pub unauthenticated: Sampled,
    /// `[guards]`: loop windows, spend windows and the blocks in force.
    pub guards: Guards,
    /// The installation's key for the prompt prefixes events carry.
    pub prefixes: Prefixes,
    /// The admin API's operators and their roles: control-plane credentials, kept on this
    /// handle because the control topic's follower applies every admin change to it.
    pub operators: tollgate_engine::operator::OperatorStore,
    key_rates: DashMap<KeyId, Arc<Rates>>,
    team_rates: HashMap<Arc<str>, Arc<Rates>>,
    epoch: Instant,
    sequence: AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.config.server.listen)
            .finish_non_exhaustive()
    }
}

/// Why the request path's state could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The rate card did not load, or a team, project or allocation was refused.
    #[error(transparent)]
    Engine(#[from] tollgate_engine::Error),
    /// A provider's adapter could not be made (its base URL or credential).
    #[error(transparent)]
    Upstream(#[from] crate::providers::client::SetupError),
    /// The key of prompt prefixes in the state folder could not be read or made.
    #[error("the prompt-prefix key in the state folder: {0}")]
    PrefixKey(std::io::Error),
}

impl Gateway {
    /// Builds the request path's state from `config`: the rate card, the configured teams,
    /// projects and allocations, the providers (reading credentials with `env`), and an empty
    /// key store. Keys and allocations made at run time are the journal's to replay into
    /// [`Gateway::directory`] and [`Gateway::keys`] before anything is served.
    pub fn new(
        config: Config,
        env: &impl Fn(&str) -> Option<String>,
        emitter: Emitter,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, SetupError> {
        let card = RateCard::load(&config.rate_card)?;
        let directory = directory_of(&config)?;
        let mut random = [0u8; 16];
        getrandom::fill(&mut random)
            .map_err(|e| SetupError::PrefixKey(std::io::Error::other(e.to_string())))?;
        let prefixes = Prefixes::open(&config.state_dir, random).map_err(SetupError::PrefixKey)?;
        let mut providers = HashMap::new();
        for provider in &config.providers {
            let made = Provider::new(provider.clone(), config.routing.breaker, env)?;
            providers.insert(provider.name.clone(), Arc::new(made));
        }
        let leased = config.leases.is_some();
        let team_rates = config
            .teams
            .iter()
            .filter_map(|t| {
                let owner = leased.then_some(Owner {
                    on: (Limit::TeamRequests, Limit::TeamTokens),
                    name: &t.name,
                    team: &t.name,
                });
                Some((
                    Arc::from(t.name.as_str()),
                    Arc::new(Rates::new(t.rate, owner)?),
                ))
            })
            .collect();
        Ok(Gateway {
            directory,
            keys: KeyStore::new(),
            card: ArcSwap::from_pointee(card),
            providers,
            aliases: config.aliases.iter().cloned().collect(),
            router: Router::new(&config),
            emitter,
            metrics,
            in_flight: Arc::new(Semaphore::new(config.server.requests_in_flight_max)),
            waiting: Waiting::new(config.admission),
            expected: Expected::new(&config.admission),
            unauthenticated: Sampled::every(UNAUTHENTICATED_REPORT_INTERVAL_MS),
            guards: Guards::new(&config.guards),
            prefixes,
            operators: tollgate_engine::operator::OperatorStore::default(),
            key_rates: DashMap::new(),
            team_rates,
            epoch: Instant::now(),
            sequence: AtomicU64::new(0),
            config,
        })
    }

    /// Microseconds on the monotonic clock rate limits run on.
    #[must_use]
    pub fn monotonic_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// The limits of `key` (created on first use), if it has any.
    #[must_use]
    pub fn key_rates(&self, key: &VirtualKey) -> Option<Arc<Rates>> {
        let config = RateConfig {
            requests_per_minute: key.limits.requests_per_minute,
            tokens_per_minute: key.limits.tokens_per_minute,
        };
        if config == RateConfig::default() {
            return None;
        }
        if let Some(rates) = self.key_rates.get(&key.id()) {
            return Some(Arc::clone(&rates));
        }
        let id = key.id().to_string();
        let owner = self.config.leases.is_some().then_some(Owner {
            on: (Limit::KeyRequests, Limit::KeyTokens),
            name: &id,
            team: &key.allocation.project.team.name,
        });
        let rates = Arc::new(Rates::new(config, owner)?);
        Some(Arc::clone(
            self.key_rates.entry(key.id()).or_insert(rates).value(),
        ))
    }

    /// Forgets a revoked key's limits: a revoked or rotated key never calls again, so its
    /// limiter would only take room.
    pub fn forget_key(&self, id: KeyId) {
        self.key_rates.remove(&id);
        self.guards.forget_key(id);
    }

    /// Keys whose requests- or tokens-per-minute limiters are kept.
    #[must_use]
    pub fn key_limiters(&self) -> usize {
        self.key_rates.len()
    }

    /// The shared limits of `team`, if it has any.
    #[must_use]
    pub fn team_rates(&self, team: &str) -> Option<&Rates> {
        self.team_rates.get(team).map(Arc::as_ref)
    }

    /// Every key's and team's limits that have a slice shared with the other replicas.
    #[must_use]
    pub fn shared_rates(&self) -> Vec<Arc<Rates>> {
        let shared = |r: &Arc<Rates>| r.shared_requests.is_some() || r.shared_tokens.is_some();
        let mut all: Vec<Arc<Rates>> = self
            .team_rates
            .values()
            .filter(|r| shared(r))
            .cloned()
            .collect();
        all.extend(
            self.key_rates
                .iter()
                .filter(|r| shared(r.value()))
                .map(|r| Arc::clone(r.value())),
        );
        all
    }

    /// The limits `on` of `name` (a key's id or a team's name) are kept in, if kept here.
    #[must_use]
    pub fn rates_of(&self, on: Limit, name: &str) -> Option<Arc<Rates>> {
        match on {
            Limit::KeyRequests | Limit::KeyTokens => {
                let id = KeyId::parse(name).ok()?;
                self.key_rates.get(&id).map(|r| Arc::clone(r.value()))
            }
            Limit::TeamRequests | Limit::TeamTokens => self.team_rates.get(name).cloned(),
            Limit::Allocation | Limit::Project | Limit::Team => None,
        }
    }

    /// The team and the per-minute allowance of the rate limit `on` of `name` (a key's id or a
    /// team's name), as the config and the key store say: what a coordinator grants within.
    #[must_use]
    pub fn allowance(&self, on: Limit, name: &str) -> Option<(Arc<str>, u64)> {
        let per_minute = |limits: RateConfig, tokens: bool| {
            if tokens {
                limits.tokens_per_minute
            } else {
                limits.requests_per_minute
            }
            .map(|n| u64::from(n.get()))
        };
        match on {
            Limit::KeyRequests | Limit::KeyTokens => {
                let key = self.keys.get(KeyId::parse(name).ok()?)?;
                let limits = RateConfig {
                    requests_per_minute: key.limits.requests_per_minute,
                    tokens_per_minute: key.limits.tokens_per_minute,
                };
                let team = Arc::clone(&key.allocation.project.team.name);
                Some((team, per_minute(limits, on == Limit::KeyTokens)?))
            }
            Limit::TeamRequests | Limit::TeamTokens => {
                let team = self.config.teams.iter().find(|t| t.name == name)?;
                Some((
                    Arc::from(name),
                    per_minute(team.rate, on == Limit::TeamTokens)?,
                ))
            }
            Limit::Allocation | Limit::Project | Limit::Team => None,
        }
    }

    /// A fresh UUIDv7 event id: the time, and bits of [`draw`](Gateway::draw) (an id must be
    /// unique, not secret, and costs no system call).
    #[must_use]
    pub fn event_id(&self, now: UnixMs) -> EventId {
        let (high, low) = (self.draw().to_le_bytes(), self.draw().to_le_bytes());
        let mut bits = [0u8; 10];
        bits[..8].copy_from_slice(&high);
        bits[8..].copy_from_slice(&low[..2]);
        EventId::v7(now, &bits)
    }

    /// A fresh request id, `req_` and 32 hex digits (a UUIDv7, so ids sort by time).
    #[must_use]
    pub fn request_id(&self, now: UnixMs) -> Arc<str> {
        let id = self.event_id(now);
        Arc::from(format!("req_{}", id.0.simple()))
    }

    /// A pseudo-random number for ids and routing draws (event and request ids, a group's
    /// first candidate, a deployment, a backoff's jitter): SplitMix64 on a stream of its own
    /// per thread, seeded from the OS once, so a draw touches no shared memory and makes no
    /// system call. Distinct seeds give streams that do not meet. Not for secrets: keys use
    /// [`random`](Gateway::random).
    #[must_use]
    pub fn draw(&self) -> u64 {
        draw()
    }

    /// Random bytes from the OS; if that ever fails, a hash of a counter and the clock (unique
    /// within the process, which is what ids need).
    #[must_use]
    pub fn random<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        if getrandom::fill(&mut out).is_err() {
            let n = self.sequence.fetch_add(1, Ordering::Relaxed);
            let digest = Sha256::new()
                .chain_update(n.to_le_bytes())
                .chain_update(now_ms().0.to_le_bytes())
                .chain_update(self.monotonic_us().to_le_bytes())
                .finalize();
            for (slot, byte) in out.iter_mut().zip(digest.iter().cycle()) {
                *slot = *byte;
            }
        }
        out
    }
}

/// The next number of this thread's SplitMix64 stream (see [`Gateway::draw`]).
fn draw() -> u64 {
    thread_local! {
        static STREAM: std::cell::Cell<u64> =
            std::cell::Cell::new(u64::from_le_bytes(random_bytes()));
    }
    let mut z = STREAM.with(|stream| {
        let next = stream.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        stream.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Eight bytes from the OS, or from the clock and the thread if it has none to give (a draw
/// stream's seed).
fn random_bytes() -> [u8; 8] {
    let mut out = [0u8; 8];
    if getrandom::fill(&mut out).is_err() {
        let thread = Sha256::digest(format!("{:?}", std::thread::current().id()));
        let clock = now_ms().0.to_le_bytes();
        for ((slot, a), b) in out.iter_mut().zip(thread.iter()).zip(clock) {
            *slot = a ^ b;
        }
    }
    out
}

/// The budget table of the configured teams, projects and allocations.
fn directory_of(config: &Config) -> Result<Directory, tollgate_engine::Error> {
    let directory = if config.leases.is_some() {
        Directory::leased()
    } else {
        Directory::new()
    };
    for team in &config.teams {
        directory.add_team(&team.name, &team.org, team.budget)?;
    }
    for project in &config.projects {
        directory.add_project(&project.name, &project.team, project.budget)?;
    }
    for allocation in &config.allocations {
        directory.add_allocation(AllocationSpec {
            name: allocation.name.clone(),
            project: allocation.project.clone(),
            cost_center: allocation.cost_center.clone(),
            models: allow_list(&allocation.models)?,
            budget: allocation.budget,
            tight: allocation.tight,
        })?;
    }
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn draws_on_many_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..50_000).map(|_| draw()).collect::<Vec<u64>>()))
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for value in thread.join().unwrap() {
                assert!(seen.insert(value), "a draw repeated");
            }
        }
        assert_eq!(seen.len(), 200_000);
    }
}
