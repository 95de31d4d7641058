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

use std::borrow::Cow;
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
    let json = std::str::from_utf8(body).map_err(|e| ScanError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    scan_text(json, wanted)
}

/// [`scan`] of text already known to be UTF-8 (a streamed chunk checked once).
pub fn scan_text<const N: usize>(
    json: &str,
    wanted: [&'static str; N],
) -> Result<Scanned<N>, ScanError> {
    let mut s = Scanner {
        json,
        bytes: json.as_bytes(),
        at: 0,
    };
    s.skip_ws();
    let scanned = s.object(wanted)?;
    s.skip_ws();
    if s.at != json.len() {
        return Err(s.malformed("trailing bytes after the object"));
    }
    Ok(scanned)
}

/// The members named in `wanted` of the object at `value`, a span that a scan of `json`
/// returned; `None` when that value is not an object or names a wanted member twice.
#[must_use]
pub fn members<const N: usize>(
    json: &str,
    value: &Range<usize>,
    wanted: [&'static str; N],
) -> Option<Scanned<N>> {
    let mut s = Scanner::at(json, value)?;
    s.object(wanted).ok()
}

/// The spans of the elements of the array at `value` (a span a scan of `json` returned), in
/// order; nothing when it is not an array.
#[must_use]
pub fn elements<'a>(json: &'a str, value: &Range<usize>) -> Elements<'a> {
    let mut scanner = Scanner::at(json, value);
    let open = scanner
        .as_mut()
        .is_some_and(|s| s.expect(b'[', "expected `[`").is_ok());
    Elements {
        scanner: scanner.filter(|_| open),
    }
}

/// The elements of an array, as [`elements`] finds them.
pub struct Elements<'a> {
    /// `None` once the array has closed (or was never one).
    scanner: Option<Scanner<'a>>,
}

impl<'a> Elements<'a> {
    /// The next element, read by `read` from its first byte to past its last.
    fn next_with<T>(&mut self, read: impl FnOnce(&mut Scanner<'a>) -> Option<T>) -> Option<T> {
        let s = self.scanner.as_mut()?;
        s.skip_ws();
        let element = if s.peek() == Some(b']') {
            None
        } else {
            read(s)
        };
        s.skip_ws();
        if element.is_none() || s.next() != Some(b',') {
            self.scanner = None;
        }
        element
    }
}

impl Iterator for Elements<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        self.next_with(|s| {
            let start = s.at;
            s.value(1).ok().map(|()| start..s.at)
        })
    }
}

/// The members named in `wanted` of each element of the array at `value` (a span a scan of
/// `json` returned), in order, `None` for an element that is not an object: [`elements`] and
/// [`members`] in one walk (a streamed chunk's choices).
#[must_use]
pub fn objects<'a, const N: usize>(
    json: &'a str,
    value: &Range<usize>,
    wanted: [&'static str; N],
) -> Objects<'a, N> {
    Objects {
        elements: elements(json, value),
        wanted,
    }
}

/// The objects of an array, as [`objects`] finds them.
pub struct Objects<'a, const N: usize> {
    elements: Elements<'a>,
    wanted: [&'static str; N],
}

impl<const N: usize> Iterator for Objects<'_, N> {
    type Item = Option<Scanned<N>>;

    fn next(&mut self) -> Option<Option<Scanned<N>>> {
        let wanted = self.wanted;
        self.elements.next_with(|s| {
            if s.peek() == Some(b'{') {
                s.object(wanted).ok().map(Some)
            } else {
                s.value(1).ok().map(|()| None)
            }
        })
    }
}

/// Calls `found` with every string in the value at `value` (a span a scan of `json`
/// returned), decoded and in document order, leaving out the members of any object whose key
/// `skip` accepts. Text is read this way without building a tree: a streamed chunk's delta,
/// an answer's content. It stops at the first malformed byte.
pub fn strings(
    json: &str,
    value: &Range<usize>,
    skip: &impl Fn(&str) -> bool,
    found: &mut impl FnMut(&str),
) {
    if let Some(mut s) = Scanner::at(json, value) {
        let _ = s.strings(1, skip, found);
    }
}

/// The string at `value` (a span a scan of `json` returned, quotes included), decoded;
/// `None` when it is not a string. Borrowed unless it has escapes.
#[must_use]
pub fn str_at<'a>(json: &'a str, value: &Range<usize>) -> Option<Cow<'a, str>> {
    let mut s = Scanner::at(json, value)?;
    let inner = s.string().ok()?;
    (s.at == value.end).then(|| decoded(json, inner)).flatten()
}

/// The string between the quotes at `inner`, decoded; `None` when its escapes are bad.
fn decoded(json: &str, inner: Range<usize>) -> Option<Cow<'_, str>> {
    let raw = json.get(inner.clone())?;
    if !raw.as_bytes().contains(&b'\\') {
        return Some(Cow::Borrowed(raw));
    }
    let quoted = json.get(inner.start.checked_sub(1)?..inner.end.checked_add(1)?)?;
    serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
}

/// Which wanted name a raw key (the bytes between its quotes) is, decoding escapes if any.
fn wanted_index<const N: usize>(
    json: &str,
    key: Range<usize>,
    wanted: &[&'static str; N],
) -> Result<Option<usize>, ScanError> {
    let raw = json.get(key.clone()).unwrap_or_default();
    if let Some(index) = wanted.iter().position(|w| *w == raw) {
        return Ok(Some(index));
    }
    if !raw.as_bytes().contains(&b'\\') {
        return Ok(None);
    }
    let at = key.start;
    let decoded = decoded(json, key).ok_or(ScanError::Malformed {
        reason: "bad escape in a key",
        offset: at,
    })?;
    Ok(wanted.iter().position(|w| *w == decoded))
}

/// How much of a string [`Scanner::string`] reads byte by byte before it calls memchr.
const SHORT_STRING_BYTES: usize = 16;

struct Scanner<'a> {
    json: &'a str,
    /// `json`'s bytes, which the scan walks.
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `value`, seeing nothing past its end.
    fn at(json: &'a str, value: &Range<usize>) -> Option<Scanner<'a>> {
        let json = json.get(..value.end)?;
        (value.start < value.end).then_some(Scanner {
            json,
            bytes: json.as_bytes(),
            at: value.start,
        })
    }

    /// An object, recording the span of each member named in `wanted`.
    fn object<const N: usize>(
        &mut self,
        wanted: [&'static str; N],
    ) -> Result<Scanned<N>, ScanError> {
        if self.peek() != Some(b'{') {
            return Err(self.malformed("expected `{`"));
        }
        let mut members: [Option<Member>; N] = std::array::from_fn(|_| None);
        let mut has_members = false;
        let json = self.json;
        self.container_with(b'}', 0, |s, key| {
            let start = s.at;
            s.value(1)?;
            has_members = true;
            let Some(key) = key else { return Ok(()) };
            if let Some(index) = wanted_index(json, key, &wanted)?
                && let (Some(slot), Some(name)) = (members.get_mut(index), wanted.get(index))
            {
                if slot.is_some() {
                    return Err(ScanError::Duplicate(name));
                }
                *slot = Some(Member { value: start..s.at });
            }
            Ok(())
        })?;
        Ok(Scanned {
            members,
            close: self.at - 1,
            has_members,
        })
    }

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
    /// Searches for quotes only, and tells an escaped quote by the parity of the backslashes
    /// before it, so the common escapes (`\n`, `\\` in code) cost nothing. The first
    /// [`SHORT_STRING_BYTES`] are looked at one by one (most keys and many values end there,
    /// sooner than memchr is set up), the rest with memchr.
    fn string(&mut self) -> Result<Range<usize>, ScanError> {
        self.expect(b'"', "expected a string")?;
        let start = self.at;
        loop {
            let rest = self.bytes.get(self.at..).unwrap_or_default();
            let short = rest.get(..SHORT_STRING_BYTES).unwrap_or(rest);
            let found = short.iter().position(|&b| b == b'"').or_else(|| {
                let long = rest.get(short.len()..)?;
                memchr::memchr(b'"', long).map(|i| i + short.len())
            });
            let Some(found) = found else {
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
            Some(b'{') => self.container(b'}', depth),
            Some(b'[') => self.container(b']', depth),
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

    fn container(&mut self, close: u8, depth: usize) -> Result<(), ScanError> {
        self.container_with(close, depth, |s, _| s.value(depth + 1))
    }

    /// An object (`close` is `}`) or an array (`]`), from its opening bracket to past its
    /// closing one; `each` reads every member's or element's value, given the object key's
    /// span between its quotes.
    fn container_with(
        &mut self,
        close: u8,
        depth: usize,
        mut each: impl FnMut(&mut Self, Option<Range<usize>>) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        if depth > JSON_DEPTH_MAX {
            return Err(ScanError::TooDeep);
        }
        self.at += 1;
        self.skip_ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let key = if close == b'}' {
                let key = self.string()?;
                self.skip_ws();
                self.expect(b':', "expected `:`")?;
                self.skip_ws();
                Some(key)
            } else {
                None
            };
            each(self, key)?;
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

    /// A value, calling `found` with each string in it as [`strings`] does.
    fn strings(
        &mut self,
        depth: usize,
        skip: &impl Fn(&str) -> bool,
        found: &mut impl FnMut(&str),
    ) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"') => {
                let inner = self.string()?;
                if let Some(text) = decoded(self.json, inner) {
                    found(&text);
                }
                Ok(())
            }
            Some(b'{') => {
                let json = self.json;
                self.container_with(b'}', depth, |s, key| {
                    let skipped = key
                        .and_then(|key| decoded(json, key))
                        .is_some_and(|key| skip(&key));
                    if skipped {
                        s.value(depth + 1)
                    } else {
                        s.strings(depth + 1, skip, found)
                    }
                })
            }
            Some(b'[') => {
                self.container_with(b']', depth, |s, _| s.strings(depth + 1, skip, found))
            }
            _ => self.value(depth),
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

/// The unsigned integer at `member` (a span a scan of `json` returned), read without a
/// parser: a streamed chunk's choice index, an event's block index.
#[must_use]
pub fn u64_at(json: &str, member: &Member) -> Option<u64> {
    let digits = json.get(member.value.clone())?;
    // `str::parse` takes a leading `+`, which JSON does not.
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether the value at `member` is `null` (a streamed chunk's `usage` until the last).
#[must_use]
pub fn is_null(json: &str, member: &Member) -> bool {
    json.get(member.value.clone()) == Some("null")
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

    /// The strings `strings` should find in `value`: serde_json's tree walked in its own
    /// order, which is the order it writes members in.
    fn strings_of(value: &serde_json::Value, skip: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => {
                items.iter().for_each(|item| strings_of(item, skip, out));
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    if !skip(key) {
                        strings_of(item, skip, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn walked(json: &str, skip: &impl Fn(&str) -> bool) -> Vec<String> {
        let mut found = Vec::new();
        strings(json, &(0..json.len()), skip, &mut |s| {
            found.push(s.to_string())
        });
        found
    }

    #[test]
    fn reads_inside_a_value_without_a_tree() {
        let json = r#"{"choices":[{"index":1,"delta":{"role":"assistant","content":"a\"b"}},7,
            {"text":"c\u00e9","index":2.5}],"usage":null,"id":"x\ty"}"#;
        let [choices, usage, id] = scan_text(json, ["choices", "usage", "id"]).unwrap().members;
        let (choices, usage, id) = (choices.unwrap(), usage.unwrap(), id.unwrap());
        assert!(is_null(json, &usage) && !is_null(json, &choices));
        assert_eq!(str_at(json, &id.value).as_deref(), Some("x\ty"));
        assert_eq!(str_at(json, &choices.value), None, "not a string");
        assert_eq!(elements(json, &choices.value).count(), 3);
        assert_eq!(elements(json, &id.value).count(), 0, "not an array");
        let found: Vec<Option<(Option<u64>, Vec<String>)>> =
            objects(json, &choices.value, ["index", "delta", "text"])
                .map(|choice| {
                    let [index, delta, text] = choice?.members;
                    let mut strings = Vec::new();
                    for member in [delta, text].into_iter().flatten() {
                        let skip = |key: &str| key == "role";
                        super::strings(json, &member.value, &skip, &mut |s| {
                            strings.push(s.to_string());
                        });
                    }
                    Some((index.and_then(|m| u64_at(json, &m)), strings))
                })
                .collect();
        assert_eq!(
            found,
            [
                Some((Some(1), vec!["a\"b".to_string()])),
                None,
                Some((None, vec!["cé".to_string()])),
            ],
            "2.5 is no index"
        );
        let first = elements(json, &choices.value).next().unwrap();
        let [index] = members(json, &first, ["index"]).unwrap().members;
        assert_eq!(&json[index.unwrap().value], "1");
        assert!(
            members(json, &id.value, ["index"]).is_none(),
            "not an object"
        );
    }

    #[test]
    fn a_walk_stops_at_a_malformed_byte_and_never_reads_past_its_value() {
        assert_eq!(walked(r#"["a","b",}"c"]"#, &|_| false), ["a", "b"]);
        assert_eq!(walked(r#"{"k":"v","x"}"#, &|_| false), ["v"]);
        assert_eq!(
            walked(r#""bad \q escape""#, &|_| false),
            Vec::<String>::new()
        );
        let json = r#"["in"] "out""#;
        let mut found = Vec::new();
        strings(json, &(0..6), &|_| false, &mut |s| {
            found.push(s.to_string())
        });
        assert_eq!(found, ["in"]);
        let deep = format!("{}\"x\"{}", "[".repeat(200), "]".repeat(200));
        assert!(
            walked(&deep, &|_| false).is_empty(),
            "too deep: nothing read"
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

        /// On any value serde_json writes, the walk finds the strings serde_json's tree holds,
        /// decoded, in order, skipping what it is told to skip; and the objects of an array
        /// are its elements read as objects.
        #[test]
        fn strings_agree_with_serde_json(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let skip = |key: &str| key.contains('"') || key == "a";
            let mut expected = Vec::new();
            strings_of(&value, &skip, &mut expected);
            prop_assert_eq!(walked(&text, &skip), expected);
            let whole = 0..text.len();
            if let serde_json::Value::Array(items) = &value {
                let read: Vec<bool> = objects(&text, &whole, ["a"]).map(|o| o.is_some()).collect();
                let expected: Vec<bool> = items.iter().map(serde_json::Value::is_object).collect();
                prop_assert_eq!(read, expected);
                prop_assert_eq!(elements(&text, &whole).count(), items.len());
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

        /// Nor does a walk inside whatever the scanner accepted, or over any span at all.
        #[test]
        fn walks_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), a in 0usize..300, b in 0usize..300) {
            let Ok(json) = std::str::from_utf8(&bytes) else { return Ok(()) };
            for span in [a.min(b)..a.max(b), 0..json.len()] {
                strings(json, &span, &|_| false, &mut |_| {});
                let _ = elements(json, &span).count();
                let _ = objects(json, &span, ["k"]).count();
                let _ = members(json, &span, ["k"]);
                let _ = str_at(json, &span);
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
