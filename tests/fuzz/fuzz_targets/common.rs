//! One provider of every kind, as the fuzz targets drive them.

use std::path::Path;
use std::sync::LazyLock;

use tollgate_engine::routing::BreakerConfig;
use tollgate_gateway::config::Config;
use tollgate_gateway::providers::Provider;

/// Every kind, made once (making one loads the system's TLS roots).
pub fn providers() -> &'static [Provider] {
    static PROVIDERS: LazyLock<Vec<Provider>> = LazyLock::new(make);
    &PROVIDERS
}

/// Guards watching for loops, fingerprinting calls by their last four messages.
#[allow(dead_code, reason = "used by some of the targets that include this module")]
pub fn guards() -> &'static tollgate_gateway::guards::Guards {
    use tollgate_engine::guard::{Action, LoopRule};
    use tollgate_gateway::config::{GuardsConfig, LoopConfig};
    static GUARDS: LazyLock<tollgate_gateway::guards::Guards> = LazyLock::new(|| {
        tollgate_gateway::guards::Guards::new(&GuardsConfig {
            loops: Some(LoopConfig {
                rule: LoopRule {
                    repeats: 3,
                    window_ms: 1_000,
                    growing_calls: 3,
                },
                messages: 4,
                action: Action::Throttle,
            }),
            velocity: Vec::new(),
        })
    });
    &GUARDS
}

/// Every kind, with the credentials each reads (fixed fake values), made from a config file as
/// the gateway makes them.
fn make() -> Vec<Provider> {
    const PROVIDERS: &str = r#"
rate_card = "rates.toml"
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9"
anthropic_messages = true
[[provider]]
name = "azure"
kind = "azure"
base_url = "http://127.0.0.1:9"
api_version = "2024-10-21"
[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9"
[[provider]]
name = "bedrock"
kind = "bedrock"
base_url = "http://127.0.0.1:9"
region = "us-east-1"
[[provider]]
name = "gemini"
kind = "gemini"
base_url = "http://127.0.0.1:9"
project = "p"
location = "global"
"#;
    // A target that drove no provider would find nothing: fail at once instead.
    let config =
        Config::from_toml(PROVIDERS, "fuzz", Path::new(".")).expect("the providers' config");
    config
        .providers
        .into_iter()
        .map(|provider| {
            Provider::new(provider, BreakerConfig::default(), |_| {
                Some("AKIDEXAMPLE".to_owned())
            })
            .expect("a provider of every kind")
        })
        .collect()
}
