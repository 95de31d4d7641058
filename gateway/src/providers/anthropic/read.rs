//! Reading Anthropic Messages answers: usage (cache reads and writes summed into the prompt),
//! and the text of streamed events.
//!
//! Normalisation (see [`TokenUsage`]): Anthropic reports uncached input, cache reads and cache
//! writes apart; `input` is their sum, with reads and writes its subsets.

use serde::Deserialize;
use serde_json::json;
use tollgate_engine::TokenUsage;

use crate::json_scan;
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

/// Anthropic's usage object as the engine's usage; `None` when it names no prompt count.
#[must_use]
pub fn usage_of_value(usage: &serde_json::Value) -> Option<TokenUsage> {
    Usage::deserialize(usage).ok()?.normalise()
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

/// The members of a streamed event that metering reads, by scanning: an event comes every
/// few tokens, and only `message_start` and `message_delta` carry usage to parse.
const EVENT: [&str; 5] = ["type", "index", "message", "usage", "delta"];

#[derive(Deserialize)]
struct MessageStart {
    usage: Option<Usage>,
}

/// Usage and text of a Messages stream, event by event.
#[derive(Debug)]
pub struct AnthropicTally {
    usage: Option<Usage>,
    /// `message_delta` has reported the completion's count: before it, `message_start`'s
    /// `output_tokens` is a placeholder (1), not the answer's count.
    completed: bool,
    /// The content block started and not yet stopped, by index.
    open_block: Option<u64>,
    /// Text streamed so far, up to a cap.
    pub kept: Kept,
}

impl AnthropicTally {
    /// A tally keeping up to `text_bytes_max` bytes of streamed text.
    #[must_use]
    pub fn new(text_bytes_max: usize) -> AnthropicTally {
        AnthropicTally {
            usage: None,
            completed: false,
            open_block: None,
            kept: Kept::new(text_bytes_max),
        }
    }

    /// The usage reported, once `message_delta` has given the completion's count.
    fn reported(&self) -> Option<TokenUsage> {
        let usage = self.usage?;
        if !self.completed {
            return None;
        }
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
        let Ok(json) = std::str::from_utf8(data) else {
            return observed;
        };
        let Ok(event) = json_scan::scan_text(json, EVENT) else {
            return observed;
        };
        let [kind, index, message, usage, delta] = &event.members;
        let kind = kind
            .as_ref()
            .and_then(|m| json_scan::str_at(json, &m.value));
        let read_usage = || {
            let usage = usage.as_ref()?;
            json_scan::read::<Usage>(json.as_bytes(), usage)
        };
        let usage = match kind.as_deref() {
            Some("message_start") => message
                .as_ref()
                .and_then(|m| json_scan::read::<MessageStart>(json.as_bytes(), m))
                .and_then(|m| m.usage),
            Some("message_delta") => {
                let usage = read_usage();
                self.completed |= usage.is_some_and(|u| u.output_tokens.is_some());
                usage
            }
            Some("content_block_start") => {
                self.open_block = index.as_ref().and_then(|m| json_scan::u64_at(json, m));
                None
            }
            Some("content_block_stop") => {
                self.open_block = None;
                None
            }
            _ => None,
        };
        if let Some(later) = usage {
            let mut merged = self.usage.unwrap_or_default();
            merged.merge(later);
            self.usage = Some(merged);
        }
        if let Some(delta) = delta
            && kind.as_deref() == Some("content_block_delta")
        {
            let before = self.kept.seen_bytes();
            self.kept.keep_strings(json, &delta.value);
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

    fn text_bytes(&self) -> u64 {
        self.kept.seen_bytes()
    }

    /// What Anthropic sends when a message reaches `max_tokens`: the open block stopped,
    /// `message_delta` with `stop_reason: "max_tokens"` and the completion's count, then
    /// `message_stop`.
    fn stop(&mut self, usage: &TokenUsage) -> Option<String> {
        let mut out = String::new();
        let mut event = |name: &str, data: serde_json::Value| {
            out.push_str("event: ");
            out.push_str(name);
            out.push_str("\ndata: ");
            out.push_str(&data.to_string());
            out.push_str("\n\n");
        };
        if let Some(index) = self.open_block.take() {
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
        event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                "usage": {"output_tokens": usage.output.0},
            }),
        );
        event("message_stop", json!({"type": "message_stop"}));
        Some(out)
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
    fn a_stream_is_ended_as_anthropic_ends_one_at_max_tokens() {
        let mut tally = AnthropicTally::new(1024);
        tally.observe(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        );
        tally.observe(br#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#);
        tally.observe(
            br#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"hi there"}}"#,
        );
        assert_eq!(tally.text_bytes(), 8);
        // message_start's output count is a placeholder: a cut stream is counted, not read.
        assert!(matches!(tally.reading(), Reading::Text { .. }));
        let out = tally.stop(&TokenUsage::new(12, 0, 0, 2, 0)).unwrap();
        let events: Vec<(&str, serde_json::Value)> = out
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data = data.strip_prefix("data: ").unwrap();
                (
                    name.strip_prefix("event: ").unwrap(),
                    serde_json::from_str(data).unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(events[0].1["index"], 1);
        assert_eq!(events[1].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(events[1].1["usage"]["output_tokens"], 2);
        // With no block open, none is stopped.
        let out = tally.stop(&TokenUsage::default()).unwrap();
        assert!(out.starts_with("event: message_delta"), "{out}");
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
