//! Running the gateway: the accept loop and the route table above every handler.

pub mod router;
pub mod server;
