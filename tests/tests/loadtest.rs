//! The load harness end to end: bundled scenarios against the real gateway and mock provider,
//! with the harness's own books checked against the Parquet files and the budget table.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tollgate_tests::stack::{self, FLEET_ORG, ORG, PROVIDER_KEY, Stack};
use tollgate_tests::{loadtest_bin, read_text};

fn fleet_stack(name: &str) -> Stack {
    Stack::start(name, &format!("{ORG}{FLEET_ORG}"), "")
}

fn harness(stack: &Stack, out: &Path, args: &[&str]) -> Output {
    stack::harness(stack.address(), &stack.path().join("data"), out)
        .args(args)
        .output()
        .unwrap()
}

/// Fails with the harness's output unless it succeeded.
fn assert_ran(run: &Output) {
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn report(out: &Path) -> Value {
    let text = read_text(&out.join("report.json"));
    serde_json::from_str(&text).unwrap()
}

/// Runs `scenario` for `seconds` with `agents` against `stack`, books required to balance;
/// its report.
fn balanced_run(stack: &Stack, scenario: &str, seconds: &str, agents: &str) -> Value {
    let out = stack.path().join(format!("{scenario}-report"));
    let run = harness(
        stack,
        &out,
        &[
            "--scenario",
            scenario,
            "--seconds",
            seconds,
            "--agents",
            agents,
            "--require-balanced",
        ],
    );
    assert_ran(&run);
    report(&out)
}

#[test]
fn the_smoke_scenario_balances_its_books() {
    let stack = fleet_stack("smoke");
    let out = stack.path().join("smoke-report");
    let run = harness(&stack, &out, &["--scenario", "smoke", "--require-balanced"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = report(&out);
    let books = &report["books"];
    assert_eq!(books["problems"], Value::Array(Vec::new()), "{books}");
    let answered = books["answered"].as_u64().unwrap();
    assert!(answered > 50, "{books}");
    assert_eq!(books["parquet_events"].as_u64().unwrap(), answered);
    assert_eq!(books["parquet_cost_nanos"], books["gateway_spent_nanos"]);
    assert!(books["gateway_spent_nanos"].as_u64().unwrap() > 0);
    // The small allocation ran out and its agents got 402s; the other never did.
    let refused = books["refused_by_allocation"].as_object().unwrap();
    let tag = report["tag"].as_str().unwrap();
    assert!(
        refused[&format!("smoke-support-{tag}")].as_u64().unwrap() > 0,
        "{books}"
    );
    assert!(!refused.contains_key(&format!("smoke-research-{tag}")));
    // Every API of the mix was exercised and timed.
    let run = &report["runs"][0];
    for api in ["chat", "messages", "responses", "completions", "embeddings"] {
        assert!(run["apis"][api].as_u64().unwrap() > 0, "{api}: {run}");
    }
    assert!(run["statuses"]["200"].as_u64().unwrap() > 0);
    assert!(
        run["latency"]["p99_ms"].as_f64().unwrap() >= run["latency"]["p50_ms"].as_f64().unwrap()
    );
    assert!(run["ttft"]["count"].as_u64().unwrap() > 0);
    assert!(!run["timeline"].as_array().unwrap().is_empty());
    // People's and machines' copies.
    let markdown = read_text(&out.join("report.md"));
    assert!(markdown.contains("**Balanced**"), "{markdown}");
    let svg = read_text(&out.join("latency.svg"));
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[test]
fn provider_failures_are_retried_and_still_balance() {
    // A scenario of its own: every call streams, one in five fails upstream or breaks half-way.
    let stack = fleet_stack("failures");
    let scenario = stack.path().join("failing.toml");
    std::fs::write(
        &scenario,
        r#"
name = "failing"
seconds = 3
[load]
mode = "open"
rate_per_s = 100
in_flight_max = 64
[fleet]
agents = 8
[[fleet.allocation]]
name = "flaky"
project = "platform-ci"
[[call]]
api = "chat"
model = "openai/gpt-4o-mini"
stream_percent = 100
max_tokens = 20
[retry]
attempts_max = 2
backoff_ms = 5
[mock]
error_percent = 10
reset_percent = 10
"#,
    )
    .unwrap();
    let out = stack.path().join("failing-report");
    let run = harness(
        &stack,
        &out,
        &[
            "--scenario",
            scenario.to_str().unwrap(),
            "--require-balanced",
        ],
    );
    assert_ran(&run);
    let report = report(&out);
    let figures = &report["runs"][0];
    // 300 calls due at 100/s: with one in ten failing and one in ten breaking, both happen
    // (the draws are seeded, so this is the same run every time).
    assert!(
        figures["statuses"]["500"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert!(figures["broken"].as_u64().unwrap() > 0, "{figures}");
    assert!(figures["retries"].as_u64().unwrap() > 0, "{figures}");
    let books = &report["books"];
    // Broken streams are billed by the gateway for what streamed; the harness cannot price
    // them, so it priced fewer calls than were answered, and still every total agrees.
    assert!(
        books["priced"].as_u64() < books["answered"].as_u64(),
        "{books}"
    );
    assert_eq!(books["problems"], Value::Array(Vec::new()), "{books}");
}

#[test]
fn the_overhead_scenario_measures_direct_proxy_and_gateway() {
    let stack = fleet_stack("overhead");
    let out = stack.path().join("overhead-report");
    let run = harness(
        &stack,
        &out,
        &[
            "--scenario",
            "overhead",
            "--seconds",
            "1",
            "--direct",
            &format!("http://{}", stack.mock.address),
            "--direct-key",
            PROVIDER_KEY,
            "--require-balanced",
        ],
    );
    assert_ran(&run);
    let report = report(&out);
    let runs = report["runs"].as_array().unwrap();
    let seen: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(r["statuses"].as_object().unwrap().len(), 1, "{r}");
            (
                r["target"].as_str().unwrap().to_owned(),
                r["agents"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [1, 32]
        .iter()
        .flat_map(|&c| ["direct", "proxy", "gateway"].map(|t| (t.to_owned(), c)))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(report["books"]["problems"], Value::Array(Vec::new()));
}

#[test]
fn bad_scenarios_and_missing_tokens_are_refused_with_a_reason() {
    let stack = fleet_stack("bad-scenarios");
    let out = stack.path().join("never");
    let broken = stack.path().join("broken.toml");
    std::fs::write(
        &broken,
        "name = \"x\"\nseconds = 1\n[load]\nmode = \"sideways\"\n",
    )
    .unwrap();
    for (args, expect) in [
        (vec!["--scenario", broken.to_str().unwrap()], "sideways"),
        (vec!["--scenario", "no-such-scenario"], "no-such-scenario"),
    ] {
        let run = harness(&stack, &out, &args);
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(expect), "{stderr}");
    }
    let run = Command::new(loadtest_bin().unwrap())
        .args(["run", "--scenario", "smoke", "--gateway"])
        .arg(format!("http://{}", stack.address()))
        .env("TOLLGATE_ADMIN_TOKEN", "wrong-token")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn the_mock_provider_takes_its_behaviour_from_the_command_line() {
    use tollgate_tests::http::post_json;
    use tollgate_tests::stack::Process;
    let start = |args: &[&str]| {
        let mut command = Command::new(loadtest_bin().unwrap());
        command
            .args(["mock-provider", "--listen", "127.0.0.1:0"])
            .args(args);
        Process::spawn(command)
    };
    let chat = |mock: &Process, extra: Value| {
        let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        post_json(mock.address, "/v1/chat/completions", "any", &body)
    };
    // Token count and usage off.
    let quiet = start(&["--tokens", "5", "--no-usage"]);
    let answer = chat(&quiet, serde_json::json!({}));
    assert_eq!(answer.status, 200);
    let value: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        value["choices"][0]["message"]["content"],
        " hello hello hello hello hello"
    );
    assert!(value.get("usage").is_none_or(Value::is_null), "{value}");
    // A request's own maximum wins over the default.
    let answer = chat(&quiet, serde_json::json!({"max_tokens": 2}));
    let value: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(value["choices"][0]["message"]["content"], " hello hello");
    // Every request failing, unless the request itself says otherwise.
    let failing = start(&["--error-percent", "100"]);
    assert_eq!(chat(&failing, serde_json::json!({})).status, 500);
    // Half the streams broken half-way: some complete, some end without [DONE].
    let resetting = start(&["--reset-percent", "50", "--tokens", "8"]);
    let (mut whole, mut cut) = (0, 0);
    for _ in 0..40 {
        let answer = chat(&resetting, serde_json::json!({"stream": true}));
        if String::from_utf8_lossy(&answer.body).contains("[DONE]") {
            whole += 1;
        } else {
            cut += 1;
        }
    }
    assert!(whole > 5 && cut > 5, "{whole} whole, {cut} cut");
    // Out-of-range percentages are refused at start.
    let refused = Command::new(loadtest_bin().unwrap())
        .args(["mock-provider", "--error-percent", "101"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

/// The spend guards watching the `agent-fleet` scenario (agents re-sending growing contexts,
/// retrying failed steps, running out of budget) with the defaults and the strictest action:
/// not one call is taken for a loop, and the books still balance.
#[test]
fn the_agent_fleet_trips_no_loop_guard() {
    let guards = "[guards.loop]\naction = \"block\"\n";
    let stack = Stack::start_with(
        "fleet-guards",
        &format!("{ORG}{FLEET_ORG}"),
        "",
        guards,
        &[],
    );
    let report = balanced_run(&stack, "agent-fleet", "15", "300");
    let answered = report["books"]["answered"].as_u64().unwrap();
    assert!(answered > 300, "{}", report["books"]);
    assert_eq!(stack.metric("tollgate_guard_refused_total"), 0);
    assert_eq!(stack.metric("tollgate_guard_alerts_total"), 0);
    let blocks = stack.admin("GET", "/admin/v1/guards", None).json();
    assert_eq!(blocks["blocks"], Value::Array(Vec::new()), "{blocks}");
}

/// The `runaway` scenario: a working fleet beside two agents looping on one call, each on a
/// key of its own in an allocation it shares with working agents. The loop guard, on with its
/// defaults (five repeats in a minute, throttle), refuses each looper's fifth call and every
/// one after, tells each once, and refuses no one else; the books still balance.
#[test]
fn the_loop_guard_catches_the_runaway_agents_and_no_one_else() {
    let stack = Stack::start_with(
        "fleet-runaway",
        &format!("{ORG}{FLEET_ORG}"),
        "",
        "[guards.loop]\n",
        &[],
    );
    let report = balanced_run(&stack, "runaway", "12", "60");
    let guards = &report["guards"];
    assert_eq!(guards["looping_agents"], 2, "{guards}");
    assert_eq!(guards["caught"], 2, "{guards}");
    assert_eq!(
        guards["caught_at_attempt"],
        serde_json::json!([5, 5]),
        "{guards}"
    );
    // Four answers each before the guard, none after: a throttled loop stays throttled
    // while its repeats are in the minute's window.
    assert_eq!(guards["ok_looping"], 8, "{guards}");
    assert!(guards["refused_looping"].as_u64().unwrap() >= 2, "{guards}");
    assert_eq!(guards["refused_others"], 0, "{guards}");
    assert!(guards["ok_others"].as_u64().unwrap() > 100, "{guards}");
    assert_eq!(
        stack.metric("tollgate_guard_refused_total"),
        guards["refused_looping"].as_u64().unwrap()
    );

    // One alert per looping key, naming it, and none for anyone else.
    let keys = stack.admin("GET", "/admin/v1/keys", None).json();
    let mut loopers: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["user"].as_str().unwrap().contains("-looper"))
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    loopers.sort_unstable();
    let alerts = stack::read_lines(&stack.path().join("events/alerts.jsonl"));
    let mut told: Vec<&str> = alerts
        .iter()
        .filter(|a| a["kind"] == "loop_detected")
        .map(|a| {
            assert_eq!(
                (&a["scope"], &a["action"]),
                (&"key".into(), &"throttle".into()),
                "{a}"
            );
            a["name"].as_str().unwrap()
        })
        .collect();
    told.sort_unstable();
    assert_eq!(told, loopers, "{alerts:#?}");
}
