//! The control topic: the admin API's changes as records on a compacted Kafka topic, which
//! every replica reads from its beginning before it listens and then follows.
//!
//! The topic has one partition, so every replica applies the changes in one order (a limit
//! after the allocation it sets, a revocation after the key). Each record is keyed by the
//! entity it sets (`key/<id>`, `allocation/<name>`, ...), so compaction keeps the latest state
//! of each and the topic stays as small as the directory. This module moves bytes; what a
//! record says, and how it is applied, is the gateway's.
//!
//! **Invariant:** [`Publisher::publish`] returns only once the brokers have the record
//! (idempotent producer, `acks=all`): an admin change is acknowledged after it is durable in
//! the cluster, never before.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::topic::{self, ASK_TIMEOUT};

/// The control topic's only partition.
const PARTITION: i32 = 0;

/// Why the control topic could not be set up, written or read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The client could not be made, or the brokers refused or did not answer (librdkafka's
    /// text).
    #[error("kafka control topic `{topic}`: {reason}")]
    Kafka {
        /// The control topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// The topic exists with more than one partition: the changes would have no one order.
    #[error(
        "kafka control topic `{topic}` has {partitions} partitions; it must have exactly one, so \
         every replica applies the changes in one order"
    )]
    Partitions {
        /// The control topic.
        topic: String,
        /// How many it has.
        partitions: usize,
    },
}

/// Where the control topic is.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Kafka's `bootstrap.servers`.
    pub brokers: String,
    /// The topic's name.
    pub topic: String,
    /// How long a record may wait for the brokers before its change is refused.
    pub delivery_timeout: Duration,
}

impl ControlConfig {
    fn error(&self, reason: impl std::fmt::Display) -> ControlError {
        ControlError::Kafka {
            topic: self.topic.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Creates the topic if it does not exist (one partition, compacted, replicated up to three
/// times), and checks that an existing one has one partition.
pub async fn ensure_topic(config: &ControlConfig) -> Result<(), ControlError> {
    let partitions = topic::ensure(
        &config.brokers,
        &config.topic,
        1,
        &[("cleanup.policy", "compact")],
    )
    .await
    .map_err(|e| config.error(e))?;
    if partitions == 1 {
        return Ok(());
    }
    Err(ControlError::Partitions {
        topic: config.topic.clone(),
        partitions,
    })
}

/// Writes records to the control topic.
pub struct Publisher {
    producer: FutureProducer,
    config: ControlConfig,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher to `config`'s topic: an acknowledged change is in the cluster, once.
    pub fn new(config: &ControlConfig) -> Result<Publisher, ControlError> {
        let producer = topic::durable_producer(&config.brokers, config.delivery_timeout)
            .map_err(|e| config.error(e))?;
        Ok(Publisher {
            producer,
            config: config.clone(),
        })
    }

    /// Writes `payload` under `key` and waits until the brokers have it; returns its offset.
    pub async fn publish(&self, key: &str, payload: &[u8]) -> Result<i64, ControlError> {
        topic::write(
            &self.producer,
            &self.config.topic,
            PARTITION,
            key.as_bytes(),
            payload,
            self.config.delivery_timeout,
        )
        .await
        .map_err(|e| self.config.error(e))
    }
}

/// One record read from the control topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlRecord {
    /// Its offset in the topic.
    pub offset: i64,
    /// The entity it sets.
    pub key: String,
    /// What the gateway wrote; empty for a tombstone.
    pub payload: Vec<u8>,
}

/// Reads the control topic from its beginning, in order.
pub struct Follower {
    consumer: BaseConsumer,
    config: ControlConfig,
    /// The offset of the next record to read.
    next: i64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("topic", &self.config.topic)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower of `config`'s topic for replica `origin`, from the topic's beginning.
    pub fn new(config: &ControlConfig, origin: &str) -> Result<Follower, ControlError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            // The partition is assigned by hand; no group is joined and nothing committed.
            .set("group.id", format!("tollgate-control-{origin}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A change reaches the others within a fetch's wait, not the default half second.
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(|e| config.error(e))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&config.topic, PARTITION, Offset::Beginning)
            .map_err(|e| config.error(e))?;
        consumer.assign(&list).map_err(|e| config.error(e))?;
        Ok(Follower {
            consumer,
            config: config.clone(),
            next: 0,
        })
    }

    /// The next record, waiting up to `wait` for one; `Err` when the client reports an error
    /// (the brokers away: it keeps trying on the next call).
    pub fn poll(&mut self, wait: Duration) -> Result<Option<ControlRecord>, ControlError> {
        let Some(message) = self.consumer.poll(wait) else {
            return Ok(None);
        };
        let message = message.map_err(|e| self.config.error(e))?;
        self.next = message.offset() + 1;
        Ok(Some(ControlRecord {
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
        }))
    }

    /// Whether every record the topic held when asked has been read.
    pub fn caught_up(&self) -> Result<bool, ControlError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.config.topic, PARTITION, ASK_TIMEOUT)
            .map_err(|e| self.config.error(e))?;
        Ok(high <= low || self.next >= high)
    }
}
