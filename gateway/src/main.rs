//! The `tollgate` binary: today its rate-card tooling; the gateway server, admin API and the
//! rest of the CLI land here next.
//!
//! Binaries own their I/O: this is the one place that reads arguments, prints, and exits with
//! a status, and it reports errors with `anyhow` context, never a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_engine::RateCard;
use tollgate_engine::time::parse_rfc3339;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Governance in the request path of AI spend.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with rate cards.
    #[command(subcommand)]
    RateCard(RateCardCommand),
}

#[derive(Subcommand)]
enum RateCardCommand {
    /// Validate a rate card file and list its versions (or the prices in force at `--at`).
    Check {
        /// The TOML rate card.
        file: PathBuf,
        /// Show the prices in force at this RFC 3339 instant.
        #[arg(long)]
        at: Option<String>,
    },
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::RateCard(RateCardCommand::Check { file, at }) => {
            rate_card_check(&file, at.as_deref())
        }
    }
}

fn rate_card_check(file: &std::path::Path, at: Option<&str>) -> anyhow::Result<()> {
    let card = RateCard::load(file)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: valid, {} version(s), currency {}",
        file.display(),
        card.versions().len(),
        card.currency
    )?;
    match at {
        None => {
            for v in card.versions() {
                writeln!(
                    out,
                    "  {:<16} from {}  {} model(s), {} resource price(s)",
                    v.id,
                    v.effective_from,
                    v.model_count(),
                    v.resource_count()
                )?;
            }
        }
        Some(at) => {
            let t = parse_rfc3339(at)
                .map_err(anyhow::Error::msg)
                .context("--at")?;
            let v = card
                .at(t)
                .with_context(|| format!("no version is in force at {t}"))?;
            writeln!(out, "version {} in force at {t}; per million tokens:", v.id)?;
            writeln!(
                out,
                "  {:<40} {:>12} {:>12} {:>12} {:>12}",
                "model", "input", "cached", "cache write", "output"
            )?;
            for m in v.models() {
                let d = |p: tollgate_engine::PricePerMTok| tollgate_engine::Nanos(p.0).to_string();
                writeln!(
                    out,
                    "  {:<40} {:>12} {:>12} {:>12} {:>12}",
                    m.model.as_str(),
                    d(m.input_per_mtok),
                    d(m.cached_input_per_mtok),
                    d(m.cache_write_per_mtok),
                    d(m.output_per_mtok)
                )?;
            }
        }
    }
    Ok(())
}
