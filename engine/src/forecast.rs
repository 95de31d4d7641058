//! Burn-rate forecasts: when a budget runs out at the pace it is being spent.
//!
//! A [`Burn`] follows one budget level from samples of its period's spend, taken at a steady
//! interval by the caller: the spend per millisecond between two samples, in a decaying average
//! (each sample weighs `1 / 2^BURN_WEIGHT_SHIFT` against the average before it, so the last
//! few dozen samples count), and from it the instant the budget's room would be gone. All of it
//! is integer arithmetic on a fixed-point rate, so a steady pace gives the exact date.
//!
//! A forecast that the budget runs out before its period ends is worth an alert
//! ([`Burn::alert`]): once per period, once the average rests on [`BURN_SAMPLES_MIN`] samples,
//! and again when the date moves much earlier (by at least [`MOVED_EARLIER_PERCENT`] of the
//! time there was left to the date last told).
//!
//! **Invariant:** no spend gives no date; a budget without a limit, or one already spent, gives
//! none either (there is nothing left to forecast).

use serde::Serialize;

use crate::budget::BudgetSnapshot;
use crate::time::UnixMs;

/// Fractional bits of the fixed-point rate (nanos per millisecond).
const RATE_FRACTION_BITS: u32 = 32;

/// Each sample weighs `1 / 2^BURN_WEIGHT_SHIFT` in the decaying average.
pub const BURN_WEIGHT_SHIFT: u32 = 3;

/// A forecast is told only once its average rests on this many samples in which the level
/// spent: the first of them may have caught its spend mid-way, and it weighs little by then.
pub const BURN_SAMPLES_MIN: u32 = 16;

/// A date told once is told again only when it moves earlier by at least this share of the
/// time there was left to it.
pub const MOVED_EARLIER_PERCENT: i64 = 25;

/// Milliseconds in an hour.
const MS_PER_HOUR: u128 = 3_600_000;

/// One budget level's pace, from samples of its spend.
#[derive(Clone, Debug, Default)]
pub struct Burn {
    /// The last sample: when, the period it was in, and the period's spend then.
    last: Option<(UnixMs, i64, u64)>,
    /// Nanos per millisecond, with [`RATE_FRACTION_BITS`] fractional bits; `None` before two
    /// samples.
    rate: Option<u128>,
    /// Samples in the average in which the level spent.
    samples: u32,
    /// The period and the date of the last alert.
    told: Option<(i64, UnixMs)>,
}

/// What a level's pace says at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Forecast {
    /// The pace, in nanos per hour (rounded down).
    pub nanos_per_hour: u64,
    /// When the room left would be gone at that pace; `None` at no pace.
    pub runs_out_at: Option<UnixMs>,
    /// When the period ends, if it does.
    pub resets_at: Option<UnixMs>,
}

impl Forecast {
    /// How long before its period ends the budget runs out (ms), if it does.
    #[must_use]
    pub fn early_by_ms(&self) -> Option<i64> {
        let (out, reset) = (self.runs_out_at?, self.resets_at?);
        (out < reset).then(|| reset.0 - out.0)
    }
}

impl Burn {
    /// No sample yet.
    #[must_use]
    pub fn new() -> Burn {
        Burn::default()
    }

    /// Takes a sample of the level at `now` and says what its pace forecasts. A sample in a
    /// new period starts the spend over but keeps the pace; one that goes back in time is
    /// ignored.
    pub fn observe(&mut self, now: UnixMs, budget: &BudgetSnapshot) -> Option<Forecast> {
        let spent = budget.spent.0;
        match self.last {
            Some((at, period, before)) if now > at && period == budget.period_index => {
                let elapsed = u128::from(now.0.abs_diff(at.0));
                let added = u128::from(spent.saturating_sub(before));
                let sample = (added << RATE_FRACTION_BITS) / elapsed;
                self.rate = match self.rate {
                    // The average starts at the first sample that spent: before it, the level
                    // was idle, not slow.
                    None if added == 0 => None,
                    None => Some(sample),
                    // Too little left to decay by a unit: spent nothing for long, it is nothing.
                    Some(rate) if added == 0 && rate >> BURN_WEIGHT_SHIFT == 0 => Some(0),
                    Some(rate) => {
                        Some(rate - (rate >> BURN_WEIGHT_SHIFT) + (sample >> BURN_WEIGHT_SHIFT))
                    }
                };
                if added > 0 {
                    self.samples = self.samples.saturating_add(1);
                }
                self.last = Some((now, budget.period_index, spent));
            }
            Some((at, _, _)) if now <= at => {}
            _ => self.last = Some((now, budget.period_index, spent)),
        }
        self.forecast(now, budget)
    }

    /// What the pace so far forecasts for `budget` at `now`; `None` before two samples, or
    /// for a budget with no limit.
    #[must_use]
    pub fn forecast(&self, now: UnixMs, budget: &BudgetSnapshot) -> Option<Forecast> {
        let limit = budget.limit?;
        let rate = self.rate?;
        let left = u128::from(limit.0.saturating_sub(budget.spent.0));
        let runs_out_at = (rate > 0 && left > 0).then(|| {
            let ms = (left << RATE_FRACTION_BITS).div_ceil(rate);
            UnixMs(now.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
        });
        Some(Forecast {
            nanos_per_hour: u64::try_from((rate * MS_PER_HOUR) >> RATE_FRACTION_BITS)
                .unwrap_or(u64::MAX),
            runs_out_at,
            resets_at: budget.resets_at,
        })
    }

    /// Whether `forecast`, made at `now` in `period_index`, is to be told: it runs out before
    /// the period ends, and no alert was told in this period, or the last one's date has moved
    /// earlier by at least [`MOVED_EARLIER_PERCENT`] of the time there was left to it. Telling
    /// it is remembered.
    pub fn alert(&mut self, now: UnixMs, period_index: i64, forecast: &Forecast) -> bool {
        if forecast.early_by_ms().is_none() || self.samples < BURN_SAMPLES_MIN {
            return false;
        }
        let Some(out) = forecast.runs_out_at else {
            return false;
        };
        let tell = match self.told {
            Some((period, told)) if period == period_index => {
                let left = told.0.saturating_sub(now.0).max(0);
                told.0.saturating_sub(out.0) >= left * MOVED_EARLIER_PERCENT / 100 && out < told
            }
            _ => true,
        };
        if tell {
            self.told = Some((period_index, out));
        }
        tell
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use crate::money::Nanos;
    use crate::time::Period;

    const DAY_MS: i64 = 86_400_000;

    /// A monthly budget of `limit` with `spent` in the period holding `at`.
    fn budget(limit: u64, spent: u64, at: UnixMs) -> BudgetSnapshot {
        let index = Period::Month.index(at);
        BudgetSnapshot {
            period: Period::Month,
            period_index: index,
            limit: Some(Nanos(limit)),
            spent: Nanos(spent),
            in_flight: Nanos(0),
            remaining: Some(Nanos(limit.saturating_sub(spent))),
            resets_at: Period::Month.end(index),
        }
    }

    /// 2026-12-01T00:00:00Z.
    const DEC_1: UnixMs = UnixMs(1_796_083_200_000);

    #[test]
    fn a_team_on_pace_to_run_out_early_is_told_once_and_again_only_when_much_earlier() {
        let mut burn = Burn::new();
        let limit = 31 * 1_000 * DAY_MS as u64; // 1,000 nanos a ms lasts the month
        // 2,000 nanos a ms: out on the 16th, 15.5 days early.
        let mut forecast = None;
        for hour in 0..=24 {
            let at = UnixMs(DEC_1.0 + hour * 3_600_000);
            let spent = 2_000 * (at.0 - DEC_1.0) as u64;
            forecast = burn.observe(at, &budget(limit, spent, at));
        }
        let forecast = forecast.unwrap();
        assert_eq!(forecast.nanos_per_hour, 2_000 * 3_600_000);
        assert_eq!(
            forecast.runs_out_at,
            Some(UnixMs(DEC_1.0 + 31 * DAY_MS / 2))
        );
        assert_eq!(forecast.early_by_ms(), Some(31 * DAY_MS / 2));
        let now = UnixMs(DEC_1.0 + DAY_MS);
        let period = Period::Month.index(now);
        assert!(burn.alert(now, period, &forecast));
        assert!(!burn.alert(now, period, &forecast), "told once");
        // A day earlier is not much earlier (under a quarter of the 14.5 days left).
        let sooner = Forecast {
            runs_out_at: Some(UnixMs(forecast.runs_out_at.unwrap().0 - DAY_MS)),
            ..forecast
        };
        assert!(!burn.alert(now, period, &sooner));
        let much_sooner = Forecast {
            runs_out_at: Some(UnixMs(now.0 + 5 * DAY_MS)),
            ..forecast
        };
        assert!(burn.alert(now, period, &much_sooner));
        // A new period: told again.
        assert!(burn.alert(now, period + 1, &much_sooner));
    }

    #[test]
    fn no_spend_no_limit_or_a_budget_spent_gives_no_date() {
        let mut burn = Burn::new();
        for hour in 0..5 {
            let at = UnixMs(DEC_1.0 + hour * 3_600_000);
            let f = burn.observe(at, &budget(1_000, 0, at));
            assert!(f.is_none_or(|f| f.runs_out_at.is_none()), "{f:?}");
        }
        let at = UnixMs(DEC_1.0 + 6 * 3_600_000);
        let mut unlimited = budget(1_000, 500, at);
        unlimited.limit = None;
        assert_eq!(burn.forecast(at, &unlimited), None);
        let mut spending = Burn::new();
        spending.observe(DEC_1, &budget(1_000, 0, DEC_1));
        let f = spending.observe(at, &budget(1_000, 1_000, at)).unwrap();
        assert_eq!(f.runs_out_at, None);
        assert!(!spending.alert(at, 0, &f));
    }

    #[test]
    fn a_burst_then_nothing_is_not_told_and_its_date_fades_out() {
        let mut burn = Burn::new();
        let limit = 100_000_000_000;
        burn.observe(DEC_1, &budget(limit, 0, DEC_1));
        let mut at = UnixMs(DEC_1.0 + 60_000);
        let mut f = burn
            .observe(at, &budget(limit, 20_000_000_000, at))
            .unwrap();
        assert!(f.runs_out_at.is_some());
        for _ in 0..2_000 {
            at = UnixMs(at.0 + 60_000);
            f = burn
                .observe(at, &budget(limit, 20_000_000_000, at))
                .unwrap();
            assert!(
                !burn.alert(at, Period::Month.index(at), &f),
                "one sample spent"
            );
        }
        assert_eq!(f.runs_out_at, None, "no spend for long gives no date");
    }

    proptest::proptest! {
        /// A steady pace of `rate` nanos a ms from the period's start, sampled every
        /// `interval` ms: every forecast gives the exact instant the limit is reached.
        #[test]
        fn a_steady_rate_gives_the_exact_date(
            rate in 1u64..5_000_000,
            limit_ms in 1i64..(30 * DAY_MS),
            interval in 1_000i64..3_600_000,
            samples in 2usize..40,
        ) {
            let limit = rate * limit_ms as u64;
            let mut burn = Burn::new();
            for n in 0..samples {
                let at = UnixMs(DEC_1.0 + n as i64 * interval);
                let spent = (rate * (at.0 - DEC_1.0) as u64).min(limit);
                if spent >= limit {
                    break;
                }
                if let Some(f) = burn.observe(at, &budget(limit, spent, at)) {
                    proptest::prop_assert_eq!(f.runs_out_at, Some(UnixMs(DEC_1.0 + limit_ms)));
                }
            }
        }

        /// Whatever the samples, nothing panics, and no spend between them gives no date.
        #[test]
        fn no_spend_gives_none(
            steps in proptest::collection::vec(0i64..DAY_MS, 1..50),
            spent in 0u64..1_000_000,
        ) {
            let mut burn = Burn::new();
            let mut at = DEC_1;
            for step in steps {
                at = UnixMs(at.0 + step);
                let f = burn.observe(at, &budget(1_000_000, spent, at));
                proptest::prop_assert!(f.is_none_or(|f| f.runs_out_at.is_none()));
            }
        }
    }
}
