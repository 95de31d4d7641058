//! Bad input and bad upstreams each get a clear answer and an event; shutdown drains streams.

use serde_json::json;
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{ORG, Stack};

fn chat(model: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body =
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(fields), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    body
}

#[test]
fn slow_dead_and_silent_upstreams_get_their_own_errors() {
    let mut stack = Stack::start("upstreams", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();

    let late = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("slow/m", json!({"mock": {"first_byte_ms": 3000}})),
    );
    assert_eq!(late.status, 504, "{}", late.text());
    assert_eq!(late.json()["error"]["type"], "upstream_timeout");

    let dead = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("dead/m", json!({})),
    );
    assert_eq!(dead.status, 502, "{}", dead.text());
    assert_eq!(dead.json()["error"]["type"], "upstream_error");

    // Silent mid-stream for longer than the idle timeout: the stream is cut, what came is billed.
    let silent = chat(
        "slow/m",
        json!({"stream": true, "max_tokens": 3, "mock": {"token_ms": 1000}}),
    );
    let started = std::time::Instant::now();
    let answer = post_json(address, "/v1/chat/completions", &key, &silent);
    let cut_after = started.elapsed();
    assert_eq!(answer.status, 200);
    assert!(
        !answer.text().contains("[DONE]"),
        "a cut stream must not look complete"
    );

    stack.stop();
    let events = stack.events();
    let status: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        ["upstream_timeout", "upstream_error", "upstream_timeout"],
        "{events:#?}"
    );
    assert_eq!(events[0]["http_status"], 504);
    assert_eq!(events[1]["http_status"], 502);
    // `slow/m` has no known tokenizer: counted with a stand-in encoding, flagged as estimated.
    assert_eq!(events[2]["usage_source"], "estimated");
    assert!(events[2]["tokens_in"].as_u64().unwrap() > 0);
    tollgate_tests::fault::Figures {
        fault: "an upstream that stalls mid-stream (and one that never answers, one that is down)",
        answered: 3,
        lost: 3 - events.len().min(3) as u64,
        doubled: events.len().saturating_sub(3) as u64,
        over_limit_nanos: 0,
        recover_ms: None,
        note: format!(
            "the stalled stream cut {} ms after it began (idle timeout 300 ms), without [DONE], billed for what came; a late first byte 504 upstream_timeout, a dead upstream 502",
            cut_after.as_millis()
        ),
    }
    .report();
}

#[test]
fn malformed_requests_are_refused_clearly() {
    let mut stack = Stack::start("malformed", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let cases: [(&[u8], &str); 6] = [
        (
            b"{\"model\":\"openai/gpt-4o\",\"messages\":[\"\xff\"]}",
            "not valid UTF-8",
        ),
        (b"[1,2,3]", "not a JSON object"),
        (b"{\"messages\":[]}", "no `model`"),
        (b"{\"model\":42}", "must be a string"),
        (
            b"{\"model\":\"openai/gpt-4o\",\"model\":\"openai/gpt-4o-mini\"}",
            "more than once",
        ),
        (b"", "not a JSON object"),
    ];
    for (body, expected) in cases {
        let answer = http::request(address, "POST", "/v1/chat/completions", &headers, body);
        assert_eq!(answer.status, 400, "{}", answer.text());
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // A head larger than the cap (64 KiB by default) is refused; with no key read, it is
    // counted, not an event.
    let big = "x".repeat(100_000);
    let answer = http::request(address, "GET", "/healthz", &[("x-filler", &big)], b"");
    assert_eq!(answer.status, 431);
    assert_eq!(answer.json()["error"]["type"], "request_header_too_large");
    // The gateway is still healthy after all of it.
    assert_eq!(
        http::request(address, "GET", "/healthz", &[], b"").text(),
        "ok\n"
    );
    let metrics = http::request(address, "GET", "/metrics", &[], b"").text();
    for line in [
        "tollgate_requests_total{route=\"chat_completions\",status=\"bad_request\"} 6",
        "tollgate_requests_total{route=\"other\",status=\"bad_request\"} 1",
        "tollgate_unauthenticated_requests_total{route=\"other\",reason=\"before_key\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    stack.stop();
    assert_eq!(stack.events().len(), 6);
}

#[test]
fn shutdown_drains_a_stream_in_flight() {
    let mut stack = Stack::start("drain", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let request = chat(
        "openai/gpt-4o-mini",
        json!({"stream": true, "max_tokens": 100, "mock": {"token_ms": 10}}),
    );
    let auth = format!("Bearer {key}");
    let stream = http::send(
        stack.address(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        request.to_string().as_bytes(),
    );
    let (first, stream) = http::read_answer(stream, 100);
    assert_eq!(first.status, 200);
    // SIGTERM while the answer is streaming; the rest must still arrive.
    let stopper = std::thread::spawn(move || {
        stack.stop();
        stack
    });
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut { stream }, &mut rest);
    let stack = stopper.join().unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("[DONE]"), "stream cut by shutdown: {text}");
    let events = stack.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "ok");
    assert_eq!(events[0]["tokens_out"], 100);
}

#[test]
fn a_long_stream_without_usage_is_counted_in_bounded_memory() {
    let mut stack = Stack::start("no-usage", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    // 5,000 tokens (30 KB of text) and no usage from the provider: the first 16 KB are kept
    // and counted, the rest is extrapolated, and the event says it was estimated.
    let request = chat(
        "openai/gpt-4o-mini",
        json!({"stream": true, "max_tokens": 5000, "mock": {"omit_usage": true}}),
    );
    let answer = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text().matches(" hello").count(), 5000);
    // Short and whole: counted exactly.
    let short = chat(
        "openai/gpt-4o-mini",
        json!({"stream": true, "max_tokens": 7, "mock": {"omit_usage": true}}),
    );
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &key, &short).status,
        200
    );
    stack.stop();
    // Counting runs off the async threads, so the two events may be written in either order.
    let mut events = stack.events();
    events.sort_by_key(|e| e["tokens_out"].as_u64());
    assert_eq!(events[0]["usage_source"], "counted");
    assert_eq!(events[0]["tokens_out"], 7);
    assert!(events[0]["tokens_in"].as_u64().unwrap() > 0);
    assert_eq!(events[1]["usage_source"], "estimated", "{events:#?}");
    let out = events[1]["tokens_out"].as_u64().unwrap();
    assert!(
        (4_950..=5_050).contains(&out),
        "counted {out} of 5000 tokens"
    );
}

#[test]
fn an_upstream_that_breaks_off_mid_stream_cuts_the_client_and_bills_what_was_streamed() {
    let mut stack = Stack::start("reset", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let request = chat(
        "openai/gpt-4o-mini",
        json!({"stream": true, "max_tokens": 50, "mock": {"reset_after": 10}}),
    );
    let answer = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 200);
    let text = answer.text();
    stack.stop();
    let events = stack.events();
    assert_eq!(text.matches(" hello").count(), 10, "{text}");
    assert!(
        !answer.complete,
        "a broken stream must not end as a whole one"
    );
    assert!(!text.contains("[DONE]"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "upstream_error");
    assert_eq!(events[0]["tokens_out"], 10);
    assert_eq!(events[0]["usage_source"], "counted");
}

#[test]
fn kill_dash_nine_loses_no_event_and_no_spend() {
    let mut stack = Stack::start("kill-9", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let mut refused_key = key.clone();
    refused_key.push('x');
    for i in 0..20 {
        let answer = post_json(
            stack.address(),
            "/v1/chat/completions",
            &key,
            &chat(
                "openai/gpt-4o-mini",
                json!({"max_tokens": 3, "stream": i % 2 == 0}),
            ),
        );
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        post_json(
            stack.address(),
            "/v1/chat/completions",
            &refused_key,
            &chat("openai/gpt-4o-mini", json!({}))
        )
        .status,
        401
    );
    let spent = stack.spent_nanos("open");
    // Every answered call's event was appended before its answer completed: a SIGKILL now,
    // with no shutdown and no last sync, loses none of them. (The call with a wrong key is
    // counted, not an event.)
    stack.kill_and_restart();
    let events = stack.events();
    assert_eq!(events.len(), 20);
    assert_eq!(events.iter().filter(|e| e["status"] == "ok").count(), 20);
    assert_eq!(
        stack.spent_nanos("open"),
        spent,
        "spend rebuilt from the log"
    );
}

#[test]
fn a_damaged_log_tail_is_cut_at_start_and_never_stops_it() {
    let mut stack = Stack::start("log-tail", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    for _ in 0..3 {
        assert_eq!(
            post_json(
                stack.address(),
                "/v1/chat/completions",
                &key,
                &chat("openai/gpt-4o-mini", json!({}))
            )
            .status,
            200
        );
    }
    stack.stop();
    // A crash mid-write leaves half a record at the end of the last segment.
    let segment = std::fs::read_dir(stack.path().join("events/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap(),
        &[200, 0, 0, 0, 1, 2],
    )
    .unwrap();
    stack.restart();
    assert_eq!(stack.events().len(), 3);
    assert_eq!(
        post_json(
            stack.address(),
            "/v1/chat/completions",
            &key,
            &chat("openai/gpt-4o-mini", json!({}))
        )
        .status,
        200
    );
    stack.stop();
    assert_eq!(stack.events().len(), 4, "appends go on after the cut");
}

#[test]
fn a_body_that_never_arrives_is_refused_on_every_route_within_the_body_timeout() {
    let mut stack = Stack::start("slow-body", ORG, "body_timeout_ms = 300");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let auth = format!("Bearer {key}");
    let admin = format!("Bearer {}", tollgate_tests::stack::ADMIN_TOKEN);
    for (path, credential) in [
        ("/v1/chat/completions", auth.as_str()),
        ("/v1/usage", admin.as_str()),
        ("/admin/v1/keys", admin.as_str()),
    ] {
        // The head promises 100 bytes; 10 come, then nothing.
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: {credential}\r\ncontent-length: 100\r\n\r\n{{\"model\":"
        );
        std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
        let (answer, _) = http::read_answer(stream, 1 << 20);
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert!(
            answer
                .text()
                .contains("request body not received within 300 ms"),
            "{path}: {}",
            answer.text()
        );
    }
    stack.stop();
}

#[test]
fn a_malformed_translated_body_costs_no_rate_limit_token() {
    let mut stack = Stack::start("malformed-translated", ORG, "");
    let (key, _) = stack.create_key("open", json!({"requests_per_minute": 1}));
    let address = stack.address();
    // Anthropic is reached through translation; `messages` that are not a list cannot be.
    let malformed = json!({"model": "anthropic/claude-sonnet-4-5", "messages": "hi"});
    let answer = post_json(address, "/v1/chat/completions", &key, &malformed);
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer.text().contains("`messages` must be an array"),
        "{}",
        answer.text()
    );
    // The key's one request a minute is still there.
    let answer = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("anthropic/claude-sonnet-4-5", json!({"max_tokens": 2})),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("anthropic/claude-sonnet-4-5", json!({"max_tokens": 2})),
    );
    assert_eq!(answer.status, 429, "{}", answer.text());
    stack.stop();
}

#[test]
fn a_revoked_or_rotated_key_leaves_no_rate_limiter_behind() {
    let mut stack = Stack::start("forgotten-limiters", ORG, "");
    let address = stack.address();
    let call = chat("openai/gpt-4o-mini", json!({"max_tokens": 2}));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (key, id) = stack.create_key("open", json!({"requests_per_minute": 100}));
        assert_eq!(
            post_json(address, "/v1/chat/completions", &key, &call).status,
            200
        );
        ids.push(id);
    }
    assert_eq!(stack.metric("tollgate_key_limiters"), 3);
    let revoked = stack.admin("POST", &format!("/admin/v1/keys/{}/revoke", ids[0]), None);
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let rotated = stack.admin("POST", &format!("/admin/v1/keys/{}/rotate", ids[1]), None);
    assert_eq!(rotated.status, 201, "{}", rotated.text());
    // The rotated key's successor has not called yet: one limiter is left, the third key's.
    assert_eq!(stack.metric("tollgate_key_limiters"), 1);
    stack.stop();
}

#[test]
fn a_flood_of_made_up_keys_is_counted_and_writes_no_event() {
    let mut stack = Stack::start("unauthenticated-flood", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let call = chat("openai/gpt-4o-mini", json!({"max_tokens": 2}));
    assert_eq!(
        post_json(address, "/v1/chat/completions", &key, &call).status,
        200
    );
    // Every event so far synced, so the log's size stands still unless something is written.
    let flushed = |stack: &Stack| {
        let flush = stack.admin("POST", "/admin/v1/events/flush", None);
        assert_eq!(flush.status, 200, "{}", flush.text());
        stack.metric("tollgate_event_log_bytes")
    };
    let log_bytes = flushed(&stack);
    assert!(log_bytes > 0);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let call = call.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let made_up = format!("tg_{t}{i:0>40}");
                    let answer = post_json(address, "/v1/chat/completions", &made_up, &call);
                    assert_eq!(answer.status, 401);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let missing = http::request(
        address,
        "POST",
        "/v1/messages",
        &[],
        call.to_string().as_bytes(),
    );
    assert_eq!(missing.status, 401);
    let metrics = http::request(address, "GET", "/metrics", &[], b"").text();
    for line in [
        "tollgate_unauthenticated_requests_total{route=\"chat_completions\",reason=\"unknown_key\"} 2000",
        "tollgate_unauthenticated_requests_total{route=\"messages\",reason=\"missing_key\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_eq!(flushed(&stack), log_bytes, "not a byte written");
    // A good caller is served and recorded as before.
    assert_eq!(
        post_json(address, "/v1/chat/completions", &key, &call).status,
        200
    );
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["status"] == "ok"));
}

#[test]
fn a_lost_state_folder_refuses_the_start_instead_of_giving_budget_back() {
    // Small segments, a checkpoint every 100 ms and Parquet rolled every 200 ms: sealed
    // segments are removed as soon as every reader is past them.
    let mut stack = Stack::start(
        "state-lost",
        ORG,
        "\n[events]\nsegment_bytes_max = 1024\ncheckpoint_interval_ms = 100\n\n[parquet]\nroll_interval_ms = 200\n",
    );
    let (key, _) = stack.create_key("open", json!({}));
    let call = chat("openai/gpt-4o-mini", json!({"max_tokens": 3}));
    for _ in 0..100 {
        assert_eq!(
            post_json(stack.address(), "/v1/chat/completions", &key, &call).status,
            200
        );
    }
    let spent = stack.spent_nanos("open");
    let log_dir = stack.path().join("events/log");
    let first_segment_gone = || !log_dir.join(format!("{:020}.log", 0)).exists();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !first_segment_gone() {
        assert!(
            std::time::Instant::now() < deadline,
            "no segment was ever removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stack.kill();
    for file in ["spend.checkpoint", "spend.prev"] {
        let _ = std::fs::remove_file(stack.path().join("state").join(file));
    }
    // Refused, saying what is missing and how to go on.
    let said = stack.start_refused();
    assert!(said.contains("cannot be restored"), "{said}");
    assert!(said.contains("--accept-spend-loss"), "{said}");
    // An operator who means it starts anyway and is told so; the budget has less spend.
    let accepted = stack.start_accepting_spend_loss();
    let restored = tollgate_tests::stack::spent_nanos_at(accepted.address, "open");
    assert!(restored < spent, "restored {restored} of {spent}");
    assert!(accepted.terminate());
    tollgate_tests::fault::Figures {
        fault: "the state folder lost (both spend checkpoints gone)",
        answered: 0,
        lost: 0,
        doubled: 0,
        over_limit_nanos: 0,
        recover_ms: None,
        note: format!(
            "the start refused, naming what is missing; with --accept-spend-loss it restored {restored} of {spent} nanos (what the log still held), and said so"
        ),
    }
    .report();
}
