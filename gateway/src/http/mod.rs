//! The HTTP edge's plumbing, once: routing, capped body reading, the presented key, responses
//! and error envelopes, and the accept loop.
//!
//! Every handler (the request path in [`crate::proxy`], the ledger, the admin API) reads bodies
//! and builds answers with these; none has a copy of its own.

pub mod auth;
pub mod body;
pub mod error;
pub mod response;
pub mod route;
