//! The `tollgate` binary: the gateway server (`serve`), the admin CLI (`keys`, `providers`,
//! `models`, `spend`) that speaks to a running gateway's admin API, and rate-card tooling.
//!
//! Binaries own their I/O: this is the one place that reads arguments, prints, and exits with
//! a status, and it reports errors with `anyhow` context, never a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use http::Method;
use serde_json::{Value, json};
use tollgate_engine::RateCard;
use tollgate_engine::time::parse_rfc3339;
use tollgate_gateway::config::Config;
use tollgate_gateway::runtime;

mod client;
mod demo;
mod import;

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
    /// Everything in one go on embedded defaults: mock provider, gateway, event log and
    /// Parquet, an agent fleet running out of budget, the books checked, the chargeback printed.
    Demo {
        /// Folder for its config, state, events, Parquet files and load report (an earlier
        /// demo's folder is cleared; any other non-empty folder is refused).
        #[arg(long, default_value = "tollgate-demo")]
        data: PathBuf,
        /// Seconds of load.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=3600))]
        seconds: u32,
        /// Agents in the fleet (default: the agent-fleet scenario's 2,000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20000))]
        agents: Option<u32>,
    },
    /// Consume the usage topic (in a consumer group) into Parquet, exactly once.
    Sink {
        /// The sink's config file (see config/sink.example.toml).
        #[arg(long, short, default_value = "sink.toml")]
        config: PathBuf,
    },
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// Virtual keys (admin API).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Configured providers (admin API).
    #[command(subcommand)]
    Providers(ListCommand),
    /// Priced models and aliases (admin API).
    #[command(subcommand)]
    Models(ListCommand),
    /// Allocations (admin API).
    #[command(subcommand)]
    Allocations(AllocationsCommand),
    /// Budget limits (admin API).
    #[command(subcommand)]
    Budgets(BudgetsCommand),
    /// Live spend per allocation, project and team (admin API).
    Spend {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Work with rate cards.
    #[command(subcommand)]
    RateCard(RateCardCommand),
    /// Read the durable usage-event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Import resource usage (Slurm, OpenCost, storage) into a running gateway's ledger.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Chargeback: totals from the Parquet files, grouped by one dimension.
    Report {
        /// The data folder (`[parquet] dir`).
        #[arg(long)]
        data: PathBuf,
        /// Start of the window, RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// End of the window, RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// team, project, allocation, user, model, provider, cost_center, kind, unit, cluster or
        /// partition.
        #[arg(long)]
        by: String,
        /// table, csv, json, parquet (the rows as a Parquet file with exact decimals; needs
        /// --output), focus (FinOps FOCUS 1.0 CSV on stdout; `--by` is then ignored: FOCUS rows
        /// are per hour, model and allocation) or focus-parquet (the same statement as a
        /// Parquet file, exact decimals, the FOCUS version in its metadata; needs --output).
        #[arg(long, default_value = "table")]
        format: String,
        /// The file a Parquet format is written to.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Slurm jobs from `sacct --parsable2` output (finished jobs; steps are not counted twice).
    Slurm {
        /// The file (`TZ=UTC sacct --parsable2 --format
        /// JobID,User,Account,Partition,AllocTRES,ElapsedRaw,Start,End,State,Cluster`).
        file: PathBuf,
        /// The cluster, when the file has no Cluster column.
        #[arg(long)]
        cluster: Option<String>,
        /// `account=allocation`; an account not mapped is the allocation's name.
        #[arg(long = "map")]
        map: Vec<String>,
        /// `billing` (the billing TRES where present, else cpu) or `cpu`.
        #[arg(long, default_value = "billing")]
        core_hours: String,
        /// Also bill node-hours.
        #[arg(long)]
        node_hours: bool,
        /// The UTC offset of the file's times (`+01:00`); `TZ=UTC sacct` makes it `+00:00`.
        #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
        utc_offset: String,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Kubernetes usage from OpenCost's allocation API JSON.
    Opencost {
        /// The file (`curl -G .../allocation/compute -d window=... -d aggregate=namespace`).
        file: PathBuf,
        /// What names the allocation: `namespace`, `name` (the aggregate) or `label:<label>`.
        #[arg(long, default_value = "namespace")]
        allocation_from: String,
        /// `name=allocation` renames.
        #[arg(long = "map")]
        map: Vec<String>,
        /// The cluster, where an allocation's properties name none.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Storage from a CSV of GB-months by project and month.
    Storage {
        /// The file (`month,project,gb_months[,cluster,tier]`).
        file: PathBuf,
        /// `project=allocation`; a project not mapped is the allocation's name.
        #[arg(long = "map")]
        map: Vec<String>,
        #[command(flatten)]
        send: SendArgs,
    },
}

/// Where and how imported records are sent.
#[derive(Args, Clone)]
struct SendArgs {
    /// Check and price every record without booking anything.
    #[arg(long)]
    dry_run: bool,
    /// Records per request.
    #[arg(long, default_value_t = tollgate_gateway::limits::IMPORT_BATCH_RECORDS)]
    batch_records: usize,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the events of a log (a running gateway's too) as JSON lines, in order.
    Dump {
        /// The log's folder (`<events.dir>/log`).
        #[arg(long)]
        dir: PathBuf,
        /// The offset to start from.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

/// Where the admin API is and how to authenticate to it.
#[derive(Args, Clone)]
struct AdminArgs {
    /// The gateway's base URL.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ListCommand {
    /// List them.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum AllocationsCommand {
    /// Create an allocation under an existing project.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// The project it belongs to.
        #[arg(long)]
        project: String,
        /// Cost center charged.
        #[arg(long, default_value = "")]
        cost_center: String,
        /// Models it may use (`provider/model` or `provider/*`); default: any priced model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Budget limit per period, a decimal amount (`250.00`); default: no limit.
        #[arg(long)]
        limit: Option<String>,
        /// `day`, `week`, `month` or `total`.
        #[arg(long, default_value = "month")]
        period: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List allocations with their budgets and live spend.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum BudgetsCommand {
    /// Set (or with `none`, remove) the limit of a team, project or allocation.
    Set {
        /// `team`, `project` or `allocation`.
        #[arg(long)]
        level: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// A decimal amount (`250.00`), or `none`.
        #[arg(long)]
        limit: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is shown once.
    Create {
        /// The allocation it charges.
        #[arg(long)]
        allocation: String,
        /// The person or service that owns it.
        #[arg(long, default_value = "cli")]
        user: String,
        /// The agent using it.
        #[arg(long)]
        agent: Option<String>,
        /// Lifetime: `30d`, `12h`, `90m`.
        #[arg(long)]
        expires: Option<String>,
        /// Models it may use (`provider/model` or `provider/*`); default: the allocation's.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// What it may do besides calling models: `metering` (record and authorize resource
        /// usage on `/v1/usage`).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a key.
    Revoke {
        /// The key's id (`key_...`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a key by a new secret with the same bindings; the old one is revoked.
    Rotate {
        /// The key's id (`key_...`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
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
    /// Make a running gateway read its rate card again (new versions only; history is fixed).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
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
        Command::Serve { config } => serve(&config),
        Command::Keys(command) => keys(command),
        Command::Providers(ListCommand::List { admin }) => {
            let answer = admin_call(&admin, Method::GET, "/admin/v1/providers", None)?;
            print_list(
                &admin,
                &answer,
                "providers",
                &["name", "kind", "base_url", "credential"],
            )
        }
        Command::Models(ListCommand::List { admin }) => {
            let answer = admin_call(&admin, Method::GET, "/admin/v1/models", None)?;
            print_list(
                &admin,
                &answer,
                "models",
                &[
                    "model",
                    "served",
                    "input_per_mtok",
                    "output_per_mtok",
                    "max_output_tokens",
                ],
            )
        }
        Command::Allocations(AllocationsCommand::Create {
            name,
            project,
            cost_center,
            models,
            limit,
            period,
            admin,
        }) => {
            let body = json!({
                "name": name,
                "project": project,
                "cost_center": cost_center,
                "models": models,
                "budget": {"limit": limit, "period": period},
            });
            let answer = admin_call(&admin, Method::POST, "/admin/v1/allocations", Some(body))?;
            if admin.json {
                return print_json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "created allocation {} in project {}",
                field(&answer, "name"),
                field(&answer, "project")
            )?;
            Ok(())
        }
        Command::Allocations(AllocationsCommand::List { admin }) | Command::Spend { admin } => {
            let answer = admin_call(&admin, Method::GET, "/admin/v1/allocations", None)?;
            spend(&admin, &answer)
        }
        Command::Budgets(BudgetsCommand::Set {
            level,
            name,
            limit,
            admin,
        }) => {
            let limit = if limit == "none" {
                Value::Null
            } else {
                json!(limit)
            };
            let path = format!("/admin/v1/budgets/{level}/{name}");
            let answer = admin_call(&admin, Method::PUT, &path, Some(json!({ "limit": limit })))?;
            if admin.json {
                return print_json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "{} {}: limit {}",
                field(&answer, "level"),
                field(&answer, "name"),
                field(&answer, "limit")
            )?;
            Ok(())
        }
        Command::RateCard(RateCardCommand::Check { file, at }) => {
            rate_card_check(&file, at.as_deref())
        }
        Command::Sink { config } => sink(&config),
        Command::Demo {
            data,
            seconds,
            agents,
        } => demo::run(&demo::DemoOptions {
            data,
            seconds,
            agents,
        }),
        Command::Report {
            data,
            from,
            to,
            by,
            format,
            output,
        } => {
            if format == "focus-parquet" {
                focus_parquet(&data, from.as_deref(), to.as_deref(), output.as_deref())
            } else if format == "parquet" {
                report_parquet(
                    &data,
                    from.as_deref(),
                    to.as_deref(),
                    &by,
                    output.as_deref(),
                )
            } else {
                anyhow::ensure!(
                    output.is_none(),
                    "--output is for --format parquet and focus-parquet; other formats print to stdout"
                );
                report(&data, from.as_deref(), to.as_deref(), &by, &format)
            }
        }
        Command::Import(command) => import(command),
        Command::Events(EventsCommand::Dump { dir, from }) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for record in tollgate_sink::log::read(&dir, from)? {
                let (_, payload) = record?;
                out.write_all(&payload)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
        Command::RateCard(RateCardCommand::Reload { admin }) => {
            let answer = admin_call(&admin, Method::POST, "/admin/v1/rate-card/reload", None)?;
            if admin.json {
                return print_json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "rate card reloaded; new versions: {}",
                field(&answer, "added")
            )?;
            Ok(())
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate")
        // Blocking work is token counting for calls without usage: a few threads suffice, and a
        // mass hang-up must not spawn hundreds.
        .max_blocking_threads(tollgate_gateway::limits::BLOCKING_THREADS_MAX)
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let running = runtime::start(config, |var| std::env::var(var).ok()).await?;
        let shutdown = shutdown_signal()?;
        let listen = running.control.gateway.config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "tollgate listening on http://{address}")?;
            out.flush()?;
        }
        running
            .serve(listener, shutdown)
            .await
            .context("writing the last usage events")
    });
    drop(runtime);
    served
}

fn sink(path: &std::path::Path) -> anyhow::Result<()> {
    let config = tollgate_gateway::config::SinkConfig::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consume = config.consume.clone();
    let mut sink = tollgate_sink::consume::Sink::new(config.consume)?;
    let shutdown = runtime.block_on(async { shutdown_signal() })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tollgate sink: topic {} (group {}) into {}",
            consume.topic,
            consume.group_id,
            consume.data_dir.join("usage").display()
        )?;
        out.flush()?;
    }
    let signalled = Arc::clone(&stop);
    runtime.spawn(async move {
        shutdown.await;
        signalled.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // The consumer's loop is blocking (librdkafka polls); signals arrive on the runtime.
    let totals = sink.run(&stop, |totals| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "batch written: {} events in {} files so far; {} duplicates dropped, {} redelivered skipped, {} quarantined",
            totals.written, totals.files, totals.duplicates, totals.replayed, totals.quarantined
        );
        let _ = out.flush();
    })?;
    drop(runtime);
    writeln!(
        std::io::stdout().lock(),
        "tollgate sink stopped: {} events written",
        totals.written
    )?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before the listener opens:
/// a signal that arrived before the accept loop first polled a lazily made future would take
/// the default action and kill the process without its last sync.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn admin_call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = std::env::var("TOLLGATE_ADMIN_TOKEN")
        .context("set TOLLGATE_ADMIN_TOKEN to the gateway's admin token")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(client::call(&admin.url, &token, method, path, body))?)
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            allocation,
            user,
            agent,
            expires,
            models,
            rpm,
            tpm,
            scopes,
            admin,
        } => {
            let body = json!({
                "allocation": allocation,
                "user": user,
                "agent": agent,
                "expires_in": expires,
                "models": models,
                "requests_per_minute": rpm,
                "tokens_per_minute": tpm,
                "scopes": scopes,
            });
            let answer = admin_call(&admin, Method::POST, "/admin/v1/keys", Some(body))?;
            print_key(&admin, &answer)
        }
        KeysCommand::List { admin } => {
            let answer = admin_call(&admin, Method::GET, "/admin/v1/keys", None)?;
            print_list(
                &admin,
                &answer,
                "keys",
                &[
                    "id",
                    "prefix",
                    "allocation",
                    "user",
                    "agent",
                    "scopes",
                    "expires_at",
                    "revoked",
                ],
            )
        }
        KeysCommand::Revoke { id, admin } => {
            let path = format!("/admin/v1/keys/{id}/revoke");
            let answer = admin_call(&admin, Method::POST, &path, None)?;
            if admin.json {
                return print_json(&answer);
            }
            writeln!(std::io::stdout().lock(), "revoked {}", field(&answer, "id"))?;
            Ok(())
        }
        KeysCommand::Rotate { id, admin } => {
            let path = format!("/admin/v1/keys/{id}/rotate");
            let answer = admin_call(&admin, Method::POST, &path, None)?;
            print_key(&admin, &answer)
        }
    }
}

fn field(value: &Value, name: &str) -> String {
    match value.get(name) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(value)?
    )?;
    Ok(())
}

fn print_key(admin: &AdminArgs, answer: &Value) -> anyhow::Result<()> {
    if admin.json {
        return print_json(answer);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "key        {}", field(answer, "key"))?;
    writeln!(out, "id         {}", field(answer, "id"))?;
    writeln!(out, "allocation {}", field(answer, "allocation"))?;
    writeln!(out, "user       {}", field(answer, "user"))?;
    writeln!(out, "expires_at {}", field(answer, "expires_at"))?;
    writeln!(
        out,
        "The key is shown only now; store it in a secret manager."
    )?;
    Ok(())
}

fn print_list(
    admin: &AdminArgs,
    answer: &Value,
    list: &str,
    columns: &[&str],
) -> anyhow::Result<()> {
    if admin.json {
        return print_json(answer);
    }
    let rows: Vec<Vec<String>> = answer
        .get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|c| field(item, c)).collect())
                .collect()
        })
        .unwrap_or_default();
    print_table(columns, &rows)
}

fn print_table(columns: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(columns.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn spend(admin: &AdminArgs, answer: &Value) -> anyhow::Result<()> {
    if admin.json {
        return print_json(answer);
    }
    let columns = [
        "allocation",
        "project",
        "team",
        "period",
        "spent",
        "limit",
        "remaining",
        "resets_at",
    ];
    let rows: Vec<Vec<String>> = answer
        .get("allocations")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let budget = a.get("budget").cloned().unwrap_or(Value::Null);
                    vec![
                        field(a, "name"),
                        field(a, "project"),
                        field(a, "team"),
                        field(&budget, "period"),
                        field(&budget, "spent"),
                        field(&budget, "limit"),
                        field(&budget, "remaining"),
                        field(&budget, "resets_at"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    writeln!(
        std::io::stdout().lock(),
        "currency {}",
        field(answer, "currency")
    )?;
    print_table(&columns, &rows)
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

/// An exact decimal of nano-units: `12.5`, `0.000000001`, `-3.25`.
fn decimal(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let whole = magnitude / 1_000_000_000;
    let frac = format!("{:09}", magnitude % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        &format!("{frac:0<2}")
    } else {
        frac
    };
    format!("{sign}{whole}.{frac}")
}

/// An exact decimal of micro-units: `16.5`, `0.000278`, `0`.
fn quantity(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let frac = magnitude % 1_000_000;
    if frac == 0 {
        return format!("{sign}{}", magnitude / 1_000_000);
    }
    let digits = format!("{frac:06}");
    format!(
        "{sign}{}.{}",
        magnitude / 1_000_000,
        digits.trim_end_matches('0')
    )
}

/// `--from` and `--to` as instants.
fn window(
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<(
    Option<tollgate_engine::UnixMs>,
    Option<tollgate_engine::UnixMs>,
)> {
    let instant = |text: Option<&str>, flag: &str| {
        text.map(|t| {
            parse_rfc3339(t)
                .map_err(anyhow::Error::msg)
                .with_context(|| flag.to_owned())
        })
        .transpose()
    };
    Ok((instant(from, "--from")?, instant(to, "--to")?))
}

fn report_parquet(
    data: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    by: &str,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use tollgate_sink::rollup::{self, Dimension};
    let output = output.context("--format parquet writes a file: pass --output FILE")?;
    let dimension = Dimension::parse(by).with_context(|| {
        format!("--by {by}: choose team, project, allocation, user, model, provider, cost_center, kind, unit, cluster or partition")
    })?;
    let window = window(from, to)?;
    let rows = rollup::report(data, window.0, window.1, dimension)?;
    rollup::write_parquet(&rows, dimension, window, output)?;
    writeln!(
        std::io::stdout().lock(),
        "{} rows by {by} written to {}",
        rows.len(),
        output.display()
    )?;
    Ok(())
}

fn focus_parquet(
    data: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let output = output.context("--format focus-parquet writes a file: pass --output FILE")?;
    let (from, to) = window(from, to)?;
    let rows = tollgate_sink::focus::export_parquet(data, from, to, output)?;
    writeln!(
        std::io::stdout().lock(),
        "{rows} FOCUS {} rows written to {}",
        tollgate_sink::focus::FOCUS_VERSION,
        output.display()
    )?;
    Ok(())
}

fn report(
    data: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    by: &str,
    format: &str,
) -> anyhow::Result<()> {
    use tollgate_sink::rollup::{self, Dimension};
    let dimension = Dimension::parse(by).with_context(|| {
        format!("--by {by}: choose team, project, allocation, user, model, provider, cost_center, kind, unit, cluster or partition")
    })?;
    let (from_t, to_t) = window(from, to)?;
    if format == "focus" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        tollgate_sink::focus::export_csv(data, from_t, to_t, &mut out)?;
        out.flush()?;
        return Ok(());
    }
    let rows = rollup::report(data, from_t, to_t, dimension)?;
    let total = rows.iter().fold(rollup::Row::default(), |mut t, r| {
        t.add(r);
        t
    });
    let currency = total.currency.clone().unwrap_or_default();
    let key = |r: &rollup::Row| r.key.clone().unwrap_or_else(|| "(none)".to_owned());
    // Tokens, compute and storage side by side, each with its cost, then the totals.
    let cells = |r: &rollup::Row| {
        vec![
            r.events.to_string(),
            decimal(r.cost_nanos),
            decimal(r.list_cost_nanos),
            r.tokens_in.to_string(),
            r.tokens_out.to_string(),
            decimal(r.token_cost_nanos),
            quantity(r.gpu_hour_micros),
            quantity(r.core_hour_micros),
            quantity(r.node_hour_micros),
            decimal(r.compute_cost_nanos),
            quantity(r.gb_month_micros),
            decimal(r.storage_cost_nanos),
        ]
    };
    const COLUMNS: [&str; 12] = [
        "events",
        "cost",
        "list_cost",
        "tokens_in",
        "tokens_out",
        "token_cost",
        "gpu_hours",
        "core_hours",
        "node_hours",
        "compute_cost",
        "gb_months",
        "storage_cost",
    ];
    let mut out = std::io::stdout().lock();
    match format {
        "json" => {
            let row = |r: &rollup::Row, k: Value| {
                json!({
                    by: k, "events": r.events,
                    "cost": decimal(r.cost_nanos), "cost_nanos": r.cost_nanos.to_string(),
                    "list_cost": decimal(r.list_cost_nanos),
                    "tokens_in": r.tokens_in, "tokens_out": r.tokens_out,
                    "token_cost": decimal(r.token_cost_nanos),
                    "gpu_hours": quantity(r.gpu_hour_micros),
                    "core_hours": quantity(r.core_hour_micros),
                    "node_hours": quantity(r.node_hour_micros),
                    "compute_cost": decimal(r.compute_cost_nanos),
                    "gb_months": quantity(r.gb_month_micros),
                    "storage_cost": decimal(r.storage_cost_nanos),
                })
            };
            let value = json!({
                "by": by, "from": from, "to": to, "currency": currency,
                "rows": rows.iter().map(|r| row(r, json!(r.key))).collect::<Vec<_>>(),
                "total": row(&total, Value::Null),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        "csv" => {
            writeln!(out, "{by},{}", COLUMNS.join(","))?;
            for r in &rows {
                let k = key(r);
                let k = if k.contains([',', '"']) {
                    format!("\"{}\"", k.replace('"', "\"\""))
                } else {
                    k
                };
                writeln!(out, "{k},{}", cells(r).join(","))?;
            }
        }
        "table" => {
            let mut table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| [vec![key(r)], cells(r)].concat())
                .collect();
            table.push([vec!["TOTAL".to_owned()], cells(&total)].concat());
            if !currency.is_empty() {
                writeln!(out, "currency {currency}")?;
            }
            drop(out);
            let columns: Vec<&str> = [by].into_iter().chain(COLUMNS).collect();
            print_table(&columns, &table)?;
        }
        other => anyhow::bail!("--format {other}: choose table, csv, json or focus"),
    }
    Ok(())
}

fn import(command: ImportCommand) -> anyhow::Result<()> {
    use crate::import::{self, Mapping, opencost, slurm, storage};
    let read = |file: &std::path::Path| {
        import::read_file(file, tollgate_gateway::limits::IMPORT_FILE_BYTES_MAX)
    };
    let mapping = |pairs: &[String]| Mapping::parse(pairs).map_err(anyhow::Error::msg);
    let (file, parsed, send) = match command {
        ImportCommand::Slurm {
            file,
            cluster,
            map,
            core_hours,
            node_hours,
            utc_offset,
            send,
        } => {
            let options = slurm::Options {
                cluster,
                accounts: mapping(&map).context("--map")?,
                core_hours: match core_hours.as_str() {
                    "billing" => slurm::CoreHours::Billing,
                    "cpu" => slurm::CoreHours::Cpu,
                    other => anyhow::bail!("--core-hours {other}: choose billing or cpu"),
                },
                node_hours,
                utc_offset_minutes: utc_offset_minutes(&utc_offset)
                    .with_context(|| format!("--utc-offset {utc_offset}"))?,
            };
            let parsed = slurm::parse(&read(&file)?, &options);
            (file, parsed, send)
        }
        ImportCommand::Opencost {
            file,
            allocation_from,
            map,
            cluster,
            send,
        } => {
            let options = opencost::Options {
                allocation_from: opencost::AllocationFrom::parse(&allocation_from)
                    .map_err(anyhow::Error::msg)
                    .context("--allocation-from")?,
                map: mapping(&map).context("--map")?,
                cluster,
            };
            let parsed = opencost::parse(&read(&file)?, &options);
            (file, parsed, send)
        }
        ImportCommand::Storage { file, map, send } => {
            let parsed = storage::parse(&read(&file)?, &mapping(&map).context("--map")?);
            (file, parsed, send)
        }
    };
    let parsed = parsed.with_context(|| format!("{}", file.display()))?;
    send_records(&file, &parsed, &send)
}

/// `+01:00`, `-05:30`, `Z` into minutes east of UTC.
fn utc_offset_minutes(text: &str) -> anyhow::Result<i32> {
    if text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => anyhow::bail!("write the offset as +HH:MM or -HH:MM"),
    };
    let (hours, minutes) = rest
        .split_once(':')
        .context("write the offset as +HH:MM or -HH:MM")?;
    let hours: i32 = hours.parse().context("hours")?;
    let minutes: i32 = minutes.parse().context("minutes")?;
    anyhow::ensure!(
        (0..=14).contains(&hours) && (0..60).contains(&minutes),
        "an offset is at most 14 hours"
    );
    Ok(sign * (hours * 60 + minutes))
}

/// Sends the records in batches: first all of them as a dry run (so a record the gateway
/// refuses stops the import before anything is booked, named by its line), then for real.
fn send_records(
    file: &std::path::Path,
    parsed: &crate::import::Import,
    send: &SendArgs,
) -> anyhow::Result<()> {
    let token = std::env::var("TOLLGATE_METERING_KEY")
        .or_else(|_| std::env::var("TOLLGATE_ADMIN_TOKEN"))
        .context(
            "set TOLLGATE_METERING_KEY (a key with the metering scope) or TOLLGATE_ADMIN_TOKEN",
        )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let batch_records = send.batch_records.max(1);
    let post = |records: &[(usize, tollgate_engine::ledger::UsageRecord)], dry_run: bool| {
        let body = json!({
            "records": records.iter().map(|(_, r)| r.to_json()).collect::<Vec<_>>(),
            "dry_run": dry_run,
        });
        runtime
            .block_on(client::call(
                &send.admin.url,
                &token,
                Method::POST,
                "/v1/usage",
                Some(body),
            ))
            .map_err(|e| match e {
                client::ClientError::Refused {
                    message,
                    param: Some(param),
                    ..
                } => {
                    // `records[i].field` names the record; its line is the file's.
                    let index = param
                        .strip_prefix("records[")
                        .and_then(|p| p.split_once(']'))
                        .and_then(|(i, _)| i.parse::<usize>().ok());
                    match index.and_then(|i| records.get(i)) {
                        Some((line, _)) => anyhow::anyhow!(
                            "{}:{line}: the gateway refused this record: {message}",
                            file.display()
                        ),
                        None => anyhow::anyhow!("the gateway refused a record: {message}"),
                    }
                }
                other => anyhow::Error::new(other),
            })
    };
    let mut totals = [0u64; 4];
    let mut cost_nanos: u128 = 0;
    let mut conflicts = Vec::new();
    let mut currency = String::new();
    for dry_run in [true, false] {
        if !dry_run && send.dry_run {
            break;
        }
        for chunk in parsed.records.chunks(batch_records) {
            let answer = post(chunk, dry_run).with_context(|| {
                if dry_run {
                    "checking the records; nothing was booked".to_owned()
                } else {
                    "booking the records (resend: records already booked are not booked twice)"
                        .to_owned()
                }
            })?;
            if dry_run != send.dry_run {
                continue;
            }
            for (slot, name) in
                totals
                    .iter_mut()
                    .zip(["booked", "would_book", "duplicates", "conflicts"])
            {
                *slot += answer.get(name).and_then(Value::as_u64).unwrap_or(0);
            }
            cost_nanos += u128::from(
                answer
                    .get("cost_nanos")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            );
            currency = field(&answer, "currency");
            for result in answer
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if result.get("status").and_then(Value::as_str) == Some("conflict") {
                    conflicts.push(field(result, "id"));
                }
            }
        }
    }
    let [booked, would_book, duplicates, conflicted] = totals;
    let skipped: serde_json::Map<String, Value> = parsed
        .skipped
        .iter()
        .map(|(reason, n)| ((*reason).to_owned(), json!(n)))
        .collect();
    if send.admin.json {
        return print_json(&json!({
            "file": file.display().to_string(),
            "records": parsed.records.len(),
            "booked": booked, "would_book": would_book,
            "duplicates": duplicates, "conflicts": conflicted,
            "cost": decimal(i128::try_from(cost_nanos).unwrap_or(i128::MAX)),
            "cost_nanos": cost_nanos.to_string(),
            "currency": currency,
            "skipped": skipped,
            "dry_run": send.dry_run,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} record(s) read",
        file.display(),
        parsed.records.len()
    )?;
    for (reason, n) in &parsed.skipped {
        writeln!(out, "  skipped {n}: {reason}")?;
    }
    let cost = decimal(i128::try_from(cost_nanos).unwrap_or(i128::MAX));
    if send.dry_run {
        writeln!(
            out,
            "dry run: {would_book} would be booked ({cost} {currency}), {duplicates} already booked, {conflicted} conflicting; nothing was booked"
        )?;
    } else {
        writeln!(
            out,
            "booked {booked} ({cost} {currency}), {duplicates} already booked, {conflicted} conflicting"
        )?;
    }
    drop(out);
    if !conflicts.is_empty() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "warning: {} record(s) were booked before with other content; the first booking stands: {}",
            conflicts.len(),
            conflicts.join(", ")
        );
    }
    Ok(())
}
