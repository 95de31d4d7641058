//! The command line's shape: every subcommand, argument and flag of `tollgate`, as clap types.
//!
//! The doc comments here are the `--help` text users read, so they are written for users;
//! changing one changes the CLI's output. What each command does lives in the module named by
//! its job (`serve`, `admin`, `report`, `rate_card`, `events`, `import`, `demo`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum Command {
    /// Everything in one go on embedded defaults: mock provider, gateway, event log and
    /// Parquet, an agent fleet running out of budget, the books checked, the chargeback printed.
    #[cfg(feature = "demo")]
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
        /// Start even when the spend checkpoint is gone and the event log no longer holds the
        /// events before it: the budgets get that spend back. For an operator who means it.
        #[arg(long)]
        accept_spend_loss: bool,
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
    /// Blocks the spend guards placed, and clearing them (admin API).
    #[command(subcommand)]
    Guards(GuardsCommand),
    /// Operators of the admin API and their roles: viewer, team-admin, admin (admin API).
    #[command(subcommand)]
    Operators(OperatorsCommand),
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
    /// Savings advice from the Parquet files: short answers from a dear model, prompt
    /// prefixes re-sent uncached, spend on failed and retried calls, loops caught and missed,
    /// each with the amount it could have saved.
    Advise {
        /// The data folder (`[parquet] dir`).
        #[arg(long)]
        data: PathBuf,
        /// The rate card the calls were priced with (its versions price each call as it was,
        /// and the cheaper models it offers).
        #[arg(long)]
        rate_card: PathBuf,
        /// team, project, allocation or agent.
        #[arg(long, default_value = "team")]
        by: String,
        /// Start of the window, RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// End of the window, RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// The longest answer, in completion tokens, a cheaper model is suggested for.
        #[arg(long, default_value_t = 256)]
        short_answer_tokens: u64,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand)]
pub enum ImportCommand {
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
pub struct SendArgs {
    /// Check and price every record without booking anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Records per request.
    #[arg(long, default_value_t = tollgate_gateway::limits::IMPORT_BATCH_RECORDS)]
    pub batch_records: usize,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Subcommand)]
pub enum EventsCommand {
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
pub struct AdminArgs {
    /// The gateway's base URL.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ListCommand {
    /// List them.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum AllocationsCommand {
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
pub enum BudgetsCommand {
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
pub enum GuardsCommand {
    /// List the blocks in force: what a loop or a spend velocity past its ceiling stopped.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a block: the key, agent or allocation may call again.
    Clear {
        /// `key`, `agent` or `allocation`.
        scope: String,
        /// The key's id (`key_...`), the agent's name or the allocation's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum OperatorsCommand {
    /// Make an operator; its secret is shown once (it is used as the admin API's bearer
    /// token).
    Create {
        /// Who it is, as the audit log names it.
        #[arg(long)]
        name: String,
        /// viewer (reads), team-admin (also manages one team's keys and allocations) or
        /// admin (everything).
        #[arg(long)]
        role: String,
        /// The team of a team-admin.
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the operators.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke an operator: its secret is refused from now on.
    Revoke {
        /// Its id (`op_...`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
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
pub enum RateCardCommand {
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
