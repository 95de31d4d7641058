//! Prometheus metrics: fixed arrays of atomics, named by enums, rendered as text on `/metrics`.
//!
//! Every series is known at start (route × status, token kind, histogram bucket), so recording
//! is one relaxed `fetch_add` with no lock and no map lookup. Per-model and per-team figures
//! live in the usage events, where cardinality costs nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate_engine::{Status, TokenUsage};

use crate::http::route::Api;

const STATUSES: [Status; 13] = [
    Status::Ok,
    Status::BudgetExceeded,
    Status::InvalidApiKey,
    Status::ModelNotAllowed,
    Status::ModelNotPriced,
    Status::RateLimited,
    Status::BadRequest,
    Status::UpstreamError,
    Status::UpstreamTimeout,
    Status::ClientClosed,
    Status::InternalError,
    Status::LoopDetected,
    Status::SpendVelocityExceeded,
];

fn status_index(status: Status) -> usize {
    match status {
        Status::Ok => 0,
        Status::BudgetExceeded => 1,
        Status::InvalidApiKey => 2,
        Status::ModelNotAllowed => 3,
        Status::ModelNotPriced => 4,
        Status::RateLimited => 5,
        Status::BadRequest => 6,
        Status::UpstreamError => 7,
        Status::UpstreamTimeout => 8,
        Status::ClientClosed => 9,
        Status::InternalError => 10,
        Status::LoopDetected => 11,
        Status::SpendVelocityExceeded => 12,
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::BudgetExceeded => "budget_exceeded",
        Status::InvalidApiKey => "invalid_api_key",
        Status::ModelNotAllowed => "model_not_allowed",
        Status::ModelNotPriced => "model_not_priced",
        Status::RateLimited => "rate_limited",
        Status::BadRequest => "bad_request",
        Status::UpstreamError => "upstream_error",
        Status::UpstreamTimeout => "upstream_timeout",
        Status::ClientClosed => "client_closed",
        Status::InternalError => "internal_error",
        Status::LoopDetected => "loop_detected",
        Status::SpendVelocityExceeded => "spend_velocity_exceeded",
    }
}

/// Routes as a metric label: the five model APIs and everything else.
const ROUTES: usize = Api::ALL.len() + 1;

fn route_index(api: Option<Api>) -> usize {
    match api {
        Some(Api::ChatCompletions) => 0,
        Some(Api::Completions) => 1,
        Some(Api::Embeddings) => 2,
        Some(Api::Responses) => 3,
        Some(Api::Messages) => 4,
        None => 5,
    }
}

/// Single counters and gauges.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Money settled into budgets, in nanos.
    SpendNanos,
    /// Usage events written to the log.
    EventsWritten,
    /// Usage events that could not be queued or written (each is also reported on stderr).
    EventsLost,
    /// Requests refused before admission because the gateway was full.
    Shed,
    /// Soft-limit (80 %) warnings fired.
    SoftLimitWarnings,
    /// Burn-rate forecasts told: a budget level on pace to run out before its period ends.
    ForecastAlerts,
    /// Budget levels told exhausted: a call refused with 402 there (once per level and period).
    ExhaustedAlerts,
    /// Keys told about to expire (once per key and expiry instant in a process life).
    KeyExpiryAlerts,
    /// Alerts the guards raised: a loop, a spend velocity past its ceiling.
    GuardAlerts,
    /// Calls a guard refused (throttled or blocked).
    GuardRefused,
    /// Alerts a webhook answered 2xx to.
    WebhookDelivered,
    /// Webhook deliveries that failed (refused, timed out, unreachable) and are sent again.
    WebhookFailed,
    /// Alerts the brokers acknowledged on the alerts topic.
    AlertsPublished,
    /// Alerts the brokers did not acknowledge in time (each is sent again).
    AlertsPublishFailed,
    /// Calls whose usage could not be known (billed at their bound, flagged).
    UsageUnknown,
    /// Calls whose usage was counted by tollgate because the provider gave none.
    UsageCounted,
    /// Resource usage records booked.
    RecordsBooked,
    /// Resource usage records sent again with the same content (nothing changed).
    RecordsDuplicate,
    /// Resource usage records sent again under a booked id with other content (refused).
    RecordsConflict,
    /// Holds taken by `/v1/usage/authorize` that expired unsettled and were given back.
    ReservationsExpired,
    /// Other replicas' usage events applied to the budget table by reconciliation.
    ReconciledEvents,
    /// Their spend, in nanos.
    ReconciledNanos,
    /// Other replicas' events for an allocation this replica does not know (not applied).
    ReconcileUnknownAllocation,
    /// Admin changes read from the control topic and applied (other replicas' and, after a
    /// restart, this one's).
    ControlApplied,
    /// Control-topic records refused: a version this replica cannot read, or a change that
    /// does not hold here (each is reported on stderr).
    ControlRefused,
    /// Asks for lease this replica wrote.
    LeaseAsks,
    /// Nanos of lease granted to this replica.
    LeaseGrantedNanos,
    /// Nanos of lease this replica gave back (idle, recalled, over, or at its stop).
    LeaseReturnedNanos,
    /// Of those, nanos given back because their lease's epoch had ended.
    LeaseExpiredNanos,
    /// Asks of this replica a coordinator denied for want of room.
    LeaseDenied,
    /// Grants read that followed another grant than their tree's last, and so grant nothing
    /// (two coordinators granting at once).
    LeaseVoid,
    /// Lease records refused: a version this build cannot read (each reported on stderr).
    LeaseRefused,
    /// Grants this replica wrote as a coordinator.
    LeaseGrantsWritten,
    /// Denials this replica wrote as a coordinator.
    LeaseDenialsWritten,
    /// Nanos this replica credited itself past its leases, cut off from every coordinator
    /// (`leases.fail_open`).
    LeaseFailOpenNanos,
    /// Units (requests or tokens) of shared rate limits granted to this replica.
    RateSliceGranted,
    /// Units of shared rate limits this replica gave back (idle, recalled, or at its stop).
    RateSliceReturned,
    /// Calls that waited for a grant of their replica's slice of a shared rate limit.
    RateSliceWaited,
    /// Calls that waited in line for budget held by calls in flight.
    BudgetWaited,
    /// Calls refused with `429 budget_busy` (their wait ran out, or the lines were full).
    BudgetBusy,
    /// Calls admitted with their `max_tokens` lowered to what the budget's room affords.
    BudgetClamped,
    /// Streamed calls the gateway ended when their hold could not be extended.
    BudgetStopped,
    /// Streamed calls held back while calls in flight held the room their hold needed.
    BudgetStreamWaited,
    /// Attempts at a provider that failed before an answer reached the client, and were
    /// followed by another attempt.
    AttemptsFailed,
    /// Attempts tried again on the same candidate.
    Retries,
    /// Calls moved to the next candidate of their group.
    Fallbacks,
    /// Retries and fallbacks the retry budget refused.
    RetriesDenied,
    /// Calls served by a cheaper group than the one asked for (a downgrade threshold, or a
    /// budget that could no longer afford the call whole).
    Downgraded,
}

const COUNTERS: [(Counter, &str, &str); 48] = [
    (
        Counter::SpendNanos,
        "tollgate_spend_nanos_total",
        "Money settled into budgets, in nano-units of the rate card's currency.",
    ),
    (
        Counter::EventsWritten,
        "tollgate_events_written_total",
        "Usage events written to the event log.",
    ),
    (
        Counter::EventsLost,
        "tollgate_events_lost_total",
        "Usage events that could not be queued or written.",
    ),
    (
        Counter::Shed,
        "tollgate_requests_shed_total",
        "Requests refused with 503 before admission (in-flight limit, event backlog, shutdown).",
    ),
    (
        Counter::SoftLimitWarnings,
        "tollgate_soft_limit_warnings_total",
        "Budget soft-limit warnings fired.",
    ),
    (
        Counter::ForecastAlerts,
        "tollgate_forecast_alerts_total",
        "Burn-rate forecasts told: a budget level on pace to run out before its period ends.",
    ),
    (
        Counter::ExhaustedAlerts,
        "tollgate_budget_exhausted_alerts_total",
        "Budget levels told exhausted: a call refused with 402 there, once per level and period.",
    ),
    (
        Counter::KeyExpiryAlerts,
        "tollgate_key_expiry_alerts_total",
        "Keys told about to expire, within forecast.key_expiry_warning_ms of their expiry.",
    ),
    (
        Counter::GuardAlerts,
        "tollgate_guard_alerts_total",
        "Alerts the guards raised: a runaway loop, a spend velocity past its ceiling.",
    ),
    (
        Counter::GuardRefused,
        "tollgate_guard_refused_total",
        "Calls a guard refused: throttled (429) or blocked until an operator clears it (403).",
    ),
    (
        Counter::WebhookDelivered,
        "tollgate_webhook_delivered_total",
        "Alerts a webhook answered 2xx to.",
    ),
    (
        Counter::WebhookFailed,
        "tollgate_webhook_failed_total",
        "Webhook deliveries that failed and are sent again after a backoff.",
    ),
    (
        Counter::AlertsPublished,
        "tollgate_alerts_published_total",
        "Alerts the brokers acknowledged on the Kafka alerts topic.",
    ),
    (
        Counter::AlertsPublishFailed,
        "tollgate_alerts_publish_failed_total",
        "Alerts the brokers did not acknowledge in time; each is sent again after a backoff.",
    ),
    (
        Counter::UsageUnknown,
        "tollgate_usage_unknown_total",
        "Calls whose usage could not be known; billed at their bound.",
    ),
    (
        Counter::UsageCounted,
        "tollgate_usage_counted_total",
        "Calls whose tokens tollgate counted because the provider reported none.",
    ),
    (
        Counter::RecordsBooked,
        "tollgate_usage_records_booked_total",
        "Resource usage records booked (GPU-, core-, node-hours, GB-months).",
    ),
    (
        Counter::RecordsDuplicate,
        "tollgate_usage_records_duplicate_total",
        "Resource usage records sent again with the same content; nothing changed.",
    ),
    (
        Counter::RecordsConflict,
        "tollgate_usage_records_conflict_total",
        "Resource usage records sent again under a booked id with other content; the first stands.",
    ),
    (
        Counter::ReservationsExpired,
        "tollgate_usage_reservations_expired_total",
        "Budget holds taken to authorize usage that expired unsettled and were given back.",
    ),
    (
        Counter::ReconciledEvents,
        "tollgate_reconciled_events_total",
        "Other replicas' usage events applied to the budget table by reconciliation.",
    ),
    (
        Counter::ReconciledNanos,
        "tollgate_reconciled_spend_nanos_total",
        "Other replicas' spend applied to the budget table, in nano-units.",
    ),
    (
        Counter::ReconcileUnknownAllocation,
        "tollgate_reconcile_unknown_allocation_total",
        "Other replicas' usage events for an allocation this replica does not know.",
    ),
    (
        Counter::ControlApplied,
        "tollgate_control_applied_total",
        "Admin changes read from the control topic and applied.",
    ),
    (
        Counter::ControlRefused,
        "tollgate_control_refused_total",
        "Control-topic records refused: an unreadable version, or a change that does not hold here.",
    ),
    (
        Counter::LeaseAsks,
        "tollgate_lease_asks_total",
        "Asks for budget lease this replica wrote.",
    ),
    (
        Counter::LeaseGrantedNanos,
        "tollgate_lease_granted_nanos_total",
        "Nanos of budget lease granted to this replica.",
    ),
    (
        Counter::LeaseReturnedNanos,
        "tollgate_lease_returned_nanos_total",
        "Nanos of budget lease this replica gave back.",
    ),
    (
        Counter::LeaseExpiredNanos,
        "tollgate_lease_expired_nanos_total",
        "Nanos of budget lease given back because their epoch had ended.",
    ),
    (
        Counter::LeaseDenied,
        "tollgate_lease_denied_total",
        "Asks of this replica a coordinator denied for want of room.",
    ),
    (
        Counter::LeaseVoid,
        "tollgate_lease_void_total",
        "Grants read that follow another than their tree's last grant, and grant nothing.",
    ),
    (
        Counter::LeaseRefused,
        "tollgate_lease_refused_total",
        "Lease records refused (a version this build cannot read).",
    ),
    (
        Counter::LeaseGrantsWritten,
        "tollgate_lease_grants_written_total",
        "Grants this replica wrote as a coordinator.",
    ),
    (
        Counter::LeaseDenialsWritten,
        "tollgate_lease_denials_written_total",
        "Denials this replica wrote as a coordinator.",
    ),
    (
        Counter::LeaseFailOpenNanos,
        "tollgate_lease_fail_open_nanos_total",
        "Nanos this replica credited itself past its leases, cut off from every coordinator.",
    ),
    (
        Counter::RateSliceGranted,
        "tollgate_rate_slice_granted_total",
        "Requests or tokens of shared rate limits granted to this replica.",
    ),
    (
        Counter::RateSliceReturned,
        "tollgate_rate_slice_returned_total",
        "Requests or tokens of shared rate limits this replica gave back.",
    ),
    (
        Counter::RateSliceWaited,
        "tollgate_rate_slice_waited_total",
        "Calls that waited for a grant of this replica's slice of a shared rate limit.",
    ),
    (
        Counter::BudgetWaited,
        "tollgate_budget_waited_total",
        "Calls that waited in line for budget held by calls in flight.",
    ),
    (
        Counter::BudgetBusy,
        "tollgate_budget_busy_total",
        "Calls refused with 429 budget_busy: the budget had room, held by calls in flight.",
    ),
    (
        Counter::BudgetClamped,
        "tollgate_budget_clamped_total",
        "Calls admitted with max_tokens lowered to what the budget's room affords.",
    ),
    (
        Counter::BudgetStopped,
        "tollgate_budget_stopped_total",
        "Streamed calls the gateway ended when their budget hold could not be extended.",
    ),
    (
        Counter::BudgetStreamWaited,
        "tollgate_budget_stream_waited_total",
        "Streamed calls held back while calls in flight held the room their hold needed.",
    ),
    (
        Counter::AttemptsFailed,
        "tollgate_upstream_attempts_failed_total",
        "Attempts at a provider that failed before an answer reached the client and were tried again or fell back (each is a usage event).",
    ),
    (
        Counter::Retries,
        "tollgate_upstream_retries_total",
        "Attempts tried again on the same candidate (another deployment when there is one).",
    ),
    (
        Counter::Fallbacks,
        "tollgate_upstream_fallbacks_total",
        "Calls moved to the next candidate of their group.",
    ),
    (
        Counter::RetriesDenied,
        "tollgate_upstream_retries_denied_total",
        "Retries and fallbacks refused by the retry budget (routing.retry_budget_percent).",
    ),
    (
        Counter::Downgraded,
        "tollgate_downgraded_total",
        "Calls served by a cheaper group than the one asked for (a level's downgrade threshold, or a group's downgrade when the budget could not afford the call whole).",
    ),
];

/// Histogram bucket upper bounds in milliseconds.
const BUCKETS_MS: [u64; 14] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    sum_ms: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ms: AtomicU64::new(0),
        }
    }

    fn observe(&self, ms: u64) {
        let i = BUCKETS_MS.partition_point(|&b| b < ms);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match BUCKETS_MS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", self.sum_ms.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// All of the gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES],
    unauthenticated: [[AtomicU64; Unauthenticated::ALL.len()]; ROUTES],
    tokens: [AtomicU64; 5],
    counters: [AtomicU64; COUNTERS.len()],
    upstream_latency: Histogram,
    ttft: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            unauthenticated: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            tokens: std::array::from_fn(|_| AtomicU64::new(0)),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_latency: Histogram::new(),
            ttft: Histogram::new(),
        }
    }
}

/// Why a call named no valid key: what `tollgate_unauthenticated_requests_total` counts
/// instead of an event each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No key was presented.
    Missing,
    /// The key is not of tollgate's form, or not known.
    Unknown,
    /// The key has expired.
    Expired,
    /// The key was revoked.
    Revoked,
    /// Refused before a key was read (a head too large, no such route).
    BeforeKey,
}

impl Unauthenticated {
    /// Every reason, in metric order.
    pub const ALL: [Unauthenticated; 5] = [
        Unauthenticated::Missing,
        Unauthenticated::Unknown,
        Unauthenticated::Expired,
        Unauthenticated::Revoked,
        Unauthenticated::BeforeKey,
    ];

    /// The label in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing_key",
            Unauthenticated::Unknown => "unknown_key",
            Unauthenticated::Expired => "expired_key",
            Unauthenticated::Revoked => "revoked_key",
            Unauthenticated::BeforeKey => "before_key",
        }
    }
}

/// `value` as a Prometheus label value: backslash, quote and newline escaped.
#[must_use]
pub fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Gauges read at render time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// Requests in flight.
    pub in_flight: u64,
    /// Usage events waiting for the writer.
    pub events_queued: u64,
    /// Usage events held in memory while the log cannot be written.
    pub events_held_back: u64,
    /// Budget holds kept for authorized usage.
    pub reservations_held: u64,
    /// Usage-record ids remembered for deduplication.
    pub record_ids: u64,
    /// Bytes the durable event log takes on disk.
    pub event_log_bytes: u64,
    /// Calls waiting in line for budget held by calls in flight.
    pub budget_waiting: u64,
    /// Keys whose rate limiters are kept (keys with limits that have called, not revoked).
    pub key_limiters: u64,
}

impl Gauges {
    /// Each gauge in Prometheus text, with its help.
    fn render(&self, out: &mut String) {
        let gauges = [
            (
                "tollgate_requests_in_flight",
                "Requests being served.",
                self.in_flight,
            ),
            (
                "tollgate_budget_waiting",
                "Calls waiting in line for budget held by calls in flight.",
                self.budget_waiting,
            ),
            (
                "tollgate_events_held_back",
                "Usage events of answered calls held in memory while the log cannot be written (a full disk).",
                self.events_held_back,
            ),
            (
                "tollgate_events_queued",
                "Usage events appended to the log and not yet synced (the event backlog).",
                self.events_queued,
            ),
            (
                "tollgate_event_log_bytes",
                "Bytes the durable event log takes on disk (new requests get 503 at events.log_bytes_max).",
                self.event_log_bytes,
            ),
            (
                "tollgate_usage_reservations_held",
                "Budget holds kept for authorized resource usage.",
                self.reservations_held,
            ),
            (
                "tollgate_key_limiters",
                "Keys whose requests- or tokens-per-minute limiters are kept (revoked keys are forgotten).",
                self.key_limiters,
            ),
            (
                "tollgate_usage_record_ids",
                "Usage-record ids remembered for deduplication (bounded by ledger.records_max).",
                self.record_ids,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}

impl Metrics {
    /// Counts one finished request by route and status.
    pub fn request(&self, api: Option<Api>, status: Status) {
        if let Some(cell) = self
            .requests
            .get(route_index(api))
            .and_then(|row| row.get(status_index(status)))
        {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one call refused without a valid key, by route and reason.
    pub fn unauthenticated(&self, api: Option<Api>, reason: Unauthenticated) {
        let reason_index = Unauthenticated::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let Some(cell) = self
            .unauthenticated
            .get(route_index(api))
            .and_then(|row| row.get(reason_index))
        {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a call's tokens.
    pub fn tokens(&self, usage: &TokenUsage) {
        let values = [
            usage.input.0,
            usage.output.0,
            usage.cached.0,
            usage.cache_write.0,
            usage.reasoning.0,
        ];
        for (cell, value) in self.tokens.iter().zip(values) {
            cell.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Adds to a counter.
    pub fn add(&self, counter: Counter, value: u64) {
        if let Some(cell) = self.counters.get(counter as usize) {
            cell.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Reads a counter.
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters
            .get(counter as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Records an upstream call's total time and time to first token.
    pub fn upstream(&self, latency_ms: u64, ttft_ms: Option<u64>) {
        self.upstream_latency.observe(latency_ms);
        if let Some(ttft) = ttft_ms {
            self.ttft.observe(ttft);
        }
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP tollgate_requests_total Requests by route and outcome.\n# TYPE tollgate_requests_total counter\n");
        for (r, row) in self.requests.iter().enumerate() {
            let route = Api::ALL.get(r).map_or("other", |a| a.as_str());
            for (status, cell) in STATUSES.iter().zip(row) {
                let n = cell.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_requests_total{{route=\"{route}\",status=\"{}\"}} {n}",
                        status_label(*status)
                    );
                }
            }
        }
        out.push_str("# HELP tollgate_unauthenticated_requests_total Requests refused without a valid key, by route and reason (counted, not recorded as usage events).\n# TYPE tollgate_unauthenticated_requests_total counter\n");
        for (r, row) in self.unauthenticated.iter().enumerate() {
            let route = Api::ALL.get(r).map_or("other", |a| a.as_str());
            for (reason, cell) in Unauthenticated::ALL.iter().zip(row) {
                let n = cell.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_unauthenticated_requests_total{{route=\"{route}\",reason=\"{}\"}} {n}",
                        reason.as_str()
                    );
                }
            }
        }
        out.push_str("# HELP tollgate_tokens_total Tokens metered, by kind (cached and cache_write are part of input, reasoning part of output).\n# TYPE tollgate_tokens_total counter\n");
        for (kind, cell) in ["input", "output", "cached", "cache_write", "reasoning"]
            .iter()
            .zip(&self.tokens)
        {
            let _ = writeln!(
                out,
                "tollgate_tokens_total{{kind=\"{kind}\"}} {}",
                cell.load(Ordering::Relaxed)
            );
        }
        for ((_, name, help), cell) in COUNTERS.iter().zip(&self.counters) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                cell.load(Ordering::Relaxed)
            );
        }
        gauges.render(&mut out);
        self.upstream_latency.render(
            &mut out,
            "tollgate_upstream_latency_ms",
            "Time from sending a call upstream to its last byte.",
        );
        self.ttft.render(
            &mut out,
            "tollgate_time_to_first_token_ms",
            "Time from sending a call upstream to its first generated token.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_status() {
        let metrics = Metrics::default();
        metrics.request(Some(Api::ChatCompletions), Status::Ok);
        metrics.request(Some(Api::ChatCompletions), Status::Ok);
        metrics.request(Some(Api::Messages), Status::BudgetExceeded);
        metrics.tokens(&TokenUsage::new(10, 4, 0, 3, 1));
        metrics.add(Counter::SpendNanos, 1234);
        metrics.upstream(7, Some(3));
        let text = metrics.render(Gauges {
            in_flight: 2,
            budget_waiting: 0,
            key_limiters: 1,
            events_queued: 5,
            events_held_back: 0,
            reservations_held: 3,
            record_ids: 7,
            event_log_bytes: 4096,
        });
        for line in [
            "tollgate_requests_total{route=\"chat_completions\",status=\"ok\"} 2",
            "tollgate_requests_total{route=\"messages\",status=\"budget_exceeded\"} 1",
            "tollgate_tokens_total{kind=\"input\"} 10",
            "tollgate_tokens_total{kind=\"reasoning\"} 1",
            "tollgate_spend_nanos_total 1234",
            "tollgate_requests_in_flight 2",
            "tollgate_events_queued 5",
            "tollgate_usage_reservations_held 3",
            "tollgate_usage_record_ids 7",
            "tollgate_event_log_bytes 4096",
            "tollgate_upstream_latency_ms_bucket{le=\"5\"} 0",
            "tollgate_upstream_latency_ms_bucket{le=\"10\"} 1",
            "tollgate_upstream_latency_ms_bucket{le=\"+Inf\"} 1",
            "tollgate_time_to_first_token_ms_bucket{le=\"5\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // The counter table and the enum agree.
        for (i, (counter, _, _)) in COUNTERS.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
    }
}
