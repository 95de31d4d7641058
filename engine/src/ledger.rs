//! The resource ledger: GPU-hours, core-hours, node-hours and GB-months as usage records,
//! priced by the same rate card and booked against the same budgets as tokens.
//!
//! A [`UsageRecord`] is one fact from outside (a job's accounting, a month of storage), parsed
//! from its JSON form at the edge ([`UsageRecord::from_json`]) into typed values. It becomes a
//! [`UsageEvent`] ([`UsageRecord::to_event`]) whose `event_id` is derived from the record id and
//! its instant ([`record_event_id`]), so a record sent twice is the same event everywhere.
//! [`RecordIndex`] remembers which record ids were booked (bounded in count and in time), and
//! [`ReservationBook`] keeps the holds a scheduler took before a job started until the job's
//! accounting settles them or they expire.
//!
//! **Invariant:** a record id is booked at most once within the index's window; a resend is
//! answered as a duplicate, a resend with different content as a conflict, and neither changes
//! anything. Everything here takes `now` as an argument: no clock, no I/O.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::event::{Charged, EventId, EventKind, UsageEvent};
use crate::identity::Allocation;
use crate::ids::KeyId;
use crate::limits::{RECORD_ID_BYTES_MAX, RECORD_NAME_BYTES_MAX};
use crate::money::{DecimalError, Micros, Nanos};
use crate::ratecard::{Cost, ResourceUnit, Site};
use crate::reservation::Reservation;
use crate::time::{UnixMs, parse_rfc3339};

/// A record's id, chosen by its source and stable across resends (`slurm:hpc1:4242:gpu_hour`):
/// 1 to [`RECORD_ID_BYTES_MAX`] visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordId(Arc<str>);

impl RecordId {
    /// Parses an id.
    pub fn parse(text: &str) -> Result<RecordId, String> {
        if text.is_empty() || text.len() > RECORD_ID_BYTES_MAX {
            return Err(format!(
                "a record id has 1 to {RECORD_ID_BYTES_MAX} characters"
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a record id is visible ASCII without spaces".into());
        }
        Ok(RecordId(Arc::from(text)))
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as shared text (an event's `request_id`).
    #[must_use]
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The index key of the id.
    #[must_use]
    pub fn key(&self) -> RecordKey {
        RecordKey::of(&self.0)
    }
}

/// 128 bits of SHA-256 of a record id: what [`RecordIndex`] stores instead of the id itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(pub u128);

impl RecordKey {
    /// The key of `id`.
    #[must_use]
    pub fn of(id: &str) -> RecordKey {
        let digest = Sha256::new()
            .chain_update(b"tollgate.record-id\0")
            .chain_update(id.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        for (slot, byte) in bytes.iter_mut().zip(digest.iter()) {
            *slot = *byte;
        }
        RecordKey(u128::from_be_bytes(bytes))
    }
}

/// The event id of a record: a UUIDv7 at the record's instant whose random bits are a hash of
/// the record id, so every resend, every restart and every later stage agrees on it.
#[must_use]
pub fn record_event_id(id: &RecordId, at: UnixMs) -> EventId {
    let digest = Sha256::new()
        .chain_update(b"tollgate.record-event\0")
        .chain_update(id.as_str().as_bytes())
        .finalize();
    let mut random = [0u8; 10];
    for (slot, byte) in random.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    EventId::v7(at, &random)
}

/// The id of a budget hold taken by `authorize`: `rsv_` and 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(pub u128);

impl ReservationId {
    /// Parses `rsv_` and 32 hex digits.
    pub fn parse(text: &str) -> Result<ReservationId, String> {
        let bad = || {
            format!(
                "`{}` is not a reservation id (rsv_ and 32 hex digits)",
                text.chars().take(64).collect::<String>()
            )
        };
        let hex = text.strip_prefix("rsv_").ok_or_else(bad)?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u128::from_str_radix(hex, 16)
            .map(ReservationId)
            .map_err(|_| bad())
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rsv_{:032x}", self.0)
    }
}

/// Why a record was refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct RecordError {
    /// The field (`quantity`), or `record` for the record as a whole.
    pub field: String,
    /// What is wrong with it, in words for the caller.
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> RecordError {
    RecordError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// One usage record: a quantity of one resource unit, used by one allocation over a time span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The source's id of the record; resending it changes nothing.
    pub id: RecordId,
    /// The allocation charged, by name.
    pub allocation: Arc<str>,
    /// The unit its quantity counts, which picks the price.
    pub unit: ResourceUnit,
    /// How much, in millionths of the unit.
    pub quantity: Micros,
    /// When the usage began: the instant it is priced and booked at.
    pub start: UnixMs,
    /// When it ended (at or after `start`).
    pub end: UnixMs,
    /// Where it was used: what picks the most specific price.
    pub site: Site,
    /// Who (a job's user), if known.
    pub user: Option<Arc<str>>,
    /// The hold this usage settles, if `authorize` took one for it.
    pub reservation: Option<ReservationId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    id: String,
    allocation: String,
    unit: ResourceUnit,
    #[serde(deserialize_with = "deserialize_quantity")]
    quantity: Micros,
    start: String,
    end: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    instance_type: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    reservation: Option<String>,
}

/// A name field: 1 to [`RECORD_NAME_BYTES_MAX`] bytes, no control characters, trimmed.
pub fn parse_name(field: &str, text: &str) -> Result<Arc<str>, RecordError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.len() > RECORD_NAME_BYTES_MAX {
        return Err(refuse(
            field,
            format!("must have 1 to {RECORD_NAME_BYTES_MAX} bytes"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(refuse(field, "must not hold control characters"));
    }
    Ok(Arc::from(trimmed))
}

fn optional_name(field: &str, text: Option<String>) -> Result<Option<Arc<str>>, RecordError> {
    text.map(|t| parse_name(field, &t)).transpose()
}

impl UsageRecord {
    /// Parses a record's JSON form; the error names the field.
    pub fn from_json(value: &serde_json::Value) -> Result<UsageRecord, RecordError> {
        let raw: RawRecord = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." {
                "record".to_owned()
            } else {
                path
            };
            refuse(&field, e.inner().to_string())
        })?;
        let id = RecordId::parse(&raw.id).map_err(|reason| refuse("id", reason))?;
        let instant =
            |field: &str, text: &str| parse_rfc3339(text).map_err(|reason| refuse(field, reason));
        let start = instant("start", &raw.start)?;
        let end = instant("end", &raw.end)?;
        if end < start {
            return Err(refuse("end", format!("{end} is before the start {start}")));
        }
        Ok(UsageRecord {
            id,
            allocation: parse_name("allocation", &raw.allocation)?,
            unit: raw.unit,
            quantity: raw.quantity,
            start,
            end,
            site: Site {
                cluster: optional_name("cluster", raw.cluster)?,
                partition: optional_name("partition", raw.partition)?,
                instance_type: optional_name("instance_type", raw.instance_type)?,
            },
            user: optional_name("user", raw.user)?,
            reservation: raw
                .reservation
                .map(|r| ReservationId::parse(&r))
                .transpose()
                .map_err(|reason| refuse("reservation", reason))?,
        })
    }

    /// The record's JSON form, as [`UsageRecord::from_json`] reads it.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "allocation": &*self.allocation,
            "unit": self.unit.as_str(),
            "quantity": micros_decimal(self.quantity),
            "start": self.start.to_string(),
            "end": self.end.to_string(),
            "cluster": self.site.cluster.as_deref(),
            "partition": self.site.partition.as_deref(),
            "instance_type": self.site.instance_type.as_deref(),
            "user": self.user.as_deref(),
            "reservation": self.reservation.map(|r| r.to_string()),
        })
    }

    /// The usage event of this record, charged to `allocation` at `cost` priced with
    /// `version`, submitted by `key` (none for the admin token).
    #[must_use]
    pub fn to_event(
        &self,
        allocation: &Allocation,
        version: &Arc<str>,
        cost: Cost,
        currency: &Arc<str>,
        key: Option<KeyId>,
    ) -> UsageEvent {
        let kind = match self.unit {
            ResourceUnit::GpuHour | ResourceUnit::CoreHour | ResourceUnit::NodeHour => {
                EventKind::Compute
            }
            ResourceUnit::GbMonth => EventKind::Storage,
        };
        let charged = Charged {
            allocation: Some(allocation),
            user: self.user.as_ref(),
            agent: None,
            key_id: key,
        };
        UsageEvent {
            quantity_micros: Some(self.quantity),
            unit: Some(self.unit),
            cluster: self.site.cluster.clone(),
            partition: self.site.partition.clone(),
            instance_type: self.site.instance_type.clone(),
            list_cost_nanos: cost.list,
            cost_nanos: cost.billed,
            rate_card_version: Some(Arc::clone(version)),
            ..UsageEvent::new(
                record_event_id(&self.id, self.start),
                kind,
                self.start,
                Arc::clone(self.id.as_arc()),
                charged,
                Arc::clone(currency),
            )
        }
    }
}

/// A quantity as an exact decimal of whole units: `16.5`, `0.000278`.
#[must_use]
pub fn micros_decimal(quantity: Micros) -> String {
    let whole = quantity.0 / 1_000_000;
    let frac = quantity.0 % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Reads a quantity written as a decimal string (`"16.5"`) or a whole number; a float literal,
/// a negative number or more than six decimals is refused.
pub fn deserialize_quantity<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Micros, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Micros;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a quantity as a decimal string (\"16.5\") or a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Micros, E> {
            if v.trim_start().starts_with('-') {
                return Err(E::custom("a quantity cannot be negative"));
            }
            Micros::from_decimal(v).map_err(|e| match e {
                DecimalError::TooPrecise { .. } => E::custom(
                    "more than 6 decimal places: quantities are kept in millionths of a unit",
                ),
                other => E::custom(other),
            })
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Micros, E> {
            v.checked_mul(1_000_000)
                .map(Micros)
                .ok_or_else(|| E::custom("quantity too large"))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Micros, E> {
            let v = u64::try_from(v).map_err(|_| E::custom("a quantity cannot be negative"))?;
            self.visit_u64(v)
        }
        fn visit_f64<E: serde::de::Error>(self, _v: f64) -> Result<Micros, E> {
            Err(E::custom(
                "write quantities as strings (\"16.5\") or whole numbers: a float cannot hold them exactly",
            ))
        }
    }
    de.deserialize_any(Visitor)
}

/// What a booked event's content hashes to, so a resend with the same id but other content is
/// told apart from a true resend. Covers what billing depends on: allocation, unit, quantity,
/// instant, site and user.
#[must_use]
pub fn fingerprint(event: &UsageEvent) -> u64 {
    let mut hash = Sha256::new();
    let mut field = |value: Option<&str>| {
        match value {
            Some(v) => {
                hash.update([1u8]);
                hash.update((v.len() as u64).to_le_bytes());
                hash.update(v.as_bytes());
            }
            None => hash.update([0u8]),
        };
    };
    field(event.allocation.as_deref());
    field(event.unit.map(ResourceUnit::as_str));
    field(event.cluster.as_deref());
    field(event.partition.as_deref());
    field(event.instance_type.as_deref());
    field(event.user.as_deref());
    hash.update(
        event
            .quantity_micros
            .map_or(u64::MAX, |q| q.0)
            .to_le_bytes(),
    );
    hash.update(event.ts_ms.0.to_le_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    for (slot, byte) in bytes.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    u64::from_le_bytes(bytes)
}

/// How a record id stands against the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never booked (within the window): book it.
    New,
    /// Booked before with the same content: nothing to do.
    Duplicate,
    /// Booked before with other content: the first booking stands, nothing to do.
    Conflict,
}

/// Why the index cannot take a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The record's instant is older than the window the index remembers.
    #[error(
        "the record began before {oldest}, the oldest instant the ledger remembers record ids for"
    )]
    TooOld {
        /// The oldest instant accepted now.
        oldest: UnixMs,
    },
    /// The index holds its most ids; it forgets ids only as their records leave the window
    /// ([`RecordIndex::prune`]).
    #[error("the ledger remembers at most {records_max} record ids")]
    Full {
        /// The most ids the index holds (its config).
        records_max: usize,
    },
}

/// The record ids booked in the last `window_ms`, with each one's content fingerprint and
/// instant. Bounded twice: by time (ids of records older than the window are forgotten, and
/// such records are refused, so forgetting them can never book one twice) and by count
/// (`records_max`; past it new records are refused until old ones age out). A slot is 33 bytes
/// (key, fingerprint, instant, control byte) and the table keeps 1.1 to 2.3 slots an id.
#[derive(Debug)]
pub struct RecordIndex {
    seen: HashMap<RecordKey, (u64, UnixMs)>,
    window_ms: i64,
    records_max: usize,
}

impl RecordIndex {
    /// An empty index remembering `window_ms` back from `now`, at most `records_max` ids.
    #[must_use]
    pub fn new(window_ms: i64, records_max: usize) -> RecordIndex {
        RecordIndex {
            seen: HashMap::new(),
            window_ms: window_ms.max(0),
            records_max,
        }
    }

    /// The oldest record instant accepted at `now`.
    #[must_use]
    pub fn oldest(&self, now: UnixMs) -> UnixMs {
        now.plus_ms(-self.window_ms)
    }

    /// Whether a record that began at `at` may be booked at `now` (it is within the window).
    pub fn check_age(&self, at: UnixMs, now: UnixMs) -> Result<(), IndexError> {
        let oldest = self.oldest(now);
        if at < oldest {
            return Err(IndexError::TooOld { oldest });
        }
        Ok(())
    }

    /// How `key` with content `fingerprint` stands.
    #[must_use]
    pub fn seen(&self, key: RecordKey, fingerprint: u64) -> Seen {
        match self.seen.get(&key) {
            None => Seen::New,
            Some((f, _)) if *f == fingerprint => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    /// Whether `more` new ids fit.
    #[must_use]
    pub fn has_room(&self, more: usize) -> bool {
        self.seen.len().saturating_add(more) <= self.records_max
    }

    /// Remembers a booked record. A restart restores ids from the event log this way too.
    pub fn insert(
        &mut self,
        key: RecordKey,
        fingerprint: u64,
        at: UnixMs,
    ) -> Result<(), IndexError> {
        if !self.seen.contains_key(&key) && self.seen.len() >= self.records_max {
            return Err(IndexError::Full {
                records_max: self.records_max,
            });
        }
        self.seen.insert(key, (fingerprint, at));
        Ok(())
    }

    /// Forgets the ids of records older than the window at `now`; returns how many.
    pub fn prune(&mut self, now: UnixMs) -> usize {
        let oldest = self.oldest(now);
        let before = self.seen.len();
        self.seen.retain(|_, (_, at)| *at >= oldest);
        before - self.seen.len()
    }

    /// Ids remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A hold taken by `authorize`, waiting for the usage that settles it.
#[derive(Debug)]
pub struct Hold {
    /// The budget held (at allocation, project and team).
    pub reservation: Reservation,
    /// The unit authorized, which the settling usage is expected in.
    pub unit: ResourceUnit,
    /// The quantity authorized, in millionths of `unit`.
    pub quantity: Micros,
    /// The quantity's billed cost when it was taken: what is held at every limited level.
    pub amount: Nanos,
    /// When `authorize` took it (`expires_at` is this plus the hold's TTL).
    pub taken_at: UnixMs,
    /// When it is given back if nothing settles it.
    pub expires_at: UnixMs,
}

/// Why a hold could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("the ledger keeps at most {reservations_max} reservations")]
pub struct BookFull {
    /// The most holds the book keeps (its config).
    pub reservations_max: usize,
    /// The hold, given back to the caller (dropping it releases the budget).
    pub hold: Box<Hold>,
}

/// Holds by id, with their expiry: at most `reservations_max`. A hold leaves the book when it
/// is settled ([`ReservationBook::take`]), released, or expired ([`ReservationBook::expire`]);
/// dropping it gives its budget back at every level.
#[derive(Debug)]
pub struct ReservationBook {
    holds: HashMap<ReservationId, Hold>,
    by_expiry: BTreeSet<(UnixMs, ReservationId)>,
    reservations_max: usize,
}

impl ReservationBook {
    /// An empty book.
    #[must_use]
    pub fn new(reservations_max: usize) -> ReservationBook {
        ReservationBook {
            holds: HashMap::new(),
            by_expiry: BTreeSet::new(),
            reservations_max,
        }
    }

    /// Keeps `hold` under `id`; a full book hands it back.
    pub fn insert(&mut self, id: ReservationId, hold: Hold) -> Result<(), BookFull> {
        if self.holds.len() >= self.reservations_max || self.holds.contains_key(&id) {
            return Err(BookFull {
                reservations_max: self.reservations_max,
                hold: Box::new(hold),
            });
        }
        self.by_expiry.insert((hold.expires_at, id));
        self.holds.insert(id, hold);
        Ok(())
    }

    /// The hold under `id`, if it is still held.
    #[must_use]
    pub fn get(&self, id: ReservationId) -> Option<&Hold> {
        self.holds.get(&id)
    }

    /// Takes the hold under `id` out of the book (to settle or release it).
    pub fn take(&mut self, id: ReservationId) -> Option<Hold> {
        let hold = self.holds.remove(&id)?;
        self.by_expiry.remove(&(hold.expires_at, id));
        Some(hold)
    }

    /// Takes out every hold whose expiry is at or before `now`, oldest first; dropping them
    /// gives their budget back.
    pub fn expire(&mut self, now: UnixMs) -> Vec<(ReservationId, Hold)> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(hold) = self.holds.remove(&id) {
                expired.push((id, hold));
            }
        }
        expired
    }

    /// Holds kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    /// Whether no hold is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetSpec, Level};
    use crate::identity::test_directory;
    use crate::reservation::reserve;
    use crate::time::Period;
    use proptest::prelude::*;
    use serde_json::json;

    const NOV: UnixMs = UnixMs(1_763_942_400_000); // 2025-11-24T00:00:00Z

    fn record(extra: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "id": "slurm:hpc1:4242:gpu_hour",
            "allocation": "alloc",
            "unit": "gpu_hour",
            "quantity": "16.5",
            "start": "2025-11-24T00:00:00Z",
            "end": "2025-11-24T08:15:00Z",
            "partition": "h100",
        });
        if let (Some(fields), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                fields.insert(k.clone(), v.clone());
            }
        }
        base
    }

    fn check(extra: serde_json::Value, expect: Result<(), (&str, &str)>) {
        let parsed = UsageRecord::from_json(&record(extra.clone()));
        match (parsed, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err((field, needle))) => {
                assert_eq!(e.field, field, "{extra}: {e}");
                assert!(e.reason.contains(needle), "{extra}: {e}");
            }
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn records_parse_into_typed_values_and_refuse_naming_the_field() {
        let parsed = UsageRecord::from_json(&record(json!({}))).unwrap();
        assert_eq!(parsed.quantity, Micros(16_500_000));
        assert_eq!(parsed.start, NOV);
        assert_eq!(parsed.site.partition.as_deref(), Some("h100"));
        assert_eq!(UsageRecord::from_json(&parsed.to_json()).unwrap(), parsed);
        check(json!({"quantity": 3}), Ok(()));
        check(json!({"quantity": "0"}), Ok(()));
        check(json!({"quantity": "0.000001"}), Ok(()));
        check(
            json!({"quantity": "0.0000001"}),
            Err(("quantity", "6 decimal")),
        );
        check(json!({"quantity": 1.5}), Err(("quantity", "float")));
        check(json!({"quantity": -2}), Err(("quantity", "negative")));
        check(json!({"quantity": "-2"}), Err(("quantity", "negative")));
        check(json!({"quantity": "1e3"}), Err(("quantity", "decimal")));
        check(
            json!({"unit": "tpu_hour"}),
            Err(("unit", "unknown variant")),
        );
        check(json!({"start": "yesterday"}), Err(("start", "RFC 3339")));
        check(
            json!({"end": "2025-11-23T00:00:00Z"}),
            Err(("end", "before")),
        );
        check(json!({"id": ""}), Err(("id", "1 to")));
        check(json!({"id": "a b"}), Err(("id", "visible ASCII")));
        check(json!({"allocation": " "}), Err(("allocation", "1 to")));
        check(json!({"cluster": "a\u{7}"}), Err(("cluster", "control")));
        check(
            json!({"reservation": "rsv_12"}),
            Err(("reservation", "not a reservation")),
        );
        check(json!({"gpus": 2}), Err(("gpus", "unknown field")));
        let missing = json!({"id": "x", "allocation": "a", "unit": "gpu_hour", "start": "2025-11-24T00:00:00Z", "end": "2025-11-24T00:00:00Z"});
        let e = UsageRecord::from_json(&missing).unwrap_err();
        assert!(e.reason.contains("quantity"), "{e}");
    }

    #[test]
    fn a_record_is_the_same_event_every_time() {
        let (_dir, allocation) = test_directory(
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
        )
        .unwrap();
        let parsed = UsageRecord::from_json(&record(json!({"user": "ada"}))).unwrap();
        let version: Arc<str> = Arc::from("v1");
        let currency: Arc<str> = Arc::from("USD");
        let cost = Cost {
            list: Nanos(10),
            billed: Nanos(9),
        };
        let a = parsed.to_event(&allocation, &version, cost, &currency, None);
        let b = parsed.to_event(&allocation, &version, cost, &currency, None);
        assert_eq!(a, b);
        assert_eq!(a.event_id.0.get_version_num(), 7);
        assert_eq!(a.kind, EventKind::Compute);
        assert_eq!(&*a.request_id, "slurm:hpc1:4242:gpu_hour");
        assert_eq!((a.ts_ms, a.cost_nanos), (NOV, Nanos(9)));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        // Another id, another event; other content under the same id, another fingerprint.
        let other =
            UsageRecord::from_json(&record(json!({"id": "slurm:hpc1:4243:gpu_hour"}))).unwrap();
        assert_ne!(
            other
                .to_event(&allocation, &version, cost, &currency, None)
                .event_id,
            a.event_id
        );
        let more = UsageRecord::from_json(&record(json!({"quantity": "17"}))).unwrap();
        assert_ne!(
            fingerprint(&more.to_event(&allocation, &version, cost, &currency, None)),
            fingerprint(&a)
        );
        let storage = UsageRecord::from_json(&record(json!({"unit": "gb_month"}))).unwrap();
        assert_eq!(
            storage
                .to_event(&allocation, &version, cost, &currency, None)
                .kind,
            EventKind::Storage
        );
    }

    #[test]
    fn the_index_tells_new_from_duplicate_and_conflict_within_its_bounds() {
        let day = 86_400_000;
        let mut index = RecordIndex::new(10 * day, 2);
        let (a, b, c) = (RecordKey::of("a"), RecordKey::of("b"), RecordKey::of("c"));
        assert_eq!(index.seen(a, 1), Seen::New);
        index.insert(a, 1, NOV).unwrap();
        assert_eq!(index.seen(a, 1), Seen::Duplicate);
        assert_eq!(index.seen(a, 2), Seen::Conflict);
        index.insert(b, 1, NOV.plus_ms(3 * day)).unwrap();
        assert!(!index.has_room(1));
        assert_eq!(
            index.insert(c, 1, NOV),
            Err(IndexError::Full { records_max: 2 })
        );
        // Too old to accept, so safe to forget.
        let later = NOV.plus_ms(12 * day);
        assert!(matches!(
            index.check_age(NOV, later),
            Err(IndexError::TooOld { .. })
        ));
        assert!(index.check_age(NOV.plus_ms(3 * day), later).is_ok());
        assert_eq!(index.prune(later), 1);
        assert_eq!(index.seen(a, 1), Seen::New);
        assert_eq!(index.seen(b, 1), Seen::Duplicate);
        assert!(index.has_room(1));
    }

    #[test]
    fn reservations_expire_in_order_and_give_their_hold_back() {
        let (_dir, allocation) = test_directory(
            BudgetSpec::limited(Nanos(1_000), Period::Month),
            BudgetSpec::unlimited(Period::Month),
            BudgetSpec::unlimited(Period::Month),
        )
        .unwrap();
        let in_flight = || allocation.budget_cells()[0].snapshot(NOV).in_flight;
        let mut book = ReservationBook::new(2);
        let hold = |amount: u64, expires_at: UnixMs| Hold {
            reservation: reserve(&allocation, NOV, Nanos(amount)).unwrap(),
            unit: ResourceUnit::GpuHour,
            quantity: Micros(1),
            amount: Nanos(amount),
            taken_at: NOV,
            expires_at,
        };
        book.insert(ReservationId(1), hold(300, NOV.plus_ms(500)))
            .unwrap();
        book.insert(ReservationId(2), hold(200, NOV.plus_ms(100)))
            .unwrap();
        assert_eq!(in_flight(), Nanos(500));
        let full = book.insert(ReservationId(3), hold(100, NOV)).unwrap_err();
        drop(full);
        assert_eq!(in_flight(), Nanos(500), "the refused hold was given back");
        assert!(book.expire(NOV.plus_ms(99)).is_empty());
        let expired: Vec<_> = book
            .expire(NOV.plus_ms(100))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(expired, vec![ReservationId(2)]);
        assert_eq!(in_flight(), Nanos(300));
        let taken = book.take(ReservationId(1)).unwrap();
        assert!(book.take(ReservationId(1)).is_none());
        assert!(
            book.expire(NOV.plus_ms(10_000)).is_empty(),
            "taken holds never expire"
        );
        taken.reservation.settle_at(&[(NOV, Nanos(250))]);
        let s = allocation.budget_cells()[0].snapshot(NOV);
        assert_eq!((s.spent, s.in_flight), (Nanos(250), Nanos(0)));
        assert_eq!(Level::ALL.len(), 3);
    }

    #[test]
    fn reservation_ids_round_trip() {
        let id = ReservationId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let text = id.to_string();
        assert_eq!(text, "rsv_0123456789abcdef0011223344556677");
        assert_eq!(ReservationId::parse(&text), Ok(id));
        assert!(ReservationId::parse("rsv_0123").is_err());
        assert!(ReservationId::parse("key_0123456789abcdef0011223344556677").is_err());
        assert_eq!(micros_decimal(Micros(16_500_000)), "16.5");
        assert_eq!(micros_decimal(Micros(278)), "0.000278");
        assert_eq!(micros_decimal(Micros(3_000_000)), "3");
    }

    proptest! {
        #[test]
        fn parsing_any_json_never_panics(text in ".{0,200}", n in any::<i64>(), f in any::<f64>()) {
            for value in [json!(text), json!(n), json!(f), record(json!({"quantity": text.clone()})),
                          record(json!({"start": text.clone()})), record(json!({"quantity": n}))] {
                let _ = UsageRecord::from_json(&value);
            }
        }
    }
}
