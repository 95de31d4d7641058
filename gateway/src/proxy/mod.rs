//! The request path: explicit phases around one per-request context.
//!
//! authenticate -> read and parse the body -> resolve the model -> authorize it -> price it ->
//! rate-limit -> reserve budget -> route -> proxy and meter -> settle -> emit.
//! Every phase before proxying returns a [`Failure`]; [`model_call`] turns one into the error
//! response of the route's protocol and a usage event. After admission the [`Ticket`] owns the
//! call, and [`crate::proxy::meter`] settles and records it however the answer ends.

pub mod json_scan;
pub mod meter;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tollgate_engine::estimate::{RequestShape, estimate};
use tollgate_engine::{ModelRef, Status, UnixMs, VirtualKey, reserve};

use self::json_scan::Member;
use crate::clock::now_ms;
use crate::config::ProviderKind;
use crate::http::error::{BudgetScope, Failure, Protocol};
use crate::metrics::{Counter, Gauges};
use crate::providers::anthropic::StreamTranslator;
use crate::providers::client::SliceBody;
use crate::providers::wire::Api;
use crate::proxy::meter::{Measured, Metered, ResponseBody, Ticket, Translate, refusal_event};
use crate::state::Gateway;

/// What a path and method lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A model call.
    Model(Api),
    /// `GET /v1/models`.
    Models,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `/admin/...`.
    Admin,
    /// `/v1/usage...`: the resource ledger.
    Usage(crate::usage::UsageRoute),
    /// A known path with another method.
    WrongMethod,
    /// Nothing here.
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
        "/v1/usage" => Some((crate::usage::UsageRoute::Record, Method::POST)),
        "/v1/usage/authorize" => Some((crate::usage::UsageRoute::Authorize, Method::POST)),
        _ if path.starts_with("/v1/usage/reservations/") => {
            Some((crate::usage::UsageRoute::Release, Method::DELETE))
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

/// Serves one request.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<ResponseBody> {
    let protocol = if request.uri().path() == "/v1/messages" {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    };
    // hyper bounds its read buffer; this is the exact, configured bound on the head.
    let limit = gateway.config.server.header_bytes_max;
    if head_bytes(&request) > limit {
        let now = now_ms();
        let request_id = gateway.request_id(now);
        let failure = Failure::HeadTooLarge { limit_bytes: limit };
        return reject(
            &gateway,
            protocol,
            &request_id,
            now,
            Instant::now(),
            None,
            None,
            &failure,
        );
    }
    match route(request.method(), request.uri().path()) {
        Route::Model(api) => model_call(gateway, api, request).await,
        Route::Admin => crate::control::admin::handle(gateway, request).await,
        Route::Usage(usage) => crate::usage::handle(gateway, usage, request).await,
        Route::Health => plain(StatusCode::OK, "text/plain", "ok\n"),
        Route::Metrics => {
            let (reservations_held, record_ids) = gateway.ledger.sizes();
            let gauges = Gauges {
                in_flight: (gateway.config.server.requests_in_flight_max
                    - gateway.in_flight.available_permits()) as u64,
                events_queued: gateway.emitter.queued() as u64,
                reservations_held,
                record_ids,
                event_log_bytes: gateway.emitter.log_bytes(),
            };
            plain(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                gateway.metrics.render(gauges),
            )
        }
        Route::Models => list_models(&gateway, request.headers()),
        Route::WrongMethod | Route::NotFound => {
            let method = request.method().to_string();
            let path: String = request.uri().path().chars().take(256).collect();
            let failure = if route(request.method(), request.uri().path()) == Route::WrongMethod {
                Failure::MethodNotAllowed { method, path }
            } else {
                Failure::NotFound { method, path }
            };
            let now = now_ms();
            let request_id = gateway.request_id(now);
            reject(
                &gateway,
                protocol,
                &request_id,
                now,
                Instant::now(),
                None,
                None,
                &failure,
            )
        }
    }
}

/// The size of a request's head as it came on the wire, near enough (name, value, separators).
fn head_bytes<B>(request: &Request<B>) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + target
        + 16
}

fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The error response for `failure`, with its usage event.
#[expect(
    clippy::too_many_arguments,
    reason = "the facts known about a refused call"
)]
fn reject(
    gateway: &Gateway,
    protocol: Protocol,
    request_id: &Arc<str>,
    now: UnixMs,
    arrived: Instant,
    key: Option<&VirtualKey>,
    model: Option<&ModelRef>,
    failure: &Failure,
) -> Response<ResponseBody> {
    let class = failure.class();
    gateway.metrics.request(None, class.event_status);
    gateway.emitter.usage(&refusal_event(
        gateway,
        now,
        Arc::clone(request_id),
        key,
        model,
        class.event_status,
        class.status.as_u16(),
        arrived.elapsed(),
    ));
    error_response(protocol, request_id, failure)
}

/// The error response for `failure`, without an event (admin routes, shed load).
#[must_use]
pub fn error_response(
    protocol: Protocol,
    request_id: &str,
    failure: &Failure,
) -> Response<ResponseBody> {
    let class = failure.class();
    let mut response = plain(class.status, "application/json", failure.body(protocol));
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    if let Some(seconds) = failure.retry_after_s() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The presented key: `Authorization: Bearer ...` (OpenAI) or `x-api-key` (Anthropic).
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, key) = text.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// One model call, admitted or refused.
async fn model_call(
    gateway: Arc<Gateway>,
    api: Api,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let arrived = Instant::now();
    let now = now_ms();
    let request_id = gateway.request_id(now);
    let protocol = if api == Api::Messages {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    };
    // Shed before anything else: past these limits no event is promised room.
    let Ok(permit) = Arc::clone(&gateway.in_flight).try_acquire_owned() else {
        gateway.metrics.add(Counter::Shed, 1);
        return error_response(
            protocol,
            &request_id,
            &Failure::Overloaded("too many requests in flight"),
        );
    };
    if let Some(reason) = gateway.emitter.refusal() {
        gateway.metrics.add(Counter::Shed, 1);
        return error_response(protocol, &request_id, &Failure::Overloaded(reason));
    }
    let mut call = Call {
        gateway: &gateway,
        api,
        now,
        key: None,
        model: None,
    };
    let admitted = match call.admit(request).await {
        Ok(admitted) => admitted,
        Err(failure) => {
            let (key, model) = (call.key.clone(), call.model.clone());
            return reject(
                &gateway,
                protocol,
                &request_id,
                now,
                arrived,
                key.as_deref(),
                model.as_ref(),
                &failure,
            );
        }
    };
    forward(
        Arc::clone(&gateway),
        admitted,
        request_id,
        arrived,
        permit,
        protocol,
    )
    .await
}

/// The per-request context of the admission phases.
struct Call<'g> {
    gateway: &'g Gateway,
    api: Api,
    now: UnixMs,
    key: Option<Arc<VirtualKey>>,
    model: Option<ModelRef>,
}

/// A call that passed every check and holds its budget.
struct Admitted {
    api: Api,
    bound: tollgate_engine::Nanos,
    /// Set when the client's API is translated to the provider's (OpenAI chat to Anthropic).
    translation: Option<Translation>,
    key: Arc<VirtualKey>,
    model: ModelRef,
    reservation: tollgate_engine::Reservation,
    card: Arc<tollgate_engine::RateCard>,
    upstream: Arc<crate::providers::client::Upstream>,
    upstream_body: SliceBody,
    forwarded_headers: HeaderMap,
    request_body: Bytes,
    stream: bool,
    hide_usage: bool,
}

/// A call translated from OpenAI chat completions to the provider's own API.
#[derive(Clone, Copy, Debug)]
struct Translation {
    /// The provider's API.
    target: Api,
    /// The client asked for the usage chunk at the end of a stream.
    include_usage: bool,
}

/// Members of a request body the gateway reads.
pub const WANTED: [&str; 7] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
];

impl Call<'_> {
    async fn admit(&mut self, request: Request<Incoming>) -> Result<Admitted, Failure> {
        let gateway = self.gateway;
        // 1. Authenticate.
        let key = {
            let presented = presented_key(request.headers()).unwrap_or_default();
            gateway
                .keys
                .resolve(presented, self.now)
                .map_err(Failure::InvalidApiKey)?
        };
        self.key = Some(Arc::clone(&key));

        // 2. Read the body, capped in size and time, and find the members the gateway reads.
        let (parts, body) = request.into_parts();
        let body = read_body(gateway, &parts.headers, body).await?;
        let scanned =
            json_scan::scan(&body, WANTED).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let [
            model_member,
            stream,
            stream_options,
            max_tokens,
            max_completion_tokens,
            max_output_tokens,
            n,
        ] = &scanned.members;
        let Some(model_member) = model_member else {
            return Err(Failure::BadRequest("request body has no `model`".into()));
        };
        let asked: String = json_scan::read(&body, model_member)
            .ok_or_else(|| Failure::BadRequest("`model` must be a string".into()))?;

        // 3. Resolve the model: an alias or `provider/model` with a configured provider.
        let model = match gateway.aliases.get(&asked) {
            Some(target) => target.clone(),
            None => ModelRef::parse(&asked).map_err(|_| Failure::ModelNotFound {
                model: asked.clone(),
            })?,
        };
        let upstream =
            gateway
                .upstreams
                .get(model.provider())
                .ok_or_else(|| Failure::ModelNotFound {
                    model: asked.clone(),
                })?;
        self.model = Some(model.clone());
        // 4. Authorize: the key's and the allocation's allow-lists.
        key.check_model(&model)
            .map_err(|_| Failure::ModelNotAllowed {
                model: model.to_string(),
            })?;

        // The provider must speak the route's API, or be translated to (OpenAI chat
        // completions in front of Anthropic and Bedrock).
        let translate_to = match (upstream.config.kind, self.api) {
            (ProviderKind::Anthropic, Api::ChatCompletions) => Some(Api::Messages),
            (ProviderKind::Bedrock, Api::ChatCompletions) => Some(Api::Converse),
            (ProviderKind::Openai, Api::Messages) if upstream.config.anthropic_messages => None,
            (ProviderKind::Anthropic, Api::Messages)
            | (
                ProviderKind::Openai | ProviderKind::Azure,
                Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses,
            ) => None,
            (ProviderKind::Bedrock, _) => {
                return Err(Failure::BadRequest(format!(
                    "provider `{}` is Bedrock's Converse API: call it on /v1/chat/completions",
                    model.provider()
                )));
            }
            (_, Api::Converse) => {
                return Err(Failure::Internal("Converse is not a route".into()));
            }
            (ProviderKind::Anthropic, _) => {
                return Err(Failure::BadRequest(format!(
                    "provider `{}` speaks Anthropic's Messages API: call it on /v1/messages or /v1/chat/completions",
                    model.provider()
                )));
            }
            (ProviderKind::Openai | ProviderKind::Azure, Api::Messages) => {
                return Err(Failure::BadRequest(format!(
                    "provider `{}` speaks the OpenAI API: call it on /v1/chat/completions",
                    model.provider()
                )));
            }
        };

        // 5. Price: a model without a price is refused, never metered as free.
        let card = gateway.card.load_full();
        let version = card.at(self.now).ok_or_else(|| Failure::ModelNotPriced {
            model: model.to_string(),
        })?;
        let price = version
            .model(model.as_str())
            .ok_or_else(|| Failure::ModelNotPriced {
                model: model.to_string(),
            })?;

        // 6. Rate limits: requests are taken now, tokens were charged by earlier calls.
        self.rate_limit(&key)?;

        // 7. Reserve the most the call can cost, at allocation, project and team.
        let read_u64 =
            |m: &Option<Member>| m.as_ref().and_then(|m| json_scan::read::<u64>(&body, m));
        let choices = read_u64(n).unwrap_or(1).max(1);
        let max_output = read_u64(max_completion_tokens)
            .or_else(|| read_u64(max_tokens))
            .or_else(|| read_u64(max_output_tokens))
            .map(|t| t.saturating_mul(choices));
        let allocation = &key.allocation;
        let adjustment =
            version.adjustment(&allocation.project.team.name, &allocation.project.name);
        let shape = RequestShape {
            body_bytes: body.len() as u64,
            extra_input_tokens: 0,
            max_output_tokens: if self.api == Api::Embeddings {
                Some(0)
            } else {
                max_output
            },
        };
        let bound = estimate(price, adjustment, shape);
        let reservation = reserve(allocation, self.now, bound.cost_max).map_err(|exhausted| {
            Failure::BudgetExceeded(
                exhausted,
                BudgetScope {
                    team: Arc::clone(&allocation.project.team.name),
                    project: Arc::clone(&allocation.project.name),
                    allocation: Arc::clone(&allocation.name),
                },
            )
        })?;

        // 8. Route: the upstream's own model name, and usage asked for in OpenAI streams.
        let stream = stream
            .as_ref()
            .and_then(|m| json_scan::read::<bool>(&body, m))
            .unwrap_or(false);
        let asks_usage = stream_options
            .as_ref()
            .and_then(|m| json_scan::read::<serde_json::Value>(&body, m))
            .and_then(|v| v.get("include_usage")?.as_bool())
            .unwrap_or(false);
        let needs_usage_option = stream
            && !asks_usage
            && translate_to.is_none()
            && matches!(self.api, Api::ChatCompletions | Api::Completions);
        let chunks = if let Some(target) = translate_to {
            let translated = match target {
                Api::Converse => {
                    crate::providers::bedrock::chat_to_converse(&body, price.max_output_tokens)
                }
                _ => crate::providers::anthropic::chat_to_messages(
                    &body,
                    model.model(),
                    price.max_output_tokens,
                ),
            }
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
            vec![Bytes::from(translated)]
        } else {
            let model_value = Bytes::from(
                serde_json::to_vec(model.model()).map_err(|e| Failure::Internal(e.to_string()))?,
            );
            let mut edits = vec![(model_member.value.clone(), model_value)];
            if needs_usage_option {
                let usage_option = match stream_options {
                    // Replace the client's options with ones that ask for usage.
                    Some(options) => (
                        options.value.clone(),
                        Bytes::from_static(br#"{"include_usage":true}"#),
                    ),
                    None => (
                        scanned.close..scanned.close,
                        Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
                    ),
                };
                edits.push(usage_option);
            }
            splice(&body, &mut edits)
        };
        Ok(Admitted {
            api: self.api,
            bound: bound.cost_max,
            translation: translate_to.map(|target| Translation {
                target,
                include_usage: asks_usage,
            }),
            key,
            model,
            reservation,
            card,
            upstream: Arc::clone(upstream),
            upstream_body: SliceBody::new(chunks),
            forwarded_headers: parts.headers,
            request_body: body,
            stream,
            hide_usage: needs_usage_option,
        })
    }

    fn rate_limit(&self, key: &VirtualKey) -> Result<(), Failure> {
        let gateway = self.gateway;
        let now_us = gateway.monotonic_us();
        let limited = |scope, what, wait: tollgate_engine::RetryAfter| Failure::RateLimited {
            scope,
            what,
            retry_after_s: wait.seconds(),
        };
        let key_rates = gateway.key_rates(key);
        let team_rates = gateway.team_rates(&key.allocation.project.team.name);
        if let Some(rates) = &key_rates
            && let Some(tokens) = &rates.tokens
        {
            tokens
                .check(now_us)
                .map_err(|w| limited("key", "tokens", w))?;
        }
        if let Some(rates) = team_rates
            && let Some(tokens) = &rates.tokens
        {
            tokens
                .check(now_us)
                .map_err(|w| limited("team", "tokens", w))?;
        }
        if let Some(rates) = &key_rates
            && let Some(requests) = &rates.requests
        {
            requests
                .take(now_us, 1)
                .map_err(|w| limited("key", "requests", w))?;
        }
        if let Some(rates) = team_rates
            && let Some(requests) = &rates.requests
        {
            requests
                .take(now_us, 1)
                .map_err(|w| limited("team", "requests", w))?;
        }
        Ok(())
    }
}

async fn read_body(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Failure> {
    let limit = gateway.config.server.body_bytes_max;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::BodyTooLarge { limit_bytes: limit });
    }
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(gateway.config.server.body_timeout, collect).await {
        Err(_) => Err(Failure::BadRequest(format!(
            "request body not received within {} ms",
            gateway.config.server.body_timeout.as_millis()
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Failure::BodyTooLarge { limit_bytes: limit })
        }
        Ok(Err(e)) => Err(Failure::BadRequest(format!(
            "reading the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Sends an admitted call upstream and streams the answer back through the meter.
async fn forward(
    gateway: Arc<Gateway>,
    admitted: Admitted,
    request_id: Arc<str>,
    arrived: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    protocol: Protocol,
) -> Response<ResponseBody> {
    let Admitted {
        api,
        bound,
        translation,
        key,
        model,
        reservation,
        card,
        upstream,
        upstream_body,
        forwarded_headers,
        request_body,
        stream,
        hide_usage,
    } = admitted;
    let mut ticket = Ticket {
        gateway: Arc::clone(&gateway),
        key,
        reservation,
        bound,
        card,
        model,
        api,
        request_id: Arc::clone(&request_id),
        attempt: 1,
        arrived,
        sent: Instant::now(),
        request_body,
        http_status: 0,
        permit,
    };
    let wire_api = translation.map_or(api, |t| t.target);
    let path = upstream.path(wire_api, ticket.model.model(), stream);
    let request = match upstream.request(&path, upstream_body, &forwarded_headers, now_ms()) {
        Ok(r) => r,
        Err(e) => {
            let failure = Failure::Internal(format!("building the upstream request: {e}"));
            ticket.http_status = failure.class().status.as_u16();
            ticket.finish(Status::InternalError, Measured::Nothing, None);
            return error_response(protocol, &request_id, &failure);
        }
    };
    let timeout = upstream.config.first_byte_timeout;
    let sent = tokio::time::timeout(timeout, upstream.send(request)).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let failure = Failure::UpstreamUnavailable {
                provider: Arc::clone(upstream.name()),
                reason: error_chain(&e),
            };
            ticket.http_status = failure.class().status.as_u16();
            ticket.finish(Status::UpstreamError, Measured::Nothing, None);
            return error_response(protocol, &request_id, &failure);
        }
        Err(_) => {
            let failure = Failure::UpstreamTimeout {
                provider: Arc::clone(upstream.name()),
                timeout_ms: timeout.as_millis(),
            };
            ticket.http_status = failure.class().status.as_u16();
            // The upstream may have started work; the prompt was sent, so it is billed.
            ticket.finish(Status::UpstreamTimeout, Measured::Nothing, None);
            return error_response(protocol, &request_id, &failure);
        }
    };
    let (parts, body) = response.into_parts();
    ticket.http_status = parts.status.as_u16();
    let success = parts.status.is_success();
    let mut out = Response::builder().status(parts.status);
    if let Some(headers) = out.headers_mut() {
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, id);
        }
        if success
            && !stream
            && translation.is_none()
            && let Some(length) = parts.headers.get(header::CONTENT_LENGTH)
        {
            headers.insert(header::CONTENT_LENGTH, length.clone());
        }
    }
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let idle = upstream.config.idle_timeout;
    let client_model = ticket.model.to_string();
    let mut body = if success {
        Metered::new(body, ticket, is_sse, hide_usage && is_sse, idle)
    } else {
        // An error answer: forwarded as the provider wrote it; nothing was generated.
        Metered::error_answer(body, ticket, idle)
    };
    if let Some(translation) = translation {
        let created_s = now_ms().0 / 1000;
        let streamed = success && stream;
        let translate = match (translation.target, streamed) {
            (Api::Converse, true) => Translate::BedrockStream(Box::new(
                crate::providers::bedrock::StreamTranslator::new(
                    &client_model,
                    created_s,
                    translation.include_usage,
                    crate::limits::STREAM_TEXT_BYTES_MAX,
                ),
            )),
            (_, true) => Translate::Stream(Box::new(StreamTranslator::new(
                &client_model,
                created_s,
                translation.include_usage,
            ))),
            (target, false) => Translate::Whole {
                model: client_model,
                target,
                error_type: parts
                    .headers
                    .get("x-amzn-errortype")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            },
        };
        body = body.translated(translation.target, translate);
        if let Some(headers) = out.headers_mut() {
            let content_type = if streamed {
                "text/event-stream"
            } else {
                "application/json"
            };
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
    }
    out.body(ResponseBody::Metered(Box::new(body)))
        .unwrap_or_else(|e| {
            error_response(protocol, &request_id, &Failure::Internal(e.to_string()))
        })
}

/// The body with each `(span, replacement)` applied; spans must not overlap. The untouched
/// parts are slices of `body`, not copies.
fn splice(body: &Bytes, edits: &mut [(std::ops::Range<usize>, Bytes)]) -> Vec<Bytes> {
    edits.sort_by_key(|(span, _)| span.start);
    let mut chunks = Vec::with_capacity(edits.len() * 2 + 1);
    let mut at = 0;
    for (span, replacement) in edits.iter() {
        chunks.push(body.slice(at..span.start.max(at)));
        chunks.push(replacement.clone());
        at = span.end.max(at);
    }
    chunks.push(body.slice(at..));
    chunks
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `GET /v1/models`: the priced models of configured providers that the caller's key may use.
fn list_models(gateway: &Gateway, headers: &HeaderMap) -> Response<ResponseBody> {
    let now = now_ms();
    let key = match gateway
        .keys
        .resolve(presented_key(headers).unwrap_or_default(), now)
    {
        Ok(key) => key,
        Err(rejection) => {
            let request_id = gateway.request_id(now);
            return reject(
                gateway,
                Protocol::OpenAi,
                &request_id,
                now,
                Instant::now(),
                None,
                None,
                &Failure::InvalidApiKey(rejection),
            );
        }
    };
    let card = gateway.card.load();
    let mut data = Vec::new();
    if let Some(version) = card.at(now) {
        for price in version.models() {
            if gateway.upstreams.contains_key(price.model.provider())
                && key.check_model(&price.model).is_ok()
            {
                data.push(serde_json::json!({
                    "id": price.model.as_str(),
                    "object": "model",
                    "created": version.effective_from.0 / 1000,
                    "owned_by": price.model.provider(),
                }));
            }
        }
    }
    let body = serde_json::json!({ "object": "list", "data": data });
    plain(StatusCode::OK, "application/json", body.to_string())
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
        use crate::usage::UsageRoute;
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

    #[test]
    fn splices_in_order_without_copying_the_rest() {
        let body = Bytes::from_static(b"{\"stream_options\":{},\"model\":\"a/b\"}");
        let text = std::str::from_utf8(&body).unwrap();
        let model = text.find("\"a/b\"").unwrap();
        let options = text.find("{}").unwrap();
        let mut edits = vec![
            (model..model + 5, Bytes::from_static(b"\"b\"")),
            (
                options..options + 2,
                Bytes::from_static(b"{\"include_usage\":true}"),
            ),
        ];
        let joined: Vec<u8> = splice(&body, &mut edits).concat();
        assert_eq!(
            std::str::from_utf8(&joined).unwrap(),
            "{\"stream_options\":{\"include_usage\":true},\"model\":\"b\"}"
        );
    }

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tg_abc"),
        );
        assert_eq!(presented_key(&headers), Some("tg_abc"));
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("tg_def"));
        assert_eq!(presented_key(&headers), Some("tg_def"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(presented_key(&headers), None);
    }
}
