//! Criterion benches of the gateway's per-request work that does not touch a socket: reading a
//! large body's routing fields, splicing the upstream body, metering a streamed chunk, and
//! admission through the budget's wait line.
//!
//! `cargo bench -p tollgate-benches --bench gateway`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tollgate_gateway::limits::STREAM_TEXT_BYTES_MAX;
use tollgate_gateway::providers::openai::read::OpenAiTally;
use tollgate_gateway::providers::read::{Events, Reader as _, Tally as _};
use tollgate_gateway::providers::sse::{self, Framer};
use tollgate_gateway::proxy::json_scan;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An agent's request: a long conversation of ordinary text, about `bytes` in all.
fn agent_body(bytes: usize) -> Vec<u8> {
    let turn = "The quick brown fox jumps over the lazy dog; \"quoted\" and escaped \\ text. ";
    let mut messages = Vec::new();
    let mut size = 0;
    while size < bytes {
        let content = turn.repeat(60);
        size += content.len() + 40;
        messages.push(json!({"role": if messages.len() % 2 == 0 { "user" } else { "assistant" }, "content": content}));
    }
    serde_json::to_vec(&json!({
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}],
        "model": "anthropic/claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": true,
    }))
    .unwrap()
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("body");
    for size in [4_000, 400_000] {
        let body = agent_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("scan {} KB", size / 1000), |b| {
            b.iter(|| json_scan::scan(black_box(&body), tollgate_gateway::proxy::WANTED).unwrap())
        });
        group.bench_function(
            format!("serde_json tree {} KB (for comparison)", size / 1000),
            |b| b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap()),
        );
    }
    group.finish();
}

fn stream(c: &mut Criterion) {
    let chunk = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hello\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    );
    c.bench_function("stream chunk frame+meter", |b| {
        let mut framer = Framer::default();
        let mut tally = OpenAiTally::new(1 << 20);
        let mut events = Vec::new();
        b.iter(|| {
            events.clear();
            framer.push(chunk.clone(), &mut events).unwrap();
            for event in &events {
                let parsed = sse::parse(event);
                black_box(tally.observe(&parsed.data));
            }
            if tally.kept.text.len() > 1 << 19 {
                tally.kept.text.clear();
            }
        })
    });
}

/// The streamed hot path as the metered body drives it: one chunk through the OpenAI adapter's
/// reader (framing, the tally, forwarding the same bytes), with production's text cap.
fn stream_reader(c: &mut Criterion) {
    let chunk = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hello\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    );
    c.bench_function("stream chunk through the reader", |b| {
        let mut reader = Events::new(OpenAiTally::new(STREAM_TEXT_BYTES_MAX), false);
        b.iter(|| black_box(reader.push(chunk.clone()).unwrap()));
    });
}

/// Admission through the budget's wait line when no call waits anywhere (the usual case): the
/// line's cost is one atomic load beside the reservation itself, and a settle's wake-up one
/// more. The future completes at its first poll, so it is polled by hand with a no-op waker.
fn admission(c: &mut Criterion) {
    use std::future::Future as _;
    use std::task::{Context, Poll, Waker};
    use tollgate_engine::identity::test_directory;
    use tollgate_engine::{Ask, BudgetSpec, Nanos, Period, UnixMs, reserve_within};
    use tollgate_gateway::admission::Waiting;
    use tollgate_gateway::config::AdmissionConfig;

    let now = UnixMs(1_768_435_200_000);
    let limited = BudgetSpec::limited(Nanos(u64::MAX / 2), Period::Month);
    let (_dir, allocation) = test_directory(limited, limited, limited).unwrap();
    let waiting = Waiting::new(AdmissionConfig::default());
    let ask = Ask::exactly(Nanos(1_000));
    let mut context = Context::from_waker(Waker::noop());
    c.bench_function("admission/empty line, reserve and settle", |b| {
        b.iter(|| {
            let admitted = waiting.admit(&allocation.name, true, || {
                reserve_within(&allocation, now, ask)
            });
            let mut admitted = std::pin::pin!(admitted);
            let Poll::Ready(Ok((reservation, _))) = admitted.as_mut().poll(&mut context) else {
                panic!("an empty line admits at the first poll");
            };
            reservation.settle(Nanos(700));
            waiting.settled(&allocation.name);
        })
    });
    c.bench_function("admission/reserve and settle alone, for comparison", |b| {
        b.iter(|| {
            reserve_within(&allocation, now, black_box(ask))
                .unwrap()
                .settle(Nanos(700))
        })
    });
}

criterion_group!(benches, scan, stream, stream_reader, admission);
criterion_main!(benches);
