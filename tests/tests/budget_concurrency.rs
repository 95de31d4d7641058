//! 64 streaming clients race one allocation's budget through the real gateway: spend never
//! passes the limit, every admitted stream is complete (at the length asked, or ended where the
//! budget's last room ran out, as at `max_tokens`), and the events sum to the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack};

const CLIENTS: usize = 64;
/// 0.05 of the card's currency, in nanos.
const LIMIT_NANOS: u64 = 50_000_000;

#[test]
fn sixty_four_streaming_clients_never_overspend() {
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"shared\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.05\", period = \"total\" }}\n"
    );
    let mut stack = Stack::start("budget-race", &org, "");
    let (key, _) = stack.create_key("shared", json!({}));
    let address = stack.address();
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let key = key.clone();
            let (admitted, refused) = (Arc::clone(&admitted), Arc::clone(&refused));
            let stopped = Arc::clone(&stopped);
            std::thread::spawn(move || {
                let request = json!({
                    "model": "openai/gpt-4o", "max_tokens": 50, "stream": true,
                    "messages": [{"role": "user", "content": "race"}],
                    "mock": {"token_ms": 1},
                });
                // Each client streams until the budget refuses it (bounded, in case it never does).
                for _ in 0..1_000 {
                    let answer = post_json(address, "/v1/chat/completions", &key, &request);
                    match answer.status {
                        200 => {
                            // At the end of the budget a stream is ended where the room runs
                            // out, as the provider ends one at max_tokens: a whole stream,
                            // shorter than asked.
                            let text = answer.text();
                            assert_eq!(answer.header("x-tollgate-max-tokens-clamped"), None);
                            assert!(text.ends_with("data: [DONE]\n\n"), "a whole stream");
                            assert_eq!(text.matches("\"finish_reason\":\"length\"").count(), 1);
                            let tokens = text.matches(" hello").count();
                            assert!((1..=50).contains(&tokens), "{tokens} tokens");
                            if tokens < 50 {
                                stopped.fetch_add(1, Ordering::Relaxed);
                            }
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        402 => {
                            assert_eq!(answer.json()["error"]["type"], "budget_exceeded");
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        other => panic!("unexpected {other}: {}", answer.text()),
                    }
                }
                panic!("the budget never ran out");
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let spent = stack.spent_nanos("shared");
    stack.stop();
    let events = stack.events();
    let ok: Vec<_> = events.iter().filter(|e| e["status"] == "ok").collect();
    let cost: u64 = ok.iter().map(|e| e["cost_nanos"].as_u64().unwrap()).sum();
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(admitted >= 10, "only {admitted} calls fit");
    // Only where the budget ends: at most the last stream of each client.
    assert!(stopped.load(Ordering::Relaxed) <= CLIENTS as u64);
    assert_eq!(refused.load(Ordering::Relaxed), CLIENTS as u64);
    assert!(
        spent <= LIMIT_NANOS,
        "spent {spent} nanos of a {LIMIT_NANOS} limit"
    );
    assert_eq!(ok.len() as u64, admitted);
    assert_eq!(cost, spent, "events and budget table agree to the nano");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["status"] == "budget_exceeded")
            .count(),
        CLIENTS
    );
}
