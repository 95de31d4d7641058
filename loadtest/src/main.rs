//! `tollgate-loadtest`: the mock provider (and, next, the load generator).
//!
//! `tollgate-loadtest mock --listen 127.0.0.1:0` prints `mock provider listening on http://ADDR`
//! once it accepts connections, then serves until killed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mock { listen, api_key } => run_mock(listen, api_key),
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
