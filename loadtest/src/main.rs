//! `tollgate-loadtest`: the mock provider and the load generator.
//!
//! `tollgate-loadtest mock --listen 127.0.0.1:0` prints `mock provider listening on http://ADDR`
//! once it accepts connections, then serves until killed. `tollgate-loadtest run --url ...`
//! drives an endpoint and prints one JSON line of figures.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;

use tollgate_loadtest::load::{self, LoadConfig};
use tollgate_loadtest::mock::{self, MockConfig};

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
    /// Serve a mock provider speaking OpenAI's and Anthropic's APIs.
    Mock {
        /// Address to listen on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Require this provider key from callers.
        #[arg(long, env = "MOCK_PROVIDER_KEY")]
        api_key: Option<String>,
    },
    /// Drive an endpoint with N keep-alive connections and report throughput and latency.
    Run {
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
        Command::Mock { listen, api_key } => run_mock(listen, api_key),
        Command::Run {
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
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_mock(listen: SocketAddr, api_key: Option<String>) -> std::io::Result<()> {
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
        mock::serve(listener, MockConfig { api_key }).await
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
