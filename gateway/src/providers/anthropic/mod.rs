//! Anthropic's Messages API: `/v1/messages` natively, and OpenAI chat completions translated
//! both ways ([`translate`]), streaming and tools included.

pub mod read;
pub mod translate;

use http::Request;
use http::header::{HeaderName, HeaderValue};
use tollgate_engine::{TokenUsage, UnixMs};

use crate::http::route::Api;
use crate::limits::STREAM_TEXT_BYTES_MAX;
use crate::providers::read::{
    Reader, Reading, Rewrite, Tally as _, TranslatedEvents, Translator, Whole, no_usage,
};
use crate::providers::{
    Adapter, Answer, ProviderConfig, Serve, SetupError, SliceBody, credential, native_reader,
};

use self::read::AnthropicTally;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The header every Messages call carries; a client's own value is forwarded.
pub const VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// The version sent when the client named none.
const VERSION_DEFAULT: HeaderValue = HeaderValue::from_static("2023-06-01");

/// Anthropic's API: the key as `x-api-key`, and an `anthropic-version` on every call.
#[derive(Debug)]
pub struct Anthropic {
    credential: Option<HeaderValue>,
}

impl Anthropic {
    /// Reads the key named by `api_key_env`.
    pub fn new(
        config: &ProviderConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Anthropic, SetupError> {
        Ok(Anthropic {
            credential: credential(config, env, |key| key)?,
        })
    }
}

impl Adapter for Anthropic {
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String> {
        match route {
            Api::Messages => Ok(Serve::Native {
                stream_usage: false,
            }),
            Api::ChatCompletions => Ok(Serve::Translated(translate::chat_to_messages)),
            Api::Completions | Api::Embeddings | Api::Responses => Err(format!(
                "provider `{provider}` speaks Anthropic's Messages API: call it on /v1/messages or /v1/chat/completions"
            )),
        }
    }

    fn path(&self, _route: Api, _model: &str, _stream: bool) -> String {
        "/v1/messages".to_owned()
    }

    fn authorize(&self, request: &mut Request<SliceBody>, _now: UnixMs) -> Result<(), http::Error> {
        let headers = request.headers_mut();
        if let Some(credential) = &self.credential {
            headers.insert(X_API_KEY, credential.clone());
        }
        if !headers.contains_key(VERSION) {
            headers.insert(VERSION, VERSION_DEFAULT);
        }
        Ok(())
    }

    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader> {
        if answer.route == Api::Messages {
            return native_reader(answer);
        }
        if !answer.success {
            let rewrite: Rewrite = Box::new(translate::error_to_openai);
            return Box::new(Whole::rewritten(no_usage, rewrite));
        }
        if answer.stream && answer.sse {
            return Box::new(TranslatedEvents::new(Chunks {
                tally: AnthropicTally::new(STREAM_TEXT_BYTES_MAX),
                translator: translate::StreamTranslator::new(
                    answer.model,
                    answer.created_s,
                    answer.include_usage,
                )
                .priced(answer.pricer.clone()),
            }));
        }
        Box::new(Whole::to_chat(
            answer,
            read::usage_of_body,
            translate::message_to_chat,
        ))
    }
}

/// A Messages stream as OpenAI chunks: metered on Anthropic's own events, then translated.
struct Chunks {
    tally: AnthropicTally,
    translator: translate::StreamTranslator,
}

impl Translator for Chunks {
    fn event(&mut self, data: &[u8], out: &mut String) -> bool {
        let observed = self.tally.observe(data);
        self.translator.event(data, out);
        observed.text
    }

    fn finish(&mut self, _out: &mut String) {
        // Anthropic ends its own stream (`message_stop`); a cut one is cut for the client too.
    }

    fn reading(&mut self) -> Reading {
        self.tally.reading()
    }

    fn text_bytes(&self) -> u64 {
        self.tally.text_bytes()
    }

    fn stop(&mut self, usage: &TokenUsage, out: &mut String) {
        self.translator.stop(usage, out);
    }
}
