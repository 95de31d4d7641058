//! Routing with real processes: deployments of one provider on separate mock servers, groups
//! falling back across providers, retries and their limits, breakers, and latency-aware
//! balancing, with every attempt in the books.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::fault::Figures;
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{ORG, Process, Stack, mock_requests_at, start_mock_with};
use tollgate_tests::tollgate_bin;

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 8,
           "messages": [{"role": "user", "content": "Say hello a few times, please."}]})
}

/// A chat completion of `model` through the stack's gateway with `key`.
fn chat_call(stack: &Stack, key: &str, model: &str) -> http::Answer {
    post_json(stack.address(), "/v1/chat/completions", key, &chat(model))
}

/// A provider `name` whose deployments are the `(deployment, mock)` pairs.
fn pool(name: &str, deployments: &[(&str, &Process)]) -> String {
    let mut table = format!(
        "[[provider]]\nname = \"{name}\"\nkind = \"openai\"\napi_key_env = \"TEST_OPENAI_KEY\"\n"
    );
    for (deployment, mock) in deployments {
        table.push_str(&format!(
            "[[provider.deployment]]\nname = \"{deployment}\"\nbase_url = \"http://{}/v1\"\n",
            mock.address
        ));
    }
    table
}

/// Events by `(status, deployment)`.
fn by_deployment(events: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        let key = (
            e["status"].as_str().unwrap().to_owned(),
            e["deployment"].as_str().unwrap_or("-").to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The events of the call `answer` answered, in the order they were logged.
fn events_of(events: &[Value], answer: &http::Answer) -> Vec<Value> {
    let id = answer.header("x-request-id").unwrap();
    events
        .iter()
        .filter(|e| e["request_id"] == id)
        .cloned()
        .collect()
}

/// An allocation's spend once no call is in flight (a cut stream is settled after its
/// client saw the cut, once its tokens are counted).
fn settled_spend(stack: &Stack, allocation: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.metric("tollgate_requests_in_flight") > 0 {
        assert!(Instant::now() < deadline, "calls still in flight");
        std::thread::sleep(Duration::from_millis(20));
    }
    stack.spent_nanos(allocation)
}

/// The books of answered calls: spend equals the events' costs, each call has one event that
/// settled it (status ok) and its failed attempts, numbered from 1 under its request id.
/// `spent` is the allocation's spend in the budget table, read before the gateway stopped.
fn assert_books(spent: u64, events: &[Value], answered: &[http::Answer]) {
    let cost: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(cost, spent, "spend equals the events");
    for answer in answered {
        let id = answer.header("x-request-id").unwrap();
        let mut attempts: Vec<&Value> = events.iter().filter(|e| e["request_id"] == id).collect();
        attempts.sort_by_key(|e| e["attempt"].as_u64());
        let numbers: Vec<u64> = attempts
            .iter()
            .map(|e| e["attempt"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=attempts.len() as u64).collect();
        assert_eq!(numbers, expected, "attempts of {id}");
        let attempts_header = answer
            .header("x-tollgate-attempts")
            .map_or(1, |a| a.parse().unwrap());
        assert_eq!(
            attempts.len(),
            attempts_header,
            "{id}: the header counts its attempts"
        );
        let (last, failed) = attempts.split_last().unwrap();
        assert_eq!(
            last["http_status"], answer.status,
            "{id}: the last attempt answered"
        );
        for attempt in failed {
            assert_eq!(attempt["status"], "upstream_error");
            assert_eq!(
                attempt["cost_nanos"], 0,
                "a failed attempt generated nothing"
            );
        }
    }
}

#[test]
fn a_failing_deployment_is_retried_around_and_its_breaker_opens() {
    let failing = start_mock_with(&["--error-percent", "100", "--error-status", "503"]);
    let dropping = start_mock_with(&["--drop-percent", "100"]);
    // Rate-limited, asking for a minute's rest: no breaker, but no call until then.
    let limited = start_mock_with(&[
        "--error-percent",
        "100",
        "--error-status",
        "429",
        "--retry-after-s",
        "60",
    ]);
    let healthy = start_mock_with(&[]);
    let providers = format!(
        "[routing]\nretries = 3\nbreaker_failures = 3\nbreaker_cooldown_ms = 60000\n\n{}",
        pool(
            "pool",
            &[
                ("failing", &failing),
                ("dropping", &dropping),
                ("limited", &limited),
                ("healthy", &healthy)
            ]
        )
    );
    let mut stack = Stack::start_with("routing-retry", ORG, "", &providers, &["pool/m"]);
    let (key, _) = stack.create_key("open", json!({}));
    let answers: Vec<http::Answer> = (0..40).map(|_| chat_call(&stack, &key, "pool/m")).collect();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-tollgate-model"), Some("pool/m"));
    }
    // Each bad deployment failed three times in a row, then its breaker kept calls away.
    assert_eq!(mock_requests_at(failing.address), 3);
    assert_eq!(mock_requests_at(dropping.address), 0, "it never answers");
    assert_eq!(
        mock_requests_at(limited.address),
        1,
        "told to wait a minute"
    );
    assert_eq!(mock_requests_at(healthy.address), 40);
    for deployment in ["failing", "dropping"] {
        let state = format!(
            "tollgate_deployment_breaker_state{{provider=\"pool\",deployment=\"{deployment}\",state=\"open\"}}"
        );
        assert_eq!(stack.metric(&state), 1, "{deployment}");
    }
    let listed = stack.admin("GET", "/admin/v1/providers", None).json();
    let pool = listed["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pool")
        .unwrap()
        .clone();
    let breakers: Vec<&str> = pool["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["breaker"].as_str().unwrap())
        .collect();
    assert_eq!(breakers, ["open", "open", "closed", "closed"]);
    assert_eq!(stack.metric("tollgate_upstream_retries_total"), 7);
    let spent = settled_spend(&stack, "open");
    stack.stop();
    let events = stack.events();
    let counts = by_deployment(&events);
    let expected = BTreeMap::from([
        (("ok".to_owned(), "healthy".to_owned()), 40),
        (("upstream_error".to_owned(), "failing".to_owned()), 3),
        (("upstream_error".to_owned(), "dropping".to_owned()), 3),
        (("upstream_error".to_owned(), "limited".to_owned()), 1),
    ]);
    assert_eq!(counts, expected);
    for e in events.iter().filter(|e| e["deployment"] == "failing") {
        assert_eq!(e["http_status"], 503);
    }
    for e in events.iter().filter(|e| e["deployment"] == "dropping") {
        assert_eq!(e["http_status"], 502, "no connection: the gateway's 502");
    }
    for e in events.iter().filter(|e| e["deployment"] == "limited") {
        assert_eq!(e["http_status"], 429);
    }
    assert_books(spent, &events, &answers);
    Figures {
        fault: "deployments answering 503, 429 with Retry-After, or dropping every connection, beside a healthy one",
        answered: answers.len() as u64,
        lost: 0,
        doubled: 0,
        over_limit_nanos: 0,
        recover_ms: None,
        note: "every call answered 200; 3 attempts on each failing deployment (each an event, costing nothing), then its breaker open; one on the deployment answering 429 with a minute's Retry-After, then none; the budget table equals the events".into(),
    }
    .report();
}

#[test]
fn a_group_falls_back_to_its_next_candidate_and_bills_the_model_that_answered() {
    // The first candidate is overloaded and asks to be left alone for longer than the
    // gateway waits: the call moves on at once.
    let overloaded = start_mock_with(&[
        "--error-percent",
        "100",
        "--error-status",
        "529",
        "--retry-after-s",
        "30",
    ]);
    let providers = format!(
        r#"{}
[[group]]
name = "prod/chat"
retries = 1
candidates = [{{ model = "primary/big" }}, {{ model = "openai/gpt-4o-mini" }}]
"#,
        pool("primary", &[("only", &overloaded)])
    );
    let mut stack = Stack::start_with("routing-group", ORG, "", &providers, &["primary/big"]);
    let (key, _) = stack.create_key("open", json!({}));
    let started = Instant::now();
    let first = chat_call(&stack, &key, "prod/chat");
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 30 s Retry-After is not waited out"
    );
    assert_eq!(first.header("x-tollgate-model"), Some("openai/gpt-4o-mini"));
    assert_eq!(first.header("x-tollgate-attempts"), Some("2"));
    assert_eq!(
        first.json()["model"],
        "gpt-4o-mini",
        "the answer names its model"
    );
    // The deployment was told to wait: the next call skips it without sending.
    let second = chat_call(&stack, &key, "prod/chat");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-tollgate-attempts"), None);
    assert_eq!(mock_requests_at(overloaded.address), 1);
    // A key that may not use the fallback gets the first candidate's own answer.
    let (narrow, _) = stack.create_key("open", json!({"models": ["primary/*"]}));
    let refused = post_json(
        stack.address(),
        "/v1/chat/completions",
        &narrow,
        &chat("prod/chat"),
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    let spent = settled_spend(&stack, "open");
    stack.stop();
    let events = stack.events();
    let of = |answer: &http::Answer| events_of(&events, answer);
    let first_events = of(&first);
    assert_eq!(first_events.len(), 2);
    assert_eq!(first_events[0]["model"], "big");
    assert_eq!(first_events[0]["http_status"], 529);
    assert_eq!(first_events[1]["model"], "gpt-4o-mini");
    assert_eq!(first_events[1]["provider"], "openai");
    let billed: u64 = first_events[1]["cost_nanos"].as_u64().unwrap();
    assert!(billed > 0);
    assert_eq!(
        first.header("x-tollgate-cost").unwrap(),
        tollgate_engine::Nanos(billed).to_string(),
        "priced as the model that answered"
    );
    assert_eq!(of(&second).len(), 1);
    let narrow_events = of(&refused);
    assert_eq!(narrow_events.len(), 1, "the refusal is the only attempt");
    assert_eq!(narrow_events[0]["status"], "upstream_error");
    assert_books(spent, &events, &[first, second]);
}

#[test]
fn nothing_is_retried_once_an_answer_has_begun() {
    let providers = "[routing]\nretries = 2\n";
    let mut stack = Stack::start_with("routing-begun", ORG, "", providers, &[]);
    let (key, _) = stack.create_key("open", json!({}));
    let mut request = chat("openai/gpt-4o-mini");
    request["max_tokens"] = json!(40);
    request["stream"] = json!(true);
    request["mock"] = json!({"reset_after": 5});
    let cut = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(cut.status, 200);
    assert!(!cut.complete, "the cut is passed on");
    // An error the request itself asks for is retried, and passed on when retries run out.
    let mut failing = chat("openai/gpt-4o-mini");
    failing["mock"] = json!({"status": 500});
    let failed = post_json(stack.address(), "/v1/chat/completions", &key, &failing);
    assert_eq!(failed.status, 500);
    assert_eq!(failed.header("x-tollgate-attempts"), Some("3"));
    // A client error is the client's to fix: not retried.
    failing["mock"] = json!({"status": 400});
    let bad = post_json(stack.address(), "/v1/chat/completions", &key, &failing);
    assert_eq!(bad.status, 400);
    assert_eq!(stack.mock_requests(), 1 + 3 + 1);
    let spent = settled_spend(&stack, "open");
    stack.stop();
    let events = stack.events();
    let cut_id = cut.header("x-request-id").unwrap();
    let cut_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["request_id"] == cut_id)
        .collect();
    assert_eq!(cut_events.len(), 1);
    assert!(
        cut_events[0]["tokens_out"].as_u64().unwrap() >= 5,
        "billed for what streamed"
    );
    assert_books(spent, &events, &[failed, bad]);
}

#[test]
fn latency_aware_balancing_sends_less_to_a_slow_deployment() {
    let fast = start_mock_with(&[]);
    let slow = start_mock_with(&["--first-byte-ms", "150"]);
    let providers = format!(
        "[[group]]\nname = \"balanced\"\nbalance = \"latency\"\ncandidates = [{{ model = \"pool/m\" }}]\n\n{}",
        pool("pool", &[("fast", &fast), ("slow", &slow)])
    );
    let mut stack = Stack::start_with("routing-latency", ORG, "", &providers, &["pool/m"]);
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let key = key.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        post_json(address, "/v1/chat/completions", &key, &chat("balanced")).status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap().iter().all(|s| *s == 200));
    }
    let (to_fast, to_slow) = (
        mock_requests_at(fast.address),
        mock_requests_at(slow.address),
    );
    assert_eq!(to_fast + to_slow, 200);
    assert!(to_slow >= 1, "the slow deployment was measured");
    // Weighted balancing would send it half; a 150 ms head against a few ms gets it little.
    assert!(to_slow * 100 / 200 < 20, "slow got {to_slow} of 200");
    eprintln!("latency-aware shares: fast {to_fast}, slow {to_slow}");
    stack.stop();
}

/// Two more allocations: `capped` goes to the `cheap` group past half its budget; `small` has a
/// budget a `premium` call's whole bound does not fit in.
const DOWNGRADE_ALLOCATIONS: &str = r#"
[[allocation]]
name = "capped"
project = "chatbot"
budget = { limit = "0.001", period = "month" }
downgrade = { at_percent = 50, to = "cheap" }

[[allocation]]
name = "small"
project = "chatbot"
budget = { limit = "0.002", period = "month" }
"#;

const DOWNGRADE_GROUPS: &str = r#"
[[group]]
name = "cheap"
candidates = [{ model = "openai/gpt-4o-mini" }]

[[group]]
name = "premium"
downgrade = "cheap"
candidates = [{ model = "openai/gpt-4o" }]
"#;

#[test]
fn past_its_threshold_an_allocation_is_served_by_the_cheaper_group() {
    let mut stack = Stack::start_with(
        "routing-downgrade",
        &format!("{ORG}{DOWNGRADE_ALLOCATIONS}"),
        "",
        DOWNGRADE_GROUPS,
        &[],
    );
    let (key, _) = stack.create_key("capped", json!({}));
    let (narrow, _) = stack.create_key("capped", json!({"models": ["openai/gpt-4o"]}));
    let limit_nanos = 1_000_000u64;
    let mut answers = Vec::new();
    let downgraded = loop {
        assert!(answers.len() < 40, "never downgraded");
        let answer = chat_call(&stack, &key, "openai/gpt-4o");
        assert_eq!(answer.status, 200, "{}", answer.text());
        if answer.header("x-tollgate-downgraded-from").is_some() {
            break answer;
        }
        assert_eq!(answer.header("x-tollgate-model"), Some("openai/gpt-4o"));
        answers.push(answer);
    };
    let spent_before: u64 = answers.iter().map(stack_cost).sum();
    assert!(
        spent_before * 2 >= limit_nanos,
        "downgraded only past half the budget"
    );
    let last_full = spent_before - stack_cost(answers.last().unwrap());
    assert!(last_full * 2 < limit_nanos, "and not before");
    assert_eq!(
        downgraded.header("x-tollgate-downgraded-from"),
        Some("openai/gpt-4o")
    );
    assert_eq!(
        downgraded.header("x-tollgate-model"),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(downgraded.json()["model"], "gpt-4o-mini");
    // The allow-list applies to the model used: this key may not use the cheaper one.
    let refused = post_json(
        stack.address(),
        "/v1/chat/completions",
        &narrow,
        &chat("openai/gpt-4o"),
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.text().contains("openai/gpt-4o-mini"),
        "{}",
        refused.text()
    );
    assert_eq!(stack.metric("tollgate_downgraded_total"), 1);
    let spent = settled_spend(&stack, "capped");
    stack.stop();
    let events = stack.events();
    let id = downgraded.header("x-request-id").unwrap();
    let event = events.iter().find(|e| e["request_id"] == id).unwrap();
    assert_eq!(
        event["model"], "gpt-4o-mini",
        "priced as the model that answered"
    );
    assert_eq!(
        event["cost_nanos"].as_u64().unwrap(),
        stack_cost(&downgraded)
    );
    let models: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["model"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(models.get("gpt-4o"), Some(&answers.len()));
    assert_eq!(
        models.get("gpt-4o-mini"),
        Some(&2),
        "the downgraded call and the refusal"
    );
    let cost: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(cost, spent);
    // The chargeback report from the Parquet files shows both models, to the nano.
    let report = Command::new(tollgate_bin().unwrap())
        .args(["report", "--by", "model", "--format", "json", "--data"])
        .arg(stack.path().join("data"))
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let cost_of = |model: &str| -> u64 {
        rows.iter()
            .filter(|r| r["model"] == model)
            .map(|r| r["cost_nanos"].as_str().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(
        cost_of("gpt-4o") > 0 && cost_of("gpt-4o-mini") > 0,
        "{report}"
    );
    assert_eq!(
        cost_of("gpt-4o") + cost_of("gpt-4o-mini"),
        spent,
        "{report}"
    );
}

#[test]
fn a_group_serves_a_call_its_budget_cannot_afford_whole_with_its_cheaper_group() {
    let mut stack = Stack::start_with(
        "routing-afford",
        &format!("{ORG}{DOWNGRADE_ALLOCATIONS}"),
        "",
        DOWNGRADE_GROUPS,
        &[],
    );
    let (key, _) = stack.create_key("small", json!({}));
    // gpt-4o's bound at 1,000 completion tokens (0.01) is five times the budget; gpt-4o-mini's
    // (0.0006) fits whole.
    let mut request = chat("premium");
    request["max_tokens"] = json!(1000);
    let answer = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-tollgate-downgraded-from"), Some("premium"));
    assert_eq!(
        answer.header("x-tollgate-model"),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(
        answer.header("x-tollgate-max-tokens-clamped"),
        None,
        "served whole"
    );
    // A call the premium model affords whole is served by it.
    let answer = chat_call(&stack, &key, "premium");
    assert_eq!(answer.header("x-tollgate-model"), Some("openai/gpt-4o"));
    assert_eq!(answer.header("x-tollgate-downgraded-from"), None);
    stack.stop();
}

/// What a whole answer says it cost, in nanos.
fn stack_cost(answer: &http::Answer) -> u64 {
    let text = answer.header("x-tollgate-cost").unwrap();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = format!("{fraction:0<9}");
    whole.parse::<u64>().unwrap() * 1_000_000_000 + fraction[..9].parse::<u64>().unwrap()
}

#[test]
fn a_deployment_past_its_quota_takes_no_more_calls() {
    let quota = start_mock_with(&[]);
    let spare = start_mock_with(&[]);
    let providers = format!(
        "{}\n[[provider]]\nname = \"tokens\"\nkind = \"openai\"\napi_key_env = \"TEST_OPENAI_KEY\"\n[[provider.deployment]]\nname = \"metered\"\nbase_url = \"http://{}/v1\"\nweight = 100\ntokens_per_minute = 40\n[[provider.deployment]]\nname = \"spare\"\nbase_url = \"http://{}/v1\"\n",
        pool("pool", &[("quota", &quota), ("spare", &spare)]).replace(
            "name = \"quota\"\n",
            "name = \"quota\"\nweight = 100\nrequests_per_minute = 3\n"
        ),
        quota.address,
        spare.address
    );
    let mut stack = Stack::start_with(
        "routing-quota",
        ORG,
        "",
        &providers,
        &["pool/m", "tokens/m"],
    );
    let (key, _) = stack.create_key("open", json!({}));
    for _ in 0..12 {
        let answer = chat_call(&stack, &key, "pool/m");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // Weighted 100 to 1, the quota deployment would take nearly all: it takes its three.
    assert_eq!(mock_requests_at(quota.address), 3);
    assert_eq!(mock_requests_at(spare.address), 9);
    // 40 tokens a minute: each call here is 16 (the mock counts 8 for the prompt, and 8
    // completion tokens), charged as it ends. The metered deployment takes calls while it
    // is not in debt: at 0, 16 and 32 tokens; at 48 it is, and takes none.
    let before = mock_requests_at(quota.address);
    for _ in 0..6 {
        let answer = chat_call(&stack, &key, "tokens/m");
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["usage"]["total_tokens"], 16);
    }
    assert_eq!(mock_requests_at(quota.address) - before, 3);
    stack.stop();
}

#[test]
fn a_prompt_too_long_for_a_window_moves_at_once_to_a_wider_candidate() {
    let narrow = start_mock_with(&["--context-tokens", "100"]);
    let providers = format!(
        r#"{}
[[group]]
name = "long"
candidates = [
  {{ model = "narrow/m", context_tokens = 100 }},
  {{ model = "openai/gpt-4o-mini", context_tokens = 128000 }},
]

[[group]]
name = "undeclared"
candidates = [{{ model = "narrow/m" }}, {{ model = "openai/gpt-4o-mini" }}]
"#,
        pool("narrow", &[("only", &narrow)])
    );
    let mut stack = Stack::start_with("routing-window", ORG, "", &providers, &["narrow/m"]);
    let (key, _) = stack.create_key("open", json!({}));
    let long_prompt = "word ".repeat(200);
    let call = |model: &str, prompt: &str| {
        let body = json!({"model": model, "max_tokens": 8,
                          "messages": [{"role": "user", "content": prompt}]});
        post_json(stack.address(), "/v1/chat/completions", &key, &body)
    };
    // A short prompt fits the narrow window.
    let short = call("long", "hello");
    assert_eq!(short.header("x-tollgate-model"), Some("narrow/m"));
    // A long one is refused there and answered, at once, by the wider candidate.
    let long = call("long", &long_prompt);
    assert_eq!(long.status, 200, "{}", long.text());
    assert_eq!(long.header("x-tollgate-model"), Some("openai/gpt-4o-mini"));
    assert_eq!(long.header("x-tollgate-attempts"), Some("2"));
    // Without declared windows the refusal is the client's, as the provider wrote it.
    let refused = call("undeclared", &long_prompt);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "context_length_exceeded");
    // A refusal read for the check but larger than what is read reaches the client whole.
    let body = json!({"model": "long", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hello"}],
                      "mock": {"status": 400, "error_bytes": 300_000}});
    let large = post_json(stack.address(), "/v1/chat/completions", &key, &body);
    assert_eq!(large.status, 400);
    assert!(large.complete);
    let message = large.json()["error"]["message"].as_str().unwrap().len();
    assert_eq!(message, 300_000, "every byte passed on");
    assert_eq!(mock_requests_at(narrow.address), 4);
    stack.stop();
    let events = stack.events();
    let of = |answer: &http::Answer| events_of(&events, answer);
    let long_events = of(&long);
    assert_eq!(long_events.len(), 2);
    assert_eq!(long_events[0]["status"], "bad_request");
    assert_eq!(long_events[0]["http_status"], 400);
    assert_eq!(long_events[0]["cost_nanos"], 0);
    assert_eq!(long_events[1]["model"], "gpt-4o-mini");
    assert_eq!(of(&refused).len(), 1);
}

#[test]
fn azure_deployments_of_one_model_may_carry_their_own_names() {
    let east = start_mock_with(&[]);
    let west = start_mock_with(&[]);
    let providers = format!(
        r#"[[provider]]
name = "azpool"
kind = "azure"
api_key_env = "TEST_OPENAI_KEY"
api_version = "2024-10-21"
[[provider.deployment]]
name = "east"
base_url = "http://{}"
azure_deployments = {{ "prod-4o" = "prod-4o-eastus" }}
[[provider.deployment]]
name = "west"
base_url = "http://{}"
"#,
        east.address, west.address
    );
    let mut stack = Stack::start_with("routing-azure", ORG, "", &providers, &["azpool/prod-4o"]);
    let (key, _) = stack.create_key("open", json!({}));
    let answers: Vec<Value> = (0..16)
        .map(|_| {
            let answer = chat_call(&stack, &key, "azpool/prod-4o");
            assert_eq!(answer.status, 200, "{}", answer.text());
            assert_eq!(answer.header("x-tollgate-model"), Some("azpool/prod-4o"));
            answer.json()
        })
        .collect();
    // The mock answers with the deployment its path named.
    let named: BTreeMap<String, usize> = answers.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a["model"].as_str().unwrap().to_owned())
            .or_default() += 1;
        m
    });
    let to_east = usize::try_from(mock_requests_at(east.address)).unwrap();
    assert_eq!(named.get("prod-4o-eastus").copied().unwrap_or(0), to_east);
    assert_eq!(named.get("prod-4o").copied().unwrap_or(0), 16 - to_east);
    assert!(
        to_east > 0 && to_east < 16,
        "both deployments served: {named:?}"
    );
    stack.stop();
    let events = stack.events();
    let east_events = events.iter().filter(|e| e["deployment"] == "east").count();
    assert_eq!(east_events, to_east);
    assert!(
        events.iter().all(|e| e["model"] == "prod-4o"),
        "billed as the model named"
    );
}
