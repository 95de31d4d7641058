//! The lease log: asks, grants, denials and returns of budget leases as records on a Kafka
//! topic of several partitions, each team's records in the partition its name hashes to.
//!
//! Coordinators are the members of one consumer group on the topic: Kafka's own rebalancing
//! gives each partition (and so each team's tree) to one of them, and moves it when a member
//! dies. A member reads each partition it is given from the beginning, every time it is given
//! it, so its fold is of the whole log; it never commits an offset. Replicas read every
//! partition, to see their grants. This module moves bytes; what a record says, and how it is
//! folded, is the engine's (`lease`) and the gateway's.
//!
//! **Invariant:** every writer and reader puts a team in the same partition: a hash of the
//! name fixed here (FNV-1a), modulo the partition count every party checks against the
//! topic's at start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::topic::{self, ASK_TIMEOUT};

/// Why the lease log could not be set up, written or read.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLogError {
    /// The client could not be made, or the brokers refused or did not answer.
    #[error("kafka lease topic `{topic}`: {reason}")]
    Kafka {
        /// The lease topic.
        topic: String,
        /// What went wrong (librdkafka's text).
        reason: String,
    },
    /// The topic has another partition count than configured: teams would hash elsewhere.
    #[error(
        "kafka lease topic `{topic}` has {found} partitions and the config says {configured}; \
         every replica and coordinator must agree, so teams hash to one partition"
    )]
    Partitions {
        /// The lease topic.
        topic: String,
        /// The count it has.
        found: usize,
        /// The count configured.
        configured: usize,
    },
}

/// Where the lease log is.
#[derive(Clone, Debug)]
pub struct LeaseLogConfig {
    /// Kafka's `bootstrap.servers`.
    pub brokers: String,
    /// The topic's name.
    pub topic: String,
    /// Its partition count: the most coordinators that share the work.
    pub partitions: usize,
    /// How long a record may wait for the brokers before its write fails.
    pub delivery_timeout: Duration,
}

impl LeaseLogConfig {
    fn error(&self, reason: impl std::fmt::Display) -> LeaseLogError {
        LeaseLogError::Kafka {
            topic: self.topic.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The partition of `team`'s records among `partitions`.
#[must_use]
pub fn partition_of(team: &str, partitions: usize) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in team.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(hash % partitions).unwrap_or(0)
}

/// Creates the topic if it does not exist (replicated up to three times, records kept for
/// ever: a fold must be of the whole log), and checks its partition count.
pub async fn ensure_topic(config: &LeaseLogConfig) -> Result<(), LeaseLogError> {
    let partitions = i32::try_from(config.partitions.max(1)).unwrap_or(1);
    let found = topic::ensure(
        &config.brokers,
        &config.topic,
        partitions,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
    )
    .await
    .map_err(|e| config.error(e))?;
    if found == config.partitions {
        return Ok(());
    }
    Err(LeaseLogError::Partitions {
        topic: config.topic.clone(),
        found,
        configured: config.partitions,
    })
}

/// Writes records to the lease log.
pub struct LeaseWriter {
    producer: FutureProducer,
    config: LeaseLogConfig,
}

impl std::fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWriter")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl LeaseWriter {
    /// A writer to `config`'s topic: a grant or a return written is in the cluster, once, in
    /// the order written.
    pub fn new(config: &LeaseLogConfig) -> Result<LeaseWriter, LeaseLogError> {
        let producer = topic::durable_producer(&config.brokers, config.delivery_timeout)
            .map_err(|e| config.error(e))?;
        Ok(LeaseWriter {
            producer,
            config: config.clone(),
        })
    }

    /// Writes `payload` for `team` (in its partition) and waits until the brokers have it;
    /// returns its offset.
    pub async fn write(&self, team: &str, payload: &[u8]) -> Result<i64, LeaseLogError> {
        topic::write(
            &self.producer,
            &self.config.topic,
            partition_of(team, self.config.partitions),
            team.as_bytes(),
            payload,
            self.config.delivery_timeout,
        )
        .await
        .map_err(|e| self.config.error(e))
    }
}

/// One record read from the lease log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLogRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When the brokers took it (ms since the Unix epoch), if they say.
    pub timestamp_ms: Option<i64>,
    /// What was written.
    pub payload: Vec<u8>,
}

fn record_of(message: &rdkafka::message::BorrowedMessage<'_>) -> LeaseLogRecord {
    LeaseLogRecord {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        payload: message.payload().unwrap_or_default().to_vec(),
    }
}

fn client(config: &LeaseLogConfig, group: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", group)
        // Every fold is of the whole log: nothing is ever committed.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "20");
    client
}

/// Reads every partition of the lease log from its beginning (a replica's view).
pub struct LeaseReader {
    consumer: BaseConsumer,
    config: LeaseLogConfig,
    /// The offset of the next record to read, by partition.
    next: Vec<i64>,
}

impl std::fmt::Debug for LeaseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseReader")
            .field("topic", &self.config.topic)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl LeaseReader {
    /// A reader of every partition for replica `origin`, from the beginning.
    pub fn new(config: &LeaseLogConfig, origin: &str) -> Result<LeaseReader, LeaseLogError> {
        let consumer: BaseConsumer = client(config, &format!("tollgate-leases-{origin}"))
            .create()
            .map_err(|e| config.error(e))?;
        let mut list = TopicPartitionList::new();
        for partition in 0..config.partitions {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            list.add_partition_offset(&config.topic, partition, Offset::Beginning)
                .map_err(|e| config.error(e))?;
        }
        consumer.assign(&list).map_err(|e| config.error(e))?;
        Ok(LeaseReader {
            consumer,
            config: config.clone(),
            next: vec![0; config.partitions],
        })
    }

    /// The next record, waiting up to `wait`; `Err` when the client reports an error (it
    /// keeps trying on the next call).
    pub fn poll(&mut self, wait: Duration) -> Result<Option<LeaseLogRecord>, LeaseLogError> {
        let Some(message) = self.consumer.poll(wait) else {
            return Ok(None);
        };
        let message = message.map_err(|e| self.config.error(e))?;
        let record = record_of(&message);
        if let Some(next) = usize::try_from(record.partition)
            .ok()
            .and_then(|p| self.next.get_mut(p))
        {
            *next = record.offset + 1;
        }
        Ok(Some(record))
    }

    /// Whether every record the partitions held when asked has been read.
    pub fn caught_up(&self) -> Result<bool, LeaseLogError> {
        for (partition, next) in self.next.iter().enumerate() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.config.topic, partition, ASK_TIMEOUT)
                .map_err(|e| self.config.error(e))?;
            if high > low && *next < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A change of the partitions a coordinator owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// These partitions are now this member's; it reads each from its beginning.
    Assigned(Vec<i32>),
    /// These are no longer this member's.
    Revoked(Vec<i32>),
}

/// Records the group's rebalances for [`LeaseMember::poll`], and starts every assigned
/// partition at its beginning.
struct Owning {
    changes: Arc<Mutex<VecDeque<Ownership>>>,
}

impl ClientContext for Owning {}

impl ConsumerContext for Owning {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let done: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // From the beginning, every time: the fold must be of the whole log.
                let started = tpl.set_all_offsets(Offset::Beginning);
                changes.push_back(Ownership::Assigned(partitions));
                started.and_then(|()| base_consumer.assign(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                changes.push_back(Ownership::Revoked(partitions));
                base_consumer.unassign()
            }
            _ => {
                // A failed rebalance: own nothing until the next one.
                changes.push_back(Ownership::Revoked(partitions));
                base_consumer.unassign()
            }
        };
        if done.is_err() {
            changes.push_back(Ownership::Revoked(
                tpl.elements().iter().map(|e| e.partition()).collect(),
            ));
        }
    }
}

/// What [`LeaseMember::poll`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// The partitions owned changed.
    Ownership(Ownership),
    /// A record of an owned partition.
    Record(LeaseLogRecord),
}

/// A coordinator's membership of the group that shares the lease log's partitions.
pub struct LeaseMember {
    consumer: BaseConsumer<Owning>,
    changes: Arc<Mutex<VecDeque<Ownership>>>,
    config: LeaseLogConfig,
}

impl std::fmt::Debug for LeaseMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseMember")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl LeaseMember {
    /// Joins `group`. A member that stops heartbeating for `session_timeout` loses its
    /// partitions to the others.
    pub fn join(
        config: &LeaseLogConfig,
        group: &str,
        session_timeout: Duration,
    ) -> Result<LeaseMember, LeaseLogError> {
        let changes = Arc::new(Mutex::new(VecDeque::new()));
        let session_ms = session_timeout.as_millis().max(1);
        let consumer: BaseConsumer<Owning> = client(config, group)
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 6).max(1).to_string())
            // Partitions spread one by one over the members.
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(Owning {
                changes: Arc::clone(&changes),
            })
            .map_err(|e| config.error(e))?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|e| config.error(e))?;
        Ok(LeaseMember {
            consumer,
            changes,
            config: config.clone(),
        })
    }

    /// The next change of ownership or record, waiting up to `wait` for one. Changes come
    /// before the records that follow them.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<MemberEvent>, LeaseLogError> {
        if let Some(change) = self.next_change() {
            return Ok(Some(MemberEvent::Ownership(change)));
        }
        let polled = self.consumer.poll(wait);
        if let Some(change) = self.next_change() {
            // The record polled with the change is read again: its partition starts over.
            return Ok(Some(MemberEvent::Ownership(change)));
        }
        match polled {
            None => Ok(None),
            Some(Err(e)) => Err(self.config.error(e)),
            Some(Ok(message)) => Ok(Some(MemberEvent::Record(record_of(&message)))),
        }
    }

    fn next_change(&self) -> Option<Ownership> {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Reads `partition` again from its beginning.
    pub fn reread(&self, partition: i32) -> Result<(), LeaseLogError> {
        self.consumer
            .seek(
                &self.config.topic,
                partition,
                Offset::Beginning,
                ASK_TIMEOUT,
            )
            .map_err(|e| self.config.error(e))
    }

    /// The offsets of the first record of `partition` and one past its last, now.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64), LeaseLogError> {
        self.consumer
            .fetch_watermarks(&self.config.topic, partition, ASK_TIMEOUT)
            .map_err(|e| self.config.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_hashes_to_one_partition_and_teams_spread() {
        assert_eq!(partition_of("ml", 8), partition_of("ml", 8));
        let used: std::collections::HashSet<i32> = (0..64)
            .map(|i| partition_of(&format!("team-{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
        assert!((0..1000).all(|i| (0..8).contains(&partition_of(&i.to_string(), 8))));
        assert_eq!(partition_of("anything", 1), 0);
    }
}
