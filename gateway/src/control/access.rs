//! Who may do what on the admin API: the caller a token names (the admin token, or an
//! operator's credential with its role), what each route needs of it, and the routes that
//! make, list and revoke operators.
//!
//! **Invariant:** every admin request is decided here, once, before its handler runs: reads
//! need any role, changes to what belongs to one team need that team's team-admin or an admin,
//! everything else an admin. A target that does not exist needs an admin (so a team-admin
//! learns nothing of other teams by probing).

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tollgate_engine::operator::{Need, Operator, OperatorId, Role};
use tollgate_engine::time::format_rfc3339_s;
use tollgate_engine::{KeyId, UnixMs};

use super::Control;
use super::bodies::operator_request;
use super::journal::Record;
use super::session::{self, Session};
use crate::http::error::Failure;

/// Who is calling.
#[derive(Debug)]
pub enum Caller {
    /// The operator's admin token: an admin.
    Root,
    /// An operator, by its credential.
    Operator(Arc<Operator>),
}

impl Caller {
    /// Whether it may do what `need` says.
    #[must_use]
    pub fn may(&self, need: Need<'_>) -> bool {
        match self {
            Caller::Root => true,
            Caller::Operator(operator) => operator.may(need),
        }
    }

    /// How the audit log names it.
    #[must_use]
    pub fn actor(&self) -> String {
        match self {
            Caller::Root => "admin".to_owned(),
            Caller::Operator(operator) => operator.id().to_string(),
        }
    }

    fn role(&self) -> &'static str {
        match self {
            Caller::Root => Role::Admin.as_str(),
            Caller::Operator(operator) => operator.role.as_str(),
        }
    }
}

/// The caller of an admin request: by its `Authorization: Bearer` credential, else (with the
/// console on) by its session cookie. A session's request is refused when it came from
/// another site (`Sec-Fetch-Site`, `Origin`), and a change (any method but GET and HEAD) when
/// it lacks the session's CSRF token.
pub fn caller_of(
    control: &Control,
    headers: &HeaderMap,
    method: &Method,
    now: UnixMs,
) -> Result<Caller, Failure> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        return caller(control, token.trim());
    }
    let (session, _) = session_of(control, headers, now)?;
    same_origin(headers)?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        let presented = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(Failure::SessionRefused(
                "a change without the session's CSRF token",
            ))?;
        if !session.csrf_matches(presented) {
            return Err(Failure::SessionRefused("a CSRF token not this session's"));
        }
    }
    session.signed.caller().ok_or(Failure::AdminUnauthorized)
}

/// The live session the request's cookie names, and the cookie's value; 401 without one.
pub fn session_of<'h>(
    control: &Control,
    headers: &'h HeaderMap,
    now: UnixMs,
) -> Result<(Session, &'h str), Failure> {
    let sessions = control
        .sessions
        .as_ref()
        .ok_or(Failure::AdminUnauthorized)?;
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|text| session::cookie(text, session::COOKIE))
        .ok_or(Failure::AdminUnauthorized)?;
    let session = sessions.get(id, now).ok_or(Failure::AdminUnauthorized)?;
    Ok((session, id))
}

/// Refuses a request a browser says came from another site, or whose `Origin` is not the host
/// it was sent to. Browsers send `Sec-Fetch-Site` on every request and `Origin` on every
/// change; a client that sends neither is no browser, and a cookie is no use to a page then.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Failure> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Failure::SessionRefused("a request from another site"));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or_default();
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(Failure::SessionRefused("a request from another origin"));
        }
    }
    Ok(())
}

/// The caller `token` names, or 401.
pub fn caller(control: &Control, token: &str) -> Result<Caller, Failure> {
    if control.admin.matches(token) {
        return Ok(Caller::Root);
    }
    control
        .gateway
        .operators
        .resolve(token)
        .map(Caller::Operator)
        .ok_or(Failure::AdminUnauthorized)
}

/// What a route needs, by kind, with the team it touches.
enum Required {
    Read,
    Team(Arc<str>),
    Admin,
}

/// Refuses `caller` with 403 unless it may make the request `method` `segments` (`body`).
pub fn authorize(
    control: &Control,
    caller: &Caller,
    method: &Method,
    segments: &[&str],
    body: &[u8],
) -> Result<(), Failure> {
    let required = required(control, method, segments, body);
    let need = match &required {
        Required::Read => Need::Read,
        Required::Team(team) => Need::Team(team),
        Required::Admin => Need::Admin,
    };
    if caller.may(need) {
        return Ok(());
    }
    Err(Failure::AdminForbidden {
        role: caller.role(),
        needs: match need {
            Need::Read => "read access".to_owned(),
            Need::Team(team) => format!("to manage team `{team}`"),
            Need::Admin => "the admin role".to_owned(),
        },
    })
}

fn required(control: &Control, method: &Method, segments: &[&str], body: &[u8]) -> Required {
    let directory = &control.gateway.directory;
    let field = |name: &str| {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get(name)?.as_str().map(str::to_owned))
    };
    let team_of_allocation = |name: &str| {
        directory
            .allocation(name)
            .ok()
            .map(|a| Arc::clone(&a.project.team.name))
    };
    let team = match (method, segments) {
        (&Method::GET, ["operators", ..]) => return Required::Admin,
        (&Method::GET, _) => return Required::Read,
        (&Method::POST, ["keys"]) => field("allocation").and_then(|a| team_of_allocation(&a)),
        (&Method::POST, ["keys", id, _]) => KeyId::parse(id)
            .ok()
            .and_then(|id| control.gateway.keys.get(id))
            .map(|key| Arc::clone(&key.allocation.project.team.name)),
        (&Method::POST, ["allocations"]) => field("project")
            .and_then(|p| directory.project(&p).ok())
            .map(|p| Arc::clone(&p.team.name)),
        (&Method::PUT, ["budgets", "allocation", name]) => team_of_allocation(name),
        (&Method::PUT, ["budgets", "project", name]) => directory
            .project(name)
            .ok()
            .map(|p| Arc::clone(&p.team.name)),
        _ => None,
    };
    team.map_or(Required::Admin, Required::Team)
}

/// `POST /admin/v1/operators {"name", "role", "team"?}`: a new operator, its secret shown once.
pub async fn create(
    control: &Control,
    caller: &Caller,
    body: &[u8],
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let spec = operator_request(body, now)?;
    let role = spec.role;
    if let Some(team) = &spec.team {
        control
            .gateway
            .directory
            .team(team)
            .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    }
    let random = control.gateway.random::<32>();
    let (operator, secret) = control
        .gateway
        .operators
        .create(spec.clone(), &random)
        .map_err(|e| Failure::BadRequest(e.to_string()))?;
    let record = Record::CreateOperator {
        id: operator.id(),
        hash: tollgate_engine::operator::OperatorStore::hash_of(&operator).to_hex(),
        name: spec.name,
        role,
        team: spec.team,
        created_at_ms: now.0,
    };
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": caller.actor(),
        "action": "operator.create",
        "operator_id": operator.id().to_string(),
        "role": role.as_str(),
        "team": operator.team.as_deref(),
    });
    if let Err(e) = control.persist(&record, &audit).await {
        // Not recorded: not in force either.
        let _ = control.gateway.operators.revoke(operator.id());
        return Err(Failure::Internal(format!(
            "the operator was not recorded: {e}"
        )));
    }
    let mut answer = describe(&operator);
    answer["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, answer))
}

/// `GET /admin/v1/operators`.
pub fn list(control: &Control) -> Value {
    let all: Vec<Value> = control
        .gateway
        .operators
        .list()
        .iter()
        .map(|o| describe(o))
        .collect();
    json!({ "operators": all })
}

/// `POST /admin/v1/operators/{id}/revoke`.
pub async fn revoke(
    control: &Control,
    caller: &Caller,
    id: &str,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let id = OperatorId::parse(id).map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    let operator = control
        .gateway
        .operators
        .revoke(id)
        .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    let record = Record::RevokeOperator { id, at_ms: now.0 };
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": caller.actor(),
        "action": "operator.revoke",
        "operator_id": id.to_string(),
    });
    control.persist(&record, &audit).await.map_err(|e| {
        Failure::Internal(format!(
            "operator `{id}` is refused on this replica, but its revocation was not recorded ({e}): revoke it again"
        ))
    })?;
    Ok((StatusCode::OK, describe(&operator)))
}

fn describe(operator: &Operator) -> Value {
    json!({
        "id": operator.id().to_string(),
        "name": &*operator.name,
        "role": operator.role.as_str(),
        "team": operator.team.as_deref(),
        "created_at": format_rfc3339_s(operator.created_at),
        "revoked": operator.is_revoked(),
    })
}
