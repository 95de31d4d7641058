//! Load testing for tollgate: a mock provider speaking each provider's wire format, a bare
//! pass-through proxy for baselines, and the agent-fleet harness with its books. It talks to the
//! gateway only over HTTP, as a user does.
#![warn(missing_docs)]

pub mod books;
pub mod fleet;
pub mod harness;
pub mod http;
pub mod load;
pub mod mock;
pub mod proxy;
pub mod report;
pub mod scenario;
