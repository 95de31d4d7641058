//! Messages to the operator: one line on stderr per operational problem (a broker away, a
//! damaged checkpoint, an accept error), and sampled lines for what comes too often to report
//! one by one (calls without a valid key). No key, credential or prompt is ever part of one.

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Reports an operational problem on stderr.
pub fn report(message: &str) {
    let _ = writeln!(io::stderr().lock(), "tollgate: {message}");
}

/// A report made at most once per `interval_ms`, saying how many times it happened since the
/// last line: a flood costs one line a second, never one line each.
#[derive(Debug)]
pub struct Sampled {
    interval_ms: i64,
    /// When the last line was written (ms since the epoch; `i64::MIN` before the first).
    last_ms: AtomicI64,
    /// Occurrences since the last line.
    since: AtomicU64,
}

impl Sampled {
    /// At most one line every `interval_ms`.
    #[must_use]
    pub fn every(interval_ms: i64) -> Sampled {
        Sampled {
            interval_ms,
            last_ms: AtomicI64::new(i64::MIN),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence at `now_ms`; writes `line(count)` when the interval has passed
    /// (one caller wins the swap), `count` being the occurrences since the last line. Returns
    /// whether it wrote.
    pub fn note(&self, now_ms: i64, line: impl FnOnce(u64) -> String) -> bool {
        self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != i64::MIN && now_ms.saturating_sub(last) < self.interval_ms {
            return false;
        }
        if self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let count = self.since.swap(0, Ordering::Relaxed);
        report(&line(count));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line_an_interval_counting_what_it_stands_for() {
        let sampled = Sampled::every(1_000);
        let mut written = Vec::new();
        for at in [0, 10, 20, 999, 1_000, 1_500, 2_100, 2_200] {
            let mut count = 0;
            if sampled.note(at, |n| {
                count = n;
                format!("{n} calls")
            }) {
                written.push((at, count));
            }
        }
        // Each line counts the notes since the one before, itself included.
        assert_eq!(written, [(0, 1), (1_000, 4), (2_100, 2)]);
        assert_eq!(sampled.since.load(Ordering::Relaxed), 1);
    }
}
