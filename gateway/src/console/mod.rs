//! The web console at `/console` (with `[console] enabled`): a page and its script and style,
//! embedded in the binary (no second server, no CDN), and the sign-in that gives the page a
//! session cookie. Everything the page shows or changes goes through the admin API with that
//! cookie, so the console can do exactly what its operator's role allows and nothing more.
//!
//! **Invariant:** no secret is ever in a URL or readable by the page's script: the credential
//! goes once in a sign-in body, the session id lives in an `HttpOnly`, `SameSite=Strict`
//! cookie, and every answer carries a Content-Security-Policy that lets only the embedded
//! script run (no inline script, no other origin), so text from an allocation's name or an
//! event is shown as text.

mod assets;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tollgate_engine::UnixMs;
use tollgate_engine::time::format_rfc3339_s;

use crate::clock::now_ms;
use crate::config::SecureCookie;
use crate::control::Control;
use crate::control::access::{self, Caller};
use crate::control::session::{COOKIE, CSRF_HEADER, Session, Signed};
use crate::http::body::{self, BodyLimits};
use crate::http::error::{Failure, Protocol};
use crate::http::response::{ResponseBody, error_response, json, plain};

/// The policy every console answer carries: the page's own script and style and nothing else;
/// no frames of it elsewhere, no form posted away, no base to rebase links on.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Largest sign-in body: a credential and its field name.
const SIGN_IN_BYTES_MAX: usize = 1_024;

/// Serves one request under `/console`.
pub async fn handle(control: &Control, request: Request<Incoming>) -> Response<ResponseBody> {
    let now = now_ms();
    let request_id = control.gateway.request_id(now);
    let mut response = match serve(control, request, now).await {
        Ok(response) => response,
        Err(failure) => error_response(Protocol::OpenAi, &request_id, &failure),
    };
    harden(response.headers_mut());
    response
}

async fn serve(
    control: &Control,
    request: Request<Incoming>,
    now: UnixMs,
) -> Result<Response<ResponseBody>, Failure> {
    let not_found = || Failure::NotFound {
        method: request.method().to_string(),
        path: request.uri().path().chars().take(256).collect(),
    };
    let Some(console) = &control.gateway.config.console else {
        return Err(not_found());
    };
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/console" | "/console/") => Ok(asset(&assets::INDEX, request.headers())),
        (&Method::GET, "/console/session") => {
            let (session, _) = access::session_of(control, request.headers(), now)?;
            let caller = session.signed.caller().ok_or(Failure::AdminUnauthorized)?;
            Ok(json(StatusCode::OK, "", &describe(&caller, &session)))
        }
        (&Method::POST, "/console/session") => {
            let secure = match console.secure_cookie {
                SecureCookie::Always => true,
                SecureCookie::Never => false,
                SecureCookie::Auto => forwarded_https(request.headers()),
            };
            sign_in(control, request, now, secure).await
        }
        (&Method::DELETE, "/console/session") => sign_out(control, request.headers(), now),
        (&Method::GET, _) => path
            .strip_prefix("/console/assets/")
            .and_then(assets::find)
            .map(|found| asset(found, request.headers()))
            .ok_or_else(not_found),
        _ => Err(not_found()),
    }
}

/// `POST /console/session {"secret": "..."}` (JSON only, from this origin): a session for the
/// admin token's holder or an operator, its id set as a cookie, its CSRF token answered.
async fn sign_in(
    control: &Control,
    request: Request<Incoming>,
    now: UnixMs,
    secure: bool,
) -> Result<Response<ResponseBody>, Failure> {
    access::same_origin(request.headers())?;
    // A form of another site can post text, never JSON: no sign-in is forced on a browser.
    let json_body = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json_body {
        return Err(Failure::BadRequest(
            "sign in with a JSON body: {\"secret\": \"...\"}".to_owned(),
        ));
    }
    let (parts, incoming) = request.into_parts();
    let limits = BodyLimits {
        bytes_max: SIGN_IN_BYTES_MAX,
        timeout: control.gateway.config.server.body_timeout,
    };
    let bytes: Bytes = body::read(&parts.headers, incoming, limits).await?;
    let secret = sign_in_secret(&bytes)?;
    let signed = match access::caller(control, &secret)? {
        Caller::Root => Signed::Root,
        Caller::Operator(operator) => Signed::Operator(operator),
    };
    let sessions = control
        .sessions
        .as_ref()
        .ok_or(Failure::AdminUnauthorized)?;
    let opened = sessions
        .open(signed, now)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let caller = opened
        .session
        .signed
        .caller()
        .ok_or(Failure::AdminUnauthorized)?;
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": caller.actor(),
        "action": "console.sign_in",
    });
    if let Err(e) = control.journal.audit(&audit) {
        crate::operator::report(&format!("the audit log refused a console sign-in: {e}"));
    }
    let mut response = json(StatusCode::OK, "", &describe(&caller, &opened.session));
    let max_age = sessions.ttl().as_secs();
    let cookie = format!(
        "{COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        opened.id,
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The credential of a sign-in body, `{"secret": "..."}`, trimmed; a clear refusal otherwise.
pub fn sign_in_secret(body: &[u8]) -> Result<String, Failure> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SignIn {
        secret: String,
    }
    let asked: SignIn = serde_json::from_slice(body)
        .map_err(|e| Failure::BadRequest(format!("sign-in body: {e}")))?;
    let secret = asked.secret.trim();
    if secret.is_empty() {
        return Err(Failure::BadRequest(
            "sign-in body: `secret` is empty".to_owned(),
        ));
    }
    Ok(secret.to_owned())
}

/// `DELETE /console/session` (with the session's CSRF token): the session ends and its cookie
/// is cleared.
fn sign_out(
    control: &Control,
    headers: &HeaderMap,
    now: UnixMs,
) -> Result<Response<ResponseBody>, Failure> {
    let caller = access::caller_of(control, headers, &Method::DELETE, now)?;
    let (_, id) = access::session_of(control, headers, now)?;
    if let Some(sessions) = &control.sessions {
        sessions.close(id);
    }
    let audit = json!({
        "at": format_rfc3339_s(now),
        "actor": caller.actor(),
        "action": "console.sign_out",
    });
    if let Err(e) = control.journal.audit(&audit) {
        crate::operator::report(&format!("the audit log refused a console sign-out: {e}"));
    }
    let mut response = json(StatusCode::OK, "", &json!({ "signed_out": true }));
    let cleared = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Who a session is, what it may do, and its CSRF token.
fn describe(caller: &Caller, session: &Session) -> Value {
    let (role, team, name) = match caller {
        Caller::Root => ("admin", None, "admin".to_owned()),
        Caller::Operator(operator) => (
            operator.role.as_str(),
            operator.team.as_deref().map(str::to_owned),
            operator.name.to_string(),
        ),
    };
    json!({
        "actor": caller.actor(),
        "name": name,
        "role": role,
        "team": team,
        "csrf": &*session.csrf,
        "csrf_header": CSRF_HEADER,
        "expires_at": format_rfc3339_s(session.expires_at),
    })
}

/// Whether the proxy in front says the request came over TLS.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get(HeaderName::from_static("x-forwarded-proto"))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// An embedded file, or 304 when the browser holds this build's copy.
fn asset(found: &assets::Asset, headers: &HeaderMap) -> Response<ResponseBody> {
    let etag = found.etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        plain(StatusCode::NOT_MODIFIED, found.content_type, Bytes::new())
    } else {
        plain(
            StatusCode::OK,
            found.content_type,
            Bytes::from_static(found.bytes),
        )
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    // Asked again each time (304 when unchanged): a new build's page never runs an old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The headers every console answer carries.
fn harden(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}
