//! The request path of a model call: explicit phases around one per-request context.
//!
//! shed -> authenticate -> read the body -> plan the candidates (a group, an alias, a
//! `provider/model`) -> take the first the key may use, its provider serves on the route and the
//! card prices -> prepare the upstream body -> rate-limit -> reserve budget -> place, forward
//! (trying again and falling back as the plan allows), meter, settle, emit.
//!
//! Everything that can fail on the request's own content (its body, its model, a translation)
//! runs before a rate-limit token is taken or budget is held, so a malformed call costs its
//! caller nothing. Every phase before forwarding returns a [`Failure`]; [`model_call`] turns one
//! into the route's error envelope and a usage event. After admission the [`Ticket`] owns the
//! call, and [`meter`] settles and records it however the answer ends.

mod attempt;
pub mod meter;
pub mod models;

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tollgate_engine::estimate::{Estimate, RequestShape, estimate, output_tokens_within};
use tollgate_engine::lease::{LeaseCell, RateSlice, Short};
use tollgate_engine::{
    Ask, BudgetSnapshot, KeyRejection, Level, ModelPrice, ModelRef, PromptPrefix, RateCard,
    RateVersion, Refused, Reservation, Status, StreamBudget, Tight, UnixMs, VirtualKey,
    reserve_within,
};

use self::meter::{Measured, Metered, Metering, Ticket, refusal_event};
use crate::admission::NotAdmitted;
use crate::clock::now_ms;
use crate::http::auth::presented_key;
use crate::http::body::{self, BodyLimits};
use crate::http::error::{BudgetScope, Failure, Protocol};
use crate::http::response::{BodyError, REQUEST_ID, ResponseBody, error_response};
use crate::http::route::Api;
use crate::json_scan::{self, Member, Scanned};
use crate::limits::{RATE_SLICE_POLL, RESPONSE_METER_BYTES_MAX};
use crate::metrics::{Counter, Unauthenticated};
use crate::providers::read::Pricer;
use crate::providers::{Answer, Deployment, Provider, Serve, SliceBody, stops_streams};
use crate::routing::Plan;
use crate::state::{Gateway, Rates, SharedRate};

/// The error response for `failure`, with its usage event when a valid key is known. A call
/// that named no valid key (or was refused before one was read) is counted by route and reason
/// and told the operator in a sampled line, but is not a usage event: a flood of made-up keys
/// must not fill the event log.
#[expect(
    clippy::too_many_arguments,
    reason = "the facts known about a refused call"
)]
pub fn reject(
    gateway: &Gateway,
    api: Option<Api>,
    protocol: Protocol,
    request_id: &Arc<str>,
    now: UnixMs,
    arrived: Instant,
    key: Option<&VirtualKey>,
    model: Option<&ModelRef>,
    failure: &Failure,
) -> Response<ResponseBody> {
    let class = failure.class();
    gateway.metrics.request(api, class.event_status);
    let Some(key) = key else {
        let reason = match failure {
            Failure::InvalidApiKey(KeyRejection::Missing) => Unauthenticated::Missing,
            Failure::InvalidApiKey(KeyRejection::Unknown) => Unauthenticated::Unknown,
            Failure::InvalidApiKey(KeyRejection::Expired) => Unauthenticated::Expired,
            Failure::InvalidApiKey(KeyRejection::Revoked) => Unauthenticated::Revoked,
            _ => Unauthenticated::BeforeKey,
        };
        gateway.metrics.unauthenticated(api, reason);
        gateway.unauthenticated.note(now.0, |count| {
            let route = api.map_or("another route", Api::as_str);
            format!(
                "{count} calls refused without a valid key since the last report \
                 (the latest: {route}, {}, status {})",
                reason.as_str(),
                class.status.as_u16()
            )
        });
        return error_response(protocol, request_id, failure);
    };
    gateway.emitter.usage(&refusal_event(
        gateway,
        now,
        Arc::clone(request_id),
        Some(key),
        model,
        class.event_status,
        class.status.as_u16(),
        arrived.elapsed(),
    ));
    error_response(protocol, request_id, failure)
}

/// One model call, admitted or refused.
pub async fn model_call(
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
                Some(api),
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
    attempt::forward(
        Arc::clone(&gateway),
        admitted,
        request_id,
        arrived,
        permit,
        protocol,
    )
    .await
}

/// The per-request context of the admission phases: what is known so far, for the refusal's
/// event.
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
    /// Where the caller's budget stands once this call is held: its tightest level.
    budget: Option<(Level, BudgetSnapshot)>,
    bound: tollgate_engine::Nanos,
    key: Arc<VirtualKey>,
    model: ModelRef,
    reservation: Reservation,
    card: Arc<RateCard>,
    provider: Arc<Provider>,
    upstream: Prepared,
    /// A stream admitted short of its bound: its running cost, kept under its hold.
    stream_budget: Option<StreamBudget>,
    forwarded_headers: HeaderMap,
    request_body: Bytes,
    /// The candidates the call may try, and which of them admission took (`model`).
    plan: Plan,
    candidate: usize,
    /// Where the members of the body are, to prepare it for another candidate.
    scanned: Scanned<11>,
    /// The model or group the client named, when a downgrade serves it with another.
    downgraded_from: Option<Arc<str>>,
    /// What the prompt begins with, for its usage events.
    prompt_prefix: Option<PromptPrefix>,
}

/// Members of a request body the gateway reads: found in one pass over the body, their
/// values' spans kept (the prompt's, for the loop guard and the prompt prefix, are never
/// read as text).
pub const WANTED: [&str; 11] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "system",
    "messages",
    "input",
    "prompt",
];

/// The members of [`WANTED`], by name.
struct Members<'s> {
    model: &'s Member,
    stream: Option<&'s Member>,
    stream_options: Option<&'s Member>,
    max_tokens: Option<&'s Member>,
    max_completion_tokens: Option<&'s Member>,
    max_output_tokens: Option<&'s Member>,
    n: Option<&'s Member>,
    /// Anthropic's system prompt.
    system: Option<&'s Member>,
    /// The conversation or prompt: the first of `messages`, `input` and `prompt`.
    context: Option<&'s Member>,
}

impl<'s> Members<'s> {
    fn of(scanned: &'s Scanned<11>) -> Result<Members<'s>, Failure> {
        let [
            model,
            stream,
            stream_options,
            max_tokens,
            max_completion_tokens,
            max_output_tokens,
            n,
            system,
            messages,
            input,
            prompt,
        ] = &scanned.members;
        let model = model
            .as_ref()
            .ok_or_else(|| Failure::BadRequest("request body has no `model`".into()))?;
        Ok(Members {
            model,
            stream: stream.as_ref(),
            stream_options: stream_options.as_ref(),
            max_tokens: max_tokens.as_ref(),
            max_completion_tokens: max_completion_tokens.as_ref(),
            max_output_tokens: max_output_tokens.as_ref(),
            n: n.as_ref(),
            system: system.as_ref(),
            context: messages.as_ref().or(input.as_ref()).or(prompt.as_ref()),
        })
    }
}

/// The upstream request, ready to send: its body and what the answer's reader needs.
struct Prepared {
    body: SliceBody,
    stream: bool,
    /// The client asked for the usage chunk of a stream.
    include_usage: bool,
    /// The gateway asked for usage the client did not.
    hide_usage: bool,
    /// The most the answer can produce, for the reservation.
    output_tokens_max: Option<u64>,
    /// Choices asked for (`n`, at least 1): a cap on completion tokens applies to each.
    choices: u64,
    /// The completion tokens per choice the body was capped at, when only part of the call's
    /// bound could be held (told to the client in a header).
    output_cap: Option<u64>,
    /// A stream the gateway can end mid-way ([`crate::providers::stops_streams`]): admitted
    /// with what there is room for, it is stopped when its hold cannot grow, not capped.
    stoppable: bool,
}

/// What admission held for a call.
struct Held {
    reservation: Reservation,
    /// The call's bound: what it could cost uncapped.
    bound: Estimate,
    /// Completion tokens per choice the call is capped at, when the hold is short of the bound.
    output_cap: Option<u64>,
    /// A stoppable stream's running cost, when the hold is short of the bound.
    budget: Option<StreamBudget>,
}

/// A call's price and shape, for bounding what it can cost.
struct Priced<'p> {
    price: &'p ModelPrice,
    adjustment: tollgate_engine::Adjustment,
    shape: RequestShape,
}

impl Priced<'_> {
    /// The call's bound with its completion tokens capped at `output_tokens` (its own cap, or
    /// the model's, when `None`).
    fn cost_with(&self, output_tokens: Option<u64>) -> Estimate {
        let shape = match output_tokens {
            Some(tokens) => RequestShape {
                max_output_tokens: Some(tokens),
                ..self.shape
            },
            None => self.shape,
        };
        estimate(self.price, self.adjustment, shape)
    }
}

/// The refusal of a call its allocation's budget did not admit: spent (402) or busy (429).
fn not_admitted(allocation: &tollgate_engine::Allocation, refusal: NotAdmitted) -> Failure {
    let scope = BudgetScope {
        team: Arc::clone(&allocation.project.team.name),
        project: Arc::clone(&allocation.project.name),
        allocation: Arc::clone(&allocation.name),
    };
    match refusal {
        NotAdmitted::Spent(at) => Failure::BudgetExceeded(at, scope),
        NotAdmitted::Busy { at, .. } => Failure::BudgetBusy(at, scope, 1),
    }
}

impl Call<'_> {
    async fn admit(&mut self, request: Request<Incoming>) -> Result<Admitted, Failure> {
        let key = self.authenticate(request.headers())?;
        let (parts, body) = request.into_parts();
        let body = self.read(&parts.headers, body).await?;
        let scanned =
            json_scan::scan(&body, WANTED).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let members = Members::of(&scanned)?;
        let (asked, mut plan) = self.plan(&body, members.model)?;
        let gateway = self.gateway;
        let context = members.context.map(|m| m.value.clone());
        let prompt_prefix = gateway.prefixes.of(
            &body,
            members.system.map(|m| m.value.clone()),
            context.clone(),
        );
        let router = &gateway.router;
        // Past a level's downgrade threshold, calls go to its cheaper group.
        let mut downgraded_from: Option<Arc<str>> = None;
        if let Some(to) = router.downgrade_at(&key.allocation, self.now)
            && plan.group() != Some(to)
            && let Some(cheaper) = router.group_plan(to, gateway.draw())
        {
            downgraded_from = Some(Arc::from(asked.as_str()));
            plan = cheaper;
        }
        let card = gateway.card.load_full();
        let mut limited = false;
        let (candidate, model, provider, serve, price, mut upstream, held) = loop {
            let (candidate, usable) = self.first_usable(&key, &plan, &card)?;
            let Usable {
                model,
                provider,
                serve,
                version,
                price,
            } = usable;
            let upstream = prepare(self.api, &body, &scanned, &members, &model, price, serve)?;
            if !limited {
                self.guard(&key, &model, &body, context.clone())?;
                self.rate_limit(&key).await?;
                limited = true;
            }
            let reserved = self
                .reserve(&key, &model, version, price, &body, &upstream)
                .await;
            // A group may name a cheaper one for calls its budget can no longer afford whole
            // (refused, or to be capped or stopped short): taken once, the hold given back.
            let short = match &reserved {
                Ok(held) => held.output_cap.is_some() || held.budget.is_some(),
                Err(failure) => matches!(failure, Failure::BudgetExceeded(..)),
            };
            if short
                && downgraded_from.is_none()
                && let Some(cheaper) = plan
                    .downgrade()
                    .and_then(|to| router.group_plan(to, gateway.draw()))
            {
                downgraded_from = Some(Arc::from(asked.as_str()));
                plan = cheaper;
                continue;
            }
            break (
                candidate, model, provider, serve, price, upstream, reserved?,
            );
        };
        if downgraded_from.is_some() {
            gateway.metrics.add(Counter::Downgraded, 1);
        }
        if let Some(cap) = held.output_cap {
            // Only part of the bound could be held: the answer is capped at what the hold
            // affords, so the provider itself stops there. The capped body is the client's
            // with its cap lowered (or added), prepared as any other.
            let capped = Bytes::from(
                splice(&body, &mut cap_edits(&scanned, &members, self.api, cap)).concat(),
            );
            let scanned =
                json_scan::scan(&capped, WANTED).map_err(|e| Failure::BadRequest(e.to_string()))?;
            let members = Members::of(&scanned)?;
            upstream = prepare(self.api, &capped, &scanned, &members, &model, price, serve)?;
            upstream.output_cap = Some(cap);
            self.gateway.metrics.add(Counter::BudgetClamped, 1);
        }
        let Held {
            reservation,
            bound,
            output_cap: _,
            budget: stream_budget,
        } = held;
        Ok(Admitted {
            api: self.api,
            budget: key.allocation.tightest(now_ms()),
            bound: bound.cost_max,
            key,
            model,
            reservation,
            card,
            provider,
            upstream,
            stream_budget,
            forwarded_headers: parts.headers,
            request_body: body,
            plan,
            candidate,
            scanned,
            downgraded_from,
            prompt_prefix,
        })
    }

    /// The caller's key.
    fn authenticate(&mut self, headers: &HeaderMap) -> Result<Arc<VirtualKey>, Failure> {
        let presented = presented_key(headers).unwrap_or_default();
        let key = self
            .gateway
            .keys
            .resolve(presented, self.now)
            .map_err(Failure::InvalidApiKey)?;
        self.key = Some(Arc::clone(&key));
        Ok(key)
    }

    /// The body, capped in size and time.
    async fn read(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Failure> {
        let server = &self.gateway.config.server;
        let limits = BodyLimits {
            bytes_max: server.body_bytes_max,
            timeout: server.body_timeout,
        };
        body::read(headers, body, limits).await
    }

    /// What the call's `model` names: a group, or one model (an alias, `provider/model` with a
    /// configured provider, or a bare name the route's default provider takes).
    fn plan(&mut self, body: &Bytes, member: &Member) -> Result<(String, Plan), Failure> {
        let gateway = self.gateway;
        let asked: String = json_scan::read(body, member)
            .ok_or_else(|| Failure::BadRequest("`model` must be a string".into()))?;
        if let Some(plan) = gateway.router.group_plan(&asked, gateway.draw()) {
            return Ok((asked, plan));
        }
        let not_found = || Failure::ModelNotFound {
            model: asked.clone(),
        };
        let model = match gateway.aliases.get(&asked) {
            Some(target) => target.clone(),
            None => ModelRef::parse(&asked)
                .ok()
                .or_else(|| gateway.config.default_providers.resolve(self.api, &asked))
                .ok_or_else(not_found)?,
        };
        if !gateway.providers.contains_key(model.provider()) {
            return Err(not_found());
        }
        Ok((asked, gateway.router.direct_plan(model)))
    }

    /// The first candidate of `plan` the call can take, and its place in the plan; when none
    /// can, why the first could not.
    fn first_usable<'c>(
        &mut self,
        key: &VirtualKey,
        plan: &Plan,
        card: &'c RateCard,
    ) -> Result<(usize, Usable<'c>), Failure> {
        let mut refused = None;
        for (n, model) in (0..).map_while(|n| plan.candidate(n).map(|m| (n, m))) {
            match usable(self.gateway, self.api, self.now, key, model, card) {
                Ok(usable) => {
                    self.model = Some(model.clone());
                    return Ok((n, usable));
                }
                Err(failure) => {
                    if refused.is_none() {
                        self.model = Some(model.clone());
                        refused = Some(failure);
                    }
                }
            }
        }
        Err(refused.unwrap_or_else(|| Failure::Internal("a plan without candidates".into())))
    }

    /// The spend guardrails (`[guards]`): a blocked key, agent or allocation, a loop, a spend
    /// velocity past its ceiling. Before the rate limits, so a refused loop takes no request.
    fn guard(
        &self,
        key: &VirtualKey,
        model: &ModelRef,
        body: &Bytes,
        context: Option<Range<usize>>,
    ) -> Result<(), Failure> {
        let guards = &self.gateway.guards;
        if guards.is_off() {
            return Ok(());
        }
        let print = guards
            .watches_loops()
            .then(|| guards.print(model.as_str(), body, context?))
            .flatten();
        guards
            .admit(key, print, self.now, &self.gateway.emitter)
            .map_err(|tripped| {
                self.gateway.metrics.add(Counter::GuardRefused, 1);
                Failure::Guarded {
                    guard: tripped.guard,
                    scope: tripped.scope.as_str(),
                    name: tripped.name,
                    retry_after_s: tripped.retry_after_s,
                }
            })
    }

    /// Requests are taken now; tokens were charged by earlier calls. This replica's own limits
    /// first, then (with `[leases]`) its slices of the limits every replica shares.
    async fn rate_limit(&self, key: &VirtualKey) -> Result<(), Failure> {
        let gateway = self.gateway;
        let key_rates = gateway.key_rates(key);
        let team_rates = gateway.team_rates(&key.allocation.project.team.name);
        if key_rates.is_none() && team_rates.is_none() {
            return Ok(());
        }
        let scopes = [("key", key_rates.as_deref()), ("team", team_rates)];
        self.rate_limit_here(scopes)?;
        for (scope, rates) in scopes {
            if let Some(shared) = rates.and_then(|r| r.shared_tokens.as_ref()) {
                self.within_slice(shared, |s, now| s.check(now))
                    .await
                    .map_err(|wait| limited(scope, "tokens", wait))?;
            }
        }
        for (scope, rates) in scopes {
            if let Some(shared) = rates.and_then(|r| r.shared_requests.as_ref()) {
                self.within_slice(shared, |s, now| s.take(now, 1))
                    .await
                    .map_err(|wait| limited(scope, "requests", wait))?;
            }
        }
        Ok(())
    }

    /// Admits by `admit` within this replica's slice of a shared limit. A slice with no grant
    /// covering the call has asked for one: the call waits for it, up to `leases.ask_timeout`.
    /// A slice whose minute is given out refuses at once, until the minute ends. The error is
    /// the seconds to wait.
    async fn within_slice(
        &self,
        shared: &SharedRate,
        admit: impl Fn(&RateSlice, i64) -> Result<(), Short>,
    ) -> Result<(), u64> {
        let wait_max = self
            .gateway
            .config
            .leases
            .as_ref()
            .map_or(Duration::ZERO, |l| l.ask_timeout);
        let deadline = tokio::time::Instant::now() + wait_max;
        let mut waited = false;
        loop {
            let now = now_ms().0;
            match admit(&shared.slice, now) {
                Ok(()) => return Ok(()),
                Err(Short::Spent { until_ms }) => {
                    let ms = u64::try_from(until_ms.saturating_sub(now)).unwrap_or(0);
                    return Err(ms.div_ceil(1_000).max(1));
                }
                Err(Short::Asking) if tokio::time::Instant::now() >= deadline => return Err(1),
                Err(Short::Asking) => {
                    if !waited {
                        waited = true;
                        self.gateway.metrics.add(Counter::RateSliceWaited, 1);
                    }
                    tokio::time::sleep(RATE_SLICE_POLL).await;
                }
            }
        }
    }

    /// This replica's own limits (without `[leases]`) of the key and the team, `scopes`.
    fn rate_limit_here(&self, scopes: [(&'static str, Option<&Rates>); 2]) -> Result<(), Failure> {
        let now_us = self.gateway.monotonic_us();
        let limited =
            |scope, what, wait: tollgate_engine::RetryAfter| limited(scope, what, wait.seconds());
        for (scope, rates) in scopes {
            if let Some(tokens) = rates.and_then(|r| r.tokens.as_ref()) {
                tokens
                    .check(now_us)
                    .map_err(|w| limited(scope, "tokens", w))?;
            }
        }
        for (scope, rates) in scopes {
            if let Some(requests) = rates.and_then(|r| r.requests.as_ref()) {
                requests
                    .take(now_us, 1)
                    .map_err(|w| limited(scope, "requests", w))?;
            }
        }
        Ok(())
    }

    /// Holds what the call can cost at allocation, project and team (see [`Call::asks`]),
    /// waiting in line while calls in flight hold the room. A hold short of the bound stops a
    /// stoppable stream where it can grow no more, and caps any other call's output at what it
    /// affords.
    async fn reserve(
        &self,
        key: &VirtualKey,
        model: &ModelRef,
        version: &RateVersion,
        price: &ModelPrice,
        body: &Bytes,
        upstream: &Prepared,
    ) -> Result<Held, Failure> {
        let allocation = &key.allocation;
        let priced = priced(self.api, key, version, price, body, upstream);
        let bound = priced.cost_with(None);
        let tight = key.tight();
        let (first, rest) = self.asks(key, model, &priced, &bound, upstream.stoppable);
        // Near a shared budget's end (its coordinator gave this replica less than it asked),
        // a lease too short for the bound is what there is: the call holds it, as at the end
        // of a budget of its own.
        let scarce = || allocation.budget.lease().is_some_and(LeaseCell::scarce);
        let attempt = || match reserve_within(allocation, now_ms(), first) {
            Err(Refused::Exhausted(_)) if tight == Tight::Clamp => {
                reserve_within(allocation, now_ms(), rest)
            }
            Err(Refused::Busy(_)) if tight == Tight::Clamp && scarce() => {
                reserve_within(allocation, now_ms(), rest)
            }
            held => held,
        };
        let admitted = self
            .gateway
            .waiting
            .admit(&allocation.name, tight != Tight::Refuse, attempt)
            .await;
        self.count_wait(&admitted);
        let (reservation, _waited) = admitted.map_err(|refusal| {
            if let NotAdmitted::Spent(at) = &refusal {
                self.gateway.emitter.exhausted_alert(at, now_ms());
            }
            not_admitted(allocation, refusal)
        })?;
        let short = reservation
            .bounded_at()
            .filter(|held| *held < bound.cost_max && self.api != Api::Embeddings);
        let (output_cap, budget) = match short {
            // A stream that can be stopped goes on as far as its hold can grow.
            Some(_) if upstream.stoppable => (
                None,
                Some(StreamBudget::new(price, priced.adjustment, priced.shape)),
            ),
            Some(held) => {
                let total = output_tokens_within(price, priced.adjustment, priced.shape, held);
                (Some((total / upstream.choices).max(1)), None)
            }
            None => (None, None),
        };
        Ok(Held {
            reservation,
            bound,
            output_cap,
            budget,
        })
    }

    /// What the call asks to hold first, and what it asks when settled spend leaves less than
    /// that (the budget's end).
    ///
    /// Under `clamp` (the default): first the whole bound, or for a stoppable stream what its
    /// key's streams of the model really generate (a high percentile) when that is known and
    /// less, so no answer is cut for want of room that is coming back; at the end, what there
    /// is, down to the least cost (its prompt and `admission.output_floor_tokens` of output).
    /// Under `wait` and `refuse`: the whole bound, and nothing less.
    fn asks(
        &self,
        key: &VirtualKey,
        model: &ModelRef,
        priced: &Priced<'_>,
        bound: &Estimate,
        stoppable: bool,
    ) -> (Ask, Ask) {
        let whole = Ask::exactly(bound.cost_max);
        if key.tight() != Tight::Clamp {
            return (whole, whole);
        }
        let floor = self.gateway.config.admission.output_floor_tokens;
        let learned = stoppable
            .then(|| self.gateway.expected.bytes(key, model))
            .flatten()
            .filter(|&bytes| bytes < bound.output_tokens_max.0);
        let first = learned.map_or(whole, |bytes| {
            Ask::exactly(priced.cost_with(Some(bytes.max(floor))).cost_max)
        });
        let rest = Ask {
            least: priced
                .cost_with(Some(floor.min(bound.output_tokens_max.0)))
                .cost_max,
            most: bound.cost_max,
        };
        (first, rest)
    }

    /// Counts a call that waited for budget, or was refused as busy.
    fn count_wait(&self, admitted: &Result<(Reservation, Duration), NotAdmitted>) {
        let metrics = &self.gateway.metrics;
        match admitted {
            Err(NotAdmitted::Busy { .. }) => metrics.add(Counter::BudgetBusy, 1),
            Ok((_, waited)) if !waited.is_zero() => metrics.add(Counter::BudgetWaited, 1),
            Ok(_) | Err(NotAdmitted::Spent(_)) => {}
        }
    }
}

/// The upstream body: the client's slices with the model renamed (and usage asked for in
/// an OpenAI stream), or the provider's translation. Pure; fails only on the body itself.
fn prepare(
    api: Api,
    body: &Bytes,
    scanned: &Scanned<11>,
    members: &Members<'_>,
    model: &ModelRef,
    price: &ModelPrice,
    serve: Serve,
) -> Result<Prepared, Failure> {
    let read_u64 = |m: Option<&Member>| m.and_then(|m| json_scan::read::<u64>(body, m));
    let choices = read_u64(members.n).unwrap_or(1).max(1);
    let output_tokens_max = read_u64(members.max_completion_tokens)
        .or_else(|| read_u64(members.max_tokens))
        .or_else(|| read_u64(members.max_output_tokens))
        .map(|t| t.saturating_mul(choices));
    let stream = members
        .stream
        .and_then(|m| json_scan::read::<bool>(body, m))
        .unwrap_or(false);
    let include_usage = members
        .stream_options
        .and_then(|m| json_scan::read::<serde_json::Value>(body, m))
        .and_then(|v| v.get("include_usage")?.as_bool())
        .unwrap_or(false);
    let stoppable = stream && stops_streams(api);
    let (chunks, hide_usage) = match serve {
        Serve::Translated(translate) => {
            let translated = translate(body, model.model(), price.max_output_tokens)
                .map_err(|e| Failure::BadRequest(e.to_string()))?;
            (vec![Bytes::from(translated)], false)
        }
        Serve::Native { stream_usage } => {
            let ask_usage = stream_usage && stream && !include_usage;
            (
                native_body(body, scanned, members, model, ask_usage)?,
                ask_usage,
            )
        }
    };
    Ok(Prepared {
        body: SliceBody::new(chunks),
        stream,
        include_usage,
        hide_usage,
        output_tokens_max,
        choices,
        output_cap: None,
        stoppable,
    })
}

/// What a candidate the call can take brings: its provider, how the provider serves the
/// route, and its price in the card.
struct Usable<'c> {
    model: ModelRef,
    provider: Arc<Provider>,
    serve: Serve,
    version: &'c RateVersion,
    price: &'c ModelPrice,
}

/// Whether the call can take `model`: a configured provider, allowed by the key's and the
/// allocation's lists, served on the route, priced in `card` at `now` (a model without a
/// price is refused, never metered as free).
fn usable<'c>(
    gateway: &Gateway,
    api: Api,
    now: UnixMs,
    key: &VirtualKey,
    model: &ModelRef,
    card: &'c RateCard,
) -> Result<Usable<'c>, Failure> {
    let provider =
        gateway
            .providers
            .get(model.provider())
            .ok_or_else(|| Failure::ModelNotFound {
                model: model.to_string(),
            })?;
    key.check_model(model)
        .map_err(|_| Failure::ModelNotAllowed {
            model: model.to_string(),
        })?;
    let serve = provider.serves(api).map_err(Failure::BadRequest)?;
    let (version, price) = card
        .at(now)
        .and_then(|version| Some((version, version.model(model.as_str())?)))
        .ok_or_else(|| Failure::ModelNotPriced {
            model: model.to_string(),
        })?;
    Ok(Usable {
        model: model.clone(),
        provider: Arc::clone(provider),
        serve,
        version,
        price,
    })
}

/// A call's price and shape on `price`: what bounds its cost.
fn priced<'p>(
    api: Api,
    key: &VirtualKey,
    version: &RateVersion,
    price: &'p ModelPrice,
    body: &Bytes,
    upstream: &Prepared,
) -> Priced<'p> {
    let project = &key.allocation.project;
    Priced {
        price,
        adjustment: version.adjustment(&project.team.name, &project.name),
        shape: RequestShape {
            body_bytes: body.len() as u64,
            extra_input_tokens: 0,
            max_output_tokens: if api == Api::Embeddings {
                Some(0)
            } else {
                upstream.output_tokens_max
            },
        },
    }
}

/// The edits that cap a call's completion tokens at `cap` per choice: every cap the client set
/// is lowered to it, or the route's own cap is added when the client set none.
fn cap_edits(
    scanned: &Scanned<11>,
    members: &Members<'_>,
    api: Api,
    cap: u64,
) -> Vec<(Range<usize>, Bytes)> {
    let value = Bytes::from(cap.to_string());
    let mut edits: Vec<(Range<usize>, Bytes)> = [
        members.max_completion_tokens,
        members.max_tokens,
        members.max_output_tokens,
    ]
    .into_iter()
    .flatten()
    .map(|member| (member.value.clone(), value.clone()))
    .collect();
    if edits.is_empty() {
        let field = match api {
            Api::Responses => "max_output_tokens",
            Api::ChatCompletions | Api::Completions | Api::Messages | Api::Embeddings => {
                "max_tokens"
            }
        };
        let added = Bytes::from(format!(",\"{field}\":{cap}"));
        edits.push((scanned.close..scanned.close, added));
    }
    edits
}

/// A native call's body: the client's own bytes, the model renamed to the provider's name and,
/// when `ask_usage`, `stream_options` set to ask for the usage chunk.
fn native_body(
    body: &Bytes,
    scanned: &Scanned<11>,
    members: &Members<'_>,
    model: &ModelRef,
    ask_usage: bool,
) -> Result<Vec<Bytes>, Failure> {
    let model_value = Bytes::from(
        serde_json::to_vec(model.model()).map_err(|e| Failure::Internal(e.to_string()))?,
    );
    let mut edits = vec![(members.model.value.clone(), model_value)];
    if ask_usage {
        edits.push(match members.stream_options {
            // Replace the client's options with ones that ask for usage.
            Some(options) => (
                options.value.clone(),
                Bytes::from_static(br#"{"include_usage":true}"#),
            ),
            None => (
                scanned.close..scanned.close,
                Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
            ),
        });
    }
    Ok(splice(body, &mut edits))
}

/// The header carrying a whole answer's cost, a decimal in the rate card's currency.
pub const COST: http::HeaderName = http::HeaderName::from_static("x-tollgate-cost");

/// A whole answer, held until it has arrived and its call is settled, then sent with its cost
/// (`x-tollgate-cost`) and length. One larger than `RESPONSE_METER_BYTES_MAX`, or cut by the
/// upstream, is sent as it stands without the cost: what arrived, then the rest or the cut.
async fn whole_answer(
    answer: Response<Metered>,
    cost: oneshot::Receiver<tollgate_engine::Nanos>,
) -> Response<ResponseBody> {
    let (mut head, mut metered) = answer.into_parts();
    let mut held: VecDeque<Bytes> = VecDeque::new();
    let mut held_bytes = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut metered).poll_frame(cx)).await;
        let cut = match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    held_bytes += data.len();
                    held.push_back(data);
                }
                if held_bytes <= RESPONSE_METER_BYTES_MAX {
                    continue;
                }
                None
            }
            Some(Err(failure)) => Some(failure),
        };
        let rest = Prefixed {
            held,
            failure: cut,
            rest: metered,
        };
        return Response::from_parts(head, ResponseBody::Streamed(Box::pin(rest)));
    }
    if let Ok(cost) = cost.await
        && let Ok(value) = HeaderValue::from_str(&cost.to_string())
    {
        head.headers.insert(COST, value);
    }
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(held_bytes));
    let body = match held.len() {
        1 => held.pop_front().unwrap_or_default(),
        _ => Bytes::from(held.into_iter().fold(
            Vec::with_capacity(held_bytes),
            |mut all, piece| {
                all.extend_from_slice(&piece);
                all
            },
        )),
    };
    Response::from_parts(head, ResponseBody::full(body))
}

/// What a whole answer held before it had to be sent as it stands, then the rest of it (or the
/// upstream's cut, after what arrived).
struct Prefixed {
    held: VecDeque<Bytes>,
    failure: Option<BodyError>,
    rest: Metered,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(piece) = this.held.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(failure) = this.failure.take() {
            return Poll::Ready(Some(Err(failure)));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }
}

/// What the client asked of the answer's shape, and the cap admission put on it.
struct Asked {
    stream: bool,
    include_usage: bool,
    hide_usage: bool,
    output_cap: Option<u64>,
    budget: Option<(Level, BudgetSnapshot)>,
    stream_budget: Option<StreamBudget>,
    stoppable: bool,
    downgraded_from: Option<Arc<str>>,
}

/// The header naming what the client asked for when a downgrade served the call with a
/// cheaper group (`x-tollgate-model` says which model answered).
pub const DOWNGRADED_FROM: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-downgraded-from");

/// The header naming the model that answered (`provider/model`): the group's candidate that
/// served the call, or the model named.
pub const MODEL: http::HeaderName = http::HeaderName::from_static("x-tollgate-model");

/// The header telling a client how many attempts its call took, when it took more than one.
pub const ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-tollgate-attempts");

/// The header telling a client its call's completion tokens were capped (per choice) at what
/// its budget's room affords.
pub const MAX_TOKENS_CLAMPED: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-max-tokens-clamped");

/// Sends the prepared body to the provider, signed, and waits at most its first-byte timeout
/// for the answer's head. A failure is the status to record and what to tell the client.
async fn send(
    provider: &Provider,
    deployment: &Deployment,
    api: Api,
    model: &str,
    stream: bool,
    body: SliceBody,
    forwarded_headers: &HeaderMap,
) -> Result<Response<Incoming>, (Status, Failure)> {
    let adapter = &deployment.adapter;
    let path = adapter.path(api, model, stream);
    let request = deployment
        .upstream
        .request(&path, body, forwarded_headers)
        .and_then(|mut request| {
            adapter.authorize(&mut request, now_ms())?;
            Ok(request)
        })
        .map_err(|e| {
            let failure = Failure::Internal(format!("building the upstream request: {e}"));
            (Status::InternalError, failure)
        })?;
    let timeout = provider.config.first_byte_timeout;
    match tokio::time::timeout(timeout, deployment.upstream.send(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let failure = Failure::UpstreamUnavailable {
                provider: Arc::clone(&provider.name),
                reason: error_chain(&e),
            };
            Err((Status::UpstreamError, failure))
        }
        // The upstream may have started work; the prompt was sent, so it is billed.
        Err(_) => {
            let failure = Failure::UpstreamTimeout {
                provider: Arc::clone(&provider.name),
                timeout_ms: timeout.as_millis(),
            };
            Err((Status::UpstreamTimeout, failure))
        }
    }
}

/// The provider's answer on its way to the client: its head (with the request id, and the
/// content type of a translated answer), and its body metered by the provider's reader.
fn relay(
    provider: &Provider,
    deployment: &Deployment,
    response: Response<meter::UpstreamBody>,
    mut ticket: Ticket,
    asked: Asked,
) -> Response<Metered> {
    let (parts, body) = response.into_parts();
    ticket.http_status = parts.status.as_u16();
    let success = parts.status.is_success();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let client_model = ticket.model.to_string();
    let reader = deployment.adapter.reader(&Answer {
        route: ticket.api,
        model: &client_model,
        success,
        stream: asked.stream,
        sse: is_sse,
        include_usage: asked.include_usage,
        hide_usage: asked.hide_usage && is_sse,
        headers: &parts.headers,
        created_s: now_ms().0 / 1000,
        pricer: asked.include_usage.then(|| pricer_of(&ticket)),
    });
    let mut out = Response::builder().status(parts.status);
    if let Some(headers) = out.headers_mut() {
        answer_headers(headers, &parts.headers, &ticket.request_id);
        if let Ok(model) = HeaderValue::from_str(ticket.model.as_str()) {
            headers.insert(MODEL, model);
        }
        if ticket.attempt > 1 {
            headers.insert(ATTEMPTS, HeaderValue::from(ticket.attempt));
        }
        if let Some(from) = &asked.downgraded_from
            && let Ok(from) = HeaderValue::from_str(from)
        {
            headers.insert(DOWNGRADED_FROM, from);
        }
        if let Some(cap) = asked.output_cap {
            headers.insert(MAX_TOKENS_CLAMPED, HeaderValue::from(cap));
        }
        if let Some((level, snapshot)) = &asked.budget {
            budget_headers(headers, *level, snapshot);
        }
        match reader.rewritten_as() {
            Some(content_type) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            None if success && !asked.stream => {
                if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
                    headers.insert(header::CONTENT_LENGTH, length.clone());
                }
            }
            None => {}
        }
    }
    let idle = provider.config.idle_timeout;
    let extend_wait = ticket.gateway.config.admission.extend_wait_max;
    // Only a stream that came back as one (server-sent events, or a provider's own framing
    // read as them) can be stopped, or teaches what streams generate; any other answer is
    // settled at what it reports, as a whole.
    let streamed = success && (is_sse || reader.rewritten_as() == Some("text/event-stream"));
    let metering = Metering {
        error_answer: !success,
        idle_timeout: idle,
        budget: asked.stream_budget.filter(|_| streamed),
        learns: asked.stoppable && streamed,
        extend_wait,
    };
    let metered = Metered::new(body, ticket, reader, metering);
    // The head's parts are a status and headers already checked; a builder error cannot
    // happen, and the answer goes out with the status alone were it to.
    let status = parts.status;
    match out.body(()) {
        Ok(head) => head.map(|()| metered),
        Err(_) => {
            let mut bare = Response::new(metered);
            *bare.status_mut() = status;
            bare
        }
    }
}

/// Prices usage as the call's settle does: its card, model, team and project, at its instant.
fn pricer_of(ticket: &Ticket) -> Pricer {
    let card = Arc::clone(&ticket.card);
    let model = ticket.model.clone();
    let project = &ticket.key.allocation.project;
    let (team, project) = (Arc::clone(&project.team.name), Arc::clone(&project.name));
    let at = ticket.reservation.at();
    Pricer::new(move |usage| {
        let (_, cost) = card.price_tokens(&model, usage, &team, &project, at).ok()?;
        Some(cost.billed)
    })
}

/// Where the caller's budget stands, at its tightest level: `x-tollgate-budget-level`,
/// `-limit`, `-remaining` (holds in flight counted, this call's included) and `-resets-at`
/// (absent for a `total` budget).
fn budget_headers(out: &mut HeaderMap, level: Level, snapshot: &BudgetSnapshot) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert(http::HeaderName::from_static(name), value);
        }
    };
    set("x-tollgate-budget-level", level.as_str().to_owned());
    if let Some(limit) = snapshot.limit {
        set("x-tollgate-budget-limit", limit.to_string());
    }
    if let Some(remaining) = snapshot.remaining {
        set("x-tollgate-budget-remaining", remaining.to_string());
    }
    if let Some(resets_at) = snapshot.resets_at {
        set(
            "x-tollgate-budget-resets-at",
            tollgate_engine::time::format_rfc3339_s(resets_at),
        );
    }
}

/// The provider's headers a client gets, and the request id.
fn answer_headers(out: &mut HeaderMap, upstream: &HeaderMap, request_id: &str) {
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = upstream.get(&name) {
            out.insert(name, value.clone());
        }
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        out.insert(REQUEST_ID, id);
    }
}

impl Ticket {
    /// Finishes a call that failed before an answer, and its error response.
    fn fail(
        mut self,
        status: Status,
        protocol: Protocol,
        failure: &Failure,
    ) -> Response<ResponseBody> {
        self.http_status = failure.class().status.as_u16();
        let request_id = Arc::clone(&self.request_id);
        self.finish(status, Measured::Nothing, None);
        error_response(protocol, &request_id, failure)
    }
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

/// A rate limit's refusal: `scope` (`key` or `team`), `what` (`requests` or `tokens`).
fn limited(scope: &'static str, what: &'static str, retry_after_s: u64) -> Failure {
    Failure::RateLimited {
        scope,
        what,
        retry_after_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
