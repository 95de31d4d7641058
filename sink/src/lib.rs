//! Everything that happens to a usage event after the gateway creates it: the durable log,
//! the Kafka shipper, the Parquet writer, reconciliation into the budget table and rollups.
//!
//! Today it holds the one derivation of the event's columnar schema ([`schema`]) and the
//! durable segmented [`log`]; the shipper and the Parquet writer build on them.
#![warn(missing_docs)]

pub mod columnar;
pub mod focus;
pub mod log;
pub mod rollup;
pub mod schema;
