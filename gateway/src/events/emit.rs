//! Usage events go into the durable local log before the request's answer is complete.
//!
//! The request path encodes its event and appends it to `sink::log` (one `write` under a short
//! lock: the bytes are then with the operating system, so killing the process loses nothing).
//! A syncer thread makes them survive a machine crash once per `events.sync_interval_ms` (group
//! commit), without holding the lock while the disk works. Budget warnings (soft limits
//! crossed) go to `alerts.jsonl` the same way.
//!
//! A second thread, at a lower scheduling priority than the request path, writes the synced
//! log out as Parquet every `parquet.roll_interval_ms` and folds it into the spend checkpoint
//! (`restore::Folded`) every `events.checkpoint_interval_ms`, then removes log segments every
//! reader is past (the checkpoint, the Parquet writer, the Kafka shipper), so the log holds
//! only what someone still needs. Both run at shutdown too, after the last sync. Apart from the
//! syncer, a long roll (a minute of events decoded and encoded) never holds up group commit,
//! and it yields the cores to requests.
//!
//! **Invariant:** an event is in the log before the call that produced it is answered: refusals
//! append before the error response is returned, and a metered answer appends before its last
//! byte is sent. New requests are refused (503) while more than `events.queued_max` appended
//! events wait for their sync, or while the log is at `events.log_bytes_max` (a broker away for
//! long; warned from 80 %): a disk that cannot keep up, or fills, slows admission, never loses
//! events. When a write fails (the disk is full), new calls are refused the same way until the
//! log can be written again; the events of calls already in flight are held back in memory (up
//! to `EVENTS_HELD_BACK_MAX`) and appended by the syncer as soon as the disk takes them.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tollgate_engine::forecast::Forecast;
use tollgate_engine::time::MS_PER_DAY;
use tollgate_engine::{
    BudgetExhausted, BudgetSnapshot, Level, SoftLimitCrossed, UsageEvent, VirtualKey,
};
use tollgate_sink::columnar::ParquetSink;
use tollgate_sink::log::{Log, LogReader, Recovery};

use crate::config::{EventsConfig, ParquetConfig};
use crate::events::restore::Folded;
use crate::limits::EVENTS_HELD_BACK_MAX;

use crate::metrics::{Counter, Metrics};
use crate::operator::report;
use tollgate_engine::time::format_rfc3339_s;

/// The log's folder under `events.dir`.
pub const LOG_DIR: &str = "log";
/// The file budget warnings are appended to.
pub const ALERTS_FILE: &str = "alerts.jsonl";

/// When a budget period ends (`None`: a `total` budget, which never does).
type PeriodEnd = Option<tollgate_engine::UnixMs>;

struct Shared {
    log: Mutex<Log>,
    log_dir: std::path::PathBuf,
    /// The log offset up to which records are synced.
    synced: AtomicU64,
    /// Writes the synced log into Parquet, one pass at a time.
    parquet: Option<Mutex<ParquetSink>>,
    alerts: Mutex<File>,
    /// Makes alert ids unique across lives: drawn from the OS at start.
    alert_seed: u64,
    /// The next alert's number in this life.
    alert_seq: AtomicU64,
    /// A write of an alert failed, perhaps part-way: the next starts on a new line.
    alert_torn: AtomicBool,
    /// The period (by its end) each level was last told exhausted in: told once per level
    /// and period in a process life.
    exhausted: Mutex<HashMap<(Level, Arc<str>), PeriodEnd>>,
    /// Events appended since the last sync.
    unsynced: AtomicU64,
    /// Raised to stop: the syncer's last sync.
    stopping: Signal,
    /// Raised once the syncer's last sync is done: the output thread's last pass may begin.
    synced_for_good: Signal,
    metrics: Arc<Metrics>,
    /// The spend checkpoint and the log's retention, once restore has seeded them.
    maintenance: Mutex<Option<Maintenance>>,
    /// Bytes the log takes on disk, as of the last sync.
    log_bytes: AtomicU64,
    /// The log's cap: admission stops at it.
    log_bytes_max: u64,
    /// Whether the 80 % warning is out (said once per crossing).
    log_warned: AtomicBool,
    /// Set when an append fails (a full disk), cleared once the held-back events are in.
    unwritable: AtomicBool,
    /// Encoded events of calls answered while the log could not be written, oldest first.
    held_back: Mutex<VecDeque<Vec<u8>>>,
}

/// What the syncer keeps besides syncing: the fold of the log for the spend checkpoint.
pub struct Maintenance {
    /// The log folded so far.
    pub folded: Folded,
    /// Where the checkpoint is written.
    pub path: PathBuf,
    /// How often the checkpoint is written (`events.checkpoint_interval_ms`).
    pub interval: Duration,
    /// Whether a Kafka shipper reads the log too (its checkpoint bounds what may go).
    pub kafka: bool,
    /// How long resource record ids are remembered (the ledger's window).
    pub record_window_ms: i64,
    last: Option<Instant>,
    /// The offset of the checkpoint kept as `.prev` (segments go only below it too).
    previous_offset: u64,
}

impl Maintenance {
    /// Checkpoints of `folded` to `path` every `interval`.
    #[must_use]
    pub fn new(
        folded: Folded,
        path: PathBuf,
        interval: Duration,
        kafka: bool,
        record_window_ms: i64,
    ) -> Maintenance {
        // The checkpoint restored from becomes `.prev` at the first save.
        let previous_offset = folded.next_offset;
        Maintenance {
            folded,
            path,
            interval,
            kafka,
            record_window_ms,
            last: None,
            previous_offset,
        }
    }
}

/// The appending side, shared by every request.
#[derive(Clone)]
pub struct Emitter {
    shared: Arc<Shared>,
    queued_max: usize,
}

/// The syncer and output threads, owned by the runtime: stopping them syncs what is left and
/// writes it out.
pub struct Writer {
    shared: Arc<Shared>,
    syncer: JoinHandle<()>,
    output: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emitter {
    /// Opens the log under `events.dir` (cutting a torn tail, which is reported) and starts the
    /// syncer.
    pub fn start(
        events: &EventsConfig,
        parquet: Option<&ParquetConfig>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Emitter, Writer, Recovery)> {
        let dir = events.dir.as_path();
        let (queued_max, sync_interval) = (events.queued_max, events.sync_interval);
        std::fs::create_dir_all(dir)?;
        let (log, recovery) =
            Log::open(&dir.join(LOG_DIR), events.segment_bytes_max).map_err(io::Error::other)?;
        if recovery.cut_bytes > 0 {
            report(&format!(
                "event log: cut {} bytes of a damaged tail ({}); {} events kept",
                recovery.cut_bytes,
                recovery.cut_reason.unwrap_or("torn record"),
                recovery.records
            ));
        }
        let mut alerts = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(dir.join(ALERTS_FILE))?;
        end_torn_alert(&mut alerts)?;
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            seed = crate::clock::now_ms().0.to_le_bytes();
        }
        let synced = log.next_offset();
        let log_bytes = log.bytes();
        let roll_interval = parquet.map_or(Duration::MAX, |p| p.roll_interval);
        let checkpoint_interval = events.checkpoint_interval;
        let parquet = parquet.map(|p| {
            Mutex::new(ParquetSink::new(
                &dir.join(LOG_DIR),
                &p.dir,
                p.rows_max,
                p.bytes_max,
            ))
        });
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            log_dir: dir.join(LOG_DIR),
            synced: AtomicU64::new(synced),
            parquet,
            alerts: Mutex::new(alerts),
            alert_seed: u64::from_le_bytes(seed),
            alert_seq: AtomicU64::new(0),
            alert_torn: AtomicBool::new(false),
            exhausted: Mutex::new(HashMap::new()),
            unsynced: AtomicU64::new(0),
            stopping: Signal::default(),
            synced_for_good: Signal::default(),
            metrics,
            maintenance: Mutex::new(None),
            log_bytes: AtomicU64::new(log_bytes),
            log_bytes_max: events.log_bytes_max,
            log_warned: AtomicBool::new(false),
            unwritable: AtomicBool::new(false),
            held_back: Mutex::new(VecDeque::new()),
        });
        let syncing = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name(SYNCER_THREAD.into())
            .spawn(move || sync_loop(&syncing, sync_interval))?;
        let writing = Arc::clone(&shared);
        let output = std::thread::Builder::new()
            .name(OUTPUT_THREAD.into())
            .spawn(move || output_loop(&writing, roll_interval, checkpoint_interval))?;
        let writer = Writer {
            shared: Arc::clone(&shared),
            syncer,
            output,
        };
        Ok((Emitter { shared, queued_max }, writer, recovery))
    }

    /// Whether a new request may be admitted: the syncer keeps up and the log is under its cap.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.refusal().is_none()
    }

    /// Why a new request may not be admitted now, if it may not.
    #[must_use]
    pub fn refusal(&self) -> Option<&'static str> {
        if self.shared.unwritable.load(Ordering::Relaxed) {
            Some("the usage event log cannot be written (is its disk full?)")
        } else if self.queued() >= self.queued_max {
            Some("usage event backlog is full")
        } else if self.shared.log_bytes.load(Ordering::Relaxed) >= self.shared.log_bytes_max {
            Some("usage event log is at its disk cap (a reader such as Kafka is behind)")
        } else {
            None
        }
    }

    /// Bytes the log takes on disk (as of the last sync).
    #[must_use]
    pub fn log_bytes(&self) -> u64 {
        self.shared.log_bytes.load(Ordering::Relaxed)
    }

    /// Starts checkpointing and retention, seeded with what restore folded.
    pub fn maintain(&self, maintenance: Maintenance) {
        *lock(&self.shared.maintenance) = Some(maintenance);
    }

    /// The log offset up to which events are synced (what may be shipped or written out).
    #[must_use]
    pub fn synced_offset(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// The folder of the durable log.
    #[must_use]
    pub fn log_dir(&self) -> std::path::PathBuf {
        self.shared.log_dir.clone()
    }

    /// Appended events not yet synced.
    #[must_use]
    pub fn queued(&self) -> usize {
        usize::try_from(self.shared.unsynced.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Appends a usage event. On return it is with the operating system, or, while the log
    /// cannot be written, held back in memory for the syncer to append once it can.
    pub fn usage(&self, event: &UsageEvent) {
        // A model call has been answered by now: its event must not be dropped.
        let _ = self.write(event.to_json(), true);
    }

    /// Appends a usage event; `false` (counted and reported) if it could not be written, for
    /// callers that can still refuse (a usage batch).
    pub fn append(&self, event: &UsageEvent) -> bool {
        self.write(event.to_json(), false)
    }

    /// Events held back in memory for want of a writable log.
    #[must_use]
    pub fn held_back(&self) -> usize {
        lock(&self.shared.held_back).len()
    }

    fn write(&self, payload: Vec<u8>, hold_back: bool) -> bool {
        let mut log = lock(&self.shared.log);
        // Behind events already held back, a new one waits its turn.
        if !self.shared.unwritable.load(Ordering::Acquire) {
            match log.append(&[&payload]) {
                Ok(_) => {
                    self.shared.unsynced.fetch_add(1, Ordering::Relaxed);
                    self.shared.metrics.add(Counter::EventsWritten, 1);
                    return true;
                }
                Err(e) => {
                    self.shared.unwritable.store(true, Ordering::Release);
                    report(&format!(
                        "appending a usage event: {e}; new calls are refused until the log \
                         can be written, and the events of calls in flight are held back"
                    ));
                }
            }
        }
        drop(log);
        if !hold_back {
            return false;
        }
        let mut held_back = lock(&self.shared.held_back);
        if held_back.len() < EVENTS_HELD_BACK_MAX {
            held_back.push_back(payload);
            return true;
        }
        self.shared.metrics.add(Counter::EventsLost, 1);
        false
    }

    /// Records a soft-limit warning.
    pub fn alert(&self, crossed: &SoftLimitCrossed, at: tollgate_engine::UnixMs) {
        let line = serde_json::json!({
            "id": self.alert_id(at),
            "kind": "soft_limit_crossed",
            "at": format_rfc3339_s(at),
            "level": crossed.level.as_str(),
            "name": &*crossed.name,
            "period": crossed.period.as_str(),
            "period_index": crossed.period_index,
            "spent_nanos": crossed.spent.0,
            "limit_nanos": crossed.limit.0,
            "percent": crossed.percent,
        });
        self.shared.metrics.add(Counter::SoftLimitWarnings, 1);
        self.append_alert(&line);
    }

    /// Records a burn-rate forecast worth telling: `level` `name` is on pace to run out before
    /// its period ends.
    pub fn forecast_alert(
        &self,
        level: Level,
        name: &str,
        budget: &BudgetSnapshot,
        forecast: &Forecast,
        at: tollgate_engine::UnixMs,
    ) {
        let runs_out_at = forecast.runs_out_at.map(format_rfc3339_s);
        let days_early = forecast.early_by_ms().unwrap_or(0) / MS_PER_DAY;
        let line = serde_json::json!({
            "id": self.alert_id(at),
            "kind": "burn_rate_forecast",
            "at": format_rfc3339_s(at),
            "level": level.as_str(),
            "name": name,
            "period": budget.period.as_str(),
            "period_index": budget.period_index,
            "spent_nanos": budget.spent.0,
            "limit_nanos": budget.limit.map(|l| l.0),
            "nanos_per_hour": forecast.nanos_per_hour,
            "runs_out_at": runs_out_at,
            "resets_at": forecast.resets_at.map(format_rfc3339_s),
            "days_early": days_early,
            "message": format!(
                "{} `{name}` is on pace to run out on {}, {days_early} days early",
                level.as_str(),
                runs_out_at.as_deref().map_or("", |d| d.get(..10).unwrap_or(d)),
            ),
        });
        self.shared.metrics.add(Counter::ForecastAlerts, 1);
        self.append_alert(&line);
    }

    /// Records that `at`'s level has reached its hard limit: a call was refused with 402 for
    /// want of budget there. Told once per level and period (in a process life), however many
    /// calls are refused.
    pub fn exhausted_alert(&self, at: &BudgetExhausted, now: tollgate_engine::UnixMs) {
        {
            let mut told = lock(&self.shared.exhausted);
            let key = (at.level, Arc::clone(&at.name));
            if told.get(&key) == Some(&at.resets_at) {
                return;
            }
            told.insert(key, at.resets_at);
        }
        let resets_at = at.resets_at.map(format_rfc3339_s);
        let line = serde_json::json!({
            "id": self.alert_id(now),
            "kind": "budget_exhausted",
            "at": format_rfc3339_s(now),
            "level": at.level.as_str(),
            "name": &*at.name,
            "period": at.period.as_str(),
            "limit_nanos": at.limit.0,
            "remaining_nanos": at.remaining.0,
            "requested_nanos": at.requested.0,
            "resets_at": resets_at,
            "message": match &resets_at {
                Some(when) => format!(
                    "{} `{}` has reached its {} limit: calls are refused until {when}",
                    at.level.as_str(), at.name, at.period.as_str()
                ),
                None => format!(
                    "{} `{}` has reached its limit: calls are refused",
                    at.level.as_str(), at.name
                ),
            },
        });
        self.shared.metrics.add(Counter::ExhaustedAlerts, 1);
        self.append_alert(&line);
    }

    /// Records that `key` stops working at `expires_at`, soon: its owner should rotate it.
    /// The alert names the key by its id and display prefix, never by its secret.
    pub fn key_expiry_alert(
        &self,
        key: &VirtualKey,
        expires_at: tollgate_engine::UnixMs,
        now: tollgate_engine::UnixMs,
    ) {
        let when = format_rfc3339_s(expires_at);
        // Rounded up: a key with 1 h 59 min left is told "in 2 hours".
        let ms_left = u64::try_from(expires_at.0 - now.0).unwrap_or(0);
        let hours_left = ms_left.div_ceil(3_600_000);
        let left = match hours_left {
            0 | 1 => "within the hour".to_owned(),
            2..48 => format!("in {hours_left} hours"),
            _ => format!("in {} days", hours_left / 24),
        };
        let line = serde_json::json!({
            "id": self.alert_id(now),
            "kind": "key_expiring",
            "at": format_rfc3339_s(now),
            "key_id": key.id().to_string(),
            "key_prefix": key.display_prefix(),
            "user": &*key.user,
            "agent": key.agent.as_deref(),
            "allocation": &*key.allocation.name,
            "team": &*key.allocation.team().name,
            "expires_at": when,
            "message": format!(
                "key `{}` of user `{}` (allocation `{}`) expires at {when}, {left}: rotate it",
                key.display_prefix(), key.user, key.allocation.name
            ),
        });
        self.shared.metrics.add(Counter::KeyExpiryAlerts, 1);
        self.append_alert(&line);
    }

    /// Records an alert a guard raised (`line` has its kind and facts), with a new id.
    pub fn raise(&self, mut line: serde_json::Value, now: tollgate_engine::UnixMs) {
        if let Some(fields) = line.as_object_mut() {
            fields.insert("id".into(), serde_json::Value::from(self.alert_id(now)));
        }
        self.shared.metrics.add(Counter::GuardAlerts, 1);
        self.append_alert(&line);
    }

    /// A new alert's id: its instant, this life's seed and its number, unique across lives
    /// and replicas (what a webhook's receiver drops duplicates by).
    fn alert_id(&self, at: tollgate_engine::UnixMs) -> String {
        let n = self.shared.alert_seq.fetch_add(1, Ordering::Relaxed);
        format!("alt_{}_{:016x}_{n}", at.0, self.shared.alert_seed)
    }

    fn append_alert(&self, line: &serde_json::Value) {
        let mut bytes = Vec::new();
        if self.shared.alert_torn.load(Ordering::Relaxed) {
            // After a write that may have stopped part-way: the torn line is ended first
            // (its readers skip it), so this alert stays whole.
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.to_string().as_bytes());
        bytes.push(b'\n');
        match lock(&self.shared.alerts).write_all(&bytes) {
            Ok(()) => self.shared.alert_torn.store(false, Ordering::Relaxed),
            Err(e) => {
                self.shared.alert_torn.store(true, Ordering::Relaxed);
                report(&format!("writing an alert: {e}"));
            }
        }
    }

    /// Syncs everything appended so far and writes it to Parquet (admin API:
    /// `POST /admin/v1/events/flush`).
    pub async fn flush(&self) -> bool {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || sync_now(&shared).is_ok() && roll_parquet(&shared))
            .await
            .unwrap_or(false)
    }

    /// Syncs everything appended so far to disk now (a usage batch is answered only once its
    /// events are synced: an importer told "booked" never has to send it again).
    pub async fn sync(&self) -> bool {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || sync_now(&shared).is_ok())
            .await
            .unwrap_or(false)
    }

    /// The offsets of the log's oldest record kept and of the next to be appended.
    #[must_use]
    pub fn log_span(&self) -> (u64, u64) {
        let log = lock(&self.shared.log);
        (log.first_offset(), log.next_offset())
    }

    /// Reads the log from `offset` (restore at start; the records as appended).
    pub fn read_from(&self, offset: u64) -> LogReader {
        lock(&self.shared.log).read_from(offset)
    }
}

impl Writer {
    /// Asks the syncer to sync what is queued and stop, and waits for it (blocking: call once
    /// nothing is admitted any more, so the queue only shrinks).
    pub fn stop(self) -> io::Result<()> {
        self.shared.stopping.raise();
        let synced = self
            .syncer
            .join()
            .map_err(|_| io::Error::other("event syncer thread panicked"));
        // Whatever the syncer managed, the output thread writes out what is synced and stops.
        self.shared.synced_for_good.raise();
        let written = self
            .output
            .join()
            .map_err(|_| io::Error::other("event output thread panicked"));
        synced.and(written)
    }
}

/// Appends the events held back while the log could not be written, oldest first, as far as
/// the disk takes them; once all are in, the log takes new calls again.
fn append_held_back(shared: &Shared) {
    if !shared.unwritable.load(Ordering::Acquire) {
        return;
    }
    let mut log = lock(&shared.log);
    let mut held_back = lock(&shared.held_back);
    while let Some(payload) = held_back.front() {
        if log.append(&[payload]).is_err() {
            return;
        }
        held_back.pop_front();
        shared.unsynced.fetch_add(1, Ordering::Relaxed);
        shared.metrics.add(Counter::EventsWritten, 1);
    }
    shared.unwritable.store(false, Ordering::Release);
    report("the usage event log can be written again; new calls are admitted");
}

/// Ends a line a `kill -9` tore mid-write, so the next alert starts a line of its own (the
/// torn one is skipped by its readers: it is not JSON).
fn end_torn_alert(alerts: &mut File) -> io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let length = alerts.metadata()?.len();
    if length == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    alerts.seek(SeekFrom::Start(length - 1))?;
    alerts.read_exact(&mut last)?;
    if last[0] != b'\n' {
        alerts.write_all(b"\n")?;
    }
    Ok(())
}

/// Syncs the active segment and the alerts without holding the log while the disk works.
fn sync_now(shared: &Shared) -> io::Result<()> {
    let pending = shared.unsynced.swap(0, Ordering::AcqRel);
    let (file, end) = {
        let log = lock(&shared.log);
        shared.log_bytes.store(log.bytes(), Ordering::Relaxed);
        (
            log.active_file().map_err(io::Error::other),
            log.next_offset(),
        )
    };
    watch_log_bytes(shared);
    let result = file.and_then(|f| f.sync_data()).and_then(|()| {
        let alerts = lock(&shared.alerts).try_clone()?;
        alerts.sync_data()
    });
    match &result {
        Ok(()) => {
            shared.synced.fetch_max(end, Ordering::AcqRel);
        }
        Err(e) => {
            // Not synced: count them again so the backlog shows it, and say so.
            shared.unsynced.fetch_add(pending, Ordering::AcqRel);
            report(&format!("syncing the event log: {e}"));
        }
    }
    result
}

/// Writes the synced log into Parquet; `true` if it did (or there is no Parquet output).
fn roll_parquet(shared: &Shared) -> bool {
    let Some(parquet) = &shared.parquet else {
        return true;
    };
    let until = shared.synced.load(Ordering::Acquire);
    match lock(parquet).run(until) {
        Ok(_) => true,
        Err(e) => {
            report(&format!("writing Parquet: {e}"));
            false
        }
    }
}

/// Says once when the log passes 80 % of its cap (and again after it fell back below 70 %).
fn watch_log_bytes(shared: &Shared) {
    let bytes = u128::from(shared.log_bytes.load(Ordering::Relaxed));
    let max = u128::from(shared.log_bytes_max).max(1);
    if bytes * 100 >= max * 80 {
        if !shared.log_warned.swap(true, Ordering::Relaxed) {
            report(&format!(
                "event log at {} % of events.log_bytes_max ({bytes} of {max} bytes): a reader (Kafka, Parquet) is behind; at 100 % new requests get 503",
                bytes * 100 / max
            ));
        }
    } else if bytes * 100 < max * 70 && shared.log_warned.swap(false, Ordering::Relaxed) {
        report("event log back under 70 % of events.log_bytes_max");
    }
}

/// Folds the synced log into the checkpoint, writes it, and removes segments every reader is
/// past; `force` does it now (at shutdown) whatever the interval.
fn maintain(shared: &Shared, force: bool) {
    let mut guard = lock(&shared.maintenance);
    let Some(state) = guard.as_mut() else {
        return;
    };
    if !force && state.last.is_some_and(|t| t.elapsed() < state.interval) {
        return;
    }
    state.last = Some(Instant::now());
    let until = shared.synced.load(Ordering::Acquire);
    let span = until.saturating_sub(state.folded.next_offset);
    let reader = lock(&shared.log).read_from(state.folded.next_offset);
    for record in reader.take(usize::try_from(span).unwrap_or(usize::MAX)) {
        match record {
            Ok((offset, payload)) => {
                state.folded.fold(offset, &payload);
            }
            Err(e) => {
                report(&format!("spend checkpoint: reading the log: {e}"));
                return;
            }
        }
    }
    state
        .folded
        .compact(crate::clock::now_ms(), state.record_window_ms);
    if let Err(e) = state.folded.save(&state.path) {
        report(&format!(
            "spend checkpoint: writing {}: {e}",
            state.path.display()
        ));
        return;
    }
    // Only what every reader is past may go: both checkpoints, Parquet, Kafka.
    let mut safe = state.previous_offset.min(state.folded.next_offset);
    state.previous_offset = state.folded.next_offset;
    if let Some(parquet) = &shared.parquet {
        match lock(parquet).checkpoint() {
            Ok(next) => safe = safe.min(next),
            Err(_) => return,
        }
    }
    if state.kafka {
        safe = safe.min(kafka_checkpoint(&shared.log_dir));
    }
    drop(guard);
    let mut log = lock(&shared.log);
    if let Err(e) = log.remove_before(safe) {
        report(&format!("removing consumed log segments: {e}"));
    }
    shared.log_bytes.store(log.bytes(), Ordering::Relaxed);
}

/// The Kafka shipper's position in the log (0 when it has none yet).
fn kafka_checkpoint(log_dir: &Path) -> u64 {
    use std::io::Read as _;
    let mut text = String::new();
    File::open(log_dir.join("kafka.checkpoint"))
        .and_then(|f| f.take(64).read_to_string(&mut text))
        .ok()
        .and_then(|_| text.trim().parse().ok())
        .unwrap_or(0)
}

fn sync_loop(shared: &Shared, interval: Duration) {
    loop {
        shared.stopping.wait(interval);
        append_held_back(shared);
        if shared.unsynced.load(Ordering::Acquire) > 0 {
            let _ = sync_now(shared);
        }
        if shared.stopping.is_raised() {
            let _ = sync_now(shared);
            let lost = lock(&shared.held_back).len();
            if lost > 0 {
                shared.metrics.add(Counter::EventsLost, lost as u64);
                report(&format!(
                    "stopping with {lost} usage events the log could not take: they are lost"
                ));
            }
            return;
        }
    }
}

/// The output thread: the synced log into Parquet every `roll_interval`, the spend checkpoint
/// and retention as `maintain` says, and both once more after the last sync.
fn output_loop(shared: &Shared, roll_interval: Duration, checkpoint_interval: Duration) {
    yield_to_requests();
    // Woken often enough for both to be on time.
    let tick = roll_interval.min(checkpoint_interval).min(OUTPUT_TICK_MAX);
    let mut last_roll = Instant::now();
    loop {
        if shared.synced_for_good.wait(tick) {
            roll_parquet(shared);
            maintain(shared, true);
            return;
        }
        if last_roll.elapsed() >= roll_interval {
            roll_parquet(shared);
            last_roll = Instant::now();
        }
        maintain(shared, false);
    }
}

/// A flag raised once, and the wait of a thread that sleeps until it is raised or a timeout.
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // Taken so a waiter between its look at the flag and its wait is not missed.
        let _guard = lock(&self.lock);
        self.wake.notify_all();
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Sleeps up to `timeout` unless raised; whether it is raised.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.lock);
        if !self.is_raised() {
            let _ = self
                .wake
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.is_raised()
    }
}

/// The syncer thread's name (at most 15 bytes: the kernel cuts what is longer).
const SYNCER_THREAD: &str = "tollgate-sync";
/// The output thread's name.
const OUTPUT_THREAD: &str = "tollgate-output";

/// The longest the output thread sleeps between looks at what is due.
const OUTPUT_TICK_MAX: Duration = Duration::from_secs(1);

/// Lowers the calling thread's scheduling priority (nice 10): its work is catching up with the
/// log, which can wait while requests run. Where that cannot be done, it runs as it is.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a priority set on a thread id applies to that thread alone.
        let thread = rustix::thread::gettid();
        // Never raised: a gateway started at a lower priority keeps it here too.
        let nice = rustix::process::getpriority_process(Some(thread))
            .unwrap_or(0)
            .max(OUTPUT_NICE);
        if let Err(e) = rustix::process::setpriority_process(Some(thread), nice) {
            report(&format!("lowering the event output thread's priority: {e}"));
        }
    }
}

/// The output thread's nice value: about a tenth of a request thread's share of a busy core.
#[cfg(target_os = "linux")]
const OUTPUT_NICE: i32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// A small log in `dir`: syncs every 10 ms, backlog of 4.
    fn events_in(dir: &Path) -> EventsConfig {
        EventsConfig {
            dir: dir.to_owned(),
            queued_max: 4,
            sync_interval: Duration::from_millis(10),
            checkpoint_interval: Duration::from_secs(60),
            segment_bytes_max: 1 << 20,
            log_bytes_max: 1 << 30,
        }
    }

    #[test]
    fn events_are_in_the_log_once_appended_and_synced_on_stop() {
        let dir = std::env::temp_dir().join(format!("tollgate-emit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Arc::new(Metrics::default());
        let events = events_in(&dir);
        let (emitter, writer, recovery) =
            Emitter::start(&events, None, Arc::clone(&metrics)).unwrap();
        assert_eq!(recovery.records, 0);
        for i in 0..5 {
            let mut event = UsageEvent::sample();
            event.attempt = i;
            emitter.usage(&event);
        }
        // Readable at once, before any sync: a process kill would not lose them.
        let attempts: Vec<u16> = emitter
            .read_from(0)
            .map(|r| UsageEvent::from_json(&r.unwrap().1).unwrap().attempt)
            .collect();
        assert_eq!(attempts, vec![0, 1, 2, 3, 4]);
        writer.stop().unwrap();
        assert_eq!(emitter.queued(), 0, "the last sync ran");
        assert_eq!(metrics.get(Counter::EventsWritten), 5);
        drop(emitter);
        let (_, _, recovery) = Emitter::start(&events, None, Arc::new(Metrics::default())).unwrap();
        assert_eq!(recovery.records, 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A small file's text (a `/proc` entry), read up to 4 KiB.
    #[cfg(target_os = "linux")]
    fn read_small(path: &Path) -> Option<String> {
        use std::io::Read as _;
        let mut text = String::new();
        File::open(path)
            .ok()?
            .take(4096)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    /// The nice value of this process's thread named `name`, from `/proc`.
    #[cfg(target_os = "linux")]
    fn nice_of(name: &str) -> Option<i32> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
            let task = task.ok()?.path();
            let comm = read_small(&task.join("comm"))?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = read_small(&task.join("stat"))?;
            // Past the command's closing parenthesis: state is field 3, nice field 19.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            fields.get(16)?.parse().ok()
        })
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_output_thread_yields_to_requests_and_the_syncer_does_not() {
        let dir = std::env::temp_dir().join(format!("tollgate-emit-nice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let events = events_in(&dir);
        let (_emitter, writer, _) =
            Emitter::start(&events, None, Arc::new(Metrics::default())).unwrap();
        // The output thread lowers its own priority as it starts.
        let started = Instant::now();
        // Other tests' event threads come and go under the same names: look until ours show.
        let (mut base, mut output) = (None, None);
        while started.elapsed().as_secs() < 10 {
            (base, output) = (nice_of(SYNCER_THREAD), nice_of(OUTPUT_THREAD));
            if let (Some(base), Some(output)) = (base, output)
                && output == base.max(OUTPUT_NICE)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let base = base.unwrap();
        assert!(
            base < OUTPUT_NICE,
            "the test runs at a nice value under {OUTPUT_NICE}"
        );
        assert_eq!(output, Some(OUTPUT_NICE), "lowered, the syncer at {base}");
        writer.stop().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
