//! Usage events leave the request path through one bounded queue to a writer thread.
//!
//! The request path never waits on a disk: it pushes the event and goes on. The writer appends
//! JSON lines to the local event log and syncs once per window (`events.sync_interval_ms`,
//! group commit), or at once when asked to flush or stop.
//! Budget warnings (soft limits crossed) go to an alerts file the same way.
//!
//! **Invariant:** an admitted request always finds room for its event. The queue holds
//! `queued_max` events plus one per request that may be in flight; a new request is refused
//! with 503 once `queued_max` events wait, before it is admitted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tollgate_engine::{SoftLimitCrossed, UsageEvent};

use crate::error::rfc3339;
use crate::limits::EVENTS_BATCH_MAX;
use crate::metrics::{Counter, Metrics};

/// The file usage events are appended to, one JSON object per line.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The file budget warnings are appended to.
pub const ALERTS_FILE: &str = "alerts.jsonl";

enum Record {
    Usage(Box<UsageEvent>),
    Alert(String),
    /// Shutdown: everything queued before this is written, then the writer stops.
    Stop,
    /// Everything queued before this is written and synced, then the sender is told.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side, shared by every request.
#[derive(Clone)]
pub struct Emitter {
    sender: Sender<Record>,
    queued_max: usize,
    metrics: Arc<Metrics>,
}

/// The writer thread; joining it flushes everything queued.
pub struct Writer {
    thread: JoinHandle<io::Result<()>>,
}

impl Emitter {
    /// Opens the log in `dir` and starts the writer thread.
    pub fn start(
        dir: &Path,
        queued_max: usize,
        in_flight_max: usize,
        sync_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Emitter, Writer)> {
        std::fs::create_dir_all(dir)?;
        let events = open_append(&dir.join(EVENTS_FILE))?;
        let alerts = open_append(&dir.join(ALERTS_FILE))?;
        let (sender, receiver) =
            crossbeam_channel::bounded(queued_max.saturating_add(in_flight_max));
        let writer_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("tollgate-events".into())
            .spawn(move || write_loop(&receiver, events, alerts, &writer_metrics, sync_interval))?;
        Ok((
            Emitter {
                sender,
                queued_max,
                metrics,
            },
            Writer { thread },
        ))
    }

    /// Whether a new request may be admitted (the backlog is under `queued_max`).
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.sender.len() < self.queued_max
    }

    /// Events waiting.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.sender.len()
    }

    /// Queues a usage event.
    pub fn usage(&self, event: UsageEvent) {
        self.send(Record::Usage(Box::new(event)));
    }

    /// Queues a soft-limit warning.
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
        self.metrics.add(Counter::SoftLimitWarnings, 1);
        self.send(Record::Alert(line.to_string()));
    }

    /// Asks the writer to finish: what was queued before is written and synced; events sent
    /// after are counted as lost. Waits up to `wait` for room in the queue.
    pub fn stop(&self, wait: std::time::Duration) {
        if self.sender.send_timeout(Record::Stop, wait).is_err() {
            report("shutdown: the event writer did not take the stop signal");
        }
    }

    /// Waits until every event queued before the call is written and synced (admin API:
    /// `POST /admin/v1/events/flush`, before reading the log). `false` if the writer is gone.
    pub async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        match self.sender.try_send(Record::Flush(done)) {
            Ok(()) => wait.await.is_ok(),
            Err(_) => false,
        }
    }

    fn send(&self, record: Record) {
        match self.sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // Unreachable while the admission invariant holds; counted and reported if not.
                self.metrics.add(Counter::EventsLost, 1);
                report("usage event queue full or closed; an event was lost");
            }
        }
    }
}

impl Writer {
    /// Waits for the writer to drain the queue (every `Emitter` must be dropped first).
    pub fn join(self) -> io::Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("event writer thread panicked")))
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(
    receiver: &Receiver<Record>,
    mut events: File,
    mut alerts: File,
    metrics: &Metrics,
    sync_interval: Duration,
) -> io::Result<()> {
    let mut usage_buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut alert_buf: Vec<u8> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let Ok(first) = receiver.recv() else {
            break;
        };
        let mut flushed = Vec::new();
        let mut written = 0u64;
        let deadline = Instant::now() + sync_interval;
        let mut record = Some(first);
        let mut taken = 0;
        while let Some(r) = record.take() {
            match r {
                Record::Usage(event) => {
                    event.write_json(&mut usage_buf);
                    usage_buf.push(b'\n');
                    written += 1;
                }
                Record::Alert(line) => {
                    alert_buf.extend_from_slice(line.as_bytes());
                    alert_buf.push(b'\n');
                }
                Record::Stop => stopping = true,
                Record::Flush(done) => flushed.push(done),
            }
            taken += 1;
            // Group commit: gather what arrives within the sync interval, then write and sync
            // once. A flush or a stop ends the window at once.
            if taken < EVENTS_BATCH_MAX && !stopping && flushed.is_empty() {
                record = receiver.recv_deadline(deadline).ok();
            }
        }
        let result =
            flush(&mut events, &mut usage_buf).and_then(|()| flush(&mut alerts, &mut alert_buf));
        match result {
            Ok(()) => {
                metrics.add(Counter::EventsWritten, written);
                for done in flushed {
                    let _ = done.send(());
                }
            }
            Err(e) => {
                metrics.add(Counter::EventsLost, written);
                report(&format!("writing usage events: {e}"));
                usage_buf.clear();
                alert_buf.clear();
            }
        }
    }
    Ok(())
}

fn flush(file: &mut File, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    file.write_all(buf)?;
    file.sync_data()?;
    buf.clear();
    Ok(())
}

/// Reports an operational problem on stderr (no key or credential is ever part of one).
pub fn report(message: &str) {
    let _ = writeln!(io::stderr().lock(), "tollgate: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_as_json_lines_and_flushed_on_join() {
        let dir = std::env::temp_dir().join(format!("tollgate-emit-{}", std::process::id()));
        let metrics = Arc::new(Metrics::default());
        let (emitter, writer) =
            Emitter::start(&dir, 4, 4, Duration::from_millis(10), Arc::clone(&metrics)).unwrap();
        assert!(emitter.has_room());
        for i in 0..5 {
            let mut event = UsageEvent::sample();
            event.attempt = i;
            emitter.usage(event);
        }
        drop(emitter);
        writer.join().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(File::open(dir.join(EVENTS_FILE)).unwrap(), 1 << 20),
            &mut text,
        )
        .unwrap();
        let attempts: Vec<u16> = text
            .lines()
            .map(|l| UsageEvent::from_json(l.as_bytes()).unwrap().attempt)
            .collect();
        assert_eq!(attempts, vec![0, 1, 2, 3, 4]);
        assert_eq!(metrics.get(Counter::EventsWritten), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
