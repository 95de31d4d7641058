//! A budget spent to the last cent and never past it: calls whose room is only held by calls
//! in flight wait in line instead of getting 402, a call held short of its bound is capped at
//! what the hold affords, and a wait that runs out is a retryable `429 budget_busy`.
//!
//! Each test runs the real gateway and mock provider; the mock answers `answer_tokens` tokens
//! whatever `max_tokens` allows, as a model that finishes early does.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::nanos;
use tollgate_tests::stack::{ORG, Stack};

/// While calls hold whole bounds only a few are in flight at a time and the rest wait in line;
/// a race's wait is long enough for the line to drain on a loaded machine.
const LONG_WAIT: &str = "\n[admission]\nwait_ms_max = 120000\n";

/// The org of the shared stack, with one allocation of `limit` (a decimal in the card's
/// currency) that never resets.
fn org(limit: &str) -> String {
    format!(
        "{ORG}\n[[allocation]]\nname = \"shared\"\nproject = \"chatbot\"\nbudget = {{ limit = \"{limit}\", period = \"total\" }}\n"
    )
}

/// What the clients saw, by status, with the 402 bodies.
#[derive(Default)]
struct Seen {
    ok: u64,
    clamped: u64,
    /// Streams the gateway ended at the budget, as the provider ends one at its limit.
    stopped: u64,
    refused: Vec<Value>,
    other: Vec<String>,
}

/// How a streamed answer ended: `Some(true)` stopped at the output limit (OpenAI's
/// `finish_reason: "length"`, Anthropic's `stop_reason: "max_tokens"`), `Some(false)` at its
/// own end; `None` when it is not a whole stream (no `[DONE]` or `message_stop` last, or no
/// finish at all). Not a stream: `Some(false)`.
fn stream_end(body: &str) -> Option<bool> {
    if !body.starts_with("data:") && !body.starts_with("event:") {
        return Some(false);
    }
    let datas: Vec<Value> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let openai = body.trim_end().ends_with("data: [DONE]");
    let anthropic = datas.last().is_some_and(|d| d["type"] == "message_stop");
    let reasons: Vec<&Value> = if openai {
        datas
            .iter()
            .filter_map(|d| d["choices"].get(0))
            .map(|c| &c["finish_reason"])
            .filter(|r| !r.is_null())
            .collect()
    } else {
        datas
            .iter()
            .filter(|d| d["type"] == "message_delta")
            .map(|d| &d["delta"]["stop_reason"])
            .collect()
    };
    match (openai || anthropic, reasons.as_slice()) {
        (true, [reason]) => Some(*reason == "length" || *reason == "max_tokens"),
        _ => None,
    }
}

/// `clients` threads each send `request` until the budget refuses them with 402.
fn race(stack: &Stack, path: &'static str, key: &str, clients: usize, request: &Value) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let address = stack.address();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (key, request, seen) = (key.to_owned(), request.clone(), Arc::clone(&seen));
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let answer = post_json(address, path, &key, &request);
                    let mut seen = seen.lock().unwrap();
                    match answer.status {
                        200 => {
                            seen.ok += 1;
                            if answer.header("x-tollgate-max-tokens-clamped").is_some() {
                                seen.clamped += 1;
                            }
                            match stream_end(&answer.text()) {
                                Some(true) => seen.stopped += 1,
                                Some(false) => {}
                                None => seen.other.push(format!("cut: {}", answer.text())),
                            }
                        }
                        402 => {
                            // OpenAI's envelope holds the fields in `error`, Anthropic's too.
                            seen.refused.push(answer.json()["error"].clone());
                            return;
                        }
                        status => seen.other.push(format!("{status}: {}", answer.text())),
                    }
                }
                panic!("the budget never ran out");
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

/// The books after a race: the events of the admitted calls sum to the table's spend, which
/// is within the limit; every 402 was a budget spent (no room for the least the call needed).
fn check_books(stack: &mut Stack, seen: &Seen, limit_nanos: u64) -> u64 {
    let spent = stack.spent_nanos("shared");
    stack.stop();
    assert!(
        seen.other.is_empty(),
        "only 200 and 402: {:?}",
        &seen.other[..seen.other.len().min(3)]
    );
    assert!(spent <= limit_nanos, "spent {spent} of {limit_nanos}");
    for body in &seen.refused {
        assert_eq!(body["type"], "budget_exceeded");
        let (remaining, requested) = (
            nanos(body["remaining"].as_str().unwrap()),
            nanos(body["requested"].as_str().unwrap()),
        );
        assert!(remaining < requested, "402 with room for the call: {body}");
    }
    let events = stack.events();
    let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
    assert_eq!(ok.len() as u64, seen.ok);
    let cost: u64 = ok.iter().map(|e| e["cost_nanos"].as_u64().unwrap()).sum();
    assert_eq!(cost, spent, "events and budget table agree to the nano");
    spent
}

/// After a race every client ended on a 402, and what is left is less than one call's least
/// cost (its prompt bound and 16 output tokens): at least `percent` of the limit was spent.
fn assert_spent_to_the_end(seen: &Seen, clients: usize, spent: u64, limit: u64, percent: u64) {
    assert_eq!(seen.refused.len(), clients, "every client ends on a 402");
    let least = seen
        .refused
        .iter()
        .map(|b| nanos(b["requested"].as_str().unwrap()))
        .max()
        .unwrap();
    assert!(
        spent + least > limit,
        "spent {spent}, least {least}, limit {limit}"
    );
    assert!(
        spent * 100 >= limit * percent,
        "spent {spent} of {limit} before the first 402"
    );
}

/// `clients` streams with `max_tokens` 2048 and 10-token answers race a 0.02 allocation, as
/// in the starvation report: the bound of one call (2,048 output tokens at gpt-4o-mini's
/// price) is about 0.001 and its answer costs about 0.000012, so 20 bounds fill the limit
/// where some 1,600 answers do. A call's least cost (its prompt's byte bound and 16 tokens) is
/// under 0.2 % of the limit, so the budget is spent past 99 % before the first 402.
fn streams_spend_the_budget_before_any_402(clients: usize) {
    let mut stack = Stack::start("budget-last-cent", &org("0.02"), LONG_WAIT);
    let (key, _) = stack.create_key("shared", json!({}));
    let request = json!({
        "model": "openai/gpt-4o-mini", "max_tokens": 2048, "stream": true,
        "messages": [{"role": "user", "content": "race"}],
        "mock": {"answer_tokens": 10, "token_ms": 1},
    });
    let seen = race(&stack, "/v1/chat/completions", &key, clients, &request);
    let limit = nanos("0.02");
    let spent = check_books(&mut stack, &seen, limit);
    eprintln!(
        "{clients} streams: {} served, {} stopped, spent {spent} of {limit} nanos",
        seen.ok, seen.stopped
    );
    assert_spent_to_the_end(&seen, clients, spent, limit, 99);
    assert!(seen.ok >= 1_000, "{} calls served", seen.ok);
    // A stream is stopped only where the budget ends: at most the last one of each client.
    assert!(seen.stopped <= clients as u64, "{} stopped", seen.stopped);
}

/// Streams whose answers outrun their holds: 64 clients, 300-token answers under a 4,096
/// `max_tokens`, on 0.10. The first call holds its whole bound (0.041); the next ones get what
/// is left, and as their answers run past it they are stopped, cleanly, where the hold could
/// not grow. Spend goes to the last cent: the 402s come only when less than one call's least
/// cost is left, and the limit is never passed.
#[test]
fn streams_that_outrun_their_hold_are_ended_as_at_max_tokens_and_never_pass_the_limit() {
    let mut stack = Stack::start("budget-stop", &org("0.10"), LONG_WAIT);
    let (key, _) = stack.create_key("shared", json!({}));
    let request = json!({
        "model": "openai/gpt-4o", "max_tokens": 4096, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a long answer"}],
        "mock": {"answer_tokens": 300, "token_ms": 1},
    });
    let seen = race(&stack, "/v1/chat/completions", &key, 64, &request);
    let limit = nanos("0.10");
    let spent = check_books(&mut stack, &seen, limit);
    eprintln!(
        "streams that outran their hold: {} of {} served stopped; spent {spent} of {limit} nanos",
        seen.stopped, seen.ok
    );
    assert_spent_to_the_end(&seen, 64, spent, limit, 99);
    assert!(seen.stopped > 0, "no stream outran its hold");
    assert!(
        seen.ok > seen.stopped,
        "{} of {} stopped",
        seen.stopped,
        seen.ok
    );
}

#[test]
fn anthropic_streams_that_outrun_their_hold_end_with_max_tokens() {
    let mut stack = Stack::start("budget-stop-messages", &org("5.00"), LONG_WAIT);
    let (key, _) = stack.create_key("shared", json!({}));
    let request = json!({
        "model": "anthropic/claude-sonnet-4-5", "max_tokens": 32000, "stream": true,
        "messages": [{"role": "user", "content": "a long answer"}],
        "mock": {"answer_tokens": 3000, "token_ms": 0},
    });
    let seen = race(&stack, "/v1/messages", &key, 16, &request);
    let limit = nanos("5.00");
    let spent = check_books(&mut stack, &seen, limit);
    eprintln!(
        "messages streams that outran their hold: {} of {} served stopped; spent {spent} of \
         {limit} nanos",
        seen.stopped, seen.ok
    );
    assert_spent_to_the_end(&seen, 16, spent, limit, 99);
    assert!(seen.stopped > 0, "no stream outran its hold");
}

#[test]
fn sixty_four_streams_with_a_large_max_tokens_spend_the_budget_before_any_402() {
    streams_spend_the_budget_before_any_402(64);
}

#[test]
fn two_hundred_fifty_six_streams_spend_the_budget_before_any_402() {
    streams_spend_the_budget_before_any_402(256);
}

#[test]
fn fifty_coding_agent_sessions_are_all_served_until_the_money_is_spent() {
    // Claude Code's shape: /v1/messages, max_tokens 32000, a large system prompt and tools,
    // short answers. Each call's bound is about 0.56 (32,000 output tokens at 15 per million,
    // and the prompt's bytes at the dearest prompt price): nine fill 5.00, which pays for
    // over 300 such answers.
    let mut stack = Stack::start("budget-agents", &org("5.00"), LONG_WAIT);
    let (key, _) = stack.create_key("shared", json!({}));
    let system = "You are a coding agent. ".repeat(800);
    let request = json!({
        "model": "anthropic/claude-sonnet-4-5", "max_tokens": 32000,
        "system": system,
        "tools": [{"name": "read_file", "description": "Reads a file.",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "Fix the failing test."}],
        "mock": {"answer_tokens": 20, "token_ms": 1},
    });
    let seen = race(&stack, "/v1/messages", &key, 50, &request);
    let limit = nanos("5.00");
    let spent = check_books(&mut stack, &seen, limit);
    assert_spent_to_the_end(&seen, 50, spent, limit, 97);
    assert!(seen.ok >= 250, "{} calls served", seen.ok);
}

#[test]
fn calls_that_name_no_maximum_are_capped_at_what_is_left_not_refused() {
    // No max_tokens: each call's bound is the model's cap (16,384 tokens at 10 per million,
    // 0.16), more than the whole limit. Every call is admitted with what is left, capped.
    let mut stack = Stack::start("budget-no-max", &org("0.01"), LONG_WAIT);
    let (key, _) = stack.create_key("shared", json!({}));
    let request = json!({
        "model": "openai/gpt-4o",
        "messages": [{"role": "user", "content": "how much is left?"}],
        "mock": {"answer_tokens": 20},
    });
    let seen = race(&stack, "/v1/chat/completions", &key, 8, &request);
    let limit = nanos("0.01");
    let spent = check_books(&mut stack, &seen, limit);
    assert!(seen.ok >= 30, "{} calls served", seen.ok);
    assert_eq!(
        seen.clamped, seen.ok,
        "every call held less than its bound, so each was capped"
    );
    // The least cost here is the prompt's bound and 16 tokens, about 5 % of the limit.
    assert_spent_to_the_end(&seen, 8, spent, limit, 90);
}

#[test]
fn a_wait_that_runs_out_is_a_retryable_429_budget_busy_with_the_budgets_figures() {
    let mut stack = Stack::start(
        "budget-busy",
        &org("0.02"),
        "\n[admission]\nwait_ms_max = 300\n",
    );
    let (key, _) = stack.create_key("shared", json!({}));
    let address = stack.address();
    // One slow stream holds its whole bound (0.0205 asked, 0.02 there: all of it) for 3 s.
    let holder = {
        let key = key.clone();
        std::thread::spawn(move || {
            let slow = json!({
                "model": "openai/gpt-4o", "max_tokens": 2048, "stream": true,
                "messages": [{"role": "user", "content": "hold"}],
                "mock": {"answer_tokens": 30, "token_ms": 100},
            });
            post_json(address, "/v1/chat/completions", &key, &slow)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let quick = json!({
        "model": "openai/gpt-4o", "max_tokens": 16,
        "messages": [{"role": "user", "content": "now?"}],
    });
    let busy = post_json(address, "/v1/chat/completions", &key, &quick);
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"));
    let error = &busy.json()["error"];
    assert_eq!(error["type"], "budget_busy");
    assert_eq!(
        (error["allocation"].as_str(), error["level"].as_str()),
        (Some("shared"), Some("allocation"))
    );
    assert_eq!(nanos(error["remaining"].as_str().unwrap()), 0, "{error}");
    // The same on Anthropic's route, in its envelope (its SDKs retry a 429 of any type).
    let messages = json!({
        "model": "anthropic/claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "now?"}],
    });
    let busy = post_json(address, "/v1/messages", &key, &messages);
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.json()["error"]["type"], "rate_limit_error");
    // Once the stream is done, the room it did not use is there again.
    let held = holder.join().unwrap();
    assert_eq!(held.status, 200);
    let after = post_json(address, "/v1/chat/completions", &key, &quick);
    assert_eq!(after.status, 200, "{}", after.text());
    let metrics = tollgate_tests::http::request(address, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("tollgate_budget_busy_total 2"),
        "{metrics}"
    );
    stack.stop();
}

#[test]
fn every_answer_says_where_the_budget_stands_at_its_tightest_level() {
    // The allocation's 1.00 a month is tighter than its project's and team's (no limit).
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"shared\"\nproject = \"chatbot\"\nbudget = {{ limit = \"1.00\", period = \"month\" }}\n"
    );
    let mut stack = Stack::start("budget-headers", &org, "");
    let (key, _) = stack.create_key("shared", json!({}));
    let request = json!({
        "model": "openai/gpt-4o", "max_tokens": 100,
        "messages": [{"role": "user", "content": "where do I stand?"}],
    });
    let first = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-budget-level"), Some("allocation"));
    assert_eq!(first.header("x-tollgate-budget-limit"), Some("1.00"));
    assert!(
        first
            .header("x-tollgate-budget-resets-at")
            .unwrap()
            .ends_with("T00:00:00Z")
    );
    // Remaining counts this call's own hold: the limit less its bound.
    let remaining = nanos(first.header("x-tollgate-budget-remaining").unwrap());
    assert!(
        remaining < nanos("1.00") && remaining > nanos("0.99"),
        "{remaining}"
    );
    // The next call sees less: the first call's spend (or, until it settles, its hold) and its
    // own hold, of the same bound.
    let second = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    let remaining_after = nanos(second.header("x-tollgate-budget-remaining").unwrap());
    let bound = nanos("1.00") - remaining;
    assert!(
        remaining_after < remaining,
        "{remaining_after} after {remaining}"
    );
    assert!(
        remaining_after >= nanos("1.00") - 2 * bound,
        "{remaining_after}, bound {bound}"
    );
    // A key on an allocation with no limit anywhere gets no budget headers.
    let (open, _) = stack.create_key("open", json!({}));
    let unlimited = post_json(stack.address(), "/v1/chat/completions", &open, &request);
    assert_eq!(unlimited.status, 200, "{}", unlimited.text());
    assert_eq!(unlimited.header("x-tollgate-budget-level"), None);
    // Whole answers say what they cost, on every route, and it is what the books say; a
    // stream's cost comes in its usage chunk, not a header.
    let message = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 20,
        "messages": [{"role": "user", "content": "and what did it cost?"}]});
    let whole = post_json(stack.address(), "/v1/messages", &key, &message);
    let streamed = post_json(
        stack.address(),
        "/v1/chat/completions",
        &key,
        &json!({"model": "openai/gpt-4o", "max_tokens": 5, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(streamed.header("x-tollgate-cost"), None);
    let text = streamed.text();
    let usage_chunk: Value = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.strip_prefix("data: ")?).ok())
        .find(|chunk| chunk["usage"].is_object())
        .expect("the usage chunk asked for");
    stack.stop();
    let mut costs: Vec<u64> = [&first, &second, &unlimited, &whole]
        .iter()
        .map(|answer| nanos(answer.header("x-tollgate-cost").expect("a cost header")))
        .collect();
    costs.push(nanos(usage_chunk["usage"]["cost"].as_str().unwrap()));
    let events = stack.events();
    let booked: Vec<u64> = events
        .iter()
        .filter(|e| e["status"] == "ok")
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .collect();
    assert_eq!(costs, booked);
    assert!(costs.iter().all(|&c| c > 0));
}

#[test]
fn an_allocation_may_ask_for_whole_bounds_waited_for_or_refused_instead_of_capped() {
    // Two allocations of 0.05 whose calls need their whole bound (0.0205 each): `wait` lines
    // a call up until it fits, `refuse` turns it away at once as busy; a key of a third, which
    // clamps, refuses for itself. Another allocation, made through the admin API, and the key
    // keep their policies across a restart.
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"patient\"\nproject = \"chatbot\"\ntight = \"wait\"\nbudget = {{ limit = \"0.05\", period = \"total\" }}\n\
         \n[[allocation]]\nname = \"strict\"\nproject = \"chatbot\"\ntight = \"refuse\"\nbudget = {{ limit = \"0.05\", period = \"total\" }}\n\
         \n[[allocation]]\nname = \"lenient\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.05\", period = \"total\" }}\n"
    );
    let mut stack = Stack::start("budget-tight", &org, "\n[admission]\nwait_ms_max = 5000\n");
    let address = stack.address();
    let slow = json!({
        "model": "openai/gpt-4o", "max_tokens": 2048, "stream": true,
        "messages": [{"role": "user", "content": "hold"}],
        "mock": {"answer_tokens": 10, "token_ms": 100},
    });
    let quick = json!({
        "model": "openai/gpt-4o", "max_tokens": 2048,
        "messages": [{"role": "user", "content": "hold"}],
        "mock": {"answer_tokens": 10},
    });
    let mut strict_key_id = String::new();
    for (allocation, key_tight, waits) in [
        ("patient", json!({}), true),
        ("strict", json!({}), false),
        ("lenient", json!({"tight": "refuse"}), false),
    ] {
        let (key, id) = stack.create_key(allocation, key_tight);
        if allocation == "lenient" {
            strict_key_id = id;
        }
        // Two slow streams hold two whole bounds (0.041); 0.009 is left, less than a bound.
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let (key, slow) = (key.clone(), slow.clone());
                std::thread::spawn(move || post_json(address, "/v1/chat/completions", &key, &slow))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        let answer = post_json(address, "/v1/chat/completions", &key, &quick);
        if waits {
            // Served once a stream settles (about a second), whole: never capped.
            assert_eq!(answer.status, 200, "{}", answer.text());
            assert_eq!(answer.header("x-tollgate-max-tokens-clamped"), None);
            assert!(started.elapsed() >= std::time::Duration::from_millis(500));
        } else {
            assert_eq!(answer.status, 429, "{}", answer.text());
            assert_eq!(answer.json()["error"]["type"], "budget_busy");
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "no wait"
            );
        }
        for holder in holders {
            let held = holder.join().unwrap();
            assert_eq!(held.status, 200);
            assert_eq!(
                held.header("x-tollgate-max-tokens-clamped"),
                None,
                "a whole bound"
            );
        }
    }
    let made = stack.admin(
        "POST",
        "/admin/v1/allocations",
        Some(json!({"name": "made", "project": "chatbot", "tight": "refuse"})),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(made.json()["tight"], "refuse");
    let bad = stack.admin(
        "POST",
        "/admin/v1/allocations",
        Some(json!({"name": "bad", "project": "chatbot", "tight": "sometimes"})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    stack.restart();
    let listed = stack.admin("GET", "/admin/v1/allocations", None).json();
    let tight = |name: &str| {
        listed["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["tight"]
            .clone()
    };
    assert_eq!(
        (tight("made"), tight("patient"), tight("open")),
        (json!("refuse"), json!("wait"), json!("clamp"))
    );
    let keys = stack.admin("GET", "/admin/v1/keys", None).json();
    let strict_key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == strict_key_id.as_str())
        .unwrap();
    assert_eq!(strict_key["tight"], "refuse", "{strict_key}");
    let bad = stack.admin(
        "POST",
        "/admin/v1/keys",
        Some(json!({"allocation": "lenient", "user": "u", "tight": "sometimes"})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    stack.stop();
}

/// What streams really generate, learned: a key whose streams answer 50 tokens under a
/// `max_tokens` of 4,096 holds about 50 tokens' worth once 20 of them have finished, so 16
/// streams run at once on a budget where two whole bounds would not fit; and one that runs far
/// longer than learned grows its hold as it flows and ends on its own, not stopped. (With
/// `learned_percentile = 0` the same streams wait in line, one at a time, and some get 429.)
#[test]
fn streams_hold_what_their_key_really_generates_once_learned() {
    let mut stack = Stack::start("budget-learned", &org("0.08"), "");
    let (key, _) = stack.create_key("shared", json!({}));
    let stream = |answer_tokens: u64, token_ms: u64| {
        json!({
            "model": "openai/gpt-4o", "max_tokens": 4096, "stream": true,
            "messages": [{"role": "user", "content": "learn"}],
            "mock": {"answer_tokens": answer_tokens, "token_ms": token_ms},
        })
    };
    let address = stack.address();
    for _ in 0..20 {
        let answer = post_json(address, "/v1/chat/completions", &key, &stream(50, 0));
        assert_eq!(answer.status, 200);
    }
    let waited = stack.metric("tollgate_budget_waited_total");
    // 16 at once, a second each: whole bounds (0.041 each) would let one run at a time in
    // what the first 20 left.
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (key, request) = (key.clone(), stream(50, 20));
            std::thread::spawn(move || post_json(address, "/v1/chat/completions", &key, &request))
        })
        .collect();
    for thread in threads {
        let answer = thread.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(stream_end(&answer.text()), Some(false), "ended on its own");
    }
    assert_eq!(
        stack.metric("tollgate_budget_waited_total"),
        waited,
        "no stream waited: each held what it generates, not its bound"
    );
    // Thirty times longer than learned: the hold grows as it flows.
    let long = post_json(address, "/v1/chat/completions", &key, &stream(1500, 0));
    assert_eq!(long.status, 200);
    assert_eq!(stream_end(&long.text()), Some(false), "grown, not stopped");
    assert_eq!(stack.metric("tollgate_budget_stopped_total"), 0);
    let spent = stack.spent_nanos("shared");
    stack.stop();
    let events = stack.events();
    let cost: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(cost, spent, "events and budget table agree to the nano");
    assert!(spent <= nanos("0.08"));
}

/// Chat streams translated from Anthropic, Bedrock and Gemini are stopped in the stream too:
/// each model's answer costs more than its own allocation of 0.01, and each ends as OpenAI
/// ends a stream at `max_tokens`, its usage chunk saying what was streamed and what it cost,
/// which is what the books say.
#[test]
fn translated_chat_streams_are_stopped_as_at_max_tokens_with_their_usage() {
    let models = [
        "anthropic/claude-sonnet-4-5",
        "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
        "gemini/gemini-2.5-flash",
    ];
    let mut org = ORG.to_owned();
    for i in 0..models.len() {
        org.push_str(&format!(
            "\n[[allocation]]\nname = \"t{i}\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.01\", period = \"total\" }}\n"
        ));
    }
    let mut stack = Stack::start("budget-stop-translated", &org, "");
    let mut costs = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let (key, _) = stack.create_key(&format!("t{i}"), json!({}));
        // The mock's Bedrock and Gemini answer as many tokens as allowed; Anthropic's 8,000.
        let request = json!({
            "model": model, "max_tokens": 8000, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "a long answer"}],
            "mock": {"answer_tokens": 8000},
        });
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &request);
        assert_eq!(answer.status, 200, "{model}: {}", answer.text());
        let text = answer.text();
        assert_eq!(
            stream_end(&text),
            Some(true),
            "{model}: stopped as at max_tokens"
        );
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line.strip_prefix("data: ")?).ok())
            .collect();
        let usage = &chunks.last().unwrap()["usage"];
        let streamed = text.matches("hello").count() as u64;
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!(completion > 0 && completion < 8000, "{model}: {usage}");
        assert_eq!(
            completion, streamed,
            "{model}: the tokens streamed, counted"
        );
        costs.push(nanos(usage["cost"].as_str().unwrap()));
        assert!(
            stack.spent_nanos(&format!("t{i}")) <= nanos("0.01"),
            "{model}"
        );
    }
    stack.stop();
    let booked: Vec<u64> = stack
        .events()
        .iter()
        .filter(|e| e["status"] == "ok")
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .collect();
    assert_eq!(costs, booked);
}
