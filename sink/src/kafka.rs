//! Ships the durable log to a Kafka topic, remembering what the broker acknowledged.
//!
//! The producer is idempotent with `acks=all` and zstd, set explicitly rather than trusted to
//! defaults; each record is keyed by its allocation (so one allocation's events keep their order
//! in one partition) and carries its log offset in a header. A batch's delivery reports are all
//! awaited and matched; the checkpoint (`kafka.checkpoint` beside the log) moves only over the
//! unbroken prefix the broker acknowledged, so a broker that is down or failing just leaves the
//! log growing, and shipping resumes where it stopped. After a crash between delivery and
//! checkpoint a record may be sent again: consumers drop duplicates by `event_id`.

use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::Deserialize;

use crate::log::{self, LogError};

/// Why shipping failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// Reading the durable log failed (I/O, or damage in a sealed segment).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The producer could not be made, a delivery failed, or the queue did not drain in time
    /// (librdkafka's text).
    #[error("kafka: {0}")]
    Kafka(String),
    /// The checkpoint file.
    #[error("{path}: {source}")]
    Io {
        /// The checkpoint file.
        path: String,
        /// The operating system's error, or what is wrong with the checkpoint.
        source: std::io::Error,
    },
}

/// How to reach the topic.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Kafka's `bootstrap.servers`: comma-separated `host:port` pairs.
    pub brokers: String,
    /// The topic usage events are shipped to, keyed by allocation.
    pub topic: String,
    /// How long a message may wait for delivery before it is reported failed.
    pub delivery_timeout: Duration,
    /// This gateway's replica id, sent with every record (header [`ORIGIN_HEADER`]) so
    /// reconciliation can tell its own events from other replicas'.
    pub origin: String,
}

/// The header naming the replica that shipped a record.
pub const ORIGIN_HEADER: &str = "tollgate-origin";

/// Ships one log to one topic.
pub struct Shipper {
    producer: FutureProducer,
    config: KafkaConfig,
    topic: String,
    log_dir: PathBuf,
    checkpoint_path: PathBuf,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Records sent per pass at most (their delivery reports are awaited together).
pub const SHIP_BATCH_MAX: usize = 10_000;

#[derive(Deserialize)]
struct Keyed {
    allocation: Option<String>,
}

impl Shipper {
    /// A shipper of the log in `log_dir` to `config`'s topic.
    pub fn new(log_dir: &Path, config: &KafkaConfig) -> Result<Shipper, ShipError> {
        Ok(Shipper {
            producer: Shipper::producer(config)?,
            config: config.clone(),
            topic: config.topic.clone(),
            log_dir: log_dir.to_owned(),
            checkpoint_path: log_dir.join("kafka.checkpoint"),
        })
    }

    pub(crate) fn producer(config: &KafkaConfig) -> Result<FutureProducer, ShipError> {
        let timeout_ms = config.delivery_timeout.as_millis().to_string();
        ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            // Explicit: idempotence and full acknowledgement are what "not one event lost or
            // counted twice" rests on.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", "zstd")
            .set("linger.ms", "5")
            .set("message.timeout.ms", &timeout_ms)
            .create()
            .map_err(|e| ShipError::Kafka(e.to_string()))
    }

    /// Ships as [`Shipper::ship`] does; after a failed pass the producer is made anew (one that
    /// first met the broker while it was away does not recover by itself), and the old one is
    /// dropped on a thread of its own, because dropping a producer with messages in flight
    /// blocks until they settle.
    pub async fn ship_or_reset(&mut self, until: u64) -> Result<u64, ShipError> {
        let result = self.ship(until).await;
        if result.is_err() {
            let old = std::mem::replace(&mut self.producer, Shipper::producer(&self.config)?);
            let _ = std::thread::Builder::new()
                .name("tollgate-kafka-drop".into())
                .spawn(move || drop(old));
        }
        result
    }

    /// The next log offset to ship.
    pub fn checkpoint(&self) -> Result<u64, ShipError> {
        match File::open(&self.checkpoint_path) {
            Ok(mut file) => {
                let mut text = String::new();
                file.read_to_string(&mut text)
                    .map_err(|source| self.io(source))?;
                text.trim()
                    .parse()
                    .map_err(|_| self.io(std::io::Error::other("checkpoint is not a number")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.io(e)),
        }
    }

    fn io(&self, source: std::io::Error) -> ShipError {
        ShipError::Io {
            path: self.checkpoint_path.display().to_string(),
            source,
        }
    }

    fn commit(&self, next: u64) -> Result<(), ShipError> {
        let temporary = self.checkpoint_path.with_extension("tmp");
        let mut file = File::create(&temporary).map_err(|source| self.io(source))?;
        file.write_all(next.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| self.io(source))?;
        fs::rename(&temporary, &self.checkpoint_path).map_err(|source| self.io(source))
    }

    /// Ships records from the checkpoint up to `until` (exclusive), a batch at a time; returns
    /// how many the broker acknowledged. On a failed delivery it commits what came before it
    /// and returns the error; the next call resumes there.
    pub async fn ship(&self, until: u64) -> Result<u64, ShipError> {
        let mut shipped = 0;
        loop {
            let start = self.checkpoint()?;
            if start >= until {
                return Ok(shipped);
            }
            let span = usize::try_from(until - start)
                .unwrap_or(usize::MAX)
                .min(SHIP_BATCH_MAX);
            let mut pending = Vec::with_capacity(span);
            for record in log::read(&self.log_dir, start)?.take(span) {
                let (offset, payload) = record?;
                let key = serde_json::from_slice::<Keyed>(&payload)
                    .ok()
                    .and_then(|k| k.allocation)
                    .unwrap_or_default();
                let offset_text = offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "tollgate-log-offset",
                        value: Some(offset_text.as_str()),
                    })
                    .insert(Header {
                        key: ORIGIN_HEADER,
                        value: Some(self.config.origin.as_str()),
                    });
                let record = FutureRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(payload.as_slice())
                    .headers(headers);
                match self.producer.send_result(record) {
                    Ok(delivery) => pending.push((offset, delivery)),
                    // The local queue is full or the client refused: settle what was sent, and
                    // ship the rest on the next call.
                    Err((e, _)) => {
                        let refused = format!("record {offset} refused: {e}");
                        return self.settle(pending, shipped, Some(refused)).await;
                    }
                }
            }
            let batch = self.settle(pending, 0, None).await?;
            shipped += batch;
            if batch == 0 {
                return Ok(shipped);
            }
        }
    }

    /// Awaits every delivery report of a batch in order and commits the acknowledged prefix.
    async fn settle(
        &self,
        pending: Vec<(u64, rdkafka::producer::DeliveryFuture)>,
        shipped_before: u64,
        refused: Option<String>,
    ) -> Result<u64, ShipError> {
        let mut next = None;
        let mut failure = refused;
        let mut count = 0;
        for (offset, delivery) in pending {
            // Every report is awaited and matched, the inner result included.
            let outcome = match delivery.await {
                Ok(Ok(_delivered)) => Ok(()),
                Ok(Err((e, _message))) => Err(e.to_string()),
                Err(_canceled) => Err("the producer went away before reporting".into()),
            };
            match (outcome, &failure) {
                (Ok(()), None) => {
                    next = Some(offset + 1);
                    count += 1;
                }
                (Ok(()), Some(_)) => {}
                (Err(e), None) => failure = Some(e),
                (Err(_), Some(_)) => {}
            }
        }
        if let Some(next) = next {
            self.commit(next)?;
        }
        match failure {
            Some(e) => Err(ShipError::Kafka(format!(
                "delivery failed after {} records: {e}",
                shipped_before + count
            ))),
            None => Ok(count),
        }
    }

    /// Waits up to `timeout` for messages still queued in the client (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), ShipError> {
        self.producer
            .flush(timeout)
            .map_err(|e| ShipError::Kafka(e.to_string()))
    }
}

/// Publishes alerts, one record each, to the alerts topic: keyed by the alert's id (what a
/// consumer drops a redelivery by), from the replica named in [`ORIGIN_HEADER`].
pub struct AlertPublisher {
    producer: FutureProducer,
    config: KafkaConfig,
    topic: String,
    /// The topic is known to exist (made, one partition so alerts keep their order, at the
    /// first publish that reached the brokers).
    ensured: bool,
}

impl std::fmt::Debug for AlertPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl AlertPublisher {
    /// A publisher to `topic` on `config`'s brokers, with its producer settings.
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<AlertPublisher, ShipError> {
        Ok(AlertPublisher {
            producer: Shipper::producer(config)?,
            config: config.clone(),
            topic: topic.to_owned(),
            ensured: false,
        })
    }

    /// Sends `alert` under `id` and waits for the broker's acknowledgement (at most the
    /// delivery timeout). After a failure the producer is made anew, as the shipper's is.
    pub async fn publish(&mut self, id: &str, alert: &[u8]) -> Result<(), ShipError> {
        if !self.ensured {
            crate::topic::ensure(&self.config.brokers, &self.topic, 1, &[])
                .await
                .map_err(|e| ShipError::Kafka(format!("making topic {}: {e}", self.topic)))?;
            self.ensured = true;
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: ORIGIN_HEADER,
            value: Some(self.config.origin.as_str()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(id.as_bytes())
            .payload(alert)
            .headers(headers);
        let outcome = match self.producer.send_result(record) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_delivered)) => Ok(()),
                Ok(Err((e, _message))) => Err(e.to_string()),
                Err(_canceled) => Err("the producer went away before reporting".to_owned()),
            },
            Err((e, _record)) => Err(e.to_string()),
        };
        outcome.map_err(|e| {
            if let Ok(fresh) = Shipper::producer(&self.config) {
                let old = std::mem::replace(&mut self.producer, fresh);
                let _ = std::thread::Builder::new()
                    .name("tollgate-kafka-drop".into())
                    .spawn(move || drop(old));
            }
            ShipError::Kafka(format!("alert {id} to {}: {e}", self.topic))
        })
    }
}
