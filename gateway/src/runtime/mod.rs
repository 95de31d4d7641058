//! Running the gateway: one lifecycle for `tollgate serve` and `tollgate demo`.
//!
//! [`start`] builds the request path's state ([`Gateway`]), replays the journal of admin
//! changes into it, restores spend and booked record ids from the event log, and starts the
//! background tasks; [`Running::serve`] accepts until its shutdown future resolves, drains,
//! and stops the tasks in one fixed order. Both commands go through here, so they run the same
//! tasks, started and stopped the same way.
//!
//! **Invariant:** nothing is admitted before the journal is replayed, spend is restored and
//! (with Kafka) other replicas' spend is read; background tasks stop only after the server
//! has drained, upstream of the log first, so the last events are synced and then shipped.

pub mod background;
pub mod router;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tollgate_engine::ledger::RecordIndex;

use crate::clock::now_ms;
use crate::config::Config;
use crate::control::Control;
use crate::control::blocks::BlocksTask;
use crate::control::coordinate::CoordinatorTask;
use crate::control::forecast::{ForecastTask, Forecasts};
use crate::control::journal::{Journal, StateError};
use crate::control::leases::{LeaseStartError, LeaseTask};
use crate::control::reconcile::{ReconcileTask, replica_id};
use crate::control::replicate::{self, CatchUpError, FollowTask, Replication};
use crate::control::session::Sessions;
use crate::control::ship::ShipTask;
use crate::control::webhooks::WebhookTask;
use crate::events::emit::{Emitter, Maintenance};
use crate::events::restore::{self, CHECKPOINT_FILE, Folded};
use crate::http::auth::AdminToken;
use crate::limits::{CONTROL_CATCH_UP_MAX, LEASE_CATCH_UP_MAX, RECONCILE_CATCH_UP_MAX};
use crate::metrics::Metrics;
use crate::state::{Gateway, SetupError};
use crate::usage::{self, Ledger, Sweeper};
use background::Background;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The rate card, the budget table or a provider, as configured.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The journal of admin changes in the state folder.
    #[error(transparent)]
    State(#[from] StateError),
    /// The event log could not be opened or read back.
    #[error("opening the event log in {dir}: {source}")]
    Events {
        /// `events.dir` as configured.
        dir: String,
        /// What the file system or the log said.
        source: std::io::Error,
    },
    /// A webhook could not start (its secret unset, its cursor unreadable).
    #[error("webhooks: {0}")]
    Webhooks(std::io::Error),
    /// The replica id in the state folder could not be read or made.
    #[error("the replica id in the state folder: {0}")]
    Replica(std::io::Error),
    /// Shipping to Kafka could not start.
    #[error(transparent)]
    Ship(#[from] tollgate_sink::kafka::ShipError),
    /// Reading other replicas' spend from Kafka could not start.
    #[error(transparent)]
    Reconcile(#[from] tollgate_sink::reconcile::ReconcileError),
    /// The control topic could not be set up or read to its end.
    #[error(transparent)]
    Control(#[from] CatchUpError),
    /// The lease topic could not be read to its end, or the lease tasks could not start.
    #[error("budget leases: {0}")]
    Leases(#[from] LeaseStartError),
    /// The spend checkpoint is gone (or both copies are unreadable) and the event log no longer
    /// starts where the fold needs it: starting would hand that spend back to the budgets.
    #[error(
        "the spend of events {from} to {first} cannot be restored: the spend checkpoint in \
         {state_dir} (spend.checkpoint, spend.prev) is missing or unreadable and the event log \
         in {events_dir} starts at offset {first}. Starting would give that spend back to the \
         budgets. Restore the state folder from a backup, or start once with \
         --accept-spend-loss to restore only what the log still holds (those events remain in \
         the Parquet files and the Kafka topic, for reports and reconciliation)"
    )]
    SpendLost {
        /// `state_dir` as configured.
        state_dir: String,
        /// `events.dir` as configured.
        events_dir: String,
        /// The offset the fold needs the log from.
        from: u64,
        /// The first offset the log holds.
        first: u64,
    },
    /// A record in a sealed segment fails its check (a bad disk block): the spend it and the
    /// records after it in its segment hold cannot be restored.
    #[error(
        "{path}: record {offset} is corrupt ({reason}), so the spend it records cannot be \
         restored. Restore the segment from a backup, or start once with --accept-spend-loss \
         to give up that record and the rest of its segment (kept aside as a .corrupt file; \
         their spend goes back to the budgets, they are missing from the Parquet files and reach \
         Kafka as empty records)"
    )]
    CorruptLog {
        /// The segment file.
        path: String,
        /// The damaged record's offset.
        offset: u64,
        /// Which check failed.
        reason: &'static str,
    },
}

/// How a start treats what it finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Start even when the spend checkpoint is gone and the log no longer holds the events
    /// before it: the budgets get that spend back (`tollgate serve --accept-spend-loss`).
    pub accept_spend_loss: bool,
}

/// A started gateway: its state, and its background tasks in the order they stop.
pub struct Running {
    /// What the route table serves from.
    pub control: Arc<Control>,
    tasks: Vec<Box<dyn Background>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<&str> = self.tasks.iter().map(|t| t.name()).collect();
        f.debug_struct("Running")
            .field("control", &self.control)
            .field("tasks", &tasks)
            .finish()
    }
}

/// Starts the gateway from `config`, reading credentials and the admin token with `env`: state
/// built and restored, background tasks running, nothing listening yet.
pub async fn start(
    config: Config,
    env: impl Fn(&str) -> Option<String>,
    options: StartOptions,
) -> Result<Running, StartError> {
    let events_error = |source| StartError::Events {
        dir: config.events.dir.display().to_string(),
        source,
    };
    let metrics = Arc::new(Metrics::default());
    let (emitter, writer, _recovery) = Emitter::start(
        &config.events,
        config.parquet.as_ref(),
        Arc::clone(&metrics),
    )
    .map_err(events_error)?;
    let admin = AdminToken::new(env(&config.admin.token_env));
    let gateway = Gateway::new(config, &env, emitter, metrics)?;
    let (journal, _restored) = Journal::open(
        &gateway.config.state_dir,
        &gateway.directory,
        &gateway.keys,
        &gateway.guards,
        &gateway.operators,
    )?;
    let index = restore_spend(&gateway, options)?;
    let ledger = Arc::new(Ledger::new(gateway.config.ledger.clone(), index));
    let gateway = Arc::new(gateway);

    let replica = replica_id(&gateway).map_err(StartError::Replica)?;
    // Admin changes from the control topic before anything else reads the directory: the
    // others' spend may be for allocations made at run time elsewhere.
    let (replication, following) = follow_control(&gateway, &replica).await?;
    let (leasing, coordinating) = share_budgets(&gateway, &replica).await?;
    let shipping = ShipTask::start(&gateway, &replica)?;
    let reconciling = ReconcileTask::start(&gateway, &replica)?;
    if let Some(reconciling) = &reconciling {
        // Other replicas' spend is in the table before anything is admitted.
        reconciling.caught_up(RECONCILE_CATCH_UP_MAX).await;
    }
    let sweeper = Sweeper::start(Arc::clone(&ledger), Arc::clone(&gateway.metrics));
    let forecasts = Arc::new(Forecasts::default());
    let forecasting = ForecastTask::start(
        Arc::clone(&gateway),
        Arc::clone(&forecasts),
        gateway.config.forecast_interval,
    );

    // Stop order: what feeds the log first, then the log's last sync, then what reads it.
    let delivering = WebhookTask::start(&gateway, &env, &replica).map_err(StartError::Webhooks)?;
    let mut tasks: Vec<Box<dyn Background>> = vec![Box::new(sweeper), Box::new(forecasting)];
    if let Some(delivering) = delivering {
        tasks.push(Box::new(delivering));
    }
    if let Some(coordinating) = coordinating {
        tasks.push(Box::new(coordinating));
    }
    if let Some(leasing) = leasing {
        tasks.push(Box::new(leasing));
    }
    if let Some(following) = following {
        tasks.push(Box::new(following));
    }
    if let Some(reconciling) = reconciling {
        tasks.push(Box::new(reconciling));
    }
    tasks.push(Box::new(writer));
    if let Some(shipping) = shipping {
        tasks.push(Box::new(shipping));
    }
    let sessions = gateway
        .config
        .console
        .as_ref()
        .map(|console| Sessions::new(console.session_ttl));
    let control = Control {
        gateway,
        journal,
        replication,
        ledger,
        admin,
        forecasts,
        sessions,
        summaries: Arc::new(tollgate_sink::rollup::Summaries::new(
            crate::limits::ROLLUP_SUMMARY_GROUPS_MAX,
        )),
    };
    let control = Arc::new(control);
    // Stopped first: the blocks it owes are written while the journal and the brokers are
    // still there.
    if let Some(blocks) = BlocksTask::start(Arc::clone(&control)) {
        tasks.insert(0, Box::new(blocks));
    }
    Ok(Running { control, tasks })
}

/// With a control topic: makes it if missing, reads it to its end into `gateway` (refusing
/// the start if that takes longer than [`CONTROL_CATCH_UP_MAX`]), and starts following it.
async fn follow_control(
    gateway: &Arc<Gateway>,
    replica: &str,
) -> Result<(Option<Replication>, Option<FollowTask>), StartError> {
    let Some(config) = gateway.config.control.clone() else {
        return Ok((None, None));
    };
    tollgate_sink::control::ensure_topic(&config)
        .await
        .map_err(CatchUpError::from)?;
    let mut follower =
        tollgate_sink::control::Follower::new(&config, replica).map_err(CatchUpError::from)?;
    let reading = Arc::clone(gateway);
    let (follower, read) = tokio::task::spawn_blocking(move || {
        let read = replicate::catch_up(&reading, &mut follower, CONTROL_CATCH_UP_MAX);
        (follower, read)
    })
    .await
    .map_err(|e| StartError::Replica(std::io::Error::other(e)))?;
    read?;
    let publisher = tollgate_sink::control::Publisher::new(&config).map_err(CatchUpError::from)?;
    let following =
        FollowTask::start(Arc::clone(gateway), follower).map_err(StartError::Replica)?;
    Ok((
        Some(Replication::new(publisher, replica.to_owned())),
        Some(following),
    ))
}

/// With `[leases]`: makes the lease topic if missing, reads it to its end (refusing the start
/// if that takes longer than [`LEASE_CATCH_UP_MAX`]), starts the lease task and, when this
/// replica coordinates, joins the coordinators' group.
async fn share_budgets(
    gateway: &Arc<Gateway>,
    replica: &str,
) -> Result<(Option<LeaseTask>, Option<CoordinatorTask>), StartError> {
    let Some(config) = gateway.config.leases.clone() else {
        return Ok((None, None));
    };
    tollgate_sink::leases::ensure_topic(&config.log)
        .await
        .map_err(LeaseStartError::from)?;
    let coordinating = if config.coordinate {
        Some(CoordinatorTask::start(
            Arc::clone(gateway),
            config.clone(),
            replica,
        )?)
    } else {
        None
    };
    let starting = Arc::clone(gateway);
    let replica = replica.to_owned();
    let leasing = tokio::task::spawn_blocking(move || {
        LeaseTask::start(starting, config, &replica, LEASE_CATCH_UP_MAX)
    })
    .await
    .map_err(|e| StartError::Replica(std::io::Error::other(e)))??;
    Ok((Some(leasing), coordinating))
}

/// Folds the spend of the budgets' current periods and the ids of booked records back in,
/// from the spend checkpoint and the log after it, and hands the fold on to the syncer's
/// checkpointing.
///
/// A log that no longer starts where the fold needs it (the checkpoint gone, its segments
/// removed) refuses the start, unless `options.accept_spend_loss`.
fn restore_spend(gateway: &Gateway, options: StartOptions) -> Result<RecordIndex, StartError> {
    let config = &gateway.config;
    let mut index = Ledger::index_for(&config.ledger);
    let checkpoint = config.state_dir.join(CHECKPOINT_FILE);
    let folded = Folded::load(&checkpoint).unwrap_or_default();
    let from = folded.next_offset;
    let records = gateway.emitter.read_from(from);
    let first = records.first_offset();
    if first > from {
        let lost = StartError::SpendLost {
            state_dir: config.state_dir.display().to_string(),
            events_dir: config.events.dir.display().to_string(),
            from,
            first,
        };
        if !options.accept_spend_loss {
            return Err(lost);
        }
        crate::operator::report(&format!("starting with --accept-spend-loss: {lost}"));
    }
    let folded = fold_log(gateway, folded, records, &mut index, options)?;
    gateway.emitter.maintain(Maintenance::new(
        folded,
        checkpoint,
        config.events.checkpoint_interval,
        config.kafka.is_some(),
        usage::duration_ms(config.ledger.record_window),
    ));
    Ok(index)
}

/// Folds `records` (the log from the checkpoint on) into `checkpointed` and restores the table
/// and record index from it. A corrupt record in a sealed segment refuses the start; with
/// `options.accept_spend_loss` it and the rest of its segment become tombstones
/// (`log::quarantine`, reported) and the fold starts over.
fn fold_log(
    gateway: &Gateway,
    checkpointed: Folded,
    mut records: tollgate_sink::log::LogReader,
    index: &mut RecordIndex,
    options: StartOptions,
) -> Result<Folded, StartError> {
    let config = &gateway.config;
    let events_error = |e: tollgate_sink::log::LogError| StartError::Events {
        dir: config.events.dir.display().to_string(),
        source: std::io::Error::other(e),
    };
    // Each pass turns one damaged segment into tombstones, so passes are bounded by segments.
    loop {
        let mut folded = checkpointed.clone();
        match restore::restore_spend(&gateway.directory, &mut folded, records, now_ms(), index) {
            Ok(_) => return Ok(folded),
            Err(tollgate_sink::log::LogError::Corrupt {
                path,
                offset,
                reason,
            }) => {
                let corrupt = StartError::CorruptLog {
                    path,
                    offset,
                    reason,
                };
                if !options.accept_spend_loss {
                    return Err(corrupt);
                }
                let log_dir = gateway.emitter.log_dir();
                let quarantined =
                    tollgate_sink::log::quarantine(&log_dir, offset).map_err(events_error)?;
                crate::operator::report(&format!(
                    "starting with --accept-spend-loss: {corrupt}; {} records given up as \
                     tombstones, the damaged segment kept as {}",
                    quarantined.tombstones,
                    quarantined.original.display()
                ));
                *index = Ledger::index_for(&config.ledger);
                records = gateway.emitter.read_from(checkpointed.next_offset);
            }
            Err(e) => return Err(events_error(e)),
        }
    }
}

impl Running {
    /// Serves `listener` until `shutdown` resolves, drains the connections and the calls in
    /// flight, then stops every background task in order, each given `server.drain_timeout`.
    /// An error is the last sync's: events queued then may not be durable.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(Arc::clone(&self.control), listener, shutdown).await?;
        self.stop().await
    }

    /// Stops the background tasks in order, without serving (a start that goes no further).
    pub async fn stop(self) -> std::io::Result<()> {
        let deadline = self.control.gateway.config.server.drain_timeout;
        let mut outcome = Ok(());
        for task in self.tasks {
            let name = task.name();
            if let Err(e) = task.stop(deadline).await {
                crate::operator::report(&format!("shutdown: {name}: {e}"));
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome
    }
}
