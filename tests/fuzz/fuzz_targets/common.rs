//! One provider of every kind, as the fuzz targets drive them.

use std::sync::LazyLock;
use std::time::Duration;

use tollgate_gateway::config::{ProviderConfig, ProviderKind, Vertex};
use tollgate_gateway::providers::Provider;

/// Every kind, made once (making one loads the system's TLS roots).
pub fn providers() -> &'static [Provider] {
    static PROVIDERS: LazyLock<Vec<Provider>> = LazyLock::new(make);
    &PROVIDERS
}

/// Every kind, with the credentials each reads (fixed fake values).
fn make() -> Vec<Provider> {
    let kinds = [
        ProviderKind::Openai,
        ProviderKind::Azure,
        ProviderKind::Anthropic,
        ProviderKind::Bedrock,
        ProviderKind::Gemini,
    ];
    kinds
        .into_iter()
        .filter_map(|kind| {
            let config = ProviderConfig {
                name: kind.as_str().into(),
                kind,
                base_url: "http://127.0.0.1:9".into(),
                api_key_env: None,
                api_version: Some("2024-10-21".into()),
                region: Some("us-east-1".into()),
                vertex: (kind == ProviderKind::Gemini).then(|| Vertex {
                    project: "p".into(),
                    location: "global".into(),
                }),
                anthropic_messages: kind == ProviderKind::Openai,
                connect_timeout: Duration::from_secs(1),
                first_byte_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            };
            Provider::new(config, |_| Some("AKIDEXAMPLE".to_owned())).ok()
        })
        .collect()
}
