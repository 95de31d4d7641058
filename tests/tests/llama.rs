//! A real self-hosted model server as the upstream: llama.cpp's `llama-server` with a tiny
//! random-weight model. Gibberish text, but its own usage accounting, streaming, embeddings,
//! Anthropic Messages API and errors, all through the gateway.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::fault::Figures;
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{FLEET_ORG, ORG, Stack, harness, start_llama, start_llama_on};
use tollgate_tests::{nanos, read_text};

const MODEL: &str = "llama/tiny-random-llama";

fn provider(address: std::net::SocketAddr) -> String {
    format!(
        "[[provider]]\nname = \"llama\"\nkind = \"openai\"\nbase_url = \"http://{address}/v1\"\nanthropic_messages = true\n"
    )
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello there"}]})
}

#[test]
fn llama_cpp_behind_the_gateway_on_every_route() {
    let Some(llama) = start_llama() else { return };
    let mut stack = Stack::start_with("llama", ORG, "", &provider(llama.address), &[MODEL]);
    let (key, _) = stack.create_key("open", json!({}));
    let address = stack.address();

    // The same request direct and through the gateway: the provider's own usage, unchanged.
    let direct = http::request(
        llama.address,
        "POST",
        "/v1/chat/completions",
        &[],
        chat(8).to_string().replace(MODEL, "x").as_bytes(),
    )
    .json();
    let answer = post_json(address, "/v1/chat/completions", &key, &chat(8));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["usage"], direct["usage"]);
    assert_eq!(
        body["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "temperature 0 is deterministic"
    );

    // A stream whose client did not ask for usage: the gateway asked, metered it, hid it.
    let mut streamed = chat(6);
    streamed["stream"] = json!(true);
    let text = post_json(address, "/v1/chat/completions", &key, &streamed).text();
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(!text.contains("\"usage\":{"), "usage chunk leaked: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let completion = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5});
    assert_eq!(
        post_json(address, "/v1/completions", &key, &completion).json()["usage"]["completion_tokens"],
        5
    );
    let embedding = json!({"model": MODEL, "input": ["hello world", "foo"]});
    let embedded = post_json(address, "/v1/embeddings", &key, &embedding).json();
    assert_eq!(embedded["data"].as_array().unwrap().len(), 2);

    // Anthropic's Messages API, served by llama.cpp itself, reached on /v1/messages.
    let message = json!({"model": MODEL, "max_tokens": 5, "system": "Be terse.",
                         "messages": [{"role": "user", "content": "Hello there"}]});
    let answer = http::request(
        address,
        "POST",
        "/v1/messages",
        &[("x-api-key", &key)],
        message.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["usage"]["output_tokens"], 5);
    let mut message_stream = message.clone();
    message_stream["stream"] = json!(true);
    let answer = http::request(
        address,
        "POST",
        "/v1/messages",
        &[("x-api-key", &key)],
        message_stream.to_string().as_bytes(),
    );
    assert!(answer.text().contains("event: message_stop"));

    // The server's own error passes through with its status; nothing is billed for it.
    let too_long = json!({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "word ".repeat(2000)}]});
    let refused = post_json(address, "/v1/chat/completions", &key, &too_long);
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("exceeds the available context size")
    );

    let spent = stack.spent_nanos("open");
    stack.stop();
    let events = stack.events();
    assert_eq!(events.len(), 7, "{events:#?}");
    let ok: Vec<&Value> = events.iter().filter(|e| e["status"] == "ok").collect();
    assert_eq!(ok.len(), 6);
    for e in &ok {
        assert_eq!(e["usage_source"], "provider", "{e}");
        assert_eq!(e["provider"], "llama");
        assert!(e["tokens_in"].as_u64().unwrap() > 0);
    }
    assert_eq!(ok[0]["tokens_in"], direct["usage"]["prompt_tokens"]);
    assert_eq!(ok[0]["tokens_out"], 8);
    assert_eq!(ok[1]["tokens_out"], 6, "the hidden usage chunk was metered");
    let failed = events
        .iter()
        .find(|e| e["status"] == "upstream_error")
        .unwrap();
    assert_eq!(failed["http_status"], 400);
    assert_eq!(failed["cost_nanos"], 0);
    let sum: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, spent);
}

/// The race of the budget-starvation report, against the real server: 64 clients streaming
/// with `max_tokens` 2048 and short answers (a JSON schema ends them after a few tokens) on
/// one allocation. Each call's bound (2,048 tokens at 2 per million, the prompt's bytes at one
/// per million) is about 0.0045, so two bounds fill the 0.01 limit where some 300 answers do. No
/// call may get a 402 while the allocation has room for it, none may push spend past the
/// limit, and the books must agree to the nano.
#[test]
fn sixty_four_streams_spend_a_budget_to_the_last_cent_on_a_real_server() {
    let Some(llama) = start_llama() else { return };
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"shared\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.01\", period = \"total\" }}\n"
    );
    // While calls hold whole bounds, a few are in flight at a time and the rest wait in line:
    // the wait is long enough for the line to drain on a loaded machine.
    // A stale kept-alive connection (below) is retried by the gateway on a fresh one.
    let admission = "\n[admission]\nwait_ms_max = 120000\n\n[routing]\nretries = 1\n";
    let mut stack = Stack::start_with(
        "llama-race",
        &org,
        admission,
        &provider(llama.address),
        &[MODEL],
    );
    let (key, _) = stack.create_key("shared", json!({}));
    let address = stack.address();
    let request = json!({
        "model": MODEL, "max_tokens": 2048, "stream": true, "temperature": 0,
        "messages": [{"role": "user", "content": "ok?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}},
    });
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (key, request) = (key.clone(), request.clone());
            std::thread::spawn(move || {
                let mut served = 0u64;
                for _ in 0..10_000 {
                    let answer = post_json(address, "/v1/chat/completions", &key, &request);
                    match answer.status {
                        200 => {
                            assert!(
                                answer.text().ends_with("data: [DONE]\n\n"),
                                "a whole stream"
                            );
                            served += 1;
                        }
                        402 => return (served, answer.json()["error"].clone()),
                        // llama.cpp's server now and then closes a kept-alive connection as
                        // a call is sent on it ("connection closed before message
                        // completed"). The gateway retries that attempt once; only a call
                        // whose retry meets it again gets the 502, costing nothing, and the
                        // client retries it as the SDKs do. Calls waiting in line are sent
                        // the moment a call settles, on the connection it just gave back, so
                        // they meet this more often.
                        502 => {
                            assert_eq!(answer.json()["error"]["type"], "upstream_error");
                        }
                        other => panic!("{other}: {}", answer.text()),
                    }
                }
                panic!("the budget never ran out");
            })
        })
        .collect();
    let results: Vec<(u64, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let spent = stack.spent_nanos("shared");
    stack.stop();
    let served: u64 = results.iter().map(|(n, _)| n).sum();
    let limit = 10_000_000u64;
    assert!(spent <= limit, "spent {spent} of {limit}");
    let events = stack.events();
    let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
    assert_eq!(ok.len() as u64, served);
    let cost: u64 = events
        .iter()
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert_eq!(cost, spent, "events and budget table agree to the nano");
    let failed = events
        .iter()
        .filter(|e| e["status"] == "upstream_error")
        .count() as u64;
    assert!(
        failed * 100 <= served * 15,
        "{failed} upstream errors in {served} calls"
    );
    // Every 402 came once the room left was less than the call's least cost.
    let least = results
        .iter()
        .map(|(_, body)| {
            assert_eq!(body["type"], "budget_exceeded");
            let digits = |field: &str| nanos(body[field].as_str().unwrap());
            assert!(
                digits("remaining") < digits("requested"),
                "402 with room: {body}"
            );
            digits("requested")
        })
        .max()
        .unwrap();
    assert!(spent + least > limit, "spent {spent}, least {least}");
    assert!(
        spent * 100 >= limit * 95,
        "spent {spent} of {limit} before the first 402"
    );
    assert!(served >= 100, "{served} calls served");
}

/// Two llama.cpp servers as two deployments of one model, under the load harness; one is
/// killed (`kill -9`) mid-run and started again. No call fails: an attempt on the dead one is
/// retried on the survivor; its breaker opens, and closes once the restarted server answers a
/// probe. The harness's books balance with an event for every attempt.
#[test]
fn a_deployment_killed_under_load_costs_no_call_and_comes_back() {
    let Some(first) = start_llama() else { return };
    let Some(second) = start_llama() else { return };
    let second_port = second.address.port();
    let providers = format!(
        r#"[routing]
retries = 2
breaker_failures = 2
breaker_cooldown_ms = 1500

[[provider]]
name = "pool"
kind = "openai"
[[provider.deployment]]
name = "first"
base_url = "http://{}/v1"
[[provider.deployment]]
name = "second"
base_url = "http://{}/v1"
"#,
        first.address, second.address
    );
    let model = "pool/tiny-random-llama";
    let stack = Stack::start_with(
        "llama-deployments",
        &format!("{ORG}{FLEET_ORG}"),
        "",
        &providers,
        &[model],
    );
    let scenario = stack.path().join("two-deployments.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"name = "two-deployments"
seconds = 12
seed = 3
[load]
mode = "closed"
[fleet]
agents = 8
think_ms = 20
[[fleet.allocation]]
name = "pool-agents"
project = "research-agents"
# Short contexts: the tiny model's window is small.
[task]
steps_min = 1
steps_max = 3
context_tokens_start = 16
context_tokens_step = 8
context_tokens_max = 48
[[call]]
api = "chat"
model = "{model}"
stream_percent = 50
max_tokens = 6
"#
        ),
    )
    .unwrap();
    let out = stack.path().join("report");
    let harness = harness(stack.address(), &stack.path().join("data"), &out)
        .args(["--require-balanced", "--scenario"])
        .arg(&scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let breaker = |state: &str| {
        stack.metric(&format!(
            "tollgate_deployment_breaker_state{{provider=\"pool\",deployment=\"second\",state=\"{state}\"}}"
        ))
    };
    let served = |deployment: &str| {
        stack.metric(&format!(
            "tollgate_deployment_attempts_total{{provider=\"pool\",deployment=\"{deployment}\"}}"
        ))
    };
    // Once both serve, the second dies mid-call.
    let until = |what: &str, enough: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !enough() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("both deployments serve", &|| {
        served("first") > 5 && served("second") > 5
    });
    drop(second);
    until("the dead deployment's breaker opens", &|| {
        breaker("open") == 1
    });
    let at_kill = served("first");
    until("traffic moves to the survivor", &|| {
        served("first") > at_kill + 20
    });
    let second = start_llama_on(second_port).unwrap();
    let revived = served("second");
    until("the breaker closes after a probe", &|| {
        breaker("closed") == 1 && served("second") > revived
    });
    let finished = harness.wait_with_output().unwrap();
    let report = read_text(&out.join("report.json"));
    assert!(
        finished.status.success(),
        "{}\n{}\n{report}",
        String::from_utf8_lossy(&finished.stdout),
        String::from_utf8_lossy(&finished.stderr)
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    let books = &report["books"];
    assert_eq!(books["problems"], json!([]), "{books}");
    // A stream in flight on the server as it died is cut mid-answer (nothing can be retried
    // once an answer has begun): at most one per agent.
    let broken = report["runs"][0]["broken"].as_u64().unwrap();
    assert!(broken <= 8, "{broken} answers cut");
    let statuses = &report["runs"][0]["statuses"];
    assert_eq!(
        statuses
            .as_object()
            .map(|s| s.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["200".to_owned()]),
        "every call answered: {statuses}"
    );
    let answered = books["answered"].as_u64().unwrap();
    let events = books["parquet_events"].as_u64().unwrap();
    assert!(
        events > answered,
        "the failed attempts are in the books: {books}"
    );
    assert!(stack.metric("tollgate_upstream_retries_total") >= events - answered);
    Figures {
        fault: "a deployment killed under the load harness (two llama.cpp servers, one model)",
        answered,
        lost: 0,
        doubled: 0,
        over_limit_nanos: 0,
        recover_ms: None,
        note: format!(
            "every call answered 200 ({broken} streams cut as their server died); {} failed attempts retried on the survivor, each an event; the breaker opened and, once the server was back, closed on a probe; the harness's books balance ({events} events)",
            events - answered
        ),
    }
    .report();
    drop(second);
    drop(first);
}
