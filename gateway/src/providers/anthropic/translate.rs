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
use tollgate_engine::TokenUsage;

use crate::providers::anthropic::read;
use crate::providers::chat::{
    ChunkWriter, Conversation, Dialect, ToolCalls, TranslateError, assistant_message, bad,
    completion, conversation, extra_fields, max_tokens, openai_usage, stop_sequences, tool_call,
};
use crate::providers::read::Pricer;

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
    sampling(&request, &mut out);
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(bad(
            "`n` greater than 1 is not supported for Anthropic models",
        ));
    }
    // A client's extra never replaces a field translated above.
    for (name, value) in extra_fields(&request) {
        if !out.contains_key(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        out.insert("tools".into(), Value::Array(tool_definitions(tools)?));
        out.insert("tool_choice".into(), tool_choice(&request)?);
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
}

/// The sampling fields Messages shares with OpenAI (`stop` as `stop_sequences`), and `stream`.
fn sampling(request: &Value, out: &mut Map<String, Value>) {
    for field in ["temperature", "top_p", "stream"] {
        if let Some(v) = request.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(stop) = stop_sequences(request) {
        out.insert("stop_sequences".into(), stop);
    }
}

/// OpenAI's function tools as Anthropic's: `parameters` as `input_schema` (an empty object
/// schema when none is given).
fn tool_definitions(tools: &[Value]) -> Result<Vec<Value>, TranslateError> {
    let mut definitions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let function = tool
            .get("function")
            .ok_or_else(|| bad(format!("tools[{i}] has no `function`")))?;
        let mut definition = Map::new();
        definition.insert(
            "name".into(),
            function
                .get("name")
                .cloned()
                .ok_or_else(|| bad(format!("tools[{i}].function.name is missing")))?,
        );
        if let Some(d) = function.get("description") {
            definition.insert("description".into(), d.clone());
        }
        definition.insert(
            "input_schema".into(),
            function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        definitions.push(Value::Object(definition));
    }
    Ok(definitions)
}

/// OpenAI's `tool_choice` (`auto` when unset) as Anthropic's; `parallel_tool_calls: false`
/// becomes `disable_parallel_tool_use` on any choice but `none`.
fn tool_choice(request: &Value) -> Result<Value, TranslateError> {
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
    let parallel = request.get("parallel_tool_calls").and_then(Value::as_bool);
    if parallel == Some(false)
        && let Some(c) = choice.as_object_mut()
        && c.get("type") != Some(&json!("none"))
    {
        c.insert("disable_parallel_tool_use".into(), json!(true));
    }
    Ok(choice)
}

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

/// OpenAI's usage object for Anthropic's (cache reads and writes summed into the prompt).
fn openai_usage_of(usage: &Value) -> Value {
    openai_usage(&read::usage_of_value(usage).unwrap_or_default())
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
    let id = message.get("id").and_then(Value::as_str).unwrap_or("");
    let finish = finish_reason(message.get("stop_reason").and_then(Value::as_str));
    completion(
        &format!("chatcmpl-{id}"),
        model,
        created_s,
        json!([{"index": 0, "message": reply, "finish_reason": finish}]),
        openai_usage_of(message.get("usage").unwrap_or(&Value::Null)),
    )
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

/// Turns Anthropic stream events into `chat.completion.chunk` events, one event at a time.
#[derive(Debug)]
pub struct StreamTranslator {
    /// Its id is the message's, from `message_start`.
    chunks: ChunkWriter,
    include_usage: bool,
    /// The usage of `message_start` and `message_delta`, the later count of each winning.
    usage: Map<String, Value>,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_calls: ToolCalls,
}

impl StreamTranslator {
    /// A translator answering for `model`; `include_usage` when the client asked for usage.
    #[must_use]
    pub fn new(model: &str, created_s: i64, include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            chunks: ChunkWriter::new("chatcmpl-tollgate", model, created_s),
            include_usage,
            usage: Map::new(),
            tool_calls: ToolCalls::default(),
        }
    }

    /// The same translator, its usage chunk priced by `pricer` (the call's cost in
    /// `usage.cost`).
    #[must_use]
    pub fn priced(self, pricer: Option<Pricer>) -> StreamTranslator {
        StreamTranslator {
            chunks: self.chunks.priced(pricer),
            ..self
        }
    }

    /// The OpenAI events (possibly none) for one Anthropic event's `data`.
    pub fn event(&mut self, data: &[u8], out: &mut String) {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => self.message_start(&event, out),
            Some("content_block_start") => self.block_start(&event, out),
            Some("content_block_delta") => self.block_delta(&event, out),
            Some("message_delta") => {
                if let Some(Value::Object(usage)) = event.get("usage") {
                    self.usage.extend(usage.clone());
                }
                let stop_reason = event.pointer("/delta/stop_reason").and_then(Value::as_str);
                self.chunks.finish(out, 0, finish_reason(stop_reason));
            }
            Some("message_stop") => {
                let usage = self
                    .include_usage
                    .then(|| read::usage_of_value(&Value::Object(self.usage.clone())))
                    .flatten();
                self.chunks.end(out, usage.as_ref());
            }
            Some("error") => {
                let error = json!({"error": {
                    "message": event.pointer("/error/message").cloned().unwrap_or(json!("")),
                    "type": event.pointer("/error/type").cloned().unwrap_or(json!("api_error")),
                }});
                ChunkWriter::error(out, &error);
            }
            _ => {}
        }
    }

    /// The gateway ends the stream here (its budget's end): every open choice finished with
    /// `length`, as at `max_tokens`, the usage chunk with `usage` if the client asked, and
    /// `[DONE]`.
    pub fn stop(&mut self, usage: &TokenUsage, out: &mut String) {
        self.chunks.finish(out, 0, json!("length"));
        self.chunks.end(out, self.include_usage.then_some(usage));
    }

    /// The message's id and first usage; the assistant's role.
    fn message_start(&mut self, event: &Value, out: &mut String) {
        if let Some(id) = event.pointer("/message/id").and_then(Value::as_str) {
            self.chunks.id = format!("chatcmpl-{id}");
        }
        if let Some(Value::Object(usage)) = event.pointer("/message/usage") {
            self.usage.extend(usage.clone());
        }
        self.chunks.role(out, 0);
    }

    /// A `tool_use` block opens a tool call; a text block needs no chunk of its own.
    fn block_start(&mut self, event: &Value, out: &mut String) {
        let block = event.get("content_block").unwrap_or(&Value::Null);
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            return;
        }
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = self.tool_calls.start(
            index,
            block.get("id").unwrap_or(&Value::Null),
            block.get("name").unwrap_or(&Value::Null),
        );
        self.chunks.delta(out, 0, delta, Value::Null);
    }

    /// Text, or a fragment of the arguments of the tool call the block opened.
    fn block_delta(&mut self, event: &Value, out: &mut String) {
        let delta = event.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta.get("text").cloned().unwrap_or(json!(""));
                self.chunks
                    .delta(out, 0, json!({ "content": text }), Value::Null);
            }
            Some("input_json_delta") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let partial = delta.get("partial_json").unwrap_or(&Value::Null);
                if let Some(chunk) = self.tool_calls.arguments(index, partial) {
                    self.chunks.delta(out, 0, chunk, Value::Null);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::json_data;

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
            json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                   "prompt_tokens_details": {"cached_tokens": 90},
                   "completion_tokens_details": {"reasoning_tokens": 0}})
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
        let chunks = json_data(&out);
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
