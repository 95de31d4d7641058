//! `tollgate demo` (part of the CLI binary): the whole system on embedded defaults, in one
//! process, in under a minute.
//!
//! It starts the mock provider and the gateway (durable event log, Parquet writer) on free local
//! ports, runs the bundled agent-fleet scenario against it (its allocations and keys made through
//! the admin API, one allocation running out and getting 402s), checks the books, stops the
//! gateway as `serve` stops on SIGTERM, and prints the chargeback by team and by model from the
//! Parquet files. Nothing outlives the command: every part is a task of this process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tollgate_gateway::config::Config;
use tollgate_gateway::runtime;
use tollgate_loadtest::harness::{self, HarnessError, Options};
use tollgate_loadtest::mock::{self, MockConfig};
use tollgate_loadtest::report::Report;
use tollgate_loadtest::scenario::Scenario;

/// Marks a folder as the demo's own, so a second run may clear it.
const MARKER: &str = ".tollgate-demo";
/// The admin token's variable; the demo hands the gateway a fresh token through it in process.
const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// What `tollgate demo` was asked for.
pub struct DemoOptions {
    /// Folder for config, state, events, Parquet and the load report.
    pub data: PathBuf,
    /// Seconds of load.
    pub seconds: u32,
    /// Agents in the fleet (the scenario's 2,000 when `None`).
    pub agents: Option<u32>,
}

/// Runs the demo in `options.data`: the gateway under load, its books checked, the chargeback
/// printed; an error if the books did not balance.
pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    let dir = prepare(&options.data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate-demo")
        .max_blocking_threads(tollgate_gateway::limits::BLOCKING_THREADS_MAX)
        .build()
        .context("starting the async runtime")?;
    let token = admin_token();
    let outcome = runtime.block_on(demo(&dir, options, &token))?;
    drop(runtime);
    print_chargeback(&dir.join("data"))?;
    print_where_to_look(&dir)?;
    anyhow::ensure!(
        outcome.balanced,
        "the books did not balance: {}",
        outcome.problems
    );
    Ok(())
}

/// The chargeback by team and by model, read back from the Parquet files in `parquet`.
fn print_chargeback(parquet: &Path) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock())?;
    for by in ["team", "model"] {
        writeln!(
            std::io::stdout().lock(),
            "Chargeback by {by} (from the Parquet files):"
        )?;
        crate::report::print(parquet, None, None, by, "table")?;
        writeln!(std::io::stdout().lock())?;
    }
    Ok(())
}

/// Where the demo left its Parquet files, load report and config, and how to read them.
fn print_where_to_look(dir: &Path) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let parquet = dir.join("data");
    let glob = parquet.join("usage").join("**").join("*.parquet");
    writeln!(
        out,
        "Usage events as Parquet: {}",
        parquet.join("usage").display()
    )?;
    writeln!(out, "Read them with DuckDB:")?;
    writeln!(
        out,
        "  duckdb -c \"SELECT team, model, count(*) AS calls, sum(cost) AS cost FROM read_parquet('{}', hive_partitioning = true) GROUP BY ALL ORDER BY cost DESC\"",
        glob.display()
    )?;
    writeln!(
        out,
        "Load report: {} (report.md, report.json, latency.svg)",
        dir.join("loadtest").display()
    )?;
    writeln!(
        out,
        "Run the same gateway yourself: tollgate serve --config {}",
        dir.join("tollgate.toml").display()
    )?;
    out.flush()?;
    Ok(())
}

/// Whether the load test's books balanced, and if not, what did not.
struct Outcome {
    /// Every check of the books passed.
    balanced: bool,
    /// The failed checks, `; `-separated (`not checked` when the books were not read).
    problems: String,
}

/// The demo's async part: mock provider and gateway up, the fleet's load, the gateway stopped
/// as on SIGTERM, the load report written and printed.
async fn demo(dir: &Path, options: &DemoOptions, token: &str) -> anyhow::Result<Outcome> {
    let mock_listener = mock::bind("127.0.0.1:0".parse()?)
        .await
        .context("starting the mock provider")?;
    let mock_address = mock_listener.local_addr()?;
    let mock_task = tokio::spawn(mock::serve(mock_listener, MockConfig::default()));
    let running = start_gateway(dir, mock_address, token).await?;
    let listener = tollgate_gateway::runtime::server::bind("127.0.0.1:0".parse()?)?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(running.serve(listener, async move {
        let _ = stopped.await;
    }));
    print_banner(dir, mock_address, address, options.seconds)?;
    let scenario = tollgate_loadtest::scenario::load("agent-fleet")?;
    let result = run_fleet(scenario, dir, address, options, token).await;
    // The gateway stops as `serve` does on SIGTERM, whatever the load did: drain, last sync,
    // last Parquet file.
    let _ = stop.send(());
    let served = server.await;
    mock_task.abort();
    served
        .context("the gateway's server task")?
        .context("writing the last usage events")?;
    let report = result.context("running the agent fleet")?;
    report.write(&dir.join("loadtest"))?;
    let mut out = std::io::stdout().lock();
    write!(out, "\n{}", report.markdown())?;
    let (balanced, problems) = match &report.books {
        Some(books) => (books.balanced(), books.problems.join("; ")),
        None => (false, "not checked".to_owned()),
    };
    Ok(Outcome { balanced, problems })
}

/// Writes the demo's rate card and config into `dir` and starts the gateway on them, as
/// `tollgate serve` does, with `token` as its admin token.
async fn start_gateway(
    dir: &Path,
    mock_address: SocketAddr,
    token: &str,
) -> anyhow::Result<runtime::Running> {
    let config_path = dir.join("tollgate.toml");
    std::fs::write(dir.join("rates.toml"), RATES).context("writing rates.toml")?;
    std::fs::write(&config_path, config_text(&format!("http://{mock_address}")))
        .context("writing tollgate.toml")?;
    let config = Config::load(&config_path)?;
    // The same start and stop as `tollgate serve`: the same background tasks, the same order.
    let env = |var: &str| {
        if var == ADMIN_TOKEN_ENV {
            Some(token.to_owned())
        } else {
            std::env::var(var).ok()
        }
    };
    let running = runtime::start(config, env, runtime::StartOptions::default()).await?;
    Ok(running)
}

/// What is running where, and what the load will do.
fn print_banner(
    dir: &Path,
    mock_address: SocketAddr,
    address: SocketAddr,
    seconds: u32,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "tollgate demo in {}", dir.display())?;
    writeln!(out, "  mock provider  http://{mock_address}")?;
    writeln!(
        out,
        "  gateway        http://{address}  (event log, Parquet every second)"
    )?;
    writeln!(
        out,
        "  load           agent-fleet for {seconds} s; one allocation runs out and gets 402s"
    )?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// The agent-fleet `scenario` against the gateway at `address`, its books checked
/// against the Parquet files in `dir`.
async fn run_fleet(
    scenario: Scenario,
    dir: &Path,
    address: SocketAddr,
    options: &DemoOptions,
    token: &str,
) -> Result<Report, HarnessError> {
    harness::run(Options {
        scenario,
        gateway: format!("http://{address}"),
        admin_token: token.to_owned(),
        direct: None,
        direct_key: None,
        parquet_dir: Some(dir.join("data")),
        seconds: Some(options.seconds),
        agents: options.agents,
        progress: true,
        tag: Some("demo".to_owned()),
        settle: Duration::from_secs(30),
    })
    .await
}

/// Makes `dir` ready: created when missing, cleared when it is an earlier demo's, refused when
/// it holds anything else.
fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            anyhow::ensure!(
                dir.join(MARKER).exists(),
                "{} is not empty and is not an earlier demo's folder; pass --data with a new folder",
                dir.display()
            );
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("clearing the earlier demo in {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by tollgate demo; a later demo may clear it\n",
    )?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    Ok(dir)
}

/// A fresh admin token for this run (never printed: the demo's own harness uses it).
fn admin_token() -> String {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        // Only the demo's own process can reach the admin API on a loopback port it picked;
        // the time is enough entropy for that.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The demo's rate card: the documented example card.
const RATES: &str = include_str!("../../../config/rates.example.toml");

/// The demo's gateway config: three teams, their projects, and the mock provider answering as
/// OpenAI and as Anthropic. The fleet's allocations and keys are made at run time through the
/// admin API, as an operator would.
fn config_text(mock: &str) -> String {
    format!(
        r#"# Written by `tollgate demo`. Serve it again with: tollgate serve --config tollgate.toml
rate_card = "rates.toml"

[server]
listen = "127.0.0.1:0"

[admin]
token_env = "{ADMIN_TOKEN_ENV}"

[state]
dir = "state"

[events]
dir = "events"

[parquet]
enabled = true
dir = "data"
roll_interval_ms = 1000

[[provider]]
name = "openai"
kind = "openai"
base_url = "{mock}/v1"

[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"

[[team]]
name = "research"
org = "acme"

[[team]]
name = "platform"
org = "acme"
budget = {{ limit = "5000.00", period = "month" }}

[[team]]
name = "support"
org = "acme"

[[project]]
name = "research-agents"
team = "research"

[[project]]
name = "platform-ci"
team = "platform"

[[project]]
name = "support-bot"
team = "support"
"#
    )
}
