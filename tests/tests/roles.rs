//! Operators and their roles on the admin API: the admin token makes a viewer, a team-admin of
//! `research` and one of `support`; each may do what its role says and gets 403 for the rest;
//! a revoked operator gets 401; operators survive a restart, revocations too.

use serde_json::{Value, json};
use tollgate_tests::http::{Answer, request};
use tollgate_tests::stack::{ORG, SUPPORT_ORG, Stack};

fn call(stack: &Stack, token: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    request(
        stack.address(),
        method,
        path,
        &[("authorization", &auth)],
        body.as_bytes(),
    )
}

#[test]
fn each_role_does_what_it_may_and_is_refused_the_rest() {
    let mut stack = Stack::start("roles", &format!("{ORG}{SUPPORT_ORG}"), "");
    let (viewer, _) = stack.create_operator("finance", "viewer", None);
    let (research, research_id) = stack.create_operator("ada", "team-admin", Some("research"));
    let (support, _) = stack.create_operator("bob", "team-admin", Some("support"));
    let key = |allocation: &str| json!({"allocation": allocation, "user": "u"});
    // A bad request makes no operator, and says why.
    for (body, status) in [
        (json!({"name": "x", "role": "root"}), 400),
        (json!({"name": "x", "role": "team-admin"}), 400),
        (
            json!({"name": "x", "role": "team-admin", "team": "nobody"}),
            404,
        ),
    ] {
        let answer = stack.admin("POST", "/admin/v1/operators", Some(body.clone()));
        assert_eq!(answer.status, status, "{body}: {}", answer.text());
    }

    // A viewer reads and changes nothing.
    for path in [
        "/admin/v1/allocations",
        "/admin/v1/keys",
        "/admin/v1/models",
    ] {
        assert_eq!(
            call(&stack, &viewer, "GET", path, None).status,
            200,
            "{path}"
        );
    }
    let refused = call(&stack, &viewer, "POST", "/admin/v1/keys", Some(key("open")));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["type"], "permission_denied");

    // A team-admin manages its own team's keys and allocations, and no other team's.
    let made = call(
        &stack,
        &research,
        "POST",
        "/admin/v1/keys",
        Some(key("open")),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let key_id = made.json()["id"].as_str().unwrap().to_owned();
    let other = call(
        &stack,
        &support,
        "POST",
        &format!("/admin/v1/keys/{key_id}/revoke"),
        None,
    );
    assert_eq!(other.status, 403, "{}", other.text());
    assert_eq!(
        call(
            &stack,
            &support,
            "POST",
            "/admin/v1/keys",
            Some(key("open"))
        )
        .status,
        403
    );
    assert_eq!(
        call(
            &stack,
            &support,
            "POST",
            "/admin/v1/keys",
            Some(key("tickets"))
        )
        .status,
        201
    );
    let allocation = json!({"name": "triage", "project": "helpdesk", "budget": {"limit": "1.00", "period": "month"}});
    assert_eq!(
        call(
            &stack,
            &research,
            "POST",
            "/admin/v1/allocations",
            Some(allocation.clone())
        )
        .status,
        403
    );
    assert_eq!(
        call(
            &stack,
            &support,
            "POST",
            "/admin/v1/allocations",
            Some(allocation)
        )
        .status,
        201
    );
    assert_eq!(
        call(
            &stack,
            &research,
            "POST",
            &format!("/admin/v1/keys/{key_id}/revoke"),
            None
        )
        .status,
        200
    );
    // What is no one team's is the admin's: operators, a team's budget, the rate card.
    for (method, path, body) in [
        ("GET", "/admin/v1/operators", None),
        (
            "POST",
            "/admin/v1/operators",
            Some(json!({"name": "x", "role": "admin"})),
        ),
        (
            "PUT",
            "/admin/v1/budgets/team/research",
            Some(json!({"limit": "5.00"})),
        ),
        ("POST", "/admin/v1/rate-card/reload", None),
    ] {
        let answer = call(&stack, &research, method, path, body);
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text());
    }
    // A made-up operator secret is no one.
    assert_eq!(
        call(&stack, "tgo_0000", "GET", "/admin/v1/keys", None).status,
        401
    );

    // Revoked, then restarted: the revocation holds, the others still work.
    let revoked = stack.admin(
        "POST",
        &format!("/admin/v1/operators/{research_id}/revoke"),
        None,
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(
        call(&stack, &research, "GET", "/admin/v1/keys", None).status,
        401
    );
    stack.restart();
    assert_eq!(
        call(&stack, &research, "GET", "/admin/v1/keys", None).status,
        401
    );
    assert_eq!(
        call(&stack, &viewer, "GET", "/admin/v1/keys", None).status,
        200
    );
    let listed = stack.admin("GET", "/admin/v1/operators", None).json();
    let operators = listed["operators"].as_array().unwrap();
    assert_eq!(operators.len(), 3, "{listed}");
    assert!(
        operators
            .iter()
            .any(|o| o["id"] == json!(research_id) && o["revoked"] == json!(true)),
        "{listed}"
    );
    // Secrets are stored as hashes only; every change is audited with who made it.
    let state = stack.path().join("state");
    let journal = tollgate_tests::read_text(&state.join("journal.jsonl"));
    assert!(!journal.contains(&viewer) && !journal.contains(&support));
    let audit = tollgate_tests::read_text(&state.join("audit.jsonl"));
    assert!(
        audit.contains("operator.create") && audit.contains("operator.revoke"),
        "{audit}"
    );

    // The CLI speaks for an operator with its secret as the token.
    let out = std::process::Command::new(tollgate_tests::tollgate_bin().unwrap())
        .args([
            "operators",
            "list",
            "--url",
            &format!("http://{}", stack.address()),
        ])
        .env("TOLLGATE_ADMIN_TOKEN", tollgate_tests::stack::ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("team-admin"),
        "{text}"
    );
}
