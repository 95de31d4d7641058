//! Fault injection for the reliability suite (RELIABILITY.md): small file systems that fill up,
//! clients that keep calling while something breaks, the books checked afterwards, and the
//! figures each fault test reports.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;

/// Holds the fault tests of one process to one at a time: each loads the machine and measures
/// what its callers see, which a neighbour's load would blur. Take it first, keep it to the end.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small file system (tmpfs) mounted over a folder, unmounted when dropped.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `dir` (made if absent). Mounting needs root, which CI
    /// has: elsewhere the test is skipped with a loud message, and under `CI=true` it fails.
    pub fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: mounting a small tmpfs failed (the fault tests need root)"
            );
            eprintln!(
                "SKIPPED: cannot mount a tmpfs at {} (needs root)",
                dir.display()
            );
            return None;
        }
        Some(SmallDisk {
            dir: dir.to_owned(),
        })
    }

    /// Fills the disk with a filler file until it refuses a write; the filler's path.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // Down to the last byte: a write of any size now fails.
        while file.write_all(&chunk[..1]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// One fault's figures, as RELIABILITY.md's table shows them.
#[derive(Debug, Default)]
pub struct Figures {
    /// The fault, as the table names it.
    pub fault: &'static str,
    /// Calls answered 200 (each owes exactly one event).
    pub answered: u64,
    /// Answered calls without their event.
    pub lost: u64,
    /// Events recorded twice.
    pub doubled: u64,
    /// Spend past the allocation's limit, in nano-units.
    pub over_limit_nanos: u64,
    /// From the end of the fault to the first call answered 200 again, in milliseconds.
    pub recover_ms: Option<u64>,
    /// What else the test saw (refusals, latencies, memory).
    pub note: String,
}

impl Figures {
    /// The figures of a test whose `calls` calls each owe one event, of which `events` are
    /// logged.
    pub fn of_calls(fault: &'static str, calls: u64, events: usize, note: String) -> Figures {
        Figures {
            fault,
            answered: calls,
            lost: calls.saturating_sub(events as u64),
            doubled: (events as u64).saturating_sub(calls),
            note,
            ..Figures::default()
        }
    }

    /// Prints the figures (`--nocapture` shows them) and appends them as a JSON line to the
    /// file `TOLLGATE_RELIABILITY_OUT` names, if any (`tests/reliability.sh` sets it).
    pub fn report(&self) {
        let line = serde_json::json!({
            "fault": self.fault,
            "answered": self.answered,
            "lost": self.lost,
            "doubled": self.doubled,
            "over_limit_nanos": self.over_limit_nanos,
            "recover_ms": self.recover_ms,
            "note": self.note,
        });
        println!("reliability: {line}");
        if let Ok(path) = std::env::var("TOLLGATE_RELIABILITY_OUT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{line}").unwrap();
        }
    }
}

/// One call as a client saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The status, 0 when the connection failed before an answer.
    pub status: u16,
    /// The answer's `x-request-id`.
    pub request_id: Option<String>,
    /// Whether the body ended as HTTP says it ends (a stream cut by a crash does not).
    pub complete: bool,
    /// When it was answered.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
}

/// Clients calling a chat route in a loop (each call on a new connection) until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    address: Arc<Mutex<SocketAddr>>,
    /// Calls so far, by status, as they are answered.
    counts: Arc<Mutex<HashMap<u16, u64>>>,
    threads: Vec<JoinHandle<Vec<Seen>>>,
}

impl Load {
    /// `clients` threads posting `body` to `address` with `key`, streamed and not in turn,
    /// each pausing 5 ms after a call that was not answered 200 (as a client backs off).
    pub fn start(address: SocketAddr, key: &str, clients: usize, body: &Value) -> Load {
        Load::spawn(address, key, clients, body, Duration::from_millis(5))
    }

    /// As [`Load::start`], without the pause: clients that never back off.
    pub fn flood(address: SocketAddr, key: &str, clients: usize, body: &Value) -> Load {
        Load::spawn(address, key, clients, body, Duration::ZERO)
    }

    fn spawn(
        address: SocketAddr,
        key: &str,
        clients: usize,
        body: &Value,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(address));
        let counts: Arc<Mutex<HashMap<u16, u64>>> = Arc::default();
        let threads = (0..clients)
            .map(|i| {
                let (stop, key) = (Arc::clone(&stop), key.to_owned());
                let shared = Arc::clone(&shared);
                let counts = Arc::clone(&counts);
                let mut body = body.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        body["stream"] = Value::Bool(n % 2 == 0);
                        n += 1;
                        let started = Instant::now();
                        let address = *shared.lock().unwrap();
                        let answer = std::panic::catch_unwind(|| {
                            http::post_json(address, "/v1/chat/completions", &key, &body)
                        });
                        let (status, request_id, complete) = match answer {
                            Ok(a) => (
                                a.status,
                                a.header("x-request-id").map(str::to_owned),
                                a.complete,
                            ),
                            Err(_) => (0, None, false),
                        };
                        *counts.lock().unwrap().entry(status).or_default() += 1;
                        seen.push(Seen {
                            status,
                            request_id,
                            complete,
                            at: Instant::now(),
                            took: started.elapsed(),
                        });
                        if status != 200 && !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    seen
                })
            })
            .collect();
        Load {
            stop,
            address: shared,
            counts,
            threads,
        }
    }

    /// Calls answered with `status` so far.
    pub fn count(&self, status: u16) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `enough` says the counts are enough, or `most` has passed; whether they are.
    pub fn wait_for(&self, most: Duration, enough: impl Fn(&Load) -> bool) -> bool {
        let deadline = Instant::now() + most;
        while Instant::now() < deadline {
            if enough(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        enough(self)
    }

    /// Points the clients at a gateway's new address (after a restart).
    pub fn retarget(&self, address: SocketAddr) {
        *self.address.lock().unwrap() = address;
    }

    /// Stops the clients and gives every call they made, in no particular order.
    pub fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// The books of calls answered against events logged: (answered, lost, doubled). A call is
/// answered when its 200 answer came whole (a stream cut by a crash did not end, and owes no
/// event: see [`cut`]); it is lost when no event carries its request id; an event is doubled
/// when its `event_id` or its call's request id (for events of answered calls) comes twice.
pub fn books(seen: &[Seen], events: &[Value]) -> (u64, u64, u64) {
    let answered: Vec<&str> = seen
        .iter()
        .filter(|s| s.status == 200 && s.complete)
        .filter_map(|s| s.request_id.as_deref())
        .collect();
    let mut per_request: HashMap<&str, u64> = HashMap::new();
    let mut ids = HashSet::new();
    let mut doubled = 0;
    for event in events {
        if !ids.insert(event["event_id"].as_str().unwrap_or_default()) {
            doubled += 1;
        }
        *per_request
            .entry(event["request_id"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    let lost = answered
        .iter()
        .filter(|id| !per_request.contains_key(*id))
        .count() as u64;
    doubled += answered
        .iter()
        .map(|id| per_request.get(id).copied().unwrap_or(0).saturating_sub(1))
        .sum::<u64>();
    (answered.len() as u64, lost, doubled)
}

/// Streams whose 200 began but never ended (the gateway died under them).
pub fn cut(seen: &[Seen]) -> u64 {
    seen.iter()
        .filter(|s| s.status == 200 && !s.complete)
        .count() as u64
}

/// The first call answered 200 at or after `from`: how long after `from` it was answered.
pub fn recovered_after(seen: &[Seen], from: Instant) -> Option<Duration> {
    seen.iter()
        .filter(|s| s.status == 200 && s.at >= from)
        .map(|s| s.at - from)
        .min()
}

/// The statuses seen between two instants, counted.
pub fn statuses_between(seen: &[Seen], from: Instant, to: Instant) -> HashMap<u16, u64> {
    let mut counts = HashMap::new();
    for s in seen.iter().filter(|s| s.at >= from && s.at < to) {
        *counts.entry(s.status).or_default() += 1;
    }
    counts
}

/// A process's resident memory, in KiB (Linux's `VmRSS`).
pub fn resident_kib(pid: u32) -> u64 {
    let status = crate::read_text(Path::new(&format!("/proc/{pid}/status")));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The median and the 99th percentile of durations, in microseconds.
pub fn p50_p99(took: &mut [Duration]) -> (u64, u64) {
    (percentile_us(took, 50), percentile_us(took, 99))
}

/// The `p`-th percentile (0 to 100) of durations, in microseconds.
pub fn percentile_us(took: &mut [Duration], p: usize) -> u64 {
    if took.is_empty() {
        return 0;
    }
    took.sort_unstable();
    let i = ((took.len() - 1) * p) / 100;
    took[i].as_micros() as u64
}

/// The fault shim (`tests/faults/shim.c`: a slow `fsync`, a wall clock that steps), built once
/// per test process with the system's C compiler, for `LD_PRELOAD`. `None`, loudly, without a
/// compiler, except under `CI=true`, where that is a failure.
pub fn shim() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = crate::repo_root().join("tests/faults/shim.c");
            let out = std::env::temp_dir().join(format!("tollgate-shim-{}.so", std::process::id()));
            let built = Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&out)
                .arg(&source)
                .arg("-ldl")
                .status()
                .is_ok_and(|s| s.success());
            if built {
                return Some(out);
            }
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: building the fault shim with cc failed"
            );
            eprintln!("SKIPPED: no C compiler to build the fault shim");
            None
        })
        .clone()
}
