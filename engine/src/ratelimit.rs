//! Requests- and tokens-per-minute limits as a lock-free GCRA (generic cell rate algorithm).
//!
//! One atomic word per limit holds the theoretical arrival time (TAT) in microseconds. A limit
//! of `n` per minute admits a burst of `n` and then one every `60 s / n`. Requests are taken
//! before the call ([`Gcra::take`]); tokens are not known until the call ends, so they are
//! charged after it ([`Gcra::charge`]) and a key in debt is refused until it has paid it off
//! ([`Gcra::check`]). The caller passes `now` in microseconds on a monotonic clock.
//!
//! **Invariant:** over any window of length `w`, at most `n * (1 + w / 60 s)` units are taken.

use std::num::NonZeroU32;

use crate::sync::{AtomicI64, Ordering};

/// Microseconds in the one-minute window every limit is expressed over.
const MINUTE_US: i64 = 60_000_000;

/// One per-minute limit: its theoretical arrival time in one atomic word, so each check is
/// a load and a compare-and-swap.
#[derive(Debug)]
pub struct Gcra {
    tat_us: AtomicI64,
    interval_us: i64,
    burst_us: i64,
}

/// How long until the limit admits again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter {
    /// Microseconds to wait.
    pub wait_us: i64,
}

impl RetryAfter {
    /// Whole seconds to wait, rounded up and at least one (the `Retry-After` header).
    #[must_use]
    pub fn seconds(self) -> u64 {
        u64::try_from(self.wait_us.max(1))
            .unwrap_or(1)
            .div_ceil(1_000_000)
    }
}

impl Gcra {
    /// `limit` units per minute, with a burst of `limit`.
    #[must_use]
    pub fn per_minute(limit: NonZeroU32) -> Gcra {
        let limit = i64::from(limit.get());
        Gcra {
            tat_us: AtomicI64::new(i64::MIN),
            // At least 1 us per unit, so a limit above 60M per minute is still a limit.
            interval_us: (MINUTE_US / limit).max(1),
            burst_us: MINUTE_US,
        }
    }

    /// Takes `units` if they fit now, or says how long until they would.
    pub fn take(&self, now_us: i64, units: u64) -> Result<(), RetryAfter> {
        let cost = self.cost(units);
        let mut tat = self.tat_us.load(Ordering::Acquire);
        loop {
            let next = tat.max(now_us).saturating_add(cost);
            let over = next.saturating_sub(now_us).saturating_sub(self.burst_us);
            if over > 0 {
                return Err(RetryAfter { wait_us: over });
            }
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether the limit is not in debt at `now` (a post-charged limit admits while it is not).
    pub fn check(&self, now_us: i64) -> Result<(), RetryAfter> {
        let tat = self.tat_us.load(Ordering::Acquire);
        let over = tat.saturating_sub(now_us).saturating_sub(self.burst_us);
        if over > 0 {
            Err(RetryAfter { wait_us: over })
        } else {
            Ok(())
        }
    }

    /// Charges `units` already consumed, whether or not they fit.
    pub fn charge(&self, now_us: i64, units: u64) {
        let cost = self.cost(units);
        let mut tat = self.tat_us.load(Ordering::Acquire);
        loop {
            let next = tat.max(now_us).saturating_add(cost);
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }

    fn cost(&self, units: u64) -> i64 {
        i64::try_from(units)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval_us)
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limit(n: u32) -> Gcra {
        Gcra::per_minute(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let g = limit(60);
        for _ in 0..60 {
            g.take(0, 1).unwrap();
        }
        let refused = g.take(0, 1).unwrap_err();
        assert_eq!(refused.wait_us, 1_000_000);
        assert_eq!(refused.seconds(), 1);
        g.take(1_000_000, 1).unwrap();
        assert!(g.take(1_000_000, 1).is_err());
    }

    #[test]
    fn post_charged_tokens_put_a_key_in_debt() {
        let g = limit(1_000);
        g.check(0).unwrap();
        g.charge(0, 1_500);
        let wait = g.check(0).unwrap_err();
        assert_eq!(wait.wait_us, 30_000_000);
        assert_eq!(wait.seconds(), 30);
        g.check(30_000_000).unwrap();
    }

    proptest! {
        /// The invariant against a naive count: no window of one minute admits more than the
        /// burst plus what the rate adds over the window.
        #[test]
        fn never_admits_more_than_the_rate(
            n in 1u32..50,
            steps in prop::collection::vec(0i64..3_000_000, 1..400),
        ) {
            let g = limit(n);
            let mut now = 0i64;
            let mut admitted: Vec<i64> = Vec::new();
            for step in steps {
                now += step;
                if g.take(now, 1).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, &start) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|&&t| t < start + MINUTE_US).count();
                prop_assert!(in_window as i64 <= 2 * i64::from(n), "{} in a minute at {}", in_window, n);
            }
        }
    }
}
