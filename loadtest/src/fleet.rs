//! Runs a scenario's agents against one target and records every attempt.
//!
//! Latency runs from when a call was due (open loop: its scheduled instant, so a stalled target
//! cannot hide behind a slower generator) or sent (closed loop) to the last byte of the answer;
//! time to first token is the first body byte of a streamed answer. Every attempt is kept for
//! the books: its allocation, the gateway's request id, its status, and the cost the harness
//! computed itself from the usage in the answer and the prices the gateway publishes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::http::Client;
use crate::scenario::{Api, Call, Load, Scenario};

/// Longest an attempt may take before the agent hangs up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer an agent reads (longer answers are cut and counted as broken).
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest wait a `Retry-After` can impose on a retry.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// Highest latency a histogram records exactly (higher values saturate), in microseconds.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Where the calls go.
#[derive(Clone, Debug)]
pub struct Target {
    /// `gateway`, `direct` or `proxy`.
    pub name: &'static str,
    /// Base URL including `/v1` (`http://127.0.0.1:8080/v1`).
    pub base_url: String,
    /// The gateway takes `provider/model`; a provider called direct takes `model`.
    pub provider_prefixed: bool,
}

/// One agent: the allocation it charges and the key it presents.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Index into [`Plan::allocations`].
    pub allocation: u16,
    /// The key (a tollgate virtual key, or anything for a provider called direct).
    pub key: Arc<str>,
    /// A runaway agent: it sends its first call again and again, word for word.
    pub looping: bool,
}

/// What the harness prices with: the gateway's published prices and each allocation's
/// adjustment.
#[derive(Clone, Debug, Default)]
pub struct Prices {
    /// `provider/model` to nano-units per million input and output tokens.
    pub models: BTreeMap<String, (u64, u64)>,
    /// Markup (+) or discount (-) in parts per million, per allocation index.
    pub adjustment_ppm: Vec<i64>,
}

impl Prices {
    /// The billed cost in nano-units of `usage` on `model` for allocation `allocation`, rounded
    /// once and upward, as the rate card's rule says; `None` when the harness cannot price it
    /// (unknown model, or cached or reasoning tokens it has no prices for).
    #[must_use]
    pub fn cost_nanos(&self, model: &str, usage: &Usage, allocation: u16) -> Option<u128> {
        if usage.cached != 0 || usage.reasoning != 0 {
            return None;
        }
        let &(input, output) = self.models.get(model)?;
        let ppm = *self.adjustment_ppm.get(usize::from(allocation))?;
        let sum = u128::from(usage.input) * u128::from(input)
            + u128::from(usage.output) * u128::from(output);
        let numerator = u128::try_from(1_000_000 + i128::from(ppm)).ok()?;
        let scaled = sum.checked_mul(numerator)?;
        Some(scaled.div_ceil(1_000_000_000_000))
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// Where the calls go.
    pub target: Target,
    /// The agents.
    pub agents: Vec<Agent>,
    /// Allocation names, as the gateway knows them.
    pub allocations: Vec<String>,
    /// Prices for the books (gateway runs).
    pub prices: Option<Prices>,
    /// How long the load runs (recorded).
    pub duration: Duration,
    /// Unrecorded lead-in.
    pub warmup: Duration,
    /// Print a line of figures to stderr every second.
    pub progress: bool,
}

/// Token counts read from an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (cached ones included).
    pub input: u64,
    /// Completion tokens (reasoning included).
    pub output: u64,
    /// Cached prompt tokens.
    pub cached: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
}

/// One attempt, for the books.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Allocation index.
    pub allocation: u16,
    /// Agent index, into [`Plan::agents`].
    pub agent: u32,
    /// A spend guard refused it (the error names a `guard`).
    pub guarded: bool,
    /// The gateway's `x-request-id`.
    pub request_id: Option<Box<str>>,
    /// HTTP status; 0 when no answer came.
    pub status: u16,
    /// The answer ended early (connection broken, timed out, cut).
    pub broken: bool,
    /// Usage the answer reported.
    pub usage: Option<Usage>,
    /// The harness's own price of it (2xx answers with usage it can price).
    pub cost_nanos: Option<u128>,
}

/// One second of the run.
#[derive(Clone, Debug)]
pub struct Second {
    /// Answers 2xx.
    pub ok: u64,
    /// Other outcomes.
    pub failed: u64,
    /// Latency of the 2xx answers, in microseconds.
    pub latency_us: Histogram<u64>,
}

/// What a run recorded.
#[derive(Debug)]
pub struct Record {
    /// The recorded window.
    pub elapsed: Duration,
    /// Latency of 2xx answers in the window, microseconds.
    pub latency_us: Histogram<u64>,
    /// Time to the first body byte of streamed 2xx answers, microseconds.
    pub ttft_us: Histogram<u64>,
    /// Outcomes by status in the window (0 = no answer).
    pub statuses: BTreeMap<u16, u64>,
    /// Calls by API in the window.
    pub apis: BTreeMap<&'static str, u64>,
    /// Retries made.
    pub retries: u64,
    /// Answers cut short (broken connections, timeouts).
    pub broken: u64,
    /// Open loop: calls that were due but not sent (too many in flight).
    pub not_sent: u64,
    /// 2xx answers to calls sent in the recorded window.
    pub ok: u64,
    /// Per second of the recorded window, by when answers completed (the last bucket also
    /// holds answers that completed after the window).
    pub seconds: Vec<Second>,
    /// Every attempt, recorded window or not.
    pub attempts: Vec<Attempt>,
}

impl Record {
    fn new(seconds: usize) -> Record {
        Record {
            elapsed: Duration::ZERO,
            latency_us: histogram(3),
            ttft_us: histogram(3),
            statuses: BTreeMap::new(),
            apis: BTreeMap::new(),
            retries: 0,
            broken: 0,
            not_sent: 0,
            ok: 0,
            seconds: (0..seconds)
                .map(|_| Second {
                    ok: 0,
                    failed: 0,
                    latency_us: histogram(2),
                })
                .collect(),
            attempts: Vec::new(),
        }
    }

    /// 2xx answers per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }
}

#[expect(
    clippy::expect_used,
    reason = "bounds and precision are constants within hdrhistogram's range"
)]
fn histogram(significant: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, significant).expect("valid histogram bounds")
}

struct Shared {
    plan: Plan,
    client: Client,
    record: Mutex<Record>,
    /// Start of the recorded window.
    start: Instant,
    /// No new calls after this.
    end: Instant,
    sent: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fast deterministic generator (SplitMix64), one per agent.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u32, high: u32) -> u32 {
        let span = u64::from(high.saturating_sub(low)) + 1;
        low + u32::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u8) -> bool {
        self.next_u64() % 100 < u64::from(percent)
    }
}

/// An agent's place in its task.
#[derive(Clone, Debug)]
struct TaskState {
    rng: Rng,
    steps_left: u32,
    context_tokens: u32,
    /// The agent's seed, and the tasks it began: each task's work is its own text.
    seed: u64,
    tasks: u64,
    /// A looping agent's one call, once drawn: it sends nothing else.
    looping: Option<Option<Step>>,
}

impl TaskState {
    fn new(seed: u64, looping: bool) -> TaskState {
        TaskState {
            rng: Rng::new(seed),
            steps_left: 0,
            context_tokens: 0,
            seed,
            tasks: 0,
            looping: looping.then_some(None),
        }
    }

    /// The next call of this agent: of its current task (starting a new task when one ended),
    /// or a looping agent's first call again.
    fn next(&mut self, scenario: &Scenario) -> Step {
        match self.looping {
            None => self.draw(scenario),
            Some(Some(step)) => step,
            Some(None) => {
                // Its luck with the provider is fixed too: the loop is the agent's, not a
                // retry of a failure.
                let step = Step {
                    error: false,
                    reset: false,
                    ..self.draw(scenario)
                };
                self.looping = Some(Some(step));
                step
            }
        }
    }

    fn draw(&mut self, scenario: &Scenario) -> Step {
        let task = &scenario.task;
        if self.steps_left == 0 {
            self.steps_left = self.rng.between(task.steps_min, task.steps_max);
            self.context_tokens = task.context_tokens_start;
            self.tasks += 1;
        } else {
            self.context_tokens = self
                .context_tokens
                .saturating_add(task.context_tokens_step)
                .min(task.context_tokens_max);
        }
        self.steps_left -= 1;
        let total: u64 = scenario.calls.iter().map(|c| u64::from(c.weight)).sum();
        let mut pick = self.rng.next_u64() % total.max(1);
        let mut call = 0;
        for (index, c) in scenario.calls.iter().enumerate() {
            if pick < u64::from(c.weight) {
                call = index;
                break;
            }
            pick -= u64::from(c.weight);
        }
        let shape = &scenario.calls[call];
        let stream = shape.api != Api::Embeddings && self.rng.percent(shape.stream_percent);
        let error = self.rng.percent(scenario.mock.error_percent);
        let reset = stream && self.rng.percent(scenario.mock.reset_percent);
        Step {
            call,
            stream,
            // Two agents (or two tasks of one) never work on the same text, as in life: what
            // tells a loop from work is that the work moves on.
            task: self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.tasks,
            context_tokens: self.context_tokens,
            error,
            reset,
        }
    }

    fn abandon(&mut self) {
        self.steps_left = 0;
    }
}

/// One call an agent makes.
#[derive(Clone, Copy, Debug)]
struct Step {
    call: usize,
    stream: bool,
    /// Which task of which agent the step is of: the first bytes of its context.
    task: u64,
    context_tokens: u32,
    error: bool,
    reset: bool,
}

/// What one call came to, after retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallEnd {
    Done,
    BudgetExceeded,
}

/// Runs the plan and returns what it recorded.
pub async fn run(plan: Plan, client: Client) -> Record {
    let seconds = usize::try_from(plan.duration.as_secs()).unwrap_or(0) + 1;
    let start = Instant::now() + plan.warmup;
    let end = start + plan.duration;
    let shared = Arc::new(Shared {
        client,
        record: Mutex::new(Record::new(seconds)),
        start,
        end,
        sent: AtomicU64::new(0),
        plan,
    });
    let done = Arc::new(AtomicBool::new(false));
    let ticker = shared
        .plan
        .progress
        .then(|| tokio::spawn(progress(Arc::clone(&shared), Arc::clone(&done))));
    match shared.plan.scenario.load {
        Load::Closed => closed(&shared).await,
        Load::Open {
            rate_per_s,
            in_flight_max,
        } => open(&shared, rate_per_s, in_flight_max).await,
    }
    done.store(true, Ordering::Relaxed);
    if let Some(ticker) = ticker {
        let _ = ticker.await;
    }
    let mut record = std::mem::replace(&mut *shared.lock(), Record::new(0));
    record.elapsed = Instant::now().min(end).saturating_duration_since(start);
    let whole = usize::try_from(record.elapsed.as_secs()).unwrap_or(0);
    // A last second cut short would read as a dip in throughput: only whole seconds are kept.
    record.seconds.truncate(whole.max(1));
    record
}

async fn closed(shared: &Arc<Shared>) {
    let mut agents = Vec::with_capacity(shared.plan.agents.len());
    for index in 0..shared.plan.agents.len() {
        let shared = Arc::clone(shared);
        agents.push(tokio::spawn(async move {
            let scenario = Arc::clone(&shared.plan.scenario);
            let agent = shared.plan.agents[index].clone();
            let mut state = TaskState::new(
                scenario.seed ^ (index as u64).wrapping_mul(0x9E37),
                agent.looping,
            );
            // Agents start spread over the first think interval, as a fleet does.
            let think = Duration::from_millis(u64::from(scenario.fleet.think_ms));
            if !think.is_zero() {
                let offset = state.rng.next_u64() % (think.as_micros() as u64).max(1);
                tokio::time::sleep(Duration::from_micros(offset)).await;
            }
            while Instant::now() < shared.end {
                let step = state.next(&scenario);
                let due = Instant::now();
                let at = Caller {
                    agent: &agent,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                };
                if call(&shared, at, step, due).await == CallEnd::BudgetExceeded {
                    state.abandon();
                    let pause = u64::from(scenario.fleet.budget_pause_ms);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                } else if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
        }));
    }
    for agent in agents {
        let _ = agent.await;
    }
}

async fn open(shared: &Arc<Shared>, rate_per_s: u32, in_flight_max: u32) {
    let scenario = Arc::clone(&shared.plan.scenario);
    let states: Arc<Vec<Mutex<TaskState>>> = Arc::new(
        (0..shared.plan.agents.len())
            .map(|i| {
                Mutex::new(TaskState::new(
                    scenario.seed ^ (i as u64).wrapping_mul(0x9E37),
                    shared.plan.agents[i].looping,
                ))
            })
            .collect(),
    );
    let permits = Arc::new(Semaphore::new(in_flight_max as usize));
    let origin = Instant::now();
    let interval_ns = 1_000_000_000 / u64::from(rate_per_s.max(1));
    let mut index: u64 = 0;
    loop {
        let due = origin + Duration::from_nanos(index.saturating_mul(interval_ns));
        if due >= shared.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let agent_index = usize::try_from(index % shared.plan.agents.len() as u64).unwrap_or(0);
        index += 1;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if due >= shared.start {
                shared.lock().not_sent += 1;
            }
            continue;
        };
        let step = {
            let mut state = states[agent_index]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.next(&scenario)
        };
        let shared = Arc::clone(shared);
        let states = Arc::clone(&states);
        tokio::spawn(async move {
            let agent = shared.plan.agents[agent_index].clone();
            let at = Caller {
                agent: &agent,
                index: u32::try_from(agent_index).unwrap_or(u32::MAX),
            };
            if call(&shared, at, step, due).await == CallEnd::BudgetExceeded {
                states[agent_index]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .abandon();
            }
            drop(permit);
        });
    }
    // Every call in flight finishes (each attempt is bounded by its timeout).
    let _ = permits.acquire_many(in_flight_max).await;
}

/// Who makes a call: the agent and its index in the plan.
#[derive(Clone, Copy)]
struct Caller<'a> {
    agent: &'a Agent,
    index: u32,
}

/// One call with its retries.
async fn call(shared: &Shared, caller: Caller<'_>, step: Step, due: Instant) -> CallEnd {
    let scenario = &shared.plan.scenario;
    let shape = &scenario.calls[step.call];
    let mut body = request_body(shape, step, &shared.plan.target, scenario);
    let mut backoff = Duration::from_millis(u64::from(scenario.retry.backoff_ms));
    for attempt in 1..=scenario.retry.attempts_max {
        let sent_at = if attempt == 1 { due } else { Instant::now() };
        if attempt == 2 && (step.error || step.reset) {
            // The provider's failure was this attempt's luck, not the call's: a retry draws anew
            // (here: succeeds), as it would against a real provider.
            let retry = Step {
                error: false,
                reset: false,
                ..step
            };
            body = request_body(shape, retry, &shared.plan.target, scenario);
        }
        let outcome = send(shared, caller, shape, step.stream, body.clone()).await;
        let latency = sent_at.elapsed();
        let retryable = matches!(outcome.attempt.status, 0 | 429 | 500 | 502 | 503 | 504)
            || outcome.attempt.broken;
        let last = attempt == scenario.retry.attempts_max;
        let status = outcome.attempt.status;
        record(shared, shape.api, step.stream, sent_at, latency, &outcome);
        if status == 402 {
            return CallEnd::BudgetExceeded;
        }
        if !retryable || last || Instant::now() >= shared.end {
            return CallEnd::Done;
        }
        shared.lock().retries += 1;
        let wait = outcome
            .retry_after
            .map_or(backoff, |after| after.max(backoff))
            .min(RETRY_AFTER_MAX);
        tokio::time::sleep(wait).await;
        backoff = backoff.saturating_mul(2);
    }
    CallEnd::Done
}

/// An attempt's outcome with its timings.
struct Outcome {
    attempt: Attempt,
    first_byte: Option<Duration>,
    retry_after: Option<Duration>,
}

/// Sends one attempt of `call` for `agent` and waits for its whole answer (at most
/// [`ATTEMPT_TIMEOUT`]), then prices it from the usage it reports.
async fn send(
    shared: &Shared,
    caller: Caller<'_>,
    call: &Call,
    stream: bool,
    body: Bytes,
) -> Outcome {
    let agent = caller.agent;
    let mut attempt = Attempt {
        allocation: agent.allocation,
        agent: caller.index,
        guarded: false,
        request_id: None,
        status: 0,
        broken: false,
        usage: None,
        cost_nanos: None,
    };
    let Ok(request) = request(&shared.plan.target, agent, call, body) else {
        attempt.broken = true;
        return Outcome {
            attempt,
            first_byte: None,
            retry_after: None,
        };
    };
    shared.sent.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let mut seen = Seen::default();
    // On a timeout the exchange is dropped; what it saw of the answer until then stays in
    // `seen`.
    let answer = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        exchange(&shared.client, request, started, &mut seen),
    )
    .await
    .ok()
    .flatten();
    attempt.status = seen.status;
    attempt.request_id = seen.request_id;
    match answer {
        // No answer at all (status 0), or one that broke off: its cost is the gateway's to say.
        None => attempt.broken = attempt.status != 0 || attempt.request_id.is_some(),
        Some(answer) if (200..300).contains(&attempt.status) => {
            attempt.usage = if stream {
                usage_of_stream(&answer)
            } else {
                serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| usage_of(&v))
            };
            if let (Some(usage), Some(prices)) = (&attempt.usage, &shared.plan.prices) {
                attempt.cost_nanos = prices.cost_nanos(&call.model, usage, agent.allocation);
            }
        }
        Some(answer) => {
            // A refusal or a provider error costs nothing.
            attempt.cost_nanos = Some(0);
            attempt.guarded = matches!(attempt.status, 403 | 429)
                && serde_json::from_slice::<Value>(&answer)
                    .is_ok_and(|v| v["error"]["guard"].is_string());
        }
    }
    Outcome {
        attempt,
        first_byte: if stream { seen.first_byte } else { None },
        retry_after: seen.retry_after,
    }
}

/// The request of one attempt: the call's path on the target, its body, and the agent's key
/// where the call's API expects it.
fn request(
    target: &Target,
    agent: &Agent,
    call: &Call,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let url = format!("{}{}", target.base_url, call.api.path());
    let builder = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    let builder = if call.api == Api::Messages {
        builder
            .header("x-api-key", &*agent.key)
            .header("anthropic-version", "2023-06-01")
    } else {
        builder.header(header::AUTHORIZATION, format!("Bearer {}", agent.key))
    };
    builder.body(Full::new(body))
}

/// What an exchange saw of its answer, as it went: kept when it is cut short.
#[derive(Default)]
struct Seen {
    /// HTTP status; 0 until the head arrives.
    status: u16,
    /// The gateway's `x-request-id`.
    request_id: Option<Box<str>>,
    /// `Retry-After`, in whole seconds.
    retry_after: Option<Duration>,
    /// When the first byte of the body arrived, from `started`.
    first_byte: Option<Duration>,
}

/// Sends `request` and reads its whole body (at most [`ANSWER_BYTES_MAX`]), noting the head
/// and the first byte in `seen`; `None` when no answer came or it broke off.
async fn exchange(
    client: &Client,
    request: Request<Full<Bytes>>,
    started: Instant,
    seen: &mut Seen,
) -> Option<Vec<u8>> {
    let response = client.request(request).await.ok()?;
    seen.status = response.status().as_u16();
    seen.request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(Into::into);
    seen.retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = response.into_body();
    let mut answer: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if seen.first_byte.is_none() && !data.is_empty() {
                        seen.first_byte = Some(started.elapsed());
                    }
                    if answer.len() + data.len() > ANSWER_BYTES_MAX {
                        return None;
                    }
                    answer.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return None,
        }
    }
    Some(answer)
}

fn record(
    shared: &Shared,
    api: Api,
    stream: bool,
    sent_at: Instant,
    latency: Duration,
    outcome: &Outcome,
) {
    let mut record = shared.lock();
    record.attempts.push(outcome.attempt.clone());
    if sent_at < shared.start || sent_at >= shared.end {
        return;
    }
    // The timeline counts answers when they complete (answers per second), not when sent.
    let second = usize::try_from(Instant::now().duration_since(shared.start).as_secs())
        .unwrap_or(usize::MAX);
    let ok = (200..300).contains(&outcome.attempt.status) && !outcome.attempt.broken;
    if ok {
        record.ok += 1;
    }
    *record.statuses.entry(outcome.attempt.status).or_insert(0) += 1;
    *record.apis.entry(api.as_str()).or_insert(0) += 1;
    if outcome.attempt.broken {
        record.broken += 1;
    }
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    if ok {
        record.latency_us.saturating_record(micros);
        if let (true, Some(first)) = (stream, outcome.first_byte) {
            let first = u64::try_from(first.as_micros()).unwrap_or(u64::MAX).max(1);
            record.ttft_us.saturating_record(first);
        }
    }
    let last = record.seconds.len().saturating_sub(1);
    if let Some(bucket) = record.seconds.get_mut(second.min(last)) {
        if ok {
            bucket.ok += 1;
            bucket.latency_us.saturating_record(micros);
        } else {
            bucket.failed += 1;
        }
    }
}

async fn progress(shared: Arc<Shared>, done: Arc<AtomicBool>) {
    let total = shared.plan.duration.as_secs();
    let mut shown = 0u64;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if now < shared.start {
            continue;
        }
        let second = now.duration_since(shared.start).as_secs();
        if second == shown || second > total {
            continue;
        }
        shown = second;
        let line = {
            let record = shared.lock();
            let Some(last) = second
                .checked_sub(1)
                .and_then(|s| record.seconds.get(usize::try_from(s).unwrap_or(usize::MAX)))
            else {
                continue;
            };
            let errors: Vec<String> = record
                .statuses
                .iter()
                .filter(|(status, _)| !(200..300).contains(*status))
                .map(|(status, n)| format!("{}:{n}", status_name(*status)))
                .collect();
            format!(
                "[{}] {second:>3}/{total}s  {:>6} ok/s  p50 {}  p99 {}  sent {}  {}",
                shared.plan.target.name,
                last.ok,
                millis(last.latency_us.value_at_quantile(0.50)),
                millis(last.latency_us.value_at_quantile(0.99)),
                shared.sent.load(Ordering::Relaxed),
                if errors.is_empty() {
                    "no errors".to_owned()
                } else {
                    errors.join(" ")
                },
            )
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// A status for people: `402`, or `no-answer` for 0.
#[must_use]
pub fn status_name(status: u16) -> String {
    if status == 0 {
        "no-answer".to_owned()
    } else {
        status.to_string()
    }
}

/// Microseconds as milliseconds with two decimals.
#[must_use]
pub fn millis(micros: u64) -> String {
    format!("{}.{:02}ms", micros / 1000, (micros % 1000) / 10)
}

/// Ordinary prose, repeated to the longest context; prompts are slices of it.
fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        const WORDS: &str = "The agent reads the file, plans the change, runs the tests and \
                             reports what it found before the next step begins. ";
        let bytes = crate::scenario::CONTEXT_TOKENS_MAX as usize * 4 + WORDS.len();
        WORDS.repeat(bytes / WORDS.len() + 1)
    })
}

/// The request body of one step: the agent's whole context re-sent, as agents do.
fn request_body(call: &Call, step: Step, target: &Target, scenario: &Scenario) -> Bytes {
    const PLACEHOLDER: &str = "\"@@context@@\"";
    let model = if target.provider_prefixed {
        call.model.as_str()
    } else {
        call.model
            .split_once('/')
            .map_or(call.model.as_str(), |(_, m)| m)
    };
    // The mock counts a token per four bytes of text.
    let bytes = (step.context_tokens as usize * 4).min(text().len());
    let context = text().get(..bytes).unwrap_or_default();
    // The task's id in place of the text's first 17 bytes: the same size, so the same tokens.
    let tag = format!("{:016x} ", step.task);
    let context = match context.get(tag.len()..) {
        Some(rest) => format!("{tag}{rest}"),
        None => context.to_owned(),
    };
    let mut mock = serde_json::Map::new();
    let shape = scenario.mock;
    if shape.first_byte_ms > 0 {
        mock.insert("first_byte_ms".into(), json!(shape.first_byte_ms));
    }
    if shape.token_ms > 0 && step.stream {
        mock.insert("token_ms".into(), json!(shape.token_ms));
    }
    if step.error {
        mock.insert("status".into(), json!(500));
    }
    if step.reset {
        mock.insert("reset_after".into(), json!(call.max_tokens / 2));
    }
    let placeholder = json!("@@context@@");
    let mut request = match call.api {
        Api::Chat => json!({
            "model": model, "max_tokens": call.max_tokens,
            "messages": [
                {"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": placeholder},
            ],
        }),
        Api::Messages => json!({
            "model": model, "max_tokens": call.max_tokens,
            "system": "You are a coding agent.",
            "messages": [{"role": "user", "content": placeholder}],
        }),
        Api::Completions => {
            json!({"model": model, "max_tokens": call.max_tokens, "prompt": placeholder})
        }
        Api::Embeddings => json!({"model": model, "input": placeholder}),
        Api::Responses => {
            json!({"model": model, "max_output_tokens": call.max_tokens, "input": placeholder})
        }
    };
    if step.stream {
        request["stream"] = json!(true);
        if matches!(call.api, Api::Chat | Api::Completions) {
            request["stream_options"] = json!({"include_usage": true});
        }
    }
    if !mock.is_empty() {
        request["mock"] = Value::Object(mock);
    }
    let skeleton = request.to_string();
    // The context is plain words (nothing to escape), spliced in without a second copy in a tree.
    Bytes::from(skeleton.replacen(PLACEHOLDER, &format!("\"{context}\""), 1))
}

/// Usage from a whole answer: OpenAI's (`prompt_tokens`...), Anthropic's and the Responses
/// API's (`input_tokens`...), at the top or under `message` or `response`.
#[must_use]
pub fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| value.pointer("/message/usage"))
        .or_else(|| value.pointer("/response/usage"))?;
    let number = |pointers: &[&str]| {
        pointers
            .iter()
            .find_map(|p| usage.pointer(p).and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let anthropic_cache =
        number(&["/cache_read_input_tokens"]) + number(&["/cache_creation_input_tokens"]);
    Some(Usage {
        input: number(&["/prompt_tokens", "/input_tokens"]) + anthropic_cache,
        output: number(&["/completion_tokens", "/output_tokens"]),
        cached: number(&[
            "/prompt_tokens_details/cached_tokens",
            "/input_tokens_details/cached_tokens",
        ]) + anthropic_cache,
        reasoning: number(&[
            "/completion_tokens_details/reasoning_tokens",
            "/output_tokens_details/reasoning_tokens",
        ]),
    })
}

/// Usage from a streamed answer: the data lines that carry usage, the largest counts kept
/// (Anthropic reports input at the start and output, cumulative, at the end).
#[must_use]
pub fn usage_of_stream(answer: &[u8]) -> Option<Usage> {
    let mut found: Option<Usage> = None;
    for line in answer.split(|&b| b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        if memchr::memmem::find(data, b"\"usage\"").is_none() {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        if let Some(usage) = usage_of(&value) {
            let seen = found.get_or_insert_with(Usage::default);
            seen.input = seen.input.max(usage.input);
            seen.output = seen.output.max(usage.output);
            seen.cached = seen.cached.max(usage.cached);
            seen.reasoning = seen.reasoning.max(usage.reasoning);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_in_every_spelling() {
        let openai = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 2}}});
        assert_eq!(
            usage_of(&openai),
            Some(Usage {
                input: 10,
                output: 3,
                cached: 2,
                reasoning: 0
            })
        );
        let responses = json!({"type": "response.completed", "response": {"usage": {
            "input_tokens": 7, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1}}}});
        assert_eq!(
            usage_of(&responses).map(|u| (u.input, u.reasoning)),
            Some((7, 1))
        );
        assert_eq!(usage_of(&json!({"usage": null})), None);
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
        assert_eq!(
            usage_of_stream(stream).map(|u| (u.input, u.output)),
            Some((12, 9))
        );
        assert_eq!(usage_of_stream(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn harness_prices_round_once_upward() {
        let prices = Prices {
            models: [("openai/m".to_owned(), (150_000_000, 600_000_000))].into(),
            adjustment_ppm: vec![0, -150_000],
        };
        let usage = Usage {
            input: 1,
            output: 1,
            ..Usage::default()
        };
        // 0.15 and 0.60 per million tokens: 150 and 600 nano-units a token.
        assert_eq!(prices.cost_nanos("openai/m", &usage, 0), Some(750));
        // A price below a nano-unit a token rounds up, once, over the whole call.
        let tiny = Prices {
            models: [("openai/t".to_owned(), (1, 0))].into(),
            adjustment_ppm: vec![0],
        };
        assert_eq!(tiny.cost_nanos("openai/t", &usage, 0), Some(1));
        let many = Usage {
            input: 1_000_001,
            ..usage
        };
        assert_eq!(tiny.cost_nanos("openai/t", &many, 0), Some(2));
        let big = Usage {
            input: 1_000_000,
            output: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(prices.cost_nanos("openai/m", &big, 0), Some(750_000_000));
        assert_eq!(prices.cost_nanos("openai/m", &big, 1), Some(637_500_000));
        assert_eq!(prices.cost_nanos("openai/other", &big, 0), None);
        let cached = Usage { cached: 1, ..big };
        assert_eq!(prices.cost_nanos("openai/m", &cached, 0), None);
    }

    #[test]
    fn tasks_grow_their_context_and_start_over() {
        let scenario = crate::scenario::load("agent-fleet").unwrap();
        let mut state = TaskState::new(3, false);
        let mut previous = 0;
        let mut restarts = 0;
        for _ in 0..200 {
            let step = state.next(&scenario);
            assert!(step.context_tokens <= scenario.task.context_tokens_max);
            if step.context_tokens == scenario.task.context_tokens_start {
                restarts += 1;
            } else {
                assert!(step.context_tokens >= previous);
            }
            previous = step.context_tokens;
        }
        assert!(restarts > 10 && restarts < 100, "{restarts}");
    }

    #[test]
    fn a_looping_agent_sends_its_first_call_word_for_word_for_ever() {
        let scenario = crate::scenario::load("agent-fleet").unwrap();
        let target = Target {
            name: "gateway",
            base_url: "http://127.0.0.1:1/v1".into(),
            provider_prefixed: true,
        };
        let mut looping = TaskState::new(3, true);
        let first = looping.next(&scenario);
        assert!(!first.error && !first.reset);
        let body = request_body(&scenario.calls[first.call], first, &target, &scenario);
        for _ in 0..50 {
            let again = looping.next(&scenario);
            let shape = &scenario.calls[again.call];
            assert_eq!(request_body(shape, again, &target, &scenario), body);
        }
        // A working agent with the same seed moves on.
        let mut working = TaskState::new(3, false);
        let bodies: std::collections::HashSet<Bytes> = (0..50)
            .map(|_| {
                let step = working.next(&scenario);
                request_body(&scenario.calls[step.call], step, &target, &scenario)
            })
            .collect();
        assert_eq!(bodies.len(), 50);
    }
}
