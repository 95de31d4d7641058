//! The mock provider and the load generator. They talk to the gateway only over HTTP, as a
//! user does, and never link against its code; both land with the load-harness work.
