//! `tollgate.toml`: the gateway's config, parsed into typed values before anything starts.
//!
//! A bad file stops start-up with `file:line:column: `field.path`: reason`; each section is
//! checked by its own function, in the order the sections depend on each other (providers
//! before the aliases that name them, teams before projects before allocations), and the
//! first error stops. Secrets never live in the file: a provider names the environment
//! variable holding its key, and so does the admin token. Relative paths are taken from the
//! config file's folder, so a config and its rate card travel together.
//!
//! A `[[provider]]` table is its component's: [`ProviderConfig`] and its checks live in
//! `providers::config` (re-exported here), and this module only places their errors in the file.
//! `tollgate sink`'s own file is [`SinkConfig`].

mod console;
mod guards;
mod native;
mod routing;
mod sink;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_engine::config::{config_error, parse_toml, read_config_file};
use tollgate_engine::money::deserialize_amount;
use tollgate_engine::{BudgetSpec, Error, ModelRef, Nanos, Period, Tight};
use toml::Spanned;

pub use self::console::{ConsoleConfig, SecureCookie};
pub use self::guards::{GuardsConfig, LoopConfig, Scope, VelocityConfig};
pub use self::native::DefaultProviders;
pub use self::routing::{Candidate, DowngradeConfig, GroupConfig, RoutingConfig};
pub use self::sink::SinkConfig;
use crate::limits;
use crate::providers::config::RawProvider;
pub use crate::providers::config::{ProviderConfig, ProviderKind, Vertex};

type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole config, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the file was read from, as error messages and listings name it.
    pub origin: String,
    /// The rate card file, resolved against the config's folder.
    pub rate_card: PathBuf,
    /// `[server]`: the listener and the bounds on what a client may send.
    pub server: ServerConfig,
    /// `[admin]`: where the admin token is read from.
    pub admin: AdminConfig,
    /// Where keys, allocations created at run time and the audit log live (`[state] dir`).
    pub state_dir: PathBuf,
    /// `[events]`: the durable log every usage event is appended to.
    pub events: EventsConfig,
    /// Parquet output of the event log (`None`: off).
    pub parquet: Option<ParquetConfig>,
    /// Kafka shipping of the event log (`None`: off). Its `origin` is empty unless
    /// `kafka.replica` names one; the gateway then uses the id kept in its state folder.
    pub kafka: Option<tollgate_sink::kafka::KafkaConfig>,
    /// How often other replicas' spend, read from the topic, is applied to the budget table
    /// (`None`: no reconciliation; only with `[kafka]`).
    pub reconcile_interval: Option<Duration>,
    /// The control topic every replica shares admin changes through (`kafka.control_topic`;
    /// `None` without `[kafka]`, when changes stay in the local journal).
    pub control: Option<tollgate_sink::control::ControlConfig>,
    /// The topic every alert is also published to, on `[kafka]`'s brokers
    /// (`kafka.alerts_topic`, default `tollgate.alerts`; `None` without `[kafka]` or with
    /// `kafka.alerts = false`).
    pub alerts_topic: Option<String>,
    /// `[leases]`: replicas share budgets by leases a coordinator grants (`None`: off, each
    /// replica admits against its own table and reconciliation bounds the overshoot).
    pub leases: Option<LeasesConfig>,
    /// `[ledger]`: the resource ledger (`/v1/usage`).
    pub ledger: LedgerConfig,
    /// `[admission]`: how a call waits for budget held by calls in flight.
    pub admission: AdmissionConfig,
    /// `[forecast]`: how often every limited budget's spend is sampled for its burn-rate
    /// forecast (`interval_ms`).
    pub forecast_interval: Duration,
    /// `forecast.key_expiry_warning_ms`: how long before a key expires an alert says so,
    /// sampled as often as the forecasts (zero: never).
    pub key_expiry_warning: Duration,
    /// The `[[webhook]]` tables in file order, names unique: where alerts are delivered.
    pub webhooks: Vec<WebhookConfig>,
    /// `[guards]`: the runaway-loop detector and the spend-velocity ceilings.
    pub guards: GuardsConfig,
    /// `[console]`: the web console (`None`: off, `/console` is not served).
    pub console: Option<ConsoleConfig>,
    /// The `[[provider]]` tables in file order, names unique.
    pub providers: Vec<ProviderConfig>,
    /// Fixed model aliases (`[[alias]]`): the name a client may send, and the model it means.
    pub aliases: Vec<(String, ModelRef)>,
    /// `[default_provider]`: what a model name without a provider means, per route.
    pub default_providers: DefaultProviders,
    /// `[routing]`: retries, backoff, the retry budget, breakers, balancing of direct calls.
    pub routing: RoutingConfig,
    /// `[[group]]`: public model names for ordered candidates.
    pub groups: Vec<GroupConfig>,
    /// The organisation tree's top level (`[[team]]`), names unique.
    pub teams: Vec<TeamConfig>,
    /// `[[project]]`s, each owned by a team above.
    pub projects: Vec<ProjectConfig>,
    /// `[[allocation]]`s, each owned by a project above; keys charge them.
    pub allocations: Vec<AllocationConfig>,
}

/// `[server]`: the listener and the bounds on what a client may send.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Largest request body in bytes; a larger one gets 413.
    pub body_bytes_max: usize,
    /// Largest request head in bytes; at least 8192.
    pub header_bytes_max: usize,
    /// Time for a client to send its head.
    pub header_timeout: Duration,
    /// Time for a client to send its body.
    pub body_timeout: Duration,
    /// Requests in flight at once, at least 1; past it, 503 with `Retry-After`.
    pub requests_in_flight_max: usize,
    /// Graceful shutdown's wait for in-flight streams before they are cut.
    pub drain_timeout: Duration,
    /// Threads serving requests, from 1 to `WORKER_THREADS_MAX`; `None`: one per core.
    pub worker_threads: Option<usize>,
}

/// `[admin]`: the admin API and the CLI's access to it.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The environment variable holding the admin token (unset or empty: every admin call is
    /// refused).
    pub token_env: String,
}

/// `[events]`: the durable usage-event log.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// Folder of the local event log, resolved against the config's folder.
    pub dir: PathBuf,
    /// Appended events waiting for their sync before new requests get 503; at least 1.
    pub queued_max: usize,
    /// Longest an event waits before it is synced (group commit).
    pub sync_interval: Duration,
    /// How often the spend checkpoint is written and consumed segments removed.
    pub checkpoint_interval: Duration,
    /// Size in bytes at which a segment is sealed; at least 1024.
    pub segment_bytes_max: u64,
    /// The log's cap on disk in bytes: admission stops at it; at least 1.
    pub log_bytes_max: u64,
}

/// `[parquet]`: the event log written as Parquet files for DuckDB, Spark, pandas.
#[derive(Clone, Debug)]
pub struct ParquetConfig {
    /// Data folder; files go under `usage/date=.../hour=.../`.
    pub dir: PathBuf,
    /// How often the synced log is written out.
    pub roll_interval: Duration,
    /// Most events in one file; at least 1.
    pub rows_max: usize,
    /// Most bytes of events (as logged) in one file; at least 1.
    pub bytes_max: usize,
}

/// `[ledger]`: resource usage records and the holds taken to authorize them.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// How long a hold taken by `/v1/usage/authorize` waits for the usage that settles it;
    /// above zero.
    pub reservation_ttl: Duration,
    /// Holds kept at once; at least 1.
    pub reservations_max: usize,
    /// How far back record ids are remembered, and so the oldest usage a record may report:
    /// whole days, 1 to 3650.
    pub record_window: Duration,
    /// Record ids remembered at once; at least 1.
    pub records_max: usize,
    /// Records in one `/v1/usage` batch; at least 1.
    pub batch_records_max: usize,
    /// Largest `/v1/usage` body in bytes; at least 1024.
    pub body_bytes_max: usize,
}

/// One `[[team]]`: the organisation tree's top level, with a budget and rate limits shared by
/// all its keys.
#[derive(Clone, Debug)]
pub struct TeamConfig {
    /// Unique among teams; see [`is_name`].
    pub name: String,
    /// The organisation it reports to (free text; empty when the file names none).
    pub org: String,
    /// The team's budget, over all its projects.
    pub budget: BudgetSpec,
    /// Team-wide limits, shared by all its keys.
    pub rate: RateConfig,
    /// The group its calls go to past a share of its budget.
    pub downgrade: Option<DowngradeConfig>,
}

/// Rate limits, each a per-minute rate enforced by GCRA (a burst may use a minute's worth at
/// once); `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateConfig {
    /// Requests admitted per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens per minute, prompt and completion together.
    pub tokens_per_minute: Option<NonZeroU32>,
}

/// One `[[project]]`: a team's unit of work, with its own budget inside the team's.
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// Unique among projects; see [`is_name`].
    pub name: String,
    /// The owning team's name (checked to exist).
    pub team: String,
    /// The project's budget, over all its allocations.
    pub budget: BudgetSpec,
    /// The group its calls go to past a share of its budget.
    pub downgrade: Option<DowngradeConfig>,
}

/// One `[[allocation]]`: what a key charges; the budget, the cost center and the models allowed.
#[derive(Clone, Debug)]
pub struct AllocationConfig {
    /// Unique among allocations; see [`is_name`].
    pub name: String,
    /// The owning project's name (checked to exist).
    pub project: String,
    /// Cost center its spend is charged back to (free text).
    pub cost_center: String,
    /// Allow-list (`provider/model` or `provider/*`); empty allows every priced model.
    pub models: Vec<String>,
    /// The allocation's own budget.
    pub budget: BudgetSpec,
    /// `tight`: what its calls do when their whole bound does not fit (`clamp`, `wait`,
    /// `refuse`; default `clamp`).
    pub tight: Tight,
    /// The group its calls go to past a share of its budget.
    pub downgrade: Option<DowngradeConfig>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_config_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<Config> {
        let raw: RawConfig = parse_toml(text, origin)?;
        raw.validate(&Source { text, origin }, base)
    }

    /// The provider named `name`.
    #[must_use]
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// The text being validated and where it came from, so an error can name its line.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    /// The error for `field`, placed at `span` of the text.
    fn error(&self, field: &str, span: Range<usize>, reason: impl Into<String>) -> Error {
        config_error(self.text, self.origin, field, Some(span), reason.into())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rate_card: Spanned<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    parquet: RawParquet,
    kafka: Option<RawKafka>,
    leases: Option<RawLeases>,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    admission: RawAdmission,
    #[serde(default)]
    forecast: RawForecast,
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
    #[serde(default)]
    guards: guards::RawGuards,
    #[serde(default)]
    console: console::RawConsole,
    #[serde(default)]
    provider: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    alias: Vec<Spanned<RawAlias>>,
    #[serde(default)]
    default_provider: native::RawDefaultProviders,
    #[serde(default)]
    routing: routing::RawRouting,
    #[serde(default)]
    group: Vec<Spanned<routing::RawGroup>>,
    #[serde(default)]
    team: Vec<Spanned<RawTeam>>,
    #[serde(default)]
    project: Vec<Spanned<RawProject>>,
    #[serde(default)]
    allocation: Vec<Spanned<RawAllocation>>,
}

impl RawConfig {
    /// Checks each section in turn; the first error stops.
    fn validate(self, source: &Source<'_>, base: &Path) -> Result<Config> {
        let server = self.server.validate(source)?;
        let providers = crate::providers::config::providers(self.provider)
            .map_err(|e| source.error(&e.field, e.span, e.reason))?;
        let aliases = aliases(self.alias, &providers, source)?;
        let default_providers = self.default_provider.validate(&providers, source)?;
        let routing = self
            .routing
            .validate()
            .map_err(|(field, reason)| source.error(&format!("routing.{field}"), 0..0, reason))?;
        let groups = routing::groups(self.group, &providers, &aliases, &routing, source)?;
        let teams = teams(self.team, &groups, source)?;
        let projects = projects(self.project, &teams, &groups, source)?;
        let allocations = allocations(self.allocation, &projects, &groups, source)?;
        let reconcile_interval = self.kafka.as_ref().and_then(RawKafka::reconcile_interval);
        let control = self.kafka.as_ref().and_then(RawKafka::control);
        let alerts_topic = self.kafka.as_ref().and_then(RawKafka::alerts_topic);
        let leases = self
            .leases
            .map(|l| l.validate(self.kafka.as_ref(), source))
            .transpose()?;
        let kafka = self.kafka.map(|k| k.validate(source)).transpose()?;
        let ledger = self
            .ledger
            .validate()
            .map_err(|(field, reason)| source.error(&format!("ledger.{field}"), 0..0, reason))?;
        let admission = self
            .admission
            .validate()
            .map_err(|(field, reason)| source.error(&format!("admission.{field}"), 0..0, reason))?;
        let forecast_interval = ms(self.forecast.interval_ms, limits::FORECAST_INTERVAL);
        if forecast_interval < limits::FORECAST_INTERVAL_MIN {
            return Err(source.error("forecast.interval_ms", 0..0, "must be at least 100"));
        }
        let webhooks = webhooks(self.webhook, source)?;
        let guards = self.guards.validate(source)?;
        let parquet = self.parquet.resolve(base);
        let console =
            self.console
                .validate(source, base, parquet.as_ref().map(|p| p.dir.as_path()))?;
        Ok(Config {
            origin: source.origin.to_owned(),
            rate_card: resolve(base, self.rate_card.get_ref()),
            server,
            admin: AdminConfig {
                token_env: self.admin.token_env,
            },
            state_dir: resolve(base, &self.state.dir),
            events: self.events.resolve(base),
            parquet,
            kafka,
            reconcile_interval,
            control,
            alerts_topic,
            leases,
            ledger,
            forecast_interval,
            key_expiry_warning: ms(
                self.forecast.key_expiry_warning_ms,
                limits::KEY_EXPIRY_WARNING,
            ),
            webhooks,
            guards,
            console,
            admission,
            providers,
            aliases,
            default_providers,
            routing,
            groups,
            teams,
            projects,
            allocations,
        })
    }
}

fn ms(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_millis)
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn default_true() -> bool {
    true
}

// ---- [server] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    body_bytes_max: Option<usize>,
    header_bytes_max: Option<usize>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    requests_in_flight_max: Option<usize>,
    drain_timeout_ms: Option<u64>,
    worker_threads: Option<usize>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            body_bytes_max: None,
            header_bytes_max: None,
            header_timeout_ms: None,
            body_timeout_ms: None,
            requests_in_flight_max: None,
            drain_timeout_ms: None,
            worker_threads: None,
        }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}

impl RawServer {
    fn validate(&self, source: &Source<'_>) -> Result<ServerConfig> {
        let listen = self.listen.get_ref().parse::<SocketAddr>().map_err(|e| {
            source.error(
                "server.listen",
                self.listen.span(),
                format!("not an address like \"127.0.0.1:8080\": {e}"),
            )
        })?;
        let header_bytes_max = self.header_bytes_max.unwrap_or(limits::HEADER_BYTES_MAX);
        if header_bytes_max < 8192 {
            return Err(source.error("server.header_bytes_max", 0..0, "must be at least 8192"));
        }
        let worker_threads = match self.worker_threads {
            None | Some(0) => None,
            Some(n) if n > limits::WORKER_THREADS_MAX => {
                return Err(source.error(
                    "server.worker_threads",
                    0..0,
                    format!(
                        "{n} is more than {}; 0 or none means one per core",
                        limits::WORKER_THREADS_MAX
                    ),
                ));
            }
            Some(n) => Some(n),
        };
        Ok(ServerConfig {
            listen,
            body_bytes_max: self.body_bytes_max.unwrap_or(limits::BODY_BYTES_MAX),
            header_bytes_max,
            header_timeout: ms(self.header_timeout_ms, limits::HEADER_TIMEOUT),
            body_timeout: ms(self.body_timeout_ms, limits::BODY_TIMEOUT),
            requests_in_flight_max: self
                .requests_in_flight_max
                .unwrap_or(limits::REQUESTS_IN_FLIGHT_MAX)
                .max(1),
            drain_timeout: ms(self.drain_timeout_ms, limits::DRAIN_TIMEOUT),
            worker_threads,
        })
    }
}

// ---- [admin] and [state] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_token_env")]
    token_env: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            token_env: default_admin_token_env(),
        }
    }
}

fn default_admin_token_env() -> String {
    "TOLLGATE_ADMIN_TOKEN".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_state_dir")]
    dir: String,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> String {
    "state".to_owned()
}

// ---- [events] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default = "default_events_dir")]
    dir: String,
    queued_max: Option<usize>,
    sync_interval_ms: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    segment_bytes_max: Option<u64>,
    log_bytes_max: Option<u64>,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            dir: default_events_dir(),
            queued_max: None,
            sync_interval_ms: None,
            checkpoint_interval_ms: None,
            segment_bytes_max: None,
            log_bytes_max: None,
        }
    }
}

fn default_events_dir() -> String {
    "events".to_owned()
}

impl RawEvents {
    /// Defaults filled in and raised to their floors; nothing here is refused.
    fn resolve(&self, base: &Path) -> EventsConfig {
        EventsConfig {
            dir: resolve(base, &self.dir),
            queued_max: self.queued_max.unwrap_or(limits::EVENTS_QUEUED_MAX).max(1),
            sync_interval: ms(self.sync_interval_ms, limits::EVENTS_SYNC_INTERVAL),
            checkpoint_interval: ms(
                self.checkpoint_interval_ms,
                limits::EVENTS_CHECKPOINT_INTERVAL,
            ),
            segment_bytes_max: self
                .segment_bytes_max
                .unwrap_or(limits::EVENTS_SEGMENT_BYTES_MAX)
                .max(1024),
            log_bytes_max: self
                .log_bytes_max
                .unwrap_or(limits::EVENTS_LOG_BYTES_MAX)
                .max(1),
        }
    }
}

// ---- [parquet] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParquet {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_data_dir")]
    dir: String,
    roll_interval_ms: Option<u64>,
    rows_max: Option<usize>,
    bytes_max: Option<usize>,
}

impl Default for RawParquet {
    fn default() -> Self {
        RawParquet {
            enabled: true,
            dir: default_data_dir(),
            roll_interval_ms: None,
            rows_max: None,
            bytes_max: None,
        }
    }
}

fn default_data_dir() -> String {
    "data".to_owned()
}

impl RawParquet {
    /// `None` when turned off; defaults filled in and raised to their floors otherwise.
    fn resolve(&self, base: &Path) -> Option<ParquetConfig> {
        self.enabled.then(|| ParquetConfig {
            dir: resolve(base, &self.dir),
            roll_interval: ms(self.roll_interval_ms, limits::PARQUET_ROLL_INTERVAL),
            rows_max: self.rows_max.unwrap_or(limits::PARQUET_ROWS_MAX).max(1),
            bytes_max: self.bytes_max.unwrap_or(limits::PARQUET_BYTES_MAX).max(1),
        })
    }
}

// ---- [leases] ----

/// `[leases]`: each team's budget tree is owned by one coordinator (a member of the
/// consumer group `group` on the lease topic), which grants replicas leases ahead of their
/// spend; a replica's calls hold only within its leases.
#[derive(Clone, Debug)]
pub struct LeasesConfig {
    /// The lease topic (`topic`, `partitions`) on `[kafka]`'s brokers.
    pub log: tollgate_sink::leases::LeaseLogConfig,
    /// The coordinators' consumer group (`group`).
    pub group: String,
    /// Whether this replica is also a coordinator (`coordinate`, default true).
    pub coordinate: bool,
    /// A coordinator that misses heartbeats this long loses its trees (`session_timeout_ms`).
    pub session_timeout: Duration,
    /// A lease no call has held from this long goes back (`idle_ms`).
    pub idle: Duration,
    /// A replica asks for enough to serve its recent spend this long (`horizon_ms`).
    pub horizon: Duration,
    /// An ask not answered this long is asked again (`ask_timeout_ms`).
    pub ask_timeout: Duration,
    /// What a replica cut off from every coordinator (an ask unanswered for `ask_timeout`)
    /// may spend of an allocation past its lease, once per lease epoch and process life
    /// (`fail_open`, an amount; default 0, failing closed). A period's spend is then at most
    /// the limit plus this for every replica, lease epoch and life that failed open in it.
    pub fail_open: Nanos,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    #[serde(default = "default_lease_topic")]
    topic: String,
    partitions: Option<usize>,
    #[serde(default = "default_lease_group")]
    group: String,
    #[serde(default = "default_true")]
    coordinate: bool,
    session_timeout_ms: Option<u64>,
    idle_ms: Option<u64>,
    horizon_ms: Option<u64>,
    ask_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "some_amount")]
    fail_open: Option<Nanos>,
}

fn default_lease_topic() -> String {
    "tollgate.leases".to_owned()
}

fn default_lease_group() -> String {
    "tollgate.coordinators".to_owned()
}

impl RawLeases {
    fn validate(self, kafka: Option<&RawKafka>, source: &Source<'_>) -> Result<LeasesConfig> {
        let Some(kafka) = kafka.filter(|k| k.control) else {
            return Err(source.error(
                "leases",
                0..0,
                "needs [kafka] with its control topic on: coordinators and replicas must know \
                 every allocation and limit",
            ));
        };
        let partitions = self.partitions.unwrap_or(limits::LEASE_PARTITIONS);
        if partitions == 0 || partitions > limits::LEASE_PARTITIONS_MAX {
            return Err(source.error(
                "leases.partitions",
                0..0,
                format!("between 1 and {}", limits::LEASE_PARTITIONS_MAX),
            ));
        }
        let session_timeout = ms(self.session_timeout_ms, limits::LEASE_SESSION_TIMEOUT);
        if session_timeout < Duration::from_secs(1) {
            return Err(source.error("leases.session_timeout_ms", 0..0, "at least 1000"));
        }
        Ok(LeasesConfig {
            log: tollgate_sink::leases::LeaseLogConfig {
                brokers: kafka.brokers.get_ref().clone(),
                topic: self.topic,
                partitions,
                delivery_timeout: ms(kafka.delivery_timeout_ms, limits::KAFKA_DELIVERY_TIMEOUT),
            },
            group: self.group,
            coordinate: self.coordinate,
            session_timeout,
            idle: ms(self.idle_ms, limits::LEASE_IDLE),
            horizon: ms(self.horizon_ms, limits::LEASE_HORIZON),
            ask_timeout: ms(self.ask_timeout_ms, limits::LEASE_ASK_TIMEOUT),
            fail_open: self.fail_open.unwrap_or(Nanos(0)),
        })
    }
}

// ---- [kafka] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Spanned<String>,
    #[serde(default = "default_topic")]
    topic: String,
    delivery_timeout_ms: Option<u64>,
    replica: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    reconcile: bool,
    reconcile_interval_ms: Option<u64>,
    #[serde(default = "default_true")]
    control: bool,
    #[serde(default = "default_control_topic")]
    control_topic: String,
    #[serde(default = "default_true")]
    alerts: bool,
    #[serde(default = "default_alerts_topic")]
    alerts_topic: String,
}

fn default_alerts_topic() -> String {
    "tollgate.alerts".to_owned()
}

fn default_topic() -> String {
    "tollgate.usage".to_owned()
}

fn default_control_topic() -> String {
    "tollgate.control".to_owned()
}

impl RawKafka {
    /// How often other replicas' spend is applied; `None` when reconciliation is off.
    fn reconcile_interval(&self) -> Option<Duration> {
        self.reconcile
            .then(|| ms(self.reconcile_interval_ms, limits::RECONCILE_INTERVAL))
    }

    /// The topic every alert is also published to; `None` when `alerts = false`.
    fn alerts_topic(&self) -> Option<String> {
        self.alerts.then(|| self.alerts_topic.clone())
    }

    /// Where admin changes are shared: the same brokers and delivery timeout as the usage
    /// topic's; `None` when `control = false` keeps them in the local journal.
    fn control(&self) -> Option<tollgate_sink::control::ControlConfig> {
        self.control.then(|| tollgate_sink::control::ControlConfig {
            brokers: self.brokers.get_ref().clone(),
            topic: self.control_topic.clone(),
            delivery_timeout: ms(self.delivery_timeout_ms, limits::KAFKA_DELIVERY_TIMEOUT),
        })
    }

    fn validate(self, source: &Source<'_>) -> Result<tollgate_sink::kafka::KafkaConfig> {
        if self.brokers.get_ref().trim().is_empty() {
            return Err(source.error(
                "kafka.brokers",
                self.brokers.span(),
                "must list at least one broker (host:port)",
            ));
        }
        if let Some(replica) = self.replica.as_ref().filter(|r| !is_name(r.get_ref())) {
            return Err(source.error(
                "kafka.replica",
                replica.span(),
                "letters, digits, `-`, `_`, `.` and `@`, at most 128",
            ));
        }
        Ok(tollgate_sink::kafka::KafkaConfig {
            brokers: self.brokers.into_inner(),
            topic: self.topic,
            delivery_timeout: ms(self.delivery_timeout_ms, limits::KAFKA_DELIVERY_TIMEOUT),
            origin: self.replica.map(Spanned::into_inner).unwrap_or_default(),
        })
    }
}

// ---- [ledger] ----

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    reservation_ttl_ms: Option<u64>,
    reservations_max: Option<usize>,
    record_window_days: Option<u64>,
    records_max: Option<usize>,
    batch_records_max: Option<usize>,
    body_bytes_max: Option<usize>,
}

impl RawLedger {
    /// The section, or the field (under `ledger.`) that is out of range and why.
    fn validate(&self) -> Result<LedgerConfig, (&'static str, &'static str)> {
        let days = self
            .record_window_days
            .unwrap_or(limits::LEDGER_RECORD_WINDOW_DAYS);
        if !(1..=3650).contains(&days) {
            return Err(("record_window_days", "must be between 1 and 3650"));
        }
        let ttl = ms(self.reservation_ttl_ms, limits::LEDGER_RESERVATION_TTL);
        if ttl.is_zero() {
            return Err(("reservation_ttl_ms", "must be at least 1"));
        }
        Ok(LedgerConfig {
            reservation_ttl: ttl,
            reservations_max: self
                .reservations_max
                .unwrap_or(limits::LEDGER_RESERVATIONS_MAX)
                .max(1),
            record_window: Duration::from_secs(days * 86_400),
            records_max: self
                .records_max
                .unwrap_or(limits::LEDGER_RECORDS_MAX)
                .max(1),
            batch_records_max: self
                .batch_records_max
                .unwrap_or(limits::LEDGER_BATCH_RECORDS_MAX)
                .max(1),
            body_bytes_max: self
                .body_bytes_max
                .unwrap_or(limits::LEDGER_BODY_BYTES_MAX)
                .max(1024),
        })
    }
}

// ---- [admission] ----

/// `[admission]`: when every level has room for a call's least cost but holds in flight take
/// it, the call waits in its allocation's line (first come, first served) for those calls to
/// settle, and is refused with `429 budget_busy` only once its wait runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Longest a call waits for room held by calls in flight (`wait_ms_max`); 0: never waits.
    pub wait_max: Duration,
    /// Calls waiting at once, across allocations (`queued_max`); more get 429 at once.
    pub queued_max: usize,
    /// Output tokens a call must be able to afford to be admitted (`output_floor_tokens`): at
    /// the end of a budget its `max_tokens` is lowered to what the room affords, never below
    /// this.
    pub output_floor_tokens: u64,
    /// The percentile of what a key's (or agent's) streams of a model generated that a stream
    /// holds instead of its declared maximum (`learned_percentile`, 1 to 100; 0 holds the
    /// declared maximum).
    pub learned_percentile: u8,
    /// Streams a key (or agent) and model must have finished before their percentile is held
    /// (`learned_samples_min`); until then the model's, across keys, is.
    pub learned_samples_min: u32,
    /// Longest a stream is held back while calls in flight hold the room its hold needs to
    /// grow (`extend_wait_ms_max`), before it is stopped; 0 stops it at once.
    pub extend_wait_max: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            wait_max: limits::ADMISSION_WAIT_MAX,
            queued_max: limits::ADMISSION_QUEUED_MAX,
            output_floor_tokens: limits::ADMISSION_OUTPUT_FLOOR_TOKENS,
            learned_percentile: limits::ADMISSION_LEARNED_PERCENTILE,
            learned_samples_min: limits::ADMISSION_LEARNED_SAMPLES_MIN,
            extend_wait_max: limits::ADMISSION_EXTEND_WAIT_MAX,
        }
    }
}

/// One `[[webhook]]`: where every alert is delivered, at least once, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Unique among webhooks (its cursor's file name); see [`is_name`].
    pub name: String,
    /// An `http` or `https` URL, POSTed every alert.
    pub url: String,
    /// The body: the alert as written, or Slack's `{"text": ...}`.
    pub format: WebhookFormat,
    /// The variable holding the HMAC-SHA256 key the body is signed with (`tollgate-signature`).
    pub secret_env: Option<String>,
    /// Longest a delivery waits for its answer (`timeout_ms`); then it is sent again.
    pub timeout: Duration,
}

/// What a webhook is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert's JSON line, as in `alerts.jsonl`.
    Json,
    /// `{"text": "<what happened>"}`, as Slack's incoming webhooks (and Mattermost's) take it.
    Slack,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Spanned<String>,
    url: String,
    #[serde(default = "default_webhook_format")]
    format: WebhookFormat,
    secret_env: Option<String>,
    timeout_ms: Option<u64>,
}

fn default_webhook_format() -> WebhookFormat {
    WebhookFormat::Json
}

fn webhooks(raw: Vec<Spanned<RawWebhook>>, source: &Source<'_>) -> Result<Vec<WebhookConfig>> {
    let mut names = HashSet::new();
    let mut webhooks = Vec::with_capacity(raw.len());
    for (i, table) in raw.into_iter().enumerate() {
        let span = table.span();
        let raw = table.into_inner();
        let name = checked_name(&raw.name, &mut names, "webhook", i, source)?;
        let url_ok = raw
            .url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !url_ok {
            return Err(source.error(
                &format!("webhook[{i}].url"),
                span,
                "must be an http:// or https:// URL with a host",
            ));
        }
        let timeout = ms(raw.timeout_ms, limits::WEBHOOK_TIMEOUT);
        if timeout.is_zero() {
            return Err(source.error(
                &format!("webhook[{i}].timeout_ms"),
                span,
                "must be at least 1",
            ));
        }
        webhooks.push(WebhookConfig {
            name,
            url: raw.url,
            format: raw.format,
            secret_env: raw.secret_env,
            timeout,
        });
    }
    Ok(webhooks)
}

/// `[forecast]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForecast {
    interval_ms: Option<u64>,
    key_expiry_warning_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    wait_ms_max: Option<u64>,
    queued_max: Option<usize>,
    output_floor_tokens: Option<u64>,
    learned_percentile: Option<u8>,
    learned_samples_min: Option<u32>,
    extend_wait_ms_max: Option<u64>,
}

impl RawAdmission {
    /// The section, or the field (under `admission.`) that is out of range and why.
    fn validate(&self) -> Result<AdmissionConfig, (&'static str, &'static str)> {
        let wait_max = ms(self.wait_ms_max, limits::ADMISSION_WAIT_MAX);
        if wait_max > limits::ADMISSION_WAIT_LIMIT {
            return Err(("wait_ms_max", "must be at most 600000 (ten minutes)"));
        }
        let output_floor_tokens = self
            .output_floor_tokens
            .unwrap_or(limits::ADMISSION_OUTPUT_FLOOR_TOKENS);
        if output_floor_tokens == 0 {
            return Err(("output_floor_tokens", "must be at least 1"));
        }
        let learned_percentile = self
            .learned_percentile
            .unwrap_or(limits::ADMISSION_LEARNED_PERCENTILE);
        if learned_percentile > 100 {
            return Err(("learned_percentile", "must be 0 (off) to 100"));
        }
        let learned_samples_min = self
            .learned_samples_min
            .unwrap_or(limits::ADMISSION_LEARNED_SAMPLES_MIN);
        if learned_samples_min == 0 {
            return Err(("learned_samples_min", "must be at least 1"));
        }
        let extend_wait_max = ms(self.extend_wait_ms_max, limits::ADMISSION_EXTEND_WAIT_MAX);
        if extend_wait_max > limits::ADMISSION_WAIT_LIMIT {
            return Err(("extend_wait_ms_max", "must be at most 600000 (ten minutes)"));
        }
        Ok(AdmissionConfig {
            wait_max,
            queued_max: self.queued_max.unwrap_or(limits::ADMISSION_QUEUED_MAX),
            output_floor_tokens,
            learned_percentile,
            learned_samples_min,
            extend_wait_max,
        })
    }
}

// ---- [[alias]] ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    name: Spanned<String>,
    model: Spanned<String>,
}

/// Each alias: a name used once, for a `provider/model` of a provider above.
fn aliases(
    tables: Vec<Spanned<RawAlias>>,
    providers: &[ProviderConfig],
    source: &Source<'_>,
) -> Result<Vec<(String, ModelRef)>> {
    let mut aliases: Vec<(String, ModelRef)> = Vec::with_capacity(tables.len());
    for (i, raw) in tables.into_iter().enumerate() {
        let raw = raw.into_inner();
        let name = raw.name.get_ref().clone();
        if name.is_empty() || aliases.iter().any(|(n, _)| *n == name) {
            return Err(source.error(
                &format!("alias[{i}].name"),
                raw.name.span(),
                "must be a non-empty name used once",
            ));
        }
        let field = format!("alias[{i}].model");
        let target = ModelRef::parse(raw.model.get_ref())
            .map_err(|e| source.error(&field, raw.model.span(), e.to_string()))?;
        if !providers.iter().any(|p| p.name == target.provider()) {
            return Err(source.error(
                &field,
                raw.model.span(),
                format!("no provider named `{}`", target.provider()),
            ));
        }
        aliases.push((name, target));
    }
    Ok(aliases)
}

// ---- [[team]], [[project]], [[allocation]] ----

#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default, deserialize_with = "some_amount")]
    limit: Option<Nanos>,
    #[serde(default = "default_period")]
    period: Period,
    #[serde(default = "default_soft_limit")]
    soft_limit_percent: u8,
}

fn some_amount<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Nanos>, D::Error> {
    deserialize_amount(de).map(Some)
}

fn default_period() -> Period {
    Period::Month
}

fn default_soft_limit() -> u8 {
    80
}

fn unlimited() -> Spanned<RawBudget> {
    Spanned::new(
        0..0,
        RawBudget {
            limit: None,
            period: Period::Month,
            soft_limit_percent: 80,
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    name: Spanned<String>,
    #[serde(default)]
    org: String,
    #[serde(default = "unlimited")]
    budget: Spanned<RawBudget>,
    requests_per_minute: Option<NonZeroU32>,
    tokens_per_minute: Option<NonZeroU32>,
    downgrade: Option<routing::RawDowngrade>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: Spanned<String>,
    team: Spanned<String>,
    #[serde(default = "unlimited")]
    budget: Spanned<RawBudget>,
    downgrade: Option<routing::RawDowngrade>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllocation {
    name: Spanned<String>,
    project: Spanned<String>,
    #[serde(default)]
    cost_center: String,
    #[serde(default)]
    models: Vec<Spanned<String>>,
    #[serde(default = "unlimited")]
    budget: Spanned<RawBudget>,
    #[serde(default)]
    tight: Tight,
    downgrade: Option<routing::RawDowngrade>,
}

fn teams(
    tables: Vec<Spanned<RawTeam>>,
    groups: &[GroupConfig],
    source: &Source<'_>,
) -> Result<Vec<TeamConfig>> {
    let mut names = HashSet::new();
    let mut teams = Vec::with_capacity(tables.len());
    for (i, raw) in tables.into_iter().enumerate() {
        let raw = raw.into_inner();
        teams.push(TeamConfig {
            name: checked_name(&raw.name, &mut names, "team", i, source)?,
            org: raw.org,
            budget: budget(&raw.budget, &format!("team[{i}].budget"), source)?,
            rate: RateConfig {
                requests_per_minute: raw.requests_per_minute,
                tokens_per_minute: raw.tokens_per_minute,
            },
            downgrade: routing::downgrade(
                raw.downgrade,
                &format!("team[{i}].downgrade"),
                groups,
                source,
            )?,
        });
    }
    Ok(teams)
}

/// Each project, owned by one of `teams`.
fn projects(
    tables: Vec<Spanned<RawProject>>,
    teams: &[TeamConfig],
    groups: &[GroupConfig],
    source: &Source<'_>,
) -> Result<Vec<ProjectConfig>> {
    let mut names = HashSet::new();
    let mut projects = Vec::with_capacity(tables.len());
    for (i, raw) in tables.into_iter().enumerate() {
        let raw = raw.into_inner();
        let name = checked_name(&raw.name, &mut names, "project", i, source)?;
        if !teams.iter().any(|t| t.name == *raw.team.get_ref()) {
            return Err(source.error(
                &format!("project[{i}].team"),
                raw.team.span(),
                format!("no team named `{}`", raw.team.get_ref()),
            ));
        }
        projects.push(ProjectConfig {
            name,
            team: raw.team.into_inner(),
            budget: budget(&raw.budget, &format!("project[{i}].budget"), source)?,
            downgrade: routing::downgrade(
                raw.downgrade,
                &format!("project[{i}].downgrade"),
                groups,
                source,
            )?,
        });
    }
    Ok(projects)
}

/// Each allocation, owned by one of `projects`, its allow-list entries parsed.
fn allocations(
    tables: Vec<Spanned<RawAllocation>>,
    projects: &[ProjectConfig],
    groups: &[GroupConfig],
    source: &Source<'_>,
) -> Result<Vec<AllocationConfig>> {
    let mut names = HashSet::new();
    let mut allocations = Vec::with_capacity(tables.len());
    for (i, raw) in tables.into_iter().enumerate() {
        let raw = raw.into_inner();
        let name = checked_name(&raw.name, &mut names, "allocation", i, source)?;
        if !projects.iter().any(|p| p.name == *raw.project.get_ref()) {
            return Err(source.error(
                &format!("allocation[{i}].project"),
                raw.project.span(),
                format!("no project named `{}`", raw.project.get_ref()),
            ));
        }
        for (j, model) in raw.models.iter().enumerate() {
            if model.get_ref() == "*" {
                continue;
            }
            if let Err(e) = tollgate_engine::AllowList::parse(&[model.get_ref()]) {
                return Err(source.error(
                    &format!("allocation[{i}].models[{j}]"),
                    model.span(),
                    e.to_string(),
                ));
            }
        }
        allocations.push(AllocationConfig {
            name,
            project: raw.project.into_inner(),
            cost_center: raw.cost_center,
            models: raw.models.into_iter().map(Spanned::into_inner).collect(),
            budget: budget(&raw.budget, &format!("allocation[{i}].budget"), source)?,
            tight: raw.tight,
            downgrade: routing::downgrade(
                raw.downgrade,
                &format!("allocation[{i}].downgrade"),
                groups,
                source,
            )?,
        });
    }
    Ok(allocations)
}

/// An allow-list from config or API entries: none (or `["*"]`) allows every priced model.
pub fn allow_list<S: AsRef<str>>(entries: &[S]) -> Result<tollgate_engine::AllowList> {
    match entries {
        [] => Ok(tollgate_engine::AllowList::Any),
        [only] if only.as_ref() == "*" => Ok(tollgate_engine::AllowList::Any),
        _ => tollgate_engine::AllowList::parse(entries),
    }
}

/// Names of teams, projects, allocations and replicas: what fits in a metric label, a path
/// segment and a Parquet partition without quoting.
#[must_use]
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// `section[index].name`: one [`is_name`], not in `seen` (the section's names so far).
fn checked_name(
    raw: &Spanned<String>,
    seen: &mut HashSet<String>,
    section: &str,
    index: usize,
    source: &Source<'_>,
) -> Result<String> {
    let name = raw.get_ref();
    let field = format!("{section}[{index}].name");
    if !is_name(name) {
        return Err(source.error(
            &field,
            raw.span(),
            "must be 1 to 128 letters, digits, `-`, `_`, `.` or `@`",
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(source.error(
            &field,
            raw.span(),
            format!("{section} `{name}` is defined twice"),
        ));
    }
    Ok(name.clone())
}

/// A budget table at `field`, its soft limit a percentage from 1 to 100.
fn budget(raw: &Spanned<RawBudget>, field: &str, source: &Source<'_>) -> Result<BudgetSpec> {
    let RawBudget {
        limit,
        period,
        soft_limit_percent,
    } = *raw.get_ref();
    if !(1..=100).contains(&soft_limit_percent) {
        return Err(source.error(
            &format!("{field}.soft_limit_percent"),
            raw.span(),
            "must be between 1 and 100",
        ));
    }
    if period == Period::Minute {
        return Err(source.error(
            &format!("{field}.period"),
            raw.span(),
            "must be day, week, month or total (a per-minute limit is `requests_per_minute` or \
             `tokens_per_minute`)",
        ));
    }
    Ok(BudgetSpec {
        limit,
        period,
        soft_limit_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::guard::Action;

    const GOOD: &str = r#"
rate_card = "rates.toml"

[server]
listen = "127.0.0.1:0"

[[provider]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1/"
api_key_env = "OPENAI_API_KEY"

[[alias]]
name = "fast"
model = "openai/gpt-4o-mini"

[[team]]
name = "research"
org = "acme"
budget = { limit = "500.00", period = "month" }
requests_per_minute = 600

[[project]]
name = "chatbot"
team = "research"

[[allocation]]
name = "chatbot-prod"
project = "chatbot"
cost_center = "cc-4410"
models = ["openai/*"]
budget = { limit = 100, period = "day", soft_limit_percent = 90 }
"#;

    #[test]
    fn reads_a_good_config() {
        let config = Config::from_toml(GOOD, "tollgate.toml", Path::new("/etc/tollgate")).unwrap();
        assert_eq!(config.rate_card, Path::new("/etc/tollgate/rates.toml"));
        assert_eq!(config.providers[0].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(config.aliases[0].1.as_str(), "openai/gpt-4o-mini");
        assert_eq!(config.teams[0].budget.limit, Some(Nanos(500_000_000_000)));
        assert_eq!(
            config.teams[0].rate.requests_per_minute,
            NonZeroU32::new(600)
        );
        let alloc = &config.allocations[0];
        assert_eq!(alloc.budget.limit, Some(Nanos(100_000_000_000)));
        assert_eq!(alloc.budget.period, Period::Day);
        assert_eq!(alloc.budget.soft_limit_percent, 90);
        assert_eq!(config.projects[0].budget.limit, None);
        assert_eq!(config.events.queued_max, limits::EVENTS_QUEUED_MAX);
    }

    #[test]
    fn worker_threads_are_one_per_core_unless_set() {
        let with = |line: &str| {
            let toml = GOOD.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:0\"\n{line}"),
            );
            Config::from_toml(&toml, "tollgate.toml", Path::new("/etc/tollgate"))
        };
        assert_eq!(with("").unwrap().server.worker_threads, None);
        assert_eq!(
            with("worker_threads = 0").unwrap().server.worker_threads,
            None
        );
        assert_eq!(
            with("worker_threads = 3").unwrap().server.worker_threads,
            Some(3)
        );
        let too_many = with("worker_threads = 100000").err().unwrap().to_string();
        assert!(too_many.contains("server.worker_threads"), "{too_many}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let config =
            Config::load(&Path::new(&manifest).join("config/tollgate.example.toml")).unwrap();
        assert_eq!(config.providers.len(), 6);
        assert_eq!(
            config.provider("gemini").unwrap().base_url,
            "https://generativelanguage.googleapis.com"
        );
        assert_eq!(
            config.provider("vertex").unwrap().base_url,
            "https://us-central1-aiplatform.googleapis.com"
        );
        assert_eq!(
            config.provider("bedrock").unwrap().base_url,
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        assert_eq!(
            config.provider("azure").unwrap().api_version.as_deref(),
            Some("2024-10-21")
        );
        assert_eq!(config.allocations[0].name, "chatbot-prod");
        // The example writes out the defaults.
        assert_eq!(
            config.ledger.reservation_ttl,
            limits::LEDGER_RESERVATION_TTL
        );
        assert_eq!(config.ledger.records_max, limits::LEDGER_RECORDS_MAX);
        assert_eq!(
            config.ledger.record_window,
            std::time::Duration::from_secs(limits::LEDGER_RECORD_WINDOW_DAYS * 86_400)
        );
        assert_eq!(config.ledger.body_bytes_max, limits::LEDGER_BODY_BYTES_MAX);
    }

    #[test]
    fn the_ledger_section_is_checked() {
        let with = |section: &str| {
            Config::from_toml(
                &format!("{GOOD}\n{section}"),
                "tollgate.toml",
                Path::new("."),
            )
        };
        let config =
            with("[ledger]\nreservation_ttl_ms = 250\nrecord_window_days = 400\n").unwrap();
        assert_eq!(
            config.ledger.reservation_ttl,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            config.ledger.record_window,
            std::time::Duration::from_secs(400 * 86_400)
        );
        assert_eq!(
            config.ledger.batch_records_max,
            limits::LEDGER_BATCH_RECORDS_MAX
        );
        for (section, field) in [
            (
                "[ledger]\nrecord_window_days = 0\n",
                "ledger.record_window_days",
            ),
            (
                "[ledger]\nreservation_ttl_ms = 0\n",
                "ledger.reservation_ttl_ms",
            ),
            ("[ledger]\nttl = 5\n", "ledger.ttl"),
        ] {
            match with(section) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{section}"),
                other => panic!("{section}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_admission_section_and_an_allocations_tight_are_checked() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        assert_eq!(with("").unwrap().admission, AdmissionConfig::default());
        let config =
            with("[admission]\nwait_ms_max = 0\nqueued_max = 5\noutput_floor_tokens = 1\nlearned_percentile = 0\nlearned_samples_min = 3\nextend_wait_ms_max = 250\n")
                .unwrap();
        assert_eq!(
            config.admission,
            AdmissionConfig {
                wait_max: Duration::ZERO,
                queued_max: 5,
                output_floor_tokens: 1,
                learned_percentile: 0,
                learned_samples_min: 3,
                extend_wait_max: Duration::from_millis(250),
            }
        );
        for (section, field) in [
            (
                "[admission]\nwait_ms_max = 600001\n",
                "admission.wait_ms_max",
            ),
            (
                "[admission]\noutput_floor_tokens = 0\n",
                "admission.output_floor_tokens",
            ),
            (
                "[admission]\nlearned_percentile = 101\n",
                "admission.learned_percentile",
            ),
            (
                "[admission]\nlearned_samples_min = 0\n",
                "admission.learned_samples_min",
            ),
            (
                "[admission]\nextend_wait_ms_max = 600001\n",
                "admission.extend_wait_ms_max",
            ),
            ("[admission]\nwait = 5\n", "admission.wait"),
        ] {
            match with(section) {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{section}"),
                other => panic!("{section}: {other:?}"),
            }
        }
        let tight = "[[team]]\nname = \"t2\"\n[[project]]\nname = \"p2\"\nteam = \"t2\"\n\
                     [[allocation]]\nname = \"a2\"\nproject = \"p2\"\ntight = ";
        let config = with(&format!("{tight}\"refuse\"\n")).unwrap();
        let a2 = config.allocations.iter().find(|a| a.name == "a2").unwrap();
        assert_eq!(a2.tight, Tight::Refuse);
        let message = with(&format!("{tight}\"sometimes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("tight") && message.contains("sometimes"),
            "{message}"
        );
    }

    #[test]
    fn leases_need_kafka_with_its_control_topic_and_a_partition_count_in_range() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        let config = with("[kafka]\nbrokers = \"b:1\"\n\n[leases]\n").unwrap();
        let leases = config.leases.unwrap();
        assert_eq!(
            (
                leases.log.topic.as_str(),
                leases.log.partitions,
                leases.log.brokers.as_str()
            ),
            ("tollgate.leases", limits::LEASE_PARTITIONS, "b:1")
        );
        assert!(leases.coordinate);
        assert_eq!(leases.session_timeout, limits::LEASE_SESSION_TIMEOUT);
        assert_eq!(leases.fail_open, Nanos(0), "fails closed unless told");
        let config =
            with("[kafka]\nbrokers = \"b:1\"\n\n[leases]\ncoordinate = false\npartitions = 3\nidle_ms = 500\nfail_open = \"0.25\"\n")
                .unwrap();
        let leases = config.leases.unwrap();
        assert_eq!((leases.coordinate, leases.log.partitions), (false, 3));
        assert_eq!(leases.idle, Duration::from_millis(500));
        assert_eq!(leases.fail_open, Nanos(250_000_000));
        for (section, field) in [
            ("[leases]\n", "leases"),
            (
                "[kafka]\nbrokers = \"b:1\"\ncontrol = false\n\n[leases]\n",
                "leases",
            ),
            (
                "[kafka]\nbrokers = \"b:1\"\n\n[leases]\npartitions = 0\n",
                "leases.partitions",
            ),
            (
                "[kafka]\nbrokers = \"b:1\"\n\n[leases]\nsession_timeout_ms = 10\n",
                "leases.session_timeout_ms",
            ),
            (
                "[kafka]\nbrokers = \"b:1\"\n\n[leases]\ncoordinators = 2\n",
                "coordinators",
            ),
        ] {
            let message = with(section).unwrap_err().to_string();
            assert!(message.contains(field), "{section}: {message}");
        }
    }

    #[test]
    fn webhooks_forecasts_and_failing_open_are_checked_with_the_field_named() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        let config = with(
            "[forecast]\ninterval_ms = 500\n\n[[webhook]]\nname = \"finops\"\nurl = \"https://h.example/t\"\nsecret_env = \"S\"\n\n[[webhook]]\nname = \"chat\"\nurl = \"http://h.example/s\"\nformat = \"slack\"\ntimeout_ms = 900\n",
        )
        .unwrap();
        assert_eq!(config.forecast_interval, Duration::from_millis(500));
        assert_eq!(config.key_expiry_warning, limits::KEY_EXPIRY_WARNING);
        let warned = with("[forecast]\nkey_expiry_warning_ms = 3600000\n").unwrap();
        assert_eq!(warned.key_expiry_warning, Duration::from_secs(3_600));
        assert_eq!(config.webhooks.len(), 2);
        assert_eq!(
            (config.webhooks[0].format, config.webhooks[0].timeout),
            (WebhookFormat::Json, limits::WEBHOOK_TIMEOUT)
        );
        assert_eq!(
            (config.webhooks[1].format, config.webhooks[1].timeout),
            (WebhookFormat::Slack, Duration::from_millis(900))
        );
        let hook = |body: &str| format!("[[webhook]]\nname = \"h\"\n{body}\n");
        for (section, field) in [
            (
                "[forecast]\ninterval_ms = 10\n".to_owned(),
                "forecast.interval_ms",
            ),
            (hook("url = \"ftp://h.example/\""), "webhook[0].url"),
            (hook("url = \"not a url at all\""), "webhook[0].url"),
            (hook("url = \"http:///nohost\""), "webhook[0].url"),
            (
                hook("url = \"http://h/\"\ntimeout_ms = 0"),
                "webhook[0].timeout_ms",
            ),
            (hook("url = \"http://h/\"\nformat = \"xml\""), "format"),
            (
                format!(
                    "{}{}",
                    hook("url = \"http://h/\""),
                    hook("url = \"http://g/\"")
                ),
                "webhook[1].name",
            ),
            (
                "[kafka]\nbrokers = \"b:1\"\n\n[leases]\nfail_open = \"lots\"\n".to_owned(),
                "fail_open",
            ),
        ] {
            let message = with(&section).unwrap_err().to_string();
            assert!(message.contains(field), "{section}: {message}");
        }
    }

    #[test]
    fn guards_take_their_defaults_and_bad_values_are_named() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        assert_eq!(with("").unwrap().guards, GuardsConfig::default());
        let config = with(
            "[guards.loop]\n\n[[guards.velocity]]\nscope = \"agent\"\nper_minute = \"0.25\"\n\n[[guards.velocity]]\nscope = \"agent\"\nname = \"coder\"\nper_minute = \"1\"\naction = \"block\"\n",
        )
        .unwrap();
        let loops = config.guards.loops.unwrap();
        assert_eq!(
            (
                loops.rule.repeats,
                loops.rule.window_ms,
                loops.rule.growing_calls
            ),
            (5, 60_000, 8)
        );
        assert_eq!((loops.messages, loops.action), (2, Action::Throttle));
        let velocity = &config.guards.velocity;
        assert_eq!(velocity.len(), 2);
        assert_eq!(
            (velocity[0].scope, &velocity[0].name, velocity[0].per_minute),
            (Scope::Agent, &None, Nanos(250_000_000))
        );
        assert_eq!(
            (velocity[1].name.as_deref(), velocity[1].action),
            (Some("coder"), Action::Block)
        );
        let ceiling = |body: &str| format!("[[guards.velocity]]\n{body}\n");
        for (section, field) in [
            (
                "[guards.loop]\nrepeats = 1\n".to_owned(),
                "guards.loop.repeats",
            ),
            (
                "[guards.loop]\nrepeats = 33\n".to_owned(),
                "guards.loop.repeats",
            ),
            (
                "[guards.loop]\nwindow_ms = 0\n".to_owned(),
                "guards.loop.window_ms",
            ),
            (
                "[guards.loop]\ngrowing_calls = 1\n".to_owned(),
                "guards.loop.growing_calls",
            ),
            (
                "[guards.loop]\nmessages = 9\n".to_owned(),
                "guards.loop.messages",
            ),
            ("[guards.loop]\naction = \"kill\"\n".to_owned(), "action"),
            (ceiling("scope = \"team\"\nper_minute = \"1\""), "scope"),
            (
                ceiling("scope = \"key\"\nper_minute = \"0\""),
                "guards.velocity[0].per_minute",
            ),
            (
                ceiling("scope = \"key\"\nname = \"ada\"\nper_minute = \"1\""),
                "guards.velocity[0].name",
            ),
            (
                ceiling("scope = \"key\"\nper_minute = \"-1\""),
                "per_minute",
            ),
            (
                format!(
                    "{}{}",
                    ceiling("scope = \"key\"\nper_minute = \"1\""),
                    ceiling("scope = \"key\"\nper_minute = \"2\"")
                ),
                "guards.velocity[1]",
            ),
        ] {
            let message = with(&section).unwrap_err().to_string();
            assert!(message.contains(field), "{section}: {message}");
        }
    }

    #[test]
    fn kafka_reconciliation_is_on_by_default_and_replica_names_are_checked() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        let config = with("[kafka]\nbrokers = \"b:1\"\n").unwrap();
        assert_eq!(config.control.as_ref().unwrap().topic, "tollgate.control");
        assert_eq!(config.reconcile_interval, Some(limits::RECONCILE_INTERVAL));
        assert_eq!(config.kafka.unwrap().origin, "");
        let config =
            with("[kafka]\nbrokers = \"b:1\"\nreplica = \"gw-1\"\nreconcile_interval_ms = 250\n")
                .unwrap();
        assert_eq!(config.reconcile_interval, Some(Duration::from_millis(250)));
        assert_eq!(config.kafka.unwrap().origin, "gw-1");
        let off = with("[kafka]\nbrokers = \"b:1\"\nreconcile = false\ncontrol = false\n").unwrap();
        assert!(off.control.is_none());
        assert_eq!(off.reconcile_interval, None);
        assert_eq!(with("").unwrap().reconcile_interval, None);
        // Alerts go to their topic with [kafka], unless turned off.
        let on = with("[kafka]\nbrokers = \"b:1\"\n").unwrap();
        assert_eq!(on.alerts_topic.as_deref(), Some("tollgate.alerts"));
        let named = with("[kafka]\nbrokers = \"b:1\"\nalerts_topic = \"a\"\n").unwrap();
        assert_eq!(named.alerts_topic.as_deref(), Some("a"));
        assert_eq!(
            with("[kafka]\nbrokers = \"b:1\"\nalerts = false\n")
                .unwrap()
                .alerts_topic,
            None
        );
        assert_eq!(with("").unwrap().alerts_topic, None);
        let message = with("[kafka]\nbrokers = \"b:1\"\nreplica = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("kafka.replica"), "{message}");
    }

    #[test]
    fn a_kafka_section_needs_brokers() {
        let with = |section: &str| {
            Config::from_toml(
                &format!("{GOOD}\n{section}"),
                "tollgate.toml",
                Path::new("."),
            )
        };
        let config = with("[kafka]\nbrokers = \"127.0.0.1:9092\"\n").unwrap();
        let kafka = config.kafka.unwrap();
        assert_eq!(kafka.topic, "tollgate.usage");
        assert_eq!(kafka.delivery_timeout, limits::KAFKA_DELIVERY_TIMEOUT);
        let message = with("[kafka]\nbrokers = \" \"\n").unwrap_err().to_string();
        assert!(message.contains("kafka.brokers"), "{message}");
        let message = with("[kafka]\ntopic = \"t\"\n").unwrap_err().to_string();
        assert!(message.contains("brokers"), "{message}");
        assert!(
            Config::from_toml(GOOD, "t", Path::new("."))
                .unwrap()
                .kafka
                .is_none()
        );
    }

    /// The good config with `table` added before its aliases.
    fn with_table(table: &str) -> Result<Config> {
        Config::from_toml(
            &GOOD.replacen("[[alias]]", &format!("{table}\n[[alias]]"), 1),
            "tollgate.toml",
            Path::new("."),
        )
    }

    #[test]
    fn the_console_is_off_by_default_and_reads_the_parquet_folder_unless_told_otherwise() {
        assert_eq!(with_table("").unwrap().console, None);
        let on = with_table("[console]\nenabled = true\n").unwrap();
        let console = on.console.unwrap();
        assert_eq!(console.data_dir, on.parquet.unwrap().dir);
        assert_eq!(console.session_ttl, limits::CONSOLE_SESSION_TTL);
        assert_eq!(console.secure_cookie, SecureCookie::Auto);
        let named = with_table(
            "[console]\nenabled = true\ndata_dir = \"/srv/usage\"\nsecure_cookie = \"always\"\n",
        )
        .unwrap()
        .console
        .unwrap();
        assert_eq!(named.data_dir, PathBuf::from("/srv/usage"));
        assert_eq!(named.secure_cookie, SecureCookie::Always);
        for (table, field) in [
            (
                "[console]\nenabled = true\nsession_ttl_ms = 1000\n",
                "console.session_ttl_ms",
            ),
            (
                "[console]\nenabled = true\nsession_ttl_ms = 999999999999\n",
                "console.session_ttl_ms",
            ),
            (
                "[console]\nenabled = true\nsecure_cookie = \"sometimes\"\n",
                "secure_cookie",
            ),
            ("[console]\nenabled = true\nport = 1\n", "port"),
            (
                "[parquet]\nenabled = false\n[console]\nenabled = true\n",
                "console.data_dir",
            ),
        ] {
            let error = refusal_of(table);
            assert!(error.contains(field), "{table}: {error}");
        }
    }

    fn error_of(edit: (&str, &str)) -> String {
        let text = GOOD.replacen(edit.0, edit.1, 1);
        assert_ne!(text, GOOD, "edit {edit:?} did not apply");
        Config::from_toml(&text, "tollgate.toml", Path::new("."))
            .unwrap_err()
            .to_string()
    }

    /// The error `table` (added before the aliases) gets, as text.
    fn refusal_of(table: &str) -> String {
        with_table(table).unwrap_err().to_string()
    }

    const POOL: &str = r#"
[[provider]]
name = "pool"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "POOL_KEY"
[[provider.deployment]]
name = "east"
weight = 3
in_flight_max = 8
[[provider.deployment]]
name = "west"
base_url = "http://127.0.0.1:10/v1"
api_key_env = "WEST_KEY"
"#;

    #[test]
    fn deployments_inherit_their_providers_endpoint_and_override_it() {
        let config = with_table(POOL).unwrap();
        let pool = config.provider("pool").unwrap();
        let names: Vec<&str> = pool.deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["east", "west"]);
        let (east, west) = (&pool.deployments[0], &pool.deployments[1]);
        assert_eq!((east.weight, east.in_flight_max), (3, Some(8)));
        assert_eq!(east.endpoint.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(east.endpoint.api_key_env.as_deref(), Some("POOL_KEY"));
        assert_eq!((west.weight, west.in_flight_max), (1, None));
        assert_eq!(west.endpoint.base_url, "http://127.0.0.1:10/v1");
        assert_eq!(west.endpoint.api_key_env.as_deref(), Some("WEST_KEY"));
        // A provider listing none is one deployment, named after it.
        let openai = config.provider("openai").unwrap();
        assert_eq!(openai.deployments.len(), 1);
        assert_eq!(openai.deployments[0].name, "openai");
        assert_eq!(openai.deployments[0].endpoint.base_url, openai.base_url);
    }

    #[test]
    fn hostile_deployments_stop_start_up_with_the_field_named() {
        for (edit, field, reason) in [
            (
                ("weight = 3", "weight = 0"),
                "provider[1].deployment[0].weight",
                "at least 1",
            ),
            (
                ("name = \"west\"", "name = \"east\""),
                "provider[1].deployment[1].name",
                "used once",
            ),
            (
                ("name = \"west\"", "name = \"West Coast\""),
                "provider[1].deployment[1].name",
                "lower-case",
            ),
            (
                ("in_flight_max = 8", "in_flight_max = 0"),
                "provider[1].deployment[0].in_flight_max",
                "at least 1",
            ),
            (
                (
                    "base_url = \"http://127.0.0.1:10/v1\"",
                    "base_url = \"ftp://x\"",
                ),
                "provider[1].deployment[1].base_url",
                "http",
            ),
            (
                ("weight = 3", "weight = 3\nregion = \"eu\""),
                "provider[1].deployment[0].region",
                "bedrock",
            ),
            (
                ("weight = 3", "weight = 3\nprice = 1"),
                "",
                "unknown field `price`",
            ),
            (
                (
                    "weight = 3",
                    "weight = 3\nazure_deployments = { \"m\" = \"n\" }",
                ),
                "provider[1].deployment[0].azure_deployments",
                "azure",
            ),
        ] {
            let table = POOL.replacen(edit.0, edit.1, 1);
            assert_ne!(table, POOL, "{edit:?}");
            let error = refusal_of(&table);
            assert!(error.contains(field), "{field}: {error}");
            assert!(error.contains(reason), "{reason}: {error}");
        }
        // A provider with deployments needs a base URL somewhere for each.
        let table = POOL.replacen("base_url = \"http://127.0.0.1:9/v1\"\n", "", 1);
        let error = refusal_of(&table);
        assert!(
            error.contains("provider[1].deployment[0].base_url"),
            "{error}"
        );
        let many: String = (0..17)
            .map(|i| format!("[[provider.deployment]]\nname = \"d{i}\"\n"))
            .collect();
        let error = refusal_of(&format!(
            "[[provider]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\n{many}"
        ));
        assert!(error.contains("at most 16 deployments"), "{error}");
    }

    #[test]
    fn groups_list_configured_models_in_fallback_order() {
        let config = with_table(
            r#"
[routing]
retries = 1
balance = "least_in_flight"

[[group]]
name = "prod/chat"
balance = "latency"
candidates = [
  { model = "openai/gpt-4o", weight = 3 },
  { model = "openai/gpt-4o-mini", weight = 1 },
  { model = "openai/gpt-3.5-turbo" },
]

[[group]]
name = "cheap"
retries = 0
candidates = [{ model = "openai/gpt-4o-mini" }, { model = "openai/gpt-4o" }]
"#,
        )
        .unwrap();
        assert_eq!(config.routing.retries, 1);
        let prod = &config.groups[0];
        let weights: Vec<(String, u32)> = prod
            .candidates
            .iter()
            .map(|c| (c.model.to_string(), c.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("openai/gpt-4o".to_owned(), 3),
                ("openai/gpt-4o-mini".to_owned(), 1),
                ("openai/gpt-3.5-turbo".to_owned(), 0)
            ]
        );
        assert_eq!(prod.balance, tollgate_engine::routing::Balance::Latency);
        assert_eq!(prod.retries, 1, "the [routing] default");
        let cheap = &config.groups[1];
        // Unweighted: the first takes every first attempt, the rest are fallbacks.
        assert_eq!(cheap.candidates[0].weight, 1);
        assert_eq!(cheap.candidates[1].weight, 0);
        assert_eq!(
            cheap.balance,
            tollgate_engine::routing::Balance::LeastInFlight
        );
        assert_eq!(cheap.retries, 0);
    }

    #[test]
    fn hostile_groups_stop_start_up_with_the_field_named() {
        let group = |name: &str, candidates: &str| {
            format!("[[group]]\nname = \"{name}\"\ncandidates = [{candidates}]\n")
        };
        for (table, field, reason) in [
            (
                group("loop", r#"{ model = "loop" }"#),
                "group[0].candidates[0].model",
                "is a group",
            ),
            (
                group("a", r#"{ model = "openai/x" }"#) + &group("b", r#"{ model = "a" }"#),
                "group[1].candidates[0].model",
                "groups do not nest",
            ),
            (
                group("g", r#"{ model = "nope/x" }"#),
                "group[0].candidates[0].model",
                "no provider named `nope`",
            ),
            (
                group(
                    "g",
                    r#"{ model = "openai/x", weight = 0 }, { model = "openai/y" }"#,
                ),
                "group[0].candidates",
                "every weight is 0",
            ),
            (
                group("g", ""),
                "group[0].candidates",
                "at least one candidate",
            ),
            (
                group("g", r#"{ model = "openai/x" }, { model = "openai/x" }"#),
                "group[0].candidates[1].model",
                "listed twice",
            ),
            (
                group("openai/x", r#"{ model = "openai/y" }"#),
                "group[0].name",
                "would hide models of provider `openai`",
            ),
            (
                group("fast", r#"{ model = "openai/y" }"#),
                "group[0].name",
                "also an alias",
            ),
            (
                group("g", r#"{ model = "openai/x" }"#) + &group("g", r#"{ model = "openai/x" }"#),
                "group[1].name",
                "defined twice",
            ),
            (
                group("g", r#"{ model = "openai/x" }"#)
                    .replace("candidates", "attempts_max = 99\ncandidates"),
                "group[0].attempts_max",
                "1 to 8",
            ),
            (
                "[routing]\nattempts_max = 0".to_owned(),
                "routing.attempts_max",
                "1 to 8",
            ),
            (
                "[routing]\nbackoff_ms = 500\nbackoff_max_ms = 100".to_owned(),
                "routing.backoff_max_ms",
                "at least backoff_ms",
            ),
            (
                "[routing]\nretry_budget_percent = 101".to_owned(),
                "routing.retry_budget_percent",
                "0 to 100",
            ),
            (
                "[routing]\nbreaker_failures = 0".to_owned(),
                "routing.breaker_failures",
                "at least 1",
            ),
            (
                "[routing]\nbalance = \"random\"".to_owned(),
                "",
                "unknown variant `random`",
            ),
        ] {
            let error = refusal_of(&table);
            assert!(error.contains(field), "{field}: {error}");
            assert!(error.contains(reason), "{reason}: {error}");
        }
    }

    #[test]
    fn downgrades_name_a_configured_group() {
        let cheap =
            "[[group]]\nname = \"cheap\"\ncandidates = [{ model = \"openai/gpt-4o-mini\" }]\n";
        let premium = "[[group]]\nname = \"premium\"\ndowngrade = \"cheap\"\ncandidates = [{ model = \"openai/gpt-4o\" }]\n";
        let on_allocation = |downgrade: &str| {
            let text = GOOD
                .replacen("[[alias]]", &format!("{cheap}\n[[alias]]"), 1)
                .replacen(
                    "[[allocation]]\n",
                    &format!("[[allocation]]\ndowngrade = {downgrade}\n"),
                    1,
                );
            Config::from_toml(&text, "tollgate.toml", Path::new("."))
        };
        let config = on_allocation("{ at_percent = 90, to = \"cheap\" }").unwrap();
        assert_eq!(
            config.allocations[0].downgrade,
            Some(DowngradeConfig {
                at_percent: 90,
                to: "cheap".into()
            })
        );
        for (downgrade, field, reason) in [
            (
                "{ at_percent = 0, to = \"cheap\" }",
                "allocation[0].downgrade.at_percent",
                "1 to 100",
            ),
            (
                "{ at_percent = 101, to = \"cheap\" }",
                "allocation[0].downgrade.at_percent",
                "1 to 100",
            ),
            (
                "{ at_percent = 90, to = \"nope\" }",
                "allocation[0].downgrade.to",
                "no group named `nope`",
            ),
            ("{ at_percent = 90 }", "", "missing field `to`"),
        ] {
            let error = on_allocation(downgrade).unwrap_err().to_string();
            assert!(error.contains(field) && error.contains(reason), "{error}");
        }
        let config = with_table(&format!("{cheap}{premium}")).unwrap();
        assert_eq!(config.groups[1].downgrade.as_deref(), Some("cheap"));
        for (table, reason) in [
            (premium.to_owned(), "`cheap` must name another group"),
            (
                premium.replace("downgrade = \"cheap\"", "downgrade = \"premium\""),
                "`premium` must name another group",
            ),
        ] {
            let error = refusal_of(&table);
            assert!(
                error.contains("group[0].downgrade") && error.contains(reason),
                "{error}"
            );
        }
    }

    #[test]
    fn a_routes_default_provider_must_be_configured() {
        let config = with_table("[default_provider]\nchat_completions = \"openai\"").unwrap();
        let resolved = config
            .default_providers
            .resolve(crate::http::route::Api::ChatCompletions, "gpt-4o");
        assert_eq!(
            resolved.map(|m| m.to_string()).as_deref(),
            Some("openai/gpt-4o")
        );
        let unknown = with_table("[default_provider]\nmessages = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("default_provider.messages"), "{unknown}");
        assert!(unknown.contains("no provider named `nope`"), "{unknown}");
        let route = with_table("[default_provider]\nvideos = \"openai\"")
            .unwrap_err()
            .to_string();
        assert!(route.contains("videos"), "{route}");
    }

    #[test]
    fn gemini_providers_are_on_the_gemini_api_or_on_vertex_ai_and_say_which_field_is_wrong() {
        let api = with_table("[[provider]]\nname = \"g\"\nkind = \"gemini\"\napi_key_env = \"K\"")
            .unwrap();
        let g = api.provider("g").unwrap();
        assert_eq!(g.base_url, "https://generativelanguage.googleapis.com");
        assert_eq!(g.vertex, None);
        let vertex = with_table(
            "[[provider]]\nname = \"v\"\nkind = \"gemini\"\nproject = \"p-1\"\nlocation = \"europe-west4\"",
        )
        .unwrap();
        let v = vertex.provider("v").unwrap();
        assert_eq!(v.base_url, "https://europe-west4-aiplatform.googleapis.com");
        assert_eq!(
            v.vertex,
            Some(Vertex {
                project: "p-1".into(),
                location: "europe-west4".into()
            })
        );
        let global = with_table(
            "[[provider]]\nname = \"v\"\nkind = \"gemini\"\nproject = \"p\"\nlocation = \"global\"",
        )
        .unwrap();
        assert_eq!(
            global.provider("v").unwrap().base_url,
            "https://aiplatform.googleapis.com"
        );
        for (table, field, reason) in [
            (
                "kind = \"gemini\"\nproject = \"p\"",
                "provider[1].location",
                "beside `project`",
            ),
            (
                "kind = \"gemini\"\nlocation = \"us\"",
                "provider[1].project",
                "beside `location`",
            ),
            (
                "kind = \"gemini\"\nproject = \"a b\"\nlocation = \"us\"",
                "provider[1].project",
                "project id",
            ),
            (
                "kind = \"gemini\"\nproject = \"p\"\nlocation = \"../x\"",
                "provider[1].location",
                "location like",
            ),
            (
                "kind = \"openai\"\nbase_url = \"http://x\"\nproject = \"p\"",
                "provider[1].project",
                "gemini providers only",
            ),
            (
                "kind = \"gemini\"\nregion = \"us-east-1\"",
                "provider[1].region",
                "bedrock providers only",
            ),
            (
                "kind = \"gemini\"\napi_version = \"1\"",
                "provider[1].api_version",
                "azure providers only",
            ),
        ] {
            let message = with_table(&format!("[[provider]]\nname = \"x\"\n{table}"))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(field) && message.contains(reason),
                "{table:?} gave {message}"
            );
        }
    }

    #[test]
    fn bad_configs_name_the_field_and_line() {
        let cases = [
            (
                ("limit = 100,", "limit = 100.5,"),
                "tollgate.toml:32:",
                "allocation[0].budget.limit",
            ),
            (
                ("\"127.0.0.1:0\"", "\"localhost\""),
                "tollgate.toml:5:",
                "server.listen",
            ),
            (
                ("kind = \"openai\"", "kind = \"grpc\""),
                "tollgate.toml:9:",
                "provider[0].kind",
            ),
            (
                ("http://127.0.0.1:9/v1/", "ftp://x"),
                "tollgate.toml:10:",
                "provider[0].base_url",
            ),
            (
                ("openai/gpt-4o-mini", "nobody/x"),
                "tollgate.toml:15:",
                "alias[0].model",
            ),
            (
                ("team = \"research\"", "team = \"ghost\""),
                "tollgate.toml:25:",
                "project[0].team",
            ),
            (
                ("[\"openai/*\"]", "[\"gpt\"]"),
                "tollgate.toml:31:",
                "allocation[0].models[0]",
            ),
            (
                ("soft_limit_percent = 90", "soft_limit_percent = 0"),
                "tollgate.toml:32:",
                "allocation[0].budget.soft_limit_percent",
            ),
            (
                ("period = \"month\" }", "period = \"minute\" }"),
                "tollgate.toml:20:",
                "team[0].budget.period",
            ),
            (
                ("org = \"acme\"", "org = \"acme\"\nbogus = 1"),
                "tollgate.toml:20:",
                "team[0]",
            ),
            (
                ("name = \"chatbot-prod\"", "name = \"chat bot\""),
                "tollgate.toml:28:",
                "allocation[0].name",
            ),
        ];
        for (edit, position, field) in cases {
            let message = error_of(edit);
            assert!(
                message.starts_with(position) && message.contains(field),
                "{edit:?} gave {message}"
            );
        }
    }
}
