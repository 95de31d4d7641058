//! Reading Anthropic Messages answers: usage (cache reads and writes summed into the prompt),
//! and the text of streamed events.
//!
//! Normalisation (see [`TokenUsage`]): Anthropic reports uncached input, cache reads and cache
//! writes apart; `input` is their sum, with reads and writes its subsets.

use serde::Deserialize;
use tollgate_engine::TokenUsage;

use crate::providers::read::{Observed, Reading, Tally};
use crate::providers::text::Kept;

/// Anthropic's usage object.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
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
    fn merge(&mut self, later: Usage) {
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

/// The usage in a whole Messages answer.
#[must_use]
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Message {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Message>(body)
        .ok()?
        .usage?
        .normalise()
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<MessageStart>,
    usage: Option<Usage>,
    delta: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct MessageStart {
    usage: Option<Usage>,
}

/// Usage and text of a Messages stream, event by event.
#[derive(Debug)]
pub struct AnthropicTally {
    usage: Option<Usage>,
    /// Text streamed so far, up to a cap.
    pub kept: Kept,
}

impl AnthropicTally {
    /// A tally keeping up to `text_bytes_max` bytes of streamed text.
    #[must_use]
    pub fn new(text_bytes_max: usize) -> AnthropicTally {
        AnthropicTally {
            usage: None,
            kept: Kept::new(text_bytes_max),
        }
    }

    /// The usage reported, once both the prompt and the completion counts are known.
    fn reported(&self) -> Option<TokenUsage> {
        let usage = self.usage?;
        usage.output_tokens?;
        usage.normalise()
    }

    /// Prompt tokens reported before the stream ended (`message_start`).
    fn reported_input(&self) -> Option<TokenUsage> {
        Usage {
            output_tokens: Some(0),
            ..self.usage?
        }
        .normalise()
    }
}

impl Tally for AnthropicTally {
    fn observe(&mut self, data: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(event) = serde_json::from_slice::<Event>(data) else {
            return observed;
        };
        let usage = match event.kind.as_deref() {
            Some("message_start") => event.message.and_then(|m| m.usage),
            Some("message_delta") => event.usage,
            _ => None,
        };
        if let Some(later) = usage {
            let mut merged = self.usage.unwrap_or_default();
            merged.merge(later);
            self.usage = Some(merged);
        }
        if let Some(delta) = &event.delta
            && event.kind.as_deref() == Some("content_block_delta")
        {
            let before = self.kept.seen_bytes();
            self.kept.keep_strings(delta);
            observed.text = self.kept.seen_bytes() > before;
        }
        observed
    }

    fn reading(&mut self) -> Reading {
        match self.reported() {
            Some(usage) => Reading::Reported(usage),
            None => Reading::Text {
                text: std::mem::take(&mut self.kept.text),
                beyond_bytes: self.kept.beyond_bytes,
                input: self.reported_input(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sums_cache_reads_and_writes_into_input() {
        let body = br#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,
            "cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":40}}"#;
        assert_eq!(
            usage_of_body(body),
            Some(TokenUsage::new(3210, 3000, 200, 40, 0))
        );
    }

    #[test]
    fn streams_merge_start_and_delta_usage() {
        let mut tally = AnthropicTally::new(1024);
        tally.observe(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":12,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
        );
        assert_eq!(
            tally.reported_input(),
            Some(TokenUsage::new(112, 100, 0, 0, 0))
        );
        let seen = tally.observe(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo"}}"#.as_bytes(),
        );
        assert!(seen.text);
        tally.observe(
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        );
        assert_eq!(tally.kept.text, "héllo");
        assert_eq!(
            tally.reading(),
            Reading::Reported(TokenUsage::new(112, 100, 0, 15, 0))
        );
    }

    #[test]
    fn a_cut_stream_keeps_the_reported_prompt() {
        let mut tally = AnthropicTally::new(1024);
        tally.observe(br#"{"type":"message_start","message":{"usage":{"input_tokens":12}}}"#);
        tally.observe(
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        );
        assert_eq!(
            tally.reading(),
            Reading::Text {
                text: "hi".into(),
                beyond_bytes: 0,
                input: Some(TokenUsage::new(12, 0, 0, 0, 0))
            }
        );
    }
}
