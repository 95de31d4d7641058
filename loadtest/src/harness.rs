//! `run --scenario`: sets a scenario up on the gateway, runs it (and its baselines), checks the
//! books and assembles the report.
//!
//! Agent scenarios run against the gateway, then (given the provider's address) the same load
//! direct, so the report can say what the gateway added. The `overhead` scenario runs the
//! provider direct, a bare pass-through proxy and the gateway at each connection count, one
//! after the other in the same process, so all three see the same machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;

use crate::books::{self, BooksError, Setup};
use crate::fleet::{self, Attempt, Plan, Target};
use crate::http::Admin;
use crate::report::{Added, Figures, GuardFigures, Report};
use crate::scenario::{Load, Overhead, Scenario};

/// What to run and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// The gateway's origin (`http://127.0.0.1:8080`).
    pub gateway: String,
    /// The gateway's admin token (the run creates its allocations and keys with it).
    pub admin_token: String,
    /// The provider's origin, for the direct baseline (`http://127.0.0.1:9100`).
    pub direct: Option<String>,
    /// The provider's key for direct calls, if it wants one.
    pub direct_key: Option<String>,
    /// The gateway's Parquet directory, for the books.
    pub parquet_dir: Option<PathBuf>,
    /// Override of the scenario's seconds (the overhead scenario's seconds per run).
    pub seconds: Option<u32>,
    /// Override of the scenario's agent count.
    pub agents: Option<u32>,
    /// Progress lines on stderr.
    pub progress: bool,
    /// The run's tag; a fresh one when `None`.
    pub tag: Option<String>,
    /// How long the books wait for the last events to reach the Parquet files.
    pub settle: Duration,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Setting up or checking the books.
    #[error(transparent)]
    Books(#[from] BooksError),
    /// A URL.
    #[error("`{0}` is not an http://host:port origin")]
    Url(String),
    /// The overhead scenario needs the provider's address.
    #[error("the overhead scenario needs --direct (the provider's origin) for its baselines")]
    NoDirect,
    /// Starting the proxy.
    #[error("starting the pass-through proxy: {0}")]
    Proxy(std::io::Error),
}

/// Runs `options` and returns the report (written by the caller).
pub async fn run(options: Options) -> Result<Report, HarnessError> {
    let scenario = Arc::new(overridden(&options));
    let tag = options.tag.clone().unwrap_or_else(fresh_tag);
    let client = crate::http::client();
    let admin = Admin::new(client.clone(), &options.gateway, &options.admin_token);
    let gateway = target("gateway", &options.gateway, true)?;
    let direct = options
        .direct
        .as_deref()
        .map(|d| target("direct", d, false))
        .transpose()?;
    let agents = match &scenario.overhead {
        Some(overhead) => overhead.connections.iter().copied().max().unwrap_or(1),
        None => scenario.fleet.agents,
    };
    let setup = books::prepare(&admin, &scenario, agents, &tag).await?;
    let mut report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        load: match scenario.load {
            Load::Closed => "closed loop (each agent waits for its answer)".to_owned(),
            Load::Open { rate_per_s, .. } => {
                format!("open loop, {rate_per_s} calls/s whatever the answers do")
            }
        },
        tag,
        runs: Vec::new(),
        added: None,
        books: None,
        guards: None,
    };
    let runs = Runs {
        scenario: &scenario,
        setup: &setup,
        client: &client,
        options: &options,
    };
    let attempts = match scenario.overhead.clone() {
        Some(overhead) => {
            let direct = direct.ok_or(HarnessError::NoDirect)?;
            runs.overhead(&overhead, &direct, &gateway, &mut report)
                .await?
        }
        None => {
            runs.agents(agents, &gateway, direct.as_ref(), &mut report)
                .await
        }
    };
    let guards = GuardFigures::of(&attempts, &setup.agents);
    if guards.looping_agents > 0 || guards.refused_looping + guards.refused_others > 0 {
        report.guards = Some(guards);
    }
    if let Some(dir) = &options.parquet_dir {
        report.books =
            Some(books::check(&admin, &setup.allocations, &attempts, dir, options.settle).await?);
    }
    Ok(report)
}

/// The scenario with the command line's seconds and agents in place of its own.
fn overridden(options: &Options) -> Scenario {
    let mut scenario = options.scenario.clone();
    if let Some(seconds) = options.seconds {
        scenario.seconds = seconds;
        if let Some(overhead) = &mut scenario.overhead {
            overhead.seconds_per_run = seconds;
        }
    }
    if let Some(agents) = options.agents {
        scenario.fleet.agents = agents;
        scenario.fleet.looping_agents = scenario.fleet.looping_agents.min(agents);
    }
    scenario
}

/// What every run of one harness invocation shares.
struct Runs<'a> {
    scenario: &'a Arc<Scenario>,
    setup: &'a Setup,
    client: &'a crate::http::Client,
    options: &'a Options,
}

impl Runs<'_> {
    /// The `overhead` comparison: at each connection count, the provider direct, the bare
    /// proxy and the gateway, one after the other. Returns the gateway's attempts.
    async fn overhead(
        &self,
        overhead: &Overhead,
        direct: &Target,
        gateway: &Target,
        report: &mut Report,
    ) -> Result<Vec<Attempt>, HarnessError> {
        let mut attempts = Vec::new();
        let proxy = start_proxy(direct).await?;
        for &connections in &overhead.connections {
            for target in [direct, &proxy.0, gateway] {
                let mut plan = plan(
                    self.scenario,
                    target,
                    self.setup,
                    connections,
                    overhead.seconds_per_run,
                    overhead.warmup_s,
                    self.options.progress,
                );
                if !target.provider_prefixed {
                    plan = unmetered(plan, self.options.direct_key.as_deref());
                }
                let record = fleet::run(plan, self.client.clone()).await;
                report
                    .runs
                    .push(Figures::of(target.name, connections, &record));
                if target.name == "gateway" {
                    attempts.extend(record.attempts);
                }
            }
        }
        proxy.1.abort();
        Ok(attempts)
    }

    /// An agent scenario: the fleet through the gateway, then (given the provider) the same
    /// load direct, and what the gateway added. Returns the gateway's attempts.
    async fn agents(
        &self,
        agents: u32,
        gateway: &Target,
        direct: Option<&Target>,
        report: &mut Report,
    ) -> Vec<Attempt> {
        let seconds = self.scenario.seconds;
        let progress = self.options.progress;
        let metered = plan(
            self.scenario,
            gateway,
            self.setup,
            agents,
            seconds,
            0,
            progress,
        );
        let record = fleet::run(metered, self.client.clone()).await;
        report.runs.push(Figures::of("gateway", agents, &record));
        let attempts = record.attempts;
        if let Some(direct) = direct {
            let plan = unmetered(
                plan(
                    self.scenario,
                    direct,
                    self.setup,
                    agents,
                    seconds,
                    0,
                    progress,
                ),
                self.options.direct_key.as_deref(),
            );
            let record = fleet::run(plan, self.client.clone()).await;
            let figures = Figures::of("direct", agents, &record);
            let gateway = &report.runs[0];
            report.added = Some(Added {
                p50_ms: gateway.latency.p50_ms - figures.latency.p50_ms,
                p99_ms: gateway.latency.p99_ms - figures.latency.p99_ms,
            });
            report.runs.push(figures);
        }
        attempts
    }
}

fn plan(
    scenario: &Arc<Scenario>,
    target: &Target,
    setup: &Setup,
    agents: u32,
    seconds: u32,
    warmup_s: u32,
    progress: bool,
) -> Plan {
    Plan {
        scenario: Arc::clone(scenario),
        target: target.clone(),
        agents: setup.agents.iter().take(agents as usize).cloned().collect(),
        allocations: setup.allocations.clone(),
        prices: Some(setup.prices.clone()),
        duration: Duration::from_secs(u64::from(seconds)),
        warmup: Duration::from_secs(u64::from(warmup_s)),
        progress,
    }
}

/// The same fleet against the provider direct or through the bare proxy: the provider's key,
/// and no prices (nothing is billed there).
fn unmetered(mut plan: Plan, key: Option<&str>) -> Plan {
    let key: Arc<str> = Arc::from(key.unwrap_or("direct"));
    plan.prices = None;
    for agent in &mut plan.agents {
        agent.key = Arc::clone(&key);
    }
    plan
}

fn target(
    name: &'static str,
    origin: &str,
    provider_prefixed: bool,
) -> Result<Target, HarnessError> {
    let uri: Uri = origin
        .parse()
        .map_err(|_| HarnessError::Url(origin.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(HarnessError::Url(origin.to_owned()));
    }
    Ok(Target {
        name,
        base_url: format!("{}/v1", origin.trim_end_matches('/')),
        provider_prefixed,
    })
}

async fn start_proxy(
    direct: &Target,
) -> Result<(Target, tokio::task::JoinHandle<std::io::Result<()>>), HarnessError> {
    let upstream: Uri = direct
        .base_url
        .trim_end_matches("/v1")
        .parse()
        .map_err(|_| HarnessError::Url(direct.base_url.clone()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(HarnessError::Proxy)?;
    let address = listener.local_addr().map_err(HarnessError::Proxy)?;
    let task = tokio::spawn(crate::proxy::serve(listener, upstream));
    Ok((
        Target {
            name: "proxy",
            base_url: format!("http://{address}/v1"),
            provider_prefixed: false,
        },
        task,
    ))
}

/// A tag unique to this run: the time in milliseconds, base 36.
fn fresh_tag() -> String {
    let mut millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut tag = Vec::new();
    while millis > 0 {
        let digit = u8::try_from(millis % 36).unwrap_or(0);
        tag.push(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        });
        millis /= 36;
    }
    tag.reverse();
    String::from_utf8(tag).unwrap_or_default()
}
