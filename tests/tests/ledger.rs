//! The resource ledger end to end: `/v1/usage` books GPU-, core-hours and GB-months once
//! (after a kill -9 too), priced by the rate-card version in force at their time, into the
//! same budgets, log and Parquet files as tokens; `/v1/usage/authorize` refuses what a budget
//! cannot take and holds what it can, until usage settles the hold, it is released, or it
//! expires; only the admin token or a key with the metering scope may do any of it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tollgate_engine::UnixMs;
use tollgate_tests::http::{self, post_json};
use tollgate_tests::stack::{ADMIN_TOKEN, ORG, Stack};

/// The allocations of these tests, under the ORG's research team (which the example card's
/// 2026-01 version gives 15 % off; the 2026-03 version, in force now, gives nothing):
/// `hpc` without a limit, `gpu-small` with 10.00 a month.
const LEDGER_ORG: &str = r#"
[[allocation]]
name = "hpc"
project = "chatbot"
cost_center = "cc-hpc"

[[allocation]]
name = "gpu-small"
project = "chatbot"
budget = { limit = "10.00", period = "month" }
"#;

/// A short hold lifetime, so expiry is seen in a test, and a window reaching back to the
/// card's first version.
const LEDGER_CONFIG: &str = "[ledger]\nreservation_ttl_ms = 400\nrecord_window_days = 3650\n";

fn start(name: &str) -> Stack {
    Stack::start(name, &format!("{ORG}\n{LEDGER_ORG}"), LEDGER_CONFIG)
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// An RFC 3339 instant `minutes` before now, but not before this month began: the usage of
/// these tests falls in the budget period that is current, whenever they run.
fn ago(minutes: i64) -> String {
    let now = now_ms();
    let month_start = tollgate_engine::Period::Month
        .start(tollgate_engine::Period::Month.index(UnixMs(now)))
        .unwrap();
    UnixMs((now - minutes * 60_000).max(month_start.0)).to_string()
}

fn record(id: &str, allocation: &str, unit: &str, quantity: &str, start: &str) -> Value {
    json!({"id": id, "allocation": allocation, "unit": unit, "quantity": quantity,
           "start": start, "end": start, "cluster": "hpc1", "partition": "h100"})
}

fn usage(stack: &Stack, token: &str, records: &[Value]) -> http::Answer {
    post_json(
        stack.address(),
        "/v1/usage",
        token,
        &json!({ "records": records }),
    )
}

fn booked(stack: &Stack, records: &[Value]) -> Value {
    let answer = usage(stack, ADMIN_TOKEN, records);
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

fn budget(stack: &Stack, allocation: &str) -> Value {
    let all = stack.admin("GET", "/admin/v1/allocations", None).json();
    all["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == allocation)
        .unwrap()["budget"]
        .clone()
}

fn resource_events(stack: &Stack) -> Vec<Value> {
    stack
        .events()
        .into_iter()
        .filter(|e| e["kind"] != "tokens")
        .collect()
}

#[test]
fn usage_is_booked_once_priced_by_its_version_and_counted_against_budgets() {
    let mut stack = start("ledger-book");
    let month_start = {
        let now = UnixMs(now_ms()).to_civil();
        format!("{:04}-{:02}-01T00:00:00Z", now.year, now.month)
    };
    let records = [
        // February: the 2026-01 version's H100 price, 4.50, less the team's 15 %.
        record("job:1:gpu", "hpc", "gpu_hour", "2", "2026-02-10T10:00:00Z"),
        // Now: the 2026-03 version has no H100 price, so its general GPU price, 2.00, and no
        // discount.
        record("job:2:gpu", "hpc", "gpu_hour", "2", &ago(60)),
        record("job:2:core", "hpc", "core_hour", "10", &ago(60)),
        json!({"id": "disk:2", "allocation": "hpc", "unit": "gb_month", "quantity": "3",
               "start": month_start, "end": ago(0), "cluster": "lustre1"}),
    ];
    let first = booked(&stack, &records);
    assert_eq!(
        (first["booked"].as_u64(), first["duplicates"].as_u64()),
        (Some(4), Some(0))
    );
    let results = first["results"].as_array().unwrap();
    let cost = |i: usize| results[i]["cost_nanos"].as_u64().unwrap();
    assert_eq!(results[0]["rate_card_version"], "2026-01");
    assert_eq!(cost(0), 7_650_000_000);
    assert_eq!(results[1]["rate_card_version"], "2026-03");
    assert_eq!(cost(1), 4_000_000_000);
    assert_eq!(cost(2), 350_000_000);
    assert_eq!(cost(3), 69_000_000);
    assert_eq!(results[0]["list_cost"], "9.00");
    // February's spend is history; this month's is in the budget table.
    let this_month = cost(1) + cost(2) + cost(3);
    assert_eq!(stack.spent_nanos("hpc"), this_month);
    assert_eq!(budget(&stack, "gpu-small")["spent_nanos"], 0);

    // Every record is one event in the log, with the id the answer gave.
    let events = resource_events(&stack);
    assert_eq!(events.len(), 4);
    for (event, result) in events.iter().zip(results) {
        assert_eq!(event["event_id"], result["event_id"]);
        assert_eq!(event["request_id"], result["id"]);
        assert_eq!(event["cost_nanos"], result["cost_nanos"]);
        assert_eq!(event["team"], "research");
        assert_eq!(event["cost_center"], "cc-hpc");
    }
    assert_eq!(events[0]["kind"], "compute");
    assert_eq!(events[0]["quantity_micros"], 2_000_000);
    assert_eq!(events[0]["partition"], "h100");
    assert_eq!(events[3]["kind"], "storage");

    // Sent again: nothing changes. Sent again with other content: refused as a conflict.
    let again = booked(&stack, &records);
    assert_eq!(
        (again["booked"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(4))
    );
    let changed = record(
        "job:2:gpu",
        "hpc",
        "gpu_hour",
        "3",
        records[1]["start"].as_str().unwrap(),
    );
    let conflict = booked(&stack, &[changed]);
    assert_eq!(conflict["conflicts"], 1);
    assert_eq!(conflict["results"][0]["status"], "conflict");
    assert_eq!(stack.spent_nanos("hpc"), this_month);
    assert_eq!(resource_events(&stack).len(), 4);

    // kill -9 and start again: the ids and the spend come back from the log.
    stack.kill_and_restart();
    assert_eq!(stack.spent_nanos("hpc"), this_month);
    let after = booked(&stack, &records);
    assert_eq!(
        (after["booked"].as_u64(), after["duplicates"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(stack.spent_nanos("hpc"), this_month);
    assert_eq!(resource_events(&stack).len(), 4);
}

#[test]
fn a_bad_record_refuses_the_whole_batch_naming_it() {
    let stack = start("ledger-bad");
    let good = record("job:9:gpu", "hpc", "gpu_hour", "1", &ago(5));
    let check = |bad: Value, param: &str, needle: &str| {
        let answer = usage(&stack, ADMIN_TOKEN, &[good.clone(), bad]);
        assert_eq!(answer.status, 400, "{}", answer.text());
        let error = &answer.json()["error"];
        assert_eq!(error["param"], param, "{error}");
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        assert!(
            message.contains("nothing in this batch was applied"),
            "{message}"
        );
    };
    check(
        record("b", "hpc", "gpu_hour", "x", &ago(5)),
        "records[1].quantity",
        "decimal",
    );
    let mut float = record("b", "hpc", "gpu_hour", "1", &ago(5));
    float["quantity"] = json!(1.5);
    check(float, "records[1].quantity", "float");
    check(
        record("b", "hpc", "gpu_hour", "-1", &ago(5)),
        "records[1].quantity",
        "negative",
    );
    check(
        record("b", "hpc", "gpu_hour", "0.0000001", &ago(5)),
        "records[1].quantity",
        "6 decimal",
    );
    check(
        record("b", "nowhere", "gpu_hour", "1", &ago(5)),
        "records[1].allocation",
        "unknown allocation",
    );
    // No node-hour price in the 2026-01 version: refused, never free.
    check(
        record("b", "hpc", "node_hour", "1", "2026-02-01T00:00:00Z"),
        "records[1].unit",
        "no price for `node_hour`",
    );
    check(
        record("b", "hpc", "gpu_hour", "1", &ago(-60)),
        "records[1].start",
        "future",
    );
    check(
        record("b", "hpc", "gpu_hour", "1", "2015-01-01T00:00:00Z"),
        "records[1].start",
        "remembers",
    );
    check(
        record("job:9:gpu", "hpc", "gpu_hour", "1", &ago(5)),
        "records[1].id",
        "also the id of records[0]",
    );
    let mut unknown = record("b", "hpc", "gpu_hour", "1", &ago(5));
    unknown["gpus"] = json!(1);
    check(unknown, "records[1].gpus", "unknown field");
    // Nothing of any of those batches was booked: the good record books now, once.
    assert!(resource_events(&stack).is_empty());
    assert_eq!(stack.spent_nanos("hpc"), 0);
    let answer = booked(&stack, &[good]);
    assert_eq!(answer["booked"], 1);
    // A dry run prices and books nothing.
    let dry = post_json(
        stack.address(),
        "/v1/usage",
        ADMIN_TOKEN,
        &json!({"records": [record("job:10:gpu", "hpc", "gpu_hour", "1", &ago(5))], "dry_run": true}),
    )
    .json();
    assert_eq!(
        (dry["would_book"].as_u64(), dry["cost"].as_str()),
        (Some(1), Some("2.00"))
    );
    assert_eq!(resource_events(&stack).len(), 1);
    // Not JSON, or too many records: 400 as well.
    assert_eq!(
        http::request(
            stack.address(),
            "POST",
            "/v1/usage",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"{"
        )
        .status,
        400
    );
}

#[test]
fn authorize_refuses_what_the_budget_cannot_take_and_holds_settle_release_or_expire() {
    let stack = start("ledger-authorize");
    let authorize =
        |body: Value| post_json(stack.address(), "/v1/usage/authorize", ADMIN_TOKEN, &body);
    let gpus = |hours: &str, extra: Value| {
        let mut body = json!({"allocation": "gpu-small", "unit": "gpu_hour", "quantity": hours,
                              "cluster": "hpc1", "partition": "h100"});
        if let (Some(fields), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            fields.extend(extra.clone());
        }
        body
    };
    let in_flight = || {
        budget(&stack, "gpu-small")["in_flight"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // 2 GPU-hours at 2.00: 4.00 of the 10.00; asking holds nothing.
    let asked = authorize(gpus("2", json!({})));
    assert_eq!(asked.status, 200, "{}", asked.text());
    let asked = asked.json();
    assert_eq!(
        (asked["allowed"].as_bool(), asked["cost"].as_str()),
        (Some(true), Some("4.00"))
    );
    assert_eq!(asked["remaining"], "6.00");
    assert_eq!(asked["reservation"], Value::Null);
    assert_eq!(in_flight(), "0.00");

    // 10 GPU-hours (20.00) do not fit: the same 402 body as a model call's.
    let refused = authorize(gpus("10", json!({"reserve": true})));
    assert_eq!(refused.status, 402);
    let error = &refused.json()["error"];
    assert_eq!(error["type"], "budget_exceeded");
    assert_eq!(error["code"], "budget_exceeded");
    assert_eq!(
        (
            &error["team"],
            &error["project"],
            &error["allocation"],
            &error["level"]
        ),
        (
            &json!("research"),
            &json!("chatbot"),
            &json!("gpu-small"),
            &json!("allocation")
        )
    );
    assert_eq!(
        (&error["limit"], &error["remaining"], &error["requested"]),
        (&json!("10.00"), &json!("10.00"), &json!("20.00"))
    );
    assert_eq!(error["period"], "month");
    assert!(error["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));

    // A hold of 4.00 counts against the budget until settled.
    // Holds that must outlive the test's steps ask for their own lifetime; the configured
    // 400 ms is for the one that expires.
    let held = authorize(gpus("2", json!({"reserve": true, "ttl_ms": 600_000})));
    assert_eq!(held.status, 201, "{}", held.text());
    let held = held.json();
    let reservation = held["reservation"]["id"].as_str().unwrap().to_owned();
    assert!(reservation.starts_with("rsv_"));
    assert_eq!(in_flight(), "4.00");
    // 8.00 more does not fit beside the hold, but would once it is settled: the budget is
    // busy, not spent, and the caller is told to retry.
    let busy = authorize(gpus("4", json!({})));
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.json()["error"]["type"], "budget_busy");
    assert_eq!(busy.json()["error"]["remaining"], "6.00");
    // The job ran 1.5 GPU-hours: its accounting settles the hold at actual.
    let mut done = record(
        "slurm:hpc1:77:gpu_hour",
        "gpu-small",
        "gpu_hour",
        "1.5",
        &ago(1),
    );
    done["reservation"] = json!(reservation);
    let settled = booked(&stack, &[done]);
    assert_eq!(settled["results"][0]["reservation"]["settled"], true);
    assert_eq!(in_flight(), "0.00");
    assert_eq!(budget(&stack, "gpu-small")["spent_nanos"], 3_000_000_000u64);

    // A hold given back by hand, then unknown.
    let held = authorize(gpus("1", json!({"reserve": true, "ttl_ms": 600_000}))).json();
    let id = held["reservation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(in_flight(), "2.00");
    let path = format!("/v1/usage/reservations/{id}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let released = http::request(
        stack.address(),
        "DELETE",
        &path,
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(released.json()["amount"], "2.00");
    assert_eq!(in_flight(), "0.00");
    assert_eq!(
        http::request(
            stack.address(),
            "DELETE",
            &path,
            &[("authorization", &auth)],
            b""
        )
        .status,
        404
    );

    // A hold nobody settles expires (after the configured 400 ms) and its amount comes back.
    let held = authorize(gpus("1", json!({"reserve": true}))).json();
    let expiring = held["reservation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(held["reservation"]["amount"], "2.00");
    let lifetime = held["reservation"]["expires_at_ms"].as_i64().unwrap() - now_ms();
    assert!(
        lifetime <= 400,
        "the configured lifetime, not the default: {lifetime} ms"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_flight() != "0.00" {
        assert!(Instant::now() < deadline, "the hold never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = http::request(stack.address(), "GET", "/metrics", &[], b"").text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tollgate_usage_reservations_expired_total 1"),
        "{metrics}"
    );
    // Late accounting naming the expired hold is still booked (the usage happened).
    let mut late = record(
        "slurm:hpc1:78:gpu_hour",
        "gpu-small",
        "gpu_hour",
        "1",
        &ago(1),
    );
    late["reservation"] = json!(expiring);
    let late = booked(&stack, &[late]);
    assert_eq!(
        (
            late["booked"].as_u64(),
            &late["results"][0]["reservation"]["settled"]
        ),
        (Some(1), &json!(false))
    );

    // Usage that happened is booked even past the limit, and flagged; then nothing is admitted.
    let big = booked(
        &stack,
        &[record(
            "slurm:hpc1:79:gpu_hour",
            "gpu-small",
            "gpu_hour",
            "5",
            &ago(1),
        )],
    );
    assert_eq!(big["results"][0]["over_limit"], true);
    assert_eq!(
        budget(&stack, "gpu-small")["spent_nanos"],
        3_000_000_000 + 2_000_000_000 + 10_000_000_000u64
    );
    assert_eq!(authorize(gpus("0.01", json!({}))).status, 402);
    // Storage on a tier without its own price takes the general one; an allocation without a
    // limit is always allowed.
    let storage = authorize(
        json!({"allocation": "hpc", "unit": "gb_month", "quantity": "100", "partition": "tape"}),
    );
    assert_eq!(storage.status, 200, "{}", storage.text());
    assert_eq!(
        (
            storage.json()["cost"].as_str(),
            &storage.json()["remaining"]
        ),
        (Some("2.30"), &Value::Null)
    );
    let scratch = authorize(
        json!({"allocation": "hpc", "unit": "gb_month", "quantity": "100", "partition": "scratch"}),
    );
    assert_eq!(scratch.json()["cost"], "1.00");
    assert_eq!(
        authorize(json!({"allocation": "nowhere", "unit": "gpu_hour", "quantity": "1"})).status,
        404
    );
    assert_eq!(
        authorize(json!({"allocation": "gpu-small", "unit": "gpu_hour", "quantity": 1.5})).status,
        400
    );
}

#[test]
fn metering_takes_the_admin_token_or_a_key_with_the_metering_scope() {
    let mut stack = start("ledger-scope");
    let (plain, _) = stack.create_key("open", json!({}));
    let (meter, meter_id) = stack.create_key("open", json!({"scopes": ["metering"]}));
    let one = |id: &str| [record(id, "hpc", "gpu_hour", "1", &ago(1))];

    let refused = usage(&stack, &plain, &one("a"));
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["type"], "permission_denied");
    let refused = post_json(
        stack.address(),
        "/v1/usage/authorize",
        &plain,
        &json!({"allocation": "hpc", "unit": "gpu_hour", "quantity": "1"}),
    );
    assert_eq!(refused.status, 403);
    assert_eq!(usage(&stack, "", &one("a")).status, 401);
    assert_eq!(usage(&stack, "tg_not_a_key", &one("a")).status, 401);
    assert!(resource_events(&stack).is_empty());
    let bad_scope = stack.admin(
        "POST",
        "/admin/v1/keys",
        Some(json!({"allocation": "open", "user": "u", "scopes": ["root"]})),
    );
    assert_eq!(bad_scope.status, 400);

    // The metering key books for any allocation; the event names the key that sent it.
    let answer = usage(&stack, &meter, &one("b"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(resource_events(&stack)[0]["key_id"], meter_id);
    let keys = stack.admin("GET", "/admin/v1/keys", None).json();
    let listed = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == meter_id)
        .unwrap()
        .clone();
    assert_eq!(listed["scopes"], json!(["metering"]));

    // The scope is journaled: it holds after a restart, and a rotated key keeps it.
    stack.restart();
    assert_eq!(usage(&stack, &meter, &one("c")).status, 200);
    assert_eq!(usage(&stack, &plain, &one("d")).status, 403);
    let rotated = stack
        .admin("POST", &format!("/admin/v1/keys/{meter_id}/rotate"), None)
        .json();
    let new_key = rotated["key"].as_str().unwrap();
    assert_eq!(usage(&stack, new_key, &one("e")).status, 200);
    assert_eq!(
        usage(&stack, &meter, &one("f")).status,
        401,
        "the old key is revoked"
    );
}
