//! Server-sent events framing: splits a byte stream into whole events without copying them.
//!
//! Upstreams flush whole events, so a frame usually ends on an event boundary and passes
//! through as the same `Bytes`. Only a frame that ends mid-event leaves a tail behind, kept
//! (up to [`SSE_LINE_BYTES_MAX`]) until the rest arrives.

use bytes::{Bytes, BytesMut};

use crate::limits::SSE_LINE_BYTES_MAX;

/// An incomplete event grew past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event is longer than {SSE_LINE_BYTES_MAX} bytes")]
pub struct Oversized;

/// Splits frames into events.
#[derive(Debug, Default)]
pub struct Framer {
    tail: BytesMut,
}

impl Framer {
    /// Appends the whole events completed by `frame` to `out`, each with its blank-line
    /// terminator, and keeps the incomplete rest.
    pub fn push(&mut self, frame: Bytes, out: &mut Vec<Bytes>) -> Result<(), Oversized> {
        let mut data = if self.tail.is_empty() {
            frame
        } else {
            self.tail.extend_from_slice(&frame);
            std::mem::take(&mut self.tail).freeze()
        };
        while let Some(end) = event_end(&data) {
            out.push(data.split_to(end));
        }
        if data.len() > SSE_LINE_BYTES_MAX {
            return Err(Oversized);
        }
        if !data.is_empty() {
            self.tail = BytesMut::from(&data[..]);
        }
        Ok(())
    }

    /// Whatever is left when the stream ends (an upstream that did not end its last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.tail.is_empty()).then(|| std::mem::take(&mut self.tail).freeze())
    }
}

/// The offset just past the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`), if any.
fn event_end(data: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', data.get(from..)?) {
        let at = from + i;
        let rest = data.get(at..)?;
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            return Some(at + 2);
        }
        if rest.starts_with(b"\r\n\r\n") {
            return Some(at + 4);
        }
        from = at + 1;
    }
    None
}

/// The fields of one event that metering reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// `event:` name.
    pub name: Option<&'a str>,
    /// `data:` lines joined by `\n` (borrowed when there is one).
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Parses one event's lines.
#[must_use]
pub fn parse(event: &[u8]) -> Event<'_> {
    let mut parsed = Event::default();
    let mut lines = 0;
    let mut rest = event;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => parsed.name = std::str::from_utf8(value).ok(),
            b"data" => {
                if lines == 0 {
                    parsed.data = std::borrow::Cow::Borrowed(value);
                } else {
                    let joined = parsed.data.to_mut();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
                lines += 1;
            }
            _ => {}
        }
    }
    parsed
}

/// The `data:` payloads of an OpenAI-style stream as JSON, `[DONE]` left out: what a test of a
/// reader or translator reads its output with.
#[cfg(test)]
pub(crate) fn json_data(out: &str) -> Vec<serde_json::Value> {
    out.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whole_events_pass_through_as_the_same_buffer() {
        let mut framer = Framer::default();
        let frame = Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        let mut out = Vec::new();
        framer.push(frame.clone(), &mut out).unwrap();
        assert_eq!(out, vec![&frame[..15], &frame[15..]]);
        assert_eq!(out[0].as_ptr(), frame.as_ptr(), "no copy");
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn events_split_across_frames_are_joined() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        framer
            .push(
                Bytes::from_static(b"event: message_start\r\ndata: {\"x\""),
                &mut out,
            )
            .unwrap();
        assert!(out.is_empty());
        framer
            .push(Bytes::from_static(b":2}\r\n\r\nevent: ping"), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        let event = parse(&out[0]);
        assert_eq!(event.name, Some("message_start"));
        assert_eq!(&*event.data, b"{\"x\":2}");
        assert_eq!(framer.finish().as_deref(), Some(&b"event: ping"[..]));
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let event = parse(b"data: a\ndata:b\n: comment\nid: 7\n\n");
        assert_eq!(&*event.data, b"a\nb");
        assert_eq!(event.name, None);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let big = Bytes::from(vec![b'x'; SSE_LINE_BYTES_MAX + 1]);
        assert_eq!(framer.push(big, &mut out), Err(Oversized));
    }

    proptest! {
        /// However a stream is cut into frames, the same events come out, byte for byte.
        #[test]
        fn framing_does_not_depend_on_frame_boundaries(
            events in prop::collection::vec("[a-z :{}\"]{0,20}", 0..10),
            cuts in prop::collection::vec(0usize..400, 0..10),
        ) {
            let stream: Vec<u8> = events.iter().flat_map(|e| format!("data: {e}\n\n").into_bytes()).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut framer = Framer::default();
            let mut out = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                framer.push(Bytes::copy_from_slice(&stream[last..cut]), &mut out).unwrap();
                last = cut;
            }
            prop_assert_eq!(framer.finish(), None);
            let joined: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
            prop_assert_eq!(joined, stream);
            prop_assert_eq!(out.len(), events.len());
        }
    }
}
