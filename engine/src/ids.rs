//! Parsed names: `provider/model` references and the ids of keys.
//!
//! Raw strings become these types at the edge, so the core never re-checks a string.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A model addressed as `provider/model` (`anthropic/claude-sonnet-4-5`, `vllm/llama-3.1-8b`).
///
/// The provider is lower-case ASCII letters, digits, `-` and `_`; the model is anything
/// printable without whitespace (it may hold further slashes, as Hugging Face names do).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    full: Arc<str>,
    slash: usize,
}

impl ModelRef {
    /// Parses `provider/model`.
    pub fn parse(text: &str) -> Result<ModelRef> {
        let bad = || Error::BadModelRef(text.chars().take(200).collect());
        let (provider, model) = text.split_once('/').ok_or_else(bad)?;
        let provider_ok = !provider.is_empty()
            && provider.len() <= 64
            && provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        let model_ok = !model.is_empty()
            && model.len() <= 256
            && model.chars().all(|c| !c.is_whitespace() && !c.is_control());
        if !provider_ok || !model_ok {
            return Err(bad());
        }
        Ok(ModelRef {
            full: Arc::from(text),
            slash: provider.len(),
        })
    }

    /// The provider part (`anthropic`).
    #[must_use]
    pub fn provider(&self) -> &str {
        self.full.get(..self.slash).unwrap_or_default()
    }

    /// The model part as the provider names it (`claude-sonnet-4-5`).
    #[must_use]
    pub fn model(&self) -> &str {
        self.full.get(self.slash + 1..).unwrap_or_default()
    }

    /// The whole `provider/model` string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The whole name, shared.
    #[must_use]
    pub fn as_arc(&self) -> &Arc<str> {
        &self.full
    }
}

impl fmt::Debug for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelRef({})", self.full)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for ModelRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ModelRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The public id of a virtual key: the first 64 bits of its hash, shown as `key_` and 16 hex
/// digits. Safe to log and to show; it reveals nothing of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    /// Parses `key_` followed by 16 hex digits.
    pub fn parse(text: &str) -> Result<KeyId> {
        text.strip_prefix("key_")
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(KeyId)
            .ok_or_else(|| Error::Unknown {
                kind: "key",
                name: text.chars().take(40).collect(),
            })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key_{:016x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KeyId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a call's prompt begins with, as a keyed 64-bit hash of its first
/// [`PROMPT_PREFIX_BYTES`] bytes (system prompt, then the conversation), shown as 16 hex
/// digits. Calls that share it could have had those bytes billed at a provider's cached
/// price; it reveals nothing of the text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PromptPrefix(pub u64);

/// How much of a prompt [`PromptPrefix`] covers: 4 KiB, about 1,024 tokens, the least a
/// provider caches. A shorter prompt has none.
pub const PROMPT_PREFIX_BYTES: usize = 4_096;

impl PromptPrefix {
    /// Parses 16 hex digits.
    pub fn parse(text: &str) -> Result<PromptPrefix> {
        Some(text)
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(PromptPrefix)
            .ok_or_else(|| Error::Unknown {
                kind: "prompt prefix",
                name: text.chars().take(40).collect(),
            })
    }
}

impl fmt::Display for PromptPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for PromptPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PromptPrefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromptPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PromptPrefix::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_prefixes_read_back_as_written_and_refuse_anything_else() {
        let prefix = PromptPrefix(0x00ab_cdef_0123_4567);
        assert_eq!(prefix.to_string(), "00abcdef01234567");
        assert_eq!(PromptPrefix::parse(&prefix.to_string()).unwrap(), prefix);
        for bad in ["", "abc", "00abcdef0123456g", "00abcdef012345678"] {
            assert!(PromptPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_refs_parse_strictly() {
        let m = ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap();
        assert_eq!(
            (m.provider(), m.model()),
            ("anthropic", "claude-sonnet-4-5")
        );
        let hf = ModelRef::parse("vllm/meta-llama/Llama-3.1-8B").unwrap();
        assert_eq!(
            (hf.provider(), hf.model()),
            ("vllm", "meta-llama/Llama-3.1-8B")
        );
        for bad in [
            "",
            "gpt-4o",
            "/gpt-4o",
            "openai/",
            "Open AI/x",
            "openai/gpt 4o",
            "openai/a\u{0}b",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ModelRef::parse(&format!("openai/{}", "x".repeat(300))).is_err());
    }

    #[test]
    fn key_ids_round_trip() {
        let id = KeyId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "key_0123456789abcdef");
        assert_eq!(KeyId::parse("key_0123456789abcdef").unwrap(), id);
        for bad in [
            "key_123",
            "0123456789abcdef",
            "key_0123456789abcdeg",
            "key_0123456789abcdef0",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
