//! The spend guardrails against a running gateway: a looping agent is caught within the
//! configured repeats and only it is stopped (blocked until an operator clears it with the CLI,
//! or throttled with `Retry-After`), and a spend-velocity ceiling holds under 64 concurrent
//! clients to within what the calls in flight held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack, read_lines};

/// A coding agent's call: the task, then the tool call and result of its latest step.
fn step(task: &str, tool_result: &str) -> Value {
    json!({"model": "openai/gpt-4o-mini", "max_tokens": 8, "messages": [
        {"role": "user", "content": task},
        {"role": "assistant", "content": "run the tests"},
        {"role": "tool", "content": tool_result},
    ]})
}

fn cli(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = stack.cli(args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_looping_agent_is_blocked_alone_until_an_operator_clears_it() {
    let guards = "[guards.loop]\nrepeats = 4\nwindow_ms = 60000\naction = \"block\"\n";
    let mut stack = Stack::start_with("guards-block", ORG, "", guards, &[]);
    let (looper, looper_id) = stack.create_key("open", json!({"agent": "looper"}));
    let (worker, _) = stack.create_key("open", json!({"agent": "worker"}));
    let address = stack.address();
    let call = |key: &str, body: &Value| post_json(address, "/v1/chat/completions", key, body);

    // The same failing step again and again: the fourth is the loop.
    for n in 1..=3 {
        let answer = call(&looper, &step("fix the build", "1 test failed"));
        assert_eq!(answer.status, 200, "call {n}: {}", answer.text());
        // The rest of the fleet works on, each step new.
        let answer = call(&worker, &step("write docs", &format!("page {n} done")));
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let caught = call(&looper, &step("fix the build", "1 test failed"));
    assert_eq!(caught.status, 403, "{}", caught.text());
    let error = &caught.json()["error"];
    assert_eq!(error["type"], "loop_detected", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains(&looper_id),
        "{error}"
    );
    // Blocked: even a new step of the looping key is refused, and no model is called.
    let served = stack.mock_requests();
    let blocked = call(&looper, &step("something else", "fresh"));
    assert_eq!(blocked.status, 403, "{}", blocked.text());
    assert_eq!(blocked.header("retry-after"), None);
    assert_eq!(stack.mock_requests(), served);
    for n in 4..=8 {
        let answer = call(&worker, &step("write docs", &format!("page {n} done")));
        assert_eq!(
            answer.status,
            200,
            "the rest of the fleet: {}",
            answer.text()
        );
    }

    let listed = stack.admin("GET", "/admin/v1/guards", None).json();
    let blocks = listed["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{listed}");
    assert_eq!(
        (&blocks[0]["scope"], &blocks[0]["name"], &blocks[0]["guard"]),
        (&json!("key"), &json!(looper_id), &json!("loop_detected"))
    );
    let (ok, list) = cli(&stack, &["guards", "list"]);
    assert!(
        ok && list.contains(&looper_id) && list.contains("loop_detected"),
        "{list}"
    );

    // The block is journaled off the request path, then survives a kill -9: the looping key
    // is still refused after the restart, and the rest of the fleet is not.
    let audit_path = stack.path().join("state/audit.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !read_lines(&audit_path)
        .iter()
        .any(|a| a["action"] == "guard_block")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the block was never journaled"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stack.kill_and_restart();
    let address = stack.address();
    let call = |key: &str, body: &Value| post_json(address, "/v1/chat/completions", key, body);
    let still = call(&looper, &step("after the restart", "fresh"));
    assert_eq!(still.status, 403, "{}", still.text());
    let answer = call(&worker, &step("write docs", "page 9 done"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        stack.admin("GET", "/admin/v1/guards", None).json()["blocks"][0]["name"],
        json!(looper_id)
    );
    // Clearing what is not blocked says so; clearing the block lets the agent call again.
    let (ok, text) = cli(&stack, &["guards", "clear", "agent", "worker"]);
    assert!(!ok && text.contains("no block"), "{text}");
    let (ok, text) = cli(&stack, &["guards", "clear", "key", &looper_id]);
    assert!(ok && text.contains("cleared"), "{text}");
    let answer = call(&looper, &step("fix the build", "1 test failed"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        stack.admin("GET", "/admin/v1/guards", None).json()["blocks"],
        json!([])
    );
    assert!(stack.metric("tollgate_guard_refused_total") >= 1);
    // The clear is journaled too: a restart does not put the block back.
    stack.restart();
    assert_eq!(
        stack.admin("GET", "/admin/v1/guards", None).json()["blocks"],
        json!([])
    );
    let answer = post_json(
        stack.address(),
        "/v1/chat/completions",
        &looper,
        &step("after the clear", "fresh"),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());

    stack.stop();
    let alerts = read_lines(&stack.path().join("events/alerts.jsonl"));
    let told: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "loop_detected")
        .collect();
    assert_eq!(told.len(), 1, "{alerts:#?}");
    assert_eq!(
        (&told[0]["action"], &told[0]["scope"], &told[0]["name"]),
        (&json!("block"), &json!("key"), &json!(looper_id))
    );
    assert!(told[0]["id"].as_str().unwrap().starts_with("alt_"));
    let audit = read_lines(&stack.path().join("state/audit.jsonl"));
    assert!(
        audit.iter().any(|a| a["action"] == "clear_guard"),
        "{audit:#?}"
    );
    // Refused calls are usage events with the guard's status, costing nothing.
    let events = stack.events();
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "loop_detected")
        .collect();
    assert_eq!(refused.len(), 3, "{events:#?}");
    assert!(refused.iter().all(|e| e["cost_nanos"] == 0));
}

/// Per minute on allocation `open`: 0.001, about 160 of these small calls.
const CEILING_NANOS: u64 = 1_000_000;

#[test]
fn a_spend_velocity_ceiling_holds_under_64_clients_and_loops_are_throttled() {
    let guards = "[guards.loop]\nrepeats = 3\nwindow_ms = 60000\ngrowing_calls = 0\naction = \"throttle\"\n\n\
                  [[guards.velocity]]\nscope = \"allocation\"\nname = \"open\"\nper_minute = \"0.001\"\naction = \"throttle\"\n";
    let mut stack = Stack::start_with("guards-velocity", ORG, "", guards, &[]);
    let (fleet, _) = stack.create_key("open", json!({"agent": "fleet"}));
    let (other, _) = stack.create_key("openai-only", json!({"agent": "other"}));
    let address = stack.address();

    // 64 clients, every call a new step (no loop), until each has been throttled.
    let throttled = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|client| {
            let (fleet, throttled, stop) = (fleet.clone(), throttled.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                let mut retry_after = None;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                    n += 1;
                    let body = step("survey", &format!("client {client} step {n}"));
                    let answer = post_json(address, "/v1/chat/completions", &fleet, &body);
                    match answer.status {
                        200 => {}
                        429 => {
                            let error = &answer.json()["error"];
                            assert_eq!(error["type"], "spend_velocity_exceeded", "{error}");
                            retry_after = answer.header("retry-after").map(str::to_owned);
                            throttled.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        status => panic!("{status}: {}", answer.text()),
                    }
                }
                retry_after
            })
        })
        .collect();
    // While the fleet's allocation is throttled, another allocation's agent is untouched.
    let mut others = 0;
    while throttled.load(Ordering::Relaxed) < 64 && started.elapsed() < Duration::from_secs(20) {
        others += 1;
        let body = step("elsewhere", &format!("step {others}"));
        let answer = post_json(address, "/v1/chat/completions", &other, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let retry_after = client.join().unwrap();
        let seconds: u64 = retry_after.expect("a Retry-After").parse().unwrap();
        assert!((1..=61).contains(&seconds), "{seconds}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");

    // A loop on the other allocation is throttled with a Retry-After, not blocked.
    let looping = step("fix the build", "1 test failed");
    for _ in 0..2 {
        let answer = post_json(address, "/v1/chat/completions", &other, &looping);
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let answer = post_json(address, "/v1/chat/completions", &other, &looping);
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "loop_detected");
    assert!(answer.header("retry-after").is_some());

    stack.stop();
    // Every call of the fleet fell within one minute: what it spent is at most the ceiling
    // and what the calls in flight (64 at most) were holding, each at least its cost.
    let events = stack.events();
    let spent: Vec<u64> = events
        .iter()
        .filter(|e| e["allocation"] == "open" && e["status"] == "ok")
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .collect();
    let total: u64 = spent.iter().sum();
    let dearest = spent.iter().copied().max().unwrap();
    assert!(total >= CEILING_NANOS, "{total}");
    assert!(
        total <= CEILING_NANOS + 64 * dearest,
        "{total} spent over {} calls, {dearest} the dearest",
        spent.len()
    );
    println!(
        "velocity: {} calls spent {total} nanos against a ceiling of {CEILING_NANOS} (+{} over, \
         64 in flight at {dearest} the dearest) in {elapsed:?}",
        spent.len(),
        total.saturating_sub(CEILING_NANOS)
    );
    let alerts = read_lines(&stack.path().join("events/alerts.jsonl"));
    let velocity: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "spend_velocity_exceeded")
        .collect();
    assert_eq!(velocity.len(), 1, "told once a minute: {alerts:#?}");
    assert_eq!(
        (&velocity[0]["scope"], &velocity[0]["name"]),
        (&json!("allocation"), &json!("open"))
    );
}
