//! Where a request goes: the gateway's routes, and the API each model route speaks.

use http::Method;

/// The API a model route speaks (what the client sends, and what a native provider answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
}

impl Api {
    /// The label used in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }

    /// All of them, in metric order.
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];
}

/// The resource ledger's routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageRoute {
    /// `POST /v1/usage`.
    Record,
    /// `POST /v1/usage/authorize`.
    Authorize,
    /// `DELETE /v1/usage/reservations/{id}`.
    Release,
}

/// What a path and method lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A model call on one of the APIs the gateway speaks.
    Model(Api),
    /// `GET /v1/models`.
    Models,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `/admin/...`.
    Admin,
    /// `/console` and below: the web console (404 unless `[console]` is on).
    Console,
    /// `/v1/usage...`: the resource ledger.
    Usage(UsageRoute),
    /// A known path with another method.
    WrongMethod,
    /// No route has this path (404 in the route's error envelope).
    NotFound,
}

/// Routes a request.
#[must_use]
pub fn route(method: &Method, path: &str) -> Route {
    let api = match path {
        "/v1/chat/completions" | "/chat/completions" => Some(Api::ChatCompletions),
        "/v1/completions" | "/completions" => Some(Api::Completions),
        "/v1/embeddings" | "/embeddings" => Some(Api::Embeddings),
        "/v1/responses" | "/responses" => Some(Api::Responses),
        "/v1/messages" => Some(Api::Messages),
        _ => None,
    };
    let usage = match path {
        "/v1/usage" => Some((UsageRoute::Record, Method::POST)),
        "/v1/usage/authorize" => Some((UsageRoute::Authorize, Method::POST)),
        _ if path.starts_with("/v1/usage/reservations/") => {
            Some((UsageRoute::Release, Method::DELETE))
        }
        _ => None,
    };
    if let Some((usage, wanted)) = usage {
        return if *method == wanted {
            Route::Usage(usage)
        } else {
            Route::WrongMethod
        };
    }
    match (api, method) {
        (Some(api), &Method::POST) => Route::Model(api),
        (Some(_), _) => Route::WrongMethod,
        (None, _) if path.starts_with("/admin/") => Route::Admin,
        (None, _) if path == "/console" || path.starts_with("/console/") => Route::Console,
        (None, &Method::GET) => match path {
            "/v1/models" | "/models" => Route::Models,
            "/healthz" => Route::Health,
            "/metrics" => Route::Metrics,
            _ => Route::NotFound,
        },
        (None, _) if matches!(path, "/v1/models" | "/models" | "/healthz" | "/metrics") => {
            Route::WrongMethod
        }
        (None, _) => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions"),
            Route::Model(Api::ChatCompletions)
        );
        assert_eq!(
            route(&Method::POST, "/chat/completions"),
            Route::Model(Api::ChatCompletions)
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages"),
            Route::Model(Api::Messages)
        );
        assert_eq!(route(&Method::GET, "/v1/messages"), Route::WrongMethod);
        assert_eq!(route(&Method::GET, "/v1/models"), Route::Models);
        assert_eq!(route(&Method::DELETE, "/metrics"), Route::WrongMethod);
        assert_eq!(route(&Method::GET, "/admin/v1/keys"), Route::Admin);
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/console"), Route::Console);
        assert_eq!(route(&Method::POST, "/console/session"), Route::Console);
        assert_eq!(route(&Method::GET, "/consoles"), Route::NotFound);
        assert_eq!(
            route(&Method::POST, "/v1/usage"),
            Route::Usage(UsageRoute::Record)
        );
        assert_eq!(
            route(&Method::POST, "/v1/usage/authorize"),
            Route::Usage(UsageRoute::Authorize)
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/usage/reservations/rsv_1"),
            Route::Usage(UsageRoute::Release)
        );
        assert_eq!(route(&Method::GET, "/v1/usage"), Route::WrongMethod);
    }
}
