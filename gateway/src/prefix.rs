//! What a call's prompt begins with, for the savings advice: a keyed SipHash-2-4 of its first
//! [`PROMPT_PREFIX_BYTES`] bytes, the `system` prompt's value as sent and then the
//! conversation's (`messages`, `input` or `prompt`), recorded on its usage event as
//! `prompt_prefix`. Calls that share one re-sent at least those bytes, which a provider's
//! prompt cache bills at its cached price.
//!
//! **Invariant:** the key never leaves the state folder's `prompt-prefix.key` (made at the
//! first start, written whole and renamed into place), so equal prefixes hash equal across
//! restarts and nothing outside can tell which text a prefix is. Hashing reads at most 4 KiB
//! of the body whatever its size.

use std::hash::Hasher as _;
use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::path::Path;

use tollgate_engine::{PROMPT_PREFIX_BYTES, PromptPrefix};

/// The key file in the state folder.
const KEY_FILE: &str = "prompt-prefix.key";

/// The installation's key for prompt prefixes.
#[derive(Clone, Copy)]
pub struct Prefixes {
    key: (u64, u64),
}

impl std::fmt::Debug for Prefixes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefixes(<key>)")
    }
}

impl Prefixes {
    /// With `key`, for tests and benches.
    #[must_use]
    pub fn with_key(key: (u64, u64)) -> Prefixes {
        Prefixes { key }
    }

    /// The key kept in `state_dir`, made from `random` bytes when there is none yet.
    pub fn open(state_dir: &Path, random: [u8; 16]) -> std::io::Result<Prefixes> {
        let path = state_dir.join(KEY_FILE);
        let mut bytes = [0u8; 16];
        match std::fs::File::open(&path) {
            Ok(file) => {
                let mut text = String::new();
                file.take(64).read_to_string(&mut text)?;
                let hex = text.trim();
                let parsed = (hex.len() == 32)
                    .then(|| u128::from_str_radix(hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "{} is not 32 hex digits: restore it, or remove it to start a new key (prefixes written before will not match new ones)",
                            path.display()
                        ))
                    })?;
                bytes = parsed.to_be_bytes();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bytes.copy_from_slice(&random);
                std::fs::create_dir_all(state_dir)?;
                let temporary = path.with_extension("tmp");
                {
                    let mut file = std::fs::File::create(&temporary)?;
                    writeln!(file, "{:032x}", u128::from_be_bytes(bytes))?;
                    file.sync_all()?;
                }
                std::fs::rename(&temporary, &path)?;
            }
            Err(e) => return Err(e),
        }
        let half = |range: Range<usize>| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[range]);
            u64::from_be_bytes(word)
        };
        Ok(Prefixes {
            key: (half(0..8), half(8..16)),
        })
    }

    /// The prefix of the prompt in `body` whose `system` value and conversation value are at
    /// `system` and `context`; `None` when the two together are shorter than
    /// [`PROMPT_PREFIX_BYTES`].
    #[must_use]
    pub fn of(
        &self,
        body: &[u8],
        system: Option<Range<usize>>,
        context: Option<Range<usize>>,
    ) -> Option<PromptPrefix> {
        let parts = [system, context];
        let total: usize = parts.iter().flatten().map(ExactSizeIterator::len).sum();
        if total < PROMPT_PREFIX_BYTES {
            return None;
        }
        #[expect(
            deprecated,
            reason = "std's SipHash-2-4 with a key is the keyed hash wanted; its replacement is unstable"
        )]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.key.0, self.key.1);
        let mut left = PROMPT_PREFIX_BYTES;
        for part in parts.into_iter().flatten() {
            let bytes = body.get(part)?;
            let take = bytes.len().min(left);
            hasher.write(&bytes[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Some(PromptPrefix(hasher.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(system: &str, messages: &str) -> (Vec<u8>, Range<usize>, Range<usize>) {
        let head = "{\"system\":";
        let middle = ",\"messages\":";
        let text = format!("{head}{system}{middle}{messages}}}");
        let s = head.len()..head.len() + system.len();
        let m = s.end + middle.len()..s.end + middle.len() + messages.len();
        (text.into_bytes(), s, m)
    }

    #[test]
    fn prompts_that_begin_alike_share_a_prefix_and_short_ones_have_none() {
        let prefixes = Prefixes::with_key((1, 2));
        let system = format!("\"{}\"", "be brief. ".repeat(300));
        let first = format!(
            "[{{\"role\":\"user\",\"content\":\"{}\"}}]",
            "a".repeat(2_000)
        );
        let later = format!(
            "[{{\"role\":\"user\",\"content\":\"{}\"}},{{\"role\":\"assistant\",\"content\":\"ok\"}}]",
            "a".repeat(2_000)
        );
        let of = |system: &str, messages: &str| {
            let (bytes, s, m) = body(system, messages);
            prefixes.of(&bytes, Some(s), Some(m))
        };
        let a = of(&system, &first);
        assert!(a.is_some());
        // More conversation after the first 4 KiB: the same prefix.
        assert_eq!(a, of(&system, &later));
        // Another system prompt: another prefix.
        assert_ne!(a, of(&system.replace("brief", "terse"), &first));
        // Another key: another prefix for the same text.
        let (bytes, s, m) = body(&system, &first);
        assert_ne!(a, Prefixes::with_key((1, 3)).of(&bytes, Some(s), Some(m)));
        // Too short to be cached: none.
        assert_eq!(of("\"hi\"", "[]"), None);
        // A span past the body (never made by the scanner) is none, not a panic.
        assert_eq!(prefixes.of(b"{}", Some(0..5_000), None), None);
    }

    #[test]
    fn the_key_is_made_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tollgate-prefix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = Prefixes::open(&dir, [7; 16]).unwrap();
        let again = Prefixes::open(&dir, [9; 16]).unwrap();
        assert_eq!(made.key, again.key);
        assert_eq!(made.key, (0x0707_0707_0707_0707, 0x0707_0707_0707_0707));
        std::fs::write(dir.join(KEY_FILE), "not hex").unwrap();
        let refused = Prefixes::open(&dir, [9; 16]).unwrap_err().to_string();
        assert!(refused.contains("32 hex digits"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
