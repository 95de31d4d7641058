//! Alert delivery to a real HTTP receiver: every alert written to `alerts.jsonl` reaches both
//! webhooks (a signed generic JSON one and a Slack-compatible one), across a receiver that
//! answers 503 for a while and a `kill -9` of the gateway with alerts not yet delivered. No
//! alert is lost; one delivered twice comes with the same idempotency key; every signature
//! checks out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ORG, Stack, read_lines};

const SECRET: &str = "whsec-test-0123456789";

/// One request the receiver took: its path, headers (names lower-cased), body, and whether it
/// was answered 200.
#[derive(Clone, Debug)]
struct Taken {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    accepted: bool,
}

/// An HTTP receiver on a thread: answers 200, or 503 while `down`, and keeps every request.
struct Receiver {
    address: SocketAddr,
    down: Arc<AtomicBool>,
    taken: Arc<Mutex<Vec<Taken>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let (is_down, kept) = (Arc::clone(&down), Arc::clone(&taken));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut headers = BTreeMap::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        headers.insert(name.trim().to_lowercase(), value.trim().to_owned());
                    }
                }
                let length: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let accepted = !is_down.load(Ordering::SeqCst);
                let status = if accepted {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
                kept.lock().unwrap().push(Taken {
                    path,
                    headers,
                    body,
                    accepted,
                });
            }
        });
        Receiver {
            address,
            down,
            taken,
        }
    }

    fn taken(&self) -> Vec<Taken> {
        self.taken.lock().unwrap().clone()
    }

    /// The idempotency keys `path` accepted.
    fn accepted(&self, path: &str) -> BTreeSet<String> {
        self.taken()
            .into_iter()
            .filter(|t| t.path == path && t.accepted)
            .map(|t| t.headers["idempotency-key"].clone())
            .collect()
    }
}

fn org() -> String {
    let mut org = ORG.to_owned();
    for n in 1..=6 {
        org.push_str(&format!(
            "\n[[allocation]]\nname = \"hook-{n}\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.01\", period = \"month\", soft_limit_percent = 1 }}\n"
        ));
    }
    org
}

fn webhooks(receiver: SocketAddr) -> String {
    format!(
        "[[webhook]]\nname = \"finops\"\nurl = \"http://{receiver}/hook\"\nsecret_env = \"TEST_WEBHOOK_SECRET\"\n\n\
         [[webhook]]\nname = \"chat\"\nurl = \"http://{receiver}/slack\"\nformat = \"slack\"\n"
    )
}

/// One call on each of `allocations`, each crossing its soft limit: one alert each.
fn cross(stack: &Stack, allocations: &[&str]) {
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 64,
        "messages": [{"role": "user", "content": "x ".repeat(1_500)}]});
    for allocation in allocations {
        let (key, _) = stack.create_key(allocation, json!({}));
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
}

fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_alert_reaches_every_webhook_once_at_least_across_a_receiver_outage_and_a_kill() {
    let receiver = Receiver::start();
    let mut stack = Stack::prepared("webhooks", &org(), "", &webhooks(receiver.address), &[]);
    stack.set_env("TEST_WEBHOOK_SECRET", SECRET);
    stack.launch();

    cross(&stack, &["hook-1", "hook-2", "hook-3"]);
    until("three alerts at each webhook", || {
        receiver.accepted("/hook").len() == 3 && receiver.accepted("/slack").len() == 3
    });

    // The receiver answers 503: the alerts wait, retried; then the gateway is killed with
    // them undelivered, and started again while the receiver is still down.
    receiver.down.store(true, Ordering::SeqCst);
    cross(&stack, &["hook-4", "hook-5", "hook-6"]);
    until("a refused attempt", || {
        receiver.taken().iter().any(|t| !t.accepted)
    });
    stack.kill();
    stack.launch();
    std::thread::sleep(Duration::from_secs(1));
    receiver.down.store(false, Ordering::SeqCst);

    let written: BTreeSet<String> = read_lines(&stack.path().join("events/alerts.jsonl"))
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(written.len(), 6, "{written:?}");
    until("every alert at each webhook", || {
        receiver.accepted("/hook") == written && receiver.accepted("/slack") == written
    });

    // Every delivery of one alert is the same body; every generic one is signed, recently.
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut bodies: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let taken = receiver.taken();
    for t in &taken {
        let key = t.headers["idempotency-key"].clone();
        if let Some(before) = bodies.insert((t.path.clone(), key.clone()), t.body.clone()) {
            assert_eq!(before, t.body, "a resend of {key} is the same alert");
        }
        let alert: Value = serde_json::from_slice(&t.body).unwrap();
        if t.path == "/slack" {
            assert!(
                alert["text"].as_str().unwrap().contains("`hook-"),
                "{alert}"
            );
            assert!(!t.headers.contains_key("tollgate-signature"));
            continue;
        }
        assert_eq!(alert["id"], key.as_str());
        assert_eq!(alert["kind"], "soft_limit_crossed");
        let signature = &t.headers["tollgate-signature"];
        let (stamp, sent) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap();
        let stamp: i64 = stamp.parse().unwrap();
        assert!(
            (now_s - stamp).abs() < 120,
            "signed at {stamp}, now {now_s}"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{stamp}.").as_bytes());
        mac.update(&t.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sent, expected, "the signature checks out");
    }
    let refused = taken.iter().filter(|t| !t.accepted).count();
    let accepted = taken.iter().filter(|t| t.accepted).count();
    eprintln!(
        "webhooks: 6 alerts, 2 webhooks: {accepted} deliveries accepted ({} resent), {refused} \
         refused while the receiver was down, one kill -9 between",
        accepted - 12
    );
}
