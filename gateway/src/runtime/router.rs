//! The route table: each request to its handler (a model call, the ledger, the admin API, the
//! models list, health and metrics). It sits above every handler, so none of them depends on
//! another through it.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::clock::now_ms;
use crate::control::{Control, admin};
use crate::http::error::{Failure, Protocol};
use crate::http::response::{ResponseBody, plain};
use crate::http::route::{Route, route};
use crate::metrics::Gauges;
use crate::proxy;
use crate::usage;

/// Serves one request.
pub async fn handle(control: Arc<Control>, request: Request<Incoming>) -> Response<ResponseBody> {
    let gateway = &control.gateway;
    let protocol = if request.uri().path() == "/v1/messages" {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    };
    // Refused before any handler: no key or model is known yet.
    let refuse = |failure: Failure| {
        let now = now_ms();
        let request_id = gateway.request_id(now);
        proxy::reject(
            gateway,
            None,
            protocol,
            &request_id,
            now,
            Instant::now(),
            None,
            None,
            &failure,
        )
    };
    // hyper bounds its read buffer; this is the exact, configured bound on the head.
    let limit = gateway.config.server.header_bytes_max;
    if head_bytes(&request) > limit {
        return refuse(Failure::HeadTooLarge { limit_bytes: limit });
    }
    match route(request.method(), request.uri().path()) {
        Route::Model(api) => proxy::model_call(Arc::clone(gateway), api, request).await,
        Route::Admin => admin::handle(&control, request).await,
        Route::Console => crate::console::handle(&control, request).await,
        Route::Usage(route) => {
            usage::handle(gateway, &control.ledger, &control.admin, route, request).await
        }
        Route::Health => plain(StatusCode::OK, "text/plain", "ok\n"),
        Route::Metrics => metrics(&control),
        Route::Models => proxy::models::list(gateway, request.headers()),
        unserved @ (Route::WrongMethod | Route::NotFound) => {
            let method = request.method().to_string();
            let path: String = request.uri().path().chars().take(256).collect();
            refuse(if unserved == Route::WrongMethod {
                Failure::MethodNotAllowed { method, path }
            } else {
                Failure::NotFound { method, path }
            })
        }
    }
}

/// `GET /metrics`: the counters and histograms, and the gauges read now.
fn metrics(control: &Control) -> Response<ResponseBody> {
    let gateway = &control.gateway;
    let (reservations_held, record_ids) = control.ledger.sizes();
    let gauges = Gauges {
        in_flight: (gateway.config.server.requests_in_flight_max
            - gateway.in_flight.available_permits()) as u64,
        events_queued: gateway.emitter.queued() as u64,
        events_held_back: gateway.emitter.held_back() as u64,
        reservations_held,
        record_ids,
        event_log_bytes: gateway.emitter.log_bytes(),
        budget_waiting: gateway.waiting.queued() as u64,
        key_limiters: gateway.key_limiters() as u64,
    };
    let mut text = gateway.metrics.render(gauges);
    crate::routing::render(&mut text, &gateway.providers, gateway.monotonic_us());
    crate::control::leases::render(&mut text, gateway);
    control.forecasts.render(&mut text);
    plain(StatusCode::OK, "text/plain; version=0.0.4", text)
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
