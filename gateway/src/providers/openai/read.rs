//! Reading OpenAI-style answers (chat completions, completions, embeddings, responses): usage
//! in both of OpenAI's spellings, and the text of streamed chunks.
//!
//! Normalisation (see [`TokenUsage`]): OpenAI reports `input` as every prompt token with the
//! cached ones a subset, and `output` with reasoning a subset, which is the engine's own form.

use serde::Deserialize;
use tollgate_engine::TokenUsage;

use crate::providers::read::{Observed, Reading, Tally};
use crate::providers::text::Kept;

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

/// The usage in a whole OpenAI-style answer body.
#[must_use]
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Answer {
        usage: Option<OpenAiUsage>,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()?
        .usage?
        .normalise()
}

#[derive(Deserialize)]
struct Chunk {
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

/// Usage and text of an OpenAI-style stream, event by event.
#[derive(Debug)]
pub struct OpenAiTally {
    usage: Option<TokenUsage>,
    /// Text streamed so far, up to a cap.
    pub kept: Kept,
}

impl OpenAiTally {
    /// A tally keeping up to `text_bytes_max` bytes of streamed text.
    #[must_use]
    pub fn new(text_bytes_max: usize) -> OpenAiTally {
        OpenAiTally {
            usage: None,
            kept: Kept::new(text_bytes_max),
        }
    }
}

impl Tally for OpenAiTally {
    fn observe(&mut self, data: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return observed;
        };
        let text_before = self.kept.seen_bytes();
        for choice in &chunk.choices {
            if let Some(delta) = &choice.delta {
                self.kept.keep_strings(delta);
            }
            if let Some(text) = &choice.text {
                self.kept.keep(text);
            }
        }
        if let (Some(kind), Some(delta)) = (&chunk.kind, &chunk.delta)
            && kind.ends_with(".delta")
        {
            self.kept.keep_strings(delta);
        }
        observed.text = self.kept.seen_bytes() > text_before;
        let usage = chunk
            .usage
            .as_ref()
            .or(chunk.response.as_ref().and_then(|r| r.usage.as_ref()));
        if let Some(usage) = usage.and_then(OpenAiUsage::normalise) {
            self.usage = Some(usage);
            observed.usage_only = chunk.choices.is_empty() && chunk.kind.is_none();
        }
        observed
    }

    fn reading(&mut self) -> Reading {
        Reading::of_stream(self.usage, &mut self.kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_in_both_spellings() {
        let chat = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":20,
            "prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":5}}}"#;
        assert_eq!(
            usage_of_body(chat),
            Some(TokenUsage::new(100, 60, 0, 20, 5))
        );
        let responses = br#"{"output":[],"usage":{"input_tokens":7,"output_tokens":3,
            "input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":1}}}"#;
        assert_eq!(
            usage_of_body(responses),
            Some(TokenUsage::new(7, 2, 0, 3, 1))
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(
            usage_of_body(embeddings),
            Some(TokenUsage::new(9, 0, 0, 0, 0))
        );
        assert_eq!(usage_of_body(b"{\"choices\":[]}"), None);
        assert_eq!(usage_of_body(b"not json"), None);
    }

    #[test]
    fn streams_report_text_and_the_usage_chunk() {
        let mut tally = OpenAiTally::new(1024);
        let seen = tally.observe(
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
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
        );
        assert_eq!(tally.kept.text, "Hel{\"a\"");
        let seen =
            tally.observe(br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#);
        assert_eq!(
            seen,
            Observed {
                usage_only: true,
                text: false
            }
        );
        assert_eq!(tally.observe(b"[DONE]"), Observed::default());
        assert_eq!(
            tally.reading(),
            Reading::Reported(TokenUsage::new(5, 0, 0, 2, 0))
        );
    }

    #[test]
    fn responses_streams_read_deltas_and_the_completed_usage() {
        let mut tally = OpenAiTally::new(1024);
        tally.observe(br#"{"type":"response.output_text.delta","delta":"abc"}"#);
        let seen = tally.observe(
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":1}}}"#,
        );
        assert!(!seen.usage_only, "responses events are never hidden");
        assert_eq!(tally.kept.text, "abc");
        assert_eq!(
            tally.reading(),
            Reading::Reported(TokenUsage::new(4, 0, 0, 1, 0))
        );
    }

    #[test]
    fn a_stream_without_usage_is_counted_from_its_text() {
        let mut tally = OpenAiTally::new(4);
        tally.observe(r#"{"choices":[{"delta":{"content":"abcé"}}]}"#.as_bytes());
        assert_eq!(
            tally.reading(),
            Reading::Text {
                text: "abc".into(),
                beyond_bytes: 2,
                input: None
            }
        );
    }
}
