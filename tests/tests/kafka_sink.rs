//! `tollgate sink` against a real Apache Kafka broker: the topic lands in Parquet with every
//! event exactly once, through a crash between a file and its commit, a `kill -9` mid-run,
//! duplicate deliveries and messages that are not events; and the whole path (gateway, log,
//! shipper, broker outage, sink crash, Parquet) balances against the load harness's books.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use tollgate_engine::{EventId, Nanos, UnixMs, UsageEvent};
use tollgate_tests::fault::Figures;
use tollgate_tests::stack::{FLEET_ORG, Kafka, ORG, Stack, harness};
use tollgate_tests::{TempDir, duckdb_row, parquet_rows as rows, read_text, tollgate_bin};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sink_config(dir: &Path, bootstrap: &str, topic: &str) -> PathBuf {
    let path = dir.join("sink.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\ngroup_id = \"sink-{}\"\n\
             [parquet]\ndir = \"data\"\nrows_max = 400\nroll_interval_ms = 300\n",
            std::process::id()
        ),
    )
    .unwrap();
    path
}

/// A running sink, killed if a failing test drops it (a `Child` alone would outlive the test).
struct SinkProcess(Option<Child>);

impl SinkProcess {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.0.take().unwrap().wait().unwrap()
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_sink(config: &Path, fault: Option<&str>) -> SinkProcess {
    let mut command = Command::new(tollgate_bin().unwrap());
    command
        .args(["sink", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match fault {
        Some(point) => command.env("TOLLGATE_FAULT", point),
        None => command.env_remove("TOLLGATE_FAULT"),
    };
    SinkProcess(Some(command.spawn().unwrap()))
}

fn wait_for(what: &str, deadline_s: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(mut sink: SinkProcess) {
    let mut child = sink.0.take().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the sink did not stop cleanly: {status}");
}

/// DuckDB's count, distinct count and exact sum over the files, checked against `expect`.
fn duckdb_agrees(data: &Path, events: usize, cost_nanos: i128) {
    let glob = data.join("usage").join("**").join("*.parquet");
    let sql = format!(
        "SELECT count(*), count(DISTINCT event_id), sum(cost) FROM read_parquet('{}', hive_partitioning = true)",
        glob.display()
    );
    if let Some(row) = duckdb_row(&sql) {
        let whole = cost_nanos / 1_000_000_000;
        let fraction = cost_nanos % 1_000_000_000;
        assert_eq!(row[0], events.to_string(), "DuckDB count");
        assert_eq!(row[1], events.to_string(), "DuckDB distinct event ids");
        assert_eq!(row[2], format!("{whole}.{fraction:09}"), "DuckDB exact sum");
    }
}

/// The tests here run one at a time: each starts its own brokers and kills them, and three
/// clusters restarting at once on a two-core machine starve one another past the books' wait.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn the_sink_writes_each_event_exactly_once_through_crashes_duplicates_and_garbage() {
    let _alone = alone();
    let Some(kafka) = Kafka::start() else {
        return;
    };
    let dir = TempDir::new("kafka-sink").unwrap();
    let topic = "tollgate.usage.sink";
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let mut expected: BTreeMap<String, i128> = BTreeMap::new();
    let mut payloads = Vec::new();
    for i in 0u32..2_000 {
        let mut event = UsageEvent::sample();
        let mut random = [0u8; 10];
        random[..4].copy_from_slice(&i.to_le_bytes());
        event.event_id = EventId::v7(UnixMs(1_764_000_000_000 + i64::from(i)), &random);
        event.ts_ms = UnixMs(1_764_000_000_000 + i64::from(i) * 1_000);
        event.cost_nanos = Nanos(1_000 + u64::from(i));
        event.allocation = Some(format!("alloc-{}", i % 8).into());
        expected.insert(event.event_id.to_string(), i128::from(1_000 + i));
        payloads.push((format!("alloc-{}", i % 8), event.to_json()));
    }
    let send = |key: &str, payload: &[u8]| loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => break,
            Err((_, _)) => {
                producer.poll(Duration::from_millis(50));
            }
        }
    };
    for (key, payload) in &payloads {
        send(key, payload);
    }
    // Duplicate deliveries: the first 300 events again (a shipper's resend after a failure).
    for (key, payload) in payloads.iter().take(300) {
        send(key, payload);
    }
    // Not usage events: kept in quarantine, never dropped, never fatal.
    for garbage in [&b"not json"[..], b"{\"event_id\": 7}", b"\xff\xfe"] {
        send("alloc-0", garbage);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let config = sink_config(dir.path(), &kafka.bootstrap, topic);
    let data = dir.path().join("data");

    // 1. A crash between writing a file and committing it: the process dies right after its
    //    first file.
    let crashed = spawn_sink(&config, Some("sink-after-files"));
    let status = crashed.wait();
    assert!(!status.success(), "the fault point was not reached");
    assert!(!rows(&data).is_empty(), "the crash left a file behind");

    // 2. kill -9 in the middle of a later run.
    let mut running = spawn_sink(&config, None);
    wait_for("a first committed batch", 60, || {
        data.join("usage/_kafka").join(topic).is_dir()
    });
    running.kill();

    // 3. A run to the end, stopped as an operator stops it.
    let running = spawn_sink(&config, None);
    wait_for("every event in Parquet", 120, || {
        rows(&data).len() >= expected.len()
    });
    std::thread::sleep(Duration::from_millis(500)); // anything extra would show up now
    terminate(running);

    let found = rows(&data);
    let mut by_id: BTreeMap<String, (u32, i128)> = BTreeMap::new();
    for (id, cost) in &found {
        let entry = by_id.entry(id.clone()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = *cost;
    }
    let doubled: Vec<_> = by_id.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(doubled.is_empty(), "events written twice: {doubled:?}");
    assert_eq!(found.len(), expected.len(), "every event exactly once");
    for (id, cost) in &expected {
        assert_eq!(by_id.get(id).map(|(_, c)| *c), Some(*cost), "{id}");
    }
    // The three messages that were not events are kept, with where they were and why.
    let quarantine: String = std::fs::read_dir(data.join("usage/_quarantine"))
        .unwrap()
        .flatten()
        .map(|e| read_text(&e.path()))
        .collect();
    assert_eq!(quarantine.lines().count(), 3, "{quarantine}");
    for line in quarantine.lines() {
        let kept: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            kept["offset"].is_i64() && kept["reason"].is_string(),
            "{kept}"
        );
    }
    assert!(quarantine.contains(&hex(b"not json")), "{quarantine}");
    duckdb_agrees(&data, expected.len(), expected.values().sum());
    Figures {
        fault: "kill -9 of tollgate sink between a file and its commit, and mid-run",
        answered: expected.len() as u64,
        lost: expected.keys().filter(|id| !by_id.contains_key(*id)).count() as u64,
        doubled: doubled.len() as u64,
        over_limit_nanos: 0,
        recover_ms: None,
        note: "duplicate deliveries and 3 messages that are not events (kept in _quarantine) in the topic too".into(),
    }
    .report();
}

#[test]
fn gateway_to_kafka_to_sink_balances_the_books_through_a_broker_outage_and_a_sink_crash() {
    let _alone = alone();
    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    // The gateway ships to Kafka and writes no Parquet of its own; the sink writes it. One
    // gateway, its admin changes kept in its journal (`control = false`): the harness makes
    // its keys while the broker may already be down, and with the control topic on an admin
    // change waits for the brokers (tests/control_topic.rs tests that).
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 3000\ncontrol = false\n\n\
         [parquet]\nenabled = false\n",
        kafka.bootstrap
    );
    let stack = Stack::start_with(
        "kafka-books",
        &format!("{ORG}{FLEET_ORG}"),
        "",
        &section,
        &[],
    );
    let sink_dir = TempDir::new("kafka-books-sink").unwrap();
    let config = sink_config(sink_dir.path(), &kafka.bootstrap, "tollgate.usage");
    let data = sink_dir.path().join("data");
    let mut sink = spawn_sink(&config, None);
    let out = sink_dir.path().join("report");
    let harness = harness(stack.address(), &data, &out)
        .args([
            "--scenario",
            "smoke",
            "--seconds",
            "8",
            "--require-balanced",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the fleet runs: the sink dies hard and comes back; the broker dies and comes back.
    std::thread::sleep(Duration::from_secs(2));
    sink.kill();
    sink = spawn_sink(&config, None);
    std::thread::sleep(Duration::from_secs(1));
    kafka.kill();
    std::thread::sleep(Duration::from_secs(2));
    kafka.restart();
    let finished = harness.wait_with_output().unwrap();
    let report = read_text(&out.join("report.json"));
    assert!(
        finished.status.success(),
        "{}\n{}\n{report}",
        String::from_utf8_lossy(&finished.stdout),
        String::from_utf8_lossy(&finished.stderr)
    );
    terminate(sink);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let books = &report["books"];
    assert_eq!(books["problems"], serde_json::json!([]), "{books}");
    assert_eq!(books["parquet_events"], books["answered"]);
    // DuckDB over the sink's files: the same count and the budget table's exact total.
    let events = usize::try_from(books["parquet_events"].as_u64().unwrap()).unwrap();
    let spent = i128::from(books["gateway_spent_nanos"].as_u64().unwrap());
    duckdb_agrees(&data, events, spent);
    let filed = rows(&data);
    let distinct: std::collections::HashSet<&str> =
        filed.iter().map(|(id, _)| id.as_str()).collect();
    let answered = books["answered"].as_u64().unwrap();
    Figures {
        fault: "a broker outage and a kill -9 of tollgate sink, under the load harness",
        answered,
        lost: answered.saturating_sub(distinct.len() as u64),
        doubled: (filed.len() - distinct.len()) as u64,
        over_limit_nanos: 0,
        recover_ms: None,
        note: format!(
            "gateway, log, shipper, Kafka, sink, Parquet: {} Parquet rows for {answered} answered calls; the harness's books balance",
            filed.len()
        ),
    }
    .report();
}

#[test]
fn a_three_broker_cluster_loses_a_broker_mid_run_and_every_event_lands_once() {
    let _alone = alone();
    use serde_json::json;
    use tollgate_tests::http::post_json;

    let Some(mut kafka) = Kafka::cluster(3) else {
        return;
    };
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 10000\n\n[parquet]\nenabled = false\n",
        kafka.bootstrap
    );
    let mut stack = Stack::start_with("kafka-cluster", ORG, "", &section, &[]);
    let (key, _) = stack.create_key("open", json!({}));
    let sink_dir = TempDir::new("kafka-cluster-sink").unwrap();
    let config = sink_config(sink_dir.path(), &kafka.bootstrap, "tollgate.usage");
    let data = sink_dir.path().join("data");
    let sink = spawn_sink(&config, None);
    let call = |stack: &Stack| {
        let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello cluster"}]});
        assert_eq!(
            post_json(stack.address(), "/v1/chat/completions", &key, &body).status,
            200
        );
    };
    for _ in 0..150 {
        call(&stack);
    }
    wait_for("the first events in Parquet", 120, || {
        !rows(&data).is_empty()
    });
    // One of three brokers dies: partitions it led fail over to the in-sync replicas, the
    // group's coordinator too if it was there; acks=all still has its majority.
    kafka.kill_node(0);
    for _ in 0..150 {
        call(&stack);
    }
    stack.stop(); // the last sync and the last shipping pass
    let logged: BTreeMap<String, i128> = stack
        .events()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                i128::from(e["cost_nanos"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(logged.len(), 300);
    wait_for("every event in Parquet", 180, || {
        rows(&data).len() >= logged.len()
    });
    std::thread::sleep(Duration::from_millis(500)); // anything extra would show up now
    terminate(sink);
    let found: BTreeMap<String, i128> = rows(&data).into_iter().collect();
    Figures {
        fault: "a broker of three killed mid-run",
        answered: logged.len() as u64,
        lost: logged.keys().filter(|id| !found.contains_key(*id)).count() as u64,
        doubled: (rows(&data).len() - found.len()) as u64,
        over_limit_nanos: 0,
        recover_ms: None,
        note: "acks=all with min.insync.replicas=2 of 3; partitions and the group coordinator fail over".into(),
    }
    .report();
    assert_eq!(rows(&data).len(), logged.len(), "no event twice");
    assert_eq!(found, logged, "every event, with its cost");
    duckdb_agrees(&data, logged.len(), logged.values().sum());
}
