//! What the gateway reads from providers' answers: usage, and the text a client was sent.
//!
//! OpenAI-style answers (chat completions, completions, embeddings, responses) and Anthropic's
//! Messages API, each as one JSON body or as server-sent events. Only the fields metering needs
//! are declared; everything else is skipped by serde without building a tree.
//!
//! Normalisation (see [`TokenUsage`]): `input` is every prompt token. OpenAI reports it that
//! way; Anthropic reports uncached input, cache reads and cache writes apart, summed here.

use serde::Deserialize;
use tollgate_engine::TokenUsage;

/// The API a route speaks, which decides how its answers are metered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// Bedrock's Converse API: a provider's format only, never a route of the gateway.
    Converse,
}

impl Api {
    /// The path under the provider's base URL.
    #[must_use]
    pub fn upstream_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
            Api::Responses => "/responses",
            Api::Messages => "/v1/messages",
            // Built per model by `Upstream::bedrock_path`.
            Api::Converse => "",
        }
    }

    /// The label used in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Converse => "converse",
        }
    }

    /// All of them, in metric order.
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
}

/// OpenAI's usage object, in both its chat and its responses spelling.
#[derive(Deserialize, Default)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

impl OpenAiUsage {
    fn normalise(&self) -> Option<TokenUsage> {
        let input = self.prompt_tokens.or(self.input_tokens)?;
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let input_details = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref());
        let output_details = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref());
        Some(TokenUsage::new(
            input,
            input_details.map_or(0, |d| d.cached_tokens),
            0,
            output,
            output_details.map_or(0, |d| d.reasoning_tokens),
        ))
    }
}

/// Anthropic's usage object.
#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn normalise(&self) -> Option<TokenUsage> {
        let uncached = self.input_tokens?;
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Some(TokenUsage::new(
            uncached.saturating_add(read).saturating_add(write),
            read,
            write,
            self.output_tokens.unwrap_or(0),
            0,
        ))
    }

    /// Later fields win: `message_delta` carries cumulative counts.
    fn merge(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }
}

/// The usage in a whole (non-streamed) answer body.
#[must_use]
pub fn usage_of_body(api: Api, body: &[u8]) -> Option<TokenUsage> {
    match api {
        Api::Converse => {
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            crate::providers::bedrock::usage_of(value.get("usage")?)
        }
        Api::Messages => {
            #[derive(Deserialize)]
            struct Message {
                usage: Option<AnthropicUsage>,
            }
            serde_json::from_slice::<Message>(body)
                .ok()?
                .usage?
                .normalise()
        }
        Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses => {
            #[derive(Deserialize)]
            struct Answer {
                usage: Option<OpenAiUsage>,
            }
            serde_json::from_slice::<Answer>(body)
                .ok()?
                .usage?
                .normalise()
        }
    }
}

/// The text of a whole answer body (for counting when it reports no usage).
#[must_use]
pub fn text_of_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    for field in ["choices", "content", "output"] {
        if let Some(v) = value.get(field) {
            collect_strings(v, &mut text, usize::MAX);
        }
    }
    Some(text)
}

/// What one streamed event told the meter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The event carries only usage, which the gateway asked for and the client did not:
    /// it is not forwarded.
    pub usage_only: bool,
    /// Generated text or tool-call arguments carried by the event.
    pub text: bool,
}

/// Usage and text gathered from a stream, event by event.
#[derive(Debug, Default)]
pub struct StreamTally {
    openai: Option<TokenUsage>,
    anthropic: Option<AnthropicUsageState>,
    /// The text streamed so far, up to a cap (for counting if no usage comes).
    pub text: String,
    /// Most text kept.
    pub text_bytes_max: usize,
    /// Bytes of text seen past `text_bytes_max`: counted by extrapolation, not kept, so a long
    /// stream costs no more memory than a short one.
    pub beyond_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct AnthropicUsageState {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl From<AnthropicUsageState> for AnthropicUsage {
    fn from(s: AnthropicUsageState) -> Self {
        AnthropicUsage {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cache_creation_input_tokens: s.cache_creation_input_tokens,
            cache_read_input_tokens: s.cache_read_input_tokens,
        }
    }
}

impl From<AnthropicUsage> for AnthropicUsageState {
    fn from(u: AnthropicUsage) -> Self {
        AnthropicUsageState {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
        }
    }
}

#[derive(Deserialize)]
struct OpenAiChunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<OpenAiUsage>,
    /// Responses API: the event type, its text delta, and the final response.
    #[serde(rename = "type")]
    kind: Option<String>,
    delta: Option<serde_json::Value>,
    response: Option<ResponseObject>,
}

#[derive(Deserialize)]
struct ResponseObject {
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<serde_json::Value>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<AnthropicMessageStart>,
    usage: Option<AnthropicUsage>,
    delta: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AnthropicMessageStart {
    usage: Option<AnthropicUsage>,
}

impl StreamTally {
    /// A tally keeping up to `text_bytes_max` bytes of streamed text.
    #[must_use]
    pub fn new(text_bytes_max: usize) -> StreamTally {
        StreamTally {
            text_bytes_max,
            ..StreamTally::default()
        }
    }

    /// Reads one event's `data`.
    pub fn observe(&mut self, api: Api, data: &[u8]) -> Observed {
        match api {
            Api::Messages => self.observe_anthropic(data),
            // Bedrock streams are binary frames, metered by `bedrock::StreamTranslator`.
            Api::Converse => Observed::default(),
            Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses => {
                self.observe_openai(data)
            }
        }
    }

    fn observe_openai(&mut self, data: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(chunk) = serde_json::from_slice::<OpenAiChunk>(data) else {
            return observed;
        };
        let text_before = self.seen_bytes();
        for choice in &chunk.choices {
            if let Some(delta) = &choice.delta {
                self.keep_strings(delta);
            }
            if let Some(text) = &choice.text {
                self.keep(text);
            }
        }
        if let (Some(kind), Some(delta)) = (&chunk.kind, &chunk.delta)
            && kind.ends_with(".delta")
        {
            self.keep_strings(delta);
        }
        observed.text = self.seen_bytes() > text_before;
        let usage = chunk
            .usage
            .as_ref()
            .or(chunk.response.as_ref().and_then(|r| r.usage.as_ref()));
        if let Some(usage) = usage.and_then(OpenAiUsage::normalise) {
            self.openai = Some(usage);
            observed.usage_only = chunk.choices.is_empty() && chunk.kind.is_none();
        }
        observed
    }

    fn observe_anthropic(&mut self, data: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(event) = serde_json::from_slice::<AnthropicEvent>(data) else {
            return observed;
        };
        let usage = match event.kind.as_deref() {
            Some("message_start") => event.message.and_then(|m| m.usage),
            Some("message_delta") => event.usage,
            _ => None,
        };
        if let Some(later) = usage {
            let mut merged: AnthropicUsage = self.anthropic.unwrap_or_default().into();
            merged.merge(later);
            self.anthropic = Some(merged.into());
        }
        if let Some(delta) = &event.delta
            && event.kind.as_deref() == Some("content_block_delta")
        {
            let before = self.seen_bytes();
            self.keep_strings(delta);
            observed.text = self.seen_bytes() > before;
        }
        observed
    }

    fn keep(&mut self, text: &str) {
        keep_capped(
            &mut self.text,
            self.text_bytes_max,
            &mut self.beyond_bytes,
            text,
        );
    }

    fn keep_strings(&mut self, value: &serde_json::Value) {
        let room = self.text_bytes_max.saturating_sub(self.text.len());
        let mut text = std::mem::take(&mut self.text);
        let before = text.len();
        collect_strings(value, &mut text, room);
        let kept = (text.len() - before) as u64;
        self.beyond_bytes += string_bytes(value).saturating_sub(kept);
        self.text = text;
    }

    /// All text seen, kept or not.
    #[must_use]
    pub fn seen_bytes(&self) -> u64 {
        self.text.len() as u64 + self.beyond_bytes
    }

    /// The usage the provider reported, if it did; for Anthropic, only once both the prompt and
    /// the completion counts are known.
    #[must_use]
    pub fn usage(&self) -> Option<TokenUsage> {
        self.openai.or_else(|| {
            let state = self.anthropic?;
            state.output_tokens?;
            AnthropicUsage::from(state).normalise()
        })
    }

    /// Prompt tokens reported before the stream ended (Anthropic's `message_start`).
    #[must_use]
    pub fn reported_input(&self) -> Option<TokenUsage> {
        let state = self.anthropic?;
        AnthropicUsage::from(AnthropicUsageState {
            output_tokens: Some(0),
            ..state
        })
        .normalise()
    }
}

/// Appends `text` to `kept` up to `cap` bytes (cut on a char boundary), counting what does
/// not fit in `beyond`.
pub(crate) fn keep_capped(kept: &mut String, cap: usize, beyond: &mut u64, text: &str) {
    let room = cap.saturating_sub(kept.len());
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    kept.push_str(text.get(..end).unwrap_or_default());
    *beyond += (text.len() - end) as u64;
}

/// Bytes of the strings `collect` would take from `value`.
fn string_bytes(value: &serde_json::Value) -> u64 {
    match value {
        serde_json::Value::String(s) => s.len() as u64,
        serde_json::Value::Array(items) => items.iter().map(string_bytes).sum(),
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "role" | "type" | "id" | "finish_reason" | "stop_reason"
                )
            })
            .map(|(_, item)| string_bytes(item))
            .sum(),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => 0,
    }
}

/// Every string in `value`, appended to `out` up to `room` more bytes (cut on a char boundary).
fn collect_strings(value: &serde_json::Value, out: &mut String, room: usize) {
    collect(value, out, out.len().saturating_add(room));
}

fn collect(value: &serde_json::Value, out: &mut String, cap: usize) {
    match value {
        serde_json::Value::String(s) => {
            let room = cap.saturating_sub(out.len());
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(s.get(..end).unwrap_or_default());
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect(item, out, cap);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                // Structural fields are not text the model generated or read.
                if !matches!(
                    key.as_str(),
                    "role" | "type" | "id" | "finish_reason" | "stop_reason"
                ) {
                    collect(item, out, cap);
                }
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// The prompt text of a request body (messages, system, prompt, input, tools), for counting
/// when the provider reports no usage. Returns the text and the number of messages (each
/// costs a few tokens of framing).
#[must_use]
pub fn prompt_text(body: &[u8]) -> (String, u64) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (String::new(), 0);
    };
    let mut text = String::new();
    for field in [
        "system",
        "messages",
        "prompt",
        "input",
        "instructions",
        "tools",
    ] {
        if let Some(v) = value.get(field) {
            collect_strings(v, &mut text, usize::MAX);
        }
    }
    let messages = value
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .map_or(0, |m| m.len() as u64);
    (text, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_in_both_spellings() {
        let chat = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":20,
            "prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":5}}}"#;
        assert_eq!(
            usage_of_body(Api::ChatCompletions, chat),
            Some(TokenUsage::new(100, 60, 0, 20, 5))
        );
        let responses = br#"{"output":[],"usage":{"input_tokens":7,"output_tokens":3,
            "input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":1}}}"#;
        assert_eq!(
            usage_of_body(Api::Responses, responses),
            Some(TokenUsage::new(7, 2, 0, 3, 1))
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(
            usage_of_body(Api::Embeddings, embeddings),
            Some(TokenUsage::new(9, 0, 0, 0, 0))
        );
        assert_eq!(
            usage_of_body(Api::ChatCompletions, b"{\"choices\":[]}"),
            None
        );
        assert_eq!(usage_of_body(Api::ChatCompletions, b"not json"), None);
    }

    #[test]
    fn anthropic_usage_sums_cache_reads_and_writes_into_input() {
        let body = br#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,
            "cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":40}}"#;
        assert_eq!(
            usage_of_body(Api::Messages, body),
            Some(TokenUsage::new(3210, 3000, 200, 40, 0))
        );
        assert_eq!(text_of_body(body).as_deref(), Some("hi"));
    }

    #[test]
    fn openai_streams_report_text_and_the_usage_chunk() {
        let mut tally = StreamTally::new(1024);
        let seen = tally.observe(
            Api::ChatCompletions,
            br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}],"usage":null}"#,
        );
        assert_eq!(
            seen,
            Observed {
                usage_only: false,
                text: true
            }
        );
        tally.observe(
            Api::ChatCompletions,
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
        );
        assert_eq!(tally.text, "Hel{\"a\"");
        assert_eq!(tally.usage(), None);
        let seen = tally.observe(
            Api::ChatCompletions,
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
        );
        assert_eq!(
            seen,
            Observed {
                usage_only: true,
                text: false
            }
        );
        assert_eq!(tally.usage(), Some(TokenUsage::new(5, 0, 0, 2, 0)));
        assert_eq!(
            tally.observe(Api::ChatCompletions, b"[DONE]"),
            Observed::default()
        );
    }

    #[test]
    fn responses_streams_read_deltas_and_the_completed_usage() {
        let mut tally = StreamTally::new(1024);
        tally.observe(
            Api::Responses,
            br#"{"type":"response.output_text.delta","delta":"abc"}"#,
        );
        let seen = tally.observe(
            Api::Responses,
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":1}}}"#,
        );
        assert!(!seen.usage_only, "responses events are never hidden");
        assert_eq!(tally.text, "abc");
        assert_eq!(tally.usage(), Some(TokenUsage::new(4, 0, 0, 1, 0)));
    }

    #[test]
    fn anthropic_streams_merge_start_and_delta_usage() {
        let mut tally = StreamTally::new(1024);
        tally.observe(
            Api::Messages,
            br#"{"type":"message_start","message":{"usage":{"input_tokens":12,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
        );
        assert_eq!(
            tally.reported_input(),
            Some(TokenUsage::new(112, 100, 0, 0, 0))
        );
        let seen = tally.observe(
            Api::Messages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo"}}"#.as_bytes(),
        );
        assert!(seen.text);
        tally.observe(
            Api::Messages,
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        );
        assert_eq!(tally.usage(), Some(TokenUsage::new(112, 100, 0, 15, 0)));
        assert_eq!(tally.text, "héllo");
    }

    #[test]
    fn kept_text_stops_at_the_cap_on_a_char_boundary() {
        let mut tally = StreamTally::new(4);
        tally.observe(
            Api::ChatCompletions,
            r#"{"choices":[{"delta":{"content":"abcé"}}]}"#.as_bytes(),
        );
        assert_eq!(tally.text, "abc");
    }

    #[test]
    fn prompt_text_reads_messages_system_and_tools() {
        let (text, messages) = prompt_text(
            br#"{"model":"m","system":"S","messages":[{"role":"user","content":"hi"},
            {"role":"user","content":[{"type":"text","text":"there"}]}],"tools":[{"name":"f"}]}"#,
        );
        assert_eq!(text, "Shitheref");
        assert_eq!(messages, 2);
    }
}
