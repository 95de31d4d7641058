//! The HTTP edge: the accept loop, routing, capped body reading, responses and error envelopes.
//!
//! Everything that touches a raw request or builds a response lives here once; the request path
//! ([`crate::proxy`]), the ledger and the admin API use it and never build envelopes of their own.

pub mod error;
pub mod server;
