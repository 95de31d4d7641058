//! The event log stays bounded: segments every reader is past (the spend checkpoint, the
//! Parquet writer, the Kafka shipper) are removed, a restart restores budgets from the
//! checkpoint plus the log after it, and when a reader stays behind (a Kafka broker away) the
//! log stops growing at its cap by refusing new requests rather than losing events.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_sink::rollup::{self, Dimension};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack};

const BUDGETED: &str = "\n[[allocation]]\nname = \"budgeted\"\nproject = \"chatbot\"\nbudget = { limit = \"5.00\", period = \"month\" }\n";

fn segments(stack: &Stack) -> usize {
    std::fs::read_dir(stack.path().join("events/log"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count()
}

fn call(stack: &Stack, key: &str) -> u16 {
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 4,
        "messages": [{"role": "user", "content": "keep the log busy"}]});
    post_json(stack.address(), "/v1/chat/completions", key, &body).status
}

#[test]
fn consumed_segments_go_and_a_restart_restores_spend_from_the_checkpoint() {
    let sections = "[events]\nsegment_bytes_max = 4096\ncheckpoint_interval_ms = 100\n\n[parquet]\nroll_interval_ms = 100\n";
    let mut stack = Stack::start_with("retention", &format!("{ORG}{BUDGETED}"), "", sections, &[]);
    let (key, _) = stack.create_key("budgeted", json!({}));
    for _ in 0..80 {
        assert_eq!(call(&stack, &key), 200);
    }
    let spent = stack.spent_nanos("budgeted");
    assert!(spent > 0);
    // Written to Parquet and checkpointed, the old segments go; only the newest stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&stack) > 2 {
        assert!(
            Instant::now() < deadline,
            "consumed segments were not removed: {} left",
            segments(&stack)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stack.path().join("state/spend.checkpoint").is_file());
    // kill -9, then start on the checkpoint and what is left of the log: the same spend.
    stack.kill_and_restart();
    assert_eq!(stack.spent_nanos("budgeted"), spent);
    // A graceful stop writes the checkpoint at the end; the next start agrees too.
    assert_eq!(call(&stack, &key), 200);
    let spent = stack.spent_nanos("budgeted");
    stack.restart();
    assert_eq!(stack.spent_nanos("budgeted"), spent);
    // Nothing was lost on the way: every call is in the Parquet files, costed as settled.
    stack.admin("POST", "/admin/v1/events/flush", None);
    let rows = rollup::report(
        &stack.path().join("data"),
        None,
        None,
        Dimension::Allocation,
    )
    .unwrap();
    let budgeted = rows
        .iter()
        .find(|r| r.key.as_deref() == Some("budgeted"))
        .unwrap();
    assert_eq!(budgeted.events, 81);
    assert_eq!(budgeted.cost_nanos, i128::from(spent));
}

#[test]
fn with_kafka_away_the_log_stops_at_its_cap_and_refuses_rather_than_loses() {
    // A broker that is not there: nothing can be shipped, so nothing can be removed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sections = format!(
        "[events]\nsegment_bytes_max = 4096\ncheckpoint_interval_ms = 100\nlog_bytes_max = 24000\n\n\
         [parquet]\nenabled = false\n\n[kafka]\nbrokers = \"{dead}\"\nreconcile = false\ncontrol = false\ndelivery_timeout_ms = 1000\n"
    );
    let stack = Stack::start_with("log-cap", ORG, "", &sections, &[]);
    let (key, _) = stack.create_key("open", json!({}));
    let mut answered = 0;
    let refusal = loop {
        let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 4,
            "messages": [{"role": "user", "content": "keep the log busy"}]});
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &body);
        match answer.status {
            200 => answered += 1,
            503 => break answer,
            other => panic!("unexpected {other}"),
        }
        assert!(answered < 500, "the log never reached its cap");
    };
    assert!(
        answered > 5,
        "the log took events until its cap: {answered}"
    );
    let error = &refusal.json()["error"];
    assert!(
        error["message"].as_str().unwrap().contains("disk cap"),
        "{error}"
    );
    assert!(refusal.headers.iter().any(|(n, _)| n == "retry-after"));
    // Every answered call is in the log. The refusal is shed before admission, as the
    // contract says: counted, not logged (logging is what is full).
    let events = stack.events();
    assert_eq!(
        events.iter().filter(|e| e["status"] == "ok").count(),
        answered
    );
    let metrics = tollgate_tests::http::request(stack.address(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tollgate_requests_shed_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    let bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_event_log_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes >= 24_000, "{bytes}");
}
