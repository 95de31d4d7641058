//! The control plane: the admin API, the journal of admin changes and the audit log, and
//! replication across replicas (admin changes on the control topic, shipping the log to
//! Kafka, reconciling others' spend).
//!
//! [`Control`] holds the request path's handle beside its own state; the request path never
//! reaches back into it.

pub mod access;
pub mod admin;
pub mod blocks;
pub mod bodies;
pub mod coordinate;
pub mod expiry;
pub mod forecast;
pub mod journal;
pub mod leases;
pub mod reconcile;
pub mod replicate;
pub mod session;
pub mod ship;
pub mod spend;
pub mod webhooks;

use std::sync::Arc;

use crate::http::auth::AdminToken;
use crate::state::Gateway;
use crate::usage::Ledger;
use journal::Journal;
use replicate::Replication;

/// The control plane's state, and the request path's handle it works on. The route table
/// serves from it: model calls get [`Control::gateway`], the admin API all of it, the ledger's
/// routes the ledger and the token.
#[derive(Debug)]
pub struct Control {
    /// What a model call needs (keys, rate card, providers, rates, emitter, metrics); the
    /// admin API adds keys and allocations to it and swaps its rate card.
    pub gateway: Arc<Gateway>,
    /// The journal of admin changes and the audit log.
    pub journal: Journal,
    /// Where admin changes are published when replicas share a control topic (`[kafka]`);
    /// `None` keeps them in the journal.
    pub replication: Option<Replication>,
    /// The resource ledger: booked record ids and holds for authorized usage.
    pub ledger: Arc<Ledger>,
    /// The operator's token for the admin API and the ledger's admin submissions.
    pub admin: AdminToken,
    /// Every limited budget level's burn-rate forecast.
    pub forecasts: Arc<forecast::Forecasts>,
    /// The console's sign-ins (`None`: `[console]` is off, and no cookie is honoured).
    pub sessions: Option<session::Sessions>,
    /// The totals of whole usage files the admin API's rollups have read, kept.
    pub summaries: Arc<tollgate_sink::rollup::Summaries>,
}

impl Control {
    /// Makes `record` durable before its change is acknowledged: on the control topic when
    /// replicas share one, else in the journal; `audit` goes to the local audit log either
    /// way.
    pub async fn persist(
        &self,
        record: &journal::Record,
        audit: &serde_json::Value,
    ) -> Result<(), String> {
        match &self.replication {
            Some(replication) => {
                let change = replicate::Change::Directory {
                    record: record.clone(),
                };
                replication
                    .publish(&change)
                    .await
                    .map_err(|e| e.to_string())?;
                self.journal.audit(audit)
            }
            None => self.journal.append(record, audit),
        }
        .map_err(|e| e.to_string())
    }
}
