//! Blocks the spend guards place, made durable and shared: each block the request path places
//! ([`crate::guards::Guards::placed`]) is written as a journal record, or with a control topic
//! published there (every replica then blocks it too), and audited. An operator's clear goes
//! the same way (the admin API's `guards/clear`), so a restart or another replica keeps a
//! block exactly until it is cleared.
//!
//! **Invariant:** the request path never waits for this: a block holds in memory from the call
//! that tripped it; what is owed here is retried (once a second while the journal or the
//! brokers refuse) until it is written or the process stops.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tollgate_engine::time::format_rfc3339_s;

use super::Control;
use super::journal::Record;
use crate::guards::Block;
use crate::operator::report;

/// The pause before a block that could not be written is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The running writer of placed blocks.
#[derive(Debug)]
pub struct BlocksTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BlocksTask {
    /// Starts writing the blocks `control`'s guards place (`None` if another took them).
    #[must_use]
    pub fn start(control: Arc<Control>) -> Option<BlocksTask> {
        let mut placed = control.gateway.guards.placed()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let block = tokio::select! {
                    _ = stopped.changed() => break,
                    block = placed.recv() => block,
                };
                let Some(block) = block else { break };
                while !write(&control, &block).await {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
            // At a stop, what is queued already is written once more before the end.
            while let Ok(block) = placed.try_recv() {
                write(&control, &block).await;
            }
        });
        Some(BlocksTask { stop, task })
    }

    /// Stops, writing what is queued.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Writes `block`'s record and its audit line; whether it is done (written, or cleared by an
/// operator before it could be, when it is no longer owed: its record after the clear's would
/// put it back at the next start).
async fn write(control: &Control, block: &Block) -> bool {
    if !control.gateway.guards.blocks().contains(block) {
        return true;
    }
    let audit = json!({
        "at": format_rfc3339_s(block.at),
        "action": "guard_block",
        "guard": block.guard.as_str(),
        "scope": block.scope.as_str(),
        "name": &*block.name,
        "reason": &block.reason,
    });
    match control.persist(&Record::block(block), &audit).await {
        Ok(()) => true,
        Err(e) => {
            report(&format!(
                "guards: the block on {} `{}` holds here but is not written yet: {e}",
                block.scope.as_str(),
                block.name
            ));
            false
        }
    }
}
