//! AWS Bedrock's Converse API behind OpenAI's chat completions: SigV4 signing, the request and
//! answer translations, and the AWS event-stream framing of ConverseStream.
//!
//! Facts from the service's own model (botocore's `bedrock-runtime` service JSON): the paths are
//! `/model/{modelId}/converse` and `/model/{modelId}/converse-stream` with the model id
//! percent-encoded (`:` as `%3A`); the SigV4 service name is `bedrock` (not the endpoint prefix);
//! a stream is binary event-stream frames whose `metadata` event (usage) follows `messageStop`;
//! text blocks have no `contentBlockStart`. Usage normalises like Anthropic's: `inputTokens` are
//! uncached, cache reads and writes are counted apart and summed into `input` here.

use std::fmt::Write as _;

use bytes::{Buf as _, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tollgate_engine::{TokenUsage, UnixMs};

use crate::providers::anthropic::{
    Conversation, Dialect, OPENAI_CHAT_FIELDS, ToolCalls, TranslateError, conversation, max_tokens,
    stop_sequences,
};

/// Converse's way of writing a conversation.
const BEDROCK: Dialect = Dialect {
    content: blocks_of,
    tool_use: |id, name, input| json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
    tool_result: |id, content| json!({"toolResult": {"toolUseId": id, "content": content}}),
};

/// SigV4's name for the service.
pub const SIGNING_SERVICE: &str = "bedrock";

/// AWS credentials (from the environment; never logged).
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// `YYYYMMDDTHHMMSSZ`.
#[must_use]
pub fn amz_date(now: UnixMs) -> String {
    let c = now.to_civil();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Hex SHA-256 of a payload made of `chunks`.
#[must_use]
pub fn payload_hash<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hex(&hasher.finalize())
}

/// Percent-encodes everything but unreserved characters, keeping `/` when asked.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// One request to sign: the wire path (already percent-encoded as sent), the query, and the
/// headers to sign (names in any case).
pub struct Signable<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path as sent on the wire.
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Headers to sign, `host` and `x-amz-date` among them.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

/// The `Authorization` header value of a SigV4-signed request (AWS4-HMAC-SHA256), for services
/// other than S3 (whose canonical URI is encoded twice).
#[must_use]
pub fn authorization(
    request: &Signable<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let canonical_uri = if request.path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(request.path, true)
    };
    let mut query: Vec<(String, String)> = request
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| {
            let value = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (n.to_ascii_lowercase(), value)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.payload_sha256
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        payload_hash([canonical_request.as_bytes()])
    );
    let k_date = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

// ---- Event stream framing ----

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length in the prelude is impossible.
    #[error("event-stream frame has a bad length {0}")]
    Length(u32),
    /// A checksum did not match.
    #[error("event-stream frame failed its {0} CRC")]
    Crc(&'static str),
    /// A header could not be read.
    #[error("event-stream frame has a malformed header")]
    Header,
}

/// Largest frame accepted (AWS caps payloads at 24 MiB, headers at 128 KiB).
const FRAME_BYTES_MAX: u32 = 24 * 1024 * 1024 + 128 * 1024 + 16;

/// One decoded frame: its string headers and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Headers whose values are strings (the ones Bedrock sends); others are skipped.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a byte stream into event-stream frames, checking both CRCs.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Appends `data` and decodes every whole frame into `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        loop {
            let Some(prelude) = self.buf.get(..12) else {
                return Ok(());
            };
            let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
            let headers_len = u32::from_be_bytes([prelude[4], prelude[5], prelude[6], prelude[7]]);
            let prelude_crc =
                u32::from_be_bytes([prelude[8], prelude[9], prelude[10], prelude[11]]);
            if crc32fast::hash(&prelude[..8]) != prelude_crc {
                return Err(FrameError::Crc("prelude"));
            }
            if !(16..=FRAME_BYTES_MAX).contains(&total) || headers_len > total - 16 {
                return Err(FrameError::Length(total));
            }
            let total = total as usize;
            if self.buf.len() < total {
                return Ok(());
            }
            let frame = self.buf.split_to(total).freeze();
            let body_end = total - 4;
            let message_crc = u32::from_be_bytes([
                frame[body_end],
                frame[body_end + 1],
                frame[body_end + 2],
                frame[body_end + 3],
            ]);
            if crc32fast::hash(&frame[..body_end]) != message_crc {
                return Err(FrameError::Crc("message"));
            }
            let headers_end = 12 + headers_len as usize;
            let headers = parse_headers(&frame[12..headers_end])?;
            out.push(Frame {
                headers,
                payload: frame.slice(headers_end..body_end),
            });
        }
    }
}

fn parse_headers(mut data: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut headers = Vec::new();
    while !data.is_empty() {
        let name_len = usize::from(data.try_get_u8().map_err(|_| FrameError::Header)?);
        let name = data.get(..name_len).ok_or(FrameError::Header)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| FrameError::Header)?;
        data.advance(name_len);
        let kind = data.try_get_u8().map_err(|_| FrameError::Header)?;
        let skip = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = usize::from(data.try_get_u16().map_err(|_| FrameError::Header)?);
                let value = data.get(..len).ok_or(FrameError::Header)?;
                if kind == 7 {
                    let value =
                        String::from_utf8(value.to_vec()).map_err(|_| FrameError::Header)?;
                    headers.push((name, value));
                }
                len
            }
            _ => return Err(FrameError::Header),
        };
        if data.len() < skip {
            return Err(FrameError::Header);
        }
        data.advance(skip);
    }
    Ok(headers)
}

/// Encodes a frame with string headers (for tests and the mock's mirror of it).
#[must_use]
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers
            .extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = 16 + encoded_headers.len() + payload.len();
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(
        &u32::try_from(encoded_headers.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    let prelude_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&encoded_headers);
    frame.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    frame
}

// ---- Translation ----

fn bad(message: impl Into<String>) -> TranslateError {
    TranslateError(message.into())
}

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
    let mut inference = Map::new();
    let max_tokens = max_tokens(&request, max_tokens_default);
    inference.insert("maxTokens".into(), json!(max_tokens));
    if let Some(t) = request.get("temperature").filter(|v| v.is_number()) {
        inference.insert("temperature".into(), t.clone());
    }
    if let Some(p) = request.get("top_p").filter(|v| v.is_number()) {
        inference.insert("topP".into(), p.clone());
    }
    if let Some(stop) = stop_sequences(&request) {
        inference.insert("stopSequences".into(), stop);
    }
    out.insert("inferenceConfig".into(), Value::Object(inference));
    let choice = request.get("tool_choice");
    let tools_off = matches!(choice, Some(Value::String(s)) if s == "none");
    if let Some(tools) = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|_| !tools_off)
    {
        let specs: Vec<Value> = tools
            .iter()
            .map(|tool| {
                let function = tool.get("function").unwrap_or(&Value::Null);
                let mut spec = Map::new();
                spec.insert("name".into(), function.get("name").cloned().unwrap_or(json!("")));
                if let Some(d) = function.get("description") {
                    spec.insert("description".into(), d.clone());
                }
                spec.insert(
                    "inputSchema".into(),
                    json!({"json": function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))}),
                );
                json!({"toolSpec": Value::Object(spec)})
            })
            .collect();
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(specs));
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
        out.insert("toolConfig".into(), Value::Object(config));
    }
    let mut extra = Map::new();
    if let Some(fields) = request.as_object() {
        for (name, value) in fields {
            if !OPENAI_CHAT_FIELDS.contains(&name.as_str()) {
                extra.insert(name.clone(), value.clone());
            }
        }
    }
    if !extra.is_empty() {
        out.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
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

fn openai_usage(usage: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": usage.input.0,
        "completion_tokens": usage.output.0,
        "total_tokens": usage.input.0 + usage.output.0,
        "prompt_tokens_details": {"cached_tokens": usage.cached.0},
    })
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
            tool_calls.push(crate::providers::anthropic::tool_call(
                call.get("toolUseId"),
                call.get("name"),
                call.get("input"),
            ));
        }
    }
    let message = crate::providers::anthropic::assistant_message(&text, tool_calls);
    let usage = answer.get("usage").and_then(usage_of).unwrap_or_default();
    let chat = json!({
        "id": "chatcmpl-bedrock",
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish_reason(answer.get("stopReason").and_then(Value::as_str))}],
        "usage": openai_usage(&usage),
    });
    serde_json::to_vec(&chat).ok()
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
    model: String,
    created_s: i64,
    include_usage: bool,
    tool_calls: ToolCalls,
    done: bool,
    /// Usage from the `metadata` event.
    pub usage: Option<TokenUsage>,
    /// Generated text kept for counting, up to `text_bytes_max`.
    pub text: String,
    /// Text seen past the cap.
    pub beyond_bytes: u64,
    text_bytes_max: usize,
}

impl StreamTranslator {
    /// A translator answering for `model`.
    #[must_use]
    pub fn new(
        model: &str,
        created_s: i64,
        include_usage: bool,
        text_bytes_max: usize,
    ) -> StreamTranslator {
        StreamTranslator {
            model: model.to_owned(),
            created_s,
            include_usage,
            tool_calls: ToolCalls::default(),
            done: false,
            usage: None,
            text: String::new(),
            beyond_bytes: 0,
            text_bytes_max,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let chunk = json!({
            "id": "chatcmpl-bedrock",
            "object": "chat.completion.chunk",
            "created": self.created_s,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    }

    fn keep(&mut self, text: &str) {
        crate::providers::wire::keep_capped(
            &mut self.text,
            self.text_bytes_max,
            &mut self.beyond_bytes,
            text,
        );
    }

    /// Translates one frame; returns whether it carried generated text.
    pub fn frame(&mut self, frame: &Frame, out: &mut String) -> bool {
        let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        match frame.header(":message-type") {
            Some("event") => {}
            _ => {
                let kind = frame
                    .header(":exception-type")
                    .or_else(|| frame.header(":error-code"))
                    .unwrap_or("error");
                let message = payload
                    .get("message")
                    .cloned()
                    .or_else(|| frame.header(":error-message").map(|m| json!(m)))
                    .unwrap_or(json!(""));
                out.push_str(&format!(
                    "data: {}\n\n",
                    json!({"error": {"message": message, "type": kind}})
                ));
                return false;
            }
        }
        match frame.header(":event-type") {
            Some("messageStart") => {
                out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            Some("contentBlockStart") => {
                if let Some(tool) = payload.pointer("/start/toolUse") {
                    let index = payload
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let delta = self.tool_calls.start(
                        index,
                        tool.get("toolUseId").unwrap_or(&Value::Null),
                        tool.get("name").unwrap_or(&Value::Null),
                    );
                    out.push_str(&self.chunk(delta, Value::Null));
                }
            }
            Some("contentBlockDelta") => {
                let index = payload
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str) {
                    self.keep(text);
                    out.push_str(&self.chunk(json!({"content": text}), Value::Null));
                    return true;
                }
                if let Some(input) = payload
                    .pointer("/delta/toolUse/input")
                    .and_then(Value::as_str)
                {
                    self.keep(input);
                    if let Some(delta) = self.tool_calls.arguments(index, &json!(input)) {
                        out.push_str(&self.chunk(delta, Value::Null));
                    }
                    return true;
                }
            }
            Some("messageStop") => {
                let finish = finish_reason(payload.get("stopReason").and_then(Value::as_str));
                out.push_str(&self.chunk(json!({}), finish));
            }
            Some("metadata") => {
                self.usage = payload.get("usage").and_then(usage_of);
                self.finish(out);
            }
            _ => {}
        }
        false
    }

    /// Ends the OpenAI stream (usage chunk if asked, then `[DONE]`), once.
    pub fn finish(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        if self.include_usage
            && let Some(usage) = &self.usage
        {
            let chunk = json!({
                "id": "chatcmpl-bedrock",
                "object": "chat.completion.chunk",
                "created": self.created_s,
                "model": self.model,
                "choices": [],
                "usage": openai_usage(usage),
            });
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    /// AWS's SigV4 test suite: get-vanilla and post-vanilla.
    #[test]
    fn signs_the_official_vanilla_vectors() {
        let empty = payload_hash([&b""[..]]);
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let request = Signable {
                method,
                path: "/",
                query: "",
                headers: &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                payload_sha256: &empty,
            };
            let header = authorization(
                &request,
                &example_credentials(None),
                "us-east-1",
                "service",
                "20150830T123600Z",
            );
            assert_eq!(
                header,
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                )
            );
        }
    }

    /// A Converse call signed by botocore with the suite's credentials: the model id's `%3A`
    /// is encoded again in the canonical URI, and the service is `bedrock`.
    #[test]
    fn signs_a_converse_call_as_botocore_does() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":256}}"#;
        let hash = payload_hash([&body[..]]);
        assert_eq!(
            hash,
            "d8695502972bd4d482308b656a524b7a7efcebba591a06801fadba6b39700dd1"
        );
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        for (token, signature) in [
            (
                None,
                "64f8b26588dfac9e89af81426efe952738412726e956ba41b7da0e7956c9c6f4",
            ),
            (
                Some("SESSIONTOKENEXAMPLE"),
                "dd0478723d9f699c522b5c2c45aa317e936ddd2e6c347421774fd80c0fd200e7",
            ),
        ] {
            let mut headers = vec![
                ("Content-Type", "application/json"),
                ("Host", "bedrock-runtime.us-east-1.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ];
            if let Some(token) = token {
                headers.push(("X-Amz-Security-Token", token));
            }
            let request = Signable {
                method: "POST",
                path,
                query: "",
                headers: &headers,
                payload_sha256: &hash,
            };
            let header = authorization(
                &request,
                &example_credentials(token),
                "us-east-1",
                SIGNING_SERVICE,
                "20150830T123600Z",
            );
            assert!(
                header.ends_with(&format!("Signature={signature}")),
                "{header}"
            );
            assert!(header.contains("/20150830/us-east-1/bedrock/aws4_request"));
        }
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        // botocore's own vector: one string header, a small payload.
        let vector = encode_frame(&[("content-type", "application/json")], b"{'foo':'bar'}");
        assert_eq!(
            &vector[..12],
            &[0, 0, 0, 0x3d, 0, 0, 0, 0x20, 0x07, 0xfd, 0x83, 0x96]
        );
        assert_eq!(&vector[vector.len() - 4..], &[0x8d, 0x9c, 0x08, 0xb1]);
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        // Fed a byte at a time, it still yields the one frame.
        for byte in &vector {
            decoder.push(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header("content-type"), Some("application/json"));
        assert_eq!(&out[0].payload[..], b"{'foo':'bar'}");
        let mut corrupt = vector.clone();
        corrupt[20] ^= 1;
        assert_eq!(
            Decoder::default().push(&corrupt, &mut Vec::new()),
            Err(FrameError::Crc("message"))
        );
        corrupt = vector;
        corrupt[1] ^= 1;
        assert_eq!(
            Decoder::default().push(&corrupt, &mut Vec::new()),
            Err(FrameError::Crc("prelude"))
        );
    }

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
        assert_eq!(t.text, "Hel");
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
