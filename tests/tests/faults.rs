//! The reliability suite's fault injections that need a test of their own (RELIABILITY.md has
//! the table): each breaks something real under load, then checks what the system promises
//! (every answered call has exactly one event, nothing is double-booked, no budget passes its
//! limit) and reports its figures.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::fault::{self, Figures, Load, SmallDisk};
use tollgate_tests::stack::{ORG, Stack};

fn chat() -> serde_json::Value {
    json!({
        "model": "openai/gpt-4o-mini",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say something short."}],
    })
}

/// The events folder on a disk that fills up under load: new calls get 503 while it is full,
/// calls in flight keep their events (held back, written once there is room), and calls are
/// answered again as soon as space comes back.
#[test]
fn a_full_events_disk_refuses_new_calls_and_loses_no_event() {
    let mut stack = Stack::prepared("disk-full-events", ORG, "", "", &[]);
    let Some(disk) = SmallDisk::mount(&stack.path().join("events"), 16 << 20) else {
        return;
    };
    stack.launch();
    let (key, _) = stack.create_key("open", json!({}));
    let load = Load::start(stack.address(), &key, 4, &chat());
    std::thread::sleep(Duration::from_millis(1500));
    let filled_at = Instant::now();
    let filler = disk.fill();
    std::thread::sleep(Duration::from_millis(2000));
    let full_for = filled_at.elapsed();
    assert!(
        stack.metric("tollgate_requests_shed_total") > 0,
        "a full disk refuses new calls"
    );
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let seen = load.stop();
    stack.stop();
    let during = fault::statuses_between(
        &seen,
        filled_at + Duration::from_millis(200),
        filled_at + full_for,
    );
    let events = stack.events();
    let (answered, lost, doubled) = fault::books(&seen, &events);
    let recover = fault::recovered_after(&seen, freed_at);
    Figures {
        fault: "disk full on the events folder",
        answered,
        lost,
        doubled,
        over_limit_nanos: 0,
        recover_ms: recover.map(|d| d.as_millis() as u64),
        note: format!("while full: {during:?} (status: calls)"),
    }
    .report();
    assert!(answered > 50, "{answered} calls answered");
    assert_eq!((lost, doubled), (0, 0), "every answered call has one event");
    assert!(
        during.get(&503).copied().unwrap_or(0) > 0 && during.get(&200).copied().unwrap_or(0) == 0,
        "while the disk is full new calls get 503: {during:?}"
    );
    assert!(
        recover.is_some_and(|d| d < Duration::from_secs(1)),
        "{recover:?}"
    );
}

/// The Parquet folder on a disk that fills up under load: calls go on being answered (Parquet
/// is downstream of the log), nothing is written half, and once space comes back the files
/// hold every event exactly once.
#[test]
fn a_full_parquet_disk_delays_the_files_and_loses_nothing() {
    let org = format!("{ORG}\n[parquet]\nroll_interval_ms = 200\n");
    let mut stack = Stack::prepared("disk-full-parquet", &org, "", "", &[]);
    let Some(disk) = SmallDisk::mount(&stack.path().join("data"), 8 << 20) else {
        return;
    };
    stack.launch();
    let (key, _) = stack.create_key("open", json!({}));
    let load = Load::start(stack.address(), &key, 4, &chat());
    std::thread::sleep(Duration::from_millis(1000));
    let filled_at = Instant::now();
    let filler = disk.fill();
    std::thread::sleep(Duration::from_millis(2000));
    let full_until = Instant::now();
    let written_while_full = tollgate_tests::parquet_rows(&stack.path().join("data")).len();
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let seen = load.stop();
    stack.stop();
    let during = fault::statuses_between(&seen, filled_at, full_until);
    let events = stack.events();
    let (answered, lost, doubled) = fault::books(&seen, &events);
    let rows = tollgate_tests::parquet_rows(&stack.path().join("data"));
    let distinct: std::collections::HashSet<&str> =
        rows.iter().map(|(id, _)| id.as_str()).collect();
    let logged: i128 = events
        .iter()
        .map(|e| i128::from(e["cost_nanos"].as_u64().unwrap()))
        .sum();
    let filed: i128 = rows.iter().map(|(_, cost)| cost).sum();
    Figures {
        fault: "disk full on the Parquet folder",
        answered,
        lost: (events.len() - distinct.len().min(events.len())) as u64 + lost,
        doubled: (rows.len() - distinct.len()) as u64 + doubled,
        over_limit_nanos: 0,
        recover_ms: None,
        note: format!(
            "while full: {during:?} (status: calls); {} events, {} Parquet rows, {written_while_full} of them filed before space came back",
            events.len(),
            rows.len()
        ),
    }
    .report();
    assert!(
        during.get(&200).copied().unwrap_or(0) > 0,
        "calls go on: {during:?}"
    );
    assert_eq!((lost, doubled), (0, 0));
    assert_eq!(rows.len(), events.len(), "every event filed once");
    assert_eq!(distinct.len(), events.len());
    assert_eq!(filed, logged, "Parquet sums equal the log to the nano");
}
