//! The durable log shipped to a real Apache Kafka broker by `sink::kafka::Shipper`: every event
//! arrives; with the broker down nothing is acknowledged, the checkpoint stays, and shipping
//! resumes where it stopped when the broker returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::Value;
use tollgate_engine::{EventId, UnixMs, UsageEvent};
use tollgate_sink::kafka::{KafkaConfig, Shipper};
use tollgate_sink::log::{Log, SEGMENT_BYTES_MAX};
use tollgate_tests::TempDir;
use tollgate_tests::stack::Kafka;

/// Every event id on the topic, read from the beginning by a new consumer group.
fn topic_event_ids(bootstrap: &str, topic: &str, expected: usize) -> (BTreeSet<String>, usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("tests-{}", std::process::id()))
        // A new group must read from the earliest offset, or it silently skips the backlog.
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut ids = BTreeSet::new();
    let mut messages = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let event: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            ids.insert(event["event_id"].as_str().unwrap().to_owned());
            messages += 1;
        }
    }
    (ids, messages)
}

fn events(log: &mut Log, first: u8, n: u8) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let payloads: Vec<Vec<u8>> = (first..first + n)
        .map(|i| {
            let mut event = UsageEvent::sample();
            event.event_id = EventId::v7(UnixMs(1_764_000_000_000), &[i; 10]);
            ids.insert(event.event_id.to_string());
            event.to_json()
        })
        .collect();
    log.append(&payloads).unwrap();
    log.sync().unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_reaches_kafka_and_a_broker_outage_loses_nothing() {
    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    let dir = TempDir::new("ship").unwrap();
    let (mut log, _) = Log::open(&dir.path().join("log"), SEGMENT_BYTES_MAX).unwrap();
    let config = KafkaConfig {
        brokers: kafka.bootstrap.clone(),
        topic: "tollgate.usage".into(),
        delivery_timeout: Duration::from_secs(3),
        origin: "test".into(),
    };
    let mut shipper = Shipper::new(&dir.path().join("log"), &config).unwrap();

    let mut sent = events(&mut log, 0, 20);
    assert_eq!(shipper.ship_or_reset(log.next_offset()).await.unwrap(), 20);
    assert_eq!(shipper.checkpoint().unwrap(), 20);

    // The broker goes away: deliveries fail, nothing is acknowledged, the checkpoint stays.
    kafka.kill();
    sent.extend(events(&mut log, 20, 10));
    assert!(shipper.ship_or_reset(log.next_offset()).await.is_err());
    assert_eq!(
        shipper.checkpoint().unwrap(),
        20,
        "nothing unacknowledged is counted as shipped"
    );

    // It returns: the backlog drains from the checkpoint.
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while shipper.checkpoint().unwrap() < log.next_offset() {
        assert!(Instant::now() < deadline, "the backlog never drained");
        let _ = shipper.ship_or_reset(log.next_offset()).await;
    }
    shipper.flush(Duration::from_secs(5)).unwrap();
    let (shipped, messages) = topic_event_ids(&kafka.bootstrap, "tollgate.usage", sent.len());
    assert_eq!(shipped, sent, "every logged event is on the topic");
    assert!(
        messages >= sent.len(),
        "a redelivery may repeat an event, never drop one"
    );
}

/// The gateway ships its own log: a broker outage while it serves costs no event.
#[test]
fn the_gateway_ships_every_event_through_a_broker_outage() {
    use serde_json::json;
    use tollgate_tests::http::post_json;
    use tollgate_tests::stack::{ORG, Stack};

    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 3000\n",
        kafka.bootstrap
    );
    let mut stack = Stack::start_with("gateway-kafka", ORG, "", &section, &[]);
    let (key, _) = stack.create_key("open", json!({}));
    let call = |stack: &Stack| {
        let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            post_json(stack.address(), "/v1/chat/completions", &key, &body).status,
            200
        );
    };
    for _ in 0..10 {
        call(&stack);
    }
    kafka.kill();
    for _ in 0..10 {
        call(&stack); // the broker is gone; the gateway answers all the same
    }
    kafka.restart();
    for _ in 0..5 {
        call(&stack);
    }
    stack.stop(); // the last sync, then the last shipping pass
    let logged: BTreeSet<String> = stack
        .events()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(logged.len(), 25);
    let (shipped, _) = topic_event_ids(&kafka.bootstrap, "tollgate.usage", logged.len());
    tollgate_tests::fault::Figures {
        fault: "the broker down and back while the gateway serves",
        answered: 25,
        lost: logged.difference(&shipped).count() as u64,
        doubled: 0,
        over_limit_nanos: 0,
        recover_ms: None,
        note: "every call answered while the broker was away; the shipper sent the log's backlog once it was back".into(),
    }
    .report();
    assert_eq!(shipped, logged, "every logged event is on the topic");
}

/// Every alert is also a record on the alerts topic, keyed by its id, from the replica that
/// wrote it: here a key about to expire, told while the broker is away and published once it
/// is back, and a limit reached.
#[test]
fn alerts_are_records_on_the_alerts_topic_through_a_broker_outage() {
    use rdkafka::message::Headers as _;
    use serde_json::json;
    use tollgate_tests::http::post_json;
    use tollgate_tests::stack::{ORG, Stack, read_lines};

    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 2000\nreplica = \"alerts-1\"\ncontrol = false\n\n[forecast]\ninterval_ms = 200\n",
        kafka.bootstrap
    );
    let org = format!(
        "{ORG}\n[[allocation]]\nname = \"tiny\"\nproject = \"chatbot\"\nbudget = {{ limit = \"0.000001\", period = \"month\" }}\n"
    );
    let mut stack = Stack::start_with("kafka-alerts", &org, "", &section, &[]);
    kafka.kill();
    let _expiring = stack.create_key("open", json!({"expires_in": "2h"}));
    let (tiny, _) = stack.create_key("tiny", json!({}));
    let body = json!({"model": "openai/gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &tiny, &body).status,
        402
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.metric("tollgate_alerts_publish_failed_total") == 0 {
        assert!(Instant::now() < deadline, "no publish was tried");
        std::thread::sleep(Duration::from_millis(100));
    }
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.metric("tollgate_alerts_published_total") < 2 {
        assert!(
            Instant::now() < deadline,
            "the alerts never reached the topic"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stack.stop();
    let written: BTreeSet<String> = read_lines(&stack.path().join("events/alerts.jsonl"))
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(written.len() >= 2, "{written:?}");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", format!("alerts-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["tollgate.alerts"]).unwrap();
    let mut published = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while published.len() < written.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let alert: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let id = alert["id"].as_str().unwrap().to_owned();
        assert_eq!(message.key(), Some(id.as_bytes()), "keyed by its id");
        let origin = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "tollgate-origin"))
            .and_then(|h| h.value)
            .unwrap();
        assert_eq!(origin, b"alerts-1");
        kinds.insert(alert["kind"].as_str().unwrap().to_owned());
        published.insert(id);
    }
    assert_eq!(published, written, "every alert written is on the topic");
    assert!(
        kinds.contains("key_expiring") && kinds.contains("budget_exhausted"),
        "{kinds:?}"
    );
}
