//! A circuit breaker per deployment: closed, open after `failures` failures in a row within
//! `window_us`, half-open after `cooldown_us`, when one probe at a time is let through; the
//! probe's success closes it, its failure opens it for another cooldown.
//!
//! Three atomic words, no lock. Under races the count of a streak may be off by the calls in
//! flight, which only moves the moment it opens by as many; a probe whose result never comes
//! (its caller went away) frees the slot after a cooldown.

use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// When a breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open it.
    pub failures: u32,
    /// A streak older than this starts again from one.
    pub window_us: i64,
    /// How long it stays open before a probe.
    pub cooldown_us: i64,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures: 5,
            window_us: 30_000_000,
            cooldown_us: 10_000_000,
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// No call passes until the cooldown ends.
    Open,
    /// The cooldown ended: one probe may pass.
    HalfOpen,
}

impl BreakerState {
    /// The name in metrics and listings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go to the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The breaker is closed.
    Yes,
    /// The breaker is half-open and this call is its probe: its result closes or reopens it.
    Probe,
    /// Open, or half-open with a probe already out.
    No,
}

/// One deployment's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// Failures in the current streak.
    streak: AtomicU64,
    /// When the streak's first failure was.
    streak_from_us: AtomicI64,
    /// `i64::MIN` while closed; else when the cooldown ends (or ended).
    open_until_us: AtomicI64,
    /// When the probe out now was let through; `i64::MIN` when none is.
    probe_at_us: AtomicI64,
    /// Times it opened.
    opened: AtomicU64,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            streak: AtomicU64::new(0),
            streak_from_us: AtomicI64::new(i64::MIN),
            open_until_us: AtomicI64::new(i64::MIN),
            probe_at_us: AtomicI64::new(i64::MIN),
            opened: AtomicU64::new(0),
        }
    }

    /// Where it stands at `now_us`.
    #[must_use]
    pub fn state(&self, now_us: i64) -> BreakerState {
        let until = self.open_until_us.load(Ordering::Acquire);
        if until == i64::MIN {
            BreakerState::Closed
        } else if now_us < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// Times it has opened since the process started.
    #[must_use]
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Asks to send a call at `now_us`; a [`Pass::Probe`] must be followed by
    /// [`Breaker::succeeded`] or [`Breaker::failed`].
    pub fn pass(&self, now_us: i64) -> Pass {
        match self.state(now_us) {
            BreakerState::Closed => Pass::Yes,
            BreakerState::Open => Pass::No,
            BreakerState::HalfOpen => {
                let out = self.probe_at_us.load(Ordering::Acquire);
                // A probe lost without a result frees its slot after a cooldown.
                let free = out == i64::MIN || now_us.saturating_sub(out) >= self.config.cooldown_us;
                if free
                    && self
                        .probe_at_us
                        .compare_exchange(out, now_us, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Pass::Probe
                } else {
                    Pass::No
                }
            }
        }
    }

    /// A call on the deployment succeeded: the streak ends and a half-open breaker closes.
    pub fn succeeded(&self) {
        // The common case writes nothing, so healthy calls do not contend on the line.
        if self.streak.load(Ordering::Relaxed) == 0
            && self.open_until_us.load(Ordering::Acquire) == i64::MIN
        {
            return;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.probe_at_us.store(i64::MIN, Ordering::Release);
        self.open_until_us.store(i64::MIN, Ordering::Release);
    }

    /// A call on the deployment failed at `now_us` (no connection, no head in time, a 5xx):
    /// the streak grows, and the breaker opens at `failures` in a row, or again at once when
    /// the failure was a half-open breaker's probe.
    pub fn failed(&self, now_us: i64) {
        let state = self.state(now_us);
        if state == BreakerState::HalfOpen {
            self.open(now_us);
            return;
        }
        let from = self.streak_from_us.load(Ordering::Relaxed);
        let streak = if from == i64::MIN || now_us.saturating_sub(from) > self.config.window_us {
            self.streak_from_us.store(now_us, Ordering::Relaxed);
            self.streak.store(1, Ordering::Relaxed);
            1
        } else {
            self.streak.fetch_add(1, Ordering::Relaxed) + 1
        };
        if state == BreakerState::Closed && streak >= u64::from(self.config.failures.max(1)) {
            self.open(now_us);
        }
    }

    fn open(&self, now_us: i64) {
        self.open_until_us.store(
            now_us.saturating_add(self.config.cooldown_us),
            Ordering::Release,
        );
        self.probe_at_us.store(i64::MIN, Ordering::Release);
        self.streak.store(0, Ordering::Relaxed);
        self.streak_from_us.store(i64::MIN, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failures: 3,
        window_us: 1_000,
        cooldown_us: 500,
    };

    #[test]
    fn opens_after_failures_in_a_row_and_probes_once_after_the_cooldown() {
        let breaker = Breaker::new(CONFIG);
        breaker.failed(10);
        breaker.failed(20);
        assert_eq!(breaker.pass(30), Pass::Yes);
        breaker.failed(30);
        assert_eq!(breaker.state(30), BreakerState::Open);
        assert_eq!(breaker.pass(529), Pass::No);
        assert_eq!(breaker.state(530), BreakerState::HalfOpen);
        assert_eq!(breaker.pass(530), Pass::Probe);
        assert_eq!(breaker.pass(531), Pass::No, "one probe at a time");
        // The probe fails: open for another cooldown.
        breaker.failed(540);
        assert_eq!(breaker.pass(1_039), Pass::No);
        assert_eq!(breaker.pass(1_040), Pass::Probe);
        breaker.succeeded();
        assert_eq!(breaker.state(1_041), BreakerState::Closed);
        assert_eq!(breaker.opened(), 2);
    }

    #[test]
    fn a_success_or_a_stale_streak_starts_the_count_again() {
        let breaker = Breaker::new(CONFIG);
        breaker.failed(0);
        breaker.failed(1);
        breaker.succeeded();
        breaker.failed(2);
        breaker.failed(3);
        assert_eq!(breaker.state(3), BreakerState::Closed);
        // Two failures, then one long after: a new streak of one.
        breaker.failed(2_000);
        breaker.failed(2_001);
        assert_eq!(breaker.state(2_001), BreakerState::Closed);
        breaker.failed(2_002);
        assert_eq!(breaker.state(2_002), BreakerState::Open);
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_a_cooldown() {
        let breaker = Breaker::new(CONFIG);
        for t in 0..3 {
            breaker.failed(t);
        }
        assert_eq!(breaker.pass(600), Pass::Probe);
        assert_eq!(breaker.pass(1_099), Pass::No);
        assert_eq!(breaker.pass(1_100), Pass::Probe);
    }
}
