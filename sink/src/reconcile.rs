//! Reconciliation: other replicas' settled spend, read from the usage topic, for the budget
//! table.
//!
//! Every gateway replica ships its events to the same topic, each record carrying its replica
//! id. A `Reconciler` reads the whole topic (every partition assigned by hand from its
//! beginning, no group membership and no commits, so every start rebuilds the other replicas'
//! spend of the live periods, and a replica killed a moment ago leaves no group member behind
//! for its restart to wait out), skips its own replica's records (already in its table when they were settled) and
//! events delivered twice, and sums the rest per allocation and hour. The caller applies those
//! sums to its budget table every reconcile interval: an hour's start falls in the same day,
//! week and month as every instant of the hour, so the sums land in the periods of the events
//! they came from. The topic's retention must cover the longest budget period in use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Deserialize;
use tollgate_engine::{Nanos, UnixMs};

use crate::dedup::Dedup;
use crate::kafka::ORIGIN_HEADER;

/// Why reconciliation could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The consumer could not be made, or the topic's partitions not assigned
    /// (librdkafka's text).
    #[error("kafka: {0}")]
    Kafka(String),
}

/// Other replicas' spend to apply: `nanos` at `at` on `allocation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    /// The allocation's name.
    pub allocation: Arc<str>,
    /// The start of the hour the spend happened in.
    pub at: UnixMs,
    /// The spend, in nano-units.
    pub nanos: Nanos,
    /// Events summed into it.
    pub events: u64,
}

/// Running counts, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileTotals {
    /// Other replicas' events summed.
    pub events: u64,
    /// Their spend, in nano-units.
    pub nanos: u128,
    /// Records of this replica, skipped.
    pub own: u64,
    /// Events delivered twice, dropped.
    pub duplicates: u64,
    /// Records that were not usage events, skipped.
    pub unreadable: u64,
}

#[derive(Deserialize)]
struct Spend {
    event_id: uuid::Uuid,
    ts_ms: i64,
    allocation: Option<Arc<str>>,
    cost_nanos: u64,
}

/// Reads the topic and sums other replicas' spend.
pub struct Reconciler {
    consumer: BaseConsumer,
    topic: String,
    origin: String,
    seen: Dedup,
    pending: BTreeMap<(Arc<str>, i64), (u64, u64)>,
    totals: ReconcileTotals,
    /// Partitions assigned so far.
    assigned: HashSet<i32>,
    /// When the topic's partitions were last looked up.
    refreshed: Option<Instant>,
}

/// How often the topic's partitions are looked up again (a topic made after the gateway
/// started, or given more partitions).
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("origin", &self.origin)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

const HOUR_MS: i64 = 3_600_000;

impl Reconciler {
    /// A reconciler for replica `origin` of `topic` on `brokers`, remembering `dedup_window`
    /// recent event ids.
    pub fn new(
        brokers: &str,
        topic: &str,
        origin: &str,
        dedup_window: usize,
    ) -> Result<Reconciler, ReconcileError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Partitions are assigned by hand from their beginning; the group id is required by
            // the client but no group is joined and nothing is committed.
            .set("group.id", format!("tollgate-reconcile-{origin}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| ReconcileError::Kafka(e.to_string()))?;
        Ok(Reconciler {
            consumer,
            topic: topic.to_owned(),
            origin: origin.to_owned(),
            seen: Dedup::new(dedup_window),
            pending: BTreeMap::new(),
            totals: ReconcileTotals::default(),
            assigned: HashSet::new(),
            refreshed: None,
        })
    }

    /// Assigns partitions not yet assigned (from their beginning), keeping the others where
    /// they are. Returns whether the topic's partitions could be looked up.
    fn refresh(&mut self) -> bool {
        // Until the topic has partitions (nothing shipped yet), look every time: spend must be
        // seen from the first record on.
        if !self.assigned.is_empty()
            && self
                .refreshed
                .is_some_and(|t| t.elapsed() < REFRESH_INTERVAL)
        {
            return true;
        }
        let Ok(metadata) = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
        else {
            return false;
        };
        self.refreshed = Some(Instant::now());
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.iter().all(|p| self.assigned.contains(p)) {
            return true;
        }
        let mut positions: HashMap<i32, Offset> = HashMap::new();
        if let Ok(position) = self.consumer.position() {
            for element in position.elements() {
                positions.insert(element.partition(), element.offset());
            }
        }
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            let offset = match positions.get(partition) {
                Some(Offset::Offset(o)) => Offset::Offset(*o),
                _ => Offset::Beginning,
            };
            if list
                .add_partition_offset(&self.topic, *partition, offset)
                .is_err()
            {
                return false;
            }
        }
        if self.consumer.assign(&list).is_err() {
            return false;
        }
        self.assigned = partitions.into_iter().collect();
        true
    }

    /// What it has read so far.
    #[must_use]
    pub fn totals(&self) -> &ReconcileTotals {
        &self.totals
    }

    /// Reads records for up to `budget`; returns how many it read.
    pub fn poll(&mut self, budget: Duration) -> u64 {
        let deadline = Instant::now() + budget;
        let mut read = 0;
        self.refresh();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return read;
            }
            let record = match self.consumer.poll(left.min(Duration::from_millis(100))) {
                None => continue,
                // A broker away: librdkafka reconnects; reading resumes where it was.
                Some(Err(_)) => continue,
                Some(Ok(message)) => {
                    let own = message.headers().is_some_and(|headers| {
                        headers.iter().any(|h| {
                            h.key == ORIGIN_HEADER && h.value == Some(self.origin.as_bytes())
                        })
                    });
                    if own {
                        None
                    } else {
                        Some(serde_json::from_slice::<Spend>(
                            message.payload().unwrap_or_default(),
                        ))
                    }
                }
            };
            read += 1;
            match record {
                None => self.totals.own += 1,
                Some(Err(_)) => self.totals.unreadable += 1,
                Some(Ok(spend)) => self.add(spend),
            }
        }
    }

    fn add(&mut self, spend: Spend) {
        if !self.seen.insert(spend.event_id.as_u128()) {
            self.totals.duplicates += 1;
            return;
        }
        let Some(allocation) = spend.allocation else {
            return;
        };
        self.totals.events += 1;
        self.totals.nanos += u128::from(spend.cost_nanos);
        let hour = spend.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let entry = self.pending.entry((allocation, hour)).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(spend.cost_nanos);
        entry.1 += 1;
    }

    /// The sums read since the last call, to apply to the budget table.
    pub fn take(&mut self) -> Vec<Posting> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(_, (nanos, _))| *nanos > 0)
            .map(|((allocation, hour), (nanos, events))| Posting {
                allocation,
                at: UnixMs(hour),
                nanos: Nanos(nanos),
                events,
            })
            .collect()
    }

    /// Whether every partition of the topic has been read up to its end as it was when asked
    /// (used at start, before the gateway admits anything); true for a topic that does not
    /// exist yet, false when the broker cannot be asked.
    pub fn caught_up(&mut self) -> bool {
        if !self.refresh() {
            return false;
        }
        let Ok(position) = self.consumer.position() else {
            return false;
        };
        let mut positions: HashMap<i32, i64> = HashMap::new();
        for element in position.elements() {
            if let Offset::Offset(offset) = element.offset() {
                positions.insert(element.partition(), offset);
            }
        }
        // No partition: the topic does not exist yet (nothing was ever shipped), so there is
        // nothing to read.
        self.assigned.iter().all(|&partition| {
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(2))
            else {
                return false;
            };
            high <= low || positions.get(&partition).is_some_and(|p| *p >= high)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(id: u128, ts_ms: i64, allocation: &str, cost_nanos: u64) -> Spend {
        Spend {
            event_id: uuid::Uuid::from_u128(id),
            ts_ms,
            allocation: Some(allocation.into()),
            cost_nanos,
        }
    }

    #[test]
    fn spend_is_summed_per_allocation_and_hour_once() {
        let Ok(mut reconciler) = Reconciler::new("127.0.0.1:1", "t", "me", 100) else {
            return;
        };
        let hour = 1_764_000_000_000_i64.div_euclid(HOUR_MS) * HOUR_MS;
        reconciler.add(spend(1, hour + 5, "a", 10));
        reconciler.add(spend(2, hour + HOUR_MS - 1, "a", 15));
        reconciler.add(spend(2, hour + HOUR_MS - 1, "a", 15)); // delivered twice
        reconciler.add(spend(3, hour + HOUR_MS, "a", 7)); // the next hour
        reconciler.add(spend(4, hour, "b", 1));
        let postings = reconciler.take();
        assert_eq!(
            postings,
            vec![
                Posting {
                    allocation: "a".into(),
                    at: UnixMs(hour),
                    nanos: Nanos(25),
                    events: 2
                },
                Posting {
                    allocation: "a".into(),
                    at: UnixMs(hour + HOUR_MS),
                    nanos: Nanos(7),
                    events: 1
                },
                Posting {
                    allocation: "b".into(),
                    at: UnixMs(hour),
                    nanos: Nanos(1),
                    events: 1
                },
            ]
        );
        assert_eq!(reconciler.totals().duplicates, 1);
        assert_eq!(reconciler.totals().nanos, 33);
        assert!(reconciler.take().is_empty(), "taken once");
    }
}
