//! The resource ledger's HTTP edge: `POST /v1/usage` books batches of GPU-, core-, node-hour
//! and GB-month records, `POST /v1/usage/authorize` answers whether an allocation can afford
//! some usage now (and may hold the amount), `DELETE /v1/usage/reservations/{id}` gives a hold
//! back. [`import`] reads what sites already have (`sacct`, OpenCost, a storage CSV) into the
//! records `tollgate import` sends here.
//!
//! A batch goes through two phases. The first parses and prices every record with no side
//! effect: a bad record refuses the whole batch with a 400 naming its index and field. The
//! second, under the ledger's lock, books each new record: its event is appended to the log
//! (the same log, Kafka topic and Parquet files as token calls), then its cost is posted to
//! the allocation's, project's and team's budgets, settling the hold it names if one is kept.
//! The answer waits for the log's sync.
//!
//! **Invariant:** accounting records are always booked, even past a limit (the usage happened;
//! the answer flags `over_limit`); refusal is `authorize`'s, before the usage starts. A record
//! id is booked once: resending it changes nothing, after a restart too (ids are restored from
//! the log). Authorizing and releasing write no usage event; they move only the hold.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tollgate_engine::ledger::{
    Hold, RecordKey, ReservationId, Seen, UsageRecord, fingerprint, micros_decimal,
};
use tollgate_engine::{
    Allocation, Cost, Nanos, RateCard, Refused, Reservation, Scopes, UnixMs, UsageEvent, VirtualKey,
};

use crate::clock::now_ms;
use crate::http::auth::{AdminToken, presented_key};
use crate::http::body::{self, BodyLimits};
use crate::http::error::{BudgetScope, Failure, Protocol};
use crate::http::response::{ResponseBody, error_response, json};
use crate::http::route::UsageRoute;
use crate::limits::LEDGER_CLOCK_SKEW;
use crate::metrics::Counter;
use crate::state::Gateway;
use tollgate_engine::time::format_rfc3339_s;

pub mod bodies;
pub mod import;
mod ledger;

use bodies::{AuthorizeRequest, BatchRequest, bad};
pub(crate) use ledger::duration_ms;
use ledger::lock;
pub use ledger::{Ledger, Sweeper};

/// Serves one ledger request.
pub async fn handle(
    gateway: &Gateway,
    ledger: &Ledger,
    admin: &AdminToken,
    route: UsageRoute,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let now = now_ms();
    let request_id = gateway.request_id(now);
    let expired = ledger.sweep(now);
    gateway
        .metrics
        .add(Counter::ReservationsExpired, expired as u64);
    match serve(gateway, ledger, admin, route, request, now).await {
        Ok((status, body)) => json(status, &request_id, &body),
        Err(failure) => error_response(Protocol::OpenAi, &request_id, &failure),
    }
}

/// Who sent the request: the admin token, or a key with the `metering` scope.
enum Submitter {
    Admin,
    Key(Arc<VirtualKey>),
}

impl Submitter {
    fn key_id(&self) -> Option<tollgate_engine::KeyId> {
        match self {
            Submitter::Admin => None,
            Submitter::Key(key) => Some(key.id()),
        }
    }
}

fn authenticate(
    gateway: &Gateway,
    admin: &AdminToken,
    request: &Request<Incoming>,
    now: UnixMs,
) -> Result<Submitter, Failure> {
    let presented = presented_key(request.headers()).unwrap_or_default();
    if !presented.is_empty() && admin.matches(presented) {
        return Ok(Submitter::Admin);
    }
    let key = gateway
        .keys
        .resolve(presented, now)
        .map_err(Failure::InvalidApiKey)?;
    if !key.scopes.contains(Scopes::METERING) {
        return Err(Failure::ScopeMissing { scope: "metering" });
    }
    Ok(Submitter::Key(key))
}

async fn serve(
    gateway: &Gateway,
    ledger: &Ledger,
    admin: &AdminToken,
    route: UsageRoute,
    request: Request<Incoming>,
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let submitter = authenticate(gateway, admin, &request, now)?;
    let path = request.uri().path().to_owned();
    let body = read(gateway, ledger, request).await?;
    match route {
        UsageRoute::Record => record(gateway, ledger, &submitter, &body, now).await,
        UsageRoute::Authorize => authorize(gateway, ledger, &body, now),
        UsageRoute::Release => release(ledger, &path),
    }
}

async fn read(
    gateway: &Gateway,
    ledger: &Ledger,
    request: Request<Incoming>,
) -> Result<Bytes, Failure> {
    let limits = BodyLimits {
        bytes_max: ledger.config.body_bytes_max,
        timeout: gateway.config.server.body_timeout,
    };
    let (parts, body) = request.into_parts();
    body::read(&parts.headers, body, limits).await
}

fn scope_of(allocation: &Allocation) -> BudgetScope {
    BudgetScope {
        team: Arc::clone(&allocation.project.team.name),
        project: Arc::clone(&allocation.project.name),
        allocation: Arc::clone(&allocation.name),
    }
}

/// Whether any level of `allocation` has spent past its limit in its current period.
fn over_limit(allocation: &Allocation, now: UnixMs) -> bool {
    allocation.budget_cells().iter().any(|cell| {
        let snapshot = cell.snapshot(now);
        snapshot.limit.is_some_and(|limit| snapshot.spent > limit)
    })
}

/// The least room left at any limited level, if any level is limited.
fn remaining(allocation: &Allocation, now: UnixMs) -> Option<Nanos> {
    allocation
        .budget_cells()
        .iter()
        .filter_map(|cell| cell.snapshot(now).remaining)
        .min()
}

/// A record that passed the first phase: typed, priced, its event built.
struct Priced {
    record: UsageRecord,
    allocation: Arc<Allocation>,
    cost: Cost,
    event: UsageEvent,
    key: RecordKey,
    fingerprint: u64,
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Booked,
    WouldBook,
    Duplicate,
    Conflict,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Booked => "booked",
            Outcome::WouldBook => "would_book",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict => "conflict",
        }
    }

    /// The counter a booking outcome adds to (a dry run counts nothing).
    fn counter(self) -> Option<Counter> {
        match self {
            Outcome::Booked => Some(Counter::RecordsBooked),
            Outcome::Duplicate => Some(Counter::RecordsDuplicate),
            Outcome::Conflict => Some(Counter::RecordsConflict),
            Outcome::WouldBook => None,
        }
    }
}

/// Phase one: every record checked and priced, or the first bad one named.
fn price_batch(
    gateway: &Gateway,
    ledger: &Ledger,
    submitter: &Submitter,
    records: Vec<UsageRecord>,
    now: UnixMs,
) -> Result<Vec<Priced>, Failure> {
    let card = gateway.card.load_full();
    let mut priced = Vec::with_capacity(records.len());
    for (i, record) in records.into_iter().enumerate() {
        let checked = Checked {
            index: i,
            record,
            now,
        };
        priced.push(price_record(gateway, ledger, &card, submitter, checked)?);
    }
    Ok(priced)
}

/// One parsed record of a batch, at its index, as of `now`.
struct Checked {
    index: usize,
    record: UsageRecord,
    now: UnixMs,
}

/// Checks one record's time, allocation and hold, and prices it in `card`.
fn price_record(
    gateway: &Gateway,
    ledger: &Ledger,
    card: &RateCard,
    submitter: &Submitter,
    checked: Checked,
) -> Result<Priced, Failure> {
    let Checked {
        index: i,
        record,
        now,
    } = checked;
    if record.start > now.plus_ms(duration_ms(LEDGER_CLOCK_SKEW)) {
        let reason = format!(
            "{} is in the future; record usage once it has begun",
            record.start
        );
        return Err(bad(i, "start", reason));
    }
    lock(&ledger.index)
        .check_age(record.start, now)
        .map_err(|e| bad(i, "start", e.to_string()))?;
    let allocation = gateway
        .directory
        .allocation(&record.allocation)
        .map_err(|e| bad(i, "allocation", e.to_string()))?;
    let project = &allocation.project;
    let (version, cost) = card
        .price_resource(
            record.unit,
            record.quantity,
            &record.site,
            &project.team.name,
            &project.name,
            record.start,
        )
        .map_err(|e| bad(i, "unit", e.to_string()))?;
    if let Some(id) = record.reservation
        && let Some(hold) = lock(&ledger.book).get(id)
        && hold.reservation.allocation().name != allocation.name
    {
        let reason = format!(
            "{id} holds budget of allocation `{}`, not `{}`",
            hold.reservation.allocation().name,
            allocation.name
        );
        return Err(bad(i, "reservation", reason));
    }
    let event = record.to_event(
        &allocation,
        &version.id,
        cost,
        &card.currency,
        submitter.key_id(),
    );
    Ok(Priced {
        fingerprint: fingerprint(&event),
        key: record.id.key(),
        record,
        allocation,
        cost,
        event,
    })
}

async fn record(
    gateway: &Gateway,
    ledger: &Ledger,
    submitter: &Submitter,
    body: &[u8],
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let batch = BatchRequest::parse(body, ledger.config.batch_records_max)?;
    let dry_run = batch.dry_run;
    let priced = price_batch(gateway, ledger, submitter, batch.records, now)?;
    if !dry_run && let Some(reason) = gateway.emitter.refusal() {
        return Err(Failure::Overloaded(reason));
    }
    let booked = book(gateway, ledger, &priced, dry_run)?;
    // Answered once the events are on disk: a client told "booked" never needs to resend.
    if booked.appended && !gateway.emitter.sync().await {
        return Err(Failure::Internal(
            "the usage events could not be synced; resend the batch (it is idempotent)".into(),
        ));
    }
    Ok((
        StatusCode::OK,
        answer(gateway, &priced, &booked, dry_run, now),
    ))
}

/// What phase two did with each record of a batch.
struct Booked {
    /// One per record, in order.
    outcomes: Vec<Outcome>,
    /// One per record: whether it settled the hold it names.
    settled: Vec<bool>,
    /// Whether any event was appended to the log (then the answer waits for its sync).
    appended: bool,
}

/// Holds named by a batch's new records, taken out of the book, with the postings of their
/// records so far; each is settled once all its records are posted.
type TakenHolds = HashMap<ReservationId, (Hold, Vec<(UnixMs, Nanos)>)>;

/// Phase two, under the ledger's lock: one batch at a time decides what is new and books it,
/// so two batches racing with the same id cannot both book it.
fn book(
    gateway: &Gateway,
    ledger: &Ledger,
    priced: &[Priced],
    dry_run: bool,
) -> Result<Booked, Failure> {
    let mut booked = Booked {
        outcomes: Vec::with_capacity(priced.len()),
        settled: vec![false; priced.len()],
        appended: false,
    };
    let mut index = lock(&ledger.index);
    let seen: Vec<Seen> = priced
        .iter()
        .map(|p| index.seen(p.key, p.fingerprint))
        .collect();
    let new = seen.iter().filter(|s| **s == Seen::New).count();
    if !dry_run && !index.has_room(new) {
        return Err(Failure::Overloaded(
            "the usage-record index is full (ledger.records_max)",
        ));
    }
    let mut holds = if dry_run {
        TakenHolds::new()
    } else {
        take_holds(ledger, priced, &seen)
    };
    for (i, (p, s)) in priced.iter().zip(&seen).enumerate() {
        let outcome = match (s, dry_run) {
            (Seen::Duplicate, _) => Outcome::Duplicate,
            (Seen::Conflict, _) => Outcome::Conflict,
            (Seen::New, true) => Outcome::WouldBook,
            (Seen::New, false) => {
                // The event first: if it cannot be written, nothing is posted, the id is not
                // remembered, and the client's resend books it.
                if !gateway.emitter.append(&p.event) {
                    // Holds taken out are settled with what was booked so far (the rest of
                    // their amount comes back); the resend finds those records booked.
                    settle_holds(gateway, holds);
                    return Err(Failure::Internal(
                        "the usage event could not be written; resend the batch".into(),
                    ));
                }
                booked.appended = true;
                if post(gateway, p, &mut holds)
                    && let Some(flag) = booked.settled.get_mut(i)
                {
                    *flag = true;
                }
                // The index was checked for room above, under this same lock.
                let _ = index.insert(p.key, p.fingerprint, p.record.start);
                Outcome::Booked
            }
        };
        if let Some(counter) = outcome.counter() {
            gateway.metrics.add(counter, 1);
        }
        booked.outcomes.push(outcome);
    }
    settle_holds(gateway, holds);
    Ok(booked)
}

/// Takes the holds the new records name out of the book (each once).
fn take_holds(ledger: &Ledger, priced: &[Priced], seen: &[Seen]) -> TakenHolds {
    let mut holds = TakenHolds::new();
    let mut book = lock(&ledger.book);
    for (p, s) in priced.iter().zip(seen) {
        if let (Seen::New, Some(id)) = (s, p.record.reservation)
            && !holds.contains_key(&id)
            && let Some(hold) = book.take(id)
        {
            holds.insert(id, (hold, Vec::new()));
        }
    }
    holds
}

/// Posts one new record's cost: against the hold it names when that was taken (returns
/// true), else straight to its allocation's, project's and team's budgets.
fn post(gateway: &Gateway, p: &Priced, holds: &mut TakenHolds) -> bool {
    gateway.metrics.add(Counter::SpendNanos, p.cost.billed.0);
    if let Some((_, postings)) = p.record.reservation.and_then(|id| holds.get_mut(&id)) {
        postings.push((p.record.start, p.cost.billed));
        return true;
    }
    let settlement = tollgate_engine::book(&p.allocation, p.record.start, p.cost.billed);
    for crossed in settlement.soft_limits_crossed() {
        gateway.emitter.alert(crossed, p.record.start);
    }
    false
}

/// The answer to a batch: each record's outcome and cost, and the totals of what was (or
/// would be) booked.
fn answer(
    gateway: &Gateway,
    priced: &[Priced],
    booked: &Booked,
    dry_run: bool,
    now: UnixMs,
) -> Value {
    let currency = Arc::clone(&gateway.card.load().currency);
    let mut total = Cost::ZERO;
    let results: Vec<Value> = priced
        .iter()
        .zip(&booked.outcomes)
        .zip(&booked.settled)
        .map(|((p, outcome), settled)| {
            if matches!(outcome, Outcome::Booked | Outcome::WouldBook) {
                total.list = total.list.saturating_add(p.cost.list);
                total.billed = total.billed.saturating_add(p.cost.billed);
            }
            json!({
                "id": p.record.id.as_str(),
                "status": outcome.as_str(),
                "event_id": p.event.event_id.to_string(),
                "allocation": &*p.allocation.name,
                "unit": p.record.unit.as_str(),
                "quantity": micros_decimal(p.record.quantity),
                "cost": p.cost.billed.to_string(),
                "cost_nanos": p.cost.billed.0,
                "list_cost": p.cost.list.to_string(),
                "rate_card_version": p.event.rate_card_version.as_deref(),
                "reservation": p.record.reservation.map(|id| json!({
                    "id": id.to_string(),
                    "settled": settled,
                })),
                "over_limit": *outcome == Outcome::Booked && over_limit(&p.allocation, now),
            })
        })
        .collect();
    let count = |wanted: Outcome| booked.outcomes.iter().filter(|o| **o == wanted).count();
    json!({
        "records": priced.len(),
        "booked": count(Outcome::Booked),
        "would_book": count(Outcome::WouldBook),
        "duplicates": count(Outcome::Duplicate),
        "conflicts": count(Outcome::Conflict),
        "dry_run": dry_run,
        "currency": &*currency,
        "cost": total.billed.to_string(),
        "cost_nanos": total.billed.0,
        "list_cost": total.list.to_string(),
        "results": results,
    })
}

/// Settles each taken hold with the postings of its records (none: given back whole).
fn settle_holds(gateway: &Gateway, holds: TakenHolds) {
    for (_, (hold, postings)) in holds {
        let settlement = hold.reservation.settle_at(&postings);
        let at = postings.first().map_or(hold.taken_at, |(at, _)| *at);
        for crossed in settlement.soft_limits_crossed() {
            gateway.emitter.alert(crossed, at);
        }
    }
}

fn authorize(
    gateway: &Gateway,
    ledger: &Ledger,
    body: &[u8],
    now: UnixMs,
) -> Result<(StatusCode, Value), Failure> {
    let request = AuthorizeRequest::parse(body)?;
    let ttl_ms = request
        .ttl_ms
        .unwrap_or_else(|| duration_ms(ledger.config.reservation_ttl));
    let site = &request.site;
    let allocation = gateway
        .directory
        .allocation(&request.allocation)
        .map_err(|e| Failure::AdminNotFound(e.to_string()))?;
    let card = gateway.card.load_full();
    let project = &allocation.project;
    let (version, cost) = card
        .price_resource(
            request.unit,
            request.quantity,
            site,
            &project.team.name,
            &project.name,
            now,
        )
        .map_err(|e| Failure::ResourceNotPriced(e.to_string()))?;
    let reservation = hold_exactly(&allocation, now, cost.billed)?;
    // Room left once this usage is counted (the hold is in flight while it lives).
    let left = remaining(&allocation, now);
    let mut answer = json!({
        "allowed": true,
        "allocation": &*allocation.name,
        "project": &*project.name,
        "team": &*project.team.name,
        "unit": request.unit.as_str(),
        "quantity": micros_decimal(request.quantity),
        "cost": cost.billed.to_string(),
        "cost_nanos": cost.billed.0,
        "list_cost": cost.list.to_string(),
        "currency": &*card.currency,
        "rate_card_version": &*version.id,
        "remaining": left.map(|n| n.to_string()),
        "remaining_nanos": left.map(|n| n.0),
        "reservation": Value::Null,
    });
    if !request.reserve {
        reservation.release();
        return Ok((StatusCode::OK, answer));
    }
    let id = ReservationId(u128::from_be_bytes(gateway.random::<16>()));
    let hold = Hold {
        reservation,
        unit: request.unit,
        quantity: request.quantity,
        amount: cost.billed,
        taken_at: now,
        expires_at: now.plus_ms(ttl_ms),
    };
    let kept = keep(ledger, id, hold)?;
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("reservation".into(), kept);
    }
    Ok((StatusCode::CREATED, answer))
}

/// Holds `amount` at every level of `allocation`, all or nothing, without waiting: a busy
/// budget is told apart from a spent one, so the caller knows to retry the first.
fn hold_exactly(
    allocation: &Arc<Allocation>,
    now: UnixMs,
    amount: Nanos,
) -> Result<Reservation, Failure> {
    let ask = tollgate_engine::Ask::exactly(amount);
    tollgate_engine::reserve_within(allocation, now, ask).map_err(|refused| match refused {
        Refused::Exhausted(at) => Failure::BudgetExceeded(at, scope_of(allocation)),
        Refused::Busy(at) => Failure::BudgetBusy(at, scope_of(allocation), 1),
    })
}

/// Keeps `hold` in the book under `id` until it is settled, released or expires; what the
/// answer says of it.
fn keep(ledger: &Ledger, id: ReservationId, hold: Hold) -> Result<Value, Failure> {
    let (amount, expires_at) = (hold.amount, hold.expires_at);
    lock(&ledger.book).insert(id, hold).map_err(|_| {
        Failure::Overloaded("the reservation book is full (ledger.reservations_max)")
    })?;
    Ok(json!({
        "id": id.to_string(),
        "amount": amount.to_string(),
        "amount_nanos": amount.0,
        "expires_at": format_rfc3339_s(expires_at),
        "expires_at_ms": expires_at.0,
    }))
}

/// `DELETE /v1/usage/reservations/{id}`: gives a hold back whole.
fn release(ledger: &Ledger, path: &str) -> Result<(StatusCode, Value), Failure> {
    let text = path.trim_start_matches("/v1/usage/reservations/");
    let id = ReservationId::parse(text).map_err(Failure::BadRequest)?;
    let hold = lock(&ledger.book)
        .take(id)
        .ok_or_else(|| Failure::ReservationNotFound(id.to_string()))?;
    let answer = json!({
        "released": id.to_string(),
        "allocation": &*hold.reservation.allocation().name,
        "amount": hold.amount.to_string(),
        "amount_nanos": hold.amount.0,
    });
    hold.reservation.release();
    Ok((StatusCode::OK, answer))
}
