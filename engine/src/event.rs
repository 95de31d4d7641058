//! The usage event: one versioned record for every metered thing, and its JSON form.
//!
//! A token call, a rejected call, a GPU-hour or a GB-month all become a [`UsageEvent`]. This
//! type and its serde derive are the one definition of the event and of its JSON (the log and
//! Kafka payload); the Arrow schema is derived from it in one place in `sink`, with a test that
//! keeps the two in step. The contract is written out in `engine/docs/usage-event.md`.
//!
//! **Invariant:** `cost_nanos` is what the budget table was charged for this event, to the unit;
//! summing it over the events of a period gives the table's spend for that period.
//! Readers tolerate fields they do not know (a newer minor writer may add some); a breaking
//! change bumps [`USAGE_EVENT_VERSION`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::{Allocation, VirtualKey};
use crate::ids::KeyId;
use crate::money::{Micros, Nanos};
use crate::ratecard::ResourceUnit;
use crate::time::UnixMs;
use crate::tokens::Tokens;

/// The schema version written in every event's `v` field.
pub const USAGE_EVENT_VERSION: u16 = 1;

/// A UUIDv7: time-ordered, so events sort by creation, and unique, so every later stage can
/// drop duplicates by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A v7 id for `now` from ten random bytes (the caller's CSPRNG; the engine does no I/O).
    #[must_use]
    pub fn v7(now: UnixMs, random: &[u8; 10]) -> EventId {
        let ms = u64::try_from(now.0).unwrap_or(0);
        EventId(uuid::Builder::from_unix_timestamp_millis(ms, random).into_uuid())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What was metered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A model call (or an attempt at one), metered in tokens.
    Tokens,
    /// GPU-, core- or node-hours.
    Compute,
    /// GB-months of storage.
    Storage,
}

/// How a call ended. Every rejection is an event too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Completed.
    Ok,
    /// Refused: a budget level had no room (402).
    BudgetExceeded,
    /// Refused: no usable key (401).
    InvalidApiKey,
    /// Refused: the model is not on an allow-list (403).
    ModelNotAllowed,
    /// Refused: the model has no price on the rate card.
    ModelNotPriced,
    /// Refused: a requests- or tokens-per-minute limit (429).
    RateLimited,
    /// Refused: the runaway-loop detector took the call for part of a loop (429, or 403
    /// while blocked).
    LoopDetected,
    /// Refused: the key's, agent's or allocation's spend in the last minute reached its
    /// ceiling (429, or 403 while blocked).
    SpendVelocityExceeded,
    /// Refused: the request was malformed (400, 413, 404).
    BadRequest,
    /// The upstream answered with an error.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The client hung up before the answer was complete.
    ClientClosed,
    /// Tollgate itself failed.
    InternalError,
}

/// Where the token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the provider.
    Provider,
    /// Counted by tollgate with the model's own encoding.
    Counted,
    /// Counted with a stand-in encoding: close, not exact.
    Estimated,
    /// Could not be known; flagged, never recorded as zero usage.
    Unknown,
    /// Nothing reached a model (a rejection), or not a token event.
    None,
}

/// One metered thing. Field names are the JSON keys; units are in the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Schema version ([`USAGE_EVENT_VERSION`]).
    pub v: u16,
    /// Unique, time-ordered id.
    pub event_id: EventId,
    /// What was metered.
    pub kind: EventKind,
    /// When it started (a call's arrival, a job's start); the period it is billed in.
    pub ts_ms: UnixMs,
    /// The request id shared by every attempt of one call, or the record id of an import.
    pub request_id: Arc<str>,
    /// Attempt number within the request, from 1.
    pub attempt: u16,
    /// Organisation of the team. The identity fields, `org` to `key_id`, are `None` for a
    /// refusal of an unknown key, which costs nothing.
    pub org: Option<Arc<str>>,
    /// Team of the allocation: the widest budget level.
    pub team: Option<Arc<str>>,
    /// Project of the allocation: the middle budget level.
    pub project: Option<Arc<str>>,
    /// Allocation charged: the narrowest budget level, the one a key is bound to.
    pub allocation: Option<Arc<str>>,
    /// Cost center charged.
    pub cost_center: Option<Arc<str>>,
    /// User who owns the key, or the job's user.
    pub user: Option<Arc<str>>,
    /// Agent, if the key names one.
    pub agent: Option<Arc<str>>,
    /// The virtual key's public id.
    pub key_id: Option<KeyId>,
    /// Provider name (`openai`, `anthropic`, ...).
    pub provider: Option<Arc<str>>,
    /// Model as the provider names it.
    pub model: Option<Arc<str>>,
    /// Deployment or upstream that served it (Azure deployment, vLLM host, ...).
    pub deployment: Option<Arc<str>>,
    /// All prompt tokens, cached and cache-written ones included.
    pub tokens_in: Tokens,
    /// All completion tokens, reasoning included.
    pub tokens_out: Tokens,
    /// Prompt tokens read from the provider's cache (within `tokens_in`).
    pub tokens_cached: Tokens,
    /// Prompt tokens written to the provider's cache (within `tokens_in`).
    pub tokens_cache_write: Tokens,
    /// Reasoning tokens (within `tokens_out`).
    pub tokens_reasoning: Tokens,
    /// Where the token counts came from.
    pub usage_source: UsageSource,
    /// Quantity of a resource in millionths of `unit`.
    pub quantity_micros: Option<Micros>,
    /// Unit of a resource record; `None` for model calls.
    pub unit: Option<ResourceUnit>,
    /// Cluster of a compute or storage record.
    pub cluster: Option<Arc<str>>,
    /// Partition of a compute record, or tier of a storage record.
    pub partition: Option<Arc<str>>,
    /// Node or machine type of a compute record. Added within version 1: events written
    /// before it read as `None`.
    #[serde(default)]
    pub instance_type: Option<Arc<str>>,
    /// What a model call's prompt begins with ([`crate::PromptPrefix`]); `None` for a prompt
    /// shorter than [`crate::PROMPT_PREFIX_BYTES`], a refusal, or a resource record. Added
    /// within version 1: events written before it read as `None`.
    #[serde(default)]
    pub prompt_prefix: Option<crate::PromptPrefix>,
    /// Cost at list price, before markup or discount.
    pub list_cost_nanos: Nanos,
    /// Cost charged to budgets, after markup or discount.
    pub cost_nanos: Nanos,
    /// ISO 4217 currency of both costs.
    pub currency: Arc<str>,
    /// Rate card version that priced it.
    pub rate_card_version: Option<Arc<str>>,
    /// Time to first token of a streamed answer.
    pub ttft_ms: Option<u32>,
    /// Total time from arrival to the last byte.
    pub latency_ms: Option<u32>,
    /// How it ended: served, or refused or failed and why.
    pub status: Status,
    /// HTTP status returned to the client.
    pub http_status: Option<u16>,
}

impl UsageEvent {
    /// The JSON form, as written to the log and to Kafka.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON form to `out` (no allocation when `out` has room).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing plain data into a Vec cannot fail: no map with non-string keys, no I/O.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.clear();
        }
    }

    /// Parses the JSON form, refusing an unknown major version.
    pub fn from_json(bytes: &[u8]) -> Result<UsageEvent, EventDecodeError> {
        let event: UsageEvent =
            serde_json::from_slice(bytes).map_err(|e| EventDecodeError::Json {
                line: e.line(),
                column: e.column(),
                reason: e.to_string(),
            })?;
        if event.v != USAGE_EVENT_VERSION {
            return Err(EventDecodeError::Version { found: event.v });
        }
        Ok(event)
    }

    /// An event with every field set, for schema tests and benches.
    #[doc(hidden)]
    #[must_use]
    pub fn sample() -> UsageEvent {
        let s = |t: &str| Some(Arc::<str>::from(t));
        UsageEvent {
            v: USAGE_EVENT_VERSION,
            event_id: EventId::v7(UnixMs(1_764_000_000_000), &[7; 10]),
            kind: EventKind::Tokens,
            ts_ms: UnixMs(1_764_000_000_000),
            request_id: Arc::from("req_01jz8k3m2x"),
            attempt: 1,
            org: s("acme"),
            team: s("research"),
            project: s("chatbot"),
            allocation: s("chatbot-prod"),
            cost_center: s("cc-4410"),
            user: s("ada@acme.example"),
            agent: s("coder-7"),
            key_id: Some(KeyId(0x0123_4567_89ab_cdef)),
            provider: s("anthropic"),
            model: s("claude-sonnet-4-5"),
            deployment: s("anthropic-us"),
            tokens_in: Tokens(12_000),
            tokens_out: Tokens(800),
            tokens_cached: Tokens(9_000),
            tokens_cache_write: Tokens(1_000),
            tokens_reasoning: Tokens(200),
            usage_source: UsageSource::Provider,
            quantity_micros: Some(Micros(1_500_000)),
            unit: Some(ResourceUnit::GpuHour),
            cluster: s("hpc1"),
            partition: s("a100"),
            instance_type: s("gpu-a100-8x"),
            prompt_prefix: Some(crate::PromptPrefix(0x5eed_0000_c0ff_ee00)),
            list_cost_nanos: Nanos(24_450_000),
            cost_nanos: Nanos(26_895_000),
            currency: Arc::from("USD"),
            rate_card_version: s("2026-01"),
            ttft_ms: Some(412),
            latency_ms: Some(3_120),
            status: Status::Ok,
            http_status: Some(200),
        }
    }
}

/// Why bytes were not a usage event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// Not valid event JSON.
    #[error("usage event JSON at line {line}, column {column}: {reason}")]
    Json {
        /// 1-based line of the payload where parsing stopped.
        line: usize,
        /// 1-based column where parsing stopped.
        column: usize,
        /// What serde said: the field and what is wrong.
        reason: String,
    },
    /// Written by an incompatible schema version.
    #[error("usage event schema version {found} is not {USAGE_EVENT_VERSION}")]
    Version {
        /// The `v` the event carries.
        found: u16,
    },
}

/// Who an event is charged to, as far as it is known: the identity every event carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Charged<'a> {
    /// The allocation charged (and through it the project, team, org and cost center).
    pub allocation: Option<&'a Allocation>,
    /// The key's user, or a record's.
    pub user: Option<&'a Arc<str>>,
    /// The key's agent, if it names one.
    pub agent: Option<&'a Arc<str>>,
    /// The key that made the call or submitted the record (none for the admin token).
    pub key_id: Option<KeyId>,
}

impl<'a> Charged<'a> {
    /// Everything a virtual key says about who is charged.
    #[must_use]
    pub fn key(key: &'a VirtualKey) -> Charged<'a> {
        Charged {
            allocation: Some(&key.allocation),
            user: Some(&key.user),
            agent: key.agent.as_ref(),
            key_id: Some(key.id()),
        }
    }
}

impl UsageEvent {
    /// The one constructor of an event: `kind` at `ts_ms` (the period it is billed in),
    /// charged to `charged`, in `currency`; no usage, no cost, status `Ok`. Callers set what
    /// they measured with struct update syntax, so every event is built from this one base.
    #[must_use]
    pub fn new(
        event_id: EventId,
        kind: EventKind,
        ts_ms: UnixMs,
        request_id: Arc<str>,
        charged: Charged<'_>,
        currency: Arc<str>,
    ) -> UsageEvent {
        let allocation = charged.allocation;
        let project = allocation.map(|a| &a.project);
        let team = project.map(|p| &p.team);
        UsageEvent {
            v: USAGE_EVENT_VERSION,
            event_id,
            kind,
            ts_ms,
            request_id,
            attempt: 1,
            org: team.map(|t| Arc::clone(&t.org)),
            team: team.map(|t| Arc::clone(&t.name)),
            project: project.map(|p| Arc::clone(&p.name)),
            allocation: allocation.map(|a| Arc::clone(&a.name)),
            cost_center: allocation.map(|a| Arc::clone(&a.cost_center)),
            user: charged.user.cloned(),
            agent: charged.agent.cloned(),
            key_id: charged.key_id,
            provider: None,
            model: None,
            deployment: None,
            tokens_in: Tokens(0),
            tokens_out: Tokens(0),
            tokens_cached: Tokens(0),
            tokens_cache_write: Tokens(0),
            tokens_reasoning: Tokens(0),
            usage_source: UsageSource::None,
            quantity_micros: None,
            unit: None,
            cluster: None,
            partition: None,
            instance_type: None,
            prompt_prefix: None,
            list_cost_nanos: Nanos::ZERO,
            cost_nanos: Nanos::ZERO,
            currency,
            rate_card_version: None,
            ttft_ms: None,
            latency_ms: None,
            status: Status::Ok,
            http_status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_reads_as_documented() {
        let event = UsageEvent::sample();
        let json = event.to_json();
        assert_eq!(UsageEvent::from_json(&json).unwrap(), event);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["kind"], "tokens");
        assert_eq!(value["ts_ms"], 1_764_000_000_000i64);
        assert_eq!(value["key_id"], "key_0123456789abcdef");
        assert_eq!(value["cost_nanos"], 26_895_000);
        assert_eq!(value["unit"], "gpu_hour");
        assert_eq!(value["status"], "ok");
        assert_eq!(value["usage_source"], "provider");
        assert_eq!(value["event_id"].as_str().unwrap().len(), 36);
        assert_eq!(
            &value["event_id"].as_str().unwrap()[14..15],
            "7",
            "a v7 uuid"
        );
    }

    #[test]
    fn readers_tolerate_new_fields_and_refuse_other_versions() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&UsageEvent::sample().to_json()).unwrap();
        value["added_in_a_minor_version"] = serde_json::json!(true);
        assert!(UsageEvent::from_json(value.to_string().as_bytes()).is_ok());
        assert_eq!(value["prompt_prefix"], "5eed0000c0ffee00");
        // Written before `instance_type` and `prompt_prefix` existed: read as none.
        let mut older = value.clone();
        older.as_object_mut().unwrap().remove("instance_type");
        older.as_object_mut().unwrap().remove("prompt_prefix");
        let older = UsageEvent::from_json(older.to_string().as_bytes()).unwrap();
        assert_eq!((older.instance_type, older.prompt_prefix), (None, None));
        value["v"] = serde_json::json!(2);
        assert_eq!(
            UsageEvent::from_json(value.to_string().as_bytes()),
            Err(EventDecodeError::Version { found: 2 })
        );
        assert!(matches!(
            UsageEvent::from_json(b"{\"v\":1"),
            Err(EventDecodeError::Json { .. })
        ));
        assert!(matches!(
            UsageEvent::from_json(b"\xff\xfe"),
            Err(EventDecodeError::Json { .. })
        ));
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = EventId::v7(UnixMs(1_000), &[0xff; 10]);
        let b = EventId::v7(UnixMs(1_001), &[0; 10]);
        assert!(a < b);
        assert_eq!(a.0.get_version_num(), 7);
    }
}
