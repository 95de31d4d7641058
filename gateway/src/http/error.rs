//! Every way a request can fail, classified once at the HTTP edge.
//!
//! [`Failure`] is what the request path returns; [`Failure::class`] is the one exhaustive
//! `match` that gives the status code, the error type a client sees, and the usage event's
//! status. The body is OpenAI's error envelope on OpenAI routes and Anthropic's on
//! `/v1/messages`; a spent budget has the same fields on every route.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tollgate_engine::{BudgetExhausted, KeyRejection, Status};

/// Which API's error envelope a route answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// Where a budget refusal was, for its body.
#[derive(Clone, Debug)]
pub struct BudgetScope {
    /// The team of the allocation charged (each level is named, whichever refused).
    pub team: Arc<str>,
    /// The project of the allocation charged.
    pub project: Arc<str>,
    /// The allocation the caller's key is bound to.
    pub allocation: Arc<str>,
}

/// A request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No usable key.
    #[error("{0}")]
    InvalidApiKey(KeyRejection),
    /// The model is not on the key's or the allocation's allow-list.
    #[error("model `{model}` is not allowed for this key")]
    ModelNotAllowed {
        /// The model as the client named it.
        model: String,
    },
    /// The model has no price on the rate card in force.
    #[error(
        "model `{model}` has no price on the rate card; it is refused rather than metered as free"
    )]
    ModelNotPriced {
        /// The `provider/model` the name resolved to.
        model: String,
    },
    /// No provider or alias by that name.
    #[error("model `{model}` does not exist here; models are named provider/model")]
    ModelNotFound {
        /// The name asked for.
        model: String,
    },
    /// A requests- or tokens-per-minute limit.
    #[error("{scope} {what}-per-minute limit reached; retry after {retry_after_s} s")]
    RateLimited {
        /// `key` or `team`.
        scope: &'static str,
        /// `requests` or `tokens`.
        what: &'static str,
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// A guard refused the call: a loop, or a spend velocity past its ceiling; for a while
    /// (`retry_after_s`) or, blocked, until an operator clears it.
    #[error(
        "{}",
        match retry_after_s {
            Some(s) => format!("{} for {scope} `{name}`; retry after {s} s", guard.as_str()),
            None => format!(
                "{} for {scope} `{name}`: blocked until an operator clears it",
                guard.as_str()
            ),
        }
    )]
    Guarded {
        /// The loop detector or a velocity ceiling.
        guard: tollgate_engine::guard::Guard,
        /// `key`, `agent` or `allocation`.
        scope: &'static str,
        /// Its key id, agent name or allocation name.
        name: Arc<str>,
        /// Seconds until a call would be let through; `None` while blocked.
        retry_after_s: Option<u64>,
    },
    /// A budget level has no room.
    #[error("{0}")]
    BudgetExceeded(Box<BudgetExhausted>, BudgetScope),
    /// Every level has room for the call, but calls in flight hold it and did not give it back
    /// within `admission.wait_ms_max`: worth retrying, which is why it is a 429.
    #[error(
        "budget busy at {level} `{name}`: calls in flight hold what is left; retry after {retry_after_s} s",
        level = .0.level.as_str(), name = .0.name, retry_after_s = .2
    )]
    BudgetBusy(Box<BudgetExhausted>, BudgetScope, u64),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit.
    #[error("request body is larger than the {limit_bytes}-byte limit")]
    BodyTooLarge {
        /// The route's body cap (`server.body_bytes_max`, or the ledger's or admin API's).
        limit_bytes: usize,
    },
    /// The request head is larger than the limit.
    #[error("request head is larger than the {limit_bytes}-byte limit")]
    HeadTooLarge {
        /// `server.header_bytes_max`.
        limit_bytes: usize,
    },
    /// No such route.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The request's method, as sent.
        method: String,
        /// The request's path, cut to 256 characters.
        path: String,
    },
    /// The route exists with other methods.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method sent, which the route does not take.
        method: String,
        /// The route's path, cut to 256 characters.
        path: String,
    },
    /// The gateway sheds load (in-flight cap, event backlog) or is shutting down.
    #[error("tollgate is overloaded: {0}")]
    Overloaded(&'static str),
    /// The upstream could not be reached or broke off.
    #[error("provider `{provider}` is unavailable: {reason}")]
    UpstreamUnavailable {
        /// The provider's configured name.
        provider: Arc<str>,
        /// The connection error and its causes, joined (never a credential).
        reason: String,
    },
    /// Every deployment of the model's provider is resting: its breaker open, told to wait by
    /// the provider (`Retry-After`), or at its concurrency cap; nothing was sent.
    #[error(
        "no deployment of provider `{provider}` can take the call now (breakers open, told to wait by the provider, or at their concurrency caps); try again shortly"
    )]
    NoDeployment {
        /// The provider's configured name.
        provider: Arc<str>,
    },
    /// The upstream did not answer in time.
    #[error("provider `{provider}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// The provider's configured name.
        provider: Arc<str>,
        /// The provider's `first_byte_timeout`, passed with no answer head.
        timeout_ms: u128,
    },
    /// The admin token is missing or wrong.
    #[error("admin token missing or wrong")]
    AdminUnauthorized,
    /// The operator's role does not allow the request.
    #[error("role `{role}` may not do this: it needs {needs}")]
    AdminForbidden {
        /// The caller's role.
        role: &'static str,
        /// What the request needs, in words.
        needs: String,
    },
    /// A console session's request that could have been forged: its CSRF token is missing
    /// or not the session's, or it came from another site.
    #[error("{0}: sign in again from the console itself")]
    SessionRefused(&'static str),
    /// An admin or usage request names something that does not exist.
    #[error("{0}")]
    AdminNotFound(String),
    /// The key lacks the scope the route needs (`metering` for `/v1/usage`).
    #[error(
        "this key has no `{scope}` scope; create one with scopes = [\"{scope}\"] or use the admin token"
    )]
    ScopeMissing {
        /// The scope the route needs, as written in a key's `scopes`.
        scope: &'static str,
    },
    /// One record of a usage batch is invalid; nothing of the batch was applied.
    #[error("records[{index}].{field}: {reason}; nothing in this batch was applied")]
    BadRecord {
        /// The record's index in the batch, from 0.
        index: usize,
        /// The record's field that is wrong, as named in the batch (`start`, `unit`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A resource has no price on the rate card in force; it is refused rather than free.
    #[error("{0}")]
    ResourceNotPriced(String),
    /// No hold by that id is kept (never taken, settled, released or expired).
    #[error("no reservation `{0}` is held (settled, released, expired, or never taken)")]
    ReservationNotFound(String),
    /// Tollgate itself failed (a log write, a response it could not build): a 500, retryable.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a failure shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// The HTTP status the client gets.
    pub status: StatusCode,
    /// The error type in OpenAI's envelope (also its `code`).
    pub openai_type: &'static str,
    /// The error type in Anthropic's envelope.
    pub anthropic_type: &'static str,
    /// The usage event's status.
    pub event_status: Status,
}

const fn class(
    status: StatusCode,
    openai_type: &'static str,
    anthropic_type: &'static str,
    event_status: Status,
) -> Class {
    Class {
        status,
        openai_type,
        anthropic_type,
        event_status,
    }
}

impl Failure {
    /// The one classification: status, error types, event status.
    #[must_use]
    pub fn class(&self) -> Class {
        use StatusCode as S;
        match self {
            Failure::InvalidApiKey(_) => class(
                S::UNAUTHORIZED,
                "invalid_api_key",
                "authentication_error",
                Status::InvalidApiKey,
            ),
            Failure::ModelNotAllowed { .. } => class(
                S::FORBIDDEN,
                "model_not_allowed",
                "permission_error",
                Status::ModelNotAllowed,
            ),
            Failure::ModelNotPriced { .. } => class(
                S::FORBIDDEN,
                "model_not_priced",
                "permission_error",
                Status::ModelNotPriced,
            ),
            Failure::ModelNotFound { .. } => class(
                S::NOT_FOUND,
                "model_not_found",
                "not_found_error",
                Status::BadRequest,
            ),
            Failure::RateLimited { .. } => class(
                S::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "rate_limit_error",
                Status::RateLimited,
            ),
            Failure::Guarded {
                guard,
                retry_after_s,
                ..
            } => {
                use tollgate_engine::guard::Guard as G;
                let (openai_type, event_status) = match guard {
                    G::LoopDetected => ("loop_detected", Status::LoopDetected),
                    G::SpendVelocityExceeded => {
                        ("spend_velocity_exceeded", Status::SpendVelocityExceeded)
                    }
                };
                match retry_after_s {
                    Some(_) => class(
                        S::TOO_MANY_REQUESTS,
                        openai_type,
                        "rate_limit_error",
                        event_status,
                    ),
                    None => class(S::FORBIDDEN, openai_type, "permission_error", event_status),
                }
            }
            Failure::BudgetExceeded(..) => class(
                S::PAYMENT_REQUIRED,
                "budget_exceeded",
                "budget_exceeded",
                Status::BudgetExceeded,
            ),
            Failure::BudgetBusy(..) => class(
                S::TOO_MANY_REQUESTS,
                "budget_busy",
                "rate_limit_error",
                Status::RateLimited,
            ),
            Failure::BadRequest(_) => class(
                S::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request_error",
                Status::BadRequest,
            ),
            Failure::BodyTooLarge { .. } => class(
                S::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "request_too_large",
                Status::BadRequest,
            ),
            Failure::HeadTooLarge { .. } => class(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_too_large",
                "invalid_request_error",
                Status::BadRequest,
            ),
            Failure::NotFound { .. } => class(
                S::NOT_FOUND,
                "not_found",
                "not_found_error",
                Status::BadRequest,
            ),
            Failure::MethodNotAllowed { .. } => class(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "invalid_request_error",
                Status::BadRequest,
            ),
            Failure::Overloaded(_) => class(
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "overloaded_error",
                Status::InternalError,
            ),
            Failure::UpstreamUnavailable { .. } => class(
                S::BAD_GATEWAY,
                "upstream_error",
                "api_error",
                Status::UpstreamError,
            ),
            Failure::NoDeployment { .. } => class(
                S::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "overloaded_error",
                Status::UpstreamError,
            ),
            Failure::UpstreamTimeout { .. } => class(
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "api_error",
                Status::UpstreamTimeout,
            ),
            Failure::AdminUnauthorized => class(
                S::UNAUTHORIZED,
                "invalid_admin_token",
                "authentication_error",
                Status::InvalidApiKey,
            ),
            Failure::AdminForbidden { .. } => class(
                S::FORBIDDEN,
                "permission_denied",
                "permission_error",
                Status::InvalidApiKey,
            ),
            Failure::SessionRefused(_) => class(
                S::FORBIDDEN,
                "csrf_failed",
                "permission_error",
                Status::InvalidApiKey,
            ),
            Failure::AdminNotFound(_) => class(
                S::NOT_FOUND,
                "not_found",
                "not_found_error",
                Status::BadRequest,
            ),
            Failure::ScopeMissing { .. } => class(
                S::FORBIDDEN,
                "permission_denied",
                "permission_error",
                Status::InvalidApiKey,
            ),
            Failure::BadRecord { .. } => class(
                S::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request_error",
                Status::BadRequest,
            ),
            Failure::ResourceNotPriced(_) => class(
                S::FORBIDDEN,
                "resource_not_priced",
                "permission_error",
                Status::ModelNotPriced,
            ),
            Failure::ReservationNotFound(_) => class(
                S::NOT_FOUND,
                "not_found",
                "not_found_error",
                Status::BadRequest,
            ),
            Failure::Internal(_) => class(
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "api_error",
                Status::InternalError,
            ),
        }
    }

    /// Seconds a client should wait before retrying, where that is known.
    #[must_use]
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Failure::RateLimited { retry_after_s, .. }
            | Failure::BudgetBusy(_, _, retry_after_s) => Some(*retry_after_s),
            Failure::Guarded { retry_after_s, .. } => *retry_after_s,
            Failure::Overloaded(_) => Some(1),
            _ => None,
        }
    }

    /// The error body in `protocol`'s envelope.
    #[must_use]
    pub fn body(&self, protocol: Protocol) -> Bytes {
        let class = self.class();
        let message = self.to_string();
        let param = match self {
            Failure::BadRecord { index, field, .. } => json!(format!("records[{index}].{field}")),
            _ => Value::Null,
        };
        let mut inner = match protocol {
            Protocol::OpenAi => json!({
                "message": message,
                "type": class.openai_type,
                "param": param,
                "code": class.openai_type,
            }),
            Protocol::Anthropic => json!({
                "type": class.anthropic_type,
                "message": message,
            }),
        };
        if let (
            Failure::BudgetExceeded(exhausted, scope) | Failure::BudgetBusy(exhausted, scope, _),
            Some(fields),
        ) = (self, inner.as_object_mut())
        {
            fields.insert("team".into(), json!(&*scope.team));
            fields.insert("project".into(), json!(&*scope.project));
            fields.insert("allocation".into(), json!(&*scope.allocation));
            fields.insert("level".into(), json!(exhausted.level.as_str()));
            fields.insert("period".into(), json!(exhausted.period.as_str()));
            fields.insert("limit".into(), json!(exhausted.limit.to_string()));
            fields.insert("remaining".into(), json!(exhausted.remaining.to_string()));
            fields.insert("requested".into(), json!(exhausted.requested.to_string()));
            fields.insert(
                "resets_at".into(),
                exhausted.resets_at.map_or(Value::Null, |t| {
                    json!(tollgate_engine::time::format_rfc3339_s(t))
                }),
            );
        }
        if let (
            Failure::Guarded {
                guard, scope, name, ..
            },
            Some(fields),
        ) = (self, inner.as_object_mut())
        {
            // The guard is named in both envelopes: Anthropic's error types cannot say it.
            fields.insert("guard".into(), json!(guard.as_str()));
            fields.insert("scope".into(), json!(scope));
            fields.insert("name".into(), json!(&**name));
        }
        let envelope = match protocol {
            Protocol::OpenAi => json!({ "error": inner }),
            Protocol::Anthropic => json!({ "type": "error", "error": inner }),
        };
        Bytes::from(envelope.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::{Level, Nanos, Period, UnixMs};

    #[test]
    fn budget_refusals_have_one_shape_in_both_envelopes() {
        let failure = Failure::BudgetExceeded(
            Box::new(BudgetExhausted {
                level: Level::Project,
                name: Arc::from("chatbot"),
                period: Period::Month,
                limit: Nanos(5_000_000_000),
                requested: Nanos(30_000),
                remaining: Nanos(12_000),
                resets_at: Some(UnixMs(1_764_547_200_000)),
            }),
            BudgetScope {
                team: Arc::from("research"),
                project: Arc::from("chatbot"),
                allocation: Arc::from("chatbot-prod"),
            },
        );
        assert_eq!(failure.class().status, StatusCode::PAYMENT_REQUIRED);
        let openai: Value = serde_json::from_slice(&failure.body(Protocol::OpenAi)).unwrap();
        let anthropic: Value = serde_json::from_slice(&failure.body(Protocol::Anthropic)).unwrap();
        assert_eq!(anthropic["type"], "error");
        for inner in [&openai["error"], &anthropic["error"]] {
            assert_eq!(inner["type"], "budget_exceeded");
            assert_eq!(inner["team"], "research");
            assert_eq!(inner["project"], "chatbot");
            assert_eq!(inner["allocation"], "chatbot-prod");
            assert_eq!(inner["level"], "project");
            assert_eq!(inner["period"], "month");
            assert_eq!(inner["remaining"], "0.000012");
            assert_eq!(inner["resets_at"], "2025-12-01T00:00:00Z");
            assert!(inner["message"].as_str().unwrap().contains("chatbot"));
        }
        assert_eq!(openai["error"]["code"], "budget_exceeded");
    }

    #[test]
    fn each_rejection_has_its_own_status_and_type() {
        let cases = [
            (
                Failure::InvalidApiKey(KeyRejection::Expired),
                401,
                "invalid_api_key",
            ),
            (
                Failure::ModelNotAllowed {
                    model: "a/b".into(),
                },
                403,
                "model_not_allowed",
            ),
            (
                Failure::ModelNotPriced {
                    model: "a/b".into(),
                },
                403,
                "model_not_priced",
            ),
            (
                Failure::RateLimited {
                    scope: "key",
                    what: "requests",
                    retry_after_s: 3,
                },
                429,
                "rate_limit_exceeded",
            ),
            (
                Failure::BodyTooLarge { limit_bytes: 10 },
                413,
                "request_too_large",
            ),
            (
                Failure::BadRequest("x".into()),
                400,
                "invalid_request_error",
            ),
        ];
        for (failure, status, kind) in cases {
            assert_eq!(failure.class().status.as_u16(), status, "{failure}");
            let body: Value = serde_json::from_slice(&failure.body(Protocol::OpenAi)).unwrap();
            assert_eq!(body["error"]["type"], kind);
        }
    }

    #[test]
    fn a_guard_is_named_in_both_envelopes() {
        use tollgate_engine::guard::Guard;
        let throttled = Failure::Guarded {
            guard: Guard::LoopDetected,
            scope: "agent",
            name: "coder-7".into(),
            retry_after_s: Some(30),
        };
        assert_eq!(throttled.class().status.as_u16(), 429);
        assert_eq!(throttled.retry_after_s(), Some(30));
        let openai: Value = serde_json::from_slice(&throttled.body(Protocol::OpenAi)).unwrap();
        let anthropic: Value =
            serde_json::from_slice(&throttled.body(Protocol::Anthropic)).unwrap();
        assert_eq!(openai["error"]["type"], "loop_detected");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        for inner in [&openai["error"], &anthropic["error"]] {
            assert_eq!(
                (&inner["guard"], &inner["scope"], &inner["name"]),
                (&json!("loop_detected"), &json!("agent"), &json!("coder-7")),
                "{inner}"
            );
        }
        let blocked = Failure::Guarded {
            guard: Guard::SpendVelocityExceeded,
            scope: "allocation",
            name: "ci".into(),
            retry_after_s: None,
        };
        assert_eq!(blocked.class().status.as_u16(), 403);
        let body: Value = serde_json::from_slice(&blocked.body(Protocol::Anthropic)).unwrap();
        assert_eq!(
            (&body["error"]["type"], &body["error"]["guard"]),
            (
                &json!("permission_error"),
                &json!("spend_velocity_exceeded")
            )
        );
    }
}
