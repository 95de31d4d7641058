//! Any replica serves any key: three gateway replicas on a three-broker Apache Kafka cluster
//! share every admin change through the control topic. A key made on one serves on the
//! others, a key revoked on one is refused on the others, an allocation made at run time, a
//! limit and a reloaded rate card set on one hold on all, and a restarted replica reads it all
//! back before it listens. Without the brokers a replica does not start, and a running one
//! refuses admin changes while calls go on.
//! The propagation delays are measured and printed (BENCHMARKS.md has them).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{Kafka, ORG, Stack};

/// Rounds of create-and-revoke whose delays are measured.
const ROUNDS: usize = 12;

/// Longest a change may take to reach every replica (the brokers, a fetch, a poll).
const PROPAGATION_MAX: Duration = Duration::from_secs(10);

fn chat(replica: &Stack, key: &str) -> u16 {
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}]});
    post_json(replica.address(), "/v1/chat/completions", key, &body).status
}

/// How long until `replica` answers `key`'s call with `status`, polling.
fn until_status(replica: &Stack, key: &str, status: u16, from: Instant) -> Duration {
    loop {
        let got = chat(replica, key);
        if got == status {
            return from.elapsed();
        }
        assert!(
            from.elapsed() < PROPAGATION_MAX,
            "still {got}, not {status}, after {PROPAGATION_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn allocation<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no allocation {name} in {listing}"))
}

#[test]
fn any_replica_serves_any_key_and_refuses_a_key_revoked_anywhere() {
    let Some(kafka) = Kafka::cluster(3) else {
        return;
    };
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 10000\n",
        kafka.bootstrap
    );
    let mut replicas: Vec<Stack> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|name| Stack::start_with(name, ORG, "", &section, &[]))
        .collect();

    // Keys made on A serve on B and C; revoked on C, they are refused on A and B.
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let maker = &replicas[round % 3];
        let (secret, id) = maker.create_key("open", json!({}));
        let made = Instant::now();
        assert_eq!(chat(maker, &secret), 200, "served where it was made");
        for other in replicas.iter().filter(|r| r.address() != maker.address()) {
            created.push(until_status(other, &secret, 200, made));
        }
        let revoker = &replicas[(round + 1) % 3];
        let answer = revoker.admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None);
        assert_eq!(answer.status, 200, "{}", answer.text());
        let gone = Instant::now();
        assert_eq!(chat(revoker, &secret), 401, "refused where it was revoked");
        for other in replicas.iter().filter(|r| r.address() != revoker.address()) {
            revoked.push(until_status(other, &secret, 401, gone));
        }
    }
    created.sort();
    revoked.sort();
    println!(
        "control topic, 3 replicas on 3 brokers: key usable elsewhere after p50 {:?} p99 {:?} \
         max {:?}; revocation refused elsewhere after p50 {:?} p99 {:?} max {:?} ({} each)",
        percentile(&created, 50),
        percentile(&created, 99),
        created.last().unwrap(),
        percentile(&revoked, 50),
        percentile(&revoked, 99),
        revoked.last().unwrap(),
        created.len()
    );

    // An allocation made at run time on B, and a limit set on A, hold on all three.
    let answer = replicas[1].admin(
        "POST",
        "/admin/v1/allocations",
        Some(json!({"name": "made-on-b", "project": "chatbot",
            "budget": {"limit": "1.00", "period": "month"}})),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    // A sets the limit once the allocation has reached it (it travels the topic like a key):
    // until then A answers 404, as it should for an allocation it does not know.
    let deadline = Instant::now() + PROPAGATION_MAX;
    let answer = loop {
        let answer = replicas[0].admin(
            "PUT",
            "/admin/v1/budgets/allocation/made-on-b",
            Some(json!({"limit": "2.50"})),
        );
        if answer.status != 404 || Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(answer.status, 200, "{}", answer.text());
    let limit = answer.json()["limit"].clone();
    assert!(limit.is_string(), "{limit}");
    let deadline = Instant::now() + PROPAGATION_MAX;
    for replica in &replicas {
        loop {
            let listing = replica.admin("GET", "/admin/v1/allocations", None).json();
            let seen = listing["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == "made-on-b")
                .map(|a| a["budget"]["limit"].clone());
            if seen.as_ref() == Some(&limit) {
                break;
            }
            assert!(Instant::now() < deadline, "limit not seen: {listing}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (on_c, _) = replicas[2].create_key("made-on-b", json!({}));
    until_status(&replicas[0], &on_c, 200, Instant::now());

    // A rate card reloaded on C, with a version to come, is the card of all three.
    let card_path = replicas[2].path().join("rates.toml");
    let mut card = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::open(&card_path).unwrap(), &mut card)
        .unwrap();
    let future = "\n[[version]]\nid = \"2099-01\"\neffective_from = 2099-01-01T00:00:00Z\n\n\
        [[version.model]]\nname = \"openai/gpt-4o-mini\"\ninput_per_mtok = \"0.10\"\n\
        output_per_mtok = \"0.40\"\n";
    std::fs::write(&card_path, format!("{card}{future}")).unwrap();
    let answer = replicas[2].admin("POST", "/admin/v1/rate-card/reload", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let deadline = Instant::now() + PROPAGATION_MAX;
    for replica in &replicas {
        while !replica.admin("GET", "/admin/v1/rate-card", None).json()["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "2099-01")
        {
            assert!(
                Instant::now() < deadline,
                "the reloaded card did not reach every replica"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // A record from a newer build is refused loudly; the changes after it still apply.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .create()
            .unwrap();
        let newer = br#"{"version":99,"origin":"future","change":{"kind":"quota"}}"#;
        producer
            .send(
                BaseRecord::<str, [u8]>::to("tollgate.control")
                    .key("quota/x")
                    .payload(&newer[..]),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    let (after, _) = replicas[0].create_key("open", json!({}));
    until_status(&replicas[1], &after, 200, Instant::now());
    for replica in &replicas {
        assert!(replica.metric("tollgate_control_refused_total") >= 1);
    }

    // A restarted replica reads the topic before it listens: what was made serves at once,
    // what was revoked is refused at once.
    let (kept, _) = replicas[0].create_key("open", json!({}));
    until_status(&replicas[1], &kept, 200, Instant::now());
    replicas[1].restart();
    assert_eq!(
        chat(&replicas[1], &kept),
        200,
        "made on A, after B's restart"
    );
    assert_eq!(
        chat(&replicas[1], &on_c),
        200,
        "made on C, after B's restart"
    );
    let listing = replicas[1]
        .admin("GET", "/admin/v1/allocations", None)
        .json();
    assert_eq!(allocation(&listing, "made-on-b")["budget"]["limit"], limit);
    let last_revoked = replicas[2].create_key("open", json!({}));
    let answer = replicas[2].admin(
        "POST",
        &format!("/admin/v1/keys/{}/revoke", last_revoked.1),
        None,
    );
    assert_eq!(answer.status, 200);
    replicas[0].restart();
    assert_eq!(
        chat(&replicas[0], &last_revoked.0),
        401,
        "revoked on C, after A's restart"
    );
    assert!(replicas[0].metric("tollgate_control_applied_total") > 0);
}

#[test]
fn a_replica_that_cannot_read_the_control_topic_does_not_start() {
    // No broker there: the topic cannot be read, so revocations made elsewhere cannot be known.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let section = format!("[kafka]\nbrokers = \"{dead}\"\ndelivery_timeout_ms = 1000\n");
    let stack = Stack::prepared("control-unreachable", ORG, "", &section, &[]);
    let said = stack.start_refused();
    assert!(
        said.contains("kafka control topic `tollgate.control`"),
        "{said}"
    );
}

#[test]
fn with_the_brokers_away_admin_changes_are_refused_and_calls_go_on() {
    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    // Long enough for a loaded machine's first record to a topic just made; each change in
    // the outage waits this long before it is refused.
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 10000\n",
        kafka.bootstrap
    );
    let stack = Stack::start_with("control-outage", ORG, "", &section, &[]);
    let (serving, id) = stack.create_key("open", json!({}));
    kafka.kill();
    // Not durable in the cluster, so not acknowledged: no key made, none revoked.
    let made = stack.admin(
        "POST",
        "/admin/v1/keys",
        Some(json!({"allocation": "open", "user": "ada@acme.example"})),
    );
    assert_eq!(made.status, 500, "{}", made.text());
    assert!(
        made.json().get("key").is_none(),
        "no secret for a key not made"
    );
    let keys = stack.admin("GET", "/admin/v1/keys", None).json();
    let live: Vec<&Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked"] == false)
        .collect();
    assert_eq!(live.len(), 1, "only the first key is in service: {keys}");
    assert_eq!(live[0]["id"], id.as_str());
    assert_eq!(
        chat(&stack, &serving),
        200,
        "calls go on without the brokers"
    );
    // A revocation that cannot be recorded still stops the key here, and says so.
    let revoked = stack.admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None);
    assert_eq!(revoked.status, 500, "{}", revoked.text());
    assert!(
        revoked.text().contains("revoke it again"),
        "{}",
        revoked.text()
    );
    assert_eq!(chat(&stack, &serving), 401, "refused here at once");
    // The brokers back: changes go through again, and the follower applies them.
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = stack.admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None);
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(chat(&stack, &serving), 401);
    // Recorded now: a restart (reading the topic) still refuses it.
    let mut stack = stack;
    stack.restart();
    assert_eq!(chat(&stack, &serving), 401, "revoked for good");
}

/// A spend guard's block placed on one replica holds on every replica, and an operator's
/// clear on another lifts it everywhere: blocks travel on the control topic like keys.
#[test]
fn a_guard_block_placed_on_one_replica_holds_on_all_until_cleared_on_any() {
    let Some(kafka) = Kafka::start() else {
        return;
    };
    let section = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 10000\n\n[guards.loop]\nrepeats = 3\naction = \"block\"\n",
        kafka.bootstrap
    );
    let replicas: Vec<Stack> = ["blocks-a", "blocks-b"]
        .iter()
        .map(|name| Stack::start_with(name, ORG, "", &section, &[]))
        .collect();
    let (looper, looper_id) = replicas[0].create_key("open", json!({}));
    let (worker, _) = replicas[0].create_key("open", json!({}));
    let made = Instant::now();
    until_status(&replicas[1], &worker, 200, made);
    // The same call three times on A: the third is the loop, and A blocks the key.
    let statuses: Vec<u16> = (0..3).map(|_| chat(&replicas[0], &looper)).collect();
    assert_eq!(statuses, [200, 200, 403]);
    let blocked = Instant::now();
    let took = until_status(&replicas[1], &looper, 403, blocked);
    println!("a block reached the other replica in {took:?}");
    assert_eq!(chat(&replicas[1], &worker), 200, "only the looping key");
    let listed = replicas[1].admin("GET", "/admin/v1/guards", None).json();
    assert_eq!(listed["blocks"][0]["name"], json!(looper_id), "{listed}");

    // Cleared on B: A serves the key again.
    let cleared = replicas[1].admin(
        "POST",
        "/admin/v1/guards/clear",
        Some(json!({"scope": "key", "name": looper_id})),
    );
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    until_status(&replicas[0], &looper, 200, Instant::now());
    assert_eq!(
        replicas[0].admin("GET", "/admin/v1/guards", None).json()["blocks"],
        json!([])
    );
}
