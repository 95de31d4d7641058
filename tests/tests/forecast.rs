//! Burn-rate forecasts against a running gateway: an allocation spent at a steady pace that
//! would run out long before its month ends gets exactly one alert in `alerts.jsonl`, and its
//! forecast shows in the admin API, `/metrics` and `tollgate spend`; an allocation with a limit
//! and no spend gets no date and no alert.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_engine::time::parse_rfc3339;
use tollgate_tests::http::{post_json, request};
use tollgate_tests::stack::{ORG, Stack, read_lines};

/// Samples every 200 ms: an alert needs 16 samples that spent, so about 3.2 s of spend.
const FORECAST: &str = "[forecast]\ninterval_ms = 200\n";

fn org() -> String {
    let mut org = ORG.to_owned();
    for name in ["burning", "idle"] {
        org.push_str(&format!(
            "\n[[allocation]]\nname = \"{name}\"\nproject = \"chatbot\"\nbudget = {{ limit = \"1.00\", period = \"month\" }}\n"
        ));
    }
    org
}

fn allocation(stack: &Stack, name: &str) -> Value {
    stack.admin("GET", "/admin/v1/allocations", None).json()["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn an_allocation_on_pace_to_run_out_early_is_told_once_and_shown_everywhere() {
    let mut stack = Stack::start_with("forecast", &org(), "", FORECAST, &[]);
    let (key, _) = stack.create_key("burning", json!({}));
    let _idle_key = stack.create_key("idle", json!({}));
    let small = json!({"model": "openai/gpt-4o-mini", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi there"}]});
    // One call every 50 ms for 7 s: a steady pace, four calls a sample.
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < Duration::from_secs(7) {
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &small);
        assert_eq!(answer.status, 200, "{}", answer.text());
        calls += 1;
        let next = Duration::from_millis(50) * calls;
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    let burning = allocation(&stack, "burning");
    let budget = &burning["budget"];
    let runs_out = parse_rfc3339(budget["runs_out_at"].as_str().unwrap()).unwrap();
    let resets = parse_rfc3339(budget["resets_at"].as_str().unwrap()).unwrap();
    assert!(runs_out < resets, "{budget}");
    assert!(budget["burn_per_hour"].as_str().is_some(), "{budget}");
    let idle = allocation(&stack, "idle");
    assert_eq!(idle["budget"]["runs_out_at"], Value::Null, "{idle}");

    let metrics = request(stack.address(), "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains(
            "tollgate_budget_runs_out_timestamp_seconds{level=\"allocation\",name=\"burning\"}"
        ) && !metrics.contains("name=\"idle\""),
        "{metrics}"
    );
    let spend = stack.cli(&["spend"]);
    let spend = String::from_utf8_lossy(&spend.stdout).into_owned();
    assert!(spend.contains("runs_out"), "{spend}");
    // The row's last column is the date (a later sample than the admin read's, so it may
    // differ by a little), before the period's end.
    let row = spend.lines().find(|l| l.starts_with("burning")).unwrap();
    let column = row.split_whitespace().last().unwrap();
    let in_row = parse_rfc3339(column).unwrap_or_else(|e| panic!("{row}: {e:?}"));
    assert!(in_row < resets, "{row}");

    stack.stop();
    let alerts = read_lines(&stack.path().join("events/alerts.jsonl"));
    let told: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "burn_rate_forecast")
        .collect();
    assert_eq!(told.len(), 1, "{alerts:#?}");
    let alert = told[0];
    assert_eq!(
        (&alert["level"], &alert["name"], &alert["period"]),
        (&json!("allocation"), &json!("burning"), &json!("month"))
    );
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.starts_with("allocation `burning` is on pace to run out on ")
            && message.ends_with("days early"),
        "{message}"
    );
    assert!(alert["days_early"].as_i64().unwrap() >= 0, "{alert}");
}

#[test]
fn a_key_about_to_expire_is_told_once_and_others_are_not() {
    let warning = format!("{FORECAST}key_expiry_warning_ms = 86400000\n");
    let mut stack = Stack::start_with("key-expiry", &org(), "", &warning, &[]);
    let (soon, soon_id) = stack.create_key("idle", json!({"expires_in": "2h"}));
    let _later = stack.create_key("idle", json!({"expires_in": "3d"}));
    let _never = stack.create_key("idle", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.metric("tollgate_key_expiry_alerts_total") == 0 {
        assert!(Instant::now() < deadline, "no key expiry alert");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Five more samples: none tells the key again.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(stack.metric("tollgate_key_expiry_alerts_total"), 1);
    stack.stop();

    let alerts = read_lines(&stack.path().join("events/alerts.jsonl"));
    let told: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "key_expiring")
        .collect();
    assert_eq!(told.len(), 1, "{alerts:#?}");
    let alert = told[0];
    assert_eq!(alert["key_id"], json!(soon_id), "{alert}");
    assert_eq!(
        (&alert["allocation"], &alert["user"]),
        (&json!("idle"), &json!("ada@acme.example"))
    );
    let prefix = alert["key_prefix"].as_str().unwrap();
    assert!(
        soon.starts_with(prefix) && prefix.len() < soon.len(),
        "{alert}"
    );
    assert!(
        !alert.to_string().contains(&soon[prefix.len()..]),
        "{alert}"
    );
    let expires = parse_rfc3339(alert["expires_at"].as_str().unwrap()).unwrap();
    let at = parse_rfc3339(alert["at"].as_str().unwrap()).unwrap();
    assert!(
        (7_100_000..=7_200_000).contains(&(expires.0 - at.0)),
        "{alert}"
    );
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "key `{prefix}` of user `ada@acme.example` (allocation `idle`) expires at "
        )) && message.ends_with(", in 2 hours: rotate it"),
        "{message}"
    );
}
