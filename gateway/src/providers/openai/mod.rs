//! OpenAI's API, and every server that speaks it: OpenAI and the OpenAI-compatible servers
//! (vLLM, Ollama, TGI, NIM, llama.cpp), whose OpenAI routes pass through natively, and
//! `/v1/messages` too for a server that also speaks Anthropic's Messages API
//! (`anthropic_messages = true`, as llama.cpp does); and [`azure`], the same dialect on Azure
//! OpenAI's deployment paths. One dialect, one folder: its routes, paths and reader are shared
//! by both adapters without a provider folder reaching into another.

pub mod azure;
pub mod read;

use http::Request;
use http::header::{self, HeaderValue};
use tollgate_engine::UnixMs;

use crate::http::route::Api;
use crate::providers::read::Reader;
use crate::providers::{
    Adapter, Answer, ProviderConfig, Serve, SetupError, SliceBody, credential, native_reader,
};

/// The path of an OpenAI route under an OpenAI-style base URL (which ends in `/v1`).
#[must_use]
pub fn route_path(route: Api) -> &'static str {
    match route {
        Api::ChatCompletions => "/chat/completions",
        Api::Completions => "/completions",
        Api::Embeddings => "/embeddings",
        Api::Responses => "/responses",
        // Beside the other routes, for servers that speak both.
        Api::Messages => "/messages",
    }
}

/// Whether OpenAI serves `route` natively, and whether its streams need asking for usage.
pub(crate) fn serves_openai(route: Api, provider: &str) -> Result<Serve, String> {
    match route {
        Api::ChatCompletions | Api::Completions => Ok(Serve::Native { stream_usage: true }),
        Api::Embeddings | Api::Responses => Ok(Serve::Native {
            stream_usage: false,
        }),
        Api::Messages => Err(format!(
            "provider `{provider}` speaks the OpenAI API: call it on /v1/chat/completions"
        )),
    }
}

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAi {
    credential: Option<HeaderValue>,
    anthropic_messages: bool,
}

impl OpenAi {
    /// Reads the bearer key named by `api_key_env`.
    pub fn new(
        config: &ProviderConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<OpenAi, SetupError> {
        Ok(OpenAi {
            credential: credential(config, env, |key| format!("Bearer {key}"))?,
            anthropic_messages: config.anthropic_messages,
        })
    }
}

impl Adapter for OpenAi {
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String> {
        match route {
            Api::Messages if self.anthropic_messages => Ok(Serve::Native {
                stream_usage: false,
            }),
            _ => serves_openai(route, provider),
        }
    }

    fn path(&self, route: Api, _model: &str, _stream: bool) -> String {
        route_path(route).to_owned()
    }

    fn authorize(&self, request: &mut Request<SliceBody>, _now: UnixMs) -> Result<(), http::Error> {
        if let Some(credential) = &self.credential {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, credential.clone());
        }
        Ok(())
    }

    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader> {
        native_reader(answer)
    }
}
