//! The text of prompts and answers, kept for counting when a provider reports no usage.
//!
//! Dialect-neutral: every string in a JSON value except structural fields (`role`, `type`,
//! `id`, stop reasons), read from the bytes by [`json_scan`] without building a tree. What is
//! kept is capped per call; bytes past the cap are counted, not kept, so a long stream costs
//! no more memory than a short one.

use std::ops::Range;

use crate::json_scan;

/// Fields that are structure, not text a model read or wrote.
pub(crate) fn structural(key: &str) -> bool {
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

    /// Appends every string in the JSON value at `value`, a span a scan of `json` returned.
    pub fn keep_strings(&mut self, json: &str, value: &Range<usize>) {
        json_scan::strings(json, value, &structural, &mut |text| self.keep(text));
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

/// The text of a whole answer body (for counting when it reports no usage): OpenAI's
/// `choices` and `output`, Anthropic's `content`, Gemini's `candidates`; `None` when it is not
/// a JSON object.
#[must_use]
pub fn text_of_body(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let scanned =
        json_scan::scan_text(body, ["choices", "content", "output", "candidates"]).ok()?;
    let mut text = String::new();
    for member in scanned.members.iter().flatten() {
        json_scan::strings(body, &member.value, &structural, &mut |s| {
            text.push_str(s);
        });
    }
    Some(text)
}

/// The prompt text of a client's request body (system, messages, prompt, input, instructions,
/// tools), for counting when the provider reports no usage. Returns the text and the number of
/// messages (each costs a few tokens of framing).
#[must_use]
pub fn prompt_text(body: &[u8]) -> (String, u64) {
    let Ok(body) = std::str::from_utf8(body) else {
        return (String::new(), 0);
    };
    let Ok(scanned) = json_scan::scan_text(
        body,
        [
            "system",
            "messages",
            "prompt",
            "input",
            "instructions",
            "tools",
        ],
    ) else {
        return (String::new(), 0);
    };
    let mut text = String::new();
    for member in scanned.members.iter().flatten() {
        json_scan::strings(body, &member.value, &structural, &mut |s| {
            text.push_str(s);
        });
    }
    let messages = scanned
        .members
        .get(1)
        .and_then(Option::as_ref)
        .map_or(0, |m| json_scan::elements(body, &m.value).count() as u64);
    (text, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_text_stops_at_the_cap_on_a_char_boundary() {
        let mut kept = Kept::new(4);
        let delta = r#"{"role":"assistant","content":"abc\u00e9"}"#;
        kept.keep_strings(delta, &(0..delta.len()));
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
