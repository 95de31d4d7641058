//! Upstream providers: the pooled client and each provider's dialect.

pub mod anthropic;
pub mod bedrock;
pub mod client;
pub mod sse;
pub mod wire;
