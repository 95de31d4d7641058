//! Google Gemini behind OpenAI's chat completions: the Gemini API (`generativelanguage`,
//! `x-goog-api-key`) and Vertex AI (the same body under a project and location, an OAuth
//! access token as the bearer), both written by [`translate`].
//!
//! Paths: `/v1beta/models/{model}:generateContent`, and `:streamGenerateContent?alt=sse` for a
//! stream (one whole response per event, no `[DONE]`); on Vertex AI
//! `/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:...`.

pub mod config;
pub mod translate;

use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use tollgate_engine::{TokenUsage, UnixMs};

use crate::http::route::Api;
use crate::limits::STREAM_TEXT_BYTES_MAX;
use crate::providers::client::percent_encode_segment;
use crate::providers::read::{
    Reader, Reading, Rewrite, TranslatedEvents, Translator, Whole, no_usage,
};
use crate::providers::{
    Adapter, Answer, ProviderConfig, Serve, SetupError, SliceBody, TranslateError, credential,
};

use self::config::Vertex;

const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// A Gemini provider, on the Gemini API or on Vertex AI.
#[derive(Debug)]
pub struct Gemini {
    /// `x-goog-api-key` (Gemini API) or `Authorization: Bearer` (Vertex AI).
    credential: Option<(HeaderName, HeaderValue)>,
    vertex: Option<Vertex>,
}

impl Gemini {
    /// Reads the API key, or Vertex AI's access token, named by `api_key_env`.
    pub fn new(
        config: &ProviderConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Gemini, SetupError> {
        let credential = match &config.vertex {
            None => credential(config, env, |key| key)?.map(|v| (API_KEY, v)),
            Some(_) => credential(config, env, |token| format!("Bearer {token}"))?
                .map(|v| (header::AUTHORIZATION, v)),
        };
        Ok(Gemini {
            credential,
            vertex: config.vertex.clone(),
        })
    }
}

fn chat_to_generate(
    body: &[u8],
    _model: &str,
    output_tokens_max: u64,
) -> Result<Vec<u8>, TranslateError> {
    // The model is in the path, not the body.
    translate::chat_to_generate(body, output_tokens_max)
}

impl Adapter for Gemini {
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String> {
        match route {
            Api::ChatCompletions => Ok(Serve::Translated(chat_to_generate)),
            Api::Completions | Api::Embeddings | Api::Responses | Api::Messages => Err(format!(
                "provider `{provider}` is Google's Gemini API: call it on /v1/chat/completions"
            )),
        }
    }

    fn path(&self, _route: Api, model: &str, stream: bool) -> String {
        let model = percent_encode_segment(model);
        let action = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        match &self.vertex {
            None => format!("/v1beta/models/{model}:{action}"),
            Some(v) => format!(
                "/v1/projects/{}/locations/{}/publishers/google/models/{model}:{action}",
                v.project, v.location
            ),
        }
    }

    fn authorize(&self, request: &mut Request<SliceBody>, _now: UnixMs) -> Result<(), http::Error> {
        let headers = request.headers_mut();
        // Anthropic's and OpenAI's headers from a client mean nothing to Google.
        for name in ["anthropic-version", "anthropic-beta", "openai-beta"] {
            headers.remove(name);
        }
        if let Some((name, value)) = &self.credential {
            headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader> {
        if !answer.success {
            let rewrite: Rewrite = Box::new(translate::error_to_openai);
            return Box::new(Whole::rewritten(no_usage, rewrite));
        }
        if answer.stream && answer.sse {
            return Box::new(TranslatedEvents::new(Stream(
                translate::StreamTranslator::new(
                    answer.model,
                    answer.created_s,
                    answer.include_usage,
                    STREAM_TEXT_BYTES_MAX,
                )
                .priced(answer.pricer.clone()),
            )));
        }
        Box::new(Whole::to_chat(
            answer,
            usage_of_body,
            translate::generate_to_chat,
        ))
    }
}

/// The usage in a whole `GenerateContentResponse`.
fn usage_of_body(body: &[u8]) -> Option<tollgate_engine::TokenUsage> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    translate::usage_of(value.get("usageMetadata")?)
}

/// An `alt=sse` stream as OpenAI chunks.
struct Stream(translate::StreamTranslator);

impl Translator for Stream {
    fn event(&mut self, data: &[u8], out: &mut String) -> bool {
        self.0.event(data, out)
    }

    fn finish(&mut self, out: &mut String) {
        self.0.finish(out);
    }

    fn reading(&mut self) -> Reading {
        Reading::of_stream(self.0.usage, &mut self.0.kept)
    }

    fn text_bytes(&self) -> u64 {
        self.0.kept.seen_bytes()
    }

    fn stop(&mut self, usage: &TokenUsage, out: &mut String) {
        self.0.stop(usage, out);
    }
}
