//! `tollgate.toml`: the gateway's config, parsed into typed values before anything starts.
//!
//! A bad file stops start-up with `file:line:column: `field.path`: reason`. Secrets never live
//! in the file: a provider names the environment variable holding its key, and so does the admin
//! token. Relative paths are taken from the config file's folder, so a config and its rate card
//! travel together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_engine::config::{config_error, parse_toml, read_config_file};
use tollgate_engine::money::deserialize_amount;
use tollgate_engine::{BudgetSpec, Error, ModelRef, Nanos, Period};
use toml::Spanned;

use crate::limits;
use crate::providers::config::RawProvider;
pub use crate::providers::config::{ProviderConfig, ProviderKind, Vertex};

type Result<T, E = Error> = std::result::Result<T, E>;

/// The whole config, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the file was read from (for messages).
    pub origin: String,
    /// The rate card file.
    pub rate_card: PathBuf,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Where keys, allocations created at run time and the audit log live.
    pub state_dir: PathBuf,
    /// Where usage events go.
    pub events: EventsConfig,
    /// Parquet output of the event log (`None`: off).
    pub parquet: Option<ParquetConfig>,
    /// Kafka shipping of the event log (`None`: off). Its `origin` is empty unless
    /// `kafka.replica` names one; the gateway then uses the id kept in its state folder.
    pub kafka: Option<tollgate_sink::kafka::KafkaConfig>,
    /// How often other replicas' spend, read from the topic, is applied to the budget table
    /// (`None`: no reconciliation; only with `[kafka]`).
    pub reconcile_interval: Option<Duration>,
    /// The resource ledger (`/v1/usage`).
    pub ledger: LedgerConfig,
    /// Upstreams by name.
    pub providers: Vec<ProviderConfig>,
    /// Fixed model aliases.
    pub aliases: Vec<(String, ModelRef)>,
    /// The organisation tree and its budgets.
    pub teams: Vec<TeamConfig>,
    /// Projects.
    pub projects: Vec<ProjectConfig>,
    /// Allocations.
    pub allocations: Vec<AllocationConfig>,
}

/// `[server]`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Largest request head.
    pub header_bytes_max: usize,
    /// Time for a client to send its head.
    pub header_timeout: Duration,
    /// Time for a client to send its body.
    pub body_timeout: Duration,
    /// Requests in flight at once.
    pub requests_in_flight_max: usize,
    /// Graceful shutdown's wait for in-flight streams.
    pub drain_timeout: Duration,
}

/// `[admin]`.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The environment variable holding the admin token.
    pub token_env: String,
}

/// `[events]`.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// Folder of the local event log.
    pub dir: PathBuf,
    /// Events waiting for the writer before new requests are refused.
    pub queued_max: usize,
    /// Longest an event waits before it is synced (group commit).
    pub sync_interval: Duration,
    /// How often the spend checkpoint is written and consumed segments removed.
    pub checkpoint_interval: Duration,
    /// Size at which a segment is sealed.
    pub segment_bytes_max: u64,
    /// The log's cap on disk: admission stops at it.
    pub log_bytes_max: u64,
}

/// `[parquet]`: the event log written as Parquet files for DuckDB, Spark, pandas.
#[derive(Clone, Debug)]
pub struct ParquetConfig {
    /// Data folder; files go under `usage/date=.../hour=.../`.
    pub dir: PathBuf,
    /// How often the synced log is written out.
    pub roll_interval: Duration,
    /// Most events in one file.
    pub rows_max: usize,
    /// Most bytes of events (as logged) in one file.
    pub bytes_max: usize,
}

/// `[ledger]`: resource usage records and the holds taken to authorize them.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// How long a hold taken by `/v1/usage/authorize` waits for the usage that settles it.
    pub reservation_ttl: Duration,
    /// Holds kept at once.
    pub reservations_max: usize,
    /// How far back record ids are remembered, and so the oldest usage a record may report.
    pub record_window: Duration,
    /// Record ids remembered at once.
    pub records_max: usize,
    /// Records in one `/v1/usage` batch.
    pub batch_records_max: usize,
    /// Largest `/v1/usage` body.
    pub body_bytes_max: usize,
}

/// One `[[team]]`.
#[derive(Clone, Debug)]
pub struct TeamConfig {
    /// Name.
    pub name: String,
    /// Organisation.
    pub org: String,
    /// Budget.
    pub budget: BudgetSpec,
    /// Team-wide limits, shared by all its keys.
    pub rate: RateConfig,
}

/// Requests and tokens per minute; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateConfig {
    /// Requests per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens (in and out) per minute.
    pub tokens_per_minute: Option<NonZeroU32>,
}

/// One `[[project]]`.
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// Name.
    pub name: String,
    /// Owning team.
    pub team: String,
    /// Budget.
    pub budget: BudgetSpec,
}

/// One `[[allocation]]`.
#[derive(Clone, Debug)]
pub struct AllocationConfig {
    /// Name.
    pub name: String,
    /// Owning project.
    pub project: String,
    /// Cost center charged.
    pub cost_center: String,
    /// Allow-list (`provider/model` or `provider/*`); empty allows every priced model.
    pub models: Vec<String>,
    /// Budget.
    pub budget: BudgetSpec,
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
        raw.validate(text, origin, base)
    }

    /// The provider named `name`.
    #[must_use]
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
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
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    provider: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    alias: Vec<Spanned<RawAlias>>,
    #[serde(default)]
    team: Vec<Spanned<RawTeam>>,
    #[serde(default)]
    project: Vec<Spanned<RawProject>>,
    #[serde(default)]
    allocation: Vec<Spanned<RawAllocation>>,
}

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
        }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}

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
}

fn default_topic() -> String {
    "tollgate.usage".to_owned()
}

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

fn default_true() -> bool {
    true
}

fn default_data_dir() -> String {
    "data".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    name: Spanned<String>,
    model: Spanned<String>,
}

#[derive(Deserialize)]
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

impl RawBudget {
    fn spec(&self) -> BudgetSpec {
        BudgetSpec {
            limit: self.limit,
            period: self.period,
            soft_limit_percent: self.soft_limit_percent,
        }
    }
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: Spanned<String>,
    team: Spanned<String>,
    #[serde(default = "unlimited")]
    budget: Spanned<RawBudget>,
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
}

fn ms(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_millis)
}

/// `tollgate sink`'s config: where the topic is, and where and how Parquet files are written.
/// Its own small file, since a sink runs apart from any gateway.
#[derive(Debug)]
pub struct SinkConfig {
    /// What the sink consumes and writes.
    pub consume: tollgate_sink::consume::ConsumeConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkConfig {
    kafka: RawSinkKafka,
    #[serde(default)]
    parquet: RawSinkParquet,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkKafka {
    brokers: Spanned<String>,
    #[serde(default = "default_topic")]
    topic: String,
    #[serde(default = "default_group")]
    group_id: String,
}

fn default_group() -> String {
    tollgate_sink::consume::defaults::GROUP_ID.to_owned()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSinkParquet {
    dir: Option<String>,
    rows_max: Option<usize>,
    bytes_max: Option<usize>,
    roll_interval_ms: Option<u64>,
    dedup_window: Option<usize>,
}

impl SinkConfig {
    /// Reads and validates `path`; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<SinkConfig> {
        let text = read_config_file(path)?;
        let origin = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let raw: RawSinkConfig = parse_toml(&text, &origin)?;
        if raw.kafka.brokers.get_ref().trim().is_empty() {
            return Err(config_error(
                &text,
                &origin,
                "kafka.brokers",
                Some(raw.kafka.brokers.span()),
                "name at least one broker (host:port)".into(),
            ));
        }
        let positive = |value: Option<usize>, field: &str, default: usize| match value {
            Some(0) => Err(config_error(
                &text,
                &origin,
                field,
                None,
                "must be above 0".into(),
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        use tollgate_sink::consume::defaults;
        let parquet = raw.parquet;
        Ok(SinkConfig {
            consume: tollgate_sink::consume::ConsumeConfig {
                brokers: raw.kafka.brokers.into_inner(),
                topic: raw.kafka.topic,
                group_id: raw.kafka.group_id,
                data_dir: resolve(base, parquet.dir.as_deref().unwrap_or("data")),
                rows_max: positive(parquet.rows_max, "parquet.rows_max", defaults::ROWS_MAX)?,
                bytes_max: positive(parquet.bytes_max, "parquet.bytes_max", defaults::BYTES_MAX)?,
                roll_interval: parquet
                    .roll_interval_ms
                    .map_or(defaults::ROLL_INTERVAL, Duration::from_millis),
                dedup_window: positive(
                    parquet.dedup_window,
                    "parquet.dedup_window",
                    defaults::DEDUP_WINDOW,
                )?,
            },
        })
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

impl RawConfig {
    #[expect(
        clippy::too_many_lines,
        reason = "one pass over the file's sections, in order"
    )]
    fn validate(self, text: &str, origin: &str, base: &Path) -> Result<Config> {
        let err = |field: String, span: std::ops::Range<usize>, reason: String| {
            config_error(text, origin, &field, Some(span), reason)
        };
        let listen = self
            .server
            .listen
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|e| {
                err(
                    "server.listen".into(),
                    self.server.listen.span(),
                    format!("not an address like \"127.0.0.1:8080\": {e}"),
                )
            })?;
        let server = ServerConfig {
            listen,
            body_bytes_max: self.server.body_bytes_max.unwrap_or(limits::BODY_BYTES_MAX),
            header_bytes_max: self
                .server
                .header_bytes_max
                .unwrap_or(limits::HEADER_BYTES_MAX),
            header_timeout: ms(self.server.header_timeout_ms, limits::HEADER_TIMEOUT),
            body_timeout: ms(self.server.body_timeout_ms, limits::BODY_TIMEOUT),
            requests_in_flight_max: self
                .server
                .requests_in_flight_max
                .unwrap_or(limits::REQUESTS_IN_FLIGHT_MAX)
                .max(1),
            drain_timeout: ms(self.server.drain_timeout_ms, limits::DRAIN_TIMEOUT),
        };
        if server.header_bytes_max < 8192 {
            return Err(err(
                "server.header_bytes_max".into(),
                0..0,
                "must be at least 8192".into(),
            ));
        }

        let providers = crate::providers::config::providers(self.provider)
            .map_err(|e| err(e.field, e.span, e.reason))?;

        let mut aliases: Vec<(String, ModelRef)> = Vec::new();
        for (i, raw) in self.alias.into_iter().enumerate() {
            let raw = raw.into_inner();
            let name = raw.name.get_ref().clone();
            if name.is_empty() || aliases.iter().any(|(n, _)| *n == name) {
                return Err(err(
                    format!("alias[{i}].name"),
                    raw.name.span(),
                    "must be a non-empty name used once".into(),
                ));
            }
            let target = ModelRef::parse(raw.model.get_ref())
                .map_err(|e| err(format!("alias[{i}].model"), raw.model.span(), e.to_string()))?;
            if !providers.iter().any(|p| p.name == target.provider()) {
                return Err(err(
                    format!("alias[{i}].model"),
                    raw.model.span(),
                    format!("no provider named `{}`", target.provider()),
                ));
            }
            aliases.push((name, target));
        }

        let mut names = HashSet::new();
        let mut teams = Vec::new();
        for (i, raw) in self.team.into_iter().enumerate() {
            let raw = raw.into_inner();
            let name = checked_name(&raw.name, &mut names, "team", i, &err)?;
            teams.push(TeamConfig {
                name,
                org: raw.org,
                budget: budget(&raw.budget, &format!("team[{i}].budget"), &err)?,
                rate: RateConfig {
                    requests_per_minute: raw.requests_per_minute,
                    tokens_per_minute: raw.tokens_per_minute,
                },
            });
        }
        names.clear();
        let mut projects = Vec::new();
        for (i, raw) in self.project.into_iter().enumerate() {
            let raw = raw.into_inner();
            let name = checked_name(&raw.name, &mut names, "project", i, &err)?;
            if !teams.iter().any(|t| t.name == *raw.team.get_ref()) {
                return Err(err(
                    format!("project[{i}].team"),
                    raw.team.span(),
                    format!("no team named `{}`", raw.team.get_ref()),
                ));
            }
            projects.push(ProjectConfig {
                name,
                team: raw.team.into_inner(),
                budget: budget(&raw.budget, &format!("project[{i}].budget"), &err)?,
            });
        }
        names.clear();
        let mut allocations = Vec::new();
        for (i, raw) in self.allocation.into_iter().enumerate() {
            let raw = raw.into_inner();
            let name = checked_name(&raw.name, &mut names, "allocation", i, &err)?;
            if !projects.iter().any(|p| p.name == *raw.project.get_ref()) {
                return Err(err(
                    format!("allocation[{i}].project"),
                    raw.project.span(),
                    format!("no project named `{}`", raw.project.get_ref()),
                ));
            }
            for (j, model) in raw.models.iter().enumerate() {
                if model.get_ref() == "*" {
                    continue;
                }
                if let Err(e) = tollgate_engine::AllowList::parse(&[model.get_ref()]) {
                    return Err(err(
                        format!("allocation[{i}].models[{j}]"),
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
                budget: budget(&raw.budget, &format!("allocation[{i}].budget"), &err)?,
            });
        }

        Ok(Config {
            origin: origin.to_owned(),
            rate_card: resolve(base, self.rate_card.get_ref()),
            server,
            admin: AdminConfig {
                token_env: self.admin.token_env,
            },
            state_dir: resolve(base, &self.state.dir),
            events: EventsConfig {
                dir: resolve(base, &self.events.dir),
                queued_max: self
                    .events
                    .queued_max
                    .unwrap_or(limits::EVENTS_QUEUED_MAX)
                    .max(1),
                sync_interval: ms(self.events.sync_interval_ms, limits::EVENTS_SYNC_INTERVAL),
                checkpoint_interval: ms(
                    self.events.checkpoint_interval_ms,
                    limits::EVENTS_CHECKPOINT_INTERVAL,
                ),
                segment_bytes_max: self
                    .events
                    .segment_bytes_max
                    .unwrap_or(limits::EVENTS_SEGMENT_BYTES_MAX)
                    .max(1024),
                log_bytes_max: self
                    .events
                    .log_bytes_max
                    .unwrap_or(limits::EVENTS_LOG_BYTES_MAX)
                    .max(1),
            },
            reconcile_interval: self
                .kafka
                .as_ref()
                .filter(|k| k.reconcile)
                .map(|k| ms(k.reconcile_interval_ms, limits::RECONCILE_INTERVAL)),
            kafka: match self.kafka {
                None => None,
                Some(raw) if raw.brokers.get_ref().trim().is_empty() => {
                    return Err(err(
                        "kafka.brokers".into(),
                        raw.brokers.span(),
                        "must list at least one broker (host:port)".into(),
                    ));
                }
                Some(raw) if raw.replica.as_ref().is_some_and(|r| !is_name(r.get_ref())) => {
                    let span = raw.replica.as_ref().map_or(0..0, Spanned::span);
                    return Err(err(
                        "kafka.replica".into(),
                        span,
                        "letters, digits, `-`, `_`, `.` and `@`, at most 128".into(),
                    ));
                }
                Some(raw) => Some(tollgate_sink::kafka::KafkaConfig {
                    brokers: raw.brokers.into_inner(),
                    topic: raw.topic,
                    delivery_timeout: ms(raw.delivery_timeout_ms, limits::KAFKA_DELIVERY_TIMEOUT),
                    origin: raw.replica.map(Spanned::into_inner).unwrap_or_default(),
                }),
            },
            ledger: ledger(&self.ledger).map_err(|(field, reason)| {
                err(format!("ledger.{field}"), 0..0, reason.to_owned())
            })?,
            parquet: self.parquet.enabled.then(|| ParquetConfig {
                dir: resolve(base, &self.parquet.dir),
                roll_interval: ms(self.parquet.roll_interval_ms, limits::PARQUET_ROLL_INTERVAL),
                rows_max: self
                    .parquet
                    .rows_max
                    .unwrap_or(limits::PARQUET_ROWS_MAX)
                    .max(1),
                bytes_max: self
                    .parquet
                    .bytes_max
                    .unwrap_or(limits::PARQUET_BYTES_MAX)
                    .max(1),
            }),
            providers,
            aliases,
            teams,
            projects,
            allocations,
        })
    }
}

fn ledger(raw: &RawLedger) -> Result<LedgerConfig, (&'static str, &'static str)> {
    let days = raw
        .record_window_days
        .unwrap_or(limits::LEDGER_RECORD_WINDOW_DAYS);
    if !(1..=3650).contains(&days) {
        return Err(("record_window_days", "must be between 1 and 3650"));
    }
    let ttl = ms(raw.reservation_ttl_ms, limits::LEDGER_RESERVATION_TTL);
    if ttl.is_zero() {
        return Err(("reservation_ttl_ms", "must be at least 1"));
    }
    Ok(LedgerConfig {
        reservation_ttl: ttl,
        reservations_max: raw
            .reservations_max
            .unwrap_or(limits::LEDGER_RESERVATIONS_MAX)
            .max(1),
        record_window: Duration::from_secs(days * 86_400),
        records_max: raw.records_max.unwrap_or(limits::LEDGER_RECORDS_MAX).max(1),
        batch_records_max: raw
            .batch_records_max
            .unwrap_or(limits::LEDGER_BATCH_RECORDS_MAX)
            .max(1),
        body_bytes_max: raw
            .body_bytes_max
            .unwrap_or(limits::LEDGER_BODY_BYTES_MAX)
            .max(1024),
    })
}

/// An allow-list from config or API entries: none (or `["*"]`) allows every priced model.
pub fn allow_list<S: AsRef<str>>(entries: &[S]) -> Result<tollgate_engine::AllowList> {
    match entries {
        [] => Ok(tollgate_engine::AllowList::Any),
        [only] if only.as_ref() == "*" => Ok(tollgate_engine::AllowList::Any),
        _ => tollgate_engine::AllowList::parse(entries),
    }
}

/// Names of teams, projects, allocations and providers: what fits in a metric label, a path
/// segment and a Parquet partition without quoting.
#[must_use]
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn checked_name(
    raw: &Spanned<String>,
    seen: &mut HashSet<String>,
    section: &str,
    index: usize,
    err: &impl Fn(String, std::ops::Range<usize>, String) -> Error,
) -> Result<String> {
    let name = raw.get_ref();
    if !is_name(name) {
        return Err(err(
            format!("{section}[{index}].name"),
            raw.span(),
            "must be 1 to 128 letters, digits, `-`, `_`, `.` or `@`".into(),
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(err(
            format!("{section}[{index}].name"),
            raw.span(),
            format!("{section} `{name}` is defined twice"),
        ));
    }
    Ok(name.clone())
}

fn budget(
    raw: &Spanned<RawBudget>,
    field: &str,
    err: &impl Fn(String, std::ops::Range<usize>, String) -> Error,
) -> Result<BudgetSpec> {
    let spec = raw.get_ref().spec();
    if spec.soft_limit_percent == 0 || spec.soft_limit_percent > 100 {
        return Err(err(
            format!("{field}.soft_limit_percent"),
            raw.span(),
            "must be between 1 and 100".into(),
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_example_sink_config_is_valid_and_bad_ones_say_where() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let dir = Path::new(&manifest).join("config");
        let config = SinkConfig::load(&dir.join("sink.example.toml")).unwrap();
        let consume = &config.consume;
        assert_eq!(consume.brokers, "127.0.0.1:9092");
        assert_eq!(consume.group_id, "tollgate-sink");
        assert_eq!(consume.data_dir, dir.join("data"));
        assert_eq!(consume.roll_interval, Duration::from_secs(60));
        let temp =
            std::env::temp_dir().join(format!("tollgate-sink-config-{}", std::process::id()));
        std::fs::create_dir_all(&temp).unwrap();
        let check = |text: &str, expect: &str| {
            let path = temp.join("sink.toml");
            std::fs::write(&path, text).unwrap();
            let message = SinkConfig::load(&path).unwrap_err().to_string();
            assert!(message.contains(expect), "{message}");
            assert!(message.contains("sink.toml:"), "{message}");
        };
        check("[parquet]\ndir = \"x\"\n", "kafka");
        check("[kafka]\nbrokers = \" \"\n", "kafka.brokers");
        check(
            "[kafka]\nbrokers = \"b:1\"\n[parquet]\nrows_max = 0\n",
            "parquet.rows_max",
        );
        check("[kafka]\nbrokers = \"b:1\"\ntopics = \"t\"\n", "topics");
        std::fs::remove_dir_all(&temp).unwrap();
    }

    #[test]
    fn kafka_reconciliation_is_on_by_default_and_replica_names_are_checked() {
        let with = |section: &str| {
            Config::from_toml(&format!("{GOOD}\n{section}"), "t.toml", Path::new("."))
        };
        let config = with("[kafka]\nbrokers = \"b:1\"\n").unwrap();
        assert_eq!(config.reconcile_interval, Some(limits::RECONCILE_INTERVAL));
        assert_eq!(config.kafka.unwrap().origin, "");
        let config =
            with("[kafka]\nbrokers = \"b:1\"\nreplica = \"gw-1\"\nreconcile_interval_ms = 250\n")
                .unwrap();
        assert_eq!(config.reconcile_interval, Some(Duration::from_millis(250)));
        assert_eq!(config.kafka.unwrap().origin, "gw-1");
        let off = with("[kafka]\nbrokers = \"b:1\"\nreconcile = false\n").unwrap();
        assert_eq!(off.reconcile_interval, None);
        assert_eq!(with("").unwrap().reconcile_interval, None);
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

    fn error_of(edit: (&str, &str)) -> String {
        let text = GOOD.replacen(edit.0, edit.1, 1);
        assert_ne!(text, GOOD, "edit {edit:?} did not apply");
        Config::from_toml(&text, "tollgate.toml", Path::new("."))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn gemini_providers_are_on_the_gemini_api_or_on_vertex_ai_and_say_which_field_is_wrong() {
        let with = |table: &str| {
            Config::from_toml(
                &GOOD.replacen("[[alias]]", &format!("{table}\n[[alias]]"), 1),
                "tollgate.toml",
                Path::new("."),
            )
        };
        let api =
            with("[[provider]]\nname = \"g\"\nkind = \"gemini\"\napi_key_env = \"K\"").unwrap();
        let g = api.provider("g").unwrap();
        assert_eq!(g.base_url, "https://generativelanguage.googleapis.com");
        assert_eq!(g.vertex, None);
        let vertex = with(
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
        let global = with(
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
            let message = with(&format!("[[provider]]\nname = \"x\"\n{table}"))
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
