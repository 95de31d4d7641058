//! Load testing for tollgate: a mock provider speaking each provider's wire format, and the
//! load generator. It talks to the gateway only over HTTP, as a user does.
#![warn(missing_docs)]

pub mod load;
pub mod mock;
