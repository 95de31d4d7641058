//! Spend guardrails: the runaway-loop detector's window of a key's recent calls and the
//! spend-velocity window of a key, an agent or an allocation.
//!
//! Both are fixed-size values with no allocation, judged and updated by the request path under
//! a short lock of its own (one per key or scope, so a fleet's agents never wait on each
//! other). A call is judged before it is recorded: a call the guard refuses is not recorded,
//! so a throttled loop is let through again as its repeats leave the window, and a throttled
//! scope as its spend does.
//!
//! What a call is known by is a [`CallPrint`]: keyed hashes the gateway makes of the model and
//! the last messages (the fingerprint) and of the last answer the client sent back, with the
//! context's size. The text itself never reaches the engine.

use serde::{Deserialize, Serialize};

use crate::money::Nanos;

/// Calls of one key the loop window remembers: a loop whose repeats are further apart than
/// this many other calls is not seen. It bounds `[guards.loop] repeats` and the window's
/// memory (32 × 16 bytes per key).
pub const LOOP_WINDOW_CALLS: usize = 32;

/// Seconds the velocity window sums: a minute, and the second in progress (so what it sums
/// always covers the last 60 s whole, never less).
pub const VELOCITY_WINDOW_SECONDS: usize = 61;

/// What a guard does when it trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let the call through and raise an alert.
    Alert,
    /// Refuse the call (429 with `Retry-After`) until the window lets it through.
    Throttle,
    /// Refuse the call and every later one of what tripped (the key, agent or allocation)
    /// until an operator clears it.
    Block,
}

impl Action {
    /// As configs, alerts and the admin API write it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Throttle => "throttle",
            Action::Block => "block",
        }
    }
}

/// Which guard tripped: the error type a refused call gets and the kind of its alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// The runaway-loop detector.
    LoopDetected,
    /// The spend-velocity ceiling.
    SpendVelocityExceeded,
}

impl Guard {
    /// As error types, alerts and the admin API write it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Guard::LoopDetected => "loop_detected",
            Guard::SpendVelocityExceeded => "spend_velocity_exceeded",
        }
    }
}

/// When a key's calls are a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopRule {
    /// The same fingerprint this many times (2 to [`LOOP_WINDOW_CALLS`]) within `window_ms`.
    pub repeats: u32,
    /// The window, in milliseconds (at least 1).
    pub window_ms: i64,
    /// This many calls in a row (each within `window_ms` of the one before) whose context
    /// grew while the answer they carry back stayed the same; 0 turns the rule off.
    pub growing_calls: u32,
}

/// What the loop detector knows of a call: hashes and a size, never text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallPrint {
    /// The model and the last messages (with any tool results among them).
    pub fingerprint: u64,
    /// The last answer of the model the call carries back (the latest assistant message).
    pub answer: Option<u64>,
    /// The size of the context the call sends, in bytes.
    pub context_bytes: u64,
}

/// Why a call is part of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Looping {
    /// Its fingerprint was seen `calls - 1` times in the window; this call makes `calls`.
    Repeated {
        /// The repeats counting this call.
        calls: u32,
        /// Until a call with this fingerprint would be let through: when the oldest repeat
        /// leaves the window.
        retry_after_ms: i64,
    },
    /// It carries back the same answer as the calls before it, with more context each time.
    Growing {
        /// The calls in the run, counting this one.
        calls: u32,
        /// Until the run would have lapsed (`window_ms` after the latest call of it).
        retry_after_ms: i64,
    },
}

impl Looping {
    /// Milliseconds until the call would be let through under `throttle`, at least 1.
    #[must_use]
    pub fn retry_after_ms(self) -> i64 {
        match self {
            Looping::Repeated { retry_after_ms, .. } | Looping::Growing { retry_after_ms, .. } => {
                retry_after_ms.max(1)
            }
        }
    }

    /// The calls that made the loop, counting the one judged.
    #[must_use]
    pub fn calls(self) -> u32 {
        match self {
            Looping::Repeated { calls, .. } | Looping::Growing { calls, .. } => calls,
        }
    }
}

/// One key's recent calls: a ring of the last [`LOOP_WINDOW_CALLS`] fingerprints with their
/// times, and the run of growing calls that carry back one answer.
#[derive(Clone, Debug)]
pub struct LoopWindow {
    seen: [(u64, i64); LOOP_WINDOW_CALLS],
    len: usize,
    next: usize,
    /// The latest call's answer, context size and time, and the growing run it ends.
    last: Option<(Option<u64>, u64, i64)>,
    run: u32,
}

impl Default for LoopWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl LoopWindow {
    /// A window that has seen nothing.
    #[must_use]
    pub const fn new() -> LoopWindow {
        LoopWindow {
            seen: [(0, 0); LOOP_WINDOW_CALLS],
            len: 0,
            next: 0,
            last: None,
            run: 0,
        }
    }

    /// Whether `call`, made at `now_ms`, is part of a loop under `rule`. Changes nothing.
    #[must_use]
    pub fn judge(&self, rule: &LoopRule, call: CallPrint, now_ms: i64) -> Option<Looping> {
        let since = now_ms.saturating_sub(rule.window_ms);
        let mut repeats = 0u32;
        let mut oldest = i64::MAX;
        for &(fingerprint, at) in &self.seen[..self.len] {
            if fingerprint == call.fingerprint && at > since {
                repeats += 1;
                oldest = oldest.min(at);
            }
        }
        if repeats + 1 >= rule.repeats {
            return Some(Looping::Repeated {
                calls: repeats + 1,
                retry_after_ms: oldest.saturating_add(rule.window_ms) - now_ms,
            });
        }
        let run = self.run_with(rule, call, now_ms);
        (rule.growing_calls > 0 && run >= rule.growing_calls).then_some(Looping::Growing {
            calls: run,
            retry_after_ms: rule.window_ms,
        })
    }

    /// Remembers `call`, made at `now_ms`, forgetting the oldest call past the ring's size.
    pub fn record(&mut self, rule: &LoopRule, call: CallPrint, now_ms: i64) {
        self.run = self.run_with(rule, call, now_ms);
        self.last = Some((call.answer, call.context_bytes, now_ms));
        self.seen[self.next] = (call.fingerprint, now_ms);
        self.next = (self.next + 1) % LOOP_WINDOW_CALLS;
        self.len = (self.len + 1).min(LOOP_WINDOW_CALLS);
    }

    /// The growing run `call` would make: one more than the run before when it carries back
    /// the latest call's answer with more context, soon enough; else 1 (0 with no answer).
    fn run_with(&self, rule: &LoopRule, call: CallPrint, now_ms: i64) -> u32 {
        let Some(answer) = call.answer else {
            return 0;
        };
        match self.last {
            Some((Some(last), bytes, at))
                if last == answer
                    && call.context_bytes > bytes
                    && now_ms.saturating_sub(at) <= rule.window_ms =>
            {
                self.run.max(1).saturating_add(1)
            }
            _ => 1,
        }
    }
}

/// A velocity ceiling tripped: what the window holds and when it will hold less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speeding {
    /// Spend in the window (the last minute and the second in progress).
    pub spent: Nanos,
    /// Until enough of that spend has left the window for the spend to be under the ceiling.
    pub retry_after_ms: i64,
}

/// Spend of one key, agent or allocation per second over the last minute: a ring of
/// [`VELOCITY_WINDOW_SECONDS`] one-second buckets, each stamped with its second.
#[derive(Clone, Debug)]
pub struct SpendWindow {
    buckets: [(i64, u64); VELOCITY_WINDOW_SECONDS],
}

impl Default for SpendWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl SpendWindow {
    /// A window with no spend.
    #[must_use]
    pub const fn new() -> SpendWindow {
        SpendWindow {
            buckets: [(i64::MIN, 0); VELOCITY_WINDOW_SECONDS],
        }
    }

    /// Adds spend settled at `now_ms`.
    pub fn add(&mut self, now_ms: i64, cost: Nanos) {
        let second = now_ms.div_euclid(1_000);
        let bucket = &mut self.buckets[slot(second)];
        if bucket.0 == second {
            bucket.1 = bucket.1.saturating_add(cost.0);
        } else {
            *bucket = (second, cost.0);
        }
    }

    /// Spend settled in the last 60 seconds and the second in progress.
    #[must_use]
    pub fn spent(&self, now_ms: i64) -> Nanos {
        let second = now_ms.div_euclid(1_000);
        Nanos(
            self.buckets
                .iter()
                .filter(|(s, _)| in_window(*s, second))
                .fold(0u64, |sum, (_, nanos)| sum.saturating_add(*nanos)),
        )
    }

    /// Whether the window's spend at `now_ms` is under `ceiling`; when it is not, the spend and
    /// how long until enough of it has left the window.
    pub fn judge(&self, ceiling: Nanos, now_ms: i64) -> Result<(), Speeding> {
        let spent = self.spent(now_ms);
        if spent < ceiling {
            return Ok(());
        }
        let second = now_ms.div_euclid(1_000);
        let mut left = spent.0;
        let window = i64::try_from(VELOCITY_WINDOW_SECONDS).unwrap_or(i64::MAX);
        // Oldest second first: each bucket leaves the window a minute after its second ends.
        for s in second - (window - 1)..=second {
            let bucket = self.buckets[slot(s)];
            if bucket.0 == s {
                left = left.saturating_sub(bucket.1);
            }
            if left < ceiling.0 {
                return Err(Speeding {
                    spent,
                    retry_after_ms: ((s + window) * 1_000 - now_ms).max(1),
                });
            }
        }
        Err(Speeding {
            spent,
            retry_after_ms: window * 1_000,
        })
    }
}

fn slot(second: i64) -> usize {
    let window = i64::try_from(VELOCITY_WINDOW_SECONDS).unwrap_or(i64::MAX);
    usize::try_from(second.rem_euclid(window)).unwrap_or(0)
}

fn in_window(bucket: i64, second: i64) -> bool {
    let window = i64::try_from(VELOCITY_WINDOW_SECONDS).unwrap_or(i64::MAX);
    bucket > second - window && bucket <= second
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RULE: LoopRule = LoopRule {
        repeats: 3,
        window_ms: 10_000,
        growing_calls: 4,
    };

    fn print(fingerprint: u64, answer: Option<u64>, context_bytes: u64) -> CallPrint {
        CallPrint {
            fingerprint,
            answer,
            context_bytes,
        }
    }

    /// Feeds `calls` (fingerprint, answer, context bytes, time) to a window under `rule`,
    /// recording the calls it lets through as `throttle` does, and returns each verdict.
    fn check(rule: LoopRule, calls: &[(u64, Option<u64>, u64, i64)]) -> Vec<Option<Looping>> {
        let mut window = LoopWindow::new();
        calls
            .iter()
            .map(|&(fingerprint, answer, bytes, at)| {
                let call = print(fingerprint, answer, bytes);
                let verdict = window.judge(&rule, call, at);
                if verdict.is_none() {
                    window.record(&rule, call, at);
                }
                verdict
            })
            .collect()
    }

    #[test]
    fn the_same_call_repeated_within_the_window_is_a_loop_and_lets_through_as_repeats_leave() {
        let verdicts = check(
            RULE,
            &[
                (7, None, 100, 0),
                (7, None, 100, 1_000),
                (7, None, 100, 2_000),
                (7, None, 100, 9_999),
                // The call at 0 has left the window: room for one more.
                (7, None, 100, 10_000),
                (7, None, 100, 10_500),
            ],
        );
        assert_eq!(
            verdicts,
            vec![
                None,
                None,
                Some(Looping::Repeated {
                    calls: 3,
                    retry_after_ms: 8_000
                }),
                Some(Looping::Repeated {
                    calls: 3,
                    retry_after_ms: 1
                }),
                None,
                Some(Looping::Repeated {
                    calls: 3,
                    retry_after_ms: 500
                }),
            ]
        );
    }

    #[test]
    fn different_calls_and_slow_repeats_are_no_loop() {
        let calls: Vec<_> = (0..100)
            .map(|n| (n % 5, None, 100, i64::try_from(n).unwrap_or(0) * 3_000))
            .collect();
        // Each fingerprint comes back every 15 s, past the 10 s window.
        assert!(check(RULE, &calls).iter().all(Option::is_none));
        let distinct: Vec<_> = (0..100).map(|n| (n, None, 100, 0)).collect();
        assert!(check(RULE, &distinct).iter().all(Option::is_none));
    }

    #[test]
    fn a_growing_context_carrying_back_one_answer_is_a_loop() {
        let verdicts = check(
            RULE,
            &[
                (1, Some(9), 100, 0),
                (2, Some(9), 200, 1_000),
                (3, Some(9), 300, 2_000),
                (4, Some(9), 400, 3_000),
                // A new answer ends the run.
                (5, Some(8), 500, 4_000),
                (6, Some(8), 600, 5_000),
            ],
        );
        assert_eq!(
            verdicts,
            vec![
                None,
                None,
                None,
                Some(Looping::Growing {
                    calls: 4,
                    retry_after_ms: 10_000
                }),
                None,
                None,
            ]
        );
        // A context that does not grow, or calls too far apart, make no run.
        let flat: Vec<_> = (0..10).map(|n| (n, Some(9), 100, 0)).collect();
        assert!(check(RULE, &flat).iter().all(Option::is_none));
        let slow: Vec<_> = (0..10)
            .map(|n| {
                (
                    n,
                    Some(9),
                    n * 100 + 100,
                    i64::try_from(n).unwrap_or(0) * 11_000,
                )
            })
            .collect();
        assert!(check(RULE, &slow).iter().all(Option::is_none));
        let off = LoopRule {
            growing_calls: 0,
            ..RULE
        };
        let growing: Vec<_> = (0..10).map(|n| (n, Some(9), n * 100 + 100, 0)).collect();
        assert!(check(off, &growing).iter().all(Option::is_none));
    }

    #[test]
    fn velocity_refuses_at_the_ceiling_until_the_spend_leaves_the_minute() {
        let mut window = SpendWindow::new();
        let ceiling = Nanos(1_000);
        window.add(500, Nanos(400));
        window.add(30_200, Nanos(400));
        assert_eq!(window.judge(ceiling, 30_300), Ok(()));
        window.add(45_000, Nanos(300));
        assert_eq!(
            window.judge(ceiling, 45_000),
            Err(Speeding {
                spent: Nanos(1_100),
                // The spend of second 0 leaves when second 61 starts.
                retry_after_ms: 16_000,
            })
        );
        assert_eq!(window.spent(60_999), Nanos(1_100));
        assert_eq!(window.spent(61_000), Nanos(700));
        assert_eq!(window.judge(ceiling, 61_000), Ok(()));
        assert_eq!(window.spent(200_000), Nanos(0));
    }

    proptest! {
        /// The window never sums less than the spend of the last 60 s, nor more than the spend
        /// of the last 61: a ceiling it enforces holds over every minute.
        #[test]
        fn velocity_window_covers_the_last_minute(
            spends in prop::collection::vec((0i64..300_000, 1u64..1_000_000), 1..200),
            at in 0i64..400_000,
        ) {
            let mut spends = spends;
            spends.sort_unstable();
            let mut window = SpendWindow::new();
            for &(t, nanos) in spends.iter().filter(|(t, _)| *t <= at) {
                window.add(t, Nanos(nanos));
            }
            let sum = |from: i64| spends
                .iter()
                .filter(|(t, _)| *t > from && *t <= at)
                .map(|(_, n)| n)
                .sum::<u64>();
            let spent = window.spent(at).0;
            prop_assert!(spent >= sum(at - 60_000));
            prop_assert!(spent <= sum(at - 61_000));
            if let Err(speeding) = window.judge(Nanos(spent.max(1)), at) {
                let later = window.spent(at + speeding.retry_after_ms).0;
                prop_assert!(later < spent.max(1), "{later} at +{} ms", speeding.retry_after_ms);
            }
        }
    }
}
