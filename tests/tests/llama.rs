//! A real self-hosted model server as the upstream: llama.cpp's `llama-server` with a tiny
//! random-weight model. Gibberish text, but its own usage accounting, streaming, embeddings,
//! Anthropic Messages API and errors, all through the gateway.

use serde_json::{Value, json};
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{ORG, Stack, start_llama};

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
