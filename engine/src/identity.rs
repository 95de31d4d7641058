//! Who is asking: teams, projects, allocations, and the virtual keys bound to them.
//!
//! The hierarchy is org > team > project > allocation; a virtual key belongs to one user (and
//! optionally one agent) and is bound to one allocation, whose cost center it is charged to.
//! Names of teams, projects and allocations are unique across the directory, as Slurm accounts
//! are. Every allocation reaches its three budget cells ([`Allocation::budget_cells`]) through
//! pointers it holds, so a resolved key reaches its counters with no lookup.
//!
//! **Invariant:** a key's secret is never stored: only its SHA-256 hash and an 8-character
//! display prefix. Resolving a presented key takes no lock: the store is 256 shards, each an
//! immutable map swapped whole on write (`arc-swap`), and the hash comparison is constant-time.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::budget::{BudgetCell, BudgetSnapshot, BudgetSpec, Level, Tight};
use crate::error::{Error, KeyRejection, Result};
use crate::ids::{KeyId, ModelRef};
use crate::limits::{ALLOW_LIST_ENTRIES_MAX, KEY_SECRET_BYTES, PRESENTED_KEY_BYTES_MAX};
use crate::time::UnixMs;

/// A team: the top budget level below the org.
#[derive(Debug)]
pub struct Team {
    /// Unique team name: what events, reports and the admin API call it.
    pub name: Arc<str>,
    /// The organisation it belongs to (the FOCUS billing account).
    pub org: Arc<str>,
    /// The team's budget, shared by all its projects.
    pub budget: Arc<BudgetCell>,
}

/// A project within a team.
#[derive(Debug)]
pub struct Project {
    /// Unique project name, across teams.
    pub name: Arc<str>,
    /// Its team, whose budget its spend also counts against.
    pub team: Arc<Team>,
    /// The project's budget, shared by all its allocations.
    pub budget: Arc<BudgetCell>,
}

/// The unit a key is bound to and spend is charged to.
#[derive(Debug)]
pub struct Allocation {
    /// Unique allocation name, across projects: what keys and usage records name.
    pub name: Arc<str>,
    /// Its project (and through it, team and org).
    pub project: Arc<Project>,
    /// The cost center its spend is charged to.
    pub cost_center: Arc<str>,
    /// Models it may use; a key's own list narrows it further.
    pub models: AllowList,
    /// Its own budget counters (the project's and team's are reached through `project`), and
    /// its `tight` policy ([`Allocation::tight`]).
    pub budget: BudgetCell,
}

impl Allocation {
    /// What its calls do when their whole bound does not fit.
    #[must_use]
    pub fn tight(&self) -> Tight {
        self.budget.tight()
    }

    /// The team, through the project.
    #[must_use]
    pub fn team(&self) -> &Arc<Team> {
        &self.project.team
    }

    /// The cells a request must fit under, in [`Level::ALL`] order: allocation, project, team.
    #[must_use]
    pub fn budget_cells(&self) -> [&BudgetCell; 3] {
        [
            &self.budget,
            &self.project.budget,
            &self.project.team.budget,
        ]
    }

    /// The limited level with the least room left at `now`, holds in flight counted, and its
    /// counters: where a caller stands. `None` when no level has a limit.
    #[must_use]
    pub fn tightest(&self, now: UnixMs) -> Option<(Level, BudgetSnapshot)> {
        Level::ALL
            .into_iter()
            .zip(self.budget_cells())
            .filter_map(|(level, cell)| {
                let snapshot = cell.snapshot(now);
                snapshot.remaining.map(|_| (level, snapshot))
            })
            .min_by_key(|(_, snapshot)| snapshot.remaining)
    }

    /// The name of the allocation, its project or its team.
    #[must_use]
    pub fn level_name(&self, level: Level) -> &Arc<str> {
        match level {
            Level::Allocation => &self.name,
            Level::Project => &self.project.name,
            Level::Team => &self.project.team.name,
        }
    }
}

/// Which models a key or allocation may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowList {
    /// Any model the rate card prices.
    #[default]
    Any,
    /// Only these (a thin pointer: keys are many, so the list costs one word on each).
    Only(Arc<Vec<ModelPattern>>),
}

/// One allow-list entry: a model, or every model of a provider (`openai/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelPattern {
    /// Exactly this model.
    Exact(ModelRef),
    /// Every model of this provider.
    Provider(Arc<str>),
}

impl AllowList {
    /// Parses entries like `openai/gpt-4o` and `anthropic/*`; an empty list allows nothing.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList> {
        if entries.len() > ALLOW_LIST_ENTRIES_MAX {
            return Err(Error::BadModelRef(format!(
                "allow-list has {} entries; at most {ALLOW_LIST_ENTRIES_MAX}",
                entries.len()
            )));
        }
        let patterns = entries
            .iter()
            .map(|e| {
                let e = e.as_ref();
                match e.strip_suffix("/*") {
                    Some(provider) => ModelRef::parse(&format!("{provider}/x"))
                        .map(|m| ModelPattern::Provider(Arc::from(m.provider()))),
                    None => ModelRef::parse(e).map(ModelPattern::Exact),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AllowList::Only(Arc::new(patterns)))
    }

    /// Whether `model` is allowed.
    #[must_use]
    pub fn allows(&self, model: &ModelRef) -> bool {
        match self {
            AllowList::Any => true,
            AllowList::Only(patterns) => patterns.iter().any(|p| match p {
                ModelPattern::Exact(m) => m == model,
                ModelPattern::Provider(provider) => **provider == *model.provider(),
            }),
        }
    }

    /// The entries as written (`*` for any).
    #[must_use]
    pub fn entries(&self) -> Vec<String> {
        match self {
            AllowList::Any => vec!["*".to_owned()],
            AllowList::Only(patterns) => patterns
                .iter()
                .map(|p| match p {
                    ModelPattern::Exact(m) => m.to_string(),
                    ModelPattern::Provider(provider) => format!("{provider}/*"),
                })
                .collect(),
        }
    }
}

/// How an allocation is described when it is created.
#[derive(Clone, Debug)]
pub struct AllocationSpec {
    /// Its name, unique across projects (a duplicate is refused).
    pub name: String,
    /// The project it belongs to, which must exist already.
    pub project: String,
    /// The cost center its spend is charged to.
    pub cost_center: String,
    /// Models it may use; keys bound to it may narrow this, never widen it.
    pub models: AllowList,
    /// Its own limit and period (the project's and team's are theirs).
    pub budget: BudgetSpec,
    /// What its calls do when their whole bound does not fit.
    pub tight: Tight,
}

/// Teams, projects and allocations by name. Written by the admin path, read by reporting;
/// the request path never looks anything up here (a key holds its allocation directly).
#[derive(Debug, Default)]
pub struct Directory {
    teams: DashMap<Arc<str>, Arc<Team>>,
    projects: DashMap<Arc<str>, Arc<Project>>,
    allocations: DashMap<Arc<str>, Arc<Allocation>>,
    cost_centers: DashMap<Arc<str>, ()>,
    /// Whether allocations hold from leases ([`Directory::leased`]).
    leased: bool,
}

impl Directory {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Directory {
        Directory::default()
    }

    /// An empty directory whose allocations' calls also hold from a lease on each allocation
    /// ([`crate::lease`]): for replicas that share budgets.
    #[must_use]
    pub fn leased() -> Directory {
        Directory {
            leased: true,
            ..Directory::default()
        }
    }

    /// Whether allocations hold from leases.
    #[must_use]
    pub fn is_leased(&self) -> bool {
        self.leased
    }

    /// Adds a team.
    pub fn add_team(&self, name: &str, org: &str, budget: BudgetSpec) -> Result<Arc<Team>> {
        check_name("team", name)?;
        let team = Arc::new(Team {
            name: Arc::from(name),
            org: Arc::from(org),
            budget: Arc::new(BudgetCell::new(budget)),
        });
        insert_new(&self.teams, "team", &team.name, &team)?;
        Ok(team)
    }

    /// Adds a project to an existing team.
    pub fn add_project(&self, name: &str, team: &str, budget: BudgetSpec) -> Result<Arc<Project>> {
        check_name("project", name)?;
        let team = self.team(team)?;
        let project = Arc::new(Project {
            name: Arc::from(name),
            team,
            budget: Arc::new(BudgetCell::new(budget)),
        });
        insert_new(&self.projects, "project", &project.name, &project)?;
        Ok(project)
    }

    /// Adds an allocation to an existing project.
    pub fn add_allocation(&self, spec: AllocationSpec) -> Result<Arc<Allocation>> {
        check_name("allocation", &spec.name)?;
        let project = self.project(&spec.project)?;
        let allocation = Arc::new(Allocation {
            name: Arc::from(spec.name.as_str()),
            project,
            cost_center: self.intern_cost_center(&spec.cost_center),
            models: spec.models,
            budget: if self.leased {
                BudgetCell::leased(spec.budget, spec.tight)
            } else {
                BudgetCell::with_tight(spec.budget, spec.tight)
            },
        });
        insert_new(
            &self.allocations,
            "allocation",
            &allocation.name,
            &allocation,
        )?;
        Ok(allocation)
    }

    /// One shared copy of each cost center name: there are few, and allocations are many.
    fn intern_cost_center(&self, name: &str) -> Arc<str> {
        if let Some(existing) = self.cost_centers.get(name) {
            return Arc::clone(existing.key());
        }
        let name: Arc<str> = Arc::from(name);
        Arc::clone(self.cost_centers.entry(name).or_insert(()).key())
    }

    /// A team by name.
    pub fn team(&self, name: &str) -> Result<Arc<Team>> {
        lookup(&self.teams, "team", name)
    }

    /// A project by name.
    pub fn project(&self, name: &str) -> Result<Arc<Project>> {
        lookup(&self.projects, "project", name)
    }

    /// An allocation by name.
    pub fn allocation(&self, name: &str) -> Result<Arc<Allocation>> {
        lookup(&self.allocations, "allocation", name)
    }

    /// All allocations, in name order.
    #[must_use]
    pub fn allocations(&self) -> Vec<Arc<Allocation>> {
        let mut all: Vec<_> = self
            .allocations
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Number of allocations.
    #[must_use]
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Unknown {
            kind,
            name: format!(
                "{} (names are 1 to 128 of A-Z a-z 0-9 - _ . @)",
                name.chars().take(130).collect::<String>()
            ),
        })
    }
}

fn insert_new<T>(
    map: &DashMap<Arc<str>, Arc<T>>,
    kind: &'static str,
    name: &Arc<str>,
    value: &Arc<T>,
) -> Result<()> {
    match map.entry(Arc::clone(name)) {
        dashmap::Entry::Occupied(_) => Err(Error::Duplicate {
            kind,
            name: name.to_string(),
        }),
        dashmap::Entry::Vacant(slot) => {
            slot.insert(Arc::clone(value));
            Ok(())
        }
    }
}

fn lookup<T>(map: &DashMap<Arc<str>, Arc<T>>, kind: &'static str, name: &str) -> Result<Arc<T>> {
    map.get(name)
        .map(|e| Arc::clone(e.value()))
        .ok_or_else(|| Error::Unknown {
            kind,
            name: name.chars().take(128).collect(),
        })
}

// ---- Virtual keys ----

/// The text every tollgate key starts with.
pub const KEY_PREFIX: &str = "tg_";

/// A freshly made key's secret, shown to its owner once and then forgotten.
pub struct KeySecret(String);

impl KeySecret {
    /// Makes a secret from `random` (at least [`KEY_SECRET_BYTES`] bytes from a CSPRNG; the
    /// engine does no I/O, so the caller supplies them).
    pub fn from_random(random: &[u8]) -> Result<KeySecret> {
        let bytes = random
            .get(..KEY_SECRET_BYTES)
            .ok_or(Error::NotEnoughEntropy {
                needed: KEY_SECRET_BYTES,
                got: random.len(),
            })?;
        let mut text = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_SECRET_BYTES);
        text.push_str(KEY_PREFIX);
        for b in bytes {
            text.push(hex_digit(b >> 4));
            text.push(hex_digit(b & 0xf));
        }
        Ok(KeySecret(text))
    }

    /// The secret, to show once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(<redacted>)")
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(
        b"0123456789abcdef"
            .get(usize::from(nibble & 0xf))
            .copied()
            .unwrap_or(b'0'),
    )
}

/// SHA-256 of a key's full text: what is stored in place of the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key's text.
    #[must_use]
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// The key's public id: the hash's first 64 bits.
    #[must_use]
    pub fn id(&self) -> KeyId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        KeyId(u64::from_be_bytes(first))
    }

    /// Whether two hashes are equal, compared in constant time.
    #[must_use]
    pub fn matches(&self, other: &KeyHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }

    /// Lower-case hex, for persistence.
    #[must_use]
    pub fn to_hex(&self) -> String {
        self.0
            .iter()
            .flat_map(|b| [hex_digit(b >> 4), hex_digit(b & 0xf)])
            .collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<KeyHash> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *slot = u8::from_str_radix(s, 16).ok()?;
        }
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.id())
    }
}

/// Requests- and tokens-per-minute limits of a key; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Model calls admitted per minute, with a burst of as many.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Prompt and completion tokens per minute, charged after each call (a key in debt is
    /// refused until it has paid it off).
    pub tokens_per_minute: Option<NonZeroU32>,
}

/// What a key may do besides calling models, as a set of bits (one byte on the key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope: the key may call models and nothing more.
    pub const NONE: Scopes = Scopes(0);
    /// May record resource usage and authorize it (`/v1/usage`), for any allocation: the
    /// credential of a scheduler hook or an importer.
    pub const METERING: Scopes = Scopes(1);

    const NAMED: [(Scopes, &'static str); 1] = [(Scopes::METERING, "metering")];

    /// Parses scope names (`["metering"]`); an unknown name is refused.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Scopes> {
        let mut bits = 0;
        for name in names {
            let name = name.as_ref();
            let (scope, _) = Scopes::NAMED
                .iter()
                .find(|(_, n)| *n == name)
                .ok_or_else(|| Error::Unknown {
                    kind: "scope",
                    name: name.chars().take(64).collect(),
                })?;
            bits |= scope.0;
        }
        Ok(Scopes(bits))
    }

    /// Whether every scope of `other` is in `self`.
    #[must_use]
    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the scopes held, in a fixed order.
    #[must_use]
    pub fn names(self) -> Vec<&'static str> {
        Scopes::NAMED
            .iter()
            .filter(|(scope, _)| self.contains(*scope) && scope.0 != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

/// How a key is described when it is created or restored.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// The user who owns it, recorded on every event it makes.
    pub user: String,
    /// The agent it is for, if one (an agent's calls are told apart in events).
    pub agent: Option<String>,
    /// When it stops working; `None` never.
    pub expires_at: Option<UnixMs>,
    /// Models it may use (intersected with its allocation's).
    pub models: AllowList,
    /// Its requests- and tokens-per-minute limits.
    pub limits: KeyLimits,
    /// What it may do besides calling models.
    pub scopes: Scopes,
    /// When it was made: now for a new key, the original instant for a restored one.
    pub created_at: UnixMs,
    /// Restored already revoked: published unusable, never usable for an instant.
    pub revoked: bool,
    /// How its calls are held when their whole bound does not fit; `None` follows its
    /// allocation's.
    pub tight: Option<Tight>,
}

/// A virtual key as stored: hash, display prefix, owner, allocation and limits.
#[derive(Debug)]
pub struct VirtualKey {
    hash: KeyHash,
    /// The eight hex digits of the display prefix, one nibble each: four bytes, so the key
    /// stays within its allocator size class with room for its scopes.
    display_prefix: u32,
    /// The user who owns it, recorded on every event it makes.
    pub user: Arc<str>,
    /// The agent it is for, if one.
    pub agent: Option<Arc<str>>,
    /// The allocation it is bound to.
    pub allocation: Arc<Allocation>,
    /// Expiry in ms since the epoch, [`NEVER`] for none, or [`REVOKED`]: one word, so that
    /// revocation is one store and a key costs 128 bytes resident.
    expiry: AtomicI64,
    /// When it was made (the admin API lists keys in this order).
    pub created_at: UnixMs,
    /// Models it may use (its allocation's list applies too).
    pub models: AllowList,
    /// Its requests- and tokens-per-minute limits.
    pub limits: KeyLimits,
    /// What it may do besides calling models.
    pub scopes: Scopes,
    /// Its own `tight` policy, over its allocation's (one byte, in the padding after its
    /// scopes).
    tight: Option<Tight>,
}

/// `expiry` of a key that never expires.
const NEVER: i64 = i64::MAX;
/// `expiry` of a revoked key.
const REVOKED: i64 = i64::MIN;

impl VirtualKey {
    /// The public id (the first eight bytes of the hash), safe to log and to show.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.hash.id()
    }

    /// How the key's calls are held when their whole bound does not fit: its own policy, or
    /// its allocation's.
    #[must_use]
    pub fn tight(&self) -> Tight {
        self.tight.unwrap_or_else(|| self.allocation.tight())
    }

    /// Its own `tight` policy, if it has one (what the admin API lists and the journal keeps).
    #[must_use]
    pub fn own_tight(&self) -> Option<Tight> {
        self.tight
    }

    /// The SHA-256 of the secret: all that is stored of it.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        self.hash
    }

    /// What the owner recognises the key by: `tg_` and its first eight secret characters.
    #[must_use]
    pub fn display_prefix(&self) -> String {
        format!("{KEY_PREFIX}{:08x}", self.display_prefix)
    }

    /// Whether the key has been revoked.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        self.expiry.load(Ordering::Acquire) == REVOKED
    }

    /// When the key stops working; `None` if never (or if revoked, which is sooner).
    #[must_use]
    pub fn expires_at(&self) -> Option<UnixMs> {
        match self.expiry.load(Ordering::Acquire) {
            NEVER | REVOKED => None,
            ms => Some(UnixMs(ms)),
        }
    }

    /// Whether the key is usable at `now`, and if not, why.
    pub fn check_usable(&self, now: UnixMs) -> Result<(), KeyRejection> {
        match self.expiry.load(Ordering::Acquire) {
            REVOKED => Err(KeyRejection::Revoked),
            ms if now.0 >= ms => Err(KeyRejection::Expired),
            _ => Ok(()),
        }
    }

    /// Whether this key (and its allocation) may use `model`; the refusing list is named.
    pub fn check_model(&self, model: &ModelRef) -> Result<()> {
        if !self.models.allows(model) {
            return Err(Error::ModelNotAllowed {
                model: model.as_arc().clone(),
                scope: "key",
                name: Arc::from(self.id().to_string()),
            });
        }
        if !self.allocation.models.allows(model) {
            return Err(Error::ModelNotAllowed {
                model: model.as_arc().clone(),
                scope: "allocation",
                name: self.allocation.name.clone(),
            });
        }
        Ok(())
    }
}

fn parse_display_prefix(display_prefix: &str) -> Result<[u8; 8]> {
    let tail = display_prefix
        .strip_prefix(KEY_PREFIX)
        .unwrap_or(display_prefix)
        .as_bytes();
    let mut prefix = [b'0'; 8];
    if tail.len() != 8 || !tail.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::Unknown {
            kind: "key display prefix",
            name: display_prefix.chars().take(20).collect(),
        });
    }
    prefix.copy_from_slice(tail);
    Ok(prefix)
}

impl VirtualKey {
    fn new(
        allocation: &Arc<Allocation>,
        hash: KeyHash,
        display_prefix: [u8; 8],
        spec: KeySpec,
    ) -> VirtualKey {
        // The digits were checked as hex where they came from; anything else reads as 0.
        let display_prefix = display_prefix.iter().fold(0u32, |packed, &digit| {
            let nibble = char::from(digit).to_digit(16).unwrap_or(0);
            (packed << 4) | nibble
        });
        VirtualKey {
            hash,
            display_prefix,
            user: Arc::from(spec.user.as_str()),
            agent: spec.agent.as_deref().map(Arc::from),
            allocation: Arc::clone(allocation),
            // An expiry at the very start of time is still an expiry, not a revocation.
            expiry: AtomicI64::new(if spec.revoked {
                REVOKED
            } else {
                spec.expires_at.map_or(NEVER, |at| at.0.max(REVOKED + 1))
            }),
            created_at: spec.created_at,
            models: spec.models,
            limits: spec.limits,
            scopes: spec.scopes,
            tight: spec.tight,
        }
    }
}

/// Shards in the key store: enough that a write copies a small map, few enough to stay cheap.
const KEY_SHARDS: usize = 256;

/// Keys already hashed to 64 uniformly random bits need no further hashing.
#[derive(Default)]
struct PrehashedId(u64);

impl Hasher for PrehashedId {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Shard = HashMap<u64, Arc<VirtualKey>, BuildHasherDefault<PrehashedId>>;

/// All virtual keys, by hash. Reads are lock-free; writes copy one shard.
pub struct KeyStore {
    shards: Box<[ArcSwap<Shard>]>,
    writers: Box<[Mutex<()>]>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.len())
            .finish()
    }
}

impl Default for KeyStore {
    fn default() -> Self {
        KeyStore::new()
    }
}

fn shard_of(id: KeyId) -> usize {
    // The id's top byte picks the shard; the in-shard table buckets by the low bits, so the two
    // never overlap and keys of one shard spread over its whole table.
    (id.0 >> 56) as usize % KEY_SHARDS
}

impl KeyStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> KeyStore {
        KeyStore {
            shards: (0..KEY_SHARDS)
                .map(|_| ArcSwap::from_pointee(Shard::default()))
                .collect(),
            writers: (0..KEY_SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Creates a key bound to `allocation` from fresh randomness; returns the stored key and
    /// the secret to show once. On an id collision, call again with new randomness.
    pub fn create(
        &self,
        allocation: &Arc<Allocation>,
        spec: KeySpec,
        random: &[u8],
    ) -> Result<(Arc<VirtualKey>, KeySecret)> {
        let secret = KeySecret::from_random(random)?;
        let hash = KeyHash::of(secret.expose());
        let mut display_prefix = [b'0'; 8];
        let tail = secret.expose().as_bytes().iter().skip(KEY_PREFIX.len());
        for (slot, byte) in display_prefix.iter_mut().zip(tail) {
            *slot = *byte;
        }
        let key = self.insert(allocation, hash, display_prefix, spec)?;
        Ok((key, secret))
    }

    /// Restores a stored key (from its hash and display prefix, as persisted).
    pub fn restore(
        &self,
        allocation: &Arc<Allocation>,
        hash: KeyHash,
        display_prefix: &str,
        spec: KeySpec,
    ) -> Result<Arc<VirtualKey>> {
        self.insert(
            allocation,
            hash,
            parse_display_prefix(display_prefix)?,
            spec,
        )
    }

    /// Restores many stored keys at once (start-up): each shard is copied once, not once per
    /// key. Nothing is stored if any key is malformed or collides.
    pub fn restore_many<I>(&self, records: I) -> Result<usize>
    where
        I: IntoIterator<Item = (Arc<Allocation>, KeyHash, String, KeySpec)>,
    {
        let mut by_shard: Vec<Vec<Arc<VirtualKey>>> = (0..KEY_SHARDS).map(|_| Vec::new()).collect();
        let mut count = 0;
        for (allocation, hash, display_prefix, spec) in records {
            let key = Arc::new(VirtualKey::new(
                &allocation,
                hash,
                parse_display_prefix(&display_prefix)?,
                spec,
            ));
            if let Some(bucket) = by_shard.get_mut(shard_of(key.id())) {
                bucket.push(key);
                count += 1;
            }
        }
        // Writers of every shard queue here, in index order, so no two batches deadlock.
        let _turns: Vec<_> = self
            .writers
            .iter()
            .map(|w| w.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect();
        let mut next: Vec<Shard> = Vec::with_capacity(KEY_SHARDS);
        for (shard, bucket) in self.shards.iter().zip(by_shard) {
            let mut map = Shard::clone(&shard.load());
            map.reserve(bucket.len());
            for key in bucket {
                let id = key.id();
                if map.insert(id.0, key).is_some() {
                    return Err(Error::KeyCollision);
                }
            }
            next.push(map);
        }
        for (shard, map) in self.shards.iter().zip(next) {
            shard.store(Arc::new(map));
        }
        Ok(count)
    }

    fn insert(
        &self,
        allocation: &Arc<Allocation>,
        hash: KeyHash,
        display_prefix: [u8; 8],
        spec: KeySpec,
    ) -> Result<Arc<VirtualKey>> {
        let key = Arc::new(VirtualKey::new(allocation, hash, display_prefix, spec));
        let id = key.id();
        self.write_shard(shard_of(id), |shard| {
            if shard.contains_key(&id.0) {
                return Err(Error::KeyCollision);
            }
            shard.insert(id.0, Arc::clone(&key));
            Ok(())
        })?;
        Ok(key)
    }

    fn write_shard<T>(
        &self,
        index: usize,
        change: impl FnOnce(&mut Shard) -> Result<T>,
    ) -> Result<T> {
        let (Some(shard), Some(writer)) = (self.shards.get(index), self.writers.get(index)) else {
            return Err(Error::Unknown {
                kind: "key shard",
                name: index.to_string(),
            });
        };
        // Writers of one shard queue here; readers never do.
        let _turn = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Shard::clone(&shard.load());
        let out = change(&mut next)?;
        shard.store(Arc::new(next));
        Ok(out)
    }

    /// Resolves a presented key at `now`: lock-free, constant-time in the hash comparison.
    pub fn resolve(&self, presented: &str, now: UnixMs) -> Result<Arc<VirtualKey>, KeyRejection> {
        if presented.is_empty() {
            return Err(KeyRejection::Missing);
        }
        if presented.len() > PRESENTED_KEY_BYTES_MAX || !presented.starts_with(KEY_PREFIX) {
            return Err(KeyRejection::Unknown);
        }
        let hash = KeyHash::of(presented);
        let id = hash.id();
        let shard = self
            .shards
            .get(shard_of(id))
            .ok_or(KeyRejection::Unknown)?
            .load();
        let key = shard.get(&id.0).ok_or(KeyRejection::Unknown)?;
        if !bool::from(key.hash.0.ct_eq(&hash.0)) {
            return Err(KeyRejection::Unknown);
        }
        key.check_usable(now)?;
        Ok(Arc::clone(key))
    }

    /// A key by id, revoked or not.
    #[must_use]
    pub fn get(&self, id: KeyId) -> Option<Arc<VirtualKey>> {
        self.shards.get(shard_of(id))?.load().get(&id.0).cloned()
    }

    /// Revokes a key: refused from the next resolve on, kept for listing and audit.
    pub fn revoke(&self, id: KeyId) -> Result<Arc<VirtualKey>> {
        let key = self.get(id).ok_or_else(|| Error::Unknown {
            kind: "key",
            name: id.to_string(),
        })?;
        key.expiry.store(REVOKED, Ordering::Release);
        Ok(key)
    }

    /// Every key, in id order.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<VirtualKey>> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.load().values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|k| k.id());
        all
    }

    /// The usable keys that stop working after `now` and at or before `before`, in id order:
    /// those a notice that they are about to expire is due for.
    #[must_use]
    pub fn expiring(&self, now: UnixMs, before: UnixMs) -> Vec<Arc<VirtualKey>> {
        let mut due: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.load()
                    .values()
                    .filter(|k| k.expires_at().is_some_and(|at| at > now && at <= before))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        due.sort_by_key(|k| k.id());
        due
    }

    /// Number of keys, revoked included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.load().len()).sum()
    }

    /// Whether there are no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A directory with team `team`, project `proj` and allocation `alloc`, for tests and benches.
#[doc(hidden)]
pub fn test_directory(
    allocation: BudgetSpec,
    project: BudgetSpec,
    team: BudgetSpec,
) -> Result<(Directory, Arc<Allocation>)> {
    let dir = Directory::new();
    dir.add_team("team", "org", team)?;
    dir.add_project("proj", "team", project)?;
    let allocation = dir.add_allocation(AllocationSpec {
        name: "alloc".into(),
        project: "proj".into(),
        cost_center: "cc-1".into(),
        models: AllowList::Any,
        budget: allocation,
        tight: Tight::Clamp,
    })?;
    Ok((dir, allocation))
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use crate::money::Nanos;
    use crate::time::Period;

    fn fixture() -> (Directory, Arc<Allocation>, KeyStore) {
        let (dir, alloc) = test_directory(
            BudgetSpec::limited(Nanos(1_000), Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
        )
        .unwrap();
        (dir, alloc, KeyStore::new())
    }

    fn spec(expires_at: Option<UnixMs>) -> KeySpec {
        KeySpec {
            user: "ada".into(),
            agent: Some("coder-1".into()),
            expires_at,
            models: AllowList::Any,
            limits: KeyLimits::default(),
            scopes: Scopes::NONE,
            created_at: UnixMs(0),
            revoked: false,
            tight: None,
        }
    }

    #[test]
    fn scopes_parse_by_name_and_refuse_unknown_ones() {
        let metering = Scopes::parse(&["metering"]).unwrap();
        assert!(metering.contains(Scopes::METERING));
        assert!(!Scopes::NONE.contains(Scopes::METERING));
        assert!(Scopes::NONE.names().is_empty());
        assert_eq!(metering.names(), vec!["metering"]);
        assert_eq!(Scopes::parse::<&str>(&[]).unwrap(), Scopes::NONE);
        assert!(matches!(
            Scopes::parse(&["admin"]),
            Err(Error::Unknown { kind: "scope", .. })
        ));
    }

    #[test]
    fn keys_resolve_and_refuse_precisely() {
        let (_dir, alloc, store) = fixture();
        let (key, secret) = store
            .create(&alloc, spec(Some(UnixMs(1_000))), &[7u8; 20])
            .unwrap();
        assert!(secret.expose().starts_with("tg_0707070707"));
        assert_eq!(secret.expose().len(), 3 + 40);
        assert_eq!(format!("{secret:?}"), "KeySecret(<redacted>)");
        assert_eq!(key.display_prefix(), "tg_07070707");
        let resolved = store.resolve(secret.expose(), UnixMs(999)).unwrap();
        assert_eq!(resolved.id(), key.id());
        assert_eq!(&*resolved.allocation.name, "alloc");
        assert_eq!(
            store.resolve(secret.expose(), UnixMs(1_000)).unwrap_err(),
            KeyRejection::Expired
        );
        assert_eq!(
            store.resolve("", UnixMs(0)).unwrap_err(),
            KeyRejection::Missing
        );
        assert_eq!(
            store.resolve("sk-abc", UnixMs(0)).unwrap_err(),
            KeyRejection::Unknown
        );
        let mut wrong = secret.expose().to_owned();
        wrong.pop();
        wrong.push('f');
        assert_eq!(
            store.resolve(&wrong, UnixMs(0)).unwrap_err(),
            KeyRejection::Unknown
        );
        assert_eq!(
            store.resolve(&"tg_".repeat(200), UnixMs(0)).unwrap_err(),
            KeyRejection::Unknown
        );
        store.revoke(key.id()).unwrap();
        assert_eq!(
            store.resolve(secret.expose(), UnixMs(0)).unwrap_err(),
            KeyRejection::Revoked
        );
        assert!(store.revoke(KeyId(1)).is_err());
    }

    #[test]
    fn keys_expiring_within_a_window_are_found_and_no_others() {
        let (_dir, alloc, store) = fixture();
        let make = |at: Option<i64>, seed: u8| {
            store
                .create(&alloc, spec(at.map(UnixMs)), &[seed; 20])
                .unwrap()
                .0
        };
        let soon = make(Some(1_500), 1);
        let edge = make(Some(2_000), 2);
        let _later = make(Some(2_001), 3);
        let _gone = make(Some(1_000), 4);
        let _never = make(None, 5);
        let revoked = make(Some(1_200), 6);
        store.revoke(revoked.id()).unwrap();
        let mut want = vec![soon.id(), edge.id()];
        want.sort();
        let found: Vec<KeyId> = store
            .expiring(UnixMs(1_000), UnixMs(2_000))
            .iter()
            .map(|k| k.id())
            .collect();
        assert_eq!(found, want);
        assert!(store.expiring(UnixMs(2_000), UnixMs(2_000)).is_empty());
    }

    #[test]
    fn stored_state_never_holds_the_secret() {
        let (_dir, alloc, store) = fixture();
        let (key, secret) = store.create(&alloc, spec(None), &[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&secret.expose()[3..]), "{shown}");
        assert_eq!(key.hash(), KeyHash::of(secret.expose()));
        assert_eq!(KeyHash::from_hex(&key.hash().to_hex()), Some(key.hash()));
        assert!(KeyHash::from_hex("zz").is_none());
    }

    #[test]
    fn restored_keys_resolve_and_collisions_are_refused() {
        let (_dir, alloc, store) = fixture();
        let (key, secret) = store.create(&alloc, spec(None), &[1u8; 20]).unwrap();
        assert!(matches!(
            store.create(&alloc, spec(None), &[1u8; 20]),
            Err(Error::KeyCollision)
        ));
        let other = KeyStore::new();
        other
            .restore(&alloc, key.hash(), &key.display_prefix(), spec(None))
            .unwrap();
        assert_eq!(
            other.resolve(secret.expose(), UnixMs(0)).unwrap().id(),
            key.id()
        );
        assert!(
            other
                .restore(&alloc, key.hash(), "tg_xyz", spec(None))
                .is_err()
        );
        // In bulk: all or nothing.
        let bulk = KeyStore::new();
        let records = (0u8..50).map(|i| {
            (
                Arc::clone(&alloc),
                KeyHash::of(&format!("tg_{i}")),
                "tg_0000abcd".to_owned(),
                spec(None),
            )
        });
        assert_eq!(bulk.restore_many(records).unwrap(), 50);
        assert_eq!(bulk.len(), 50);
        let again = (0u8..2)
            .map(|i| {
                (
                    Arc::clone(&alloc),
                    KeyHash::of(&format!("tg_new{i}")),
                    "tg_0000abcd".to_owned(),
                    spec(None),
                )
            })
            .chain(std::iter::once((
                Arc::clone(&alloc),
                KeyHash::of("tg_7"),
                "tg_0000abcd".to_owned(),
                spec(None),
            )));
        assert!(matches!(bulk.restore_many(again), Err(Error::KeyCollision)));
        assert_eq!(bulk.len(), 50, "a refused batch stores nothing");
        assert!(matches!(
            store.create(&alloc, spec(None), &[1u8; 19]),
            Err(Error::NotEnoughEntropy { .. })
        ));
    }

    #[test]
    fn records_stay_small() {
        // A million of each must fit in well under a gigabyte: keep them at 128 bytes with Arc's
        // two counters (one allocator size class).
        assert!(
            std::mem::size_of::<VirtualKey>() <= 112,
            "{}",
            std::mem::size_of::<VirtualKey>()
        );
        assert!(
            std::mem::size_of::<Allocation>() <= 112,
            "{}",
            std::mem::size_of::<Allocation>()
        );
    }

    #[test]
    fn many_keys_spread_over_shards() {
        let (_dir, alloc, store) = fixture();
        for i in 0u32..2_000 {
            let mut random = [0u8; 20];
            random[..4].copy_from_slice(&i.to_le_bytes());
            store.create(&alloc, spec(None), &random).unwrap();
        }
        assert_eq!(store.len(), 2_000);
        assert_eq!(store.list().len(), 2_000);
        let busiest = store.shards.iter().map(|s| s.load().len()).max().unwrap();
        assert!(busiest < 40, "shards unbalanced: {busiest}");
    }

    #[test]
    fn allow_lists_check_key_then_allocation() {
        let dir = Directory::new();
        dir.add_team("t", "o", BudgetSpec::unlimited(Period::Total))
            .unwrap();
        dir.add_project("p", "t", BudgetSpec::unlimited(Period::Total))
            .unwrap();
        let alloc = dir
            .add_allocation(AllocationSpec {
                name: "a".into(),
                project: "p".into(),
                cost_center: "cc".into(),
                models: AllowList::parse(&["openai/*", "anthropic/claude-sonnet-4-5"]).unwrap(),
                budget: BudgetSpec::unlimited(Period::Month),
                tight: Tight::Clamp,
            })
            .unwrap();
        let store = KeyStore::new();
        let mut s = spec(None);
        s.models = AllowList::parse(&["openai/gpt-4o", "anthropic/*"]).unwrap();
        let (key, _) = store.create(&alloc, s, &[9u8; 20]).unwrap();
        let m = |t: &str| ModelRef::parse(t).unwrap();
        assert!(key.check_model(&m("openai/gpt-4o")).is_ok());
        assert!(matches!(
            key.check_model(&m("openai/gpt-4o-mini")),
            Err(Error::ModelNotAllowed { scope: "key", .. })
        ));
        assert!(matches!(
            key.check_model(&m("anthropic/claude-opus-4")),
            Err(Error::ModelNotAllowed {
                scope: "allocation",
                ..
            })
        ));
        assert!(key.check_model(&m("anthropic/claude-sonnet-4-5")).is_ok());
        assert!(AllowList::parse(&["gpt-4o"]).is_err());
        assert!(
            !AllowList::parse::<&str>(&[])
                .unwrap()
                .allows(&m("openai/gpt-4o"))
        );
        assert_eq!(
            AllowList::parse(&["openai/*"]).unwrap().entries(),
            vec!["openai/*"]
        );
    }

    #[test]
    fn directory_refuses_duplicates_and_unknown_parents() {
        let dir = Directory::new();
        dir.add_team("t", "o", BudgetSpec::unlimited(Period::Total))
            .unwrap();
        assert!(matches!(
            dir.add_team("t", "o", BudgetSpec::unlimited(Period::Total)),
            Err(Error::Duplicate { .. })
        ));
        assert!(matches!(
            dir.add_project("p", "nope", BudgetSpec::unlimited(Period::Total)),
            Err(Error::Unknown { kind: "team", .. })
        ));
        assert!(
            dir.add_team("bad name", "o", BudgetSpec::unlimited(Period::Total))
                .is_err()
        );
        assert!(
            dir.add_team("", "o", BudgetSpec::unlimited(Period::Total))
                .is_err()
        );
    }
}
