//! Upstream providers, each a folder behind one [`Adapter`].
//!
//! An adapter says which of the gateway's routes its provider serves and how (as the client
//! wrote the body, or translated), where a call goes and how it is authenticated, and makes the
//! [`read::Reader`] of each answer. It works on bytes: a native call's body is the client's own
//! slices with the model renamed (see `proxy::admit`), never a parsed tree. Generic code never
//! names a provider: [`Provider::new`] is the one place a [`ProviderKind`] is matched outside
//! the validation of a `[[provider]]` table ([`config`]). A new dialect is its folder, one line
//! there and one in [`config`].

pub mod anthropic;
pub mod bedrock;
pub mod chat;
pub mod client;
pub mod config;
pub mod gemini;
pub mod openai;
pub mod read;
pub mod sse;
pub mod text;

use std::sync::Arc;

use http::{HeaderMap, Request};
use tollgate_engine::routing::{BreakerConfig, Health};
use tollgate_engine::{Gcra, UnixMs};

pub use self::chat::TranslateError;
pub use self::client::{SetupError, SliceBody, Upstream};
pub use self::config::{ProviderConfig, ProviderKind};
use crate::http::route::Api;
use crate::providers::read::{Pricer, Reader};

/// Rewrites an OpenAI chat-completions body for the provider: `(body, the provider's model
/// name, the completion cap to set when the client set none)`.
pub type TranslateRequest = fn(&[u8], &str, u64) -> Result<Vec<u8>, TranslateError>;

/// How a provider serves a call on one of the gateway's routes.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// The client's body goes upstream as written, the model renamed; `stream_usage` when a
    /// stream that did not ask for its usage must be made to (the gateway hides that chunk).
    Native {
        /// OpenAI's `stream_options.include_usage` is added to streams that lack it.
        stream_usage: bool,
    },
    /// The body is rewritten by this function; the answer by the adapter's reader.
    Translated(TranslateRequest),
}

/// What an adapter knows of an answer when it makes its reader.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The client's route.
    pub route: Api,
    /// The model as the client named it (a translated answer answers for it).
    pub model: &'a str,
    /// The upstream answered 2xx.
    pub success: bool,
    /// The client asked for a stream.
    pub stream: bool,
    /// The upstream's body is server-sent events.
    pub sse: bool,
    /// The client asked for the usage chunk at the end of a stream.
    pub include_usage: bool,
    /// The gateway asked for usage the client did not: its usage-only chunk is dropped.
    pub hide_usage: bool,
    /// The upstream's response headers.
    pub headers: &'a HeaderMap,
    /// Seconds since the epoch, for a translated answer's `created`.
    pub created_s: i64,
    /// Prices the call's usage, for the usage chunk a client asked for.
    pub pricer: Option<Pricer>,
}

/// One provider's dialect.
pub trait Adapter: Send + Sync {
    /// How the provider serves `route`, or why it does not (a 400 naming the right route).
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String>;
    /// The path and query, under the base URL, of a call on `route` to `model` (the name at
    /// the provider).
    fn path(&self, route: Api, model: &str, stream: bool) -> String;
    /// Adds the credential and the provider's protocol headers, signing the request where the
    /// provider signs.
    fn authorize(&self, request: &mut Request<SliceBody>, now: UnixMs) -> Result<(), http::Error>;
    /// The reader of an answer.
    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader>;
}

/// A configured provider: its deployments, each with its adapter and pooled client.
pub struct Provider {
    /// The `[[provider]]` table it was made from; its timeouts bound every call.
    pub config: ProviderConfig,
    /// Its name, as models name it (`name/model`).
    pub name: Arc<str>,
    /// Where its calls go; never empty (a provider listing none is one deployment).
    pub deployments: Vec<Deployment>,
}

/// One endpoint of a provider: what it speaks there (with its own credential), its client,
/// its share of calls and how it has been doing.
pub struct Deployment {
    /// As usage events record it.
    pub name: Arc<str>,
    /// Its share under weighted balancing.
    pub weight: u32,
    /// Most calls it serves at once.
    pub in_flight_max: Option<u64>,
    /// What it speaks: the routes it serves, paths, credentials, readers.
    pub adapter: Box<dyn Adapter>,
    /// Its HTTP client and base URL.
    pub upstream: Upstream,
    /// Calls in flight, time to first byte, breaker.
    pub health: Health,
    /// Its requests-per-minute quota, taken as an attempt is placed on it.
    pub requests: Option<Gcra>,
    /// Its tokens-per-minute quota, charged as each call on it ends.
    pub tokens: Option<Gcra>,
    /// Its own names for models (Azure deployments named per resource).
    pub names: std::collections::BTreeMap<String, String>,
}

impl Deployment {
    /// The name its path gives `model`: its own, where it has one.
    #[must_use]
    pub fn name_of<'m>(&'m self, model: &'m str) -> &'m str {
        self.names.get(model).map_or(model, String::as_str)
    }

    /// Whether its token quota has room at `now_us` (a deployment in debt takes no call).
    #[must_use]
    pub fn tokens_left(&self, now_us: i64) -> bool {
        self.tokens.as_ref().is_none_or(|t| t.check(now_us).is_ok())
    }

    /// Takes a request of its quota at `now_us`, if it has one left.
    #[must_use]
    pub fn take_request(&self, now_us: i64) -> bool {
        self.requests
            .as_ref()
            .is_none_or(|r| r.take(now_us, 1).is_ok())
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.config.kind.as_str())
            .field("deployments", &self.deployments.len())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Makes each deployment's adapter and client, reading credentials with `env` (the process
    /// environment in the binary); each deployment's breaker opens as `breaker` says.
    pub fn new(
        config: ProviderConfig,
        breaker: BreakerConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Provider, SetupError> {
        let mut deployments = Vec::with_capacity(config.deployments.len());
        for deployment in &config.deployments {
            let endpoint = &deployment.endpoint;
            deployments.push(Deployment {
                name: Arc::from(deployment.name.as_str()),
                weight: deployment.weight,
                in_flight_max: deployment.in_flight_max,
                adapter: adapter(endpoint, &env)?,
                upstream: Upstream::new(endpoint)?,
                health: Health::new(breaker),
                requests: deployment.requests_per_minute.map(Gcra::per_minute),
                tokens: deployment.tokens_per_minute.map(Gcra::per_minute),
                names: deployment.azure_deployments.clone(),
            });
        }
        Ok(Provider {
            name: Arc::from(config.name.as_str()),
            config,
            deployments,
        })
    }

    /// How the provider serves `route` (every deployment speaks the same), or why not.
    pub fn serves(&self, route: Api) -> Result<Serve, String> {
        match self.deployments.first() {
            Some(deployment) => deployment.adapter.serves(route, &self.name),
            None => Err(format!("provider `{}` has no deployment", self.name)),
        }
    }
}

/// The adapter of one endpoint: the one place a [`ProviderKind`] picks the code that speaks it.
fn adapter(
    config: &ProviderConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Box<dyn Adapter>, SetupError> {
    Ok(match config.kind {
        ProviderKind::Openai => Box::new(openai::OpenAi::new(config, env)?),
        ProviderKind::Azure => Box::new(openai::azure::Azure::new(config, env)?),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(config, env)?),
        ProviderKind::Bedrock => Box::new(bedrock::Bedrock::new(config, env)?),
        ProviderKind::Gemini => Box::new(gemini::Gemini::new(config, env)?),
    })
}

/// The credential in `config.api_key_env` as a sensitive header value made by `format` (a
/// bare key, or `Bearer ...`); `None` when no variable is configured.
pub fn credential(
    config: &ProviderConfig,
    env: &impl Fn(&str) -> Option<String>,
    format: impl Fn(String) -> String,
) -> Result<Option<http::HeaderValue>, SetupError> {
    let Some(var) = &config.api_key_env else {
        return Ok(None);
    };
    let value = env(var).filter(|v| !v.is_empty());
    let Some(mut header) =
        value.and_then(|secret| http::HeaderValue::try_from(format(secret)).ok())
    else {
        return Err(SetupError::Credential {
            provider: config.name.clone(),
            var: var.clone(),
        });
    };
    header.set_sensitive(true);
    Ok(Some(header))
}

/// Whether a streamed call of `route` can be ended by the gateway mid-way ([`Reader::stop`]):
/// chat-completions streams, native or translated, and Messages streams (always native), whose
/// readers end them as the provider does at its output limit. Completions and responses
/// streams are capped at admission instead.
#[must_use]
pub fn stops_streams(route: Api) -> bool {
    matches!(route, Api::ChatCompletions | Api::Messages)
}

/// The reader of a native answer in the route's own dialect: OpenAI's for its routes,
/// Anthropic's for `/v1/messages`. Error answers pass through as the provider wrote them.
#[must_use]
pub fn native_reader(answer: &Answer<'_>) -> Box<dyn Reader> {
    use crate::limits::STREAM_TEXT_BYTES_MAX;
    use crate::providers::read::{Events, Whole, no_usage};
    if !answer.success {
        return Box::new(Whole::passed(no_usage));
    }
    match (answer.route, answer.sse) {
        (Api::Messages, true) => Box::new(Events::new(
            anthropic::read::AnthropicTally::new(STREAM_TEXT_BYTES_MAX),
            false,
        )),
        (Api::Messages, false) => Box::new(Whole::passed(anthropic::read::usage_of_body)),
        (Api::ChatCompletions, true) => Box::new(Events::new(
            openai::read::OpenAiTally::chat(
                STREAM_TEXT_BYTES_MAX,
                answer.include_usage,
                answer.pricer.clone(),
            ),
            answer.hide_usage,
        )),
        (_, true) => Box::new(Events::new(
            openai::read::OpenAiTally::new(STREAM_TEXT_BYTES_MAX),
            answer.hide_usage,
        )),
        (_, false) => Box::new(Whole::passed(openai::read::usage_of_body)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::header::{self, HeaderValue};

    use super::*;

    fn config(kind: ProviderKind, api_key_env: Option<&str>) -> ProviderConfig {
        let mut config = endpoint(kind, api_key_env);
        config.deployments = vec![config::DeploymentConfig {
            name: config.name.clone(),
            weight: 1,
            in_flight_max: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            azure_deployments: std::collections::BTreeMap::new(),
            endpoint: Box::new(config.clone()),
        }];
        config
    }

    fn make(
        config: ProviderConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Provider, SetupError> {
        Provider::new(config, BreakerConfig::default(), env)
    }

    fn endpoint(kind: ProviderKind, api_key_env: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            name: kind.as_str().into(),
            kind,
            base_url: "http://127.0.0.1:9".into(),
            api_key_env: api_key_env.map(str::to_owned),
            api_version: Some("2024-10-21".into()),
            region: Some("us-east-1".into()),
            vertex: None,
            anthropic_messages: false,
            connect_timeout: std::time::Duration::from_secs(1),
            first_byte_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            deployments: Vec::new(),
        }
    }

    #[test]
    fn azure_paths_name_the_deployment_and_the_api_version() {
        let azure = make(config(ProviderKind::Azure, None), |_| None).unwrap();
        let path = |route, model| azure.deployments[0].adapter.path(route, model, false);
        assert_eq!(
            path(Api::ChatCompletions, "gpt-4o prod"),
            "/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            path(Api::Embeddings, "emb"),
            "/openai/deployments/emb/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            path(Api::Responses, "x"),
            "/openai/v1/responses?api-version=2024-10-21"
        );
    }

    #[test]
    fn requests_carry_the_provider_credential_and_never_the_clients_key() {
        let var = "ANTHROPIC_API_KEY";
        let config = config(ProviderKind::Anthropic, Some(var));
        assert!(matches!(
            make(config.clone(), |_| None),
            Err(SetupError::Credential { .. })
        ));
        let env = |name: &str| (name == var).then(|| "sk-ant-provider".to_owned());
        let provider = make(config, env).unwrap();
        let deployment = &provider.deployments[0];
        let mut client_headers = HeaderMap::new();
        client_headers.insert("x-api-key", HeaderValue::from_static("tg_virtual"));
        client_headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tg_v"),
        );
        client_headers.insert("anthropic-beta", HeaderValue::from_static("tools-2024"));
        let path = deployment.adapter.path(Api::Messages, "claude", false);
        let mut request = deployment
            .upstream
            .request(
                &path,
                SliceBody::new([Bytes::from_static(b"{}")]),
                &client_headers,
            )
            .unwrap();
        deployment
            .adapter
            .authorize(&mut request, UnixMs(0))
            .unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:9/v1/messages");
        assert_eq!(request.headers()["x-api-key"], "sk-ant-provider");
        assert!(request.headers()["x-api-key"].is_sensitive());
        assert!(request.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(request.headers()["anthropic-beta"], "tools-2024");
        assert_eq!(request.headers()["anthropic-version"], "2023-06-01");
        assert_eq!(request.headers()[header::CONTENT_LENGTH], "2");
    }

    #[test]
    fn every_kind_says_which_routes_it_serves() {
        for kind in [
            ProviderKind::Openai,
            ProviderKind::Azure,
            ProviderKind::Anthropic,
            ProviderKind::Bedrock,
            ProviderKind::Gemini,
        ] {
            let env = |_: &str| Some("x".to_owned());
            let provider = make(config(kind, Some("KEY")), env).unwrap();
            assert!(
                provider.serves(Api::ChatCompletions).is_ok(),
                "{kind:?} serves chat completions, natively or translated"
            );
            let wrong = match kind {
                ProviderKind::Openai | ProviderKind::Azure => Api::Messages,
                ProviderKind::Anthropic | ProviderKind::Bedrock | ProviderKind::Gemini => {
                    Api::Embeddings
                }
            };
            let refusal = provider.serves(wrong).err().unwrap();
            assert!(refusal.contains("call it on /v1/"), "{refusal}");
        }
    }
}
