//! A mock provider that speaks OpenAI's, Anthropic's, Bedrock's and Google Gemini's (the
//! Gemini API and Vertex AI) wire formats over real HTTP.
//!
//! It stands in for the paid providers, which cannot be reached here. Answers are
//! deterministic: the completion is `max_tokens` (default 16) words of one token each, the
//! prompt is counted at one token per four bytes of message text, and usage is reported the
//! way each provider reports it (OpenAI's usage chunk only when `stream_options.include_usage`
//! asks for it). A request may steer the mock with a top-level `"mock"` object:
//! `{"status": 500}` answers with that error, `"omit_usage": true` reports no usage,
//! `"first_byte_ms"` and `"token_ms"` add delays, `"hang": true` never answers,
//! `"garbage": true` answers 200 with a body that is not JSON, `"error_bytes": n` pads an asked-for
//! error's message to n bytes (OpenAI's and Anthropic's routes), `"reset_after": n` breaks the
//! connection after n streamed tokens, `"answer_tokens": n` (OpenAI's and Anthropic's routes) answers n tokens
//! when `max_tokens` allows more (a model that finishes early),
//! `"cached_tokens"` and `"reasoning_tokens"` add those counts (`"thoughts_tokens"` too for
//! Gemini, whose thoughts count apart from the candidates), and (Anthropic, Bedrock, Gemini)
//! `"tool_use": {"name": ..., "input": {...}}` ends the answer with that tool call. Gemini
//! alone takes `"error_after": n`, Google's in-stream error event after n streamed tokens.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Largest request the mock reads.
const REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most completion tokens the mock generates.
const TOKENS_MAX: u64 = 100_000;
/// Default completion length.
const TOKENS_DEFAULT: u64 = 16;
/// The word generated for each completion token (one token in every OpenAI encoding).
pub const WORD: &str = " hello";

/// How the mock checks callers and answers.
#[derive(Clone, Debug, Default)]
pub struct MockConfig {
    /// When set, requests must carry this key (`Authorization: Bearer` or `x-api-key`).
    pub api_key: Option<String>,
    /// Defaults for requests that do not steer the mock themselves.
    pub behaviour: Behaviour,
}

/// How the mock answers a request that does not say otherwise in its `"mock"` object. Errors
/// and resets are drawn from a seeded sequence over the requests served, so a run repeats.
#[derive(Clone, Debug, clap::Args)]
pub struct Behaviour {
    /// Milliseconds before the answer starts (time to first token).
    #[arg(long, default_value_t = 0)]
    pub first_byte_ms: u64,
    /// Milliseconds before each streamed token.
    #[arg(long, default_value_t = 0)]
    pub token_ms: u64,
    /// Completion tokens when the request names no maximum.
    #[arg(long, default_value_t = TOKENS_DEFAULT)]
    pub tokens: u64,
    /// Percent of requests answered with an error (`--error-status`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub error_percent: u8,
    /// The status of those errors: 500, 429, 529, ...
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub error_status: u16,
    /// A `Retry-After` (seconds) on every error answer.
    #[arg(long)]
    pub retry_after_s: Option<u64>,
    /// The model's context window in prompt tokens (OpenAI's and Anthropic's routes): a longer
    /// prompt is refused with the dialect's context-window error, a 400.
    #[arg(long)]
    pub context_tokens: Option<u64>,
    /// Percent of requests whose connection is closed before any answer (a crash, a reset).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub drop_percent: u8,
    /// Percent of streamed answers whose connection breaks half-way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub reset_percent: u8,
    /// Report no usage (as some OpenAI-compatible servers do).
    #[arg(long)]
    pub no_usage: bool,
    /// Seed of the error and reset draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            first_byte_ms: 0,
            token_ms: 0,
            tokens: TOKENS_DEFAULT,
            error_percent: 0,
            error_status: 500,
            retry_after_s: None,
            context_tokens: None,
            drop_percent: 0,
            reset_percent: 0,
            no_usage: false,
            seed: 1,
        }
    }
}

impl Behaviour {
    /// True `percent` times in a hundred, for the `n`th request.
    fn draw(&self, n: u64, salt: u64, percent: u8) -> bool {
        if percent == 0 {
            return false;
        }
        let mut z = (self.seed ^ salt).wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % 100 < u64::from(percent)
    }
}

/// Counts of what the mock served (read by tests through `/mock/stats`).
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    /// Requests read, dropped or not (the drop draws run over these).
    arrived: AtomicU64,
    completion_tokens: AtomicU64,
}

/// Serves the mock on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: MockConfig) -> std::io::Result<()> {
    let config = Arc::new(config);
    let stats = Arc::new(Stats::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = Arc::clone(&config);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let config = Arc::clone(&config);
                let stats = Arc::clone(&stats);
                async move {
                    let n = stats.arrived.fetch_add(1, Ordering::Relaxed);
                    let behaviour = &config.behaviour;
                    // Calls to a model are dropped, never the stats a test reads.
                    if request.method() == Method::POST
                        && behaviour.draw(n, 3, behaviour.drop_percent)
                    {
                        // A service error makes hyper close the connection with no answer.
                        return Err(std::io::Error::other("mock: connection dropped"));
                    }
                    Ok(answer(request, &config, &stats).await)
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `address` and serves on it; returns the bound address once listening.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// A response body fed by a bounded channel, so a stream is written as it is generated.
pub struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    /// An empty chunk is the mock's signal to break the connection mid-answer, as a provider's
    /// crash or a network reset does: hyper then closes it without ending the body.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.receiver.poll_recv(cx).map(|chunk| {
            chunk.map(|c| {
                if c.is_empty() {
                    Err(std::io::Error::other("mock: connection reset"))
                } else {
                    Ok(Frame::data(c))
                }
            })
        })
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ChannelBody> {
    let (sender, receiver) = mpsc::channel(1);
    let _ = sender.try_send(body.into());
    let mut response = Response::new(ChannelBody { receiver });
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// What a request's `mock` object (or the command line's behaviour) asks of its answer, in
/// every dialect alike.
enum Steer {
    /// Answer as the provider would.
    Answer,
    /// Send a page that is not the provider's format (a proxy in the way).
    Garbage,
    /// Fail with this status, in the dialect's error envelope.
    Fail(StatusCode),
}

/// Waits as the request asks (`hang`, `first_byte_ms`), then says how to answer: `garbage`,
/// an error `status` (asked for, or drawn by the seeded error rate), or as the provider would.
async fn steer(knobs: &Value, served: u64, defaults: &Behaviour) -> Steer {
    let knob = |name: &str| knobs.get(name).and_then(Value::as_u64);
    if knobs.get("garbage").and_then(Value::as_bool) == Some(true) {
        return Steer::Garbage;
    }
    if knobs.get("hang").and_then(Value::as_bool) == Some(true) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let first_byte_ms = knob("first_byte_ms").unwrap_or(defaults.first_byte_ms);
    if first_byte_ms > 0 {
        tokio::time::sleep(Duration::from_millis(first_byte_ms)).await;
    }
    let drawn_error = defaults
        .draw(served, 1, defaults.error_percent)
        .then_some(u64::from(defaults.error_status));
    match knob("status")
        .or(drawn_error)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        Some(status) => Steer::Fail(status),
        None => Steer::Answer,
    }
}

/// An error answer with the `Retry-After` the command line asks for, if any.
fn retry_after(mut response: Response<ChannelBody>, defaults: &Behaviour) -> Response<ChannelBody> {
    if let Some(seconds) = defaults.retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

/// What a proxy's error page looks like to a client expecting JSON.
fn garbage() -> Response<ChannelBody> {
    full(
        StatusCode::OK,
        "application/json",
        "<html>upstream proxy page</html>",
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response<ChannelBody> {
    full(status, "application/json", value.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

async fn answer(
    request: Request<Incoming>,
    config: &MockConfig,
    stats: &Stats,
) -> Response<ChannelBody> {
    let path = request.uri().path().to_owned();
    if request.method() == Method::GET && path.ends_with("/mock/stats") {
        return json_response(
            StatusCode::OK,
            &json!({
                "requests": stats.requests.load(Ordering::Relaxed),
                "completion_tokens": stats.completion_tokens.load(Ordering::Relaxed),
            }),
        );
    }
    if let Some(route) = gemini_route(&path) {
        return gemini(route, request, config, stats).await;
    }
    if let Some(rest) = path.strip_prefix("/model/") {
        return bedrock(rest, request, config, stats).await;
    }
    let Some(api) = openai_api(&path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("no route {path}"), "type": "not_found"}}),
        );
    };
    openai(api, &path, request, config, stats).await
}

/// The API an OpenAI-, Azure- or Anthropic-style path calls, by its last segments.
fn openai_api(path: &str) -> Option<Api> {
    Some(if path.ends_with("/chat/completions") {
        Api::Chat
    } else if path.ends_with("/completions") {
        Api::Completions
    } else if path.ends_with("/embeddings") {
        Api::Embeddings
    } else if path.ends_with("/responses") {
        Api::Responses
    } else if path.ends_with("/messages") {
        Api::Messages
    } else {
        return None;
    })
}

/// Reads a request body (at most [`REQUEST_BYTES_MAX`]) as JSON; the error is the mock's
/// message, for each dialect to put in its own envelope.
async fn read_json(body: Incoming) -> Result<Value, String> {
    let body = match Limited::new(body, REQUEST_BYTES_MAX).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(format!("mock: reading body: {e}")),
    };
    serde_json::from_slice::<Value>(&body).map_err(|_| "mock: body is not JSON".to_owned())
}

/// An OpenAI, Azure OpenAI or Anthropic call: the caller's key checked, the body read, the
/// `mock` object obeyed, then answered whole or streamed.
async fn openai(
    api: Api,
    path: &str,
    request: Request<Incoming>,
    config: &MockConfig,
    stats: &Stats,
) -> Response<ChannelBody> {
    if let Some(expected) = &config.api_key {
        let headers = request.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let azure_key = headers.get("api-key").and_then(|v| v.to_str().ok());
        if ![bearer, x_api_key, azure_key].contains(&Some(expected.as_str())) {
            return error(
                api,
                StatusCode::UNAUTHORIZED,
                "mock: wrong or missing provider key",
            );
        }
    }
    // Azure OpenAI: /openai/deployments/{deployment}/...?api-version=..., the deployment is
    // the model; a missing api-version is Azure's 404.
    let azure = path.starts_with("/openai/");
    let query = request.uri().query().unwrap_or_default().to_owned();
    if azure && !query.split('&').any(|p| p.starts_with("api-version=")) {
        return error(
            api,
            StatusCode::NOT_FOUND,
            "mock: Resource not found (no api-version)",
        );
    }
    let deployment = path
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned);
    let request = match read_json(request.into_body()).await {
        Ok(request) => request,
        Err(message) => return error(api, StatusCode::BAD_REQUEST, &message),
    };
    let served = stats.requests.fetch_add(1, Ordering::Relaxed);
    let knobs = request.get("mock").cloned().unwrap_or(Value::Null);
    match steer(&knobs, served, &config.behaviour).await {
        Steer::Answer => {}
        Steer::Garbage => return garbage(),
        Steer::Fail(status) => {
            // `"error_bytes": n` pads the message to n bytes (at most 16 MiB): a large error.
            let message = knobs
                .get("error_bytes")
                .and_then(Value::as_u64)
                .map_or_else(
                    || "mock: the error this request asked for".to_owned(),
                    |n| "e".repeat(usize::try_from(n.min(1 << 24)).unwrap_or(0)),
                );
            let failed = error(api, status, &message);
            return retry_after(failed, &config.behaviour);
        }
    }
    if let Some(window) = config.behaviour.context_tokens {
        let prompt = prompt_tokens(&request);
        if prompt > window {
            return context_window_error(api, prompt, window);
        }
    }
    let answer = OpenAiAnswer::of(api, deployment, &request, &knobs, served, &config.behaviour);
    stats
        .completion_tokens
        .fetch_add(answer.usage.output, Ordering::Relaxed);
    answer.respond()
}

/// What one OpenAI-, Azure- or Anthropic-style answer is made of.
struct OpenAiAnswer {
    api: Api,
    /// The Azure deployment, or the request's `model`.
    model: String,
    usage: Usage,
    stream: bool,
    /// `stream_options.include_usage`: OpenAI's usage chunk at the end of a stream.
    include_usage: bool,
    token_ms: u64,
    tool: Option<Value>,
    /// Break the connection after this many streamed tokens.
    reset_after: Option<u64>,
    /// The answer runs to the cap it was given (else it ends on its own, before it).
    at_cap: bool,
}

/// Why an answer ended, as the provider says it: at the cap it was given, or at its own end.
fn finish_reason(api: Api, at_cap: bool, tool: bool) -> &'static str {
    match (api, at_cap, tool) {
        (Api::Messages, _, true) => "tool_use",
        (Api::Messages, true, false) => "max_tokens",
        (Api::Messages, false, false) => "end_turn",
        (_, true, _) => "length",
        (_, false, _) => "stop",
    }
}

impl OpenAiAnswer {
    /// The answer `request` asks for, steered by its `knobs` and the command line's `defaults`
    /// (`served` draws the seeded resets).
    fn of(
        api: Api,
        deployment: Option<String>,
        request: &Value,
        knobs: &Value,
        served: u64,
        defaults: &Behaviour,
    ) -> OpenAiAnswer {
        let knob = |name: &str| knobs.get(name).and_then(Value::as_u64);
        let model = deployment.unwrap_or_else(|| {
            request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock")
                .to_owned()
        });
        let cap = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| request.get(*k).and_then(Value::as_u64))
            .unwrap_or(defaults.tokens)
            .min(TOKENS_MAX);
        let tokens_out = cap;
        let tokens_out = if api == Api::Embeddings {
            0
        } else {
            // A model that finishes before its cap: `answer_tokens` at most.
            knob("answer_tokens").map_or(tokens_out, |answer| answer.min(tokens_out))
        };
        let usage = Usage {
            input: prompt_tokens(request),
            output: tokens_out,
            cached: knob("cached_tokens").unwrap_or(0),
            reasoning: knob("reasoning_tokens").unwrap_or(0).min(tokens_out),
            omit: knobs
                .get("omit_usage")
                .and_then(Value::as_bool)
                .unwrap_or(defaults.no_usage),
        };
        OpenAiAnswer {
            api,
            model,
            at_cap: tokens_out == cap,
            usage,
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            token_ms: knob("token_ms").unwrap_or(defaults.token_ms),
            tool: knobs.get("tool_use").cloned(),
            reset_after: knob("reset_after").or_else(|| {
                defaults
                    .draw(served, 2, defaults.reset_percent)
                    .then_some(tokens_out / 2)
            }),
        }
    }

    fn respond(self) -> Response<ChannelBody> {
        match (self.api, self.stream) {
            (Api::Embeddings, _) => json_response(
                StatusCode::OK,
                &json!({
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.25, 0.5, 0.75]}],
                    "model": self.model,
                    "usage": self.usage.openai_embeddings(),
                }),
            ),
            (Api::Chat | Api::Completions | Api::Responses | Api::Messages, false) => {
                json_response(
                    StatusCode::OK,
                    &whole(
                        self.api,
                        &self.model,
                        &self.usage,
                        self.tool.as_ref(),
                        self.at_cap,
                    ),
                )
            }
            (_, true) => streamed(self),
        }
    }
}

/// The refusal of a prompt longer than the model's window, as OpenAI and Anthropic word it.
fn context_window_error(api: Api, prompt: u64, window: u64) -> Response<ChannelBody> {
    let body = if api == Api::Messages {
        json!({"type": "error", "error": {"type": "invalid_request_error",
               "message": format!("prompt is too long: {prompt} tokens > {window} maximum")}})
    } else {
        json!({"error": {"message": format!(
                   "This model's maximum context length is {window} tokens. However, your messages resulted in {prompt} tokens."),
               "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
    };
    json_response(StatusCode::BAD_REQUEST, &body)
}

fn error(api: Api, status: StatusCode, message: &str) -> Response<ChannelBody> {
    let body = if api == Api::Messages {
        json!({"type": "error", "error": {"type": "api_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
    };
    json_response(status, &body)
}

/// One token per four bytes of message text, at least one.
fn prompt_tokens(request: &Value) -> u64 {
    let mut bytes = 0u64;
    for field in ["messages", "prompt", "input", "system"] {
        if let Some(v) = request.get(field) {
            bytes += text_bytes(v);
        }
    }
    bytes.div_ceil(4).max(1)
}

fn text_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| *k != "role" && *k != "type")
            .map(|(_, v)| text_bytes(v))
            .sum(),
        _ => 0,
    }
}

struct Usage {
    input: u64,
    output: u64,
    cached: u64,
    reasoning: u64,
    omit: bool,
}

impl Usage {
    fn openai(&self) -> Value {
        if self.omit {
            return Value::Null;
        }
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cached},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    fn openai_embeddings(&self) -> Value {
        if self.omit {
            return Value::Null;
        }
        json!({"prompt_tokens": self.input, "total_tokens": self.input})
    }

    fn responses(&self) -> Value {
        if self.omit {
            return Value::Null;
        }
        json!({
            "input_tokens": self.input,
            "output_tokens": self.output,
            "total_tokens": self.input + self.output,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    fn anthropic(&self, output: u64) -> Value {
        if self.omit {
            return json!({});
        }
        json!({
            "input_tokens": self.input.saturating_sub(self.cached),
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": output,
        })
    }
}

fn text(tokens: u64) -> String {
    WORD.repeat(usize::try_from(tokens).unwrap_or(0))
}

fn whole(api: Api, model: &str, usage: &Usage, tool: Option<&Value>, at_cap: bool) -> Value {
    let content = text(usage.output);
    let finish = finish_reason(api, at_cap, tool.is_some());
    match api {
        Api::Messages => {
            let mut blocks = vec![json!({"type": "text", "text": content})];
            if let Some(tool) = tool {
                blocks.push(json!({"type": "tool_use", "id": "toolu_mock", "name": tool["name"], "input": tool["input"]}));
            }
            json!({
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": finish,
                "stop_sequence": null,
                "usage": usage.anthropic(usage.output),
            })
        }
        Api::Responses => json!({
            "id": "resp_mock",
            "object": "response",
            "created_at": 0,
            "status": "completed",
            "model": model,
            "output": [{
                "type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }],
            "usage": usage.responses(),
        }),
        Api::Completions => json!({
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "text": content, "finish_reason": finish, "logprobs": null}],
            "usage": usage.openai(),
        }),
        Api::Chat | Api::Embeddings => json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }],
            "usage": usage.openai(),
        }),
    }
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// A streamed answer, written as it is generated: the opening events, one event per token
/// (`token_ms` apart, broken off at `reset_after`), then the closing events.
fn streamed(answer: OpenAiAnswer) -> Response<ChannelBody> {
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        for chunk in answer.opening() {
            if sender.send(chunk).await.is_err() {
                return;
            }
        }
        for sent in 0..answer.usage.output {
            if answer.reset_after == Some(sent) {
                // What was sent goes out first (an error aborts with what is unwritten).
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = sender.send(Bytes::new()).await;
                return;
            }
            if answer.token_ms > 0 {
                tokio::time::sleep(Duration::from_millis(answer.token_ms)).await;
            }
            if sender.send(answer.token()).await.is_err() {
                return; // the client hung up: stop generating, as a provider does
            }
        }
        for chunk in answer.closing() {
            if sender.send(chunk).await.is_err() {
                return;
            }
        }
    });
    stream_response(receiver, "text/event-stream", true)
}

/// A streamed response fed by `receiver`, of `content_type`, marked uncacheable when
/// `no_cache` (as server-sent events are).
fn stream_response(
    receiver: mpsc::Receiver<Bytes>,
    content_type: &'static str,
    no_cache: bool,
) -> Response<ChannelBody> {
    let mut response = Response::new(ChannelBody { receiver });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if no_cache {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
    }
    response
}

impl OpenAiAnswer {
    /// The events before the first token.
    fn opening(&self) -> Vec<Bytes> {
        let (model, usage) = (&self.model, &self.usage);
        match self.api {
            Api::Messages => vec![
                sse(
                    Some("message_start"),
                    &json!({"type": "message_start", "message": {
                    "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage.anthropic(1)}}),
                ),
                sse(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                sse(Some("ping"), &json!({"type": "ping"})),
            ],
            Api::Responses => vec![sse(
                Some("response.created"),
                &json!({"type": "response.created", "response": {"id": "resp_mock", "status": "in_progress", "model": model}}),
            )],
            Api::Chat | Api::Completions | Api::Embeddings => Vec::new(),
        }
    }

    /// The event carrying one token.
    fn token(&self) -> Bytes {
        let model = &self.model;
        match self.api {
            Api::Messages => sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": WORD}}),
            ),
            Api::Responses => sse(
                Some("response.output_text.delta"),
                &json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": WORD}),
            ),
            Api::Completions => sse(
                None,
                &json!({"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model, "choices": [{"index": 0, "text": WORD, "finish_reason": null}]}),
            ),
            Api::Chat | Api::Embeddings => sse(
                None,
                &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [{"index": 0, "delta": {"content": WORD}, "finish_reason": null}], "usage": null}),
            ),
        }
    }

    /// The events after the last token: the finish, the usage, the end marker.
    fn closing(&self) -> Vec<Bytes> {
        let (model, usage) = (&self.model, &self.usage);
        match self.api {
            Api::Messages => self.anthropic_closing(),
            Api::Responses => vec![sse(
                Some("response.completed"),
                &json!({"type": "response.completed", "response": {
                    "id": "resp_mock", "object": "response", "status": "completed", "model": model,
                    "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text(usage.output)}]}],
                    "usage": usage.responses()}}),
            )],
            Api::Chat | Api::Completions | Api::Embeddings => {
                let last = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason(self.api, self.at_cap, false)}]});
                let mut events = vec![sse(None, &last)];
                if self.include_usage && !usage.omit {
                    events.push(sse(None, &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage.openai()})));
                }
                events.push(Bytes::from_static(b"data: [DONE]\n\n"));
                events
            }
        }
    }

    /// Anthropic's closing events: the text block's end, the tool call's block (its input in
    /// two fragments), the stop reason with the output count, the message's end.
    fn anthropic_closing(&self) -> Vec<Bytes> {
        let mut events = vec![sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": 0}),
        )];
        if let Some(tool) = &self.tool {
            events.push(sse(Some("content_block_start"), &json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_mock", "name": tool["name"], "input": {}}})));
            // The input JSON in two fragments, cut mid-token, as the provider streams it.
            let input = tool["input"].to_string();
            let cut = input.len() / 2;
            for part in [
                input.get(..cut).unwrap_or(""),
                input.get(cut..).unwrap_or(""),
            ] {
                events.push(sse(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            events.push(sse(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 1}),
            ));
        }
        let stop_reason = finish_reason(self.api, self.at_cap, self.tool.is_some());
        let delta_usage = if self.usage.omit {
            json!({})
        } else {
            json!({"output_tokens": self.usage.output})
        };
        events.push(sse(Some("message_delta"), &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": delta_usage})));
        events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        events
    }
}

// ---- AWS Bedrock Converse and ConverseStream ----

/// An AWS event-stream frame with string headers: prelude (total and headers length, CRC32),
/// headers, payload, CRC32 of all before it.
fn event_frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(7); // string
        encoded.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = 16 + encoded.len() + payload.len();
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(
        &u32::try_from(encoded.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    let prelude_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(frame)
}

fn bedrock_event(kind: &str, payload: &Value) -> Bytes {
    event_frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn bedrock_error(status: StatusCode, kind: &str, message: &str) -> Response<ChannelBody> {
    let mut response = json_response(status, &json!({ "message": message }));
    if let Ok(value) = header::HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

/// A Bedrock `converse` or `converse-stream` call on `rest` (`{model}/{operation}`): the
/// caller's signature checked, the body read, the `mock` object (under
/// `additionalModelRequestFields`) obeyed, then answered whole or as an event stream.
async fn bedrock(
    rest: &str,
    request: Request<Incoming>,
    config: &MockConfig,
    stats: &Stats,
) -> Response<ChannelBody> {
    let (model, operation) = rest.rsplit_once('/').unwrap_or((rest, ""));
    let stream = match operation {
        "converse" => false,
        "converse-stream" => true,
        _ => {
            return bedrock_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "mock: no such operation",
            );
        }
    };
    if let Some(refusal) = bedrock_refusal(request.headers(), config) {
        return refusal;
    }
    let request = match read_json(request.into_body()).await {
        Ok(request) => request,
        Err(message) => {
            return bedrock_error(StatusCode::BAD_REQUEST, "ValidationException", &message);
        }
    };
    if request.get("messages").and_then(Value::as_array).is_none() {
        return bedrock_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "mock: messages is required",
        );
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let knobs = request
        .pointer("/additionalModelRequestFields/mock")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(status) = knobs
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        return bedrock_error(
            status,
            "ThrottlingException",
            "mock: the error this request asked for",
        );
    }
    let answer = BedrockAnswer::of(model, &request, &knobs, config.behaviour.tokens);
    stats
        .completion_tokens
        .fetch_add(answer.tokens_out, Ordering::Relaxed);
    if !stream {
        return answer.whole();
    }
    let token_ms = knobs.get("token_ms").and_then(Value::as_u64).unwrap_or(0);
    bedrock_streamed(answer, token_ms)
}

/// The caller's credential as Bedrock checks it: SigV4's shape (the signature itself is
/// checked against AWS's vectors in the gateway's tests), or a Bedrock API key as a bearer
/// token. `None` when the caller may go on.
fn bedrock_refusal(
    headers: &http::HeaderMap,
    config: &MockConfig,
) -> Option<Response<ChannelBody>> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let signed = authorization.starts_with("AWS4-HMAC-SHA256 Credential=")
        && authorization.contains("/bedrock/aws4_request, SignedHeaders=")
        && authorization.contains("host;x-amz-date")
        && headers.contains_key("x-amz-date");
    let bearer = config
        .api_key
        .as_ref()
        .is_some_and(|k| authorization == format!("Bearer {k}"));
    (!signed && !bearer).then(|| {
        bedrock_error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "mock: request is not signed",
        )
    })
}

/// What one Bedrock answer is made of.
struct BedrockAnswer {
    model: String,
    tokens_out: u64,
    /// The `usage` object, the same in a whole answer and a stream's `metadata` event.
    usage: Value,
    tool: Option<Value>,
    stop_reason: &'static str,
}

impl BedrockAnswer {
    /// The answer `request` asks for, steered by its `knobs`; `tokens_default` when it names
    /// no `maxTokens`.
    fn of(model: &str, request: &Value, knobs: &Value, tokens_default: u64) -> BedrockAnswer {
        let tokens_out = request
            .pointer("/inferenceConfig/maxTokens")
            .and_then(Value::as_u64)
            .unwrap_or(tokens_default)
            .min(TOKENS_MAX);
        let input = {
            let mut bytes = text_bytes(request.get("messages").unwrap_or(&Value::Null));
            bytes += text_bytes(request.get("system").unwrap_or(&Value::Null));
            bytes.div_ceil(4).max(1)
        };
        let cached = knobs
            .get("cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let tool = knobs.get("tool_use").cloned();
        BedrockAnswer {
            model: model.to_owned(),
            tokens_out,
            usage: json!({
                "inputTokens": input.saturating_sub(cached),
                "outputTokens": tokens_out,
                "totalTokens": input + tokens_out,
                "cacheReadInputTokens": cached,
                "cacheWriteInputTokens": 0,
            }),
            stop_reason: if tool.is_some() {
                "tool_use"
            } else {
                "max_tokens"
            },
            tool,
        }
    }

    /// Converse's answer: the text and the tool call, whole.
    fn whole(&self) -> Response<ChannelBody> {
        let mut content = vec![json!({"text": text(self.tokens_out)})];
        if let Some(tool) = &self.tool {
            content.push(json!({"toolUse": {"toolUseId": "tooluse_mock", "name": tool["name"], "input": tool["input"]}}));
        }
        json_response(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": self.stop_reason,
                "usage": self.usage,
                "metrics": {"latencyMs": 1},
                "modelId": self.model,
            }),
        )
    }

    /// The frames after the last token: the text block's end, the tool call's block (its
    /// input in two fragments), the stop reason, and the usage.
    fn closing(&self) -> Vec<Bytes> {
        let mut frames = vec![bedrock_event(
            "contentBlockStop",
            &json!({"contentBlockIndex": 0}),
        )];
        if let Some(tool) = &self.tool {
            frames.push(bedrock_event(
                "contentBlockStart",
                &json!({"contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_mock", "name": tool["name"]}}}),
            ));
            let input = tool["input"].to_string();
            let cut = input.len() / 2;
            for part in [
                input.get(..cut).unwrap_or(""),
                input.get(cut..).unwrap_or(""),
            ] {
                frames.push(bedrock_event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 1,
                    "delta": {"toolUse": {"input": part}}}),
                ));
            }
            frames.push(bedrock_event(
                "contentBlockStop",
                &json!({"contentBlockIndex": 1}),
            ));
        }
        frames.push(bedrock_event(
            "messageStop",
            &json!({"stopReason": self.stop_reason}),
        ));
        frames.push(bedrock_event(
            "metadata",
            &json!({"usage": self.usage, "metrics": {"latencyMs": 1}}),
        ));
        frames
    }
}

/// ConverseStream's answer as AWS event-stream frames: the message's start, a frame per token
/// (`token_ms` apart), then the closing frames.
fn bedrock_streamed(answer: BedrockAnswer, token_ms: u64) -> Response<ChannelBody> {
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        let start = bedrock_event("messageStart", &json!({"role": "assistant"}));
        if sender.send(start).await.is_err() {
            return;
        }
        for _ in 0..answer.tokens_out {
            if token_ms > 0 {
                tokio::time::sleep(Duration::from_millis(token_ms)).await;
            }
            // Bedrock pads events with an undeclared "p" field.
            let delta = json!({"contentBlockIndex": 0, "delta": {"text": WORD}, "p": "abcdefgh"});
            if sender
                .send(bedrock_event("contentBlockDelta", &delta))
                .await
                .is_err()
            {
                return;
            }
        }
        for frame in answer.closing() {
            if sender.send(frame).await.is_err() {
                return;
            }
        }
    });
    stream_response(receiver, "application/vnd.amazon.eventstream", false)
}

// ---- Google Gemini (the Gemini API and Vertex AI) ----

/// A Gemini route: which of Google's two front doors, the model, and the method.
#[derive(Debug, PartialEq, Eq)]
struct GeminiRoute {
    /// Vertex AI (`/v1/projects/{p}/locations/{l}/publishers/{pub}/models/{m}`, an OAuth
    /// bearer token) rather than the Gemini API (`/v1beta/models/{m}`, an API key).
    vertex: bool,
    model: String,
    method: String,
}

/// Parses `/{version}/models/{m}:{method}` and
/// `/{version}/projects/{p}/locations/{l}/publishers/{pub}/models/{m}:{method}`.
fn gemini_route(path: &str) -> Option<GeminiRoute> {
    let rest = path.strip_prefix('/')?;
    let (version, rest) = rest.split_once('/')?;
    if !matches!(version, "v1" | "v1beta" | "v1beta1" | "v1alpha") {
        return None;
    }
    let (vertex, named) = if let Some(named) = rest.strip_prefix("models/") {
        (false, named)
    } else {
        let segments: Vec<&str> = rest.splitn(7, '/').collect();
        match segments.as_slice() {
            ["projects", _, "locations", _, "publishers", _, named] => {
                (true, named.strip_prefix("models/")?)
            }
            _ => return None,
        }
    };
    let (model, method) = named.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some(GeminiRoute {
        vertex,
        model: model.to_owned(),
        method: method.to_owned(),
    })
}

/// The `google.rpc.Code` name Google puts beside an HTTP status.
fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Google's error object, `details` as given.
fn google_error_body(code: u16, message: &str, details: Value) -> Value {
    let mut error = json!({"code": code, "message": message, "status": google_status(code)});
    if let (Some(fields), false) = (error.as_object_mut(), details.is_null()) {
        fields.insert("details".into(), details);
    }
    json!({ "error": error })
}

fn google_error(status: StatusCode, message: &str) -> Response<ChannelBody> {
    json_response(
        status,
        &google_error_body(status.as_u16(), message, Value::Null),
    )
}

/// The caller's credential as Google checks it: the Gemini API takes an API key
/// (`x-goog-api-key`, or `?key=`), Vertex an OAuth access token as a bearer. `None` when the
/// caller may go on.
fn gemini_refusal(
    vertex: bool,
    headers: &http::HeaderMap,
    query: &str,
    expected: Option<&str>,
) -> Option<Response<ChannelBody>> {
    if vertex {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        return match token {
            None => Some(google_error(
                StatusCode::UNAUTHORIZED,
                "mock: Request is missing required authentication credential. Expected OAuth 2 access token.",
            )),
            Some(token) if expected.is_some_and(|e| e != token) => Some(google_error(
                StatusCode::UNAUTHORIZED,
                "mock: Request had invalid authentication credentials.",
            )),
            Some(_) => None,
        };
    }
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.split('&').find_map(|pair| pair.strip_prefix("key=")));
    match key {
        None => Some(google_error(
            StatusCode::FORBIDDEN,
            "mock: Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )),
        // Google answers a wrong key with 400, not 401.
        Some(key) if expected.is_some_and(|e| e != key) => Some(json_response(
            StatusCode::BAD_REQUEST,
            &google_error_body(
                400,
                "mock: API key not valid. Please pass a valid API key.",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com"}]),
            ),
        )),
        Some(_) => None,
    }
}

/// Top-level fields of a `GenerateContentRequest` (both spellings, as protobuf's JSON
/// parser takes them) and the mock's own `mock`: anything else is Google's 400, which catches a
/// translation that leaks OpenAI's fields.
const GEMINI_FIELDS: [&str; 16] = [
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
    "labels",
    "serviceTier",
    "model",
    "mock",
];

/// What Google refuses in a request body, in its words.
fn gemini_invalid(request: &Value) -> Option<String> {
    let fields = request.as_object()?;
    if let Some(name) = fields.keys().find(|k| !GEMINI_FIELDS.contains(&k.as_str())) {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."
        ));
    }
    let Some(contents) = fields.get("contents").and_then(Value::as_array) else {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    };
    for (i, content) in contents.iter().enumerate() {
        let role = content
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        if role != "user" && role != "model" {
            return Some(format!(
                "Please use a valid role: user, model. (contents[{i}])"
            ));
        }
        let parts = content.get("parts").and_then(Value::as_array);
        let mut calls = parts
            .into_iter()
            .flatten()
            .filter(|p| p.get("functionCall").is_some());
        // Gemini 3's rule: the first function call of a model turn carries its signature.
        if calls
            .next()
            .is_some_and(|first| first.get("thoughtSignature").is_none())
        {
            return Some(format!(
                "Function call is missing a thought_signature in functionCall parts. (contents[{i}])"
            ));
        }
        for part in parts.into_iter().flatten() {
            if let Some(response) = part.get("functionResponse")
                && (response.get("name").and_then(Value::as_str).is_none()
                    || !response.get("response").is_some_and(Value::is_object))
            {
                return Some(format!(
                    "* GenerateContentRequest.contents[{i}].parts: functionResponse needs a name and an object response"
                ));
            }
        }
    }
    None
}

/// `usageMetadata` as Google writes it: zero counts left out, the prompt count including the
/// cached part, thoughts apart from the candidates and in the total.
fn gemini_usage(prompt: u64, cached: u64, candidates: u64, thoughts: u64) -> Value {
    let mut usage = serde_json::Map::new();
    for (key, count) in [
        ("promptTokenCount", prompt),
        ("cachedContentTokenCount", cached),
        ("candidatesTokenCount", candidates),
        ("thoughtsTokenCount", thoughts),
        ("totalTokenCount", prompt + candidates + thoughts),
    ] {
        if count > 0 {
            usage.insert(key.into(), json!(count));
        }
    }
    usage.insert(
        "promptTokensDetails".into(),
        json!([{"modality": "TEXT", "tokenCount": prompt}]),
    );
    Value::Object(usage)
}

/// What one Gemini answer is made of.
struct GeminiAnswer {
    model: String,
    prompt: u64,
    cached: u64,
    candidates: u64,
    thoughts: u64,
    omit_usage: bool,
    tool: Option<Value>,
}

impl GeminiAnswer {
    /// The answer `request` asks for (its prompt counted at `prompt` tokens), steered by its
    /// `knobs` and the command line's `defaults`.
    fn of(
        model: String,
        request: &Value,
        prompt: u64,
        knobs: &Value,
        defaults: &Behaviour,
    ) -> GeminiAnswer {
        let knob = |name: &str| knobs.get(name).and_then(Value::as_u64);
        let candidates = request
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64)
            .unwrap_or(defaults.tokens)
            .min(TOKENS_MAX);
        let cached = knob("cached_tokens").unwrap_or(0);
        GeminiAnswer {
            model,
            prompt: prompt.max(cached),
            cached,
            candidates,
            // Gemini counts thoughts apart from the candidates.
            thoughts: knob("thoughts_tokens")
                .or_else(|| knob("reasoning_tokens"))
                .unwrap_or(0)
                .min(TOKENS_MAX),
            omit_usage: knobs
                .get("omit_usage")
                .and_then(Value::as_bool)
                .unwrap_or(defaults.no_usage),
            tool: knobs.get("tool_use").cloned(),
        }
    }

    fn usage(&self, candidates: u64) -> Option<Value> {
        (!self.omit_usage)
            .then(|| gemini_usage(self.prompt, self.cached, candidates, self.thoughts))
    }

    /// One `GenerateContentResponse` with `parts`, the counts so far, and a finish reason.
    fn response(&self, parts: Vec<Value>, candidates: u64, finish: Option<&str>) -> Value {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let (Some(reason), Some(fields)) = (finish, candidate.as_object_mut()) {
            fields.insert("finishReason".into(), json!(reason));
        }
        let mut response = json!({
            "candidates": [candidate],
            "modelVersion": self.model,
            "responseId": "mock-gemini-response",
        });
        if let (Some(usage), Some(fields)) = (self.usage(candidates), response.as_object_mut()) {
            fields.insert("usageMetadata".into(), usage);
        }
        response
    }

    /// The function call part, signed as Gemini 3 signs it.
    fn call_part(&self) -> Option<Value> {
        self.tool.as_ref().map(|tool| {
            json!({"functionCall": {"name": tool["name"], "args": tool["input"]},
                   "thoughtSignature": "bW9jay1zaWduYXR1cmU="})
        })
    }

    fn finish(&self) -> &'static str {
        if self.tool.is_some() {
            "STOP"
        } else {
            "MAX_TOKENS"
        }
    }
}

/// A Gemini API or Vertex AI call on `route`: the caller's credential checked, the body read
/// and checked as Google checks it, the `mock` object obeyed, then answered whole or streamed
/// (`countTokens` answers the prompt's count alone).
async fn gemini(
    route: GeminiRoute,
    request: Request<Incoming>,
    config: &MockConfig,
    stats: &Stats,
) -> Response<ChannelBody> {
    let query = request.uri().query().unwrap_or_default().to_owned();
    if let Some(refusal) = gemini_refusal(
        route.vertex,
        request.headers(),
        &query,
        config.api_key.as_deref(),
    ) {
        return refusal;
    }
    let stream = match route.method.as_str() {
        "generateContent" | "countTokens" => false,
        "streamGenerateContent" => true,
        _ => {
            return google_error(
                StatusCode::NOT_FOUND,
                &format!("mock: method {} not found", route.method),
            );
        }
    };
    let request = match read_json(request.into_body()).await {
        Ok(request) => request,
        Err(message) => return google_error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(message) = gemini_invalid(&request) {
        return google_error(StatusCode::BAD_REQUEST, &format!("mock: {message}"));
    }
    let prompt = {
        let bytes = text_bytes(request.get("contents").unwrap_or(&Value::Null))
            + text_bytes(request.get("systemInstruction").unwrap_or(&Value::Null));
        bytes.div_ceil(4).max(1)
    };
    if route.method == "countTokens" {
        return json_response(StatusCode::OK, &json!({ "totalTokens": prompt }));
    }
    let served = stats.requests.fetch_add(1, Ordering::Relaxed);
    let knobs = request.get("mock").cloned().unwrap_or(Value::Null);
    let defaults = &config.behaviour;
    match steer(&knobs, served, defaults).await {
        Steer::Answer => {}
        Steer::Garbage => return garbage(),
        Steer::Fail(status) => {
            let failed = google_error(status, "mock: the error this request asked for");
            return retry_after(failed, defaults);
        }
    }
    let answer = GeminiAnswer::of(route.model, &request, prompt, &knobs, defaults);
    stats
        .completion_tokens
        .fetch_add(answer.candidates + answer.thoughts, Ordering::Relaxed);
    if !stream {
        let mut parts = vec![json!({"text": text(answer.candidates)})];
        parts.extend(answer.call_part());
        return json_response(
            StatusCode::OK,
            &answer.response(parts, answer.candidates, Some(answer.finish())),
        );
    }
    let steer = GeminiSteer::of(&query, &knobs, served, defaults, answer.candidates);
    gemini_streamed(answer, steer)
}

/// How a streamed Gemini answer is delivered.
struct GeminiSteer {
    /// `alt=sse`: server-sent events; otherwise one JSON array written as it grows.
    sse: bool,
    token_ms: u64,
    /// Break the connection after this many tokens.
    reset_after: Option<u64>,
    /// Send Google's in-stream error event after this many tokens, then end.
    error_after: Option<u64>,
}

impl GeminiSteer {
    /// How the request's `query` and `knobs` (or the command line's `defaults`, drawn for
    /// request `served`) ask a stream of `candidates` tokens to be delivered.
    fn of(
        query: &str,
        knobs: &Value,
        served: u64,
        defaults: &Behaviour,
        candidates: u64,
    ) -> GeminiSteer {
        let knob = |name: &str| knobs.get(name).and_then(Value::as_u64);
        GeminiSteer {
            sse: query.split('&').any(|p| p == "alt=sse"),
            token_ms: knob("token_ms").unwrap_or(defaults.token_ms),
            reset_after: knob("reset_after").or_else(|| {
                defaults
                    .draw(served, 2, defaults.reset_percent)
                    .then_some(candidates / 2)
            }),
            error_after: knob("error_after"),
        }
    }
}

/// A stream as Gemini sends it: a chunk per token with the cumulative counts on every chunk,
/// the function call whole in the last chunk with the finish reason, no end marker.
fn gemini_streamed(answer: GeminiAnswer, steer: GeminiSteer) -> Response<ChannelBody> {
    let (sender, receiver) = mpsc::channel(16);
    let sse = steer.sse;
    tokio::spawn(async move {
        // Each event ends with CRLF CRLF, as Google's do.
        let frame = |first: bool, value: &Value| {
            if sse {
                Bytes::from(format!("data: {value}\r\n\r\n"))
            } else if first {
                Bytes::from(format!("[{value}"))
            } else {
                Bytes::from(format!(",\r\n{value}"))
            }
        };
        for sent in 0..answer.candidates {
            if steer.reset_after == Some(sent) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = sender.send(Bytes::new()).await;
                return;
            }
            if steer.error_after == Some(sent) {
                let error = google_error_body(503, "mock: The model is overloaded.", Value::Null);
                let _ = sender.send(frame(sent == 0, &error)).await;
                if !sse {
                    let _ = sender.send(Bytes::from_static(b"]")).await;
                }
                return;
            }
            if steer.token_ms > 0 {
                tokio::time::sleep(Duration::from_millis(steer.token_ms)).await;
            }
            let chunk = answer.response(vec![json!({ "text": WORD })], sent + 1, None);
            if sender.send(frame(sent == 0, &chunk)).await.is_err() {
                return; // the client hung up: stop generating, as a provider does
            }
        }
        let parts: Vec<Value> = answer.call_part().into_iter().collect();
        let last = answer.response(parts, answer.candidates, Some(answer.finish()));
        if sender
            .send(frame(answer.candidates == 0, &last))
            .await
            .is_err()
        {
            return;
        }
        if !sse {
            let _ = sender.send(Bytes::from_static(b"]")).await;
        }
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    stream_response(receiver, content_type, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A mock on a loopback port, checking `key`.
    async fn start(key: Option<&str>) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = MockConfig {
            api_key: key.map(str::to_owned),
            behaviour: Behaviour::default(),
        };
        tokio::spawn(serve(listener, config));
        address
    }

    /// Posts `body` to `path` with `headers`; the status and the whole answer.
    async fn post(
        address: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (StatusCode, String) {
        let mut request = Request::post(format!("http://{address}{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            crate::http::client().request(request),
        )
        .await
        .unwrap()
        .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn hello(mock: Value) -> Value {
        json!({"contents": [{"role": "user", "parts": [{"text": "Hello there, model"}]}],
               "generationConfig": {"maxOutputTokens": 3}, "mock": mock})
    }

    const GEMINI: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
    const VERTEX: &str =
        "/v1/projects/p1/locations/global/publishers/google/models/gemini-2.5-pro:generateContent";

    #[test]
    fn gemini_routes_parse_both_front_doors() {
        assert_eq!(
            gemini_route(GEMINI),
            Some(GeminiRoute {
                vertex: false,
                model: "gemini-2.5-flash".into(),
                method: "generateContent".into()
            })
        );
        assert_eq!(
            gemini_route(VERTEX),
            Some(GeminiRoute {
                vertex: true,
                model: "gemini-2.5-pro".into(),
                method: "generateContent".into()
            })
        );
        for other in [
            "/v1/chat/completions",
            "/v1/messages",
            "/model/x/converse",
            "/v1beta/models/:generateContent",
            "/v1/projects/p/locations/l/models/m:generateContent",
            "/v2/models/m:generateContent",
        ] {
            assert_eq!(gemini_route(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn gemini_requires_its_credential() {
        let address = start(Some("k1")).await;
        let body = hello(Value::Null);
        let (status, answer) = post(address, GEMINI, &[], &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(json(&answer)["error"]["status"], "PERMISSION_DENIED");
        let (status, answer) = post(address, GEMINI, &[("x-goog-api-key", "nope")], &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            json(&answer)["error"]["details"][0]["reason"],
            "API_KEY_INVALID"
        );
        let (status, _) = post(address, GEMINI, &[("x-goog-api-key", "k1")], &body).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = post(address, &format!("{GEMINI}?key=k1"), &[], &body).await;
        assert_eq!(status, StatusCode::OK);
        // Vertex wants a bearer token; an API key header is not one.
        let (status, answer) = post(address, VERTEX, &[("x-goog-api-key", "k1")], &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            json(&answer)["error"],
            json!({"code": 401, "status": "UNAUTHENTICATED",
                   "message": "mock: Request is missing required authentication credential. Expected OAuth 2 access token."})
        );
        let (status, _) = post(address, VERTEX, &[("authorization", "Bearer k2")], &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = post(address, VERTEX, &[("authorization", "Bearer k1")], &body).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn gemini_answers_whole_with_usage_and_a_function_call() {
        let address = start(None).await;
        let body = hello(json!({"cached_tokens": 2, "thoughts_tokens": 7,
                                "tool_use": {"name": "weather", "input": {"city": "Oslo"}}}));
        let (status, answer) = post(address, VERTEX, &[("authorization", "Bearer t")], &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let answer = json(&answer);
        let candidate = &answer["candidates"][0];
        assert_eq!(candidate["content"]["role"], "model");
        assert_eq!(candidate["content"]["parts"][0]["text"], text(3));
        assert_eq!(
            candidate["content"]["parts"][1]["functionCall"],
            json!({"name": "weather", "args": {"city": "Oslo"}})
        );
        assert!(candidate["content"]["parts"][1]["thoughtSignature"].is_string());
        assert_eq!(candidate["finishReason"], "STOP");
        assert_eq!(answer["modelVersion"], "gemini-2.5-pro");
        let usage = &answer["usageMetadata"];
        // "Hello there, model" is 18 bytes: 5 tokens at four bytes a token.
        assert_eq!(usage["promptTokenCount"], 5);
        assert_eq!(usage["cachedContentTokenCount"], 2);
        assert_eq!(usage["candidatesTokenCount"], 3);
        assert_eq!(usage["thoughtsTokenCount"], 7);
        assert_eq!(usage["totalTokenCount"], 15);

        let (_, plain) = post(
            address,
            GEMINI,
            &[("x-goog-api-key", "k")],
            &hello(Value::Null),
        )
        .await;
        let plain = json(&plain);
        assert_eq!(plain["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert!(
            plain["usageMetadata"]
                .get("cachedContentTokenCount")
                .is_none(),
            "Google leaves zero counts out"
        );
        let (_, quiet) = post(
            address,
            GEMINI,
            &[("x-goog-api-key", "k")],
            &hello(json!({"omit_usage": true})),
        )
        .await;
        assert!(json(&quiet).get("usageMetadata").is_none());
        let (_, count) = post(
            address,
            "/v1beta/models/gemini-2.5-flash:countTokens",
            &[("x-goog-api-key", "k")],
            &hello(Value::Null),
        )
        .await;
        assert_eq!(json(&count), json!({"totalTokens": 5}));
    }

    #[tokio::test]
    async fn gemini_streams_sse_with_cumulative_usage() {
        let address = start(None).await;
        let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        let body = hello(json!({"tool_use": {"name": "weather", "input": {"city": "Oslo"}}}));
        let (status, stream) = post(address, path, &[("x-goog-api-key", "k")], &body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(stream.ends_with("\r\n\r\n") && !stream.contains("[DONE]"));
        let events: Vec<Value> = stream
            .split("\r\n\r\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(json)
            .collect();
        assert_eq!(events.len(), 4, "three tokens and the finishing chunk");
        for (sent, event) in events[..3].iter().enumerate() {
            assert_eq!(event["candidates"][0]["content"]["parts"][0]["text"], WORD);
            assert_eq!(event["usageMetadata"]["candidatesTokenCount"], sent + 1);
            assert_eq!(event["usageMetadata"]["promptTokenCount"], 5);
            assert!(event["candidates"][0].get("finishReason").is_none());
        }
        let last = &events[3];
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            last["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
            json!({"city": "Oslo"})
        );
        assert_eq!(last["usageMetadata"]["totalTokenCount"], 8);

        // Without alt=sse the stream is one JSON array.
        let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
        let (_, array) = post(
            address,
            path,
            &[("x-goog-api-key", "k")],
            &hello(Value::Null),
        )
        .await;
        let array = json(&array);
        assert_eq!(array.as_array().map(Vec::len), Some(4));
        assert_eq!(array[3]["candidates"][0]["finishReason"], "MAX_TOKENS");
    }

    #[tokio::test]
    async fn gemini_errors_come_in_googles_envelope() {
        let address = start(None).await;
        let key = [("x-goog-api-key", "k")];
        let (status, answer) = post(address, GEMINI, &key, &hello(json!({"status": 429}))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json(&answer)["error"]["status"], "RESOURCE_EXHAUSTED");
        let (status, answer) = post(address, GEMINI, &key, &json!({"messages": []})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("Unknown name \\\"messages\\\""), "{answer}");
        let (status, _) = post(
            address,
            GEMINI,
            &key,
            &json!({"contents": [{"role": "assistant", "parts": []}]}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let unsigned = json!({"contents": [
            {"role": "user", "parts": [{"text": "x"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}]});
        let (status, answer) = post(address, GEMINI, &key, &unsigned).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("thought_signature"));
        let (status, _) = post(
            address,
            "/v1beta/models/m:embedContent",
            &key,
            &hello(Value::Null),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let path = "/v1beta/models/m:streamGenerateContent?alt=sse";
        let (status, stream) = post(address, path, &key, &hello(json!({"error_after": 2}))).await;
        assert_eq!(status, StatusCode::OK);
        let events: Vec<Value> = stream
            .split("\r\n\r\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(json)
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2]["error"]["status"], "UNAVAILABLE");
    }
}
