//! Several gateway replicas on one Kafka topic share one budget: each applies the others'
//! settled spend every reconcile interval, so they converge on the same table, and together
//! they overspend a limit by no more than ARCHITECTURE.md's formula:
//!
//! overshoot <= min((N - 1) * L, (N - 1) * (r * D + c * h))
//!
//! with N replicas, limit L, r the fastest replica's spend rate, D the staleness of a replica's
//! view of the others (reconcile interval + ship interval + sync interval + delivery), c the
//! calls a replica has in flight and h the largest hold one call takes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::http::post_json;
use tollgate_tests::nanos;
use tollgate_tests::stack::{Kafka, ORG, Stack};

const LIMIT_NANOS: u64 = 200_000_000; // "0.20"
const RECONCILE_MS: u64 = 500;
const CLIENTS: usize = 4;

#[test]
fn replicas_on_one_topic_converge_and_overshoot_within_the_formula() {
    let Some(kafka) = Kafka::start() else {
        return;
    };
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"shared\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.20\", period = \"total\" }}\n"
    );
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 5000\nreconcile_interval_ms = {RECONCILE_MS}\n",
        kafka.bootstrap
    );
    let mut replicas: Vec<Stack> = ["replica-a", "replica-b"]
        .iter()
        .map(|name| Stack::start_with(name, &org, "", &section, &[]))
        .collect();
    let keys: Vec<String> = replicas
        .iter()
        .map(|r| r.create_key("shared", json!({})).0)
        .collect();
    // Records no replica should apply: not events at all, and an event of an allocation no
    // replica knows. Reconciliation skips them and counts the latter.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .create()
            .unwrap();
        let mut stranger = tollgate_engine::UsageEvent::sample();
        stranger.allocation = Some("nowhere".into());
        stranger.cost_nanos = tollgate_engine::Nanos(5);
        let stranger = stranger.to_json();
        for payload in [&b"not json"[..], b"{\"ts_ms\": \"x\"}", stranger.as_slice()] {
            producer
                .send(BaseRecord::<(), [u8]>::to("tollgate.usage").payload(payload))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    // Both replicas take calls at once until each refuses with 402 for every client.
    let largest_hold = Arc::new(AtomicU64::new(0));
    let spans: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "x ".repeat(2_000)}]});
    std::thread::scope(|scope| {
        for (index, (replica, key)) in replicas.iter().zip(&keys).enumerate() {
            for _ in 0..CLIENTS {
                let (largest_hold, spans, body) = (&largest_hold, &spans, &body);
                let address = replica.address();
                scope.spawn(move || {
                    let started = Instant::now();
                    let stop = AtomicBool::new(false);
                    let deadline = started + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let answer = post_json(address, "/v1/chat/completions", key, body);
                        match answer.status {
                            200 => {}
                            402 => {
                                let requested = answer.json()["error"]["requested"]
                                    .as_str()
                                    .map(nanos)
                                    .unwrap();
                                largest_hold.fetch_max(requested, Ordering::Relaxed);
                                stop.store(true, Ordering::Relaxed);
                            }
                            other => panic!("unexpected {other}"),
                        }
                    }
                    spans.lock().unwrap().push((index, started, Instant::now()));
                });
            }
        }
    });

    // Every event of both replicas: the true total spend.
    let spent_by: Vec<u64> = replicas
        .iter()
        .map(|r| {
            r.events()
                .iter()
                .map(|e| e["cost_nanos"].as_u64().unwrap())
                .sum()
        })
        .collect();
    let total: u64 = spent_by.iter().sum();
    assert!(
        spent_by.iter().all(|&s| s > 0),
        "both replicas served: {spent_by:?}"
    );
    assert!(
        total >= LIMIT_NANOS / 2,
        "the load reached the limit: {total}"
    );

    // Convergence: within a few intervals each replica's table holds everyone's spend, exactly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<u64> = replicas.iter().map(|r| r.spent_nanos("shared")).collect();
        if views.iter().all(|&v| v == total) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: tables {views:?}, events {total}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for replica in &replicas {
        let metrics = tollgate_tests::http::request(replica.address(), "GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        assert!(
            text.lines()
                .any(|l| l == "tollgate_reconcile_unknown_allocation_total 1"),
            "{text}"
        );
    }

    // A restarted replica reads the others' spend from the topic before it admits anything:
    // the moment it listens again, its table holds the whole total.
    replicas[0].kill_and_restart();
    assert_eq!(replicas[0].spent_nanos("shared"), total);
    let after = post_json(
        replicas[0].address(),
        "/v1/chat/completions",
        &keys[0],
        &body,
    );
    assert_eq!(after.status, 402, "a restart never hands out spent budget");

    // The overshoot against the formula, with every term measured in this run.
    let spans = spans.lock().unwrap();
    let seconds = |replica: usize| {
        let (start, end) = spans.iter().filter(|(r, _, _)| *r == replica).fold(
            (None::<Instant>, None::<Instant>),
            |(s, e), (_, a, b)| {
                (
                    Some(s.map_or(*a, |s: Instant| s.min(*a))),
                    Some(e.map_or(*b, |e: Instant| e.max(*b))),
                )
            },
        );
        end.unwrap().duration_since(start.unwrap()).as_secs_f64()
    };
    let rate = (0..2)
        .map(|r| spent_by[r] as f64 / seconds(r).max(0.001))
        .fold(0.0_f64, f64::max);
    // Staleness: the reconcile interval, the shipper's 100 ms, the 10 ms group commit and up
    // to a second of delivery and polling on this shared two-core machine.
    let staleness = (RECONCILE_MS + 100 + 10 + 1_000) as f64 / 1_000.0;
    let hold = largest_hold.load(Ordering::Relaxed) as f64;
    let bound = (rate * staleness + CLIENTS as f64 * hold).min(LIMIT_NANOS as f64);
    let overshoot = total.saturating_sub(LIMIT_NANOS) as f64;
    eprintln!(
        "replicas: limit {LIMIT_NANOS}, spent {total} ({spent_by:?}), overshoot {overshoot} nanos ({:.1} % of the limit), bound {bound:.0} (rate {rate:.0}/s, staleness {staleness} s, hold {hold})",
        overshoot * 100.0 / LIMIT_NANOS as f64
    );
    assert!(
        overshoot <= bound,
        "overshoot {overshoot} above the formula's {bound}"
    );
}
