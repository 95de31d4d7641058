//! The OpenAI chat-completions side of every translation: the request fields OpenAI defines,
//! its conversation split into the system prompt and alternating turns, tool calls and their
//! dense indexes, the assistant message and envelope of a whole answer, and the chunks of a
//! streamed one ([`ChunkWriter`]). Each provider that is reached through translation
//! (Anthropic, Bedrock, Gemini) writes its own side with these, so what OpenAI's clients read
//! is written in one place.

use serde_json::{Map, Value, json};
use tollgate_engine::TokenUsage;

use crate::providers::read::Pricer;

/// Why a request could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

pub(crate) fn bad(message: impl Into<String>) -> TranslateError {
    TranslateError(message.into())
}

/// How a provider's API writes the pieces of a conversation.
pub(crate) struct Dialect {
    /// OpenAI message content (a string or parts) as the provider's content blocks.
    pub content: fn(Option<&Value>, usize) -> Result<Vec<Value>, TranslateError>,
    /// A tool call the assistant made: id, name, parsed arguments.
    pub tool_use: fn(&Value, &Value, Value) -> Value,
    /// A tool's result for the call `id`, with its content blocks.
    pub tool_result: fn(&str, Vec<Value>) -> Value,
}

/// An OpenAI chat request's messages, as a provider with a separate system prompt and
/// strictly alternating user and assistant turns wants them.
pub(crate) struct Conversation {
    /// System and developer messages, lifted out.
    pub system: Vec<Value>,
    /// `(role, blocks)`, consecutive turns of one role merged; tool results are user turns.
    pub turns: Vec<(String, Vec<Value>)>,
}

/// Splits `request`'s messages into a [`Conversation`] written in `dialect`.
pub(crate) fn conversation(
    request: &Value,
    dialect: &Dialect,
) -> Result<Conversation, TranslateError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array"))?;
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}].role is missing")))?;
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend((dialect.content)(message.get("content"), i)?);
                continue;
            }
            "user" => ("user", (dialect.content)(message.get("content"), i)?),
            "assistant" => {
                let mut blocks = (dialect.content)(message.get("content"), i)?;
                let calls = message.get("tool_calls").and_then(Value::as_array);
                for call in calls.into_iter().flatten() {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .filter(|a| !a.trim().is_empty())
                        .unwrap_or("{}");
                    let input: Value = serde_json::from_str(arguments).map_err(|e| {
                        bad(format!(
                            "messages[{i}]: tool call arguments are not JSON: {e}"
                        ))
                    })?;
                    let id = call.get("id").unwrap_or(&Value::Null);
                    let name = function.get("name").unwrap_or(&Value::Null);
                    blocks.push((dialect.tool_use)(id, name, input));
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("messages[{i}].tool_call_id is missing")))?;
                let content = (dialect.content)(message.get("content"), i)?;
                ("user", vec![(dialect.tool_result)(id, content)])
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}].role `{other}` is not supported"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Turns must alternate: merge consecutive turns of one role.
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_owned(), blocks)),
        }
    }
    Ok(Conversation { system, turns })
}

/// The completion cap a request sets, or `default`.
pub(crate) fn max_tokens(request: &Value, default: u64) -> u64 {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
        .unwrap_or(default)
}

/// OpenAI's `stop` (a string or a list) as a list.
pub(crate) fn stop_sequences(request: &Value) -> Option<Value> {
    match request.get("stop") {
        Some(Value::String(s)) => Some(json!([s])),
        Some(Value::Array(list)) => Some(Value::Array(list.clone())),
        _ => None,
    }
}

/// The top-level fields of `request` that OpenAI's chat-completions API does not define: the
/// client's provider-specific extras (sent with the SDK's `extra_body`), which a translation
/// passes on; OpenAI's own fields are translated or dropped.
pub(crate) fn extra_fields(request: &Value) -> impl Iterator<Item = (&String, &Value)> {
    request
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !OPENAI_CHAT_FIELDS.contains(&name.as_str()))
}

/// Top-level fields of OpenAI's chat-completions request.
const OPENAI_CHAT_FIELDS: [&str; 30] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "seed",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "web_search_options",
    "functions",
];

/// OpenAI's usage object for `usage`: prompt and completion tokens, their total, the cached
/// prompt tokens and the reasoning completion tokens.
pub(crate) fn openai_usage(usage: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": usage.input.0,
        "completion_tokens": usage.output.0,
        "total_tokens": usage.input.0.saturating_add(usage.output.0),
        "prompt_tokens_details": {"cached_tokens": usage.cached.0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning.0},
    })
}

/// OpenAI's tool call of a whole answer: the arguments are the input as a JSON string.
pub(crate) fn tool_call(id: Option<&Value>, name: Option<&Value>, input: Option<&Value>) -> Value {
    json!({
        "id": id.cloned().unwrap_or(json!("")),
        "type": "function",
        "function": {
            "name": name.cloned().unwrap_or(json!("")),
            "arguments": input.map_or_else(|| "{}".to_owned(), Value::to_string),
        },
    })
}

/// OpenAI's assistant message: the text (null when there are only tool calls) and the calls.
pub(crate) fn assistant_message(text: &str, tool_calls: Vec<Value>) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    Value::Object(message)
}

/// A whole `chat.completion` answering for `model` (the client's name for it).
pub(crate) fn completion(
    id: &str,
    model: &str,
    created_s: i64,
    choices: Value,
    usage: Value,
) -> Option<Vec<u8>> {
    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": choices,
        "usage": usage,
    });
    serde_json::to_vec(&completion).ok()
}

/// The `chat.completion.chunk` events of one translated stream, written as server-sent events
/// (`data: {...}` and a blank line). Every chunk carries the same id, `created` and model (the
/// client's name for it); a translator that learns the provider's id from its first event sets
/// [`ChunkWriter::id`] before the first chunk.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    /// `chatcmpl-...`, the id of every chunk written from now on.
    pub id: String,
    model: String,
    created_s: i64,
    /// Prices the usage chunk: the client is told the call's cost in `usage.cost`.
    pricer: Option<Pricer>,
}

impl ChunkWriter {
    /// A writer of chunks of `id` answering for `model`.
    pub(crate) fn new(id: impl Into<String>, model: &str, created_s: i64) -> ChunkWriter {
        ChunkWriter {
            id: id.into(),
            model: model.to_owned(),
            created_s,
            pricer: None,
        }
    }

    /// The same writer, its usage chunk priced by `pricer`.
    pub(crate) fn priced(self, pricer: Option<Pricer>) -> ChunkWriter {
        ChunkWriter { pricer, ..self }
    }

    /// A chunk of choice `index`: `delta`, and `finish` (`null` until the choice ends).
    pub(crate) fn delta(&self, out: &mut String, index: u64, delta: Value, finish: Value) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created_s,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        });
        event(out, &chunk);
    }

    /// The chunk that opens choice `index`: the assistant's role and empty content.
    pub(crate) fn role(&self, out: &mut String, index: u64) {
        self.delta(
            out,
            index,
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        );
    }

    /// The chunk that ends choice `index` with `finish`, its delta empty.
    pub(crate) fn finish(&self, out: &mut String, index: u64, finish: Value) {
        self.delta(out, index, json!({}), finish);
    }

    /// The end of the stream: the usage chunk (no choices) when `usage` is given (the client
    /// asked for it and it is known), with the call's cost when priced, then `[DONE]`.
    pub(crate) fn end(&self, out: &mut String, usage: Option<&TokenUsage>) {
        if let Some(usage) = usage {
            let mut shown = openai_usage(usage);
            if let Some(cost) = self.pricer.as_ref().and_then(|p| p.cost(usage)) {
                shown["cost"] = json!(cost);
            }
            let usage = shown;
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created_s,
                "model": self.model,
                "choices": [],
                "usage": usage,
            });
            event(out, &chunk);
        }
        out.push_str("data: [DONE]\n\n");
    }

    /// An error event, as OpenAI sends one in the middle of a stream (`{"error": {...}}`).
    pub(crate) fn error(out: &mut String, error: &Value) {
        event(out, error);
    }
}

/// One server-sent event carrying `data`.
fn event(out: &mut String, data: &Value) {
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// OpenAI's tool-call indexes (dense, from 0) for a provider's content-block indexes; the id
/// and name go in a call's first fragment only (OpenAI's SDKs append repeated fields).
#[derive(Debug, Default)]
pub(crate) struct ToolCalls {
    by_block: Vec<(u64, usize)>,
}

impl ToolCalls {
    /// The delta that opens a tool call in content block `block`.
    pub(crate) fn start(&mut self, block: u64, id: &Value, name: &Value) -> Value {
        let call = self.by_block.len();
        self.by_block.push((block, call));
        json!({"tool_calls": [{
            "index": call,
            "id": if id.is_null() { json!("") } else { id.clone() },
            "type": "function",
            "function": {"name": if name.is_null() { json!("") } else { name.clone() }, "arguments": ""},
        }]})
    }

    /// The delta that adds `fragment` to the arguments of the call in `block`, if one is open.
    pub(crate) fn arguments(&self, block: u64, fragment: &Value) -> Option<Value> {
        let (_, call) = self.by_block.iter().find(|(b, _)| *b == block)?;
        let fragment = if fragment.is_null() {
            json!("")
        } else {
            fragment.clone()
        };
        Some(json!({"tool_calls": [{"index": call, "function": {"arguments": fragment}}]}))
    }
}
