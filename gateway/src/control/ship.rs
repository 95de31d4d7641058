//! Ships the synced event log to Kafka in the background, when `[kafka]` is configured.
//!
//! The broker being down never touches the request path: events stay in the log, the task
//! retries with a growing pause (up to `SHIP_BACKOFF_MAX`), and the backlog drains when the
//! broker returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate_sink::kafka::Shipper;

use crate::limits::KAFKA_SHIP_INTERVAL;
use crate::operator::report;
use crate::state::Gateway;

/// Longest pause between two failed passes.
const SHIP_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The running shipper: stop it to ship what is left.
pub struct ShipTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ShipTask {
    /// Starts shipping `gateway`'s log as replica `origin`, if Kafka is configured.
    pub fn start(
        gateway: &Arc<Gateway>,
        origin: &str,
    ) -> Result<Option<ShipTask>, tollgate_sink::kafka::ShipError> {
        let Some(mut config) = gateway.config.kafka.clone() else {
            return Ok(None);
        };
        origin.clone_into(&mut config.origin);
        let mut shipper = Shipper::new(&gateway.emitter.log_dir(), &config)?;
        let (stop, mut stopped) = watch::channel(false);
        let gateway = Arc::clone(gateway);
        let task = tokio::spawn(async move {
            let mut pause = KAFKA_SHIP_INTERVAL;
            loop {
                let until = gateway.emitter.synced_offset();
                match shipper.ship_or_reset(until).await {
                    Ok(_) => {
                        if pause > KAFKA_SHIP_INTERVAL {
                            report("kafka: shipping resumed");
                        }
                        pause = KAFKA_SHIP_INTERVAL;
                    }
                    Err(e) => {
                        if pause == KAFKA_SHIP_INTERVAL {
                            report(&format!("kafka: {e}; events wait in the log"));
                        }
                        pause = (pause * 2).min(SHIP_BACKOFF_MAX);
                    }
                }
                if *stopped.borrow() {
                    // Shutdown: keep at it until everything synced is acknowledged (the caller
                    // bounds how long).
                    loop {
                        let until = gateway.emitter.synced_offset();
                        let done = shipper.checkpoint().is_ok_and(|c| c >= until);
                        if done
                            || shipper
                                .ship_or_reset(until)
                                .await
                                .is_ok_and(|_| shipper.checkpoint().is_ok_and(|c| c >= until))
                        {
                            let _ = shipper.flush(Duration::from_secs(5));
                            return;
                        }
                        tokio::time::sleep(KAFKA_SHIP_INTERVAL).await;
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        Ok(Some(ShipTask { stop, task }))
    }

    /// Ships what is synced now, then stops (call after the event log's last sync).
    pub async fn finish(self, wait: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(wait, self.task).await.is_err() {
            report("shutdown: kafka shipping did not finish; the rest ships at the next start");
        }
    }
}
