//! The console's server side, over real HTTP: the embedded page and its headers, the sign-in
//! and its cookie, what a session may do (its role, and nothing a page of another site could
//! make it do), and the spend it reads: the same totals as `tollgate report`, to the unit, the
//! live tail, and the exports byte for byte as the CLI makes them.
//!
//! The page's own behaviour in a browser is tested by `tests/browser`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::duckdb_row;
use tollgate_tests::http::{Answer, post_json, request};
use tollgate_tests::stack::{ADMIN_TOKEN, ORG, SUPPORT_ORG, Stack, read_lines};

const CONSOLE: &str = "
[console]
enabled = true

[parquet]
roll_interval_ms = 100
";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn console_stack(name: &str) -> Stack {
    Stack::start(name, &format!("{ORG}{SUPPORT_ORG}{CONSOLE}"), "")
}

/// A signed-in browser: its cookie and its CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

fn sign_in(stack: &Stack, secret: &str, extra: &[(&str, &str)]) -> Answer {
    let body = json!({ "secret": secret }).to_string();
    let origin = format!("http://{}", stack.address());
    let mut headers = vec![
        ("content-type", "application/json"),
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    for (name, value) in extra {
        headers.retain(|(n, _)| n != name);
        headers.push((name, value));
    }
    request(
        stack.address(),
        "POST",
        "/console/session",
        &headers,
        body.as_bytes(),
    )
}

fn browser(stack: &Stack, secret: &str) -> Browser {
    let answer = sign_in(stack, secret, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let set = answer.header("set-cookie").unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    Browser {
        cookie,
        csrf: answer.json()["csrf"].as_str().unwrap().to_owned(),
    }
}

impl Browser {
    /// A request as the console's own page makes it: the cookie, same-origin, the CSRF token
    /// on a change.
    fn call(&self, stack: &Stack, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call_with(stack, method, path, body, &[])
    }

    fn call_with(
        &self,
        stack: &Stack,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let origin = format!("http://{}", stack.address());
        let mut headers: Vec<(&str, &str)> = vec![
            ("cookie", self.cookie.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ];
        if method != "GET" {
            headers.push(("origin", origin.as_str()));
            headers.push(("x-tollgate-csrf", self.csrf.as_str()));
        }
        for (name, value) in extra {
            headers.retain(|(n, _)| n != name);
            if !value.is_empty() {
                headers.push((name, value));
            }
        }
        request(stack.address(), method, path, &headers, body.as_bytes())
    }
}

/// `tollgate report --data <the stack's data> --by <by> --format <format>`'s stdout.
fn printed(stack: &Stack, by: &str, format: &str) -> String {
    let data = stack.path().join("data");
    let cli = stack.cli(&[
        "report",
        "--data",
        data.to_str().unwrap(),
        "--by",
        by,
        "--format",
        format,
    ]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    String::from_utf8(cli.stdout).unwrap()
}

fn code(answer: &Answer) -> String {
    answer.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_page_is_embedded_and_served_with_a_strict_policy_only_when_turned_on() {
    let off = Stack::start("console-off", ORG, "");
    let answer = request(off.address(), "GET", "/console", &[], b"");
    assert_eq!(answer.status, 404, "off by default");
    assert_eq!(sign_in(&off, ADMIN_TOKEN, &[]).status, 404);
    drop(off);

    let stack = console_stack("console-page");
    let page = request(stack.address(), "GET", "/console", &[], b"");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    let html = page.text();
    assert!(html.contains("/console/assets/app.js"), "{html}");
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style: the policy would refuse them"
    );
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("licenses.txt", "text/plain"),
    ] {
        let path = format!("/console/assets/{asset}");
        let answer = request(stack.address(), "GET", &path, &[], b"");
        assert_eq!(answer.status, 200, "{asset}");
        assert!(answer.header("content-type").unwrap().starts_with(kind));
        assert!(
            answer.body.len() > 100,
            "{asset} is {} bytes",
            answer.body.len()
        );
        let etag = answer.header("etag").unwrap().to_owned();
        let again = request(
            stack.address(),
            "GET",
            &path,
            &[("if-none-match", &etag)],
            b"",
        );
        assert_eq!(again.status, 304, "{asset} unchanged");
        assert!(again.body.is_empty());
    }
    let licences = request(
        stack.address(),
        "GET",
        "/console/assets/licenses.txt",
        &[],
        b"",
    );
    assert!(licences.text().contains("uPlot") && licences.text().contains("MIT"));
    for missing in [
        "/console/assets/nope.js",
        "/console/assets/../tollgate.toml",
        "/console/x",
    ] {
        let answer = request(stack.address(), "GET", missing, &[], b"");
        assert_eq!(answer.status, 404, "{missing}");
        assert_eq!(answer.header("content-security-policy"), Some(CSP));
    }
}

#[test]
fn a_sign_in_is_a_cookie_that_a_page_of_another_site_cannot_use() {
    let stack = console_stack("console-session");

    // The credential goes in a JSON body from this origin, or nowhere.
    let wrong = sign_in(&stack, "tgo_not-a-secret", &[]);
    assert_eq!(
        (wrong.status, code(&wrong)),
        (401, "invalid_admin_token".into())
    );
    assert!(wrong.header("set-cookie").is_none());
    let form = sign_in(
        &stack,
        ADMIN_TOKEN,
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(form.status, 400, "a form post signs no one in");
    // A body that is not a sign-in is refused with a reason, and signs no one in.
    let origin = format!("http://{}", stack.address());
    let raw = |body: &[u8]| {
        request(
            stack.address(),
            "POST",
            "/console/session",
            &[
                ("content-type", "application/json"),
                ("origin", origin.as_str()),
                ("sec-fetch-site", "same-origin"),
            ],
            body,
        )
    };
    let oversized = format!("{{\"secret\": \"{}\"}}", "x".repeat(4_096));
    for (body, status) in [
        (&b"{\"secret\": "[..], 400),
        (&b"{\"secret\": \"   \"}"[..], 400),
        (&b"{\"secret\": \"x\", \"remember\": true}"[..], 400),
        (&b"[1, 2]"[..], 400),
        (oversized.as_bytes(), 413),
    ] {
        let answer = raw(body);
        assert_eq!(answer.status, status, "{}", answer.text());
        assert!(
            !answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(answer.header("set-cookie").is_none());
    }
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
        ("origin", "null"),
    ] {
        let answer = sign_in(&stack, ADMIN_TOKEN, &[(name, value)]);
        assert_eq!(
            (answer.status, code(&answer)),
            (403, "csrf_failed".into()),
            "{name}: {value}"
        );
    }

    // The session: an HttpOnly, SameSite=Strict cookie; Secure when TLS is in front.
    let answer = sign_in(&stack, ADMIN_TOKEN, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let set = answer.header("set-cookie").unwrap().to_owned();
    let id = set
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("tollgate_session=")
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 64, "{set}");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(
        !answer.text().contains(&id) && !answer.text().contains(ADMIN_TOKEN),
        "neither the session id nor the credential is in the body"
    );
    let behind_tls = sign_in(&stack, ADMIN_TOKEN, &[("x-forwarded-proto", "https")]);
    assert!(
        behind_tls
            .header("set-cookie")
            .unwrap()
            .contains("; Secure")
    );
    let admin = browser(&stack, ADMIN_TOKEN);
    let who = admin.call(&stack, "GET", "/console/session", None);
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["role"], "admin");
    assert_eq!(
        admin.call(&stack, "GET", "/admin/v1/keys", None).status,
        200
    );

    // What could be forged is refused: a change without the token, with another session's,
    // from another site or origin; a cookie that is not a session, or two of one name.
    let other = browser(&stack, ADMIN_TOKEN);
    let key = json!({"allocation": "open", "user": "u"});
    for (why, extra) in [
        ("no token", vec![("x-tollgate-csrf", "")]),
        (
            "another session's token",
            vec![("x-tollgate-csrf", other.csrf.as_str())],
        ),
        ("another site", vec![("sec-fetch-site", "cross-site")]),
        ("another origin", vec![("origin", "http://evil.example")]),
    ] {
        let answer = admin.call_with(&stack, "POST", "/admin/v1/keys", Some(key.clone()), &extra);
        assert_eq!(
            (answer.status, code(&answer)),
            (403, "csrf_failed".into()),
            "{why}: {}",
            answer.text()
        );
    }
    let forged_read = admin.call_with(
        &stack,
        "GET",
        "/admin/v1/keys",
        None,
        &[("sec-fetch-site", "cross-site")],
    );
    assert_eq!(forged_read.status, 403, "a read from another site too");
    for cookie in [
        "tollgate_session=0000000000000000000000000000000000000000000000000000000000000000",
        "tollgate_session=<script>",
        &format!("{}; tollgate_session=x", admin.cookie),
    ] {
        let bad = Browser {
            cookie: cookie.to_owned(),
            csrf: admin.csrf.clone(),
        };
        let answer = bad.call(&stack, "GET", "/admin/v1/keys", None);
        assert_eq!(answer.status, 401, "{cookie}");
    }
    let made = admin.call(&stack, "POST", "/admin/v1/keys", Some(key.clone()));
    assert_eq!(made.status, 201, "{}", made.text());

    // Signing out ends the session: its cookie and its token are refused from then on.
    let out = admin.call(&stack, "DELETE", "/console/session", None);
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    for (method, path) in [("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys")] {
        let replayed = admin.call(&stack, method, path, Some(key.clone()));
        assert_eq!(replayed.status, 401, "{method} {path} after sign-out");
    }
    assert_eq!(
        other.call(&stack, "GET", "/admin/v1/keys", None).status,
        200
    );
}

#[test]
fn a_session_can_do_what_its_operator_may_and_ends_with_it() {
    let stack = console_stack("console-roles");
    let (viewer, _) = stack.create_operator("finance", "viewer", None);
    let (ada, ada_id) = stack.create_operator("ada", "team-admin", Some("research"));
    let viewer = browser(&stack, &viewer);
    let ada = browser(&stack, &ada);
    let key = |allocation: &str| json!({"allocation": allocation, "user": "u"});

    assert_eq!(
        viewer.call(&stack, "GET", "/console/session", None).json()["role"],
        "viewer"
    );
    assert_eq!(
        viewer
            .call(&stack, "GET", "/admin/v1/allocations", None)
            .status,
        200
    );
    let refused = viewer.call(&stack, "POST", "/admin/v1/keys", Some(key("open")));
    assert_eq!(
        (refused.status, code(&refused)),
        (403, "permission_denied".into())
    );

    let made = ada.call(&stack, "POST", "/admin/v1/keys", Some(key("open")));
    assert_eq!(made.status, 201, "{}", made.text());
    let made = made.json();
    let other_team = ada.call(&stack, "POST", "/admin/v1/keys", Some(key("tickets")));
    assert_eq!(other_team.status, 403, "{}", other_team.text());
    let id = made["id"].as_str().unwrap();
    let revoked = ada.call(&stack, "POST", &format!("/admin/v1/keys/{id}/revoke"), None);
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let call = post_json(
        stack.address(),
        "/v1/chat/completions",
        made["key"].as_str().unwrap(),
        &json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(call.status, 401, "the revoked key is refused");

    // The audit log names who did it: the operator, not "admin".
    let audit = read_lines(&stack.path().join("state/audit.jsonl"));
    for action in ["key.create", "key.revoke", "console.sign_in"] {
        assert!(
            audit
                .iter()
                .any(|line| line["action"] == action && line["actor"] == ada_id.as_str()),
            "{action} by {ada_id} in {audit:?}"
        );
    }

    let gone = stack.admin(
        "POST",
        &format!("/admin/v1/operators/{ada_id}/revoke"),
        None,
    );
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(
        ada.call(&stack, "GET", "/admin/v1/keys", None).status,
        401,
        "a revoked operator's session ends with it"
    );
}

/// Waits until the usage files hold `events` events.
fn until_in_files(admin: &Browser, stack: &Stack, events: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = admin.call(stack, "GET", "/admin/v1/report?by=team", None);
        assert_eq!(report.status, 200, "{}", report.text());
        let report = report.json();
        if report["total"]["events"].as_u64() == Some(events) {
            return report;
        }
        assert!(Instant::now() < deadline, "the files hold {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_console_reads_the_same_spend_as_the_report_and_exports_what_the_cli_does() {
    let stack = console_stack("console-spend");
    let admin = browser(&stack, ADMIN_TOKEN);
    let (research, _) = stack.create_key("open", json!({"agent": "coder"}));
    let (support, _) = stack.create_key("tickets", json!({}));
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 20,
            "messages": [{"role": "user", "content": "count the words of this sentence"}]})
    };
    for (key, model) in [
        (&research, "openai/gpt-4o-mini"),
        (&research, "openai/gpt-4o"),
        (&support, "anthropic/claude-sonnet-4-5"),
        (&research, "openai/gpt-4o-mini"),
    ] {
        let answer = post_json(stack.address(), "/v1/chat/completions", key, &body(model));
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let report = until_in_files(&admin, &stack, 4);

    // The same rollup as `tollgate report`, in the same JSON, to the unit.
    let json: Value = serde_json::from_str(&printed(&stack, "team", "json")).unwrap();
    assert_eq!(report, json);
    let total: u128 = report["total"]["cost_nanos"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0);
    let table: u128 = ["open", "tickets"]
        .iter()
        .map(|a| u128::from(stack.spent_nanos(a)))
        .sum();
    assert_eq!(total, table, "the files and the budget table agree");

    // Spend over time: every event in one bucket, the buckets summing to the report.
    let window = "from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z";
    let series = admin.call(
        &stack,
        "GET",
        &format!("/admin/v1/series?by=team&step=hour&{window}"),
        None,
    );
    assert_eq!(series.status, 400, "87,672 hours are too many buckets");
    let series = admin.call(
        &stack,
        "GET",
        &format!("/admin/v1/series?by=model&allocation=open&step=day&{window}"),
        None,
    );
    assert_eq!(series.status, 200, "{}", series.text());
    let series = series.json();
    let models: Vec<&str> = series["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["gpt-4o", "gpt-4o-mini"], "{series}");
    let bucketed: u128 = series["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["total_nanos"].as_str().unwrap().parse::<u128>().unwrap())
        .sum();
    assert_eq!(bucketed, u128::from(stack.spent_nanos("open")));

    // The live tail: the latest events, then only what came after.
    let tail = admin
        .call(&stack, "GET", "/admin/v1/events/recent", None)
        .json();
    let events = tail["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{tail}");
    assert!(events.iter().all(|e| e.get("messages").is_none()));
    let next = tail["next"].as_u64().unwrap();
    let quiet = admin.call(
        &stack,
        "GET",
        &format!("/admin/v1/events/recent?after={next}"),
        None,
    );
    assert_eq!(quiet.json()["events"].as_array().unwrap().len(), 0);
    let answer = post_json(
        stack.address(),
        "/v1/chat/completions",
        &support,
        &body("openai/gpt-4o-mini"),
    );
    assert_eq!(answer.status, 200);
    let fresh = admin
        .call(
            &stack,
            "GET",
            &format!("/admin/v1/events/recent?after={next}"),
            None,
        )
        .json();
    let fresh = fresh["events"].as_array().unwrap();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0]["allocation"], "tickets");
    until_in_files(&admin, &stack, 5);

    // Exports: what the CLI writes, byte for byte; the Parquet one read by DuckDB.
    {
        let answer = admin.call(
            &stack,
            "GET",
            "/admin/v1/exports/chargeback.csv?by=allocation",
            None,
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.complete);
        assert!(
            answer
                .header("content-type")
                .unwrap()
                .starts_with("text/csv")
        );
        assert!(
            answer
                .header("content-disposition")
                .unwrap()
                .contains("tollgate-chargeback.csv")
        );
        assert_eq!(answer.text(), printed(&stack, "allocation", "csv"));
    }
    let focus = admin.call(&stack, "GET", "/admin/v1/exports/focus.csv", None);
    assert_eq!(focus.status, 200, "{}", focus.text());
    assert_eq!(focus.text(), printed(&stack, "team", "focus"));
    let focus_rows = focus.text().lines().count() - 1;
    let parquet = admin.call(&stack, "GET", "/admin/v1/exports/focus.parquet", None);
    assert_eq!(parquet.status, 200, "{}", parquet.text());
    assert!(parquet.body.starts_with(b"PAR1") && parquet.body.ends_with(b"PAR1"));
    let file = stack.path().join("downloaded.parquet");
    std::fs::write(&file, &parquet.body).unwrap();
    if let Some(row) = duckdb_row(&format!(
        "select count(*) from read_parquet('{}')",
        file.display()
    )) {
        assert_eq!(row, [focus_rows.to_string()]);
    }
    let viewer = browser(&stack, &stack.create_operator("fin", "viewer", None).0);
    assert_eq!(
        viewer
            .call(&stack, "GET", "/admin/v1/exports/focus.csv", None)
            .status,
        200,
        "a viewer reads spend"
    );
    let unknown = admin.call(&stack, "GET", "/admin/v1/exports/secrets.csv", None);
    assert_eq!(unknown.status, 404);
}
