//! The text of prompts and answers, kept for counting when a provider reports no usage.
//!
//! Dialect-neutral: every string in a JSON value except structural fields (`role`, `type`,
//! `id`, stop reasons). What is kept is capped per call; bytes past the cap are counted, not
//! kept, so a long stream costs no more memory than a short one.

use serde_json::Value;

/// Fields that are structure, not text a model read or wrote.
fn structural(key: &str) -> bool {
    matches!(
        key,
        "role" | "type" | "id" | "finish_reason" | "stop_reason"
    )
}

/// Text kept from an answer up to a cap, and the bytes seen past it.
#[derive(Debug, Default)]
pub struct Kept {
    /// The text kept, at most `cap` bytes, cut on a char boundary.
    pub text: String,
    /// Bytes of text seen past `cap`.
    pub beyond_bytes: u64,
    cap: usize,
}

impl Kept {
    /// Keeps up to `cap` bytes.
    #[must_use]
    pub fn new(cap: usize) -> Kept {
        Kept {
            cap,
            ..Kept::default()
        }
    }

    /// Appends `text`.
    pub fn keep(&mut self, text: &str) {
        keep_capped(&mut self.text, self.cap, &mut self.beyond_bytes, text);
    }

    /// Appends every string in `value`.
    pub fn keep_strings(&mut self, value: &Value) {
        let room = self.cap.saturating_sub(self.text.len());
        let before = self.text.len();
        collect(value, &mut self.text, before.saturating_add(room));
        let kept = (self.text.len() - before) as u64;
        self.beyond_bytes += string_bytes(value).saturating_sub(kept);
    }

    /// All text seen, kept or not.
    #[must_use]
    pub fn seen_bytes(&self) -> u64 {
        self.text.len() as u64 + self.beyond_bytes
    }
}

/// Appends `text` to `kept` up to `cap` bytes (cut on a char boundary), counting what does
/// not fit in `beyond`.
fn keep_capped(kept: &mut String, cap: usize, beyond: &mut u64, text: &str) {
    let room = cap.saturating_sub(kept.len());
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    kept.push_str(text.get(..end).unwrap_or_default());
    *beyond += (text.len() - end) as u64;
}

/// Bytes of the strings `collect` would take from `value`.
fn string_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items.iter().map(string_bytes).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !structural(key))
            .map(|(_, item)| string_bytes(item))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Every string in `value`, appended to `out` until it holds `cap` bytes.
fn collect(value: &Value, out: &mut String, cap: usize) {
    match value {
        Value::String(s) => {
            let room = cap.saturating_sub(out.len());
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(s.get(..end).unwrap_or_default());
        }
        Value::Array(items) => {
            for item in items {
                collect(item, out, cap);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                if !structural(key) {
                    collect(item, out, cap);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The text of a whole answer body (for counting when it reports no usage): OpenAI's
/// `choices` and `output`, Anthropic's `content`; `None` when it is not JSON.
#[must_use]
pub fn text_of_body(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    for field in ["choices", "content", "output", "candidates"] {
        if let Some(v) = value.get(field) {
            collect(v, &mut text, usize::MAX);
        }
    }
    Some(text)
}

/// The prompt text of a client's request body (messages, system, prompt, input, tools), for
/// counting when the provider reports no usage. Returns the text and the number of messages
/// (each costs a few tokens of framing).
#[must_use]
pub fn prompt_text(body: &[u8]) -> (String, u64) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
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
            collect(v, &mut text, usize::MAX);
        }
    }
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| m.len() as u64);
    (text, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_text_stops_at_the_cap_on_a_char_boundary() {
        let mut kept = Kept::new(4);
        kept.keep_strings(&serde_json::json!({"content": "abcé", "role": "assistant"}));
        assert_eq!(kept.text, "abc");
        assert_eq!(kept.beyond_bytes, 2);
        assert_eq!(kept.seen_bytes(), 5);
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

    #[test]
    fn answers_that_are_not_json_have_no_text() {
        assert_eq!(text_of_body(b"not json"), None);
        assert_eq!(
            text_of_body(br#"{"content":[{"type":"text","text":"hi"}]}"#).as_deref(),
            Some("hi")
        );
    }
}
