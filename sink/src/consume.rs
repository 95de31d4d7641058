//! `tollgate sink`: the usage topic, consumed in a consumer group, into Parquet, exactly once.
//!
//! Each partition is buffered and written in batches: the batch's events go to hour partitions
//! under `usage/`, in files named by topic, partition and the first and last offset they hold
//! (temporary name, synced, renamed); then the partition's *mark* (`usage/_kafka/<topic>/p<N>`,
//! the last offset in files) is written and synced; only then is the offset committed to the
//! group. The mark, not the group's offset, is the truth: at assignment a partition's files
//! beyond its mark (a batch cut short by a crash) are deleted, and messages at or below the mark
//! are skipped, so whatever the crash, each offset is in the files exactly once. Duplicate
//! deliveries (a shipper that sent a record again after a failure) are dropped by `event_id`
//! within a window of recent events per partition, primed from the partition's last files at
//! assignment. A message that is not a usage event is kept, with its partition and offset, in
//! `usage/_quarantine/` and never silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::Array as _;
use arrow_array::cast::AsArray as _;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};
use tollgate_engine::UsageEvent;

use crate::columnar::{self, CHECKPOINT_FILE, ColumnarError, FileTotals, Stated, tally_read};
use crate::dedup::Dedup;

/// How a sink consumes and writes.
#[derive(Clone, Debug)]
pub struct ConsumeConfig {
    /// Kafka's `bootstrap.servers`: comma-separated `host:port` pairs.
    pub brokers: String,
    /// The topic the gateways ship usage events to.
    pub topic: String,
    /// The consumer group; sinks in one group share the topic's partitions.
    pub group_id: String,
    /// The data folder; files go under `usage/`.
    pub data_dir: PathBuf,
    /// Most events buffered (all partitions) before a batch is written.
    pub rows_max: usize,
    /// Most payload bytes buffered before a batch is written.
    pub bytes_max: usize,
    /// Oldest an unwritten event may get before a batch is written.
    pub roll_interval: Duration,
    /// Event ids remembered per partition for dropping duplicates.
    pub dedup_window: usize,
}

/// Defaults, documented in the sink's example config.
pub mod defaults {
    use std::time::Duration;
    /// Events buffered before a batch is written.
    pub const ROWS_MAX: usize = 1_000_000;
    /// Payload bytes buffered before a batch is written.
    pub const BYTES_MAX: usize = 256 * 1024 * 1024;
    /// Oldest an unwritten event may get.
    pub const ROLL_INTERVAL: Duration = Duration::from_secs(60);
    /// Event ids remembered per partition.
    pub const DEDUP_WINDOW: usize = 1_000_000;
    /// The consumer group a sink joins unless told another: sinks in one group share the
    /// topic's partitions, so each event is written once.
    pub const GROUP_ID: &str = "tollgate-sink";
}

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The Kafka client refused its config or the subscription, or an offset could not be
    /// recorded for commit (librdkafka's text).
    #[error("kafka: {0}")]
    Kafka(String),
    /// Writing Parquet files, or a file read back to prime the dedup window that does not
    /// hold what it states ([`ColumnarError::Corrupt`]).
    #[error(transparent)]
    Columnar(#[from] ColumnarError),
    /// Reading, writing or removing a file or folder failed (a mark, a quarantine file, a
    /// batch beyond its mark), a mark is not an offset, or a file read to prime the dedup
    /// window could not be decoded.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's error, or what is wrong with the file.
        source: std::io::Error,
    },
    /// The data folder is a gateway's own Parquet folder.
    #[error(
        "{0} holds a gateway's local Parquet files (usage/_checkpoint); the sink must write to a folder of its own, or the same events would be counted twice"
    )]
    SharedWithGateway(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ConsumeError + '_ {
    move |source| ConsumeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Running totals, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events written to files.
    pub written: u64,
    /// Parquet files written: one per partition and hour of each batch.
    pub files: u64,
    /// Duplicate deliveries dropped by `event_id`.
    pub duplicates: u64,
    /// Messages at or below a partition's mark, skipped (re-delivered after a crash).
    pub replayed: u64,
    /// Messages that were not usage events, kept in quarantine.
    pub quarantined: u64,
    /// Flushes that wrote at least one partition and committed its offset.
    pub batches: u64,
}

/// The rebalance hook: partitions revoked since the loop last looked.
struct Context {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            revoked.extend(list.elements().iter().map(|e| e.partition()));
        }
    }
}

/// One partition's state.
struct Partition {
    /// Last offset in files (-1: none).
    mark: i64,
    /// Buffered events with their offsets, in offset order.
    buffer: Vec<(i64, UsageEvent)>,
    /// Last offset consumed into the buffer (covers skipped duplicates and quarantined ones).
    consumed: i64,
    /// Event ids within the dedup window, primed from the partition's newest files.
    seen: Dedup,
}

/// The sink: one consumer, its partitions' state, and where files go.
pub struct Sink {
    consumer: BaseConsumer<Context>,
    config: ConsumeConfig,
    usage_dir: PathBuf,
    partitions: HashMap<i32, Partition>,
    buffered_rows: usize,
    buffered_bytes: usize,
    oldest: Option<Instant>,
    totals: Totals,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("topic", &self.config.topic)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Joins the group and subscribes to the topic.
    pub fn new(config: ConsumeConfig) -> Result<Sink, ConsumeError> {
        let usage_dir = config.data_dir.join("usage");
        if usage_dir.join(CHECKPOINT_FILE).exists() {
            return Err(ConsumeError::SharedWithGateway(
                config.data_dir.display().to_string(),
            ));
        }
        let consumer: BaseConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            // Explicit, because librdkafka's defaults would lose data here: a new group starts
            // at the beginning of the topic (the default `latest` skips a backlog), and offsets
            // are committed by hand, after the files holding them are durable.
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A sink that died holds its partitions until the group gives up on it; ten seconds
            // (librdkafka's default is 45) lets its restart, or another sink, take over soon.
            .set("session.timeout.ms", "10000")
            .create_with_context(Context {
                revoked: Mutex::new(Vec::new()),
            })
            .map_err(|e| ConsumeError::Kafka(e.to_string()))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| ConsumeError::Kafka(e.to_string()))?;
        Ok(Sink {
            consumer,
            usage_dir,
            config,
            partitions: HashMap::new(),
            buffered_rows: 0,
            buffered_bytes: 0,
            oldest: None,
            totals: Totals::default(),
        })
    }

    /// What the sink has done so far.
    #[must_use]
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Consumes until `stop` is set, writing batches as they fill or age; at stop, writes what
    /// is buffered and commits. `on_batch` sees the totals after each batch.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut on_batch: impl FnMut(&Totals),
    ) -> Result<Totals, ConsumeError> {
        while !stop.load(Ordering::Relaxed) {
            // The message borrows the consumer: its parts are taken before anything else.
            let polled = match self.consumer.poll(Duration::from_millis(100)) {
                None => None,
                Some(Err(e)) => Some(Err(e.to_string())),
                Some(Ok(message)) => Some(Ok((
                    message.partition(),
                    message.offset(),
                    message.payload().unwrap_or_default().to_vec(),
                ))),
            };
            self.forget_revoked();
            match polled {
                None => {}
                // Transient client errors (a broker away) are retried by librdkafka; the loop
                // keeps polling.
                Some(Err(e)) => report(&format!("kafka: {e}")),
                Some(Ok((partition, offset, payload))) => self.take(partition, offset, payload)?,
            }
            let due = self
                .oldest
                .is_some_and(|t| t.elapsed() >= self.config.roll_interval);
            if due
                || self.buffered_rows >= self.config.rows_max
                || self.buffered_bytes >= self.config.bytes_max
            {
                self.flush()?;
                on_batch(&self.totals);
            }
        }
        self.flush()?;
        on_batch(&self.totals);
        Ok(self.totals.clone())
    }

    /// Drops the state of revoked partitions: their buffered events were never committed, so
    /// whoever owns them next consumes them again.
    fn forget_revoked(&mut self) {
        let revoked: Vec<i32> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for partition in revoked {
            if let Some(state) = self.partitions.remove(&partition) {
                self.buffered_rows = self.buffered_rows.saturating_sub(state.buffer.len());
            }
        }
        if self.partitions.values().all(|p| p.buffer.is_empty()) {
            self.buffered_rows = 0;
            self.buffered_bytes = 0;
            self.oldest = None;
        }
    }

    fn take(&mut self, partition: i32, offset: i64, payload: Vec<u8>) -> Result<(), ConsumeError> {
        if !self.partitions.contains_key(&partition) {
            let state = self.load_partition(partition)?;
            self.partitions.insert(partition, state);
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        if offset <= state.mark || offset <= state.consumed {
            self.totals.replayed += 1;
            return Ok(());
        }
        state.consumed = offset;
        let event = match UsageEvent::from_json(&payload) {
            Ok(event) => event,
            Err(e) => {
                quarantine(
                    &self.usage_dir,
                    &self.config.topic,
                    partition,
                    offset,
                    &payload,
                    &e.to_string(),
                )?;
                self.totals.quarantined += 1;
                self.oldest.get_or_insert_with(Instant::now);
                return Ok(());
            }
        };
        if !state.seen.insert(event.event_id.0.as_u128()) {
            self.totals.duplicates += 1;
            self.oldest.get_or_insert_with(Instant::now);
            return Ok(());
        }
        self.buffered_rows += 1;
        self.buffered_bytes += payload.len();
        self.oldest.get_or_insert_with(Instant::now);
        state.buffer.push((offset, event));
        Ok(())
    }

    /// A partition's state at assignment: its mark, files beyond the mark deleted, and the
    /// dedup window primed from its newest files.
    fn load_partition(&self, partition: i32) -> Result<Partition, ConsumeError> {
        let mark = read_mark(&self.mark_path(partition))?;
        let mut files = partition_files(&self.usage_dir, &self.config.topic, partition);
        // A batch cut short by a crash: its files are beyond the mark; its events come again.
        for (first, _, path) in files.iter().filter(|(first, _, _)| *first > mark) {
            let _ = first;
            fs::remove_file(path).map_err(io_at(path))?;
        }
        files.retain(|(first, _, _)| *first <= mark);
        files.sort_by_key(|(first, _, _)| std::cmp::Reverse(*first));
        let mut seen = Dedup::new(self.config.dedup_window);
        let mut primed = Vec::new();
        for (_, _, path) in &files {
            if primed.len() >= self.config.dedup_window {
                break;
            }
            primed.extend(event_ids(path)?);
        }
        // Oldest first, so the window keeps the newest.
        for id in primed.into_iter().rev() {
            seen.insert(id);
        }
        Ok(Partition {
            mark,
            buffer: Vec::new(),
            consumed: mark,
            seen,
        })
    }

    fn mark_path(&self, partition: i32) -> PathBuf {
        self.usage_dir
            .join("_kafka")
            .join(&self.config.topic)
            .join(format!("p{partition}"))
    }

    /// Writes every partition's buffer: files, then marks, then the group's offsets.
    pub fn flush(&mut self) -> Result<(), ConsumeError> {
        let mut commits = TopicPartitionList::new();
        let mut partitions: Vec<i32> = self.partitions.keys().copied().collect();
        partitions.sort_unstable();
        for partition in partitions {
            let mark_path = self.mark_path(partition);
            let Some(state) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if state.consumed <= state.mark {
                continue;
            }
            let buffer = std::mem::take(&mut state.buffer);
            let mut by_hour: BTreeMap<String, Vec<(i64, UsageEvent)>> = BTreeMap::new();
            for (offset, event) in buffer {
                by_hour
                    .entry(columnar::partition(event.ts_ms))
                    .or_default()
                    .push((offset, event));
            }
            for (hour, events) in by_hour {
                let first = events.first().map_or(0, |(o, _)| *o);
                let last = events.last().map_or(0, |(o, _)| *o);
                let name = format!(
                    "kafka-{}-p{partition}-{first:020}-{last:020}.parquet",
                    self.config.topic
                );
                let path = self.usage_dir.join(hour).join(name);
                let events: Vec<UsageEvent> = events.into_iter().map(|(_, e)| e).collect();
                columnar::write_file(&path, &events)?;
                self.totals.files += 1;
                self.totals.written += events.len() as u64;
                crash_point("sink-after-files");
            }
            write_mark(&mark_path, state.consumed)?;
            state.mark = state.consumed;
            commits
                .add_partition_offset(
                    &self.config.topic,
                    partition,
                    Offset::Offset(state.consumed + 1),
                )
                .map_err(|e| ConsumeError::Kafka(e.to_string()))?;
        }
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.oldest = None;
        if commits.count() > 0 {
            self.totals.batches += 1;
            // A failed commit (a rebalance under way, a broker away) loses nothing: the marks
            // already say what is in files, and a later commit or the next owner catches up.
            if let Err(e) = self.consumer.commit(&commits, CommitMode::Sync) {
                report(&format!("kafka: committing offsets: {e}"));
            }
        }
        Ok(())
    }
}

/// Reports a problem the loop survives (stderr; the binary's only log).
fn report(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "tollgate sink: {message}");
}

/// Fault injection for the crash tests: `TOLLGATE_FAULT=<point>` aborts the process there, as a
/// `kill -9` at the worst moment would.
fn crash_point(point: &str) {
    if std::env::var("TOLLGATE_FAULT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

fn read_mark(path: &Path) -> Result<i64, ConsumeError> {
    match File::open(path) {
        Ok(file) => {
            let mut text = String::new();
            file.take(64)
                .read_to_string(&mut text)
                .map_err(io_at(path))?;
            text.trim().parse().map_err(|_| ConsumeError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other("mark is not an offset"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(-1),
        Err(e) => Err(io_at(path)(e)),
    }
}

fn write_mark(path: &Path, offset: i64) -> Result<(), ConsumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(io_at(&temporary))?;
    file.write_all(offset.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_at(&temporary))?;
    fs::rename(&temporary, path).map_err(io_at(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Keeps a message that is not a usage event (hex payload, where and why), synced.
fn quarantine(
    usage_dir: &Path,
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    reason: &str,
) -> Result<(), ConsumeError> {
    let dir = usage_dir.join("_quarantine");
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let path = dir.join(format!("{topic}-p{partition}.jsonl"));
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let line = serde_json::json!({
        "topic": topic, "partition": partition, "offset": offset,
        "reason": reason, "payload_hex": hex,
    });
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_at(&path))?;
    writeln!(file, "{line}")
        .and_then(|()| file.sync_all())
        .map_err(io_at(&path))
}

/// `(first, last, path)` of a partition's files (named `kafka-<topic>-p<N>-<first>-<last>`).
fn partition_files(usage_dir: &Path, topic: &str, partition: i32) -> Vec<(i64, i64, PathBuf)> {
    let prefix = format!("kafka-{topic}-p{partition}-");
    let mut found = Vec::new();
    let mut stack = vec![usage_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('_') {
                    stack.push(path);
                }
                continue;
            }
            let Some(range) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".parquet"))
            else {
                continue;
            };
            if let Some((first, last)) = range.split_once('-')
                && let (Ok(first), Ok(last)) = (first.parse(), last.parse())
            {
                found.push((first, last, path));
            }
        }
    }
    found
}

/// The event ids in one of our files, whose rows are checked against what the file states
/// (a damaged file is [`ColumnarError::Corrupt`]).
fn event_ids(path: &Path) -> Result<Vec<u128>, ConsumeError> {
    let bad = |message: String| ConsumeError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(message),
    };
    let file = File::open(path).map_err(io_at(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let stated = Stated::of(builder.metadata(), path)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["event_id"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut ids = Vec::new();
    let mut read = FileTotals::default();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        // Only `event_id` is read: the rows are checked, the cost total is not.
        tally_read(&mut read, &batch);
        let Some(column) = batch
            .column_by_name("event_id")
            .and_then(|c| c.as_string_opt::<i32>().cloned())
        else {
            return Err(bad("no text `event_id` column".into()));
        };
        for row in 0..column.len() {
            if let Ok(id) = uuid::Uuid::parse_str(column.value(row)) {
                ids.push(id.as_u128());
            }
        }
    }
    stated.check(read, false, path)?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateways_own_parquet_folder_is_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-shared-{}", std::process::id()));
        fs::create_dir_all(dir.join("usage")).unwrap();
        fs::write(dir.join("usage").join(CHECKPOINT_FILE), "12").unwrap();
        let config = ConsumeConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            group_id: "g".into(),
            data_dir: dir.clone(),
            rows_max: 1,
            bytes_max: 1,
            roll_interval: Duration::from_secs(1),
            dedup_window: 1,
        };
        assert!(matches!(
            Sink::new(config),
            Err(ConsumeError::SharedWithGateway(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn marks_round_trip_and_default_to_none() {
        let dir = std::env::temp_dir().join(format!("tollgate-mark-{}", std::process::id()));
        let path = dir.join("p3");
        assert_eq!(read_mark(&path).unwrap(), -1);
        write_mark(&path, 41).unwrap();
        assert_eq!(read_mark(&path).unwrap(), 41);
        fs::write(&path, "forty").unwrap();
        assert!(read_mark(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn priming_from_a_file_that_does_not_hold_its_stated_rows_is_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-prime-{}", std::process::id()));
        let path = dir.join("kafka-t-p0-00000000000000000000-00000000000000000001.parquet");
        let events = [UsageEvent::sample(), UsageEvent::sample()];
        columnar::write_file(&path, &events).unwrap();
        assert_eq!(event_ids(&path).unwrap().len(), 2);
        let batch = columnar::encode(&events).unwrap();
        columnar::write_batch(&path, &batch, &[(columnar::ROWS_KEY, "3")]).unwrap();
        assert!(matches!(
            event_ids(&path),
            Err(ConsumeError::Columnar(ColumnarError::Corrupt { .. }))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partition_files_are_found_by_name() {
        let dir = std::env::temp_dir().join(format!("tollgate-pfiles-{}", std::process::id()));
        let hour = dir.join("date=2026-11-24/hour=19");
        fs::create_dir_all(&hour).unwrap();
        for name in [
            "kafka-t.u-p0-00000000000000000000-00000000000000000009.parquet",
            "kafka-t.u-p0-00000000000000000010-00000000000000000019.parquet",
            "kafka-t.u-p1-00000000000000000000-00000000000000000004.parquet",
            "kafka-t.u-p0-00000000000000000020-00000000000000000029.parquet.tmp",
            "part-00000000000000000000-00000000000000000009.parquet",
        ] {
            fs::write(hour.join(name), b"").unwrap();
        }
        let mut found: Vec<(i64, i64)> = partition_files(&dir, "t.u", 0)
            .into_iter()
            .map(|(f, l, _)| (f, l))
            .collect();
        found.sort_unstable();
        assert_eq!(found, vec![(0, 9), (10, 19)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
