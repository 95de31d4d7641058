//! Admin changes shared by every replica, through the control topic (`[kafka]`).
//!
//! The admin API publishes each change (a key created or revoked, an allocation created, a
//! limit set, the rate card reloaded) as a versioned record and answers once the brokers have
//! it; a replica reads the topic from its beginning before it listens ([`catch_up`]), then
//! follows it on a thread of its own ([`FollowTask`]) and applies what it reads. Applying is
//! idempotent: a replica meets its own changes again (it applied them when it took them) and,
//! after a restart, all of them.
//!
//! Records are keyed by the entity they set, so compaction keeps each entity's latest record:
//! a revoked key's creation may be compacted away, which leaves the key unknown, refused as a
//! revoked one is. Secrets never travel: a key record carries the hash and the shown prefix.
//! A record of a version this replica cannot read is refused loudly (reported, counted in
//! `tollgate_control_refused_total`) and the ones after it still apply.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tollgate_engine::{KeyId, RateCard, UnixMs};
use tollgate_sink::control::{ControlError, ControlRecord, Follower, Publisher};

use crate::clock::now_ms;
use crate::control::admin::card_update;
use crate::control::journal::{self, Record, restored_key};
use crate::metrics::Counter;
use crate::operator::report;
use crate::state::Gateway;

/// The version of the records this build writes, and the newest it reads.
pub const CHANGE_VERSION: u32 = 1;

/// How long the follower waits for the next record before it looks at its stop flag.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// One admin change, as the control topic carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A key, allocation or limit, in the journal's own record.
    Directory {
        /// What changed.
        record: Record,
    },
    /// The rate card after a reload, as its file said (versions in force never change).
    RateCard {
        /// The card's TOML.
        toml: String,
    },
}

impl Change {
    /// The entity it sets: the record's key on the topic, which compaction keeps the latest of.
    #[must_use]
    pub fn entity(&self) -> String {
        match self {
            Change::Directory {
                record: Record::Create { id, .. } | Record::Revoke { id, .. },
            } => format!("key/{id}"),
            Change::Directory {
                record: Record::CreateAllocation { name, .. },
            } => format!("allocation/{name}"),
            Change::Directory {
                record: Record::SetLimit { level, name, .. },
            } => format!("limit/{}/{name}", level.as_str()),
            Change::Directory {
                record:
                    Record::GuardBlock { scope, name, .. } | Record::GuardClear { scope, name, .. },
            } => format!("guard/{}/{name}", scope.as_str()),
            Change::Directory {
                record: Record::CreateOperator { id, .. } | Record::RevokeOperator { id, .. },
            } => format!("operator/{id}"),
            Change::RateCard { .. } => "rate_card".to_owned(),
        }
    }
}

/// A record's bytes: its version, the replica that took the change, and the change.
#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    origin: String,
    change: Change,
}

/// What the first member of a record says, read before the rest so a newer version is told
/// from a damaged record.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// Why a record read from the topic was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Written by a newer build.
    #[error("record version {found} is newer than this build reads ({CHANGE_VERSION})")]
    Version {
        /// The record's version.
        found: u32,
    },
    /// Not a record this build can read.
    #[error("not a control record: {0}")]
    Malformed(String),
    /// A change that does not hold here (an allocation of an unknown project, a card whose
    /// versions in force differ from this replica's).
    #[error("{0}")]
    Refused(String),
}

/// The bytes of `change`, taken by replica `origin`.
#[must_use]
pub fn encode(change: &Change, origin: &str) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        version: CHANGE_VERSION,
        origin: origin.to_owned(),
        change: change.clone(),
    })
    .unwrap_or_default()
}

/// The change in a record's payload and the replica that took it.
pub fn decode(payload: &[u8]) -> Result<(String, Change), Refusal> {
    let versioned: Versioned =
        serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if versioned.version > CHANGE_VERSION || versioned.version == 0 {
        return Err(Refusal::Version {
            found: versioned.version,
        });
    }
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    Ok((envelope.origin, envelope.change))
}

/// Publishing this replica's admin changes.
#[derive(Debug)]
pub struct Replication {
    publisher: Publisher,
    origin: String,
}

impl Replication {
    /// Publishes as replica `origin` with `publisher`.
    #[must_use]
    pub fn new(publisher: Publisher, origin: String) -> Replication {
        Replication { publisher, origin }
    }

    /// Publishes `change` and waits until the brokers have it.
    pub async fn publish(&self, change: &Change) -> Result<(), ControlError> {
        let payload = encode(change, &self.origin);
        self.publisher
            .publish(&change.entity(), &payload)
            .await
            .map(drop)
    }
}

/// Applies `change` to `gateway`, idempotently: a key or allocation already there is left as
/// it is, a revocation of a key never seen is nothing to do.
pub fn apply(gateway: &Gateway, change: &Change, now: UnixMs) -> Result<(), Refusal> {
    let refused = |e: String| Refusal::Refused(e);
    match change {
        Change::Directory { record } => match record {
            Record::Create { id, .. } => {
                if gateway.keys.get(*id).is_some() {
                    return Ok(());
                }
                let key = restored_key(record.clone(), &gateway.directory, &HashSet::new())
                    .map_err(refused)?;
                gateway
                    .keys
                    .restore_many(key)
                    .map(drop)
                    .map_err(|e| refused(e.to_string()))
            }
            Record::Revoke { id, .. } => {
                revoke(gateway, *id);
                Ok(())
            }
            Record::CreateAllocation { name, .. } => {
                if gateway.directory.allocation(name).is_ok() {
                    return Ok(());
                }
                journal::apply(record, &gateway.directory).map_err(|e| refused(e.to_string()))
            }
            Record::SetLimit { .. } => {
                journal::apply(record, &gateway.directory).map_err(|e| refused(e.to_string()))
            }
            Record::GuardBlock { .. } | Record::GuardClear { .. } => {
                journal::apply_guard(record, &gateway.guards);
                Ok(())
            }
            Record::CreateOperator { .. } | Record::RevokeOperator { .. } => {
                journal::apply_operator(record, &gateway.operators).map_err(refused)
            }
        },
        Change::RateCard { toml } => {
            let card = RateCard::from_toml(toml, "the control topic's rate card")
                .map_err(|e| refused(e.to_string()))?;
            card_update(&gateway.card.load(), &card, now).map_err(refused)?;
            gateway.card.store(Arc::new(card));
            Ok(())
        }
    }
}

/// Takes key `id` out of service, if this replica knows it.
fn revoke(gateway: &Gateway, id: KeyId) {
    if gateway.keys.revoke(id).is_ok() {
        gateway.forget_key(id);
    }
}

/// Reads one record and applies it, counting and reporting what it does.
fn apply_record(gateway: &Gateway, record: &ControlRecord) {
    let outcome = decode(&record.payload).and_then(|(_, change)| apply(gateway, &change, now_ms()));
    match outcome {
        Ok(()) => gateway.metrics.add(Counter::ControlApplied, 1),
        Err(refusal) => {
            gateway.metrics.add(Counter::ControlRefused, 1);
            report(&format!(
                "control topic: record {} ({}) refused: {refusal}",
                record.offset, record.key
            ));
        }
    }
}

/// Why a start could not read the control topic to its end.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The topic could not be set up or read.
    #[error(transparent)]
    Kafka(#[from] ControlError),
    /// The brokers did not hand over the whole topic in time.
    #[error(
        "the control topic was not read to its end within {0:?}: starting would serve keys \
         revoked elsewhere; check the brokers"
    )]
    Timeout(Duration),
}

/// Reads the topic from its beginning to its end (as it is when asked) and applies every
/// record, before the gateway listens; returns how many records it read.
pub fn catch_up(
    gateway: &Gateway,
    follower: &mut Follower,
    wait_max: Duration,
) -> Result<u64, CatchUpError> {
    let deadline = Instant::now() + wait_max;
    let mut read = 0;
    loop {
        if follower.caught_up().unwrap_or(false) {
            return Ok(read);
        }
        if Instant::now() >= deadline {
            return Err(CatchUpError::Timeout(wait_max));
        }
        if let Ok(Some(record)) = follower.poll(FOLLOW_POLL) {
            apply_record(gateway, &record);
            read += 1;
        }
    }
}

/// Following the control topic on a thread of its own, until stopped.
pub struct FollowTask {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl FollowTask {
    /// Follows the topic with `follower` (caught up by [`catch_up`]), applying to `gateway`.
    pub fn start(gateway: Arc<Gateway>, mut follower: Follower) -> std::io::Result<FollowTask> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-control".into())
            .spawn(move || {
                let mut failing = false;
                while !stopping.load(Ordering::Relaxed) {
                    match follower.poll(FOLLOW_POLL) {
                        Ok(Some(record)) => {
                            failing = false;
                            apply_record(&gateway, &record);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if !failing {
                                report(&format!("{e}; admin changes from other replicas wait"));
                            }
                            failing = true;
                        }
                    }
                }
            })?;
        Ok(FollowTask { stop, thread })
    }

    /// Stops following (within one poll).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_newer_version_is_refused_not_misread() {
        let change = Change::Directory {
            record: Record::Revoke {
                id: KeyId::parse("key_0123456789abcdef").unwrap(),
                at_ms: 7,
            },
        };
        let bytes = encode(&change, "gw-a");
        assert_eq!(decode(&bytes), Ok(("gw-a".to_owned(), change.clone())));
        assert_eq!(change.entity(), "key/key_0123456789abcdef");
        let newer = br#"{"version":2,"origin":"gw-b","change":{"kind":"quota","x":1}}"#;
        assert_eq!(decode(newer), Err(Refusal::Version { found: 2 }));
        assert!(matches!(
            decode(b"{\"version\":1}"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(decode(b"garbage"), Err(Refusal::Malformed(_))));
        let card = Change::RateCard { toml: "x".into() };
        assert_eq!(card.entity(), "rate_card");
        let entities: Vec<String> = [
            r#"{"version":1,"origin":"a","change":{"kind":"directory","record":{"op":"create",
                "id":"key_0123456789abcdef","hash":"00","prefix":"tg_ab","allocation":"open",
                "user":"ada","created_at_ms":1}}}"#,
            r#"{"version":1,"origin":"a","change":{"kind":"directory","record":{
                "op":"create_allocation","name":"made","project":"chatbot",
                "budget":{"limit":1000000000,"period":"month","soft_limit_percent":80}}}}"#,
            r#"{"version":1,"origin":"a","change":{"kind":"directory","record":{
                "op":"set_limit","level":"allocation","name":"made","limit":2500000000}}}"#,
        ]
        .iter()
        .map(|record| decode(record.as_bytes()).unwrap().1.entity())
        .collect();
        assert_eq!(
            entities,
            [
                "key/key_0123456789abcdef",
                "allocation/made",
                "limit/allocation/made"
            ]
        );
    }
}
