//! Reconciliation with other replicas: their settled spend, read from the usage topic, applied
//! to this gateway's budget table every `kafka.reconcile_interval_ms`.
//!
//! Each replica's own spend is in its table the moment it settles; what it cannot see is what
//! the others settled. A thread reads the topic (`tollgate_sink::reconcile::Reconciler`) and
//! books the others' sums with `budget::book` (no limit check: that spend already happened).
//! At start the gateway waits, up to `RECONCILE_CATCH_UP_MAX`, until the topic has been read
//! to its end, so a restarted replica never hands out budget the others have spent. The
//! overshoot this bounds is stated in ARCHITECTURE.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tollgate_sink::reconcile::{Posting, Reconciler};

use crate::limits;
use crate::metrics::Counter;
use crate::operator::report;
use crate::state::Gateway;

/// The file in the state folder holding this replica's id, made at first start.
const REPLICA_FILE: &str = "replica_id";

/// This replica's id: `kafka.replica` when configured, else the one kept in the state folder
/// (made at first start, so it survives restarts).
pub fn replica_id(gateway: &Gateway) -> std::io::Result<String> {
    if let Some(kafka) = &gateway.config.kafka
        && !kafka.origin.is_empty()
    {
        return Ok(kafka.origin.clone());
    }
    let path = gateway.config.state_dir.join(REPLICA_FILE);
    if let Some(id) = read_id(&path)? {
        return Ok(id);
    }
    let id: String = gateway
        .random::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::create_dir_all(&gateway.config.state_dir)?;
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(id.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    Ok(id)
}

fn read_id(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    match std::fs::File::open(path) {
        Ok(file) => {
            let mut text = String::new();
            file.take(256).read_to_string(&mut text)?;
            let id = text.trim();
            Ok((!id.is_empty()).then(|| id.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reading other replicas' spend from Kafka on a thread of its own, until stopped.
pub struct ReconcileTask {
    stop: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ReconcileTask {
    /// Starts reading the topic as replica `origin`, if Kafka and reconciliation are configured.
    pub fn start(
        gateway: &Arc<Gateway>,
        origin: &str,
    ) -> Result<Option<ReconcileTask>, tollgate_sink::reconcile::ReconcileError> {
        let (Some(kafka), Some(interval)) =
            (&gateway.config.kafka, gateway.config.reconcile_interval)
        else {
            return Ok(None);
        };
        let mut reconciler = Reconciler::new(
            &kafka.brokers,
            &kafka.topic,
            origin,
            limits::RECONCILE_DEDUP_WINDOW,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let caught_up = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, caught_up, gateway) = (
                Arc::clone(&stop),
                Arc::clone(&caught_up),
                Arc::clone(gateway),
            );
            std::thread::Builder::new()
                .name("tollgate-reconcile".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Until caught up, read in short steps and apply at once, so a start
                        // waits no longer than it must.
                        let step = if caught_up.load(Ordering::Relaxed) {
                            interval
                        } else {
                            Duration::from_millis(200)
                        };
                        reconciler.poll(step);
                        apply(&gateway, reconciler.take());
                        if !caught_up.load(Ordering::Relaxed) && reconciler.caught_up() {
                            caught_up.store(true, Ordering::Release);
                        }
                    }
                })
                .map_err(|e| tollgate_sink::reconcile::ReconcileError::Kafka(e.to_string()))?
        };
        Ok(Some(ReconcileTask {
            stop,
            caught_up,
            thread,
        }))
    }

    /// Waits until the topic has been read to its end and applied, or `limit` has passed
    /// (reported: the gateway then starts with what it has).
    pub async fn caught_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.caught_up.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                report(
                    "reconcile: other replicas' spend not fully read from Kafka yet; admitting on what is known",
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops reading (at shutdown).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Books other replicas' spend into the table.
fn apply(gateway: &Gateway, postings: Vec<Posting>) {
    for posting in postings {
        match gateway.directory.allocation(&posting.allocation) {
            Ok(allocation) => {
                tollgate_engine::book_elsewhere(&allocation, posting.at, posting.nanos);
                gateway
                    .metrics
                    .add(Counter::ReconciledEvents, posting.events);
                gateway
                    .metrics
                    .add(Counter::ReconciledNanos, posting.nanos.0);
            }
            Err(_) => gateway
                .metrics
                .add(Counter::ReconcileUnknownAllocation, posting.events),
        }
    }
}
