//! AWS Bedrock's Converse API behind OpenAI's chat completions.
//!
//! Facts from the service's own model (botocore's `bedrock-runtime` service JSON): the paths are
//! `/model/{modelId}/converse` and `/model/{modelId}/converse-stream` with the model id
//! percent-encoded (`:` as `%3A`); the SigV4 service name is `bedrock` (not the endpoint prefix);
//! a stream is binary event-stream frames ([`eventstream`]) whose `metadata` event (usage)
//! follows `messageStop`; text blocks have no `contentBlockStart`. Usage normalises like
//! Anthropic's: `inputTokens` are uncached, cache reads and writes are summed into `input`.
//! Requests are signed with SigV4 ([`sigv4`]) or carry a Bedrock API key as a bearer token.

pub mod config;
pub mod converse;
pub mod eventstream;
pub mod sigv4;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use tollgate_engine::{TokenUsage, UnixMs};

use crate::http::route::Api;
use crate::limits::STREAM_TEXT_BYTES_MAX;
use crate::providers::client::percent_encode_segment;
use crate::providers::read::{Pushed, ReadError, Reader, Reading, Rewrite, Whole, no_usage};
use crate::providers::{Adapter, Answer, ProviderConfig, Serve, SetupError, SliceBody, credential};

use self::eventstream::{Decoder, Frame};
use self::sigv4::Credentials;

/// Bedrock, in one region.
#[derive(Debug)]
pub struct Bedrock {
    /// A Bedrock API key, sent as a bearer token; without one, requests are signed.
    api_key: Option<HeaderValue>,
    aws: Option<Credentials>,
    region: String,
}

impl Bedrock {
    /// Reads the API key named by `api_key_env`, or else the standard AWS variables.
    pub fn new(
        config: &ProviderConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Bedrock, SetupError> {
        let api_key = credential(config, env, |key| format!("Bearer {key}"))?;
        let aws = match api_key {
            Some(_) => None,
            None => {
                let get = |var: &str| env(var).filter(|v| !v.is_empty());
                let missing = |var: &str| SetupError::Credential {
                    provider: config.name.clone(),
                    var: var.to_owned(),
                };
                Some(Credentials {
                    access_key_id: get("AWS_ACCESS_KEY_ID")
                        .ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
                    secret_access_key: get("AWS_SECRET_ACCESS_KEY")
                        .ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
                    session_token: get("AWS_SESSION_TOKEN"),
                })
            }
        };
        Ok(Bedrock {
            api_key,
            aws,
            // Checked present by config validation.
            region: config.region.clone().unwrap_or_default(),
        })
    }

    /// Signs `request` with SigV4: host, date, content type and session token.
    fn sign(
        &self,
        request: &mut Request<SliceBody>,
        aws: &Credentials,
        now: UnixMs,
    ) -> Result<(), http::Error> {
        let date = sigv4::amz_date(now);
        let payload = sigv4::payload_hash(request.body().chunks().map(|c| &c[..]));
        let host = request
            .uri()
            .authority()
            .map_or("", |a| a.as_str())
            .to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let mut signed = vec![
            ("content-type", "application/json"),
            ("host", host.as_str()),
            ("x-amz-date", date.as_str()),
        ];
        if let Some(token) = &aws.session_token {
            signed.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sigv4::authorization(
            &sigv4::Signable {
                method: "POST",
                path: &path,
                query: &query,
                headers: &signed,
                payload_sha256: &payload,
            },
            aws,
            &self.region,
            sigv4::SIGNING_SERVICE,
            &date,
        );
        let headers = request.headers_mut();
        headers.insert(
            HeaderName::from_static("x-amz-date"),
            HeaderValue::try_from(date)?,
        );
        if let Some(token) = &aws.session_token {
            let mut value = HeaderValue::try_from(token.as_str())?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-amz-security-token"), value);
        }
        let mut value = HeaderValue::try_from(authorization)?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }
}

fn chat_to_converse(
    body: &[u8],
    _model: &str,
    output_tokens_max: u64,
) -> Result<Vec<u8>, crate::providers::TranslateError> {
    // The model is in the path, not the body.
    converse::chat_to_converse(body, output_tokens_max)
}

impl Adapter for Bedrock {
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String> {
        match route {
            Api::ChatCompletions => Ok(Serve::Translated(chat_to_converse)),
            Api::Completions | Api::Embeddings | Api::Responses | Api::Messages => Err(format!(
                "provider `{provider}` is Bedrock's Converse API: call it on /v1/chat/completions"
            )),
        }
    }

    fn path(&self, _route: Api, model: &str, stream: bool) -> String {
        let action = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        format!("/model/{}/{action}", percent_encode_segment(model))
    }

    fn authorize(&self, request: &mut Request<SliceBody>, now: UnixMs) -> Result<(), http::Error> {
        // Anthropic's headers from a client mean nothing to Converse (and would be signed).
        let headers = request.headers_mut();
        for name in ["anthropic-version", "anthropic-beta"] {
            headers.remove(name);
        }
        match (&self.api_key, &self.aws) {
            (Some(key), _) => {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, key.clone());
                Ok(())
            }
            (None, Some(aws)) => self.sign(request, aws, now),
            (None, None) => Ok(()),
        }
    }

    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader> {
        if !answer.success {
            // Bedrock names the error's type in a header, not in the body.
            let error_type = answer
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let rewrite: Rewrite =
                Box::new(move |body| Some(converse::error_to_openai(body, error_type.as_deref())));
            return Box::new(Whole::rewritten(no_usage, rewrite));
        }
        if answer.stream {
            return Box::new(Frames {
                decoder: Decoder::default(),
                frames: Vec::new(),
                translator: converse::StreamTranslator::new(
                    answer.model,
                    answer.created_s,
                    answer.include_usage,
                    STREAM_TEXT_BYTES_MAX,
                )
                .priced(answer.pricer.clone()),
            });
        }
        Box::new(Whole::to_chat(
            answer,
            usage_of_body,
            converse::converse_to_chat,
        ))
    }
}

/// The usage in a whole Converse answer.
fn usage_of_body(body: &[u8]) -> Option<tollgate_engine::TokenUsage> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    converse::usage_of(value.get("usage")?)
}

/// ConverseStream's binary frames, translated to OpenAI chunks as they come.
struct Frames {
    decoder: Decoder,
    frames: Vec<Frame>,
    translator: converse::StreamTranslator,
}

impl Reader for Frames {
    fn push(&mut self, data: Bytes) -> Result<Pushed, ReadError> {
        self.frames.clear();
        self.decoder
            .push(&data, &mut self.frames)
            .map_err(|e| ReadError::Corrupt {
                reason: e.to_string(),
            })?;
        let mut out = String::new();
        let mut text = false;
        for frame in self.frames.drain(..) {
            text |= self.translator.frame(&frame, &mut out);
        }
        Ok(Pushed {
            out: (!out.is_empty()).then(|| Bytes::from(out)),
            text,
        })
    }

    fn finish(&mut self) -> Option<Bytes> {
        // A stream cut before its `metadata` event still ends as OpenAI streams end.
        let mut out = String::new();
        self.translator.finish(&mut out);
        Some(Bytes::from(out))
    }

    fn reading(&mut self) -> Reading {
        Reading::of_stream(self.translator.usage, &mut self.translator.kept)
    }

    fn rewritten_as(&self) -> Option<&'static str> {
        Some("text/event-stream")
    }

    fn text_bytes(&self) -> u64 {
        self.translator.kept.seen_bytes()
    }

    fn stop(&mut self, usage: &TokenUsage) -> Option<Bytes> {
        let mut out = String::new();
        self.translator.stop(usage, &mut out);
        Some(Bytes::from(out))
    }
}
