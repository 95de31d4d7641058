//! Usage events go into the durable local log before the request's answer is complete.
//!
//! The request path encodes its event and appends it to `sink::log` (one `write` under a short
//! lock: the bytes are then with the operating system, so killing the process loses nothing).
//! A syncer thread makes them survive a machine crash once per `events.sync_interval_ms` (group
//! commit), without holding the lock while the disk works. Budget warnings (soft limits
//! crossed) go to `alerts.jsonl` the same way.
//!
//! **Invariant:** an event is in the log before the call that produced it is answered: refusals
//! append before the error response is returned, and a metered answer appends before its last
//! byte is sent. New requests are refused (503) while more than `events.queued_max` appended
//! events wait for their sync: a disk that cannot keep up slows admission, never loses events.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tollgate_engine::{SoftLimitCrossed, UsageEvent};
use tollgate_sink::columnar::ParquetSink;
use tollgate_sink::log::{Log, LogReader, Recovery, SEGMENT_BYTES_MAX};

use crate::config::ParquetConfig;

use crate::error::rfc3339;
use crate::metrics::{Counter, Metrics};

/// The log's folder under `events.dir`.
pub const LOG_DIR: &str = "log";
/// The file budget warnings are appended to.
pub const ALERTS_FILE: &str = "alerts.jsonl";

struct Shared {
    log: Mutex<Log>,
    log_dir: std::path::PathBuf,
    /// The log offset up to which records are synced.
    synced: AtomicU64,
    /// Writes the synced log into Parquet, one pass at a time.
    parquet: Option<Mutex<ParquetSink>>,
    alerts: Mutex<File>,
    /// Events appended since the last sync.
    unsynced: AtomicU64,
    stopping: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    metrics: Arc<Metrics>,
}

/// The appending side, shared by every request.
#[derive(Clone)]
pub struct Emitter {
    shared: Arc<Shared>,
    queued_max: usize,
}

/// The syncer thread; joining it syncs what is left.
pub struct Writer {
    thread: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emitter {
    /// Opens the log under `dir` (cutting a torn tail, which is reported) and starts the syncer.
    pub fn start(
        dir: &Path,
        queued_max: usize,
        sync_interval: Duration,
        parquet: Option<&ParquetConfig>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Emitter, Writer, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let (log, recovery) =
            Log::open(&dir.join(LOG_DIR), SEGMENT_BYTES_MAX).map_err(io::Error::other)?;
        if recovery.cut_bytes > 0 {
            report(&format!(
                "event log: cut {} bytes of a damaged tail ({}); {} events kept",
                recovery.cut_bytes,
                recovery.cut_reason.unwrap_or("torn record"),
                recovery.records
            ));
        }
        let alerts = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(ALERTS_FILE))?;
        let synced = log.next_offset();
        let roll_interval = parquet.map_or(Duration::MAX, |p| p.roll_interval);
        let parquet =
            parquet.map(|p| Mutex::new(ParquetSink::new(&dir.join(LOG_DIR), &p.dir, p.rows_max)));
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            log_dir: dir.join(LOG_DIR),
            synced: AtomicU64::new(synced),
            parquet,
            alerts: Mutex::new(alerts),
            unsynced: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            metrics,
        });
        let syncer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tollgate-events-sync".into())
            .spawn(move || sync_loop(&syncer, sync_interval, roll_interval))?;
        Ok((Emitter { shared, queued_max }, Writer { thread }, recovery))
    }

    /// Whether a new request may be admitted (the syncer is keeping up).
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.queued() < self.queued_max
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

    /// Appends a usage event. On return it is with the operating system.
    pub fn usage(&self, event: &UsageEvent) {
        // A failure is counted and reported by `append`; a model call has been answered by now.
        let _ = self.append(event);
    }

    /// Appends a usage event; `false` (counted and reported) if it could not be written, for
    /// callers that can still refuse (a usage batch).
    pub fn append(&self, event: &UsageEvent) -> bool {
        let payload = event.to_json();
        let appended = lock(&self.shared.log).append(&[payload]);
        match appended {
            Ok(_) => {
                self.shared.unsynced.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.add(Counter::EventsWritten, 1);
                true
            }
            Err(e) => {
                self.shared.metrics.add(Counter::EventsLost, 1);
                report(&format!("appending a usage event: {e}"));
                false
            }
        }
    }

    /// Records a soft-limit warning.
    pub fn alert(&self, crossed: &SoftLimitCrossed, at: tollgate_engine::UnixMs) {
        let line = serde_json::json!({
            "kind": "soft_limit_crossed",
            "at": rfc3339(at),
            "level": crossed.level.as_str(),
            "name": &*crossed.name,
            "period": crossed.period.as_str(),
            "period_index": crossed.period_index,
            "spent_nanos": crossed.spent.0,
            "limit_nanos": crossed.limit.0,
            "percent": crossed.percent,
        });
        self.shared.metrics.add(Counter::SoftLimitWarnings, 1);
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = lock(&self.shared.alerts).write_all(&bytes) {
            report(&format!("writing a budget warning: {e}"));
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

    /// Reads the log from `offset` (restore at start; the records as appended).
    pub fn read_from(&self, offset: u64) -> LogReader {
        lock(&self.shared.log).read_from(offset)
    }

    /// Asks the syncer to sync what is left and stop.
    pub fn stop(&self, _wait: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        let _guard = lock(&self.shared.wake_lock);
        self.shared.wake.notify_all();
    }
}

impl Writer {
    /// Waits for the syncer's last sync (call [`Emitter::stop`] first).
    pub fn join(self) -> io::Result<()> {
        self.thread
            .join()
            .map_err(|_| io::Error::other("event syncer thread panicked"))
    }
}

/// Syncs the active segment and the alerts without holding the log while the disk works.
fn sync_now(shared: &Shared) -> io::Result<()> {
    let pending = shared.unsynced.swap(0, Ordering::AcqRel);
    let (file, end) = {
        let log = lock(&shared.log);
        (
            log.active_file().map_err(io::Error::other),
            log.next_offset(),
        )
    };
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

fn sync_loop(shared: &Shared, interval: Duration, roll_interval: Duration) {
    let mut last_roll = std::time::Instant::now();
    loop {
        {
            let guard = lock(&shared.wake_lock);
            if !shared.stopping.load(Ordering::Acquire) {
                let _ = shared
                    .wake
                    .wait_timeout(guard, interval)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        if shared.unsynced.load(Ordering::Acquire) > 0 {
            let _ = sync_now(shared);
        }
        if shared.stopping.load(Ordering::Acquire) {
            let _ = sync_now(shared);
            roll_parquet(shared);
            return;
        }
        if last_roll.elapsed() >= roll_interval {
            roll_parquet(shared);
            last_roll = std::time::Instant::now();
        }
    }
}

/// Reports an operational problem on stderr (no key or credential is ever part of one).
pub fn report(message: &str) {
    let _ = writeln!(io::stderr().lock(), "tollgate: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_in_the_log_once_appended_and_synced_on_stop() {
        let dir = std::env::temp_dir().join(format!("tollgate-emit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Arc::new(Metrics::default());
        let (emitter, writer, recovery) = Emitter::start(
            &dir,
            4,
            Duration::from_millis(10),
            None,
            Arc::clone(&metrics),
        )
        .unwrap();
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
        emitter.stop(Duration::from_secs(1));
        writer.join().unwrap();
        assert_eq!(emitter.queued(), 0, "the last sync ran");
        assert_eq!(metrics.get(Counter::EventsWritten), 5);
        drop(emitter);
        let (_, _, recovery) = Emitter::start(
            &dir,
            4,
            Duration::from_millis(10),
            None,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        assert_eq!(recovery.records, 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
