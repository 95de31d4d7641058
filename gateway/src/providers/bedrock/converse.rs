//! Converse behind OpenAI's chat completions: the request one way, the answer (whole, or
//! ConverseStream frames) the other, and Converse's usage.

use serde_json::{Map, Value, json};
use tollgate_engine::TokenUsage;

use crate::providers::bedrock::eventstream::Frame;
use crate::providers::chat::{
    ChunkWriter, Conversation, Dialect, ToolCalls, TranslateError, assistant_message, bad,
    completion, conversation, extra_fields, max_tokens, openai_usage, stop_sequences, tool_call,
};
use crate::providers::read::Pricer;
use crate::providers::text::Kept;

/// Converse's way of writing a conversation.
const BEDROCK: Dialect = Dialect {
    content: blocks_of,
    tool_use: |id, name, input| json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
    tool_result: |id, content| json!({"toolResult": {"toolUseId": id, "content": content}}),
};

/// The id of every translated answer: Converse gives none.
const CHAT_ID: &str = "chatcmpl-bedrock";

/// Rewrites an OpenAI chat-completions body into a Converse body.
pub fn chat_to_converse(body: &[u8], max_tokens_default: u64) -> Result<Vec<u8>, TranslateError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))?;
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(bad(
            "`n` greater than 1 is not supported for Bedrock models",
        ));
    }
    let Conversation { system, turns } = conversation(&request, &BEDROCK)?;
    let mut out = Map::new();
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert(
        "inferenceConfig".into(),
        inference_config(&request, max_tokens_default),
    );
    if let Some(config) = tool_config(&request) {
        out.insert("toolConfig".into(), config);
    }
    // Converse takes what it does not define in one object, passed to the model as written.
    let extra: Map<String, Value> = extra_fields(&request)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if !extra.is_empty() {
        out.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
}

/// The sampling fields as `inferenceConfig`; `maxTokens` always set.
fn inference_config(request: &Value, max_tokens_default: u64) -> Value {
    let mut inference = Map::new();
    let max_tokens = max_tokens(request, max_tokens_default);
    inference.insert("maxTokens".into(), json!(max_tokens));
    if let Some(t) = request.get("temperature").filter(|v| v.is_number()) {
        inference.insert("temperature".into(), t.clone());
    }
    if let Some(p) = request.get("top_p").filter(|v| v.is_number()) {
        inference.insert("topP".into(), p.clone());
    }
    if let Some(stop) = stop_sequences(request) {
        inference.insert("stopSequences".into(), stop);
    }
    Value::Object(inference)
}

/// OpenAI's `tools` and `tool_choice` as `toolConfig`; none when there are no tools or the
/// client turned them off (`"none"`, which Converse cannot say).
fn tool_config(request: &Value) -> Option<Value> {
    let choice = request.get("tool_choice");
    if matches!(choice, Some(Value::String(s)) if s == "none") {
        return None;
    }
    let tools = request.get("tools").and_then(Value::as_array)?;
    let mut config = Map::new();
    config.insert(
        "tools".into(),
        Value::Array(tools.iter().map(tool_spec).collect()),
    );
    match choice {
        Some(Value::String(s)) if s == "required" => {
            config.insert("toolChoice".into(), json!({"any": {}}));
        }
        Some(Value::Object(o)) => {
            if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                config.insert("toolChoice".into(), json!({"tool": {"name": name}}));
            }
        }
        _ => {
            config.insert("toolChoice".into(), json!({"auto": {}}));
        }
    }
    Some(Value::Object(config))
}

/// One OpenAI function tool as a `toolSpec`; a tool without parameters takes an empty object.
fn tool_spec(tool: &Value) -> Value {
    let function = tool.get("function").unwrap_or(&Value::Null);
    let mut spec = Map::new();
    spec.insert(
        "name".into(),
        function.get("name").cloned().unwrap_or(json!("")),
    );
    if let Some(d) = function.get("description") {
        spec.insert("description".into(), d.clone());
    }
    let schema = function
        .get("parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    spec.insert("inputSchema".into(), json!({ "json": schema }));
    json!({"toolSpec": Value::Object(spec)})
}

fn blocks_of(content: Option<&Value>, index: usize) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": part.get("text").cloned().unwrap_or(json!(""))})),
                Some("image_url") => {
                    let url = part
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let (media_type, data) = url
                        .strip_prefix("data:")
                        .and_then(|rest| rest.split_once(";base64,"))
                        .ok_or_else(|| {
                            bad(format!(
                                "messages[{index}]: Bedrock takes images as data: URLs, not links"
                            ))
                        })?;
                    let format = media_type.strip_prefix("image/").unwrap_or(media_type);
                    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
                }
                Some(other) => Err(bad(format!(
                    "messages[{index}]: content part `{other}` is not supported for Bedrock models"
                ))),
                None => Err(bad(format!(
                    "messages[{index}]: content part without a type"
                ))),
            })
            .collect(),
        Some(_) => Err(bad(format!(
            "messages[{index}].content must be a string or an array"
        ))),
    }
}

fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        Some("end_turn" | "stop_sequence") => json!("stop"),
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("guardrail_intervened" | "content_filtered") => json!("content_filter"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

/// Usage from Converse's `usage` object.
#[must_use]
pub fn usage_of(usage: &Value) -> Option<TokenUsage> {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64);
    let uncached = n("inputTokens")?;
    let read = n("cacheReadInputTokens").unwrap_or(0);
    let write = n("cacheWriteInputTokens").unwrap_or(0);
    Some(TokenUsage::new(
        uncached.saturating_add(read).saturating_add(write),
        read,
        write,
        n("outputTokens").unwrap_or(0),
        0,
    ))
}

/// A whole Converse answer as a `chat.completion` for `model`.
#[must_use]
pub fn converse_to_chat(body: &[u8], model: &str, created_s: i64) -> Option<Vec<u8>> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in answer
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = block.get("toolUse") {
            tool_calls.push(tool_call(
                call.get("toolUseId"),
                call.get("name"),
                call.get("input"),
            ));
        }
    }
    let message = assistant_message(&text, tool_calls);
    let usage = answer.get("usage").and_then(usage_of).unwrap_or_default();
    let finish = finish_reason(answer.get("stopReason").and_then(Value::as_str));
    completion(
        CHAT_ID,
        model,
        created_s,
        json!([{"index": 0, "message": message, "finish_reason": finish}]),
        openai_usage(&usage),
    )
}

/// A Bedrock error body (`{"message": ...}`, the type in `x-amzn-ErrorType`) in OpenAI's
/// envelope.
#[must_use]
pub fn error_to_openai(body: &[u8], error_type: Option<&str>) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")).cloned())
        .unwrap_or_else(|| json!(String::from_utf8_lossy(body)));
    let kind = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .map(|t| t.rsplit('#').next().unwrap_or(t))
        .unwrap_or("BedrockError");
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        .to_string()
        .into_bytes()
}

/// ConverseStream frames to `chat.completion.chunk` events, with what metering needs.
#[derive(Debug)]
pub struct StreamTranslator {
    chunks: ChunkWriter,
    include_usage: bool,
    tool_calls: ToolCalls,
    /// `[DONE]` is written, so [`StreamTranslator::finish`] writes nothing more.
    done: bool,
    /// Usage from the `metadata` event.
    pub usage: Option<TokenUsage>,
    /// Generated text and tool-call arguments kept for counting, up to a cap.
    pub kept: Kept,
}

impl StreamTranslator {
    /// A translator answering for `model`; `include_usage` when the client asked for usage;
    /// at most `text_bytes_max` of text kept for counting.
    #[must_use]
    pub fn new(
        model: &str,
        created_s: i64,
        include_usage: bool,
        text_bytes_max: usize,
    ) -> StreamTranslator {
        StreamTranslator {
            chunks: ChunkWriter::new(CHAT_ID, model, created_s),
            include_usage,
            tool_calls: ToolCalls::default(),
            done: false,
            usage: None,
            kept: Kept::new(text_bytes_max),
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

    /// Translates one frame; returns whether it carried generated text.
    pub fn frame(&mut self, frame: &Frame, out: &mut String) -> bool {
        let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        if frame.header(":message-type") != Some("event") {
            exception(frame, &payload, out);
            return false;
        }
        match frame.header(":event-type") {
            Some("messageStart") => self.chunks.role(out, 0),
            Some("contentBlockStart") => self.block_start(&payload, out),
            Some("contentBlockDelta") => return self.block_delta(&payload, out),
            Some("messageStop") => {
                let finish = finish_reason(payload.get("stopReason").and_then(Value::as_str));
                self.chunks.finish(out, 0, finish);
            }
            Some("metadata") => {
                self.usage = payload.get("usage").and_then(usage_of);
                self.finish(out);
            }
            _ => {}
        }
        false
    }

    /// A block that starts a tool call opens it; a text block has no start event.
    fn block_start(&mut self, payload: &Value, out: &mut String) {
        let Some(tool) = payload.pointer("/start/toolUse") else {
            return;
        };
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let delta = self.tool_calls.start(
            index,
            tool.get("toolUseId").unwrap_or(&Value::Null),
            tool.get("name").unwrap_or(&Value::Null),
        );
        self.chunks.delta(out, 0, delta, Value::Null);
    }

    /// Text, or a fragment of a tool call's input; returns whether it carried either.
    fn block_delta(&mut self, payload: &Value, out: &mut String) -> bool {
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str) {
            self.kept.keep(text);
            self.chunks
                .delta(out, 0, json!({ "content": text }), Value::Null);
            return true;
        }
        if let Some(input) = payload
            .pointer("/delta/toolUse/input")
            .and_then(Value::as_str)
        {
            self.kept.keep(input);
            if let Some(delta) = self.tool_calls.arguments(index, &json!(input)) {
                self.chunks.delta(out, 0, delta, Value::Null);
            }
            return true;
        }
        false
    }

    /// The gateway ends the stream here (its budget's end): every open choice finished with
    /// `length`, as at `max_tokens`, the usage chunk with `usage` if the client asked, and
    /// `[DONE]`.
    pub fn stop(&mut self, usage: &TokenUsage, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        self.chunks.finish(out, 0, json!("length"));
        self.chunks.end(out, self.include_usage.then_some(usage));
    }

    /// Ends the OpenAI stream (usage chunk if asked, then `[DONE]`), once.
    pub fn finish(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        let usage = self.usage.as_ref().filter(|_| self.include_usage);
        self.chunks.end(out, usage);
    }
}

/// An exception or error frame as an OpenAI error event: its type from the headers, its
/// message from the payload or the headers.
fn exception(frame: &Frame, payload: &Value, out: &mut String) {
    let kind = frame
        .header(":exception-type")
        .or_else(|| frame.header(":error-code"))
        .unwrap_or("error");
    let message = payload
        .get("message")
        .cloned()
        .or_else(|| frame.header(":error-message").map(|m| json!(m)))
        .unwrap_or(json!(""));
    ChunkWriter::error(out, &json!({"error": {"message": message, "type": kind}}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn requests_translate_to_converse() {
        let request = json!({
            "model": "bedrock/anthropic.claude", "max_tokens": 64, "temperature": 0.2, "stop": ["X"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "Rain"}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "top_k": 3
        });
        let out: Value =
            serde_json::from_slice(&chat_to_converse(request.to_string().as_bytes(), 100).unwrap())
                .unwrap();
        assert_eq!(out["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 64, "temperature": 0.2, "stopSequences": ["X"]})
        );
        assert_eq!(
            out["messages"][1]["content"][0]["toolUse"]["input"],
            json!({"c": 1})
        );
        assert_eq!(
            out["messages"][2]["content"][0]["toolResult"]["toolUseId"],
            "t1"
        );
        assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
            "object"
        );
        assert_eq!(out["additionalModelRequestFields"], json!({"top_k": 3}));
    }

    #[test]
    fn answers_and_streams_translate_back() {
        let answer = json!({"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}, {"toolUse": {"toolUseId": "t", "name": "w", "input": {"c": 1}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5, "cacheReadInputTokens": 10}});
        let chat: Value = serde_json::from_slice(
            &converse_to_chat(answer.to_string().as_bytes(), "bedrock/m", 1).unwrap(),
        )
        .unwrap();
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"c\":1}"
        );
        assert_eq!(chat["usage"]["prompt_tokens"], 13);

        let mut t = StreamTranslator::new("bedrock/m", 1, true, 1024);
        let mut out = String::new();
        let event = |kind: &str, payload: Value| Frame {
            headers: vec![
                (":message-type".into(), "event".into()),
                (":event-type".into(), kind.into()),
            ],
            payload: Bytes::from(payload.to_string()),
        };
        t.frame(
            &event("messageStart", json!({"role": "assistant"})),
            &mut out,
        );
        assert!(t.frame(
            &event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abc"})
            ),
            &mut out
        ));
        t.frame(
            &event("messageStop", json!({"stopReason": "end_turn"})),
            &mut out,
        );
        t.frame(&event("metadata", json!({"usage": {"inputTokens": 4, "outputTokens": 1, "totalTokens": 5}, "metrics": {"latencyMs": 9}})), &mut out);
        assert_eq!(t.usage, Some(TokenUsage::new(4, 0, 0, 1, 0)));
        assert_eq!(t.kept.text, "Hel");
        assert!(out.contains("\"content\":\"Hel\""));
        assert!(out.contains("\"finish_reason\":\"stop\""));
        assert!(out.contains("\"completion_tokens\":1"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        let exception = Frame {
            headers: vec![
                (":message-type".into(), "exception".into()),
                (":exception-type".into(), "throttlingException".into()),
            ],
            payload: Bytes::from_static(b"{\"message\":\"slow down\"}"),
        };
        let mut error = String::new();
        t.frame(&exception, &mut error);
        assert!(error.contains("throttlingException") && error.contains("slow down"));
        assert_eq!(
            String::from_utf8(error_to_openai(
                b"{\"message\":\"bad\"}",
                Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")
            ))
            .unwrap(),
            "{\"error\":{\"code\":null,\"message\":\"bad\",\"param\":null,\"type\":\"ValidationException\"}}"
        );
    }
}
