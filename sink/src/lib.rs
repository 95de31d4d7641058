//! Everything that happens to a usage event after the gateway creates it: the durable log,
//! the Kafka shipper, the Parquet writer, reconciliation into the budget table and rollups.
//!
//! The durable segmented [`log`], the Kafka [`kafka`] shipper and the [`consume`]r behind
//! `tollgate sink`, the [`control`] topic replicas share admin changes through, Parquet files ([`columnar`]) from
//! the one derivation of the event's columnar [`schema`], chargeback [`rollup`]s and the FOCUS
//! export ([`focus`]).
#![warn(missing_docs)]

pub mod advice;
pub mod columnar;
pub mod consume;
pub mod control;
pub mod dedup;
pub mod focus;
pub mod kafka;
pub mod leases;
pub mod log;
pub mod reconcile;
pub mod rollup;
pub mod schema;
mod topic;
