//! Token counts, and counting them with tiktoken when a provider does not say.
//!
//! Exact counting is slow (about 15 ms for a 100 KB prompt, 160 ms to load `o200k_base` once),
//! so it never sits on the request path: reservations use a byte bound ([`crate::estimate`]),
//! and exact counts come from the provider's usage or from [`count_tokens`] off the path, for
//! example over what was streamed to a client that hung up. Encodings load once, lazily, shared.

use serde::{Deserialize, Serialize};
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

/// A count of tokens: a type of its own, so a token count can never be passed as money.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Tokens(pub u64);

/// What one call consumed, normalised across providers.
///
/// `input` counts every prompt token, of which `cached` were read from the provider's prompt
/// cache and `cache_write` were written to it; `output` counts every completion token, of which
/// `reasoning` were hidden reasoning. (OpenAI reports this way; Anthropic's separate counts are
/// summed into `input` by its adapter.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// All prompt tokens.
    pub input: Tokens,
    /// Prompt tokens read from cache (a subset of `input`).
    pub cached: Tokens,
    /// Prompt tokens written to cache (a subset of `input`).
    pub cache_write: Tokens,
    /// All completion tokens.
    pub output: Tokens,
    /// Reasoning tokens (a subset of `output`).
    pub reasoning: Tokens,
}

impl TokenUsage {
    /// Builds a usage, widening `input` and `output` where a provider reported subsets larger
    /// than their totals, so no token is ever dropped from the bill.
    #[must_use]
    pub fn new(input: u64, cached: u64, cache_write: u64, output: u64, reasoning: u64) -> Self {
        let input = input.max(cached.saturating_add(cache_write));
        let output = output.max(reasoning);
        TokenUsage {
            input: Tokens(input),
            cached: Tokens(cached),
            cache_write: Tokens(cache_write),
            output: Tokens(output),
            reasoning: Tokens(reasoning),
        }
    }

    /// Prompt tokens neither read from nor written to cache.
    #[must_use]
    pub fn uncached_input(&self) -> u64 {
        self.input
            .0
            .saturating_sub(self.cached.0)
            .saturating_sub(self.cache_write.0)
    }

    /// Completion tokens that are not reasoning.
    #[must_use]
    pub fn visible_output(&self) -> u64 {
        self.output.0.saturating_sub(self.reasoning.0)
    }
}

/// The BPE encoding used to count a model's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-5, the o-series.
    O200kBase,
    /// `cl100k_base`: GPT-4, GPT-3.5, `text-embedding-3-*`.
    Cl100kBase,
    /// `o200k_harmony`: gpt-oss.
    O200kHarmony,
}

impl Encoding {
    /// The encoding for a model as its provider names it. Models outside OpenAI's tables
    /// (Claude, Llama, ...) are counted with `o200k_base` and the count is an estimate.
    #[must_use]
    pub fn for_model(model: &str) -> (Encoding, Exactness) {
        match get_tokenizer(model) {
            Some(Tokenizer::O200kBase) => (Encoding::O200kBase, Exactness::Exact),
            Some(Tokenizer::O200kHarmony) => (Encoding::O200kHarmony, Exactness::Exact),
            Some(Tokenizer::Cl100kBase) => (Encoding::Cl100kBase, Exactness::Exact),
            Some(_) | None => (Encoding::O200kBase, Exactness::Estimate),
        }
    }

    fn bpe(self) -> &'static tiktoken_rs::CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Encoding::O200kHarmony => tiktoken_rs::o200k_harmony_singleton(),
        }
    }
}

/// Whether a count used the model's own encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exactness {
    /// The model's own encoding.
    Exact,
    /// A stand-in encoding; close, not exact.
    Estimate,
}

/// Counts the tokens of `text` as `model` would see them (special tokens as plain text).
/// Slow: call off the request path.
#[must_use]
pub fn count_tokens(model: &str, text: &str) -> (Tokens, Exactness) {
    let (encoding, exactness) = Encoding::for_model(model);
    let count = encoding.bpe().count_ordinary(text);
    (Tokens(count as u64), exactness)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_follow_the_model() {
        assert_eq!(
            Encoding::for_model("gpt-4o-mini"),
            (Encoding::O200kBase, Exactness::Exact)
        );
        assert_eq!(
            Encoding::for_model("gpt-4"),
            (Encoding::Cl100kBase, Exactness::Exact)
        );
        assert_eq!(
            Encoding::for_model("gpt-oss-20b"),
            (Encoding::O200kHarmony, Exactness::Exact)
        );
        assert_eq!(
            Encoding::for_model("claude-sonnet-4-5"),
            (Encoding::O200kBase, Exactness::Estimate)
        );
    }

    #[test]
    fn counts_match_known_encodings() {
        // "hello world" is two tokens in both cl100k and o200k.
        assert_eq!(count_tokens("gpt-4", "hello world").0, Tokens(2));
        assert_eq!(count_tokens("gpt-4o", "hello world").0, Tokens(2));
        assert_eq!(count_tokens("gpt-4o", "").0, Tokens(0));
        // Special-token text is counted as ordinary text, never interpreted.
        assert!(count_tokens("gpt-4o", "<|endoftext|>").0.0 > 1);
    }

    #[test]
    fn a_token_is_never_shorter_than_a_byte() {
        // The reservation's byte bound rests on this: byte-level BPE emits at most one token per
        // byte of UTF-8, whatever the script.
        for text in [
            "hello world",
            "日本語のテキスト",
            "🦀🦀🦀 emoji",
            "a\u{0}b\tc\n",
            "x".repeat(5000).as_str(),
        ] {
            for model in ["gpt-4", "gpt-4o", "gpt-oss-20b"] {
                assert!(
                    count_tokens(model, text).0.0 <= text.len() as u64,
                    "{model} {text:?}"
                );
            }
        }
    }

    #[test]
    fn usage_never_drops_a_token() {
        let u = TokenUsage::new(10, 8, 5, 3, 7);
        assert_eq!(u.input, Tokens(13));
        assert_eq!(u.output, Tokens(7));
        assert_eq!(u.uncached_input(), 0);
        assert_eq!(u.visible_output(), 0);
        let v = TokenUsage::new(100, 20, 10, 50, 30);
        assert_eq!((v.uncached_input(), v.visible_output()), (70, 20));
    }
}
