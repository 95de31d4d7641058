//! Work that runs beside the server from start to stop, all in one shape (Pingora's
//! `BackgroundService`): each task is started by [`super::start`] before anything listens,
//! and stopped by [`super::Running::stop`] once the server has drained, given a deadline to
//! finish what it owes. The event syncer owes the last sync, the shipper the last shipment;
//! the sweeper and the reconciler owe nothing and stop at once.
//!
//! Each task keeps its own natural stop (a flag and a thread join, a watch channel); the
//! adapters below put them behind one trait here, so the tasks' modules need not know the
//! runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use crate::control::blocks::BlocksTask;
use crate::control::coordinate::CoordinatorTask;
use crate::control::forecast::ForecastTask;
use crate::control::leases::LeaseTask;
use crate::control::reconcile::ReconcileTask;
use crate::control::replicate::FollowTask;
use crate::control::ship::ShipTask;
use crate::control::webhooks::WebhookTask;
use crate::events::emit::Writer;
use crate::usage::Sweeper;

/// What stopping a task comes to: an error means it could not finish what it owed.
pub type Stopping = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A background task of the running gateway.
pub trait Background: Send {
    /// Its name in shutdown reports.
    fn name(&self) -> &'static str;

    /// Tells it to stop and waits until it has, finishing what it owes within `deadline`
    /// where it owes anything.
    fn stop(self: Box<Self>, deadline: Duration) -> Stopping;
}

/// Joins blocking work off the async threads.
async fn blocking(work: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("stopping: {e}")))?
}

impl Background for Writer {
    fn name(&self) -> &'static str {
        "event log syncer"
    }

    /// The last sync waits for the disk however long it takes: a deadline here would make
    /// queued events look durable when they are not.
    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(blocking(move || Writer::stop(*self)))
    }
}

impl Background for ShipTask {
    fn name(&self) -> &'static str {
        "kafka shipping"
    }

    fn stop(self: Box<Self>, deadline: Duration) -> Stopping {
        Box::pin(async move {
            ShipTask::finish(*self, deadline).await;
            Ok(())
        })
    }
}

impl Background for BlocksTask {
    fn name(&self) -> &'static str {
        "guard blocks"
    }

    /// Owes the blocks queued: each is written once more before the end.
    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(async move {
            BlocksTask::stop(*self).await;
            Ok(())
        })
    }
}

impl Background for ForecastTask {
    fn name(&self) -> &'static str {
        "burn-rate forecasts and key expiry"
    }

    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(async move {
            ForecastTask::stop(*self).await;
            Ok(())
        })
    }
}

impl Background for WebhookTask {
    fn name(&self) -> &'static str {
        "alert deliveries"
    }

    /// Owes nothing: an alert being sent is sent again at the next start.
    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(async move {
            WebhookTask::stop(*self).await;
            Ok(())
        })
    }
}

impl Background for FollowTask {
    fn name(&self) -> &'static str {
        "control topic"
    }

    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(blocking(move || {
            FollowTask::stop(*self);
            Ok(())
        }))
    }
}

impl Background for ReconcileTask {
    fn name(&self) -> &'static str {
        "kafka reconciliation"
    }

    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(blocking(move || {
            ReconcileTask::stop(*self);
            Ok(())
        }))
    }
}

impl Background for Sweeper {
    fn name(&self) -> &'static str {
        "reservation sweeper"
    }

    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(async move {
            Sweeper::stop(*self).await;
            Ok(())
        })
    }
}

impl Background for LeaseTask {
    fn name(&self) -> &'static str {
        "budget leases"
    }

    /// Gives every unused lease back first; the writes wait for the brokers at most their
    /// delivery timeout each.
    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(blocking(move || {
            LeaseTask::stop(*self);
            Ok(())
        }))
    }
}

impl Background for CoordinatorTask {
    fn name(&self) -> &'static str {
        "lease coordinator"
    }

    fn stop(self: Box<Self>, _deadline: Duration) -> Stopping {
        Box::pin(blocking(move || {
            CoordinatorTask::stop(*self);
            Ok(())
        }))
    }
}
