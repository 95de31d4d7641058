//! The tollgate gateway: an OpenAI- and Anthropic-compatible HTTP endpoint that checks keys,
//! allow-lists, rate limits and budgets before any model is called, and meters every call.
//!
//! The folders are the architecture (ARCHITECTURE.md has the codemap and the boundary rules):
//! [`http`] accepts and answers, [`proxy`] is the request path of a model call, [`providers`]
//! speak each upstream's dialect behind one adapter, [`events`] make calls durable,
//! [`usage`] is the resource ledger, [`control`] the admin API and replication, [`runtime`]
//! starts and stops it all. The engine decides; this crate does the I/O.
#![warn(missing_docs)]

pub mod admission;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod events;
pub mod expected;
pub mod guards;
pub mod http;
pub mod json_scan;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod prefix;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod usage;
