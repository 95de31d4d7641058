//! Routing decisions: which deployment of a candidate takes a call, whether a failed attempt
//! may be tried again, how long to wait first, and when a deployment is left alone.
//!
//! Everything here is arithmetic on atomics and the caller's `now` (microseconds on a monotonic
//! clock) and random bits: no clock, no I/O, no lock, so a decision is the same in a test as on
//! the request path. The gateway keeps one [`Health`] per deployment and one [`RetryBudget`]
//! for the process, and asks [`choose`] for a deployment before every attempt.
//!
//! **Invariant:** a deployment whose breaker is open is never chosen; a half-open one takes one
//! probe at a time.

pub mod breaker;
pub mod retry;

pub use self::breaker::{Breaker, BreakerConfig, BreakerState, Pass};
pub use self::retry::{RetryBudget, backoff_ms, retryable_status};

use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// How the deployments of one candidate share its calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// At random, in proportion to the deployments' weights.
    #[default]
    Weighted,
    /// The deployment with the fewest calls in flight for its weight.
    LeastInFlight,
    /// The deployment whose recent time to first byte, times its calls in flight plus one,
    /// is least (a "peak EWMA"): a slow deployment gets less, a deployment not yet measured
    /// (or not for [`LATENCY_STALE_US`]) is tried so it is measured again.
    Latency,
}

impl Balance {
    /// The name used in config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Weighted => "weighted",
            Balance::LeastInFlight => "least_in_flight",
            Balance::Latency => "latency",
        }
    }
}

/// A latency sample older than this no longer counts: the deployment is measured afresh.
pub const LATENCY_STALE_US: i64 = 10_000_000;

/// Where one deployment stands when a call is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Its share of calls under [`Balance::Weighted`], at least 1 for a deployment that may
    /// take calls at all.
    pub weight: u32,
    /// Calls it is serving now.
    pub in_flight: u64,
    /// Its recent time to first byte, when measured lately.
    pub latency_us: Option<u64>,
    /// It may take this call: its breaker lets it, it is not told to wait (429 with
    /// `Retry-After`), it is under its concurrency cap, and this call has not failed on it.
    pub available: bool,
}

/// The deployment to place a call on, by `balance`, among those available; `None` when none
/// is. `random` breaks ties and draws the weighted choice.
#[must_use]
pub fn choose(balance: Balance, standings: &[Standing], random: u64) -> Option<usize> {
    let open = || {
        standings
            .iter()
            .enumerate()
            .filter(|(_, s)| s.available && s.weight > 0)
    };
    match balance {
        Balance::Weighted => weighted(open(), random),
        Balance::LeastInFlight => least(open(), random, |s| u128::from(s.in_flight)),
        Balance::Latency => least(open(), random, |s| {
            u128::from(s.latency_us.unwrap_or(0)) * u128::from(s.in_flight + 1)
        }),
    }
}

/// A weighted draw among `open`.
fn weighted<'s>(
    open: impl Iterator<Item = (usize, &'s Standing)> + Clone,
    random: u64,
) -> Option<usize> {
    let total: u64 = open.clone().map(|(_, s)| u64::from(s.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for (i, s) in open {
        let weight = u64::from(s.weight);
        if point < weight {
            return Some(i);
        }
        point -= weight;
    }
    None
}

/// The deployment of least `load` per unit of weight; ties drawn by weight.
fn least<'s>(
    open: impl Iterator<Item = (usize, &'s Standing)> + Clone,
    random: u64,
    load: impl Fn(&Standing) -> u128,
) -> Option<usize> {
    // Compare load_a / weight_a with load_b / weight_b without dividing.
    let per_weight = |s: &Standing| (load(s), u128::from(s.weight));
    let (best_load, best_weight) = open
        .clone()
        .map(|(_, s)| per_weight(s))
        .reduce(|a, b| if b.0 * a.1 < a.0 * b.1 { b } else { a })?;
    let tied = open.filter(|(_, s)| {
        let (l, w) = per_weight(s);
        l * best_weight == best_load * w
    });
    weighted(tied, random)
}

/// What a deployment has shown lately: calls in flight, time to first byte, its breaker, and
/// how long an upstream `Retry-After` told it to wait. Shared by every call; lock-free.
#[derive(Debug)]
pub struct Health {
    in_flight: AtomicU64,
    attempts: AtomicU64,
    latency_ewma_us: AtomicU64,
    latency_at_us: AtomicI64,
    wait_until_us: AtomicI64,
    /// Opens after repeated failures, so calls go elsewhere while the deployment recovers.
    pub breaker: Breaker,
}

impl Health {
    /// A deployment not yet called, its breaker closed.
    #[must_use]
    pub fn new(breaker: BreakerConfig) -> Health {
        Health {
            in_flight: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            latency_ewma_us: AtomicU64::new(0),
            latency_at_us: AtomicI64::new(i64::MIN),
            wait_until_us: AtomicI64::new(i64::MIN),
            breaker: Breaker::new(breaker),
        }
    }

    /// Where it stands at `now_us` with `weight`, before its breaker is asked (the caller
    /// asks [`Breaker::pass`] of the deployment it chose, so a probe is taken only once).
    #[must_use]
    pub fn standing(&self, now_us: i64, weight: u32, in_flight_max: Option<u64>) -> Standing {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let measured_at = self.latency_at_us.load(Ordering::Relaxed);
        let latency_us = (now_us.saturating_sub(measured_at) < LATENCY_STALE_US)
            .then(|| self.latency_ewma_us.load(Ordering::Relaxed));
        let available = self.breaker.state(now_us) != BreakerState::Open
            && now_us >= self.wait_until_us.load(Ordering::Relaxed)
            && in_flight_max.is_none_or(|max| in_flight < max);
        Standing {
            weight,
            in_flight,
            latency_us,
            available,
        }
    }

    /// Calls it is serving now.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts sent to it since the process started.
    #[must_use]
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// A call starts on it.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// A call it was serving ended (however it ended).
    pub fn ended(&self) {
        // Never below zero, even were an end counted twice.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Its time to first byte was `sample_us` at `now_us`: the average moves an eighth of the
    /// way there (the whole way after a stale spell).
    pub fn measured(&self, now_us: i64, sample_us: u64) {
        let at = self.latency_at_us.swap(now_us, Ordering::Relaxed);
        let fresh = now_us.saturating_sub(at) < LATENCY_STALE_US;
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if fresh {
                    old - old / 8 + sample_us / 8
                } else {
                    sample_us
                })
            });
    }

    /// The upstream said to wait (`Retry-After`) until `until_us`: it takes no calls until then.
    pub fn wait_until(&self, until_us: i64) {
        self.wait_until_us.fetch_max(until_us, Ordering::Relaxed);
    }

    /// Its recent time to first byte, if measured lately.
    #[must_use]
    pub fn latency_us(&self, now_us: i64) -> Option<u64> {
        let at = self.latency_at_us.load(Ordering::Relaxed);
        (now_us.saturating_sub(at) < LATENCY_STALE_US)
            .then(|| self.latency_ewma_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(weight: u32, in_flight: u64, latency_us: Option<u64>) -> Standing {
        Standing {
            weight,
            in_flight,
            latency_us,
            available: true,
        }
    }

    /// How many of `draws` calls each deployment gets.
    fn shares(balance: Balance, standings: &[Standing], draws: u64) -> Vec<u64> {
        let mut counts = vec![0; standings.len()];
        for r in 0..draws {
            let random = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Some(i) = choose(balance, standings, random) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn weighted_draws_follow_the_weights_among_the_available() {
        let mut three = [
            standing(1, 0, None),
            standing(3, 0, None),
            standing(4, 0, None),
        ];
        let counts = shares(Balance::Weighted, &three, 8000);
        for (count, expected) in counts.iter().zip([1000, 3000, 4000]) {
            assert!(count.abs_diff(expected) < 200, "{counts:?}");
        }
        three[2].available = false;
        let counts = shares(Balance::Weighted, &three, 4000);
        assert_eq!(counts[2], 0);
        assert!(counts[1].abs_diff(3000) < 200, "{counts:?}");
        three[0].available = false;
        three[1].available = false;
        assert_eq!(choose(Balance::Weighted, &three, 7), None);
        assert_eq!(choose(Balance::Weighted, &[], 7), None);
        assert_eq!(choose(Balance::Weighted, &[standing(0, 0, None)], 7), None);
    }

    #[test]
    fn least_in_flight_takes_the_least_loaded_for_its_weight() {
        let busy = [
            standing(1, 4, None),
            standing(1, 1, None),
            standing(2, 3, None),
        ];
        // 4/1, 1/1, 3/2: the second.
        assert_eq!(shares(Balance::LeastInFlight, &busy, 100), vec![0, 100, 0]);
        let tied = [standing(1, 2, None), standing(3, 6, None)];
        let counts = shares(Balance::LeastInFlight, &tied, 4000);
        assert!(counts[0].abs_diff(1000) < 150, "{counts:?}");
    }

    #[test]
    fn latency_prefers_the_fast_and_measures_the_unmeasured() {
        let fast = standing(1, 3, Some(10_000));
        let slow = standing(1, 0, Some(100_000));
        // 10 ms x 4 in flight beats 100 ms x 1.
        assert_eq!(choose(Balance::Latency, &[fast, slow], 1), Some(0));
        let fast = standing(1, 12, Some(10_000));
        assert_eq!(choose(Balance::Latency, &[fast, slow], 1), Some(1));
        let unmeasured = standing(1, 0, None);
        assert_eq!(choose(Balance::Latency, &[fast, unmeasured], 1), Some(1));
    }

    #[test]
    fn health_tracks_calls_latency_and_waits() {
        let health = Health::new(BreakerConfig::default());
        assert_eq!(health.standing(0, 1, None).latency_us, None);
        health.started();
        health.started();
        health.ended();
        assert_eq!(health.in_flight(), 1);
        health.ended();
        health.ended();
        assert_eq!(health.in_flight(), 0, "never below zero");
        assert_eq!(health.attempts(), 2);
        health.measured(1_000, 80_000);
        assert_eq!(health.latency_us(1_000), Some(80_000));
        health.measured(2_000, 0);
        assert_eq!(health.latency_us(2_000), Some(70_000));
        assert_eq!(health.latency_us(2_000 + LATENCY_STALE_US), None);
        health.measured(3_000 + LATENCY_STALE_US, 5_000);
        assert_eq!(health.latency_us(3_000 + LATENCY_STALE_US), Some(5_000));
        assert!(health.standing(0, 1, Some(1)).available);
        health.started();
        assert!(!health.standing(0, 1, Some(1)).available, "at its cap");
        assert!(health.standing(0, 1, Some(2)).available);
        health.wait_until(500);
        assert!(!health.standing(499, 1, None).available);
        assert!(health.standing(500, 1, None).available);
    }
}
