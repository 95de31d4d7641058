//! `tollgate-loadtest`: the mock provider, the agent-fleet harness and the load generator.
//!
//! `tollgate-loadtest mock-provider --listen 127.0.0.1:0` prints `mock provider listening on
//! http://ADDR` once it accepts connections, then serves until killed. `tollgate-loadtest run
//! --scenario smoke --gateway http://...` runs a scenario, checks the books and writes its
//! report; `bench --url ...` drives one endpoint with one fixed request and prints one JSON line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;

use tollgate_loadtest::harness::{self, Options};
use tollgate_loadtest::load::{self, LoadConfig};
use tollgate_loadtest::mock::{self, Behaviour, MockConfig};
use tollgate_loadtest::scenario;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mock provider and load generator for tollgate.
#[derive(Parser)]
#[command(name = "tollgate-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a mock provider speaking OpenAI's, Anthropic's, Azure's and Bedrock's APIs.
    #[command(alias = "mock")]
    MockProvider {
        /// Address to listen on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Require this provider key from callers.
        #[arg(long, env = "MOCK_PROVIDER_KEY")]
        api_key: Option<String>,
        /// How it answers when a request does not say (a request's `"mock"` object wins).
        #[command(flatten)]
        behaviour: Behaviour,
    },
    /// Run a scenario (bundled: smoke, agent-fleet, overhead, streams, runaway; or a TOML file)
    /// against a gateway, check the books and write report.json, report.md and latency.svg.
    Run {
        /// Bundled scenario name or scenario file.
        #[arg(long)]
        scenario: String,
        /// The gateway's origin.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// The gateway's admin token (the run creates its allocations and keys).
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// The provider's origin: the same load direct, for the gateway's added latency (and
        /// the overhead scenario's baselines).
        #[arg(long)]
        direct: Option<String>,
        /// The provider's key for direct calls, if it checks one.
        #[arg(long, env = "TOLLGATE_DIRECT_KEY", hide_env_values = true)]
        direct_key: Option<String>,
        /// The gateway's Parquet directory (its `[parquet] dir`): the books are checked there.
        #[arg(long)]
        parquet: Option<PathBuf>,
        /// Where the report goes.
        #[arg(long, default_value = "loadtest-report")]
        out: PathBuf,
        /// Override the scenario's seconds (overhead: seconds per run).
        #[arg(long)]
        seconds: Option<u32>,
        /// Override the scenario's agent count.
        #[arg(long)]
        agents: Option<u32>,
        /// Exit non-zero unless the books balance (needs --parquet).
        #[arg(long)]
        require_balanced: bool,
        /// Seconds the books wait for the last events to reach the Parquet files (a Kafka sink
        /// behind a broker outage needs longer than the gateway's own writer).
        #[arg(long, default_value_t = 30)]
        settle_s: u64,
    },
    /// Drive an endpoint with N keep-alive connections, one fixed request, and report
    /// throughput and latency as one JSON line.
    Bench {
        /// Full URL of the endpoint.
        #[arg(long)]
        url: String,
        /// Bearer key (a tollgate virtual key, or a provider key when going direct).
        #[arg(long, env = "TOLLGATE_KEY")]
        key: Option<String>,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Seconds to record.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Seconds of warm-up first (not recorded).
        #[arg(long, default_value_t = 1)]
        warmup_s: u64,
        /// Most requests recorded.
        #[arg(long, default_value_t = 10_000_000)]
        requests_max: u64,
        /// Model.
        #[arg(long, default_value = "openai/gpt-4o-mini")]
        model: String,
        /// Completion tokens per answer.
        #[arg(long, default_value_t = 16)]
        max_tokens: u64,
        /// Stream answers.
        #[arg(long)]
        stream: bool,
        /// Prompt size in bytes.
        #[arg(long, default_value_t = 1_000)]
        prompt_bytes: usize,
        /// Milliseconds the mock provider waits before each token.
        #[arg(long)]
        token_ms: Option<u64>,
    },
    /// Open N streaming requests at once and hold them while `--hold-s` passes.
    Hold {
        /// Full URL of the endpoint.
        #[arg(long)]
        url: String,
        /// Bearer key.
        #[arg(long, env = "TOLLGATE_KEY")]
        key: Option<String>,
        /// Streams to hold.
        #[arg(long, default_value_t = 1_000)]
        streams: usize,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value_t = 10)]
        hold_s: u64,
        /// Milliseconds the mock provider waits before each token (long: streams stay open).
        #[arg(long, default_value_t = 1_000)]
        token_ms: u64,
        /// Model.
        #[arg(long, default_value = "openai/gpt-4o-mini")]
        model: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MockProvider {
            listen,
            api_key,
            behaviour,
        } => run_mock(listen, api_key, behaviour),
        Command::Run {
            scenario,
            gateway,
            admin_token,
            direct,
            direct_key,
            parquet,
            out,
            seconds,
            agents,
            require_balanced,
            settle_s,
        } => run_scenario(
            &scenario,
            Options {
                scenario: match scenario::load(&scenario) {
                    Ok(s) => s,
                    Err(e) => return fail(&e),
                },
                gateway,
                admin_token,
                direct,
                direct_key,
                parquet_dir: parquet,
                seconds,
                agents,
                progress: true,
                tag: None,
                settle: Duration::from_secs(settle_s),
            },
            &out,
            require_balanced,
        ),
        Command::Bench {
            url,
            key,
            connections,
            duration_s,
            warmup_s,
            requests_max,
            model,
            max_tokens,
            stream,
            prompt_bytes,
            token_ms,
        } => run_load(&LoadConfig {
            url,
            key,
            connections,
            duration: Duration::from_secs(duration_s),
            warmup: Duration::from_secs(warmup_s),
            requests_max,
            model,
            max_tokens,
            stream,
            prompt_bytes,
            mock: token_ms.map(|ms| serde_json::json!({ "token_ms": ms })),
        }),
        Command::Hold {
            url,
            key,
            streams,
            hold_s,
            token_ms,
            model,
        } => run_hold(
            &LoadConfig {
                url,
                key,
                connections: streams,
                duration: Duration::from_secs(hold_s),
                warmup: Duration::ZERO,
                requests_max: streams as u64,
                model,
                max_tokens: 100_000,
                stream: true,
                prompt_bytes: 100,
                mock: Some(serde_json::json!({ "token_ms": token_ms })),
            },
            hold_s,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {error}");
    ExitCode::FAILURE
}

fn run_scenario(
    name: &str,
    options: Options,
    out: &std::path::Path,
    require_balanced: bool,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let checked = options.parquet_dir.is_some();
    let report = runtime
        .block_on(harness::run(options))
        .map_err(std::io::Error::other)?;
    report.write(out)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.markdown())?;
    writeln!(stdout, "\nreport: {}", out.display())?;
    let balanced = report.books.as_ref().is_some_and(|b| b.balanced());
    if require_balanced && !(checked && balanced) {
        return Err(std::io::Error::other(format!(
            "{name}: the books do not balance (or were not checked: pass --parquet)"
        )));
    }
    Ok(())
}

fn run_mock(
    listen: SocketAddr,
    api_key: Option<String>,
    behaviour: Behaviour,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = mock::bind(listen).await?;
        let address = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "mock provider listening on http://{address}")?;
            out.flush()?;
        }
        mock::serve(listener, MockConfig { api_key, behaviour }).await
    })
}

fn run_load(config: &LoadConfig) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(load::run(config))
        .map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", report.to_json(config))?;
    Ok(())
}

fn run_hold(config: &LoadConfig, hold_s: u64) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(load::hold(config, |report| {
            let line = serde_json::json!({
                "holding": report.opened,
                "failed": report.failed,
                "first_error": report.first_error,
                "ramp_s": report.ramp.as_secs_f64(),
            });
            // Printed while the streams are open, so a script can measure the gateway now.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            tokio::time::sleep(Duration::from_secs(hold_s))
        }))
        .map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "released": report.opened }))?;
    Ok(())
}
