//! Google's Gemini `generateContent` API (the Gemini API and Vertex AI speak the same body)
//! behind OpenAI's chat completions: the request one way, the answer (whole or streamed, text
//! and function calls) and Google's errors the other. Pure functions on bytes; no I/O.
//!
//! What a reader must know about the wire (Google's SDK types and API docs):
//! - Counts: `promptTokenCount` includes `cachedContentTokenCount`; `totalTokenCount` is the sum
//!   of prompt, candidates, `toolUsePromptTokenCount` and `thoughtsTokenCount`, so thoughts are
//!   not inside the candidates count and tool-use prompt tokens are not inside the prompt count.
//!   [`usage_of`] adds each apart term into input or output so no billed token is dropped.
//! - A stream (`alt=sse`) is one whole `GenerateContentResponse` per `data:` event, with no
//!   `[DONE]`; `usageMetadata` is cumulative (on every chunk, or only the last, by model), so the
//!   latest value of each count wins, never a sum. A function call arrives whole in one chunk.
//! - A function call ends a candidate with `STOP` like text does: `tool_calls` is inferred from
//!   the parts. Gemini 3 rejects a replayed function call without its `thoughtSignature`; the
//!   signature travels to OpenAI clients as `extra_content.google.thought_signature` on the tool
//!   call (the shape Google's own OpenAI layer uses) and comes back from there.
//!
//! The conversation is walked here rather than through `chat::conversation`: a
//! `functionResponse` needs the function's name, found from the earlier call's id, and the
//! signatures ride on the calls, neither of which that shared walk can carry.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tollgate_engine::TokenUsage;

use crate::providers::chat::{
    ChunkWriter, ToolCalls, TranslateError, assistant_message, bad, completion, extra_fields,
    max_tokens, openai_usage, stop_sequences, tool_call,
};
use crate::providers::read::Pricer;
use crate::providers::text::Kept;

/// The placeholder signature Google documents for a function call it did not sign itself
/// (history from another model, or a client that dropped the signature): without one, Gemini 3
/// answers 400 for the first function call of a model turn.
const FOREIGN_SIGNATURE: &str = "skip_thought_signature_validator";

/// Most candidates a stream is translated for (Gemini caps `candidateCount` at 8); parts of
/// candidates past it are ignored, so hostile input cannot grow the translator's state.
const CANDIDATES_MAX: usize = 16;

/// Thinking budgets Google's OpenAI layer uses for `reasoning_effort` (1K, 8K, 24K; `none`
/// turns thinking off). OpenAI's `minimal` has no row there: it gets the smallest step.
fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24_576),
        _ => None,
    }
}

// ---- Request ----

/// Rewrites an OpenAI chat-completions body into a `GenerateContentRequest`, with
/// `output_tokens_max` as `maxOutputTokens` when the client set no cap.
///
/// OpenAI-only fields (`model`, `stream`, `stream_options`, `user`, `logprobs`,
/// `parallel_tool_calls`, ...) are dropped. Fields OpenAI does not define pass through unchanged
/// (Gemini's own `safetySettings`, `cachedContent`, `labels`, sent with the SDK's `extra_body`),
/// so a misspelt one gets Google's 400 naming it; a client's `generationConfig` object is merged
/// into the translated one, its keys winning.
pub fn chat_to_generate(body: &[u8], output_tokens_max: u64) -> Result<Vec<u8>, TranslateError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))?;
    if !request.is_object() {
        return Err(bad("request body must be a JSON object"));
    }
    let Contents { system, turns } = contents(&request)?;
    if turns.is_empty() {
        return Err(bad("`messages` has no user or assistant content"));
    }
    let mut out = Map::new();
    out.insert(
        "contents".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(declarations) = function_declarations(&request)? {
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    if let Some(config) = tool_config(&request)? {
        out.insert("toolConfig".into(), config);
    }
    let mut generation = generation_config(&request, output_tokens_max)?;
    for (name, value) in extra_fields(&request) {
        if name == "generationConfig" {
            let extra = value
                .as_object()
                .ok_or_else(|| bad("`generationConfig` must be an object"))?;
            generation.extend(extra.clone());
        } else if !out.contains_key(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    out.insert("generationConfig".into(), Value::Object(generation));
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
}

/// The system parts and the alternating `user`/`model` turns of a request.
struct Contents {
    system: Vec<Value>,
    turns: Vec<(&'static str, Vec<Value>)>,
}

fn contents(request: &Value) -> Result<Contents, TranslateError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Tool-call id -> function name, so a tool result can name the function it answers.
    let mut called: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}].role is missing")))?;
        let (role, parts) = match role {
            "system" | "developer" => {
                system.extend(parts_of(message.get("content"), i)?);
                continue;
            }
            "user" => ("user", parts_of(message.get("content"), i)?),
            "assistant" => {
                let mut parts = parts_of(message.get("content"), i)?;
                parts.extend(function_calls(message, i, &mut called)?);
                ("model", parts)
            }
            "tool" => ("user", vec![function_response(message, i, &called)?]),
            other => {
                return Err(bad(format!(
                    "messages[{i}].role `{other}` is not supported"
                )));
            }
        };
        if parts.is_empty() {
            continue;
        }
        // Gemini wants user and model turns to alternate: merge neighbours of one role.
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    Ok(Contents { system, turns })
}

/// An assistant message's `tool_calls` as `functionCall` parts, recording each id's name.
fn function_calls(
    message: &Value,
    i: usize,
    called: &mut HashMap<String, String>,
) -> Result<Vec<Value>, TranslateError> {
    let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let calls = calls
        .as_array()
        .ok_or_else(|| bad(format!("messages[{i}].tool_calls must be an array")))?;
    let mut parts = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let function = call
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad(format!("{at}.function is missing")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}.function.name is missing")))?;
        let arguments = match function.get("arguments") {
            None | Some(Value::Null) => "{}",
            Some(Value::String(text)) if text.trim().is_empty() => "{}",
            Some(Value::String(text)) => text,
            Some(_) => return Err(bad(format!("{at}.function.arguments must be a string"))),
        };
        let args: Value = serde_json::from_str(arguments)
            .map_err(|e| bad(format!("{at}.function.arguments is not JSON: {e}")))?;
        if !args.is_object() {
            return Err(bad(format!(
                "{at}.function.arguments must be a JSON object"
            )));
        }
        let mut function_call = Map::new();
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            function_call.insert("id".into(), json!(id));
            called.insert(id.to_owned(), name.to_owned());
        }
        function_call.insert("name".into(), json!(name));
        function_call.insert("args".into(), args);
        let mut part = Map::new();
        part.insert("functionCall".into(), Value::Object(function_call));
        let signature = call
            .pointer("/extra_content/google/thought_signature")
            .and_then(Value::as_str);
        // Only the first call of a parallel set carries Google's signature; it is the one
        // Gemini 3 checks.
        match signature {
            Some(signature) => {
                part.insert("thoughtSignature".into(), json!(signature));
            }
            None if j == 0 => {
                part.insert("thoughtSignature".into(), json!(FOREIGN_SIGNATURE));
            }
            None => {}
        }
        parts.push(Value::Object(part));
    }
    Ok(parts)
}

/// A `tool` message as a `functionResponse` part for the call it answers.
fn function_response(
    message: &Value,
    i: usize,
    called: &HashMap<String, String>,
) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("messages[{i}].tool_call_id is missing")))?;
    let name = called
        .get(id)
        .map(String::as_str)
        .or_else(|| message.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            bad(format!(
                "messages[{i}].tool_call_id `{id}` matches no earlier assistant tool call"
            ))
        })?;
    let text = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (k, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).ok_or_else(
                            || bad(format!("messages[{i}].content[{k}].text must be a string")),
                        )?)
                    }
                    _ => {
                        return Err(bad(format!(
                            "messages[{i}].content[{k}]: a tool result takes only text parts"
                        )));
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(bad(format!(
                "messages[{i}].content must be a string or an array"
            )));
        }
    };
    // `response` is a JSON object (a protobuf Struct): a result that is one goes as it is,
    // anything else is wrapped.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"id": id, "name": name, "response": response}}))
}

/// OpenAI message content (a string or parts) as Gemini parts.
fn parts_of(content: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({ "text": text })]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(k, part)| part_of(part, i, k))
            .collect(),
        Some(_) => Err(bad(format!(
            "messages[{i}].content must be a string or an array"
        ))),
    }
}

fn part_of(part: &Value, i: usize, k: usize) -> Result<Value, TranslateError> {
    let at = format!("messages[{i}].content[{k}]");
    match part.get("type").and_then(Value::as_str) {
        Some(kind @ ("text" | "refusal")) => {
            let key = kind;
            let text = part
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.{key} must be a string")))?;
            Ok(json!({ "text": text }))
        }
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .or_else(|| part.get("image_url"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.image_url.url is missing")))?;
            media(url, &format!("{at}.image_url.url"))
        }
        Some("input_audio") => {
            let data = part
                .pointer("/input_audio/data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.input_audio.data is missing")))?;
            let format = part
                .pointer("/input_audio/format")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{at}.input_audio.format is missing")))?;
            Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}))
        }
        Some("file") => {
            let data = part
                .pointer("/file/file_data")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(format!(
                        "{at}.file.file_data is missing (file ids are OpenAI's own)"
                    ))
                })?;
            media(data, &format!("{at}.file.file_data"))
        }
        Some(other) => Err(bad(format!(
            "{at}: content part `{other}` is not supported for Gemini models"
        ))),
        None => Err(bad(format!("{at}: content part without a type"))),
    }
}

/// A `data:` URL as `inlineData`, a link as `fileData` (Gemini needs a MIME type for both).
fn media(url: &str, at: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (mime_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad(format!("{at}: a data: URL must be base64")))?;
        return Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}));
    }
    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("gs://")) {
        return Err(bad(format!(
            "{at}: expected a data:, https:// or gs:// URL"
        )));
    }
    Ok(json!({"fileData": {"mimeType": mime_of(url), "fileUri": url}}))
}

/// A link's MIME type from its extension; OpenAI's parts are images, so JPEG when unknown.
fn mime_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => "image/jpeg",
    }
}

/// OpenAI's `tools` as `functionDeclarations`; parameters go as `parametersJsonSchema`,
/// which takes JSON Schema as OpenAI writes it (the older `parameters` field is an OpenAPI
/// subset that rejects `additionalProperties` on the Gemini API).
fn function_declarations(request: &Value) -> Result<Option<Vec<Value>>, TranslateError> {
    let Some(tools) = request.get("tools").filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| bad("`tools` must be an array"))?;
    let mut declarations = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            None | Some("function") => {}
            Some(other) => {
                return Err(bad(format!(
                    "tools[{i}].type `{other}` is not supported for Gemini models"
                )));
            }
        }
        let function = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad(format!("tools[{i}].function is missing")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tools[{i}].function.name is missing")))?;
        let mut declaration = Map::new();
        declaration.insert("name".into(), json!(name));
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            declaration.insert("description".into(), json!(description));
        }
        match function.get("parameters") {
            None | Some(Value::Null) => {}
            Some(schema @ Value::Object(_)) => {
                declaration.insert("parametersJsonSchema".into(), schema.clone());
            }
            Some(_) => {
                return Err(bad(format!(
                    "tools[{i}].function.parameters must be an object"
                )));
            }
        }
        declarations.push(Value::Object(declaration));
    }
    Ok(Some(declarations))
}

/// OpenAI's `tool_choice` as `toolConfig.functionCallingConfig`.
fn tool_config(request: &Value) -> Result<Option<Value>, TranslateError> {
    let config = match request.get("tool_choice") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "auto" => json!({"mode": "AUTO"}),
        Some(Value::String(s)) if s == "none" => json!({"mode": "NONE"}),
        Some(Value::String(s)) if s == "required" => json!({"mode": "ANY"}),
        Some(Value::Object(choice)) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.function.name is missing"))?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
        Some(other) => {
            return Err(bad(format!(
                "tool_choice {other} is not supported for Gemini models"
            )));
        }
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}

/// The sampling fields as `generationConfig`.
fn generation_config(
    request: &Value,
    output_tokens_max: u64,
) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    config.insert(
        "maxOutputTokens".into(),
        json!(max_tokens(request, output_tokens_max)),
    );
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        match request.get(from) {
            None | Some(Value::Null) => {}
            Some(n @ Value::Number(_)) => {
                config.insert(to.into(), n.clone());
            }
            Some(_) => return Err(bad(format!("`{from}` must be a number"))),
        }
    }
    for (from, to) in [("seed", "seed"), ("n", "candidateCount")] {
        match request.get(from) {
            None | Some(Value::Null) => {}
            Some(n) if n.is_i64() || n.is_u64() => {
                config.insert(to.into(), n.clone());
            }
            Some(_) => return Err(bad(format!("`{from}` must be an integer"))),
        }
    }
    if let Some(stop) = stop_sequences(request) {
        config.insert("stopSequences".into(), stop);
    }
    response_format(request, &mut config)?;
    match request.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(effort)) => {
            let budget = thinking_budget(effort).ok_or_else(|| {
                bad(format!(
                    "reasoning_effort `{effort}` is not supported for Gemini models"
                ))
            })?;
            config.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
        }
        Some(_) => return Err(bad("`reasoning_effort` must be a string")),
    }
    Ok(config)
}

/// `response_format` as a response MIME type and, for `json_schema`, `responseJsonSchema`
/// (JSON Schema; `responseSchema` is the OpenAPI subset and rejects much of what OpenAI sends).
fn response_format(request: &Value, config: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let Some(format) = request.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("response_format.json_schema.schema is missing"))?;
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema.clone());
        }
        Some(other) => {
            return Err(bad(format!(
                "response_format.type `{other}` is not supported for Gemini models"
            )));
        }
        None => return Err(bad("response_format.type is missing")),
    }
    Ok(())
}

// ---- Usage ----

/// The counts of `usageMetadata` that metering reads.
const USAGE_COUNTS: [&str; 5] = [
    "promptTokenCount",
    "cachedContentTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
];

/// `usageMetadata` as a [`TokenUsage`]: input is the prompt plus the tool-use prompt (results
/// of Google-side tools fed back to the model, counted apart from the prompt), of which the
/// cached content is a part; output is the candidates plus the thoughts (counted apart from the
/// candidates, billed as output), of which the thoughts are the reasoning. Google leaves a zero
/// count out, so only a metadata object with no count at all is "no usage".
#[must_use]
pub fn usage_of(usage_metadata: &Value) -> Option<TokenUsage> {
    let counts = usage_metadata.as_object()?;
    if !USAGE_COUNTS
        .iter()
        .chain(std::iter::once(&"totalTokenCount"))
        .any(|k| counts.contains_key(*k))
    {
        return None;
    }
    let n = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Some(TokenUsage::new(
        n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        n("cachedContentTokenCount"),
        0,
        n("candidatesTokenCount").saturating_add(thoughts),
        thoughts,
    ))
}

// ---- Answers ----

/// OpenAI's finish reason for a Gemini one; a candidate that called a function says so with
/// `STOP`, so `called` turns that into `tool_calls`.
fn finish_reason(reason: Option<&str>, called: bool) -> Value {
    match reason {
        None if called => json!("tool_calls"),
        None => Value::Null,
        Some("STOP") if called => json!("tool_calls"),
        Some("MAX_TOKENS") => json!("length"),
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => json!("content_filter"),
        // STOP, and reasons OpenAI has no word for (MALFORMED_FUNCTION_CALL, LANGUAGE, OTHER).
        Some(_) => json!("stop"),
    }
}

/// The OpenAI id of the `k`th function call of an answer: Google's id when it gave one,
/// else one made unique by the response id, so clients can match results to calls.
fn call_id(call: &Value, response_id: &str, k: u64) -> Value {
    match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => json!(id),
        _ if response_id.is_empty() => json!(format!("call_{k}")),
        _ => json!(format!("call_{response_id}_{k}")),
    }
}

/// Where a part's thought signature rides on an OpenAI tool call.
fn extra_content(part: &Value) -> Option<Value> {
    part.get("thoughtSignature")
        .and_then(Value::as_str)
        .map(|s| json!({"google": {"thought_signature": s}}))
}

/// A whole `GenerateContentResponse` as a `chat.completion` answering for `model`.
#[must_use]
pub fn generate_to_chat(body: &[u8], model: &str, created_s: i64) -> Option<Vec<u8>> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    if !answer.is_object() {
        return None;
    }
    let response_id = answer
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut calls_total = 0u64;
    let candidates = answer.get("candidates").and_then(Value::as_array);
    let mut choices: Vec<Value> = candidates
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(position, candidate)| {
            let index = candidate
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            whole_choice(index, candidate, response_id, &mut calls_total)
        })
        .collect();
    if choices.is_empty() {
        // A blocked prompt is a 200 with `promptFeedback.blockReason` and no candidates.
        let blocked = answer.pointer("/promptFeedback/blockReason").is_some();
        choices.push(json!({
            "index": 0,
            "message": assistant_message("", Vec::new()),
            "finish_reason": if blocked { json!("content_filter") } else { json!("stop") },
        }));
    }
    let usage = answer
        .get("usageMetadata")
        .and_then(usage_of)
        .unwrap_or_default();
    completion(
        &chat_id(response_id),
        model,
        created_s,
        Value::Array(choices),
        openai_usage(&usage),
    )
}

/// One candidate of a whole answer as OpenAI choice `index`: its text, its thoughts as
/// `reasoning_content`, its function calls as tool calls (numbered from `calls_total`, which
/// counts the calls of the whole answer).
fn whole_choice(index: u64, candidate: &Value, response_id: &str, calls_total: &mut u64) -> Value {
    let mut text = String::new();
    let mut thoughts = String::new();
    let mut tool_calls = Vec::new();
    let parts = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let mut openai = tool_call(
                Some(&call_id(call, response_id, *calls_total)),
                call.get("name"),
                Some(call.get("args").unwrap_or(&json!({}))),
            );
            *calls_total += 1;
            if let (Some(extra), Some(fields)) = (extra_content(part), openai.as_object_mut()) {
                fields.insert("extra_content".into(), extra);
            }
            tool_calls.push(openai);
        } else if let Some(t) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                thoughts.push_str(t);
            } else {
                text.push_str(t);
            }
        }
    }
    let called = !tool_calls.is_empty();
    let mut message = assistant_message(&text, tool_calls);
    if !thoughts.is_empty()
        && let Some(fields) = message.as_object_mut()
    {
        fields.insert("reasoning_content".into(), json!(thoughts));
    }
    let reason = candidate.get("finishReason").and_then(Value::as_str);
    json!({
        "index": index,
        "message": message,
        "finish_reason": finish_reason(reason, called),
    })
}

fn chat_id(response_id: &str) -> String {
    if response_id.is_empty() {
        "chatcmpl-gemini".to_owned()
    } else {
        format!("chatcmpl-{response_id}")
    }
}

/// OpenAI's error type for a Google status (`google.rpc.Code` names).
fn error_type(status: &str) -> &'static str {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => "invalid_request_error",
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "NOT_FOUND" => "not_found_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        "DEADLINE_EXCEEDED" => "timeout_error",
        _ => "server_error",
    }
}

/// The OpenAI error object for Google's `error` object.
fn openai_error(error: &Value) -> Value {
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    json!({"error": {
        "message": error.get("message").and_then(Value::as_str).unwrap_or(""),
        "type": error_type(status),
        "param": null,
        "code": if status.is_empty() { Value::Null } else { json!(status) },
    }})
}

/// Google's error body (`{"error": {"code", "message", "status", "details"}}`, sometimes
/// inside a one-element array) in OpenAI's envelope, Google's status as the `code`.
#[must_use]
pub fn error_to_openai(body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let value = match &value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let error = value.get("error").filter(|e| e.is_object())?;
    serde_json::to_vec(&openai_error(error)).ok()
}

// ---- Streams ----

/// What a stream has told about one candidate.
#[derive(Debug)]
struct Choice {
    index: u64,
    /// Function-call ordinal within the candidate -> OpenAI tool-call index.
    tool_calls: ToolCalls,
    calls: u64,
    finished: bool,
}

/// Turns `alt=sse` events (each `data` a `GenerateContentResponse`) into
/// `chat.completion.chunk` events, with what metering needs.
#[derive(Debug)]
pub struct StreamTranslator {
    /// Its id is the response's, once a response names one.
    chunks: ChunkWriter,
    include_usage: bool,
    response_id: String,
    started: bool,
    errored: bool,
    done: bool,
    choices: Vec<Choice>,
    /// Every count seen so far, the latest of each (the counts are cumulative).
    counts: Map<String, Value>,
    /// Calls over the whole answer, for ids unique across candidates.
    calls_total: u64,
    /// Usage from the latest `usageMetadata`.
    pub usage: Option<TokenUsage>,
    /// Generated text and tool-call arguments kept for counting, up to a cap.
    pub kept: Kept,
}

impl StreamTranslator {
    /// A translator answering for `model`; `include_usage` when the client asked for usage.
    #[must_use]
    pub fn new(
        model: &str,
        created_s: i64,
        include_usage: bool,
        text_bytes_max: usize,
    ) -> StreamTranslator {
        StreamTranslator {
            chunks: ChunkWriter::new(chat_id(""), model, created_s),
            include_usage,
            response_id: String::new(),
            started: false,
            errored: false,
            done: false,
            choices: Vec::new(),
            counts: Map::new(),
            calls_total: 0,
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

    /// The state of candidate `index`, if there is room for it.
    fn choice(&mut self, index: u64) -> Option<usize> {
        if let Some(at) = self.choices.iter().position(|c| c.index == index) {
            return Some(at);
        }
        if self.choices.len() >= CANDIDATES_MAX {
            return None;
        }
        self.choices.push(Choice {
            index,
            tool_calls: ToolCalls::default(),
            calls: 0,
            finished: false,
        });
        Some(self.choices.len() - 1)
    }

    /// Translates one SSE event's data; appends `data: ...` events to `out`; returns whether
    /// it carried generated text or tool-call arguments.
    pub fn event(&mut self, data: &[u8], out: &mut String) -> bool {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        match event {
            // A stream read without `alt=sse` is one JSON array of responses.
            Value::Array(items) => {
                let mut carried = false;
                for item in &items {
                    carried |= self.response(item, out);
                }
                carried
            }
            other => self.response(&other, out),
        }
    }

    fn response(&mut self, response: &Value, out: &mut String) -> bool {
        if self.done {
            return false;
        }
        if let Some(error) = response.get("error").filter(|e| e.is_object()) {
            self.errored = true;
            ChunkWriter::error(out, &openai_error(error));
            return false;
        }
        if self.response_id.is_empty()
            && let Some(id) = response.get("responseId").and_then(Value::as_str)
        {
            self.response_id = id.to_owned();
            self.chunks.id = chat_id(id);
        }
        if let Some(Value::Object(counts)) = response.get("usageMetadata") {
            for key in USAGE_COUNTS
                .iter()
                .chain(std::iter::once(&"totalTokenCount"))
            {
                if let Some(count) = counts.get(*key).filter(|c| c.is_u64()) {
                    self.counts.insert((*key).to_owned(), count.clone());
                }
            }
            self.usage = usage_of(&Value::Object(self.counts.clone()));
        }
        if !self.started {
            self.started = true;
            self.chunks.role(out, 0);
        }
        let mut carried = false;
        let candidates = response.get("candidates").and_then(Value::as_array);
        for (position, candidate) in candidates.into_iter().flatten().enumerate() {
            let index = candidate
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            carried |= self.candidate(index, candidate, out);
        }
        if response.pointer("/promptFeedback/blockReason").is_some()
            && let Some(at) = self.choice(0)
            && !self.choices[at].finished
        {
            self.choices[at].finished = true;
            self.chunks.finish(out, 0, json!("content_filter"));
        }
        carried
    }

    fn candidate(&mut self, index: u64, candidate: &Value, out: &mut String) -> bool {
        let Some(at) = self.choice(index) else {
            return false;
        };
        let mut carried = false;
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if let Some(call) = part.get("functionCall") {
                let id = call_id(call, &self.response_id, self.calls_total);
                self.calls_total += 1;
                let name = call.get("name").cloned().unwrap_or(Value::Null);
                let arguments = call.get("args").unwrap_or(&json!({})).to_string();
                let choice = &mut self.choices[at];
                let ordinal = choice.calls;
                choice.calls += 1;
                let mut start = choice.tool_calls.start(ordinal, &id, &name);
                if let (Some(extra), Some(call)) = (
                    extra_content(part),
                    start
                        .pointer_mut("/tool_calls/0")
                        .and_then(Value::as_object_mut),
                ) {
                    call.insert("extra_content".into(), extra);
                }
                let fragment = choice.tool_calls.arguments(ordinal, &json!(arguments));
                self.chunks.delta(out, index, start, Value::Null);
                if let Some(fragment) = fragment {
                    self.chunks.delta(out, index, fragment, Value::Null);
                }
                self.kept.keep(&arguments);
                carried = true;
            } else if let Some(text) = part.get("text").and_then(Value::as_str) {
                if text.is_empty() {
                    continue;
                }
                let key = if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    "reasoning_content"
                } else {
                    "content"
                };
                let mut delta = Map::new();
                delta.insert(key.into(), json!(text));
                self.chunks
                    .delta(out, index, Value::Object(delta), Value::Null);
                self.kept.keep(text);
                carried = true;
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str)
            && !self.choices[at].finished
        {
            self.choices[at].finished = true;
            let finish = finish_reason(Some(reason), self.choices[at].calls > 0);
            self.chunks.finish(out, index, finish);
        }
        carried
    }

    /// The gateway ends the stream here (its budget's end): every open choice finished with
    /// `length`, as at `max_tokens`, the usage chunk with `usage` if the client asked, and
    /// `[DONE]`.
    pub fn stop(&mut self, usage: &TokenUsage, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        if !self.started {
            self.started = true;
            self.chunks.role(out, 0);
        }
        if self.choices.is_empty() {
            let _ = self.choice(0);
        }
        for choice in &mut self.choices {
            if !choice.finished {
                choice.finished = true;
                self.chunks.finish(out, choice.index, json!("length"));
            }
        }
        self.chunks.end(out, self.include_usage.then_some(usage));
    }

    /// Ends the OpenAI stream, once: a finish chunk for each candidate Google did not finish
    /// (a stream cut short, or one whose last chunk carried no `finishReason`), the usage chunk
    /// when the client asked for it and usage is known, then `[DONE]`. After an error event no
    /// finish chunk is made up.
    pub fn finish(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        if !self.errored {
            if !self.started {
                self.started = true;
                self.chunks.role(out, 0);
            }
            if self.choices.is_empty() {
                let _ = self.choice(0);
            }
            for choice in &self.choices {
                if !choice.finished {
                    let finish = finish_reason(Some("STOP"), choice.calls > 0);
                    self.chunks.finish(out, choice.index, finish);
                }
            }
            for choice in &mut self.choices {
                choice.finished = true;
            }
        }
        let usage = self.usage.as_ref().filter(|_| self.include_usage);
        self.chunks.end(out, usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::json_data;
    use proptest::prelude::*;

    fn translate(request: Value) -> Value {
        let bytes = chat_to_generate(request.to_string().as_bytes(), 4096).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn refused(request: Value) -> String {
        chat_to_generate(request.to_string().as_bytes(), 1)
            .unwrap_err()
            .0
    }

    #[test]
    fn requests_lift_system_map_roles_and_merge_turns() {
        let out = translate(json!({
            "model": "google/gemini-2.5-flash",
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "u1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?x=1"}}
                ]},
                {"role": "assistant", "content": "A cat."},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "Thanks"}
            ],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "logprobs": true,
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "generationConfig": {"topK": 3}
        }));
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}, {"text": "Use metric."}]})
        );
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3, "same-role turns merge: {contents:#?}");
        assert_eq!(contents[0]["role"], "user");
        assert_eq!(contents[0]["parts"][0], json!({"text": "Hi"}));
        assert_eq!(
            contents[0]["parts"][2],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
        );
        assert_eq!(
            contents[0]["parts"][3],
            json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}})
        );
        assert_eq!(
            contents[1],
            json!({"role": "model", "parts": [{"text": "A cat."}]})
        );
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            out["generationConfig"],
            json!({"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"],
                   "candidateCount": 2, "seed": 7, "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                   "topK": 3})
        );
        assert_eq!(out["safetySettings"][0]["threshold"], "BLOCK_NONE");
        for dropped in [
            "model",
            "stream",
            "stream_options",
            "user",
            "logprobs",
            "messages",
        ] {
            assert!(out.get(dropped).is_none(), "{dropped} is OpenAI's own");
        }
    }

    #[test]
    fn tools_tool_calls_and_results_translate() {
        let out = translate(json!({
            "messages": [
                {"role": "user", "content": "Weather in Oslo and Bergen?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                     "extra_content": {"google": {"thought_signature": "c2ln"}}},
                    {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Bergen\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "Rain"},
                {"role": "tool", "tool_call_id": "call_b", "content": "{\"sky\":\"clear\"}"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_c", "type": "function", "function": {"name": "clock", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_c", "content": [{"type": "text", "text": "[1,2]"}]}
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Forecast",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"], "additionalProperties": false}, "strict": true}},
                {"type": "function", "function": {"name": "clock"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false,
            "reasoning_effort": "medium",
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
        }));
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 5, "{contents:#?}");
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"][0],
            json!({"functionCall": {"id": "call_a", "name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"})
        );
        assert!(
            contents[1]["parts"][1].get("thoughtSignature").is_none(),
            "only the first call of a turn needs a signature"
        );
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"],
            json!([
                {"functionResponse": {"id": "call_a", "name": "weather", "response": {"result": "Rain"}}},
                {"functionResponse": {"id": "call_b", "name": "weather", "response": {"sky": "clear"}}}
            ])
        );
        assert_eq!(
            contents[3]["parts"][0],
            json!({"functionCall": {"id": "call_c", "name": "clock", "args": {}}, "thoughtSignature": FOREIGN_SIGNATURE})
        );
        assert_eq!(
            contents[4]["parts"][0]["functionResponse"]["response"],
            json!({"result": "[1,2]"}),
            "a result that is JSON but not an object is wrapped"
        );
        let declarations = &out["tools"][0]["functionDeclarations"];
        assert_eq!(declarations[0]["name"], "weather");
        assert_eq!(declarations[0]["description"], "Forecast");
        assert_eq!(
            declarations[0]["parametersJsonSchema"]["additionalProperties"],
            false
        );
        assert_eq!(declarations[1], json!({"name": "clock"}));
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
        );
        assert_eq!(
            out["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 8192})
        );
        assert_eq!(
            out["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(
            out["generationConfig"]["responseJsonSchema"],
            json!({"type": "object"})
        );
        assert!(out.get("parallel_tool_calls").is_none());
    }

    #[test]
    fn tool_choices_and_formats_map() {
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let out = translate(
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}),
            );
            assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
        let out = translate(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}, "max_completion_tokens": 9, "reasoning_effort": "none"}));
        assert_eq!(
            out["generationConfig"],
            json!({"maxOutputTokens": 9, "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}})
        );
        let out = translate(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(out["generationConfig"], json!({"maxOutputTokens": 4096}));
        assert!(out.get("toolConfig").is_none() && out.get("tools").is_none());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let user = json!({"role": "user", "content": "x"});
        for (request, expected) in [
            (json!([1]), "request body must be a JSON object"),
            (json!({"messages": "x"}), "`messages` must be an array"),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0].role is missing",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "no user or assistant content",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role `wizard`",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages[0].content must be",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "video"}]}]}),
                "messages[0].content[0]: content part `video`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [user.clone(), {"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "function": {"name": "f", "arguments": "{oops"}}]}]}),
                "messages[1].tool_calls[1].function.arguments is not JSON",
            ),
            (
                json!({"messages": [user.clone(), {"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[1].tool_calls[0].function.arguments must be a JSON object",
            ),
            (
                json!({"messages": [user.clone(), {"role": "assistant", "tool_calls": [{"id": "a"}]}]}),
                "messages[1].tool_calls[0].function is missing",
            ),
            (
                json!({"messages": [user.clone(), {"role": "tool", "content": "r"}]}),
                "messages[1].tool_call_id is missing",
            ),
            (
                json!({"messages": [user.clone(), {"role": "tool", "tool_call_id": "zz", "content": "r"}]}),
                "messages[1].tool_call_id `zz` matches no earlier",
            ),
            (
                json!({"messages": [user.clone()], "tools": [{"type": "function"}]}),
                "tools[0].function is missing",
            ),
            (
                json!({"messages": [user.clone()], "tools": [{"type": "retrieval"}]}),
                "tools[0].type `retrieval`",
            ),
            (
                json!({"messages": [user.clone()], "tool_choice": "sometimes"}),
                "tool_choice \"sometimes\"",
            ),
            (
                json!({"messages": [user.clone()], "tool_choice": {"type": "function"}}),
                "tool_choice.function.name",
            ),
            (
                json!({"messages": [user.clone()], "temperature": "hot"}),
                "`temperature` must be a number",
            ),
            (
                json!({"messages": [user.clone()], "n": 1.5}),
                "`n` must be an integer",
            ),
            (
                json!({"messages": [user.clone()], "reasoning_effort": "extreme"}),
                "reasoning_effort `extreme`",
            ),
            (
                json!({"messages": [user.clone()], "response_format": {"type": "json_schema"}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"messages": [user.clone()], "response_format": {"type": "yaml"}}),
                "response_format.type `yaml`",
            ),
            (
                json!({"messages": [user], "generationConfig": 1}),
                "`generationConfig` must be an object",
            ),
        ] {
            let error = refused(request);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        assert!(
            chat_to_generate(b"{not json", 1)
                .unwrap_err()
                .0
                .starts_with("request body:")
        );
    }

    #[test]
    fn whole_answers_carry_text_calls_usage_and_signatures() {
        let answer = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Thinking about it", "thought": true},
                    {"text": "Checking "},
                    {"text": "the weather."},
                    {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"},
                    {"functionCall": {"id": "fc_2", "name": "clock", "args": {}}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 20,
                              "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5, "totalTokenCount": 155},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp1"
        });
        let chat: Value = serde_json::from_slice(
            &generate_to_chat(answer.to_string().as_bytes(), "google/gemini", 7).unwrap(),
        )
        .unwrap();
        assert_eq!(chat["id"], "chatcmpl-resp1");
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(chat["model"], "google/gemini");
        assert_eq!(chat["created"], 7);
        let choice = &chat["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking the weather.");
        assert_eq!(choice["message"]["reasoning_content"], "Thinking about it");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "call_resp1_0");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(
            calls[0]["extra_content"],
            json!({"google": {"thought_signature": "c2ln"}})
        );
        assert_eq!(calls[1]["id"], "fc_2");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 105, "completion_tokens": 50, "total_tokens": 155,
                   "prompt_tokens_details": {"cached_tokens": 60},
                   "completion_tokens_details": {"reasoning_tokens": 30}})
        );

        // What comes back from the client replays the call with its signature.
        let replay = translate(json!({"messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_resp1_0", "content": "Rain"},
            {"role": "tool", "tool_call_id": "fc_2", "content": "noon"}
        ]}));
        assert_eq!(
            replay["contents"][1]["parts"][0]["thoughtSignature"],
            "c2ln"
        );
        assert_eq!(
            replay["contents"][2]["parts"][1]["functionResponse"]["name"],
            "clock"
        );
    }

    #[test]
    fn usage_counts_cached_inside_input_and_thoughts_inside_output() {
        let usage = usage_of(
            &json!({"promptTokenCount": 100, "cachedContentTokenCount": 60,
            "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5,
            "totalTokenCount": 155}),
        )
        .unwrap();
        assert_eq!(usage, TokenUsage::new(105, 60, 0, 50, 30));
        assert_eq!(usage.uncached_input(), 45);
        assert_eq!(usage.visible_output(), 20);
        // Zero counts are left out by Google.
        assert_eq!(
            usage_of(&json!({"promptTokenCount": 4, "totalTokenCount": 4})),
            Some(TokenUsage::new(4, 0, 0, 0, 0))
        );
        assert_eq!(usage_of(&json!({})), None);
        assert_eq!(usage_of(&json!({"trafficType": "ON_DEMAND"})), None);
        assert_eq!(usage_of(&json!(7)), None);
        // A cached count larger than the prompt widens the input rather than dropping tokens.
        assert_eq!(
            usage_of(&json!({"promptTokenCount": 1, "cachedContentTokenCount": 9})),
            Some(TokenUsage::new(9, 9, 0, 0, 0))
        );
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, called, expected) in [
            ("STOP", false, json!("stop")),
            ("STOP", true, json!("tool_calls")),
            ("MAX_TOKENS", false, json!("length")),
            ("MAX_TOKENS", true, json!("length")),
            ("SAFETY", false, json!("content_filter")),
            ("RECITATION", false, json!("content_filter")),
            ("BLOCKLIST", false, json!("content_filter")),
            ("PROHIBITED_CONTENT", false, json!("content_filter")),
            ("SPII", false, json!("content_filter")),
            ("MALFORMED_FUNCTION_CALL", false, json!("stop")),
            ("OTHER", false, json!("stop")),
        ] {
            assert_eq!(finish_reason(Some(reason), called), expected, "{reason}");
            let answer = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
            let chat: Value = serde_json::from_slice(
                &generate_to_chat(answer.to_string().as_bytes(), "m", 0).unwrap(),
            )
            .unwrap();
            assert_eq!(
                chat["choices"][0]["finish_reason"],
                finish_reason(Some(reason), false)
            );
        }
        assert_eq!(finish_reason(None, false), Value::Null);
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8}});
        let chat: Value = serde_json::from_slice(
            &generate_to_chat(blocked.to_string().as_bytes(), "m", 0).unwrap(),
        )
        .unwrap();
        assert_eq!(chat["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chat["usage"]["prompt_tokens"], 8);
        assert!(generate_to_chat(b"[1]", "m", 0).is_none());
        assert!(generate_to_chat(b"nope", "m", 0).is_none());
    }

    #[test]
    fn errors_become_openai_envelopes() {
        let google = json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"}]}});
        let openai: Value =
            serde_json::from_slice(&error_to_openai(google.to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(
            openai,
            json!({"error": {"message": "Resource has been exhausted (e.g. check quota).",
                   "type": "rate_limit_error", "param": null, "code": "RESOURCE_EXHAUSTED"}})
        );
        for (status, kind) in [
            ("INVALID_ARGUMENT", "invalid_request_error"),
            ("UNAUTHENTICATED", "authentication_error"),
            ("PERMISSION_DENIED", "permission_error"),
            ("NOT_FOUND", "not_found_error"),
            ("UNAVAILABLE", "server_error"),
            ("INTERNAL", "server_error"),
        ] {
            let body = json!([{"error": {"code": 400, "message": "m", "status": status}}]);
            let openai: Value =
                serde_json::from_slice(&error_to_openai(body.to_string().as_bytes()).unwrap())
                    .unwrap();
            assert_eq!(openai["error"]["type"], kind, "{status}");
        }
        assert!(error_to_openai(b"{\"candidates\":[]}").is_none());
        assert!(error_to_openai(b"<html>").is_none());
        assert!(error_to_openai(b"[]").is_none());
    }

    /// Gemini's stream as it comes: cumulative usage on every chunk, the function call whole in
    /// one chunk, the finish reason and final counts on the last.
    fn gemini_stream() -> Vec<Value> {
        vec![
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1, "totalTokenCount": 13},
                   "modelVersion": "gemini-2.5-flash", "responseId": "r9"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 2, "totalTokenCount": 14},
                   "responseId": "r9"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                       {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"}]},
                     "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 12, "cachedContentTokenCount": 4, "candidatesTokenCount": 9,
                                     "thoughtsTokenCount": 3, "totalTokenCount": 24},
                   "responseId": "r9"}),
        ]
    }

    #[test]
    fn streams_translate_text_calls_and_final_usage() {
        let mut t = StreamTranslator::new("google/gemini", 5, true, 1024);
        let mut out = String::new();
        let carried: Vec<bool> = gemini_stream()
            .iter()
            .map(|e| t.event(e.to_string().as_bytes(), &mut out))
            .collect();
        assert_eq!(carried, [true, true, true]);
        assert!(
            !out.contains("[DONE]"),
            "Gemini sends no end marker; finish() makes one"
        );
        t.finish(&mut out);
        t.finish(&mut out);
        assert_eq!(
            out.matches("[DONE]").count(),
            1,
            "finish ends the stream once"
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        let chunks = json_data(&out);
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "chatcmpl-r9" && c["model"] == "google/gemini")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "lo");
        let start = &chunks[3]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(start["index"], 0);
        assert_eq!(start["id"], "call_r9_0");
        assert_eq!(start["function"]["name"], "weather");
        assert_eq!(
            start["extra_content"]["google"]["thought_signature"],
            "c2ln"
        );
        assert_eq!(
            chunks[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(
            chunks[6]["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24,
                   "prompt_tokens_details": {"cached_tokens": 4},
                   "completion_tokens_details": {"reasoning_tokens": 3}})
        );
        assert_eq!(chunks.len(), 7);
        assert_eq!(t.usage, Some(TokenUsage::new(12, 4, 0, 12, 3)));
        assert_eq!(t.kept.text, "Hello{\"city\":\"Oslo\"}");
        assert_eq!(t.kept.beyond_bytes, 0);
    }

    #[test]
    fn usage_is_sent_only_when_asked_and_known() {
        let mut off = StreamTranslator::new("m", 0, false, 1024);
        let mut out = String::new();
        for event in gemini_stream() {
            off.event(event.to_string().as_bytes(), &mut out);
        }
        off.finish(&mut out);
        assert!(!out.contains("\"usage\""), "{out}");
        assert!(off.usage.is_some(), "metering reads usage either way");

        let mut unknown = StreamTranslator::new("m", 0, true, 1024);
        let mut out = String::new();
        unknown.event(
            br#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"MAX_TOKENS"}]}"#,
            &mut out,
        );
        unknown.finish(&mut out);
        assert!(!out.contains("\"usage\""));
        assert!(out.contains("\"finish_reason\":\"length\""));
    }

    #[test]
    fn counts_keep_their_latest_value_when_a_chunk_leaves_one_out() {
        let mut t = StreamTranslator::new("m", 0, true, 1024);
        let mut out = String::new();
        for event in [
            json!({"usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 6}}),
            json!({"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": {"candidatesTokenCount": 1}}),
            json!({"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2}}),
        ] {
            t.event(event.to_string().as_bytes(), &mut out);
        }
        assert_eq!(t.usage, Some(TokenUsage::new(10, 6, 0, 2, 0)));
    }

    #[test]
    fn a_stream_cut_short_still_ends_well_formed() {
        let mut t = StreamTranslator::new("m", 0, true, 4);
        let mut out = String::new();
        let first = gemini_stream().remove(0);
        assert!(t.event(first.to_string().as_bytes(), &mut out));
        assert!(t.event(
            br#"{"candidates":[{"content":{"parts":[{"text":"lo world"}]}}]}"#,
            &mut out
        ));
        t.finish(&mut out);
        let chunks = json_data(&out);
        let last = &chunks[chunks.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[chunks.len() - 1]["usage"]["prompt_tokens"], 12);
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(t.kept.text, "Hell", "kept up to the cap");
        assert_eq!(t.kept.beyond_bytes, 7);
        // Further events after the end are ignored.
        let mut more = String::new();
        assert!(!t.event(
            br#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#,
            &mut more
        ));
        assert!(more.is_empty());

        // Cut before any event: still a role, a finish and [DONE].
        let mut empty = StreamTranslator::new("m", 0, true, 4);
        let mut out = String::new();
        empty.finish(&mut out);
        let chunks = json_data(&out);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn errors_mid_stream_are_passed_on_without_a_made_up_finish() {
        let mut t = StreamTranslator::new("m", 0, true, 64);
        let mut out = String::new();
        t.event(gemini_stream()[0].to_string().as_bytes(), &mut out);
        assert!(!t.event(
            br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
            &mut out
        ));
        t.finish(&mut out);
        let chunks = json_data(&out);
        assert_eq!(chunks[2]["error"]["message"], "The model is overloaded.");
        assert_eq!(chunks[2]["error"]["code"], "UNAVAILABLE");
        assert!(!out.contains("finish_reason\":\"stop"));
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn streams_of_several_candidates_and_blocked_prompts() {
        let mut t = StreamTranslator::new("m", 0, false, 64);
        let mut out = String::new();
        t.event(
            br#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0},{"content":{"parts":[{"text":"b"}]},"index":1,"finishReason":"STOP"}]}"#,
            &mut out,
        );
        t.finish(&mut out);
        let chunks = json_data(&out);
        assert_eq!(chunks[2]["choices"][0]["index"], 1);
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "b");
        assert_eq!(chunks[3]["choices"][0]["index"], 1);
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            chunks[4]["choices"][0]["index"], 0,
            "finish() closes the open one"
        );

        let mut blocked = StreamTranslator::new("m", 0, false, 64);
        let mut out = String::new();
        blocked.event(
            br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#,
            &mut out,
        );
        blocked.finish(&mut out);
        assert_eq!(
            out.matches("finish_reason\":\"content_filter").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("finish_reason\":\"stop"));
    }

    /// Google's answers in a tool loop, as the mock provider (which answers as Google does)
    /// wrote them: a whole answer whose function call carries a thought signature, with cached
    /// and thinking tokens; then the stream answering the tool's result, cut by
    /// `maxOutputTokens`. The same loop through the gateway, against the mock that refuses what
    /// Google refuses, is the end-to-end test of Gemini tool calls.
    const RECORDED_CALL: &str = r#"{"candidates":[{"content":{"parts":[{"text":" hello hello hello"},{"functionCall":{"args":{"city":"Oslo"},"name":"weather"},"thoughtSignature":"bW9jay1zaWduYXR1cmU="}],"role":"model"},"finishReason":"STOP","index":0}],"modelVersion":"gemini-2.5-flash","responseId":"mock-gemini-response","usageMetadata":{"cachedContentTokenCount":1,"candidatesTokenCount":3,"promptTokenCount":5,"promptTokensDetails":[{"modality":"TEXT","tokenCount":5}],"thoughtsTokenCount":2,"totalTokenCount":10}}"#;

    const RECORDED_STREAM: [&str; 4] = [
        r#"{"candidates":[{"content":{"parts":[{"text":" hello"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"mock-gemini-response","usageMetadata":{"candidatesTokenCount":1,"promptTokenCount":33,"promptTokensDetails":[{"modality":"TEXT","tokenCount":33}],"totalTokenCount":34}}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":" hello"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"mock-gemini-response","usageMetadata":{"candidatesTokenCount":2,"promptTokenCount":33,"promptTokensDetails":[{"modality":"TEXT","tokenCount":33}],"totalTokenCount":35}}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":" hello"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"mock-gemini-response","usageMetadata":{"candidatesTokenCount":3,"promptTokenCount":33,"promptTokensDetails":[{"modality":"TEXT","tokenCount":33}],"totalTokenCount":36}}"#,
        r#"{"candidates":[{"content":{"parts":[],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"modelVersion":"gemini-2.5-flash","responseId":"mock-gemini-response","usageMetadata":{"candidatesTokenCount":3,"promptTokenCount":33,"promptTokensDetails":[{"modality":"TEXT","tokenCount":33}],"totalTokenCount":36}}"#,
    ];

    /// The recorded stream as it comes over the wire: each response one `data:` event.
    fn recorded_stream() -> String {
        RECORDED_STREAM
            .iter()
            .map(|response| format!("data: {response}\n\n"))
            .collect()
    }

    /// What the Gemini API takes at the top level of a request this test sends.
    const GOOGLE_FIELDS: [&str; 5] = [
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "generationConfig",
    ];

    #[test]
    fn a_tool_loop_translates_both_ways_and_sends_the_signature_back() {
        let mut request = json!({
            "model": "google/gemini-2.5-flash",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}],
            "tools": [{"type": "function", "function": {"name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "max_tokens": 3,
            "user": "u",
            "stream_options": {"include_usage": true}
        });
        let first = translate(request.clone());
        let mut fields: Vec<&String> = first.as_object().unwrap().keys().collect();
        fields.sort();
        let mut expected = GOOGLE_FIELDS.to_vec();
        expected.sort_unstable();
        assert_eq!(fields, expected, "no OpenAI-only field reaches Google");

        let chat: Value = serde_json::from_slice(
            &generate_to_chat(RECORDED_CALL.as_bytes(), "google/gemini-2.5-flash", 0).unwrap(),
        )
        .unwrap();
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chat["usage"]["completion_tokens"], 5,
            "candidates and thoughts"
        );
        assert_eq!(
            chat["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        let message = chat["choices"][0]["message"].clone();
        let id = message["tool_calls"][0]["id"].clone();
        assert_eq!(id, "call_mock-gemini-response_0");

        // The client runs the tool and sends the conversation back, the assistant turn as it got it.
        let messages = request["messages"].as_array_mut().unwrap();
        messages.push(message);
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": "Rain"}));
        let second = translate(request);
        let mut fields: Vec<&String> = second.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, expected);
        let contents = second["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3, "user, model, the tool's result as user");
        let call = &contents[1]["parts"][1];
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            call["functionCall"],
            json!({"id": "call_mock-gemini-response_0", "name": "weather", "args": {"city": "Oslo"}})
        );
        assert_eq!(
            call["thoughtSignature"], "bW9jay1zaWduYXR1cmU=",
            "Gemini 3 refuses a replayed call without the signature it gave"
        );
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"],
            json!({"id": "call_mock-gemini-response_0", "name": "weather", "response": {"result": "Rain"}})
        );

        let mut t = StreamTranslator::new("google/gemini-2.5-flash", 0, true, 1024);
        let mut out = String::new();
        let mut framer = crate::providers::sse::Framer::default();
        let mut events = Vec::new();
        framer
            .push(bytes::Bytes::from(recorded_stream()), &mut events)
            .unwrap();
        assert_eq!(events.len(), 4);
        for event in &events {
            t.event(&crate::providers::sse::parse(event).data, &mut out);
        }
        t.finish(&mut out);
        assert_eq!(t.kept.text, " hello".repeat(3));
        let chunks = json_data(&out);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 3);
        assert_eq!(chunks[chunks.len() - 1]["usage"]["prompt_tokens"], 33);
        assert_eq!(t.usage.map(|u| u.output.0), Some(3));
    }

    /// JSON built from the words the translations look for, so arbitrary input reaches deep.
    fn shaped_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("messages"),
            Just("role"),
            Just("content"),
            Just("type"),
            Just("text"),
            Just("image_url"),
            Just("url"),
            Just("tool_calls"),
            Just("function"),
            Just("name"),
            Just("arguments"),
            Just("id"),
            Just("tool_call_id"),
            Just("tools"),
            Just("parameters"),
            Just("tool_choice"),
            Just("response_format"),
            Just("json_schema"),
            Just("schema"),
            Just("reasoning_effort"),
            Just("generationConfig"),
            Just("candidates"),
            Just("parts"),
            Just("functionCall"),
            Just("args"),
            Just("thought"),
            Just("thoughtSignature"),
            Just("finishReason"),
            Just("index"),
            Just("usageMetadata"),
            Just("promptTokenCount"),
            Just("candidatesTokenCount"),
            Just("thoughtsTokenCount"),
            Just("error"),
            Just("status"),
            Just("message"),
            Just("responseId"),
            Just("promptFeedback"),
            Just("blockReason"),
            Just("extra_content"),
            Just("google"),
            Just("thought_signature"),
            Just("stop"),
            Just("n"),
        ]
        .prop_map(str::to_owned);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just("user".to_owned()),
                Just("assistant".to_owned()),
                Just("tool".to_owned()),
                Just("system".to_owned()),
                Just("text".to_owned()),
                Just("image_url".to_owned()),
                Just("STOP".to_owned()),
                Just("{}".to_owned()),
                Just("data:a;base64,b".to_owned()),
                Just("https://x/y.png".to_owned()),
                ".{0,8}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn exercise(bytes: &[u8]) {
        let _ = chat_to_generate(bytes, 16);
        let _ = generate_to_chat(bytes, "m", 0);
        let _ = error_to_openai(bytes);
        let _ = serde_json::from_slice::<Value>(bytes).map(|v| usage_of(&v));
        let mut t = StreamTranslator::new("m", 0, true, 8);
        let mut out = String::new();
        t.event(bytes, &mut out);
        t.event(bytes, &mut out);
        t.finish(&mut out);
        assert!(t.kept.text.len() <= 8);
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            exercise(&bytes);
        }

        #[test]
        fn never_panics_on_json(value in shaped_json()) {
            exercise(value.to_string().as_bytes());
            // Wrapped as a request and as an answer too, so the deep paths are reached.
            exercise(json!({"messages": [value.clone()], "tools": [value.clone()]}).to_string().as_bytes());
            exercise(json!({"candidates": [{"content": {"parts": [value.clone()]}}], "usageMetadata": value}).to_string().as_bytes());
        }
    }
}
