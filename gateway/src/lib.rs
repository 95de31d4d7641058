//! The tollgate gateway: an OpenAI- and Anthropic-compatible HTTP endpoint that checks keys,
//! allow-lists, rate limits and budgets before any model is called, and meters every call.
//!
//! The request path is [`pipeline`]; the state it shares is [`gateway::Gateway`]; answers are
//! metered by [`meter`] and their events leave through [`emit`]. The engine decides; this crate
//! does the I/O.
#![warn(missing_docs)]

pub mod admin;
pub mod bedrock;
pub mod client;
pub mod config;
pub mod emit;
pub mod error;
pub mod gateway;
pub mod import;
pub mod json_scan;
pub mod ledger;
pub mod limits;
pub mod meter;
pub mod metrics;
pub mod pipeline;
pub mod reconcile;
pub mod restore;
pub mod server;
pub mod ship;
pub mod sse;
pub mod state;
pub mod translate;
pub mod upstream;
pub mod wire;
