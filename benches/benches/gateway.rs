//! Criterion benches of the gateway's per-request work that does not touch a socket: reading a
//! large body's routing fields, splicing the upstream body, metering a streamed chunk, and
//! admission through the budget's wait line, and the routing decision of an attempt.
//!
//! `cargo bench -p tollgate-benches --bench gateway`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tollgate_gateway::json_scan;
use tollgate_gateway::limits::STREAM_TEXT_BYTES_MAX;
use tollgate_gateway::providers::openai::read::OpenAiTally;
use tollgate_gateway::providers::read::{Events, Reader as _, Tally as _};
use tollgate_gateway::providers::sse::{self, Framer};

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

/// The spend guards' part of a call: the loop detector's fingerprint of an agent's body (a
/// walk of the conversation the call's one scan found), the prompt prefix every event
/// carries, a loop window judged and recorded, and a velocity ceiling's minute judged and
/// charged.
fn guards(c: &mut Criterion) {
    use tollgate_engine::Nanos;
    use tollgate_engine::guard::{Action, CallPrint, LoopRule, LoopWindow, SpendWindow};
    use tollgate_gateway::config::{GuardsConfig, LoopConfig};
    let rule = LoopRule {
        repeats: 5,
        window_ms: 60_000,
        growing_calls: 8,
    };
    let guards = tollgate_gateway::guards::Guards::new(&GuardsConfig {
        loops: Some(LoopConfig {
            rule,
            messages: 2,
            action: Action::Throttle,
        }),
        velocity: Vec::new(),
    });
    let mut group = c.benchmark_group("guards");
    for size in [4_000, 400_000] {
        let body = agent_body(size);
        // The request path's one scan of the body finds the conversation; the fingerprint
        // walks only it.
        let scanned = tollgate_gateway::json_scan::scan(&body, ["messages"]).unwrap();
        let context = scanned.members[0].clone().unwrap().value;
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("fingerprint {} KB", size / 1000), |b| {
            b.iter(|| {
                guards
                    .print(
                        "anthropic/claude-sonnet-4-5",
                        black_box(&body),
                        context.clone(),
                    )
                    .unwrap()
            })
        });
        // What the prompt begins with, for its events: 4 KiB hashed whatever the body's size.
        let prefixes = tollgate_gateway::prefix::Prefixes::with_key((1, 2));
        group.bench_function(format!("prompt_prefix {} KB", size / 1000), |b| {
            b.iter(|| {
                prefixes
                    .of(black_box(&body), None, Some(context.clone()))
                    .unwrap()
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let mut window = LoopWindow::new();
    let mut now_ms = 0i64;
    group.bench_function("loop_window_judge_and_record", |b| {
        b.iter(|| {
            now_ms += 1;
            let call = CallPrint {
                fingerprint: black_box(now_ms as u64 % 7),
                answer: Some(now_ms as u64),
                context_bytes: 4_000,
            };
            let verdict = window.judge(&rule, call, now_ms);
            window.record(&rule, call, now_ms);
            black_box(verdict)
        })
    });
    let mut spend = SpendWindow::new();
    group.bench_function("velocity_judge_and_charge", |b| {
        b.iter(|| {
            now_ms += 7;
            let verdict = spend.judge(Nanos(u64::MAX), now_ms).is_ok();
            spend.add(now_ms, Nanos(6_300));
            black_box(verdict)
        })
    });
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

/// The routing decision of one attempt: a deployment placed by each balance, among one and
/// four deployments, and the outcome learned (breaker, time to first byte), as
/// `proxy::attempt` does per attempt; and a group's plan drawn.
fn routing(c: &mut Criterion) {
    use std::path::Path;
    use std::sync::Arc;
    use tollgate_engine::routing::{Balance, BreakerConfig};
    use tollgate_gateway::config::Config;
    use tollgate_gateway::providers::Provider;
    use tollgate_gateway::routing::{Router, place};

    let text = r#"
rate_card = "rates.toml"
[[provider]]
name = "one"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[provider]]
name = "four"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[provider.deployment]]
name = "a"
weight = 3
[[provider.deployment]]
name = "b"
[[provider.deployment]]
name = "c"
[[provider.deployment]]
name = "d"
[[group]]
name = "prod/chat"
candidates = [{ model = "four/m", weight = 3 }, { model = "one/m", weight = 1 }]
"#;
    let config = Config::from_toml(text, "bench", Path::new(".")).unwrap();
    let router = Router::new(&config);
    let providers: Vec<Arc<Provider>> = config
        .providers
        .iter()
        .map(|p| Arc::new(Provider::new(p.clone(), BreakerConfig::default(), |_| None).unwrap()))
        .collect();
    let mut now_us = 1_000_000i64;
    for (provider, name) in providers.iter().zip(["one deployment", "four deployments"]) {
        for balance in [Balance::Weighted, Balance::LeastInFlight, Balance::Latency] {
            let id = format!("routing/place and learn, {name}, {}", balance.as_str());
            c.bench_function(&id, |b| {
                let mut random = 0x9E37_79B9_7F4A_7C15u64;
                b.iter(|| {
                    now_us += 1;
                    random = random
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    let (index, _) = place(provider, balance, now_us, random, 0).unwrap();
                    let health = &provider.deployments[index].health;
                    health.started();
                    health.breaker.succeeded();
                    health.measured(now_us, 2_000 + random % 1_000);
                    health.ended();
                    black_box(index)
                })
            });
        }
    }
    c.bench_function("routing/a group's plan drawn", |b| {
        let mut random = 1u64;
        b.iter(|| {
            random = random.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(router.group_plan(black_box("prod/chat"), random))
        })
    });
    c.bench_function("routing/retry budget: a call and a retry", |b| {
        b.iter(|| {
            now_us += 1;
            router.retry_budget.called(now_us);
            black_box(router.retry_budget.try_retry(now_us))
        })
    });
}

criterion_group!(
    benches,
    scan,
    guards,
    stream,
    stream_reader,
    admission,
    routing
);
criterion_main!(benches);
