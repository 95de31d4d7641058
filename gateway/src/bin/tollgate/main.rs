//! The `tollgate` binary: the gateway server (`serve`), the Kafka-to-Parquet `sink`, the
//! one-process `demo`, the admin CLI (`keys`, `providers`, `models`, `allocations`, `budgets`,
//! `spend`, `rate-card reload`) that speaks to a running gateway's admin API, `import` into
//! its ledger, and tools that read files (`report`, `rate-card check`, `events dump`).
//!
//! Binaries own their I/O: this is the one place that reads arguments, prints, and exits with
//! a status, and it reports errors with `anyhow` context, never a panic. This file parses the
//! command line and hands each command to the module for its job.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Command, EventsCommand, ListCommand, RateCardCommand};

mod admin;
mod advise;
mod args;
mod client;
#[cfg(feature = "demo")]
mod demo;
mod events;
mod import;
mod print;
mod rate_card;
mod report;
mod serve;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Governance in the request path of AI spend.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line per cause, most general first; a broken stderr leaves only the exit code.
            let _ = writeln!(std::io::stderr().lock(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command asked for.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo {
            data,
            seconds,
            agents,
        } => demo::run(&demo::DemoOptions {
            data,
            seconds,
            agents,
        }),
        Command::Sink { config } => serve::sink(&config),
        Command::Serve {
            config,
            accept_spend_loss,
        } => serve::serve(
            &config,
            tollgate_gateway::runtime::StartOptions { accept_spend_loss },
        ),
        Command::Keys(command) => admin::keys(command),
        Command::Providers(ListCommand::List { admin }) => admin::providers(&admin),
        Command::Models(ListCommand::List { admin }) => admin::models(&admin),
        Command::Allocations(command) => admin::allocations(command),
        Command::Budgets(command) => admin::budgets(command),
        Command::Guards(command) => admin::guards(command),
        Command::Operators(command) => admin::operators(command),
        Command::Spend { admin } => admin::spend(&admin),
        Command::RateCard(RateCardCommand::Check { file, at }) => {
            rate_card::check(&file, at.as_deref())
        }
        Command::RateCard(RateCardCommand::Reload { admin }) => admin::reload_rate_card(&admin),
        Command::Events(EventsCommand::Dump { dir, from }) => events::dump(&dir, from),
        Command::Import(command) => import::run(command),
        Command::Report {
            data,
            from,
            to,
            by,
            format,
            output,
        } => report::run(
            &data,
            from.as_deref(),
            to.as_deref(),
            &by,
            &format,
            output.as_deref(),
        ),
        Command::Advise {
            data,
            rate_card,
            by,
            from,
            to,
            short_answer_tokens,
            format,
        } => advise::run(&advise::AdviseArgs {
            data: &data,
            rate_card: &rate_card,
            by: &by,
            from: from.as_deref(),
            to: to.as_deref(),
            short_answer_tokens,
            format: &format,
        }),
    }
}
