//! The framings of streamed answers, alone: server-sent events (every OpenAI-style,
//! Anthropic and Gemini stream) and the AWS event stream (Bedrock's ConverseStream), fed in
//! pieces whose sizes the input chooses. Neither may panic; the SSE framer gives back every
//! byte it was given, in order, as whole events and a tail; every event-stream frame decoded
//! encodes back to bytes that decode to the same frame.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::providers::bedrock::eventstream::{Decoder, encode_frame};
use tollgate_gateway::providers::sse::{Framer, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let piece_bytes = usize::from(shape) * 13 + 1;
    sse(body, piece_bytes);
    event_stream(body, piece_bytes);
});

fn sse(body: &[u8], piece_bytes: usize) {
    let (mut framer, mut events, mut given) = (Framer::default(), Vec::new(), 0);
    for piece in body.chunks(piece_bytes) {
        if framer
            .push(Bytes::copy_from_slice(piece), &mut events)
            .is_err()
        {
            break;
        }
        given += piece.len();
    }
    let tail = framer.finish();
    let mut back: Vec<u8> = Vec::with_capacity(given);
    for event in events.iter().chain(tail.iter()) {
        let _ = parse(event);
        back.extend_from_slice(event);
    }
    if given == body.len() {
        assert_eq!(back, body, "the framer lost, added or reordered bytes");
    }
}

fn event_stream(body: &[u8], piece_bytes: usize) {
    let (mut decoder, mut frames) = (Decoder::default(), Vec::new());
    for piece in body.chunks(piece_bytes) {
        if decoder.push(piece, &mut frames).is_err() {
            break;
        }
    }
    for frame in frames {
        let headers: Vec<(&str, &str)> = frame
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (mut again, mut decoded) = (Decoder::default(), Vec::new());
        let encoded = encode_frame(&headers, &frame.payload);
        assert!(
            again.push(&encoded, &mut decoded).is_ok(),
            "a frame re-encoded is refused"
        );
        assert_eq!(decoded, [frame], "a frame re-encoded decodes to another");
    }
}
