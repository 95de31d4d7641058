//! The attempts of one admitted call: place it on a deployment, send it, and when it fails
//! before anything reached the client, try again or fall back as its plan allows.
//!
//! An attempt fails over when it gets no connection, no head within the first-byte timeout, or
//! a retryable status (408, 409, 429, 5xx, 529). It is retried on the same candidate (on
//! another of its deployments when one can take it) while the plan's `retries` last and the
//! upstream's `Retry-After` is short enough, after an exponential backoff with jitter (never
//! less than the `Retry-After`); then the call falls back to the plan's next candidate the key
//! may use, the route serves and the card prices, with its hold grown first if that candidate
//! may cost more. Every attempt beyond the first takes a token of the retry budget, so an
//! outage does not multiply the traffic sent to it. Each failed attempt is a usage event of
//! its own under the call's request id (costing nothing: nothing was generated); the last
//! attempt's answer, or failure, is the client's, settled as any other. Once an answer's head
//! has been passed on, nothing is tried again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tollgate_engine::routing::{backoff_ms, retryable_status};
use tollgate_engine::{Ask, Nanos, Status, StreamBudget};

use super::meter::{Rest, Ticket, UpstreamBody};
use super::{
    Admitted, Asked, Members, Prepared, ResponseBody, prepare, priced, relay, send, usable,
    whole_answer,
};
use crate::http::error::{Failure, Protocol};
use crate::json_scan::Scanned;
use crate::limits::CONTEXT_ERROR_BYTES_MAX;
use crate::metrics::Counter;
use crate::providers::{Deployment, Provider};
use crate::routing::{Plan, Policy, Serving, Tried, available_elsewhere, place, signals};
use crate::state::Gateway;

/// Where a call stands among its candidates.
struct Route {
    plan: Plan,
    policy: Policy,
    /// The candidate being tried: its place in the plan, provider and prepared body.
    candidate: usize,
    provider: Arc<Provider>,
    upstream: Prepared,
    /// A stoppable stream's running cost, when admission held less than its bound.
    stream_budget: Option<StreamBudget>,
    /// Retries spent on this candidate.
    retries: u32,
    /// Its deployments this call has failed on.
    tried: Tried,
}

/// What the call does after an attempt failed.
enum Next {
    /// Tries the candidate again after this wait.
    Retry(Duration),
    /// Moves to the next candidate.
    FallBack,
    /// Stops: the attempt's answer, or failure, is the client's.
    Stop,
}

/// How an attempt ended, as routing sees it.
struct Verdict {
    /// Worth another attempt.
    retryable: bool,
    /// Counts against the deployment's breaker (no connection, no head in time, 5xx, 408).
    breaker_failure: bool,
    /// How long the upstream asked to be left alone.
    retry_after: Option<Duration>,
    /// The event status and HTTP status of the attempt, were it to be recorded as failed.
    status: Status,
    http_status: u16,
}

/// Sends an admitted call upstream, trying again and falling back as its plan allows, and
/// streams the last attempt's answer back through the meter.
pub(super) async fn forward(
    gateway: Arc<Gateway>,
    admitted: Admitted,
    request_id: Arc<str>,
    arrived: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    protocol: Protocol,
) -> Response<ResponseBody> {
    let Admitted {
        api,
        budget,
        bound,
        key,
        model,
        reservation,
        card,
        provider,
        upstream,
        stream_budget,
        forwarded_headers,
        request_body,
        plan,
        candidate,
        scanned,
        downgraded_from,
        prompt_prefix,
    } = admitted;
    let mut ticket = Ticket {
        gateway: Arc::clone(&gateway),
        key,
        reservation,
        bound,
        card,
        model,
        api,
        request_id,
        attempt: 1,
        deployment: Arc::clone(&provider.name),
        serving: None,
        arrived,
        sent: Instant::now(),
        request_body,
        prompt_prefix,
        http_status: 0,
        permit,
        cost_to: None,
    };
    let mut route = Route {
        policy: plan.policy(),
        plan,
        candidate,
        provider,
        upstream,
        stream_budget,
        retries: 0,
        tried: 0,
    };
    // The retry budget is a share of the calls that could be retried at all.
    if route.may_try_again(1) {
        gateway.router.retry_budget.called(gateway.monotonic_us());
    }
    loop {
        let provider = Arc::clone(&route.provider);
        let now_us = gateway.monotonic_us();
        // A draw only where there is a choice (it is a shared atomic).
        let random = if provider.deployments.len() > 1 {
            gateway.draw()
        } else {
            0
        };
        let placed = place(&provider, route.policy.balance, now_us, random, route.tried);
        let Some((index, deployment)) =
            placed.and_then(|(i, _)| Some((i, provider.deployments.get(i)?)))
        else {
            // No deployment of the candidate can take the call now: the next candidate, or
            // the call fails without having been sent.
            if route.fall_back(&gateway, &mut ticket, &scanned) {
                gateway.metrics.add(Counter::Fallbacks, 1);
                continue;
            }
            let failure = Failure::NoDeployment {
                provider: Arc::clone(&provider.name),
            };
            return ticket.fail(Status::UpstreamError, protocol, &failure);
        };
        ticket.deployment = Arc::clone(&deployment.name);
        ticket.serving = Some(Serving::start(&provider, index));
        ticket.sent = Instant::now();
        let sent = send(
            &provider,
            deployment,
            api,
            deployment.name_of(ticket.model.model()),
            route.upstream.stream,
            // The body is kept for another attempt only when there can be one.
            if route.may_try_again(ticket.attempt) {
                route.upstream.body.clone()
            } else {
                std::mem::take(&mut route.upstream.body)
            },
            &forwarded_headers,
        )
        .await;
        // A refusal that may be the model's context window is read, when a later candidate
        // declares a wider one to send the call to instead.
        let wider = route.plan.has_wider_after(route.candidate)
            && u32::from(ticket.attempt) < route.policy.attempts_max;
        let sent = match sent {
            Ok(response) if wider && response.status().is_client_error() => {
                Ok(read_whole(response, provider.config.idle_timeout).await)
            }
            Ok(response) => Ok(response.map(UpstreamBody::Live)),
            Err(failed) => Err(failed),
        };
        if let Ok(response) = &sent
            && context_window_refused(response)
            && route.widen(&gateway, &mut ticket, &scanned, response.status().as_u16())
        {
            gateway.metrics.add(Counter::Fallbacks, 1);
            continue;
        }
        let verdict = judge(&sent);
        let timed = provider.deployments.len() > 1;
        learn(
            &gateway,
            deployment,
            &verdict,
            timed.then(|| ticket.sent.elapsed()),
        );
        if verdict.retryable {
            match route.next(&gateway, &mut ticket, &verdict, &scanned, index) {
                Next::Retry(wait) => {
                    gateway.metrics.add(Counter::Retries, 1);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Next::FallBack => {
                    gateway.metrics.add(Counter::Fallbacks, 1);
                    continue;
                }
                Next::Stop => {}
            }
        }
        let response = match sent {
            Ok(response) => response,
            Err((status, failure)) => return ticket.fail(status, protocol, &failure),
        };
        let Route {
            upstream,
            stream_budget,
            ..
        } = route;
        let asked = Asked {
            stream: upstream.stream,
            include_usage: upstream.include_usage,
            hide_usage: upstream.hide_usage,
            output_cap: upstream.output_cap,
            budget,
            stream_budget,
            stoppable: upstream.stoppable,
            downgraded_from,
        };
        return answer(&provider, deployment, response, ticket, asked).await;
    }
}

/// The last attempt's answer on its way to the client: a stream as it comes, a whole answer
/// once it has arrived and its cost is known (its head carries it).
async fn answer(
    provider: &Provider,
    deployment: &Deployment,
    response: Response<UpstreamBody>,
    mut ticket: Ticket,
    asked: Asked,
) -> Response<ResponseBody> {
    if asked.stream {
        return relay(provider, deployment, response, ticket, asked)
            .map(|metered| ResponseBody::Streamed(Box::pin(metered)));
    }
    let (cost_to, cost) = oneshot::channel();
    ticket.cost_to = Some(cost_to);
    whole_answer(relay(provider, deployment, response, ticket, asked), cost).await
}

/// An answer's start read (up to `CONTEXT_ERROR_BYTES_MAX`, each piece within `idle`), for
/// routing to look at; what was read, then the rest as it comes (or how it broke), is passed
/// on as it was if the call does not fall back.
async fn read_whole(response: Response<Incoming>, idle: Duration) -> Response<UpstreamBody> {
    let (parts, mut body) = response.into_parts();
    let mut read = Vec::new();
    let rest = loop {
        if read.len() >= CONTEXT_ERROR_BYTES_MAX {
            break Rest::More(body);
        }
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout(idle, frame).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Ok(None) => break Rest::Ended,
            Ok(Some(Err(e))) => break Rest::Broke(e),
            // The metered body's own idle timeout decides about the rest.
            Err(_) => break Rest::More(body),
        }
    };
    Response::from_parts(parts, UpstreamBody::Read(Some(Bytes::from(read)), rest))
}

/// Whether a read client error is the provider's context window refusing the prompt.
fn context_window_refused(response: &Response<UpstreamBody>) -> bool {
    match response.body() {
        UpstreamBody::Read(Some(body), _) => {
            response.status().is_client_error() && signals::context_window_refused(body)
        }
        UpstreamBody::Read(None, _) | UpstreamBody::Live(_) => false,
    }
}

/// How an attempt ended, for retrying and for the deployment's health.
fn judge(sent: &Result<Response<UpstreamBody>, (Status, Failure)>) -> Verdict {
    match sent {
        Ok(response) => {
            let code = response.status().as_u16();
            Verdict {
                retryable: retryable_status(code),
                breaker_failure: code >= 500 || code == 408,
                retry_after: signals::retry_after(response.headers()),
                status: Status::UpstreamError,
                http_status: code,
            }
        }
        Err((status, failure)) => Verdict {
            retryable: true,
            breaker_failure: true,
            retry_after: None,
            status: *status,
            http_status: failure.class().status.as_u16(),
        },
    }
}

/// What an attempt teaches about its deployment: its breaker's count, its time to its answer's
/// head (`took`, timed where balancing reads it: a provider of several deployments), and a
/// `Retry-After` that came with a retryable status (no call goes to it until then).
fn learn(gateway: &Gateway, deployment: &Deployment, verdict: &Verdict, took: Option<Duration>) {
    let health = &deployment.health;
    let now_us = gateway.monotonic_us();
    if verdict.breaker_failure {
        health.breaker.failed(now_us);
    } else {
        health.breaker.succeeded();
        if !verdict.retryable
            && let Some(took) = took
        {
            health.measured(now_us, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }
    if verdict.retryable
        && let Some(wait) = verdict.retry_after
    {
        let wait_us = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
        health.wait_until(now_us.saturating_add(wait_us));
    }
}

impl Route {
    /// Whether a call at attempt `attempt` could still make another: attempts left, and a retry
    /// of its candidate or a later candidate to fall back to.
    fn may_try_again(&self, attempt: u16) -> bool {
        u32::from(attempt) < self.policy.attempts_max
            && (self.retries < self.policy.retries
                || self.plan.candidate(self.candidate + 1).is_some())
    }

    /// After a failed attempt on deployment `index`: what the plan, the attempts left and the
    /// retry budget allow. A retry or fallback records the failed attempt first.
    fn next(
        &mut self,
        gateway: &Gateway,
        ticket: &mut Ticket,
        verdict: &Verdict,
        scanned: &Scanned<11>,
        index: usize,
    ) -> Next {
        if u32::from(ticket.attempt) >= self.policy.attempts_max {
            return Next::Stop;
        }
        let routing = &gateway.config.routing;
        // Another deployment of the candidate need not wait out this one's Retry-After.
        let elsewhere = available_elsewhere(&self.provider, gateway.monotonic_us(), index);
        let wait_allowed = elsewhere
            || verdict
                .retry_after
                .is_none_or(|wait| wait <= routing.retry_after_max);
        let retry = self.retries < self.policy.retries && wait_allowed;
        let fallback = !retry && self.plan.candidate(self.candidate + 1).is_some();
        if !retry && !fallback {
            return Next::Stop;
        }
        if !gateway
            .router
            .retry_budget
            .try_retry(gateway.monotonic_us())
        {
            gateway.metrics.add(Counter::RetriesDenied, 1);
            return Next::Stop;
        }
        if retry {
            ticket.attempt_failed(verdict.status, verdict.http_status);
            self.retries += 1;
            if index < 32 {
                self.tried |= 1 << index;
            }
            let backoff = backoff_ms(
                self.retries,
                millis(routing.backoff),
                millis(routing.backoff_max),
                gateway.draw(),
            );
            let asked = if elsewhere {
                Duration::ZERO
            } else {
                verdict.retry_after.unwrap_or_default()
            };
            let wait = Duration::from_millis(backoff).max(asked);
            return Next::Retry(wait);
        }
        // Only once a later candidate can take the call is this attempt recorded as failed:
        // otherwise its answer stands, as the last attempt.
        let Some(to) = self.find(gateway, ticket, scanned, |_| true) else {
            return Next::Stop;
        };
        ticket.attempt_failed(verdict.status, verdict.http_status);
        self.switch(ticket, to);
        Next::FallBack
    }

    /// After the candidate's context window refused the call (`http_status`): records the
    /// attempt and moves to the first later candidate declaring a wider window that can take
    /// it; false, with nothing recorded, when none can.
    fn widen(
        &mut self,
        gateway: &Gateway,
        ticket: &mut Ticket,
        scanned: &Scanned<11>,
        http_status: u16,
    ) -> bool {
        let from = self.candidate;
        let Some(to) = self.find(gateway, ticket, scanned, |n| self.plan.wider(n, from)) else {
            return false;
        };
        ticket.attempt_failed(Status::BadRequest, http_status);
        self.switch(ticket, to);
        true
    }

    /// Moves the call to the plan's next candidate it can take, when no deployment of this one
    /// can take it (nothing was sent); false when none can.
    fn fall_back(&mut self, gateway: &Gateway, ticket: &mut Ticket, scanned: &Scanned<11>) -> bool {
        match self.find(gateway, ticket, scanned, |_| true) {
            Some(to) => {
                self.switch(ticket, to);
                true
            }
            None => false,
        }
    }

    /// The first later candidate `eligible` admits that the call can take: allowed, served,
    /// priced, its body prepared, and its bound held (the ticket's hold grows first when that
    /// candidate may cost more).
    fn find(
        &self,
        gateway: &Gateway,
        ticket: &mut Ticket,
        scanned: &Scanned<11>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<Switch> {
        let api = ticket.api;
        let card = Arc::clone(&ticket.card);
        let members = Members::of(scanned).ok()?;
        let body = ticket.request_body.clone();
        for n in self.candidate + 1.. {
            let model = self.plan.candidate(n)?;
            if !eligible(n) {
                continue;
            }
            let at = ticket.reservation.at();
            let Ok(usable) = usable(gateway, api, at, &ticket.key, model, &card) else {
                continue;
            };
            let Ok(upstream) = prepare(
                api,
                &body,
                scanned,
                &members,
                model,
                usable.price,
                usable.serve,
            ) else {
                continue;
            };
            let bound = priced(
                api,
                &ticket.key,
                usable.version,
                usable.price,
                &body,
                &upstream,
            )
            .cost_with(None)
            .cost_max;
            if !hold(ticket, bound) {
                continue;
            }
            return Some(Switch {
                candidate: n,
                model: usable.model,
                provider: usable.provider,
                upstream,
                bound,
            });
        }
        None
    }

    /// Puts the call on the candidate `find` found.
    fn switch(&mut self, ticket: &mut Ticket, to: Switch) {
        ticket.model = to.model;
        ticket.bound = to.bound;
        self.candidate = to.candidate;
        self.provider = to.provider;
        self.upstream = to.upstream;
        // The hold covers the candidate's whole bound: nothing to stop or cap.
        self.stream_budget = None;
        self.retries = 0;
        self.tried = 0;
    }
}

/// A later candidate the call can move to, prepared and held for.
struct Switch {
    candidate: usize,
    model: tollgate_engine::ModelRef,
    provider: Arc<Provider>,
    upstream: Prepared,
    bound: Nanos,
}

/// Whether the ticket's hold covers `bound`, growing it when a budget limits the call and it
/// does not.
fn hold(ticket: &mut Ticket, bound: Nanos) -> bool {
    match ticket.reservation.bounded_at() {
        Some(held) if held < bound => ticket
            .reservation
            .extend(Ask::exactly(Nanos(bound.0 - held.0)))
            .is_ok(),
        _ => true,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
