//! A scanner for the top level of a JSON request body that finds a few members without
//! building a tree.
//!
//! Agents send 200 to 400 KB bodies; the gateway needs only `model`, `stream`, the output caps
//! and the byte spans to rewrite. [`scan`] walks the top-level object once, records the span of
//! each member it was asked for, and skips every other value by its brackets and strings
//! (memchr over string bodies). The body is forwarded as slices of the original buffer.
//!
//! **Invariant:** a wanted member that appears twice is an error, never "first wins": the
//! upstream may read the last one, and a gateway that checks one model while the provider runs
//! another is a budget bypass.

use std::ops::Range;

use crate::limits::JSON_DEPTH_MAX;

/// Why a body is not a JSON object the gateway can route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The body is not valid UTF-8.
    #[error("request body is not valid UTF-8 (byte {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The bytes are not JSON, or not an object.
    #[error("request body is not a JSON object: {reason} at byte {offset}")]
    Malformed {
        /// What was expected there.
        reason: &'static str,
        /// The byte offset in the body where it went wrong.
        offset: usize,
    },
    /// Nesting deeper than [`JSON_DEPTH_MAX`].
    #[error("request body nests deeper than {JSON_DEPTH_MAX} levels")]
    TooDeep,
    /// A member the gateway reads appears twice.
    #[error("request body has the member `{0}` more than once")]
    Duplicate(&'static str),
}

/// One member found: the span of its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The value's bytes.
    pub value: Range<usize>,
}

/// The result of a scan: one slot per wanted name, and where the object closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned<const N: usize> {
    /// The members found, in the order of the wanted names.
    pub members: [Option<Member>; N],
    /// The offset of the object's closing `}`.
    pub close: usize,
    /// Whether the object has at least one member (an insertion needs a comma).
    pub has_members: bool,
}

/// Scans `body`, a JSON object, for the top-level members named in `wanted`.
pub fn scan<const N: usize>(
    body: &[u8],
    wanted: [&'static str; N],
) -> Result<Scanned<N>, ScanError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ScanError::NotUtf8 {
            offset: e.valid_up_to(),
        });
    }
    let mut s = Scanner { bytes: body, at: 0 };
    s.skip_ws();
    s.expect(b'{', "expected `{`")?;
    let mut members: [Option<Member>; N] = std::array::from_fn(|_| None);
    let mut has_members = false;
    s.skip_ws();
    let close = if s.peek() == Some(b'}') {
        s.at
    } else {
        loop {
            s.skip_ws();
            let key = s.string()?;
            s.skip_ws();
            s.expect(b':', "expected `:`")?;
            s.skip_ws();
            let start = s.at;
            s.value(1)?;
            let value = start..s.at;
            has_members = true;
            if let Some(index) = wanted_index(body, key, &wanted)? {
                let (Some(slot), Some(name)) = (members.get_mut(index), wanted.get(index)) else {
                    continue;
                };
                if slot.is_some() {
                    return Err(ScanError::Duplicate(name));
                }
                *slot = Some(Member { value });
            }
            s.skip_ws();
            match s.next() {
                Some(b',') => {}
                Some(b'}') => break s.at - 1,
                _ => return Err(s.malformed("expected `,` or `}`")),
            }
        }
    };
    if close == s.at {
        s.at += 1;
    }
    s.skip_ws();
    if s.at != body.len() {
        return Err(s.malformed("trailing bytes after the object"));
    }
    Ok(Scanned {
        members,
        close,
        has_members,
    })
}

/// Which wanted name a raw key (the bytes between its quotes) is, decoding escapes if any.
fn wanted_index<const N: usize>(
    body: &[u8],
    key: Range<usize>,
    wanted: &[&'static str; N],
) -> Result<Option<usize>, ScanError> {
    let raw = body.get(key.clone()).unwrap_or_default();
    if !raw.contains(&b'\\') {
        return Ok(wanted.iter().position(|w| w.as_bytes() == raw));
    }
    let quoted = body
        .get(key.start.saturating_sub(1)..key.end + 1)
        .unwrap_or_default();
    let decoded: String = serde_json::from_slice(quoted).map_err(|_| ScanError::Malformed {
        reason: "bad escape in a key",
        offset: key.start,
    })?;
    Ok(wanted.iter().position(|w| *w == decoded))
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn malformed(&self, reason: &'static str) -> ScanError {
        ScanError::Malformed {
            reason,
            offset: self.at,
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.malformed(reason))
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string; returns the span between the quotes.
    ///
    /// Searches for quotes only (memchr), and tells an escaped quote by the parity of the
    /// backslashes before it, so the common escapes (`\n`, `\\` in code) cost nothing.
    fn string(&mut self) -> Result<Range<usize>, ScanError> {
        self.expect(b'"', "expected a string")?;
        let start = self.at;
        loop {
            let rest = self.bytes.get(self.at..).unwrap_or_default();
            let Some(found) = memchr::memchr(b'"', rest) else {
                self.at = self.bytes.len();
                return Err(self.malformed("unterminated string"));
            };
            let quote = self.at + found;
            let before = self.bytes.get(start..quote).unwrap_or_default();
            let backslashes = before.iter().rev().take_while(|&&b| b == b'\\').count();
            self.at = quote + 1;
            if backslashes % 2 == 0 {
                return Ok(start..quote);
            }
        }
    }

    /// Any value, checked for balanced brackets and closed strings, not for full grammar:
    /// the upstream parses it; the gateway needs only to know where it ends.
    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > JSON_DEPTH_MAX {
            return Err(ScanError::TooDeep);
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.container(b'}', depth, true),
            Some(b'[') => self.container(b']', depth, false),
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
                let scalar = self.bytes.get(start..self.at).unwrap_or_default();
                if is_scalar(scalar) {
                    Ok(())
                } else {
                    self.at = start;
                    Err(self.malformed("expected a value"))
                }
            }
            _ => Err(self.malformed("expected a value")),
        }
    }

    fn container(&mut self, close: u8, depth: usize, object: bool) -> Result<(), ScanError> {
        self.at += 1;
        self.skip_ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if object {
                self.string()?;
                self.skip_ws();
                self.expect(b':', "expected `:`")?;
                self.skip_ws();
            }
            self.value(depth + 1)?;
            self.skip_ws();
            match self.next() {
                Some(b',') => {}
                Some(b) if b == close => return Ok(()),
                _ => {
                    self.at = self.at.saturating_sub(1);
                    return Err(self.malformed("expected `,` or a closing bracket"));
                }
            }
        }
    }
}

fn is_scalar(bytes: &[u8]) -> bool {
    match bytes {
        b"true" | b"false" | b"null" => true,
        _ => {
            let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
            digits.first().is_some_and(u8::is_ascii_digit)
                && digits
                    .iter()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        }
    }
}

/// Reads a scanned value as `T` (a small value: a model name, a number, a flag).
pub fn read<T: serde::de::DeserializeOwned>(body: &[u8], member: &Member) -> Option<T> {
    serde_json::from_slice(body.get(member.value.clone())?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WANTED: [&str; 3] = ["model", "stream", "max_tokens"];

    fn check(body: &str) -> Result<Vec<Option<String>>, ScanError> {
        let scanned = scan(body.as_bytes(), WANTED)?;
        Ok(scanned
            .members
            .iter()
            .map(|m| m.as_ref().map(|m| body[m.value.clone()].to_string()))
            .collect())
    }

    #[test]
    fn finds_members_and_skips_the_rest() {
        let body = r#" {"messages":[{"role":"user","content":"a \"quoted\" } ] { text"}],
            "model" : "openai/gpt-4o", "n": -1.5e3, "stream":true, "x":{"max_tokens":1},
            "max_tokens":  64 } "#;
        assert_eq!(
            check(body).unwrap(),
            vec![
                Some("\"openai/gpt-4o\"".to_string()),
                Some("true".to_string()),
                Some("64".to_string())
            ]
        );
        let scanned = scan(body.as_bytes(), WANTED).unwrap();
        assert_eq!(body.as_bytes()[scanned.close], b'}');
        assert!(scanned.has_members);
        let model: String = read(body.as_bytes(), scanned.members[0].as_ref().unwrap()).unwrap();
        assert_eq!(model, "openai/gpt-4o");
    }

    #[test]
    fn escaped_keys_are_the_names_they_decode_to() {
        assert_eq!(
            check(r#"{"mod\u0065l":"a/b"}"#).unwrap()[0].as_deref(),
            Some("\"a/b\"")
        );
        assert_eq!(
            check(r#"{"model":"a/b","mod\u0065l":"c/d"}"#),
            Err(ScanError::Duplicate("model"))
        );
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\":tru}",
            "{\"a\":[1,2}",
            "{\"a\":\"x}",
            "{'a':1}",
            "{\"a\":1 \"b\":2}",
        ] {
            assert!(
                matches!(check(bad), Err(ScanError::Malformed { .. })),
                "{bad:?} gave {:?}",
                check(bad)
            );
        }
        assert_eq!(
            check("{\"a\":\"\u{ff}\"}").map(|_| ()),
            Ok(()),
            "non-ASCII UTF-8 is fine"
        );
        assert!(matches!(
            scan(b"{\"a\":\"\xff\"}", WANTED),
            Err(ScanError::NotUtf8 { offset: 6 })
        ));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(check(&deep), Err(ScanError::TooDeep));
        assert_eq!(check("{}").unwrap(), vec![None, None, None]);
        assert_eq!(
            check("{\"model\":1,\"model\":2}"),
            Err(ScanError::Duplicate("model"))
        );
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z\"\\\\{}]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On any object serde_json writes (compact or pretty), the scanner agrees with
        /// serde_json about every wanted member.
        #[test]
        fn agrees_with_serde_json(
            members in prop::collection::btree_map(
                prop_oneof![Just("model".to_string()), Just("stream".to_string()), "[a-z]{1,8}"],
                json_value(),
                0..8,
            ),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(members.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let scanned = scan(text.as_bytes(), WANTED).unwrap();
            for (name, member) in WANTED.iter().zip(&scanned.members) {
                let found: Option<serde_json::Value> =
                    member.as_ref().map(|m| serde_json::from_str(&text[m.value.clone()]).unwrap());
                prop_assert_eq!(found.as_ref(), object.get(*name));
            }
        }

        /// Whatever bytes arrive, the scanner answers without panicking, and anything it
        /// accepts as having a `model` has a span inside the body.
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(scanned) = scan(&bytes, WANTED) {
                for member in scanned.members.iter().flatten() {
                    prop_assert!(member.value.end <= bytes.len());
                }
                prop_assert!(scanned.close < bytes.len());
            }
        }

        /// Mutated valid bodies (the likely hostile input) never panic either.
        #[test]
        fn never_panics_on_near_json(cut in 0usize..80, byte in any::<u8>()) {
            let mut body = br#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#.to_vec();
            let at = cut % body.len();
            body[at] = byte;
            let _ = scan(&body, WANTED);
            body.truncate(at);
            let _ = scan(&body, WANTED);
        }
    }
}
