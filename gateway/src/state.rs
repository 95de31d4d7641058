//! The gateway's shared state: directory, keys, rate card, upstreams, limits, emitter, metrics.
//!
//! Built once from the config at start; every request holds an `Arc` of it. Nothing here takes
//! a lock on the request path: keys and budgets are the engine's lock-free tables, rate limits
//! are atomics, the rate card is swapped whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tollgate_engine::{
    AllocationSpec, Directory, EventId, Gcra, KeyHash, KeyId, KeyStore, ModelRef, RateCard, UnixMs,
    VirtualKey,
};

use crate::clock::now_ms;
use crate::config::{Config, RateConfig, allow_list};
use crate::control::journal::Journal;
use crate::events::emit::{Emitter, Writer};
use crate::metrics::Metrics;
use crate::providers::Provider;

/// Requests- and tokens-per-minute limits of one key or team.
#[derive(Debug)]
pub struct Rates {
    /// Requests per minute, taken at admission.
    pub requests: Option<Gcra>,
    /// Tokens per minute, charged after each call.
    pub tokens: Option<Gcra>,
}

impl Rates {
    fn new(config: RateConfig) -> Option<Rates> {
        if config == RateConfig::default() {
            return None;
        }
        Some(Rates {
            requests: config.requests_per_minute.map(Gcra::per_minute),
            tokens: config.tokens_per_minute.map(Gcra::per_minute),
        })
    }
}

/// Everything a request needs.
pub struct Gateway {
    /// The config it was built from.
    pub config: Config,
    /// Teams, projects, allocations and their budget cells.
    pub directory: Directory,
    /// Virtual keys.
    pub keys: KeyStore,
    /// The rate card in force.
    pub card: ArcSwap<RateCard>,
    /// Providers by name.
    pub providers: HashMap<String, Arc<Provider>>,
    /// Fixed aliases.
    pub aliases: HashMap<String, ModelRef>,
    /// The usage-event queue.
    pub emitter: Emitter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The journal of admin changes.
    pub journal: Journal,
    /// The resource ledger: booked record ids and holds for authorized usage.
    pub ledger: crate::usage::Ledger,
    /// Requests in flight.
    pub in_flight: Arc<Semaphore>,
    key_rates: DashMap<KeyId, Arc<Rates>>,
    team_rates: HashMap<Arc<str>, Rates>,
    admin_token: Option<KeyHash>,
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

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The rate card.
    #[error(transparent)]
    Engine(#[from] tollgate_engine::Error),
    /// A provider.
    #[error(transparent)]
    Upstream(#[from] crate::providers::client::SetupError),
    /// The journal.
    #[error(transparent)]
    State(#[from] crate::control::journal::StateError),
    /// The event log.
    #[error("opening the event log in {dir}: {source}")]
    Events {
        /// Folder.
        dir: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl Gateway {
    /// Builds the gateway from `config`, reading credentials and the admin token with `env`.
    pub fn start(
        config: Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Arc<Gateway>, Writer), StartError> {
        let card = RateCard::load(&config.rate_card)?;
        let directory = Directory::new();
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
            })?;
        }
        let mut providers = HashMap::new();
        for provider in &config.providers {
            let made = Provider::new(provider.clone(), &env)?;
            providers.insert(provider.name.clone(), Arc::new(made));
        }
        let aliases = config.aliases.iter().cloned().collect();
        let team_rates = config
            .teams
            .iter()
            .filter_map(|t| Some((Arc::from(t.name.as_str()), Rates::new(t.rate)?)))
            .collect();
        let keys = KeyStore::new();
        let (journal, _restored) = Journal::open(&config.state_dir, &directory, &keys)?;

        let metrics = Arc::new(Metrics::default());
        let events_error = |source| StartError::Events {
            dir: config.events.dir.display().to_string(),
            source,
        };
        let (emitter, writer, _recovery) = Emitter::start(
            &config.events,
            config.parquet.as_ref(),
            Arc::clone(&metrics),
        )
        .map_err(events_error)?;
        // Budgets carry the spend of their current periods across a restart, and the ledger
        // the ids of the records it booked: from the spend checkpoint and the log after it.
        let mut index = crate::usage::Ledger::index_for(&config.ledger);
        let checkpoint = config
            .state_dir
            .join(crate::events::restore::CHECKPOINT_FILE);
        let mut folded = crate::events::restore::Folded::load(&checkpoint).unwrap_or_default();
        let from = folded.next_offset;
        crate::events::restore::restore_spend(
            &directory,
            &mut folded,
            emitter.read_from(from),
            now_ms(),
            &mut index,
        )
        .map_err(|e| events_error(std::io::Error::other(e)))?;
        emitter.maintain(crate::events::emit::Maintenance::new(
            folded,
            checkpoint,
            config.events.checkpoint_interval,
            config.kafka.is_some(),
            crate::usage::duration_ms(config.ledger.record_window),
        ));
        let ledger = crate::usage::Ledger::new(config.ledger.clone(), index);
        let admin_token = env(&config.admin.token_env)
            .filter(|t| !t.is_empty())
            .map(|t| KeyHash::of(&t));
        let in_flight = Arc::new(Semaphore::new(config.server.requests_in_flight_max));
        let gateway = Gateway {
            directory,
            keys,
            card: ArcSwap::from_pointee(card),
            providers,
            aliases,
            emitter,
            metrics,
            journal,
            ledger,
            in_flight,
            key_rates: DashMap::new(),
            team_rates,
            admin_token,
            epoch: Instant::now(),
            sequence: AtomicU64::new(0),
            config,
        };
        Ok((Arc::new(gateway), writer))
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
        let rates = Arc::new(Rates::new(config)?);
        Some(Arc::clone(
            self.key_rates.entry(key.id()).or_insert(rates).value(),
        ))
    }

    /// The shared limits of `team`, if it has any.
    #[must_use]
    pub fn team_rates(&self, team: &str) -> Option<&Rates> {
        self.team_rates.get(team)
    }

    /// Whether `presented` is the admin token (constant-time on the hash).
    #[must_use]
    pub fn is_admin(&self, presented: &str) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|token| token.matches(&KeyHash::of(presented)))
    }

    /// Whether an admin token is configured at all.
    #[must_use]
    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// A fresh UUIDv7 event id.
    #[must_use]
    pub fn event_id(&self, now: UnixMs) -> EventId {
        EventId::v7(now, &self.random())
    }

    /// A fresh request id, `req_` and 32 hex digits (a UUIDv7, so ids sort by time).
    #[must_use]
    pub fn request_id(&self, now: UnixMs) -> Arc<str> {
        let id = self.event_id(now);
        Arc::from(format!("req_{}", id.0.simple()))
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
