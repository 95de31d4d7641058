//! A provider's answer, as the gateway reads it: every adapter's reader, for every route it
//! serves, whole and streamed, success and error, fed the bytes in pieces whose sizes the
//! input chooses. None may panic, and each reading is given once the answer ends.
#![no_main]

use bytes::Bytes;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use tollgate_gateway::http::route::Api;
use tollgate_gateway::providers::Answer;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let piece_bytes = usize::from(shape >> 4) * 97 + 1;
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amzn-errortype",
        http::HeaderValue::from_static("ThrottlingException"),
    );
    for provider in common::providers() {
        for route in Api::ALL {
            if provider.adapter.serves(route, "p").is_err() {
                continue;
            }
            let answer = Answer {
                route,
                model: "p/model",
                success: shape & 1 == 0,
                stream: shape & 2 != 0,
                sse: shape & 4 != 0,
                include_usage: shape & 8 != 0,
                hide_usage: shape & 8 == 0,
                headers: &headers,
                created_s: 0,
                pricer: None,
            };
            let mut reader = provider.adapter.reader(&answer);
            let mut failed = false;
            for piece in body.chunks(piece_bytes) {
                if reader.push(Bytes::copy_from_slice(piece)).is_err() {
                    failed = true;
                    break;
                }
            }
            if !failed {
                let _ = reader.finish();
            }
            let _ = reader.reading();
        }
    }
});
