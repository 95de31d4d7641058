//! Whether a failed attempt is tried again, and after how long.
//!
//! A retry budget keeps retries to a share of recent calls (Finagle's and Linkerd's retry
//! budgets), so an outage upstream is not multiplied by the attempts of every caller: over two
//! windows, retries may be at most `percent` of calls, plus `floor` per window so a quiet
//! gateway still retries. Backoff is exponential with equal jitter.

use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// Whether an upstream status means "try again": 408, 409, 429 and every 5xx (529 included).
#[must_use]
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500..=599)
}

/// The wait before retry number `retry` (1 for the first): `base_ms * 2^(retry-1)`, at most
/// `max_ms`, half of it fixed and half drawn from `random`.
#[must_use]
pub fn backoff_ms(retry: u32, base_ms: u64, max_ms: u64, random: u64) -> u64 {
    let exponent = retry.saturating_sub(1).min(32);
    let full = base_ms.saturating_mul(1u64 << exponent).min(max_ms);
    let half = full / 2;
    half + random % (full - half + 1)
}

/// Retries allowed as a share of recent calls.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    floor: u64,
    window_us: i64,
    windows: [Window; 2],
}

#[derive(Debug)]
struct Window {
    index: AtomicI64,
    calls: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// Retries at most `percent` of the calls of the last two windows of `window_us`, plus
    /// `floor` a window.
    #[must_use]
    pub fn new(percent: u32, floor: u32, window_us: i64) -> RetryBudget {
        let window = || Window {
            index: AtomicI64::new(i64::MIN),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        };
        RetryBudget {
            percent: u64::from(percent),
            floor: u64::from(floor),
            window_us: window_us.max(1),
            windows: [window(), window()],
        }
    }

    /// The window `now_us` falls in, emptied first when it last held an older one.
    fn window(&self, now_us: i64) -> (&Window, i64) {
        let index = now_us.div_euclid(self.window_us);
        let window = &self.windows[usize::from(index.rem_euclid(2) == 1)];
        let held = window.index.load(Ordering::Acquire);
        if held != index
            && window
                .index
                .compare_exchange(held, index, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            window.calls.store(0, Ordering::Relaxed);
            window.retries.store(0, Ordering::Relaxed);
        }
        (window, index)
    }

    /// Counts a call (its first attempt).
    pub fn called(&self, now_us: i64) {
        self.window(now_us).0.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry at `now_us` if the budget has room.
    pub fn try_retry(&self, now_us: i64) -> bool {
        let (current, index) = self.window(now_us);
        let other = &self.windows[usize::from(index.rem_euclid(2) == 0)];
        let previous = other.index.load(Ordering::Acquire) == index - 1;
        let (mut calls, mut retries) = (
            current.calls.load(Ordering::Relaxed),
            current.retries.load(Ordering::Relaxed),
        );
        if previous {
            calls += other.calls.load(Ordering::Relaxed);
            retries += other.retries.load(Ordering::Relaxed);
        }
        if retries * 100 >= calls * self.percent + self.floor * 100 {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(retryable_status(status), "{status}");
        }
        for status in [200, 400, 401, 403, 404, 413, 422] {
            assert!(!retryable_status(status), "{status}");
        }
    }

    #[test]
    fn backoff_doubles_within_its_cap_with_half_of_it_drawn() {
        for random in [0, 1, 99, u64::MAX] {
            let first = backoff_ms(1, 100, 1_000, random);
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff_ms(3, 100, 1_000, random);
            assert!((200..=400).contains(&third), "{third}");
            let capped = backoff_ms(30, 100, 1_000, random);
            assert!((500..=1_000).contains(&capped), "{capped}");
            assert!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, random) >= u64::MAX / 2);
        }
        assert_eq!(backoff_ms(1, 0, 1_000, 5), 0);
    }

    #[test]
    fn retries_stay_within_a_share_of_recent_calls() {
        let budget = RetryBudget::new(20, 2, 1_000);
        // A quiet gateway still gets its floor.
        assert!(budget.try_retry(0));
        assert!(budget.try_retry(1));
        assert!(!budget.try_retry(2));
        for t in 0..100 {
            budget.called(t);
        }
        // 100 calls: 20 % of them and the floor, less the two taken.
        let taken = (0..100).filter(|_| budget.try_retry(500)).count();
        assert_eq!(taken, 20);
        // The next window still sees the last one's calls and retries.
        assert!(!budget.try_retry(1_500));
        // Two windows on, all of it is forgotten: the floor again.
        assert!(budget.try_retry(3_000));
        assert!(budget.try_retry(3_001));
        assert!(!budget.try_retry(3_002));
    }
}
