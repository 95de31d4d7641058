//! The admin CLI: `keys`, `providers`, `models`, `allocations`, `budgets`, `spend` and
//! `rate-card reload`, each one call to a running gateway's admin API and its answer printed.
//!
//! Every command authenticates with `TOLLGATE_ADMIN_TOKEN` and prints either the answer's raw
//! JSON (`--json`) or a short human form of it; the HTTP client itself is [`crate::client`].

use std::io::Write as _;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};

use crate::args::{
    AdminArgs, AllocationsCommand, BudgetsCommand, GuardsCommand, KeysCommand, OperatorsCommand,
};
use crate::client;
use crate::print::{self, field};

/// Calls `method path` on the admin API with the admin token, on a runtime of its own.
pub fn call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = std::env::var("TOLLGATE_ADMIN_TOKEN")
        .context("set TOLLGATE_ADMIN_TOKEN to the gateway's admin token or an operator's secret")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(client::call(&admin.url, &token, method, path, body))?)
}

/// `tollgate keys create|list|revoke|rotate`.
pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            allocation,
            user,
            agent,
            expires,
            models,
            rpm,
            tpm,
            scopes,
            admin,
        } => {
            let body = json!({
                "allocation": allocation,
                "user": user,
                "agent": agent,
                "expires_in": expires,
                "models": models,
                "requests_per_minute": rpm,
                "tokens_per_minute": tpm,
                "scopes": scopes,
            });
            let answer = call(&admin, Method::POST, "/admin/v1/keys", Some(body))?;
            print_key(&admin, &answer)
        }
        KeysCommand::List { admin } => {
            let answer = call(&admin, Method::GET, "/admin/v1/keys", None)?;
            print_list(
                &admin,
                &answer,
                "keys",
                &[
                    "id",
                    "prefix",
                    "allocation",
                    "user",
                    "agent",
                    "scopes",
                    "expires_at",
                    "revoked",
                ],
            )
        }
        KeysCommand::Revoke { id, admin } => {
            let path = format!("/admin/v1/keys/{id}/revoke");
            let answer = call(&admin, Method::POST, &path, None)?;
            if admin.json {
                return print::json(&answer);
            }
            writeln!(std::io::stdout().lock(), "revoked {}", field(&answer, "id"))?;
            Ok(())
        }
        KeysCommand::Rotate { id, admin } => {
            let path = format!("/admin/v1/keys/{id}/rotate");
            let answer = call(&admin, Method::POST, &path, None)?;
            print_key(&admin, &answer)
        }
    }
}

/// `tollgate guards list|clear`.
pub fn guards(command: GuardsCommand) -> anyhow::Result<()> {
    match command {
        GuardsCommand::List { admin } => {
            let answer = call(&admin, Method::GET, "/admin/v1/guards", None)?;
            print_list(
                &admin,
                &answer,
                "blocks",
                &["scope", "name", "guard", "at", "reason"],
            )
        }
        GuardsCommand::Clear { scope, name, admin } => {
            let body = json!({ "scope": scope, "name": name });
            let answer = call(&admin, Method::POST, "/admin/v1/guards/clear", Some(body))?;
            if admin.json {
                return print::json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "cleared the {} block on {} {}",
                field(&answer, "guard"),
                field(&answer, "scope"),
                field(&answer, "name")
            )?;
            Ok(())
        }
    }
}

/// `tollgate operators create|list|revoke`.
pub fn operators(command: OperatorsCommand) -> anyhow::Result<()> {
    let columns = ["id", "name", "role", "team", "created_at", "revoked"];
    match command {
        OperatorsCommand::Create {
            name,
            role,
            team,
            admin,
        } => {
            let body = json!({ "name": name, "role": role, "team": team });
            let answer = call(&admin, Method::POST, "/admin/v1/operators", Some(body))?;
            if admin.json {
                return print::json(&answer);
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "id     {}", field(&answer, "id"))?;
            writeln!(out, "role   {}", field(&answer, "role"))?;
            writeln!(out, "secret {}", field(&answer, "secret"))?;
            writeln!(
                out,
                "(the secret is shown once; it is this operator's bearer token)"
            )?;
            Ok(())
        }
        OperatorsCommand::List { admin } => {
            let answer = call(&admin, Method::GET, "/admin/v1/operators", None)?;
            print_list(&admin, &answer, "operators", &columns)
        }
        OperatorsCommand::Revoke { id, admin } => {
            let path = format!("/admin/v1/operators/{id}/revoke");
            let answer = call(&admin, Method::POST, &path, None)?;
            if admin.json {
                return print::json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "revoked {} ({})",
                field(&answer, "id"),
                field(&answer, "role")
            )?;
            Ok(())
        }
    }
}

/// `tollgate providers list`.
pub fn providers(admin: &AdminArgs) -> anyhow::Result<()> {
    let answer = call(admin, Method::GET, "/admin/v1/providers", None)?;
    if admin.json {
        return print::json(&answer);
    }
    // A row per deployment: where calls go, and how each is doing.
    let columns = [
        "provider",
        "kind",
        "deployment",
        "base_url",
        "weight",
        "in_flight",
        "breaker",
        "credential",
    ];
    let mut rows = Vec::new();
    for provider in answer["providers"].as_array().into_iter().flatten() {
        for deployment in provider["deployments"].as_array().into_iter().flatten() {
            rows.push(vec![
                field(provider, "name"),
                field(provider, "kind"),
                field(deployment, "name"),
                field(deployment, "base_url"),
                field(deployment, "weight"),
                field(deployment, "in_flight"),
                field(deployment, "breaker"),
                field(deployment, "credential"),
            ]);
        }
    }
    print::table(&columns, &rows)
}

/// `tollgate models list`.
pub fn models(admin: &AdminArgs) -> anyhow::Result<()> {
    let answer = call(admin, Method::GET, "/admin/v1/models", None)?;
    print_list(
        admin,
        &answer,
        "models",
        &[
            "model",
            "served",
            "input_per_mtok",
            "output_per_mtok",
            "max_output_tokens",
        ],
    )
}

/// `tollgate allocations create|list`; the list is the spend table.
pub fn allocations(command: AllocationsCommand) -> anyhow::Result<()> {
    match command {
        AllocationsCommand::Create {
            name,
            project,
            cost_center,
            models,
            limit,
            period,
            admin,
        } => {
            let body = json!({
                "name": name,
                "project": project,
                "cost_center": cost_center,
                "models": models,
                "budget": {"limit": limit, "period": period},
            });
            let answer = call(&admin, Method::POST, "/admin/v1/allocations", Some(body))?;
            if admin.json {
                return print::json(&answer);
            }
            writeln!(
                std::io::stdout().lock(),
                "created allocation {} in project {}",
                field(&answer, "name"),
                field(&answer, "project")
            )?;
            Ok(())
        }
        AllocationsCommand::List { admin } => spend(&admin),
    }
}

/// `tollgate budgets set`: a limit, or with `none` no limit, for a team, project or allocation.
pub fn budgets(command: BudgetsCommand) -> anyhow::Result<()> {
    let BudgetsCommand::Set {
        level,
        name,
        limit,
        admin,
    } = command;
    let limit = if limit == "none" {
        Value::Null
    } else {
        json!(limit)
    };
    let path = format!("/admin/v1/budgets/{level}/{name}");
    let answer = call(&admin, Method::PUT, &path, Some(json!({ "limit": limit })))?;
    if admin.json {
        return print::json(&answer);
    }
    writeln!(
        std::io::stdout().lock(),
        "{} {}: limit {}",
        field(&answer, "level"),
        field(&answer, "name"),
        field(&answer, "limit")
    )?;
    Ok(())
}

/// `tollgate rate-card reload`: the gateway reads its rate card again and says how many new
/// versions it found.
pub fn reload_rate_card(admin: &AdminArgs) -> anyhow::Result<()> {
    let answer = call(admin, Method::POST, "/admin/v1/rate-card/reload", None)?;
    if admin.json {
        return print::json(&answer);
    }
    writeln!(
        std::io::stdout().lock(),
        "rate card reloaded; new versions: {}",
        field(&answer, "added")
    )?;
    Ok(())
}

/// `tollgate spend` (and `allocations list`): every allocation with its budget's live spend.
pub fn spend(admin: &AdminArgs) -> anyhow::Result<()> {
    let answer = call(admin, Method::GET, "/admin/v1/allocations", None)?;
    if admin.json {
        return print::json(&answer);
    }
    print_spend(&answer)
}

/// A new key's secret and bindings, with the warning that the secret is shown only once.
fn print_key(admin: &AdminArgs, answer: &Value) -> anyhow::Result<()> {
    if admin.json {
        return print::json(answer);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "key        {}", field(answer, "key"))?;
    writeln!(out, "id         {}", field(answer, "id"))?;
    writeln!(out, "allocation {}", field(answer, "allocation"))?;
    writeln!(out, "user       {}", field(answer, "user"))?;
    writeln!(out, "expires_at {}", field(answer, "expires_at"))?;
    writeln!(
        out,
        "The key is shown only now; store it in a secret manager."
    )?;
    Ok(())
}

/// The array `list` of an answer as a table of `columns` (or the raw answer with `--json`).
fn print_list(
    admin: &AdminArgs,
    answer: &Value,
    list: &str,
    columns: &[&str],
) -> anyhow::Result<()> {
    if admin.json {
        return print::json(answer);
    }
    let rows: Vec<Vec<String>> = answer
        .get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|c| field(item, c)).collect())
                .collect()
        })
        .unwrap_or_default();
    print::table(columns, &rows)
}

/// The allocations answer as its currency and a table of each allocation's budget; `runs_out`
/// is when it runs out at the pace it is spent (the burn-rate forecast), if before ever. With
/// budget leases, `leased` is what the whole cluster holds at the allocation (spent, in flight
/// and granted unused, every replica's), as the answering replica's fold counts it.
fn print_spend(answer: &Value) -> anyhow::Result<()> {
    let leased = answer
        .get("allocations")
        .and_then(Value::as_array)
        .is_some_and(|all| all.iter().any(|a| a.get("lease").is_some()));
    let mut columns = vec![
        "allocation",
        "project",
        "team",
        "period",
        "spent",
        "limit",
        "remaining",
        "resets_at",
        "runs_out",
    ];
    if leased {
        columns.push("leased");
    }
    let rows: Vec<Vec<String>> = answer
        .get("allocations")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let budget = a.get("budget").cloned().unwrap_or(Value::Null);
                    let lease = a.get("lease").cloned().unwrap_or(Value::Null);
                    let mut row = vec![
                        field(a, "name"),
                        field(a, "project"),
                        field(a, "team"),
                        field(&budget, "period"),
                        field(&budget, "spent"),
                        field(&budget, "limit"),
                        field(&budget, "remaining"),
                        field(&budget, "resets_at"),
                        field(&budget, "runs_out_at"),
                    ];
                    if leased {
                        row.push(field(&lease, "cluster_leased"));
                    }
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    writeln!(
        std::io::stdout().lock(),
        "currency {}",
        field(answer, "currency")
    )?;
    print::table(&columns, &rows)
}
