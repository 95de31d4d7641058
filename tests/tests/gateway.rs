//! The real gateway in front of the mock provider: every route, every refusal, metering of
//! streams and hang-ups, spend equal to the events to the nano, keys surviving a restart.

use std::collections::BTreeMap;
use std::io::Read as _;

use serde_json::{Value, json};
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{ORG, Stack};

fn chat(model: &str, max_tokens: u64) -> Value {
    json!({"model": model, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Say hello a few times, please."}]})
}

/// Events of `stack` by status, after a graceful stop.
/// A call of Anthropic's Messages API, authenticated the Anthropic way.
fn message(address: std::net::SocketAddr, key: &str, model: &str, max_tokens: u64) -> http::Answer {
    let body = json!({"model": model, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": "hi"}]});
    http::request(
        address,
        "POST",
        "/v1/messages",
        &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
        body.to_string().as_bytes(),
    )
}

fn statuses(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts
            .entry(e["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

#[test]
fn openai_and_anthropic_routes_are_metered_and_the_table_equals_the_events() {
    let mut stack = Stack::start("routes", ORG, "");
    let (key, key_id) = stack.create_key("open", json!({"agent": "coder-7"}));
    let address = stack.address();

    let answer = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("openai/gpt-4o-mini", 5),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["choices"][0]["message"]["content"], " hello".repeat(5));
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert!(answer.header("x-request-id").unwrap().starts_with("req_"));

    // An alias, a completion, an embedding and a response.
    assert_eq!(
        post_json(address, "/v1/chat/completions", &key, &chat("fast", 2)).status,
        200
    );
    let completion = json!({"model": "openai/gpt-4o-mini", "prompt": "Once", "max_tokens": 3});
    assert_eq!(
        post_json(address, "/v1/completions", &key, &completion).json()["choices"][0]["text"],
        " hello".repeat(3)
    );
    let embedding = json!({"model": "openai/text-embedding-3-small", "input": "tollgate"});
    assert_eq!(
        post_json(address, "/v1/embeddings", &key, &embedding).status,
        200
    );
    let response = json!({"model": "openai/gpt-4o", "input": "hi", "max_output_tokens": 4});
    assert_eq!(
        post_json(address, "/v1/responses", &key, &response).json()["usage"]["output_tokens"],
        4
    );

    // Anthropic's own API, authenticated the Anthropic way.
    let answer = message(address, &key, "anthropic/claude-sonnet-4-5", 7);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["usage"]["output_tokens"], 7);

    // /v1/models lists priced models of configured providers.
    let models = http::request(
        address,
        "GET",
        "/v1/models",
        &[("authorization", &format!("Bearer {key}"))],
        b"",
    );
    let ids: Vec<String> = models.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"openai/gpt-4o-mini".to_owned())
            && ids.contains(&"anthropic/claude-sonnet-4-5".to_owned()),
        "{ids:?}"
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("vllm/")),
        "vllm has no provider here: {ids:?}"
    );

    let spent = stack.spent_nanos("open");
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 6, "{events:#?}");
    for event in &events {
        assert_eq!(event["status"], "ok");
        assert_eq!(event["usage_source"], "provider");
        assert_eq!(event["key_id"], key_id.as_str());
        assert_eq!(event["agent"], "coder-7");
        assert_eq!(event["allocation"], "open");
        assert_eq!(event["team"], "research");
        assert!(event["rate_card_version"].is_string());
    }
    let sum: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert!(sum > 0);
    assert_eq!(
        sum, spent,
        "the budget table and the events agree to the nano"
    );
    let by_model: Vec<&str> = events
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert!(
        by_model.contains(&"claude-sonnet-4-5") && by_model.contains(&"text-embedding-3-small")
    );
}

#[test]
fn streams_hide_the_usage_chunk_the_gateway_asked_for() {
    let mut stack = Stack::start("streams", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let mut request = chat("openai/gpt-4o-mini", 4);
    request["stream"] = json!(true);

    let answer = post_json(address, "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let text = answer.text();
    assert_eq!(text.matches(" hello").count(), 4, "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "usage chunk leaked to a client that did not ask: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    request["stream_options"] = json!({"include_usage": true});
    let text = post_json(address, "/v1/chat/completions", &key, &request).text();
    assert!(
        text.contains("\"completion_tokens\":4"),
        "asked-for usage chunk missing: {text}"
    );

    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["tokens_out"], 4);
        assert_eq!(e["usage_source"], "provider");
        assert!(e["ttft_ms"].is_u64());
    }
}

#[test]
fn every_refusal_has_its_status_and_envelope_and_each_with_a_key_its_event() {
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"tiny\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.000001\", period = \"day\" }}\n"
    );
    let mut stack = Stack::start("refusals", &org, "body_bytes_max = 100000");
    let address = stack.address();
    let (key, _) = stack.create_key("openai-only", json!({"requests_per_minute": 1}));
    let (tiny, _) = stack.create_key("tiny", json!({}));

    let check = |answer: &http::Answer, status: u16, kind: &str| {
        assert_eq!(answer.status, status, "{}", answer.text());
        assert_eq!(answer.json()["error"]["type"], kind, "{}", answer.text());
    };
    check(
        &post_json(
            address,
            "/v1/chat/completions",
            "tg_wrong",
            &chat("openai/gpt-4o", 1),
        ),
        401,
        "invalid_api_key",
    );
    check(
        &post_json(
            address,
            "/v1/chat/completions",
            &key,
            &chat("anthropic/claude-sonnet-4-5", 1),
        ),
        403,
        "model_not_allowed",
    );
    check(
        &post_json(
            address,
            "/v1/chat/completions",
            &key,
            &chat("openai/gpt-unpriced", 1),
        ),
        403,
        "model_not_priced",
    );
    // One request per minute (refusals above took none of it): the second call is limited and
    // told when to come back.
    assert_eq!(
        post_json(
            address,
            "/v1/chat/completions",
            &key,
            &chat("openai/gpt-4o", 1)
        )
        .status,
        200
    );
    let limited = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("openai/gpt-4o", 1),
    );
    check(&limited, 429, "rate_limit_exceeded");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    check(
        &post_json(
            address,
            "/v1/chat/completions",
            &tiny,
            &chat("nobody/model", 1),
        ),
        404,
        "model_not_found",
    );
    let malformed = http::request(
        address,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {tiny}"))],
        b"{\"model\": ",
    );
    check(&malformed, 400, "invalid_request_error");
    let huge = vec![b' '; 200_000];
    let too_big = http::request(
        address,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {tiny}"))],
        &huge,
    );
    check(&too_big, 413, "request_too_large");
    check(
        &http::request(address, "GET", "/v1/nothing", &[], b""),
        404,
        "not_found",
    );

    // A spent budget: 402 with the machine-readable body, on the OpenAI and the Anthropic route.
    let broke = post_json(
        address,
        "/v1/chat/completions",
        &tiny,
        &chat("openai/gpt-4o", 100),
    );
    check(&broke, 402, "budget_exceeded");
    let error = &broke.json()["error"];
    assert_eq!(error["allocation"], "tiny");
    assert_eq!(error["project"], "chatbot");
    assert_eq!(error["team"], "research");
    assert_eq!(error["level"], "allocation");
    assert_eq!(error["period"], "day");
    assert!(error["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));
    let message = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let broke = http::request(
        address,
        "POST",
        "/v1/messages",
        &[("x-api-key", &tiny)],
        message.to_string().as_bytes(),
    );
    assert_eq!(broke.status, 402);
    assert_eq!(broke.json()["type"], "error");
    assert_eq!(broke.json()["error"]["type"], "budget_exceeded");
    assert_eq!(broke.json()["error"]["allocation"], "tiny");

    // The call with a made-up key, and the one to no route (no key read), are counted by
    // route and reason, not recorded as events.
    let metrics = http::request(address, "GET", "/metrics", &[], b"").text();
    for line in [
        "tollgate_unauthenticated_requests_total{route=\"chat_completions\",reason=\"unknown_key\"} 1",
        "tollgate_unauthenticated_requests_total{route=\"other\",reason=\"before_key\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    stack.stop();
    let counts = statuses(&stack.events());
    let expected: BTreeMap<String, usize> = [
        ("model_not_allowed", 1),
        ("model_not_priced", 1),
        ("rate_limited", 1),
        ("bad_request", 3),
        ("budget_exceeded", 2),
        ("ok", 1),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(
        stack.mock_requests(),
        1,
        "only the one admitted call reached a model"
    );
}

#[test]
fn upstream_errors_pass_through_and_bill_nothing() {
    let mut stack = Stack::start("upstream-errors", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let mut request = chat("openai/gpt-4o-mini", 3);
    request["mock"] = json!({"status": 503});
    let answer = post_json(stack.address(), "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 503);
    assert!(
        answer
            .text()
            .contains("mock: the error this request asked for")
    );
    assert_eq!(stack.spent_nanos("open"), 0);
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "upstream_error");
    assert_eq!(events[0]["http_status"], 503);
    assert_eq!(events[0]["cost_nanos"], 0);
}

#[test]
fn a_client_that_hangs_up_mid_stream_is_billed_for_what_was_streamed() {
    let mut stack = Stack::start("hang-up", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let mut request = chat("openai/gpt-4o", 1000);
    request["stream"] = json!(true);
    request["mock"] = json!({"token_ms": 5});
    let auth = format!("Bearer {key}");
    let stream = http::send(
        stack.address(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        request.to_string().as_bytes(),
    );
    let (partial, stream) = http::read_answer(stream, 600);
    assert_eq!(partial.status, 200);
    drop(stream); // hang up after a few tokens
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["status"], "client_closed");
    assert_eq!(event["usage_source"], "counted");
    let out = event["tokens_out"].as_u64().unwrap();
    assert!(
        (1..1000).contains(&out),
        "billed {out} of 1000 tokens for a stream cut short"
    );
    assert!(
        event["tokens_in"].as_u64().unwrap() > 0,
        "the prompt is billed too"
    );
    assert!(event["cost_nanos"].as_u64().unwrap() > 0);
}

#[test]
fn keys_survive_a_restart_and_revocation_sticks() {
    let mut stack = Stack::start("restart", ORG, "");
    let (kept, _) = stack.create_key("open", json!({"expires_in": "30d"}));
    let (revoked, revoked_id) = stack.create_key("open", json!({}));
    let answer = stack.admin("POST", &format!("/admin/v1/keys/{revoked_id}/revoke"), None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    stack.restart();
    let address = stack.address();
    assert_eq!(
        post_json(address, "/v1/chat/completions", &kept, &chat("fast", 1)).status,
        200
    );
    assert_eq!(
        post_json(address, "/v1/chat/completions", &revoked, &chat("fast", 1)).status,
        401
    );
    let listed = stack.admin("GET", "/admin/v1/keys", None).json();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|k| k["id"] == revoked_id.as_str() && k["revoked"] == true)
    );
    // No secret is stored or listed anywhere.
    let mut journal = String::new();
    std::fs::File::open(stack.path().join("state/journal.jsonl"))
        .unwrap()
        .read_to_string(&mut journal)
        .unwrap();
    assert!(!journal.contains(&kept) && !listed.to_string().contains(&kept));
    let audit = tollgate_tests::stack::read_lines(&stack.path().join("state/audit.jsonl"));
    let actions: Vec<&str> = audit
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.create", "key.create", "key.revoke"]);
    // The admin API refuses a wrong token.
    let wrong = http::request(
        address,
        "GET",
        "/admin/v1/keys",
        &[("authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 401);
}

#[test]
fn azure_deployments_are_called_with_their_api_version_and_key_header() {
    let mut stack = Stack::start("azure", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let answer = post_json(
        stack.address(),
        "/v1/chat/completions",
        &key,
        &chat("azure/prod-4o", 3),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "prod-4o", "the deployment answered");
    assert_eq!(answer.json()["usage"]["completion_tokens"], 3);
    stack.stop();
    let events = stack.events();
    assert_eq!(events[0]["provider"], "azure");
    assert_eq!(events[0]["model"], "prod-4o");
    assert_eq!(events[0]["status"], "ok");
}

#[test]
fn bedrock_is_called_signed_and_metered_from_its_own_usage() {
    let mut stack = Stack::start("bedrock", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let model = "bedrock/anthropic.claude-3-haiku-20240307-v1:0";
    let answer = post_json(
        stack.address(),
        "/v1/chat/completions",
        &key,
        &chat(model, 3),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        " hello".repeat(3)
    );
    let mut streamed = chat(model, 2);
    streamed["stream"] = json!(true);
    streamed["mock"] = json!({"cached_tokens": 2});
    let text = post_json(stack.address(), "/v1/chat/completions", &key, &streamed).text();
    assert_eq!(text.matches(" hello").count(), 2, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["provider"], "bedrock");
        assert_eq!(e["model"], "anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(e["usage_source"], "provider");
    }
    assert_eq!(events[0]["tokens_out"], 3);
    assert_eq!(events[1]["tokens_cached"], 2);
}

#[test]
fn gemini_and_vertex_are_translated_both_ways_and_metered_from_their_own_usage() {
    let mut stack = Stack::start("gemini", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    // The Gemini API, whole: Google's thinking tokens are output billed as reasoning.
    let mut whole = chat("gemini/gemini-2.5-flash", 3);
    whole["mock"] = json!({"thoughts_tokens": 4});
    let answer = post_json(address, "/v1/chat/completions", &key, &whole);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini/gemini-2.5-flash");
    assert_eq!(body["choices"][0]["message"]["content"], " hello".repeat(3));
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        4
    );
    // Streamed, with the usage chunk asked for and cached prompt tokens.
    let mut streamed = chat("gemini/gemini-2.5-flash", 2);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    streamed["mock"] = json!({"cached_tokens": 2});
    let answer = post_json(address, "/v1/chat/completions", &key, &streamed);
    let text = answer.text();
    assert_eq!(text.matches(" hello").count(), 2, "{text}");
    assert!(
        text.contains("\"prompt_tokens_details\":{\"cached_tokens\":2}"),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // Vertex AI: the same body under a project and location.
    let answer = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("vertex/gemini-2.5-flash", 1),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Google's errors in OpenAI's envelope, with Google's status; nothing billed.
    let mut failing = chat("gemini/gemini-2.5-flash", 1);
    failing["mock"] = json!({"status": 429});
    let answer = post_json(address, "/v1/chat/completions", &key, &failing);
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.json()["error"]["code"],
        "RESOURCE_EXHAUSTED",
        "{}",
        answer.text()
    );
    // Routes Gemini does not speak are refused before anything is held.
    let embeddings = json!({"model": "gemini/gemini-2.5-flash", "input": "x"});
    let answer = post_json(address, "/v1/embeddings", &key, &embeddings);
    assert_eq!(answer.status, 400);
    assert!(
        answer.text().contains("call it on /v1/chat/completions"),
        "{}",
        answer.text()
    );
    stack.stop();
    let events = stack.events();
    assert_eq!(
        statuses(&events),
        BTreeMap::from([
            ("bad_request".to_owned(), 1),
            ("ok".to_owned(), 3),
            ("upstream_error".to_owned(), 1)
        ])
    );
    assert_eq!(events[0]["provider"], "gemini");
    assert_eq!(events[0]["usage_source"], "provider");
    assert_eq!(events[0]["tokens_out"], 3 + 4);
    assert_eq!(events[0]["tokens_reasoning"], 4);
    assert_eq!(events[1]["tokens_cached"], 2);
    assert_eq!(events[1]["tokens_out"], 2);
    assert_eq!(events[2]["provider"], "vertex");
    assert_eq!(events[2]["tokens_out"], 1);
    assert_eq!(events[3]["cost_nanos"], 0);
}

#[test]
fn gemini_tool_calls_go_back_with_their_thought_signatures() {
    let mut stack = Stack::start("gemini-tools", ORG, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let mut request = chat("gemini/gemini-2.5-flash", 3);
    request["tools"] = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    request["mock"] = json!({"tool_use": {"name": "weather", "input": {"city": "Oslo"}}});
    let answer = post_json(address, "/v1/chat/completions", &key, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let message = body["choices"][0]["message"].clone();
    let call = &message["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert!(
        call["extra_content"]["google"]["thought_signature"].is_string(),
        "{message}"
    );
    // The client runs the tool and sends the conversation back, the assistant turn as it got
    // it. The mock refuses, as Gemini 3 does, a replayed function call without its signature
    // and a function response without the function's name: a 200 means both went back.
    let id = call["id"].clone();
    let messages = request["messages"].as_array_mut().unwrap();
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "Rain"}));
    request["mock"] = json!({});
    request["stream"] = json!(true);
    let answer = post_json(address, "/v1/chat/completions", &key, &request);
    let text = answer.text();
    assert_eq!(answer.status, 200, "{text}");
    assert_eq!(text.matches(" hello").count(), 3, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    stack.stop();
    let events = stack.events();
    assert_eq!(statuses(&events), BTreeMap::from([("ok".to_owned(), 2)]));
    assert!(events.iter().all(|e| e["usage_source"] == "provider"));
}

#[test]
fn unknowable_usage_is_billed_at_its_bound_and_flagged_and_tokens_per_minute_limit() {
    let mut stack = Stack::start("unknown-usage", ORG, "");
    let (key, _) = stack.create_key("open", json!({"tokens_per_minute": 20}));
    let address = stack.address();
    // A 200 whose body is no answer at all: the usage cannot be known, so the call is billed
    // what was held for it, never zero.
    let mut garbage = chat("openai/gpt-4o-mini", 5);
    garbage["mock"] = json!({"garbage": true});
    assert_eq!(
        post_json(address, "/v1/chat/completions", &key, &garbage).status,
        200
    );
    // Tokens per minute are charged after each call: the key is now in debt.
    assert_eq!(
        post_json(
            address,
            "/v1/chat/completions",
            &key,
            &chat("openai/gpt-4o-mini", 30)
        )
        .status,
        200
    );
    let limited = post_json(
        address,
        "/v1/chat/completions",
        &key,
        &chat("openai/gpt-4o-mini", 5),
    );
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(
        limited.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens-per-minute")
    );
    let spent = stack.spent_nanos("open");
    stack.stop();
    let events = stack.events();
    let unknown = events
        .iter()
        .find(|e| e["usage_source"] == "unknown")
        .expect("an unknown-usage event");
    assert_eq!(unknown["tokens_out"], 0);
    assert!(
        unknown["cost_nanos"].as_u64().unwrap() > 0,
        "unknown usage is never free"
    );
    let sum: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, spent);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["status"] == "rate_limited")
            .count(),
        1
    );
}

#[test]
fn a_restart_never_gives_a_budget_back() {
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"small\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.0001\", period = \"day\" }}\n"
    );
    let mut stack = Stack::start("restart-spend", &org, "");
    let (key, _) = stack.create_key("small", json!({}));
    let mut admitted = 0;
    while post_json(
        stack.address(),
        "/v1/chat/completions",
        &key,
        &chat("openai/gpt-4o-mini", 5),
    )
    .status
        == 200
    {
        admitted += 1;
        assert!(admitted < 1_000, "the budget never ran out");
    }
    let allocations = |stack: &Stack| stack.admin("GET", "/admin/v1/allocations", None).json();
    let spent = |all: &Value, name: &str, budget: &str| {
        all["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()[budget]["spent_nanos"]
            .clone()
    };
    let before = allocations(&stack);
    assert!(spent(&before, "small", "budget").as_u64().unwrap() > 0);
    stack.restart();
    let after = allocations(&stack);
    for budget in ["budget", "project_budget", "team_budget"] {
        assert_eq!(
            spent(&after, "small", budget),
            spent(&before, "small", budget),
            "{budget}"
        );
    }
    let refused = post_json(
        stack.address(),
        "/v1/chat/completions",
        &key,
        &chat("openai/gpt-4o-mini", 5),
    );
    assert_eq!(
        refused.status, 402,
        "the spent budget is still spent after a restart"
    );
}

/// A coding agent pointed at the gateway by its base URL alone asks for models by their
/// provider's own names: with a default provider for the route, Claude Code's
/// `claude-sonnet-4-5[1m]` on `/v1/messages` is `anthropic/claude-sonnet-4-5` (the
/// long-context marker dropped), and a bare `gpt-4o-mini` on chat completions is OpenAI's;
/// a route without a default still wants `provider/model`.
#[test]
fn bare_model_names_resolve_through_the_routes_default_provider() {
    let org = format!(
        "{ORG}\n[default_provider]\nmessages = \"anthropic\"\nchat_completions = \"openai\"\n"
    );
    let mut stack = Stack::start("native-names", &org, "");
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();
    let answer = message(address, &key, "claude-sonnet-4-5[1m]", 5);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["model"],
        "claude-sonnet-4-5",
        "the upstream got Anthropic's id"
    );
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 3,
                      "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post_json(address, "/v1/chat/completions", &key, &chat).status,
        200
    );
    let response = json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 4});
    let refused = post_json(address, "/v1/responses", &key, &response);
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "model_not_found");
    stack.stop();
    let events = stack.events();
    let models: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let text = |field: &str| e[field].as_str().unwrap_or_default();
            (text("provider"), text("model"), text("status"))
        })
        .collect();
    assert_eq!(
        models,
        [
            ("anthropic", "claude-sonnet-4-5", "ok"),
            ("openai", "gpt-4o-mini", "ok"),
            ("", "", "bad_request")
        ],
        "priced and recorded as the provider's model"
    );
}
