//! OpenAI chat completions in front of Anthropic's Messages API: the request one way, the
//! answer (whole or streamed, text and tools) the other.
//!
//! A client that speaks OpenAI's API can call `anthropic/claude-...` unchanged. The request is
//! rewritten into a Messages request (system prompts lifted out, tool calls and tool results
//! turned into `tool_use` and `tool_result` blocks, consecutive same-role turns merged, a
//! `max_tokens` always set); the answer comes back as a `chat.completion` or as
//! `chat.completion.chunk` events. Metering reads the provider's own bytes, before translation.
//! Top-level fields OpenAI defines but Anthropic lacks are dropped; fields OpenAI does not
//! define (`top_k`, `thinking`, sent with the SDK's `extra_body`) pass through to the provider.

use serde_json::{Map, Value, json};

/// Why a request could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

fn bad(message: impl Into<String>) -> TranslateError {
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

/// Anthropic's way of writing a conversation.
const ANTHROPIC: Dialect = Dialect {
    content: content_blocks,
    tool_use: |id, name, input| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
    tool_result: |id, content| json!({"type": "tool_result", "tool_use_id": id, "content": content}),
};

/// Rewrites an OpenAI chat-completions body into an Anthropic Messages body for
/// `upstream_model`, with `max_tokens_default` when the client set none.
pub fn chat_to_messages(
    body: &[u8],
    upstream_model: &str,
    max_tokens_default: u64,
) -> Result<Vec<u8>, TranslateError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))?;
    let Conversation { system, turns } = conversation(&request, &ANTHROPIC)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert(
        "max_tokens".into(),
        json!(max_tokens(&request, max_tokens_default)),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
    ] {
        if let Some(v) = request.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = stop_sequences(&request) {
        out.insert("stop_sequences".into(), stop);
    }
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(bad(
            "`n` greater than 1 is not supported for Anthropic models",
        ));
    }
    if let Some(fields) = request.as_object() {
        for (name, value) in fields {
            if !OPENAI_CHAT_FIELDS.contains(&name.as_str()) && !out.contains_key(name) {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let mut converted = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let function = tool
                .get("function")
                .ok_or_else(|| bad(format!("tools[{i}] has no `function`")))?;
            let mut t = Map::new();
            t.insert(
                "name".into(),
                function
                    .get("name")
                    .cloned()
                    .ok_or_else(|| bad(format!("tools[{i}].function.name is missing")))?,
            );
            if let Some(d) = function.get("description") {
                t.insert("description".into(), d.clone());
            }
            t.insert(
                "input_schema".into(),
                function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
            converted.push(Value::Object(t));
        }
        out.insert("tools".into(), Value::Array(converted));
        let parallel = request.get("parallel_tool_calls").and_then(Value::as_bool);
        let mut choice = match request.get("tool_choice") {
            None | Some(Value::Null) => json!({"type": "auto"}),
            Some(Value::String(s)) if s == "auto" => json!({"type": "auto"}),
            Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
            Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
            Some(Value::Object(o)) => match o.get("function").and_then(|f| f.get("name")) {
                Some(name) => json!({"type": "tool", "name": name}),
                None => return Err(bad("tool_choice object needs function.name")),
            },
            Some(other) => return Err(bad(format!("tool_choice {other} is not supported"))),
        };
        if parallel == Some(false)
            && let Some(c) = choice.as_object_mut()
            && c.get("type") != Some(&json!("none"))
        {
            c.insert("disable_parallel_tool_use".into(), json!(true));
        }
        out.insert("tool_choice".into(), choice);
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
}

/// Top-level fields of OpenAI's chat-completions request: translated above or, having no
/// Anthropic counterpart, dropped. Anything else is the client's provider-specific extra.
pub(crate) const OPENAI_CHAT_FIELDS: [&str; 30] = [
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

/// OpenAI message content (a string or parts) as Anthropic content blocks.
fn content_blocks(content: Option<&Value>, index: usize) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))})),
                Some("image_url") => {
                    let url = part
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("messages[{index}]: image_url.url is missing")))?;
                    Ok(image_block(url))
                }
                Some(other) => Err(bad(format!("messages[{index}]: content part `{other}` is not supported for Anthropic models"))),
                None => Err(bad(format!("messages[{index}]: content part without a type"))),
            })
            .collect(),
        Some(_) => Err(bad(format!("messages[{index}].content must be a string or an array"))),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// OpenAI's finish reason for an Anthropic stop reason.
fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        Some("end_turn" | "stop_sequence" | "pause_turn") => json!("stop"),
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

fn openai_usage(usage: &Value) -> Value {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let read = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + read + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
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

/// A whole Anthropic message as a `chat.completion` answering for `model`.
pub fn message_to_chat(body: &[u8], model: &str, created_s: i64) -> Option<Vec<u8>> {
    let message: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                tool_calls.push(tool_call(
                    block.get("id"),
                    block.get("name"),
                    block.get("input"),
                ));
            }
            _ => {}
        }
    }
    let reply = assistant_message(&text, tool_calls);
    let answer = json!({
        "id": format!("chatcmpl-{}", message.get("id").and_then(Value::as_str).unwrap_or("")),
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": [{
            "index": 0,
            "message": reply,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": openai_usage(message.get("usage").unwrap_or(&Value::Null)),
    });
    serde_json::to_vec(&answer).ok()
}

/// An Anthropic error body in OpenAI's envelope.
pub fn error_to_openai(body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let answer = json!({"error": {
        "message": error.get("message").cloned().unwrap_or(json!("")),
        "type": error.get("type").cloned().unwrap_or(json!("api_error")),
        "param": null,
        "code": null,
    }});
    serde_json::to_vec(&answer).ok()
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

/// Turns Anthropic stream events into `chat.completion.chunk` events, one event at a time.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    created_s: i64,
    include_usage: bool,
    id: String,
    usage: Map<String, Value>,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_calls: ToolCalls,
    finish: Value,
}

impl StreamTranslator {
    /// A translator answering for `model`; `include_usage` when the client asked for usage.
    #[must_use]
    pub fn new(model: &str, created_s: i64, include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            model: model.to_owned(),
            created_s,
            include_usage,
            id: String::from("chatcmpl-tollgate"),
            usage: Map::new(),
            tool_calls: ToolCalls::default(),
            finish: Value::Null,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created_s,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    }

    /// The OpenAI events (possibly none) for one Anthropic event's `data`.
    pub fn event(&mut self, data: &[u8], out: &mut String) {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(id) = event.pointer("/message/id").and_then(Value::as_str) {
                    self.id = format!("chatcmpl-{id}");
                }
                if let Some(Value::Object(usage)) = event.pointer("/message/usage") {
                    self.usage.extend(usage.clone());
                }
                out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            Some("content_block_start") => {
                let block = event.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let delta = self.tool_calls.start(
                        index,
                        block.get("id").unwrap_or(&Value::Null),
                        block.get("name").unwrap_or(&Value::Null),
                    );
                    out.push_str(&self.chunk(delta, Value::Null));
                }
            }
            Some("content_block_delta") => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or(json!(""));
                        out.push_str(&self.chunk(json!({"content": text}), Value::Null));
                    }
                    Some("input_json_delta") => {
                        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let partial = delta.get("partial_json").unwrap_or(&Value::Null);
                        if let Some(chunk) = self.tool_calls.arguments(index, partial) {
                            out.push_str(&self.chunk(chunk, Value::Null));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(Value::Object(usage)) = event.get("usage") {
                    self.usage.extend(usage.clone());
                }
                self.finish =
                    finish_reason(event.pointer("/delta/stop_reason").and_then(Value::as_str));
                out.push_str(&self.chunk(json!({}), self.finish.clone()));
            }
            Some("message_stop") => {
                if self.include_usage {
                    let chunk = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created_s,
                        "model": self.model,
                        "choices": [],
                        "usage": openai_usage(&Value::Object(self.usage.clone())),
                    });
                    out.push_str(&format!("data: {chunk}\n\n"));
                }
                out.push_str("data: [DONE]\n\n");
            }
            Some("error") => {
                let error = json!({"error": {
                    "message": event.pointer("/error/message").cloned().unwrap_or(json!("")),
                    "type": event.pointer("/error/type").cloned().unwrap_or(json!("api_error")),
                }});
                out.push_str(&format!("data: {error}\n\n"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Value {
        let bytes =
            chat_to_messages(request.to_string().as_bytes(), "claude-sonnet-4-5", 4096).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn requests_lift_system_merge_turns_and_carry_tools() {
        let out = translate(json!({
            "model": "anthropic/claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Rain"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.5,
            "stream": true,
            "seed": 7,
            "top_k": 5
        }));
        assert!(out.get("seed").is_none(), "OpenAI-only fields are dropped");
        assert_eq!(out["top_k"], 5, "provider-specific extras pass through");
        assert_eq!(out["model"], "claude-sonnet-4-5");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}])
        );
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["stream"], true);
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            3,
            "tool result and next user turn merge: {messages:#?}"
        );
        assert_eq!(
            messages[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(
            messages[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(
            messages[2]["content"][1],
            json!({"type": "text", "text": "And tomorrow?"})
        );
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (request, expected) in [
            (json!({"messages": "x"}), "`messages` must be an array"),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0].role is missing",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "tool_call_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "not supported",
            ),
        ] {
            let error = chat_to_messages(request.to_string().as_bytes(), "m", 1).unwrap_err();
            assert!(error.0.contains(expected), "{error} lacks {expected}");
        }
    }

    #[test]
    fn whole_answers_become_chat_completions() {
        let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 0, "output_tokens": 5}});
        let chat: Value = serde_json::from_slice(
            &message_to_chat(message.to_string().as_bytes(), "anthropic/claude", 7).unwrap(),
        )
        .unwrap();
        assert_eq!(chat["model"], "anthropic/claude");
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chat["choices"][0]["message"]["content"], "Checking.");
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "prompt_tokens_details": {"cached_tokens": 90}})
        );
    }

    #[test]
    fn streams_become_chunks_with_tool_call_fragments() {
        let mut t = StreamTranslator::new("anthropic/claude", 7, true);
        let mut out = String::new();
        for event in [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\":1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ] {
            t.event(event.to_string().as_bytes(), &mut out);
        }
        let chunks: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "toolu_1"
        );
        let arguments: String = chunks[3..5]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(arguments, "{\"city\":1}");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["usage"]["completion_tokens"], 9);
        assert_eq!(chunks[6]["usage"]["prompt_tokens"], 12);
        assert!(chunks.iter().all(|c| c["id"] == "chatcmpl-msg_1"));
    }
}
