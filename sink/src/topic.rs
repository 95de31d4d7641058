//! What the control topic and the lease log share: a topic made if missing and its partitions
//! counted, and a producer whose writes return only once the cluster has them.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::{AsyncRuntime as _, TokioRuntime};

/// How long a metadata question to the brokers may take, and how long a topic just made may
/// take to show its partitions.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before asking again for a topic just made.
const METADATA_RETRY: Duration = Duration::from_millis(100);

/// Makes `topic` with `partitions`, replicated up to three times and with `settings`, unless
/// it exists; returns how many partitions it has. A topic just made may show none in the
/// metadata for a moment: it is asked again for up to [`ASK_TIMEOUT`].
pub(crate) async fn ensure(
    brokers: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Result<usize, String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let count = admin
        .inner()
        .fetch_metadata(None, ASK_TIMEOUT)
        .map_err(|e| e.to_string())?
        .brokers()
        .len();
    let replication = i32::try_from(count.clamp(1, 3)).unwrap_or(1);
    let new = settings.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
        |new, (name, value)| new.set(name, value),
    );
    let options = AdminOptions::new().operation_timeout(Some(ASK_TIMEOUT));
    let created = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| e.to_string())?;
    for outcome in created {
        match outcome {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    let deadline = Instant::now() + ASK_TIMEOUT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), ASK_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let found = metadata
            .topics()
            .iter()
            .map(|t| t.partitions().len())
            .sum::<usize>();
        if found > 0 || Instant::now() >= deadline {
            return Ok(found);
        }
        TokioRuntime::delay_for(METADATA_RETRY).await;
    }
}

/// A producer whose records are in the cluster once, in the order written, when a write
/// returns: idempotent, `acks=all`, no lingering, given up after `delivery_timeout`.
pub(crate) fn durable_producer(
    brokers: &str,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        )
        .create()
}

/// Writes `payload` under `key` to `topic`'s `partition` and waits for the delivery's own
/// result (not just the send's); returns the record's offset.
pub(crate) async fn write(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    payload: &[u8],
    delivery_timeout: Duration,
) -> Result<i64, KafkaError> {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload);
    match producer.send(record, delivery_timeout).await {
        Ok(delivered) => Ok(delivered.offset),
        Err((e, _)) => Err(e),
    }
}
