//! The control plane: the admin API, the journal of admin changes and the audit log, and
//! replication across replicas (shipping the log to Kafka, reconciling others' spend).
//!
//! It holds the request path's state; the request path never reaches back into it.

pub mod admin;
pub mod journal;
pub mod reconcile;
pub mod ship;
