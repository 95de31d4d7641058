//! The admin API under `/admin/v1`, on its own token: keys, allocations and live spend,
//! providers, models and rate-card versions. The `tollgate` CLI speaks to it.
//!
//! A key's secret appears once, in the answer that creates it; only its hash is stored. Every
//! change is durable before the answer is sent: published to the control topic when replicas
//! share one (see [`crate::control::replicate`]), else journaled and synced (see
//! [`crate::control::journal`]); and written to the local audit log either way.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tollgate_engine::{KeyId, KeySpec, Level, UnixMs, VirtualKey};

use crate::clock::now_ms;
use crate::control::Control;
use crate::control::access;
use crate::control::bodies::{AllocationRequest, KeyRequest, allocation_request, limit_request};
use crate::control::journal::{Record, create_record};
use crate::control::replicate::Change;
use crate::control::spend::{self, Export};
use crate::http::body::{self, BodyLimits};
use crate::http::error::{Failure, Protocol};
use crate::http::response::{ResponseBody, channel, error_response, json};
use crate::limits::ADMIN_BODY_BYTES_MAX;
use tollgate_engine::time::format_rfc3339_s;

/// Serves one admin request.
pub async fn handle(control: &Control, request: Request<Incoming>) -> Response<ResponseBody> {
    let now = now_ms();
    let request_id = control.gateway.request_id(now);
    match serve(control, request, now, &request_id).await {
        Ok(response) => response,
        Err(failure) => error_response(Protocol::OpenAi, &request_id, &failure),
    }
}

async fn serve(
    control: &Control,
    request: Request<Incoming>,
    now: UnixMs,
    request_id: &str,
) -> Result<Response<ResponseBody>, Failure> {
    let caller = access::caller_of(control, request.headers(), request.method(), now)?;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches("/admin/v1")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = read(control, request).await?;
    access::authorize(control, &caller, &method, &segments, &body)?;
    if let (&Method::GET, ["exports", name]) = (&method, segments.as_slice()) {
        return download(control, name, &query, request_id);
    }
    let asked = Asked {
        method: &method,
        segments: &segments,
        path: &path,
        query: &query,
        body: &body,
    };
    let (status, value) = answer(control, &caller, &asked, now).await?;
    Ok(json(status, request_id, &value))
}

/// A download of an export: streamed as it is made, offered as a file.
fn download(
    control: &Control,
    name: &str,
    query: &str,
    request_id: &str,
) -> Result<Response<ResponseBody>, Failure> {
    let export = Export::parse(name).ok_or_else(|| {
        Failure::AdminNotFound(format!(
            "no export `{}`: chargeback.csv, focus.csv or focus.parquet",
            name.chars().take(40).collect::<String>()
        ))
    })?;
    let (sender, body) = channel();
    spend::export(&control.gateway, export, query, sender)?;
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(export.content_type()),
    );
    if let Ok(disposition) =
        header::HeaderValue::from_str(&format!("attachment; filename=\"{}\"", export.file_name()))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if let Ok(id) = header::HeaderValue::from_str(request_id) {
        headers.insert(crate::http::response::REQUEST_ID, id);
    }
    Ok(response)
}

/// An admin request taken apart: its method, its path below `/admin/v1` in segments, the
/// whole path, its query string and its body.
struct Asked<'a> {
    method: &'a Method,
    segments: &'a [&'a str],
    path: &'a str,
    query: &'a str,
    body: &'a Bytes,
}

/// The JSON answer to an authorized admin request.
async fn answer(
    control: &Control,
    caller: &access::Caller,
    asked: &Asked<'_>,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let Asked {
        method,
        segments,
        path,
        query,
        body,
    } = *asked;
    let actor = caller.actor();
    match (method, segments) {
        (&Method::GET, ["report"]) => Ok((StatusCode::OK, spend::report(control, query).await?)),
        (&Method::GET, ["series"]) => Ok((StatusCode::OK, spend::series(control, query).await?)),
        (&Method::GET, ["events", "recent"]) => Ok((
            StatusCode::OK,
            spend::recent(&control.gateway, query).await?,
        )),
        (&Method::GET, ["operators"]) => Ok((StatusCode::OK, access::list(control))),
        (&Method::POST, ["operators"]) => access::create(control, caller, body, now).await,
        (&Method::POST, ["operators", id, "revoke"]) => {
            access::revoke(control, caller, id, now).await
        }
        (&Method::GET, ["keys"]) => Ok((StatusCode::OK, list_keys(control))),
        (&Method::POST, ["keys"]) => create_key(control, &actor, body, now, None).await,
        (&Method::POST, ["keys", id, "revoke"]) => revoke_key(control, &actor, id, now).await,
        (&Method::POST, ["keys", id, "rotate"]) => rotate_key(control, &actor, id, now).await,
        (&Method::GET, ["allocations"]) => Ok((StatusCode::OK, allocations(control, now))),
        (&Method::POST, ["allocations"]) => create_allocation(control, &actor, body, now).await,
        (&Method::PUT, ["budgets", level, name]) => {
            set_limit(control, &actor, level, name, body, now).await
        }
        (&Method::GET, ["guards"]) => Ok((StatusCode::OK, guards(control))),
        (&Method::POST, ["guards", "clear"]) => clear_guard(control, &actor, body, now).await,
        (&Method::GET, ["providers"]) => Ok((StatusCode::OK, providers(control))),
        (&Method::GET, ["models"]) => Ok((StatusCode::OK, models(control, now))),
        (&Method::GET, ["rate-card"]) => Ok((StatusCode::OK, rate_card(control))),
        (&Method::POST, ["rate-card", "reload"]) => reload_rate_card(control, &actor, now).await,
        (&Method::POST, ["events", "flush"]) => {
            if control.gateway.emitter.flush().await {
                Ok((StatusCode::OK, json!({ "flushed": true })))
            } else {
                Err(Failure::Overloaded(
                    "the event writer is not accepting work",
                ))
            }
        }
        _ => Err(Failure::NotFound {
            method: method.to_string(),
            path: path.chars().take(256).collect(),
        }),
    }
}

/// The guards' blocks in force: `{"blocks": [{guard, scope, name, at, reason}]}`.
fn guards(control: &Control) -> Value {
    let blocks: Vec<Value> = control
        .gateway
        .guards
        .blocks()
        .iter()
        .map(|b| {
            json!({
                "guard": b.guard.as_str(),
                "scope": b.scope.as_str(),
                "name": &*b.name,
                "at": format_rfc3339_s(b.at),
                "reason": b.reason,
            })
        })
        .collect();
    json!({ "blocks": blocks })
}

/// `POST /admin/v1/guards/clear {"scope", "name"}`: lifts a guard's block, audited.
async fn clear_guard(
    control: &Control,
    actor: &str,
    body: &Bytes,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Clear {
        scope: String,
        name: String,
    }
    let clear: Clear = serde_json::from_slice(body)
        .map_err(|e| Failure::BadRequest(format!("guards/clear body: {e}")))?;
    let scope = crate::config::Scope::parse(&clear.scope).ok_or_else(|| {
        Failure::BadRequest(format!(
            "scope must be key, agent or allocation, not `{}`",
            clear.scope.chars().take(40).collect::<String>()
        ))
    })?;
    let block = control
        .gateway
        .guards
        .blocks()
        .into_iter()
        .find(|b| b.scope == scope && *b.name == *clear.name)
        .ok_or_else(|| {
            Failure::AdminNotFound(format!(
                "no block on {} `{}`",
                scope.as_str(),
                clear.name.chars().take(200).collect::<String>()
            ))
        })?;
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": actor,
        "action": "clear_guard",
        "guard": block.guard.as_str(),
        "scope": scope.as_str(),
        "name": &*block.name,
    });
    // Durable (and shared) before it takes effect, as every admin change is.
    let record = Record::GuardClear {
        scope,
        name: clear.name.clone(),
        at_ms: now.0,
    };
    control
        .persist(&record, &audit)
        .await
        .map_err(Failure::Internal)?;
    control.gateway.guards.clear(scope, &clear.name);
    Ok((
        StatusCode::OK,
        json!({
            "cleared": true,
            "guard": block.guard.as_str(),
            "scope": scope.as_str(),
            "name": &*block.name,
            "blocked_since": format_rfc3339_s(block.at),
        }),
    ))
}

async fn read(control: &Control, request: Request<Incoming>) -> Result<Bytes, Failure> {
    let limits = BodyLimits {
        bytes_max: ADMIN_BODY_BYTES_MAX,
        timeout: control.gateway.config.server.body_timeout,
    };
    let (parts, body) = request.into_parts();
    body::read(&parts.headers, body, limits).await
}

async fn create_key(
    control: &Control,
    actor: &str,
    body: &[u8],
    now: UnixMs,
    replaces: Option<&VirtualKey>,
) -> Result<(StatusCode, Value), Failure> {
    let spec = match replaces {
        Some(old) => KeySpec {
            user: old.user.to_string(),
            agent: old.agent.as_deref().map(str::to_owned),
            expires_at: old.expires_at(),
            models: old.models.clone(),
            limits: old.limits,
            scopes: old.scopes,
            created_at: now,
            revoked: false,
            tight: old.own_tight(),
        },
        None => {
            let request = KeyRequest::parse(body, now)?;
            let allocation = control
                .gateway
                .directory
                .allocation(&request.allocation)
                .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
            return insert_key(control, actor, &allocation, request.spec, now, None).await;
        }
    };
    let allocation = replaces.map(|k| Arc::clone(&k.allocation));
    match allocation {
        Some(allocation) => insert_key(control, actor, &allocation, spec, now, replaces).await,
        None => Err(Failure::Internal("rotation without a key".into())),
    }
}

async fn insert_key(
    control: &Control,
    actor: &str,
    allocation: &Arc<tollgate_engine::Allocation>,
    spec: KeySpec,
    now: UnixMs,
    replaces: Option<&VirtualKey>,
) -> Result<(StatusCode, Value), Failure> {
    // A 64-bit id collision is astronomically rare; try a few fresh secrets, then give up.
    let mut created = None;
    for _ in 0..4 {
        let random: [u8; 20] = control.gateway.random();
        match control
            .gateway
            .keys
            .create(allocation, spec.clone(), &random)
        {
            Ok(pair) => {
                created = Some(pair);
                break;
            }
            Err(tollgate_engine::Error::KeyCollision) => {}
            Err(e) => return Err(Failure::BadRequest(e.to_string())),
        }
    }
    let Some((key, secret)) = created else {
        return Err(Failure::Internal("could not draw an unused key id".into()));
    };
    let record = create_record(&key, &spec);
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": actor,
        "action": if replaces.is_some() { "key.rotate" } else { "key.create" },
        "key_id": key.id().to_string(),
        "replaces": replaces.map(|k| k.id().to_string()),
        "allocation": &*allocation.name,
        "user": &*key.user,
    });
    if let Err(e) = control.persist(&record, &audit).await {
        // Not durable, so not created: take it back out of service.
        let _ = control.gateway.keys.revoke(key.id());
        return Err(Failure::Internal(e));
    }
    if let Some(old) = replaces {
        revoke(control, actor, old.id(), now, "key.revoke").await?;
    }
    let mut answer = describe(&key);
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("key".into(), json!(secret.expose()));
        if let Some(old) = replaces {
            fields.insert("replaces".into(), json!(old.id().to_string()));
        }
    }
    Ok((StatusCode::CREATED, answer))
}

async fn create_allocation(
    control: &Control,
    actor: &str,
    body: &[u8],
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let AllocationRequest {
        name,
        project,
        record,
    } = allocation_request(body)?;
    // Applied first (it checks names and the project), journaled once it holds.
    crate::control::journal::apply(&record, &control.gateway.directory).map_err(|e| match e {
        tollgate_engine::Error::Unknown { .. } => Failure::AdminNotFound(e.to_string()),
        _ => Failure::BadRequest(e.to_string()),
    })?;
    let audit = json!({
        "at": format_rfc3339_s(now), "actor": actor, "action": "allocation.create",
        "allocation": name, "project": project,
    });
    control
        .persist(&record, &audit)
        .await
        .map_err(Failure::Internal)?;
    let allocation = control
        .gateway
        .directory
        .allocation(&name)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    Ok((StatusCode::CREATED, describe_allocation(&allocation, now)))
}

/// `PUT /admin/v1/budgets/{team|project|allocation}/{name}` with `{"limit": "50.00"}` or
/// `{"limit": null}`.
async fn set_limit(
    control: &Control,
    actor: &str,
    level: &str,
    name: &str,
    body: &[u8],
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let level = match level {
        "team" => tollgate_engine::Level::Team,
        "project" => tollgate_engine::Level::Project,
        "allocation" => tollgate_engine::Level::Allocation,
        other => {
            return Err(Failure::BadRequest(format!(
                "`{other}` is not team, project or allocation"
            )));
        }
    };
    let limit = limit_request(body)?;
    let record = Record::SetLimit {
        level,
        name: name.to_owned(),
        limit,
    };
    crate::control::journal::apply(&record, &control.gateway.directory)
        .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    let audit = json!({
        "at": format_rfc3339_s(now), "actor": actor, "action": "budget.set",
        "level": level.as_str(), "name": name, "limit": limit.map(|l| l.to_string()),
    });
    control
        .persist(&record, &audit)
        .await
        .map_err(Failure::Internal)?;
    Ok((
        StatusCode::OK,
        json!({"level": level.as_str(), "name": name, "limit": limit.map(|l| l.to_string())}),
    ))
}

fn find_key(control: &Control, id: &str) -> Result<Arc<VirtualKey>, Failure> {
    let id = KeyId::parse(id).map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    control
        .gateway
        .keys
        .get(id)
        .ok_or_else(|| Failure::AdminNotFound(format!("unknown key `{id}`")))
}

async fn revoke(
    control: &Control,
    actor: &str,
    id: KeyId,
    now: UnixMs,
    action: &str,
) -> Result<(), Failure> {
    let record = Record::Revoke { id, at_ms: now.0 };
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": actor,
        "action": action,
        "key_id": id.to_string(),
    });
    // Out of service here first: a revocation that cannot be recorded still stops the key on
    // this replica, and the answer says it is not recorded.
    control
        .gateway
        .keys
        .revoke(id)
        .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    control.gateway.forget_key(id);
    control.persist(&record, &audit).await.map_err(|e| {
        Failure::Internal(format!(
            "key `{id}` is refused on this replica, but its revocation was not recorded ({e}): \
             revoke it again"
        ))
    })
}

async fn revoke_key(
    control: &Control,
    actor: &str,
    id: &str,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let key = find_key(control, id)?;
    revoke(control, actor, key.id(), now, "key.revoke").await?;
    Ok((StatusCode::OK, describe(&key)))
}

async fn rotate_key(
    control: &Control,
    actor: &str,
    id: &str,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let key = find_key(control, id)?;
    if key.is_revoked() {
        return Err(Failure::BadRequest(format!(
            "key `{}` is revoked",
            key.id()
        )));
    }
    create_key(control, actor, &[], now, Some(&key)).await
}

fn describe(key: &VirtualKey) -> Value {
    let allocation = &key.allocation;
    json!({
        "id": key.id().to_string(),
        "prefix": key.display_prefix(),
        "allocation": &*allocation.name,
        "project": &*allocation.project.name,
        "team": &*allocation.project.team.name,
        "user": &*key.user,
        "agent": key.agent.as_deref(),
        "models": match key.models { tollgate_engine::AllowList::Any => Vec::new(), _ => key.models.entries() },
        "requests_per_minute": key.limits.requests_per_minute,
        "tokens_per_minute": key.limits.tokens_per_minute,
        "scopes": key.scopes.names(),
        "tight": key.tight().as_str(),
        "created_at": format_rfc3339_s(key.created_at),
        "expires_at": key.expires_at().map(format_rfc3339_s),
        "revoked": key.is_revoked(),
    })
}

fn list_keys(control: &Control) -> Value {
    let mut keys = control.gateway.keys.list();
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id().cmp(&b.id())));
    json!({ "keys": keys.iter().map(|k| describe(k)).collect::<Vec<_>>() })
}

fn budget(cell: &tollgate_engine::BudgetCell, now: UnixMs) -> Value {
    let snapshot = cell.snapshot(now);
    json!({
        "period": snapshot.period.as_str(),
        "limit": snapshot.limit.map(|n| n.to_string()),
        "spent": snapshot.spent.to_string(),
        "in_flight": snapshot.in_flight.to_string(),
        "remaining": snapshot.remaining.map(|n| n.to_string()),
        "resets_at": snapshot.resets_at.map(format_rfc3339_s),
        "spent_nanos": snapshot.spent.0,
    })
}

fn allocations(control: &Control, now: UnixMs) -> Value {
    let mut all = control.gateway.directory.allocations();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let card = control.gateway.card.load();
    let version = card.at(now);
    let list: Vec<Value> = all
        .iter()
        .map(|a| {
            let mut described = describe_allocation(a, now);
            for (level, field) in [
                (Level::Allocation, "budget"),
                (Level::Project, "project_budget"),
                (Level::Team, "team_budget"),
            ] {
                let forecast = control.forecasts.get(level, a.level_name(level));
                described[field]["runs_out_at"] =
                    json!(forecast.and_then(|f| f.runs_out_at).map(format_rfc3339_s));
                described[field]["burn_per_hour"] =
                    json!(forecast.map(|f| tollgate_engine::Nanos(f.nanos_per_hour).to_string()));
            }
            // The markup or discount on list price in force for it now (project over team), so
            // a client can price what it sees exactly as the gateway does.
            described["price_adjustment_ppm"] = json!(version.map_or(0, |v| {
                v.adjustment(&a.project.team.name, &a.project.name).ppm
            }));
            described
        })
        .collect();
    json!({ "currency": &*card.currency, "allocations": list })
}

fn describe_allocation(a: &tollgate_engine::Allocation, now: UnixMs) -> Value {
    let mut described = json!({
                "name": &*a.name,
                "project": &*a.project.name,
                "team": &*a.project.team.name,
                "org": &*a.project.team.org,
                "cost_center": &*a.cost_center,
                "models": match a.models { tollgate_engine::AllowList::Any => Vec::new(), _ => a.models.entries() },
                "budget": budget(&a.budget, now),
                "project_budget": budget(&a.project.budget, now),
                "team_budget": budget(&a.project.team.budget, now),
                "tight": a.tight().as_str(),
    });
    if let Some(lease) = a.budget.lease() {
        described["lease"] = lease_view(&lease.snapshot(), now);
    }
    described
}

/// This replica's lease on an allocation, and what the whole cluster holds there.
fn lease_view(lease: &tollgate_engine::lease::LeaseSnapshot, now: UnixMs) -> Value {
    let nanos = |n: u64| tollgate_engine::Nanos(n).to_string();
    json!({
        "available": if lease.available < 0 {
            format!("-{}", nanos(lease.available.unsigned_abs()))
        } else {
            nanos(lease.available.unsigned_abs())
        },
        "granted": nanos(lease.granted_total),
        "returned": nanos(lease.returned_total),
        "expired": nanos(lease.expired_total),
        "failed_open": nanos(lease.opened_total),
        "cluster_leased": nanos(lease.cluster_nanos),
        "cluster_leased_nanos": lease.cluster_nanos,
        "ends_at": (lease.epoch > now.0 && lease.epoch < i64::MAX)
            .then(|| format_rfc3339_s(UnixMs(lease.epoch))),
    })
}

fn providers(control: &Control) -> Value {
    let gateway = &control.gateway;
    let now_us = gateway.monotonic_us();
    let list: Vec<Value> = gateway
        .config
        .providers
        .iter()
        .map(|p| {
            let running = gateway.providers.get(&p.name);
            let deployments: Vec<Value> = p
                .deployments
                .iter()
                .zip(running.iter().flat_map(|r| r.deployments.iter()))
                .map(|(config, live)| {
                    let endpoint = &config.endpoint;
                    json!({
                        "name": config.name,
                        "base_url": endpoint.base_url,
                        "region": endpoint.region,
                        "credential": endpoint.api_key_env.as_ref().map(|v| format!("from ${v}")),
                        "weight": config.weight,
                        "in_flight_max": config.in_flight_max,
                        "in_flight": live.health.in_flight(),
                        "breaker": live.health.breaker.state(now_us).as_str(),
                        "breaker_opened": live.health.breaker.opened(),
                        "ttfb_ms": live.health.latency_us(now_us).map(|us| us / 1_000),
                    })
                })
                .collect();
            json!({
                "name": p.name,
                "kind": p.kind.as_str(),
                "api_version": p.api_version,
                "base_url": p.base_url,
                "credential": p.api_key_env.as_ref().map(|v| format!("from ${v}")),
                "deployments": deployments,
            })
        })
        .collect();
    let groups: Vec<Value> = gateway
        .config
        .groups
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "balance": g.balance.as_str(),
                "retries": g.retries,
                "attempts_max": g.attempts_max,
                "candidates": g.candidates.iter().map(|c| json!({
                    "model": c.model.as_str(),
                    "weight": c.weight,
                    "context_tokens": c.context_tokens,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "providers": list, "groups": groups })
}

fn models(control: &Control, now: UnixMs) -> Value {
    let card = control.gateway.card.load();
    let Some(version) = card.at(now) else {
        return json!({ "rate_card_version": null, "models": [] });
    };
    let list: Vec<Value> = version
        .models()
        .map(|p| {
            json!({
                "model": p.model.as_str(),
                "served": control.gateway.providers.contains_key(p.model.provider()),
                "input_per_mtok": tollgate_engine::Nanos(p.input_per_mtok.0).to_string(),
                "cached_input_per_mtok": tollgate_engine::Nanos(p.cached_input_per_mtok.0).to_string(),
                "cache_write_per_mtok": tollgate_engine::Nanos(p.cache_write_per_mtok.0).to_string(),
                "output_per_mtok": tollgate_engine::Nanos(p.output_per_mtok.0).to_string(),
                "reasoning_per_mtok": tollgate_engine::Nanos(p.reasoning_per_mtok.0).to_string(),
                "max_output_tokens": p.max_output_tokens,
            })
        })
        .collect();
    let aliases: Vec<Value> = control
        .gateway
        .config
        .aliases
        .iter()
        .map(|(name, target)| json!({ "alias": name, "model": target.as_str() }))
        .collect();
    json!({ "rate_card_version": &*version.id, "models": list, "aliases": aliases })
}

fn rate_card(control: &Control) -> Value {
    let card = control.gateway.card.load();
    let versions: Vec<Value> = card
        .versions()
        .iter()
        .map(|v| {
            json!({
                "id": &*v.id,
                "effective_from": format_rfc3339_s(v.effective_from),
                "models": v.model_count(),
                "resources": v.resource_count(),
            })
        })
        .collect();
    json!({ "currency": &*card.currency, "versions": versions })
}

/// `POST /admin/v1/rate-card/reload`: reads the card file again and, when replicas share a
/// control topic, publishes it for the others. Versions already in force must be unchanged (a
/// price change is a new version, never a rewrite of history); new versions, future ones above
/// all, are added.
async fn reload_rate_card(
    control: &Control,
    actor: &str,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let path = &control.gateway.config.rate_card;
    let toml = tollgate_engine::config::read_config_file(path)
        .map_err(|e| Failure::BadRequest(e.to_string()))?;
    let card = tollgate_engine::RateCard::from_toml(&toml, &path.display().to_string())
        .map_err(|e| Failure::BadRequest(e.to_string()))?;
    let added =
        card_update(&control.gateway.card.load(), &card, now).map_err(Failure::BadRequest)?;
    if let Some(replication) = &control.replication {
        replication
            .publish(&Change::RateCard { toml })
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?;
    }
    let audit = json!({"at": format_rfc3339_s(now), "actor": actor, "action": "rate_card.reload", "added": added});
    control
        .journal
        .audit(&audit)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    control.gateway.card.store(std::sync::Arc::new(card));
    Ok((
        StatusCode::OK,
        json!({"added": added, "rate_card": rate_card(control)}),
    ))
}

/// Checks that `card` may replace `current` at `now` (same currency; every version in force
/// unchanged) and returns the ids of the versions it adds; why not, if it may not.
pub(crate) fn card_update(
    current: &tollgate_engine::RateCard,
    card: &tollgate_engine::RateCard,
    now: UnixMs,
) -> Result<Vec<String>, String> {
    if card.currency != current.currency {
        return Err(format!(
            "the card's currency changed from {} to {}; start a new ledger instead",
            current.currency, card.currency
        ));
    }
    for old in current
        .versions()
        .iter()
        .filter(|v| v.effective_from <= now)
    {
        let same = card
            .version(&old.id)
            .is_some_and(|new| serde_json::to_value(new).ok() == serde_json::to_value(old).ok());
        if !same {
            return Err(format!(
                "version `{}` is in force since {} and cannot change or go away; add a new version instead",
                old.id,
                format_rfc3339_s(old.effective_from)
            ));
        }
    }
    Ok(card
        .versions()
        .iter()
        .filter(|v| current.version(&v.id).is_none())
        .map(|v| v.id.to_string())
        .collect())
}
