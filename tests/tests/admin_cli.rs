//! The `tollgate` CLI against a running gateway's admin API: keys, allocations, budgets,
//! spend; changes survive a restart; soft-limit warnings and team limits take effect.

use serde_json::{Value, json};
use tollgate_tests::http::post_json;
use tollgate_tests::stack::{ADMIN_TOKEN, ORG, Stack, read_lines};

fn cli(stack: &Stack, args: &[&str]) -> String {
    let out = stack.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tollgate {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn created_key(output: &str) -> (String, String) {
    let value = |label: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(label).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {label} in {output}"))
    };
    (value("key "), value("id "))
}

fn chat() -> Value {
    json!({"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn the_cli_manages_keys_allocations_and_budgets_and_they_persist() {
    let org = format!(
        "{ORG}\n[[team]]\nname = \"capped\"\nrequests_per_minute = 2\n\n[[project]]\nname = \"capped-p\"\nteam = \"capped\"\n\n[[allocation]]\nname = \"capped-a\"\nproject = \"capped-p\"\n"
    );
    let mut stack = Stack::start("cli", &org, "");

    // An allocation made at run time, with a small daily budget, and a key on it.
    let out = cli(
        &stack,
        &[
            "allocations",
            "create",
            "--name",
            "nightly",
            "--project",
            "chatbot",
            "--cost-center",
            "cc-9",
            "--limit",
            "0.0002",
            "--period",
            "day",
        ],
    );
    assert!(out.contains("created allocation nightly"), "{out}");
    let (key, key_id) = created_key(&cli(
        &stack,
        &[
            "keys",
            "create",
            "--allocation",
            "nightly",
            "--user",
            "bob",
            "--expires",
            "1d",
        ],
    ));
    assert!(key.starts_with("tg_") && key_id.starts_with("key_"));
    assert!(cli(&stack, &["keys", "list"]).contains(&key_id));

    // Spend until the budget refuses: the 80 % warning fires once on the way.
    let mut admitted = 0;
    loop {
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &chat());
        match answer.status {
            200 => admitted += 1,
            402 => break,
            other => panic!("{other}: {}", answer.text()),
        }
        assert!(admitted < 1_000, "the budget never ran out");
    }
    // Refused again: the limit reached is told once all the same.
    for _ in 0..3 {
        let answer = post_json(stack.address(), "/v1/chat/completions", &key, &chat());
        assert_eq!(answer.status, 402, "{}", answer.text());
    }
    let spend = cli(&stack, &["spend"]);
    let row = spend
        .lines()
        .find(|l| l.starts_with("nightly"))
        .unwrap_or_else(|| panic!("{spend}"));
    assert!(row.contains(" day ") && row.contains("0.0002"), "{row}");

    // Raising the limit lets it spend again.
    let out = cli(
        &stack,
        &[
            "budgets",
            "set",
            "--level",
            "allocation",
            "--name",
            "nightly",
            "--limit",
            "1.00",
        ],
    );
    assert!(out.contains("limit 1.00"), "{out}");
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &key, &chat()).status,
        200
    );

    // Rotation: the new secret works, the old one is revoked.
    let (rotated, rotated_id) = created_key(&cli(&stack, &["keys", "rotate", &key_id]));
    assert_ne!(rotated_id, key_id);
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &key, &chat()).status,
        401
    );
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &rotated, &chat()).status,
        200
    );

    // A team's shared limit: two keys of the team, two requests a minute between them.
    let (a, _) = created_key(&cli(
        &stack,
        &["keys", "create", "--allocation", "capped-a"],
    ));
    let (b, _) = created_key(&cli(
        &stack,
        &["keys", "create", "--allocation", "capped-a"],
    ));
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &a, &chat()).status,
        200
    );
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &b, &chat()).status,
        200
    );
    let limited = post_json(stack.address(), "/v1/chat/completions", &a, &chat());
    assert_eq!(limited.status, 429);
    assert!(
        limited.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team")
    );

    // Everything made at run time survives a restart.
    stack.restart();
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &rotated, &chat()).status,
        200
    );
    assert_eq!(
        post_json(stack.address(), "/v1/chat/completions", &key, &chat()).status,
        401
    );
    let allocations = stack.admin("GET", "/admin/v1/allocations", None).json();
    let nightly = allocations["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "nightly")
        .unwrap()
        .clone();
    assert_eq!(nightly["cost_center"], "cc-9");
    assert_eq!(nightly["budget"]["limit"], "1.00");
    assert_eq!(nightly["budget"]["period"], "day");

    let providers = cli(&stack, &["providers", "list"]);
    assert!(
        providers.contains("bedrock") && providers.contains("from $TEST_OPENAI_KEY"),
        "{providers}"
    );
    assert!(
        !providers.contains("sk-provider"),
        "no credential is ever shown"
    );
    assert!(cli(&stack, &["models", "list"]).contains("openai/gpt-4o-mini"));

    stack.stop();
    let alerts = read_lines(&stack.path().join("events/alerts.jsonl"));
    let nightly_alerts: Vec<&Value> = alerts.iter().filter(|a| a["name"] == "nightly").collect();
    assert_eq!(nightly_alerts.len(), 2, "{alerts:#?}");
    assert_eq!(nightly_alerts[1]["kind"], "budget_exhausted");
    assert_eq!(nightly_alerts[1]["level"], "allocation");
    assert!(
        nightly_alerts[1]["message"].as_str().unwrap().starts_with(
            "allocation `nightly` has reached its day limit: calls are refused until "
        ),
        "{}",
        nightly_alerts[1]
    );
    assert_eq!(nightly_alerts[0]["kind"], "soft_limit_crossed");
    assert_eq!(nightly_alerts[0]["level"], "allocation");
    assert_eq!(nightly_alerts[0]["percent"], 80);
    let audit = read_lines(&stack.path().join("state/audit.jsonl"));
    let actions: Vec<&str> = audit
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "allocation.create",
            "key.create",
            "budget.set",
            "key.rotate",
            "key.revoke",
            "key.create",
            "key.create"
        ]
    );
    let events = stack.events();
    let nightly_cost: u64 = events
        .iter()
        .filter(|e| e["allocation"] == "nightly")
        .map(|e| e["cost_nanos"].as_u64().unwrap())
        .sum();
    assert!(nightly_cost > 0);
}

#[test]
fn a_rate_card_reload_adds_versions_and_never_rewrites_history() {
    let stack = Stack::start("reload", ORG, "");
    let card_path = stack.path().join("rates.toml");
    let mut card = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::open(&card_path).unwrap(), &mut card)
        .unwrap();
    let future = "\n[[version]]\nid = \"2099-01\"\neffective_from = 2099-01-01T00:00:00Z\n\n[[version.model]]\nname = \"openai/gpt-4o-mini\"\ninput_per_mtok = \"0.10\"\noutput_per_mtok = \"0.40\"\n";
    std::fs::write(&card_path, format!("{card}{future}")).unwrap();
    let out = cli(&stack, &["rate-card", "reload"]);
    assert!(out.contains("2099-01"), "{out}");
    let versions = stack.admin("GET", "/admin/v1/rate-card", None).json();
    assert!(
        versions["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "2099-01")
    );

    // Changing a price of the version in force is refused; the card in use stays.
    let rewritten = card.replacen("input_per_mtok = \"0.12\"", "input_per_mtok = \"0.01\"", 1);
    assert_ne!(rewritten, card);
    std::fs::write(&card_path, format!("{rewritten}{future}")).unwrap();
    let refused = stack.admin("POST", "/admin/v1/rate-card/reload", None);
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot change")
    );
    // A broken file is refused with its line and field.
    std::fs::write(
        &card_path,
        "currency = \"USD\"\ndefault_max_output_tokens = 1.5\n",
    )
    .unwrap();
    let broken = stack.admin("POST", "/admin/v1/rate-card/reload", None);
    assert_eq!(broken.status, 400);
    assert!(
        broken.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(":2:"),
        "{}",
        broken.text()
    );
    let audit = read_lines(&stack.path().join("state/audit.jsonl"));
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["added"], json!(["2099-01"]));
}

#[test]
fn the_admin_api_refuses_bad_requests_clearly_and_changes_nothing() {
    let stack = Stack::start("admin-bad", ORG, "");
    let cases: [(&str, &str, &[u8], u16, &str); 8] = [
        (
            "POST",
            "/admin/v1/keys",
            b"{\"allocation\": ",
            400,
            "key request",
        ),
        (
            "POST",
            "/admin/v1/keys",
            b"{\"allocation\":\"open\",\"user\":\"a\",\"expires_in\":\"3w\"}",
            400,
            "not a duration",
        ),
        (
            "POST",
            "/admin/v1/keys",
            b"{\"allocation\":\"ghost\",\"user\":\"a\"}",
            404,
            "ghost",
        ),
        (
            "POST",
            "/admin/v1/keys",
            b"{\"allocation\":\"open\",\"user\":\"a\",\"bogus\":1}",
            400,
            "unknown field",
        ),
        (
            "POST",
            "/admin/v1/allocations",
            b"{\"name\":\"x y\",\"project\":\"chatbot\"}",
            400,
            "not a valid allocation name",
        ),
        (
            "PUT",
            "/admin/v1/budgets/galaxy/open",
            b"{\"limit\":\"1\"}",
            400,
            "team, project or allocation",
        ),
        (
            "PUT",
            "/admin/v1/budgets/allocation/open",
            b"{\"limit\":1.5}",
            400,
            "float",
        ),
        ("POST", "/admin/v1/keys/key_nothex/revoke", b"", 404, "key"),
    ];
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (method, path, body, status, expected) in cases {
        let answer = tollgate_tests::http::request(
            stack.address(),
            method,
            path,
            &[("authorization", &auth)],
            body,
        );
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text());
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(expected),
            "{method} {path}: {message:?} lacks {expected:?}"
        );
    }
    let huge = vec![b'x'; 100_000];
    let answer = tollgate_tests::http::request(
        stack.address(),
        "POST",
        "/admin/v1/keys",
        &[("authorization", &auth)],
        &huge,
    );
    assert_eq!(answer.status, 413);
    // Nothing was created, journaled or audited.
    assert_eq!(
        stack.admin("GET", "/admin/v1/keys", None).json()["keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(read_lines(&stack.path().join("state/audit.jsonl")).is_empty());
}
