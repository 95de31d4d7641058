//! Metering an answer as it streams back, and the one place a call is settled and recorded.
//!
//! [`Metered`] wraps the upstream body: it forwards each piece as it arrives (no buffering
//! beyond an incomplete server-sent event), reads usage on the way, hides the usage-only chunk
//! the gateway asked for when the client did not, and watches the upstream's silence. However
//! the body ends (the last byte, an upstream error or timeout, or the client hanging up and
//! hyper dropping it) its [`Ticket`] is finished exactly once: the reservation is settled with
//! the actual cost, and one usage event is queued.
//!
//! **Invariant:** the cost settled into the budget table and the `cost_nanos` of the event are
//! the same number, computed once in [`Ticket::finish`].

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tollgate_engine::tokens::{Exactness, count_tokens};
use tollgate_engine::{
    Charged, Cost, EventKind, ModelRef, Nanos, Next, PromptPrefix, RateCard, Reservation, Status,
    StreamBudget, TokenUsage, Tokens, UnixMs, UsageEvent, UsageSource, VirtualKey,
};

use crate::clock::now_ms;
use crate::http::response::BodyError;
use crate::http::route::Api;
use crate::limits::ADMISSION_RETRY_INTERVAL;
use crate::metrics::Counter;
use crate::providers::read::{ReadError, Reader, Reading};
use crate::providers::text::prompt_text;
use crate::routing::Serving;
use crate::state::Gateway;

/// An admitted call: everything needed to settle it and record it.
pub struct Ticket {
    /// The request path's handle: the emitter, metrics and rate limits the call settles into.
    pub gateway: Arc<Gateway>,
    /// The caller's key: who is charged, and whose tokens-per-minute limit is charged.
    pub key: Arc<VirtualKey>,
    /// The budget held for the call.
    pub reservation: Reservation,
    /// The most the call can cost: what a call whose usage cannot be known is billed, or its
    /// hold when that is less (a capped or stopped call never costs more than it held).
    pub bound: Nanos,
    /// The rate card the call is priced with (the one in force when it was admitted).
    pub card: Arc<RateCard>,
    /// The model, as the client named it (`provider/model`).
    pub model: ModelRef,
    /// The API the client called (the label of its request metrics).
    pub api: Api,
    /// The id the client was given in `x-request-id`, shared by every attempt of the call.
    pub request_id: Arc<str>,
    /// Which attempt at the upstream this is, from 1.
    pub attempt: u16,
    /// The deployment the attempt went to, as its event records it.
    pub deployment: Arc<str>,
    /// The attempt counted in its deployment's calls in flight until the ticket is done.
    pub serving: Option<Serving>,
    /// When the call reached the gateway.
    pub arrived: Instant,
    /// When it was sent upstream.
    pub sent: Instant,
    /// The client's body, for counting the prompt if the provider reports no usage.
    pub request_body: Bytes,
    /// What the prompt begins with, recorded on every event of the call.
    pub prompt_prefix: Option<PromptPrefix>,
    /// The status the upstream answered with (0 until it answers), passed to the client.
    pub http_status: u16,
    /// The in-flight slot, given back when the ticket is finished.
    pub permit: OwnedSemaphorePermit,
    /// Told the call's cost once it is settled: a whole answer waits for it to carry
    /// `x-tollgate-cost`.
    pub cost_to: Option<oneshot::Sender<Nanos>>,
}

/// How a call's tokens were known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measured {
    /// Reported by the provider.
    Provider(TokenUsage),
    /// Counted by the gateway.
    Counted(TokenUsage, Exactness),
    /// Not known: billed at the call's bound and flagged.
    Unknown,
    /// Nothing was generated (an upstream error answer).
    Nothing,
}

impl Ticket {
    /// Settles the call and queues its event.
    pub fn finish(self, status: Status, measured: Measured, ttft: Option<Duration>) {
        let Ticket {
            gateway,
            key,
            reservation,
            bound,
            card,
            model,
            api,
            request_id,
            attempt,
            deployment,
            serving,
            arrived,
            sent,
            request_body: _,
            prompt_prefix,
            http_status,
            permit,
            cost_to,
        } = self;

        let at = reservation.at();
        let (usage, source) = measured.usage();
        let bound = reservation
            .bounded_at()
            .map_or(bound, |held| held.min(bound));
        let (version, cost) = price(&card, &key, &model, &usage, measured, bound, at);
        let settlement = reservation.settle(cost.billed);
        if let Some(to) = cost_to {
            // The answer may be gone (the client hung up): then no one is told.
            to.send(cost.billed).ok();
        }
        // What the hold did not use is room for the next call in line.
        gateway.waiting.settled(&key.allocation.name);
        for crossed in settlement.soft_limits_crossed() {
            gateway.emitter.alert(crossed, at);
        }
        charge_tokens(&gateway, &key, &usage);
        gateway.guards.charge(&key, cost.billed);
        // The deployment's call ends here, however the answer ended, its tokens charged to
        // its quota.
        if let Some(serving) = serving {
            let total = usage.input.0.saturating_add(usage.output.0);
            serving.charge_tokens(gateway.monotonic_us(), total);
        }
        count_in_metrics(&gateway, api, status, &usage, source, cost.billed);
        gateway
            .metrics
            .upstream(millis(sent.elapsed()), ttft.map(millis));
        let now = crate::clock::now_ms();
        let event = UsageEvent {
            attempt,
            provider: Some(Arc::from(model.provider())),
            model: Some(Arc::from(model.model())),
            deployment: Some(deployment),
            tokens_in: usage.input,
            tokens_out: usage.output,
            tokens_cached: usage.cached,
            tokens_cache_write: usage.cache_write,
            tokens_reasoning: usage.reasoning,
            usage_source: source,
            list_cost_nanos: cost.list,
            cost_nanos: cost.billed,
            rate_card_version: version,
            ttft_ms: ttft.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
            latency_ms: Some(u32::try_from(arrived.elapsed().as_millis()).unwrap_or(u32::MAX)),
            status,
            http_status: Some(http_status),
            prompt_prefix,
            ..UsageEvent::new(
                gateway.event_id(now),
                EventKind::Tokens,
                at,
                request_id,
                Charged::key(&key),
                Arc::clone(&card.currency),
            )
        };
        gateway.emitter.usage(&event);
        drop(permit);
    }

    /// Records an attempt that failed before anything reached the client (an error status a
    /// retry may mend, no connection, no head in time) and readies the ticket for the next:
    /// the attempt's own usage event, with the provider's status, costing nothing (nothing
    /// was generated), under the call's request id.
    pub fn attempt_failed(&mut self, status: Status, http_status: u16) {
        let now = crate::clock::now_ms();
        let event = UsageEvent {
            attempt: self.attempt,
            provider: Some(Arc::from(self.model.provider())),
            model: Some(Arc::from(self.model.model())),
            deployment: Some(Arc::clone(&self.deployment)),
            latency_ms: Some(u32::try_from(self.sent.elapsed().as_millis()).unwrap_or(u32::MAX)),
            status,
            http_status: Some(http_status),
            prompt_prefix: self.prompt_prefix,
            ..UsageEvent::new(
                self.gateway.event_id(now),
                EventKind::Tokens,
                self.reservation.at(),
                Arc::clone(&self.request_id),
                Charged::key(&self.key),
                Arc::clone(&self.card.currency),
            )
        };
        self.gateway.emitter.usage(&event);
        self.gateway.metrics.add(Counter::AttemptsFailed, 1);
        self.serving = None;
        self.attempt = self.attempt.saturating_add(1);
        self.http_status = 0;
    }

    /// Counts what was sent and received (the provider reported no usage, or the client
    /// left before it did), off the async threads, then finishes.
    fn finish_counting(
        self,
        status: Status,
        output_text: String,
        beyond_bytes: u64,
        reported_input: Option<TokenUsage>,
        ttft: Option<Duration>,
    ) {
        let count = move |ticket: Ticket| {
            let (usage, exactness) = ticket.count(&output_text, beyond_bytes, reported_input);
            ticket.finish(status, Measured::Counted(usage, exactness), ttft);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                drop(handle.spawn_blocking(move || count(self)));
            }
            Err(_) => count(self),
        }
    }

    /// The call's tokens counted: the prompt from the client's body (unless the provider
    /// reported it), the output from the text streamed, kept up to a cap, and `beyond_bytes`
    /// past it. Slow on long text: never on an async thread.
    fn count(
        &self,
        output_text: &str,
        beyond_bytes: u64,
        reported_input: Option<TokenUsage>,
    ) -> (TokenUsage, Exactness) {
        let model = self.model.model();
        let (input, input_exactness) = match reported_input {
            Some(usage) => (usage, Exactness::Exact),
            None => {
                let (text, messages) = prompt_text(&self.request_body);
                let (tokens, exactness) = count_tokens(model, &text);
                // Chat framing: a few tokens per message and for the reply's priming.
                let framing = messages.saturating_mul(4).saturating_add(3);
                let total = tokens.0.saturating_add(framing);
                (TokenUsage::new(total, 0, 0, 0, 0), exactness)
            }
        };
        let (kept, output_exactness) = count_tokens(model, output_text);
        // Text past the kept part: at the density of the kept part (4 bytes a token if
        // nothing was kept).
        let beyond = if output_text.is_empty() {
            beyond_bytes.div_ceil(4)
        } else {
            let scaled = u128::from(beyond_bytes) * u128::from(kept.0);
            u64::try_from(scaled.div_ceil(output_text.len() as u128)).unwrap_or(u64::MAX)
        };
        let exact = input_exactness == Exactness::Exact
            && output_exactness == Exactness::Exact
            && beyond_bytes == 0;
        let exactness = if exact {
            Exactness::Exact
        } else {
            Exactness::Estimate
        };
        let usage = TokenUsage {
            output: Tokens(kept.0.saturating_add(beyond)),
            ..input
        };
        (usage, exactness)
    }
}

impl Measured {
    /// The tokens, and where they came from.
    fn usage(self) -> (TokenUsage, UsageSource) {
        match self {
            Measured::Provider(u) => (u, UsageSource::Provider),
            Measured::Counted(u, Exactness::Exact) => (u, UsageSource::Counted),
            Measured::Counted(u, Exactness::Estimate) => (u, UsageSource::Estimated),
            Measured::Unknown => (TokenUsage::default(), UsageSource::Unknown),
            Measured::Nothing => (TokenUsage::default(), UsageSource::None),
        }
    }
}

/// The call's cost in `card` and the version that priced it. Unknown usage is billed at the
/// call's bound, never at zero.
fn price(
    card: &RateCard,
    key: &VirtualKey,
    model: &ModelRef,
    usage: &TokenUsage,
    measured: Measured,
    bound: Nanos,
    at: UnixMs,
) -> (Option<Arc<str>>, Cost) {
    let project = &key.allocation.project;
    let at_bound = Cost {
        list: bound,
        billed: bound,
    };
    match card.price_tokens(model, usage, &project.team.name, &project.name, at) {
        Ok((version, _)) if measured == Measured::Unknown => {
            (Some(Arc::clone(&version.id)), at_bound)
        }
        Ok((version, cost)) => (Some(Arc::clone(&version.id)), cost),
        // Admission priced the model in this very card at this instant, so this does not
        // happen; were it to, what was held is billed rather than nothing.
        Err(_) => (None, at_bound),
    }
}

/// Counts a finished call in the metrics: its request, tokens, spend, and how its usage was
/// known.
fn count_in_metrics(
    gateway: &Gateway,
    api: Api,
    status: Status,
    usage: &TokenUsage,
    source: UsageSource,
    billed: Nanos,
) {
    let metrics = &gateway.metrics;
    metrics.request(Some(api), status);
    metrics.tokens(usage);
    metrics.add(Counter::SpendNanos, billed.0);
    match source {
        UsageSource::Unknown => metrics.add(Counter::UsageUnknown, 1),
        UsageSource::Counted | UsageSource::Estimated => metrics.add(Counter::UsageCounted, 1),
        UsageSource::Provider | UsageSource::None => {}
    }
}

/// Charges the call's tokens to the key's and the team's tokens-per-minute limits, and to this
/// replica's slices of them where replicas share them.
fn charge_tokens(gateway: &Gateway, key: &VirtualKey, usage: &TokenUsage) {
    let key_rates = gateway.key_rates(key);
    let team_rates = gateway.team_rates(&key.allocation.project.team.name);
    let total_tokens = usage.input.0.saturating_add(usage.output.0);
    for rates in [key_rates.as_deref(), team_rates].into_iter().flatten() {
        if let Some(tokens) = &rates.tokens {
            tokens.charge(gateway.monotonic_us(), total_tokens);
        }
        if let Some(shared) = &rates.shared_tokens {
            shared.slice.charge(now_ms().0, total_tokens);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a metered body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The upstream broke off.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The upstream went silent for longer than the idle timeout.
    #[error("upstream silent for {0:?}")]
    Idle(Duration),
    /// The answer could not be read on.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// One frame of a metered body, or why it stopped.
type FrameResult = Result<Frame<Bytes>, BodyError>;

/// The pieces gathered, as one frame.
fn emit(ready: Option<BytesMut>) -> Option<FrameResult> {
    ready.map(|r| Ok(Frame::data(r.freeze())))
}

/// Most bytes gathered from pieces the upstream has ready before they are sent on.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// Turns of the scheduler given in a row, each handing over nothing, before what is gathered
/// goes out. Measured with a burst the upstream's connection had read whole (hyper's client
/// hands the next piece over only some polls after it is woken): after one turn the next piece
/// was there for 5 % of the pieces, after two for all but a few in 10,000. A piece that really
/// is the last of its burst (a token of a paced stream) waits two turns, each a poll of this
/// body after the tasks already woken: microseconds, against a write to the client saved per
/// piece of a burst.
const GATHER_TURNS_MAX: u8 = 2;

/// An answer's body from the provider: as it arrives, or with its start already read (an
/// error answer routing had to look at to know whether the call should fall back), then the
/// rest as it comes. Nothing read is lost: what was read goes first, then what was not.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Still arriving.
    Live(Incoming),
    /// Its start read; `None` once handed on.
    Read(Option<Bytes>, Rest),
}

/// What follows the part of an answer routing read.
#[derive(Debug)]
pub enum Rest {
    /// The answer ended within what was read.
    Ended,
    /// More to come (past the cap routing reads, or slower than it waits).
    More(Incoming),
    /// The answer broke off while it was read: passed on after what arrived.
    Broke(hyper::Error),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Live(incoming) => Pin::new(incoming).poll_frame(cx),
            UpstreamBody::Read(read, rest) => {
                if let Some(bytes) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                match rest {
                    Rest::More(incoming) => Pin::new(incoming).poll_frame(cx),
                    Rest::Ended => Poll::Ready(None),
                    Rest::Broke(_) => match std::mem::replace(rest, Rest::Ended) {
                        Rest::Broke(e) => Poll::Ready(Some(Err(e))),
                        Rest::Ended | Rest::More(_) => Poll::Ready(None),
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Live(incoming) => incoming.is_end_stream(),
            UpstreamBody::Read(read, rest) => {
                read.is_none()
                    && match rest {
                        Rest::Ended => true,
                        Rest::More(incoming) => incoming.is_end_stream(),
                        Rest::Broke(_) => false,
                    }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Live(incoming) => incoming.size_hint(),
            UpstreamBody::Read(read, Rest::Ended) => {
                SizeHint::with_exact(read.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Read(..) => SizeHint::default(),
        }
    }
}

/// The upstream's body on its way to the client, read by the provider's [`Reader`].
pub struct Metered {
    /// `None` once the gateway has stopped the stream: dropping it closes the upstream
    /// request, so the provider stops generating.
    upstream: Option<UpstreamBody>,
    /// An upstream failure seen while pieces were gathered: sent after them, once hyper has
    /// had a chance to flush them (an error aborts the connection with what is unwritten).
    failed: Option<MeterError>,
    flushed_before_failing: bool,
    /// The provider answered with an error: nothing was generated, nothing is billed.
    error_answer: bool,
    reader: Box<dyn Reader>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    ticket: Option<Ticket>,
    ttft: Option<Duration>,
    /// A streamed call admitted with less than its bound held: its running cost, kept under
    /// the hold.
    budget: Option<StreamBudget>,
    /// Generated bytes the budget has counted.
    text_bytes_counted: u64,
    /// A stream whose generated bytes, when it ends on its own, teach what streams of its
    /// key and model generate.
    learns: bool,
    /// The largest piece's generated bytes so far.
    piece_bytes_max: u64,
    /// Held back while calls in flight hold the room its hold needs to grow.
    paused: Option<Paused>,
    /// The longest it is held back (`admission.extend_wait_ms_max`) before it is stopped.
    extend_wait: Duration,
    /// The gateway stopped the stream: the count of what was streamed, then the closing
    /// events.
    stopping: Stopping,
    /// Pieces gathered while the upstream's connection is given turns to hand over more (see
    /// [`Metered::poll_frame`]).
    gathered: Option<BytesMut>,
    /// Turns given in a row that handed over nothing; at `GATHER_TURNS_MAX` what is gathered
    /// goes out.
    turns_empty: u8,
}

/// A stream held back for room.
struct Paused {
    /// When to ask again.
    retry: Pin<Box<Sleep>>,
    /// When to stop asking and stop the stream.
    until: tokio::time::Instant,
}

/// Where a stream the gateway ends stands.
enum Stopping {
    /// Not stopped.
    No,
    /// Stopped: what was streamed is being counted (off the async threads), and the call is
    /// settled with that count; the closing events report it.
    Counting(JoinHandle<TokenUsage>),
    /// Stopped, and settled with the usage the provider had already reported.
    Counted(TokenUsage),
    /// The closing events are sent.
    Closed,
}

/// How an answer is metered, besides its reader.
pub struct Metering {
    /// The provider answered with an error status: nothing was generated, nothing is billed.
    pub error_answer: bool,
    /// The longest the upstream may go silent.
    pub idle_timeout: Duration,
    /// A stream held short of its bound: its running cost, kept under its hold.
    pub budget: Option<StreamBudget>,
    /// A stream that can be stopped: what it generates, when it ends on its own, is learned.
    pub learns: bool,
    /// The longest a stream is held back for room to grow its hold before it is stopped.
    pub extend_wait: Duration,
}

impl Metered {
    /// Meters `upstream` for `ticket` with the provider's `reader`, as `metering` says.
    #[must_use]
    pub fn new(
        upstream: UpstreamBody,
        ticket: Ticket,
        reader: Box<dyn Reader>,
        metering: Metering,
    ) -> Metered {
        let Metering {
            error_answer,
            idle_timeout,
            budget,
            learns,
            extend_wait,
        } = metering;
        Metered {
            upstream: Some(upstream),
            failed: None,
            flushed_before_failing: false,
            error_answer,
            reader,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            ticket: Some(ticket),
            ttft: None,
            budget,
            text_bytes_counted: 0,
            learns,
            piece_bytes_max: 0,
            paused: None,
            extend_wait,
            stopping: Stopping::No,
            gathered: None,
            turns_empty: 0,
        }
    }

    /// Handles one piece of upstream body; returns what to send on (possibly nothing).
    fn take(&mut self, data: Bytes) -> Result<Option<Bytes>, ReadError> {
        let pushed = self.reader.push(data)?;
        if pushed.text && self.ttft.is_none() {
            self.ttft = self.ticket.as_ref().map(|t| t.sent.elapsed());
        }
        self.keep_within_budget();
        Ok(pushed.out)
    }

    /// Counts the piece's generated bytes (for what streams generate, and against the call's
    /// hold, extending it as needed); see [`Metered::follow`] for what the hold says.
    fn keep_within_budget(&mut self) {
        if !self.learns && self.budget.is_none() {
            return;
        }
        let text_bytes = self.reader.text_bytes();
        let piece = text_bytes.saturating_sub(self.text_bytes_counted);
        if piece == 0 {
            return;
        }
        self.text_bytes_counted = text_bytes;
        self.piece_bytes_max = self.piece_bytes_max.max(piece);
        let (Some(budget), Some(ticket)) = (&mut self.budget, &mut self.ticket) else {
            return;
        };
        let next = budget.take(&mut ticket.reservation, piece);
        self.follow(next);
    }

    /// Does what the hold says: go on; hold the stream back (no upstream piece is read) while
    /// calls in flight hold the room it needs, asking again every `ADMISSION_RETRY_INTERVAL`
    /// for up to `admission.extend_wait_ms_max`; or stop it.
    fn follow(&mut self, next: Next) {
        let now = tokio::time::Instant::now();
        match (next, &mut self.paused) {
            (Next::Go, paused) => {
                if paused.take().is_some() {
                    self.idle.as_mut().reset(now + self.idle_timeout);
                }
            }
            (Next::Wait, Some(paused)) if now < paused.until => {
                paused.retry.as_mut().reset(now + ADMISSION_RETRY_INTERVAL);
            }
            (Next::Wait, None) if !self.extend_wait.is_zero() => {
                if let Some(ticket) = &self.ticket {
                    ticket.gateway.metrics.add(Counter::BudgetStreamWaited, 1);
                }
                self.paused = Some(Paused {
                    retry: Box::pin(tokio::time::sleep(ADMISSION_RETRY_INTERVAL)),
                    until: now + self.extend_wait,
                });
            }
            (Next::Wait | Next::Stop, _) => self.stop(),
        }
    }

    /// A stream held back for room: `None` once it may go on (or was never held), else how
    /// the wait stands.
    fn poll_paused(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<FrameResult>>> {
        let paused = self.paused.as_mut()?;
        if paused.retry.as_mut().poll(cx).is_pending() {
            return Some(Poll::Pending);
        }
        let next = match (&mut self.budget, &mut self.ticket) {
            (Some(budget), Some(ticket)) => budget.retry(&mut ticket.reservation),
            _ => Next::Go,
        };
        self.follow(next);
        if let Some(stopping) = self.poll_stopping(cx) {
            return Some(stopping);
        }
        let paused = self.paused.as_mut()?;
        // Armed again: polled once so its timer wakes this body.
        match paused.retry.as_mut().poll(cx) {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(()) => {
                cx.waker().wake_by_ref();
                Some(Poll::Pending)
            }
        }
    }

    /// Stops the stream: the upstream request is closed (the provider stops generating), what
    /// was streamed is counted off the async threads and settled, and the closing events
    /// follow what is ready.
    fn stop(&mut self) {
        self.paused = None;
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        self.upstream = None;
        self.budget = None;
        ticket.gateway.metrics.add(Counter::BudgetStopped, 1);
        let ttft = self.ttft;
        let counted = match self.reader.reading() {
            Reading::Reported(usage) => {
                ticket.finish(Status::Ok, Measured::Provider(usage), ttft);
                self.stopping = Stopping::Counted(usage);
                return;
            }
            Reading::Text {
                text,
                beyond_bytes,
                input,
            } => tokio::task::spawn_blocking(move || {
                let (usage, exactness) = ticket.count(&text, beyond_bytes, input);
                ticket.finish(Status::Ok, Measured::Counted(usage, exactness), ttft);
                usage
            }),
            Reading::Unreadable => tokio::task::spawn_blocking(move || {
                let (usage, exactness) = ticket.count("", 0, None);
                ticket.finish(Status::Ok, Measured::Counted(usage, exactness), ttft);
                usage
            }),
        };
        self.stopping = Stopping::Counting(counted);
    }

    /// A stream the gateway stopped: once its count is in, the closing events, then the end.
    fn poll_stopping(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<FrameResult>>> {
        let usage = match &mut self.stopping {
            Stopping::No => return None,
            Stopping::Closed => return Some(Poll::Ready(None)),
            Stopping::Counted(usage) => *usage,
            Stopping::Counting(counted) => match Pin::new(counted).poll(cx) {
                Poll::Pending => return Some(Poll::Pending),
                // Were the count's task to fail, the hold is given back and the stream
                // closes without counts.
                Poll::Ready(counted) => counted.unwrap_or_default(),
            },
        };
        self.stopping = Stopping::Closed;
        let closing = self.reader.stop(&usage).unwrap_or_default();
        Some(Poll::Ready(Some(Ok(Frame::data(closing)))))
    }

    /// A failure seen while pieces were gathered, sent once hyper has flushed them: first a
    /// `Pending` (hyper flushes what it holds; the wake brings it straight back), then the error.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<FrameResult>>> {
        self.failed.as_ref()?;
        if !self.flushed_before_failing {
            self.flushed_before_failing = true;
            cx.waker().wake_by_ref();
            return Some(Poll::Pending);
        }
        let failure = self.failed.take()?;
        Some(Poll::Ready(Some(Err(failure.into()))))
    }

    /// A failure after the pieces in `ready`: they still reach the client, and the failure
    /// follows them (see [`Metered::poll_failure`]).
    fn fail_after(
        &mut self,
        ready: Option<BytesMut>,
        failure: MeterError,
    ) -> Poll<Option<FrameResult>> {
        if ready.is_some() {
            self.failed = Some(failure);
            Poll::Ready(emit(ready))
        } else {
            Poll::Ready(Some(Err(failure.into())))
        }
    }

    /// The upstream's body ended whole: what the reader still holds (a translated stream's
    /// last events) joins what is ready, and the ticket is finished.
    fn end_of_stream(&mut self, mut ready: Option<BytesMut>) -> Option<BytesMut> {
        if self.ticket.is_some()
            && let Some(tail) = self.reader.finish()
        {
            ready
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(&tail);
        }
        self.end(Status::Ok);
        ready
    }

    /// Finishes the ticket with how the body ended.
    fn end(&mut self, status: Status) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let ttft = self.ttft;
        if self.error_answer {
            ticket.finish(Status::UpstreamError, Measured::Nothing, None);
            return;
        }
        if self.learns && status == Status::Ok {
            // What a hold must cover for a stream like it to go on unextended: what it
            // generated and one more piece as large as its largest.
            let needed = self
                .reader
                .text_bytes()
                .saturating_add(self.piece_bytes_max);
            ticket
                .gateway
                .expected
                .record(&ticket.key, &ticket.model, needed);
        }
        match self.reader.reading() {
            Reading::Reported(usage) => ticket.finish(status, Measured::Provider(usage), ttft),
            Reading::Text {
                text,
                beyond_bytes,
                input,
            } => ticket.finish_counting(status, text, beyond_bytes, input, ttft),
            // A whole answer that said nothing readable is billed at its bound.
            Reading::Unreadable if status == Status::Ok => {
                ticket.finish(status, Measured::Unknown, ttft);
            }
            // Cut off before a whole answer arrived: bill the prompt as sent.
            Reading::Unreadable => ticket.finish_counting(status, String::new(), 0, None, ttft),
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(failing) = this.poll_failure(cx) {
            return failing;
        }
        if let Some(stopping) = this.poll_stopping(cx) {
            return stopping;
        }
        // Pieces the upstream has ready now are sent as one: fewer writes when it bursts. The
        // upstream's connection runs as a task of its own and hands over one piece at a time,
        // so a burst it has read whole (a stream's events, each an HTTP chunk) arrives here
        // piece by piece: when nothing more is ready, the connection is given turns of the
        // scheduler to hand over the next before what is gathered goes out. Without them every
        // event is a write of its own to the client, the most expensive thing a stream does.
        let mut ready: Option<BytesMut> = this.gathered.take();
        loop {
            if this.paused.is_some() {
                // Held back for room: what is ready goes first; no upstream piece is read.
                if ready.is_some() {
                    return Poll::Ready(emit(ready));
                }
                if let Some(waiting) = this.poll_paused(cx) {
                    return waiting;
                }
            }
            let Some(upstream) = this.upstream.as_mut() else {
                // Stopped by the budget: what is ready goes first, the closing events next.
                if ready.is_some() {
                    return Poll::Ready(emit(ready));
                }
                return this.poll_stopping(cx).unwrap_or(Poll::Ready(None));
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: not forwarded over HTTP/1.1
                    };
                    this.turns_empty = 0;
                    match this.take(data) {
                        Ok(Some(out)) => {
                            let buffer = ready.get_or_insert_with(BytesMut::new);
                            buffer.extend_from_slice(&out);
                            if buffer.len() >= COALESCE_BYTES_MAX {
                                return Poll::Ready(emit(ready));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            this.end(Status::UpstreamError);
                            return this.fail_after(ready, e.into());
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(Status::UpstreamError);
                    return this.fail_after(ready, MeterError::Upstream(e));
                }
                Poll::Ready(None) => {
                    let ready = this.end_of_stream(ready);
                    return Poll::Ready(emit(ready));
                }
                // An answer of known length has all arrived: it ends here, without waiting
                // for the upstream's connection to close the body (or gathering for more).
                Poll::Pending if this.upstream.as_ref().is_some_and(Body::is_end_stream) => {
                    let ready = this.end_of_stream(ready);
                    return Poll::Ready(emit(ready));
                }
                Poll::Pending if ready.is_some() => {
                    if this.turns_empty >= GATHER_TURNS_MAX {
                        this.turns_empty = 0;
                        return Poll::Ready(emit(ready));
                    }
                    this.turns_empty += 1;
                    this.gathered = ready;
                    // Woken at once, this body runs again after the tasks already woken, the
                    // upstream's connection among them.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.end(Status::UpstreamTimeout);
                        let idle = MeterError::Idle(this.idle_timeout);
                        return Poll::Ready(Some(Err(idle.into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.upstream, &self.stopping) {
            (Some(upstream), Stopping::No) => {
                self.ticket.is_none() && self.gathered.is_none() && upstream.is_end_stream()
            }
            (_, Stopping::Closed) => true,
            (None, _) | (_, Stopping::Counting(_) | Stopping::Counted(_)) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.upstream, self.reader.rewritten_as()) {
            (Some(upstream), None) => upstream.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client hung up (or the connection broke) before the end: bill what was streamed.
        self.end(Status::ClientClosed);
    }
}

/// An event for a call that never reached a model (or failed before an answer): identity as
/// far as it is known, no cost.
#[must_use]
#[expect(
    clippy::too_many_arguments,
    reason = "one field per known fact about a refused call"
)]
pub fn refusal_event(
    gateway: &Gateway,
    now: UnixMs,
    request_id: Arc<str>,
    key: Option<&VirtualKey>,
    model: Option<&ModelRef>,
    status: Status,
    http_status: u16,
    latency: Duration,
) -> UsageEvent {
    let card = gateway.card.load();
    let charged = key.map_or_else(Charged::default, Charged::key);
    UsageEvent {
        provider: model.map(|m| Arc::from(m.provider())),
        model: model.map(|m| Arc::from(m.model())),
        latency_ms: Some(u32::try_from(latency.as_millis()).unwrap_or(u32::MAX)),
        status,
        http_status: Some(http_status),
        ..UsageEvent::new(
            gateway.event_id(now),
            EventKind::Tokens,
            now,
            request_id,
            charged,
            Arc::clone(&card.currency),
        )
    }
}
