//! Instants and budget periods in UTC, computed from integers alone.
//!
//! The engine never reads the clock: callers pass `now` as a [`UnixMs`]. Periods are numbered
//! ([`Period::index`]) so that a budget counter can carry its period in the same atomic word as
//! its spend and roll over with a single compare-and-swap. Civil dates use Howard Hinnant's
//! `days_from_civil` algorithm (proleptic Gregorian, UTC), exact for every `i64` day we meet.

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

/// Milliseconds in a UTC day (UTC has no leap seconds in Unix time).
pub const MS_PER_DAY: i64 = 86_400_000;

/// Milliseconds in a minute.
pub const MS_PER_MINUTE: i64 = 60_000;

impl UnixMs {
    /// The instant `ms` milliseconds later, saturating.
    #[must_use]
    pub fn plus_ms(self, ms: i64) -> UnixMs {
        UnixMs(self.0.saturating_add(ms))
    }

    /// The UTC civil date and time of this instant.
    #[must_use]
    pub fn to_civil(self) -> CivilTime {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        CivilTime {
            year,
            month,
            day,
            hour: (ms_of_day / 3_600_000) as u8,
            minute: (ms_of_day / 60_000 % 60) as u8,
            second: (ms_of_day / 1000 % 60) as u8,
            millisecond: (ms_of_day % 1000) as u16,
        }
    }

    /// Builds an instant from a civil UTC date and time; `None` if a field is out of range.
    #[must_use]
    pub fn from_civil(c: CivilTime) -> Option<UnixMs> {
        let days_in_month = days_in_month(c.year, c.month)?;
        if c.day == 0 || c.day > days_in_month || c.hour > 23 || c.minute > 59 || c.second > 59 {
            return None;
        }
        if c.millisecond > 999 {
            return None;
        }
        let days = days_from_civil(c.year, c.month, c.day)?;
        let ms = days
            .checked_mul(MS_PER_DAY)?
            .checked_add(i64::from(c.hour) * 3_600_000)?
            .checked_add(i64::from(c.minute) * 60_000)?
            .checked_add(i64::from(c.second) * 1000)?
            .checked_add(i64::from(c.millisecond))?;
        Some(UnixMs(ms))
    }
}

impl std::fmt::Display for UnixMs {
    /// RFC 3339 in UTC with milliseconds: `2026-11-24T14:02:24.000Z`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.to_civil();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millisecond
        )
    }
}

/// `2026-12-01T00:00:00Z`: whole seconds, UTC (budget periods start on them; the millisecond
/// form is `UnixMs`'s `Display`).
#[must_use]
pub fn format_rfc3339_s(t: UnixMs) -> String {
    let c = t.to_civil();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Parses an RFC 3339 instant with an offset (`2026-01-01T00:00:00Z`, `...+02:00`).
pub fn parse_rfc3339(text: &str) -> Result<UnixMs, String> {
    let dt: toml::value::Datetime = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an RFC 3339 date and time"))?;
    utc_instant(&dt)
}

/// Converts a TOML datetime with a UTC offset into an instant; refuses local times.
pub(crate) fn utc_instant(dt: &toml::value::Datetime) -> Result<UnixMs, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "`{dt}` needs a date, a time and a UTC offset, like 2026-01-01T00:00:00Z"
        ));
    };
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let civil = CivilTime {
        year: i64::from(date.year),
        month: date.month,
        day: date.day,
        hour: time.hour,
        minute: time.minute,
        second: time.second.unwrap_or(0),
        millisecond: (time.nanosecond.unwrap_or(0) / 1_000_000) as u16,
    };
    let local =
        UnixMs::from_civil(civil).ok_or_else(|| format!("`{dt}` is not a valid date and time"))?;
    Ok(local.plus_ms(-offset_minutes * 60_000))
}

/// A UTC calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilTime {
    /// Proleptic Gregorian year.
    pub year: i64,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59.
    pub second: u8,
    /// 0 to 999.
    pub millisecond: u16,
}

/// Whether `year` is a Gregorian leap year.
#[must_use]
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` of `year`, or `None` for a month outside 1..=12.
#[must_use]
pub fn days_in_month(year: i64, month: u8) -> Option<u8> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// Largest absolute year the calendar functions accept; far beyond any timestamp in `i64` ms
/// (about 292 million years), and small enough that no intermediate can overflow.
pub const YEAR_ABS_MAX: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a civil date (Hinnant's `days_from_civil`); `None` for a year
/// beyond [`YEAR_ABS_MAX`].
#[must_use]
pub fn days_from_civil(year: i64, month: u8, day: u8) -> Option<i64> {
    if !(-YEAR_ABS_MAX..=YEAR_ABS_MAX).contains(&year) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The civil date of a day number (Hinnant's `civil_from_days`). Exact for every day an `i64`
/// of milliseconds can name; beyond that it saturates rather than overflow.
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days.clamp(-(1 << 40), 1 << 40) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// How often a budget starts afresh. Boundaries are UTC midnights; weeks start on Monday.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Each UTC day.
    Day,
    /// Each ISO week, Monday 00:00 UTC to the next Monday.
    Week,
    /// Each calendar month in UTC.
    Month,
    /// Never resets.
    Total,
    /// Each UTC minute: the window of a per-minute rate limit's lease, never a budget's
    /// period (the config and the admin API refuse it there).
    Minute,
}

impl Period {
    /// The number of the period holding `t`: days, weeks or months since the epoch; 0 for
    /// [`Period::Total`]. Consecutive periods have consecutive numbers.
    #[must_use]
    pub fn index(self, t: UnixMs) -> i64 {
        let days = t.0.div_euclid(MS_PER_DAY);
        match self {
            Period::Day => days,
            // 1970-01-01 was a Thursday; shifting by three days puts Mondays on boundaries.
            Period::Week => (days + 3).div_euclid(7),
            Period::Month => {
                let (year, month, _) = civil_from_days(days);
                year * 12 + i64::from(month) - 1
            }
            Period::Total => 0,
            Period::Minute => t.0.div_euclid(MS_PER_MINUTE),
        }
    }

    /// First instant of period `index` (inclusive); `None` for [`Period::Total`].
    #[must_use]
    pub fn start(self, index: i64) -> Option<UnixMs> {
        let day = match self {
            Period::Day => index,
            Period::Week => index.checked_mul(7)?.checked_sub(3)?,
            Period::Month => {
                let year = index.div_euclid(12);
                let month = (index.rem_euclid(12) + 1) as u8;
                days_from_civil(year, month, 1)?
            }
            Period::Total => return None,
            Period::Minute => return index.checked_mul(MS_PER_MINUTE).map(UnixMs),
        };
        day.checked_mul(MS_PER_DAY).map(UnixMs)
    }

    /// First instant after period `index` (exclusive end), when the budget resets; `None` for
    /// [`Period::Total`].
    #[must_use]
    pub fn end(self, index: i64) -> Option<UnixMs> {
        self.start(index.checked_add(1)?)
    }

    /// The name used in config and in error bodies.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
            Period::Minute => "minute",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn civil(year: i64, month: u8, day: u8, hour: u8) -> UnixMs {
        UnixMs::from_civil(CivilTime {
            year,
            month,
            day,
            hour,
            minute: 0,
            second: 0,
            millisecond: 0,
        })
        .unwrap()
    }

    /// Naive reference: count days year by year and month by month from 1970.
    fn naive_days(year: i64, month: u8, day: u8) -> i64 {
        let mut days = 0;
        if year >= 1970 {
            for y in 1970..year {
                days += if is_leap_year(y) { 366 } else { 365 };
            }
        } else {
            for y in year..1970 {
                days -= if is_leap_year(y) { 366 } else { 365 };
            }
        }
        for m in 1..month {
            days += i64::from(days_in_month(year, m).unwrap());
        }
        days + i64::from(day) - 1
    }

    #[test]
    fn known_instants() {
        assert_eq!(civil(1970, 1, 1, 0), UnixMs(0));
        assert_eq!(
            civil(2026, 11, 24, 14).to_string(),
            "2026-11-24T14:00:00.000Z"
        );
        assert_eq!(
            UnixMs(1_700_000_000_123).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(UnixMs(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            UnixMs::from_civil(CivilTime {
                year: 2025,
                month: 2,
                day: 29,
                hour: 0,
                minute: 0,
                second: 0,
                millisecond: 0
            }),
            None
        );
    }

    #[test]
    fn extremes_give_none_not_overflow() {
        assert_eq!(days_from_civil(i64::MAX, 1, 1), None);
        assert_eq!(Period::Month.start(i64::MAX), None);
        assert_eq!(Period::Month.end(i64::MAX), None);
        assert_eq!(Period::Day.start(i64::MIN), None);
        assert_eq!(Period::Week.start(i64::MAX / 2), None);
        let _ = UnixMs(i64::MAX).to_string();
        let _ = UnixMs(i64::MIN).to_string();
        for t in [i64::MIN, -1, 0, i64::MAX] {
            for p in [
                Period::Day,
                Period::Week,
                Period::Month,
                Period::Total,
                Period::Minute,
            ] {
                let _ = p.end(p.index(UnixMs(t)));
            }
        }
        let far = CivilTime {
            year: i64::MAX,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millisecond: 0,
        };
        assert_eq!(UnixMs::from_civil(far), None);
    }

    #[test]
    fn rfc3339_needs_an_offset() {
        assert_eq!(
            parse_rfc3339("2026-01-01T02:00:00+02:00"),
            Ok(UnixMs(1_767_225_600_000))
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.250Z"),
            Ok(UnixMs(1_767_225_600_250))
        );
        assert!(parse_rfc3339("2026-01-01T00:00:00").is_err());
        assert!(parse_rfc3339("2026-01-01").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn periods_start_where_the_calendar_says() {
        let t = civil(2024, 2, 29, 13); // a Thursday in a leap February
        assert_eq!(
            Period::Day.start(Period::Day.index(t)),
            Some(civil(2024, 2, 29, 0))
        );
        assert_eq!(
            Period::Day.end(Period::Day.index(t)),
            Some(civil(2024, 3, 1, 0))
        );
        assert_eq!(
            Period::Week.start(Period::Week.index(t)),
            Some(civil(2024, 2, 26, 0))
        );
        assert_eq!(
            Period::Week.end(Period::Week.index(t)),
            Some(civil(2024, 3, 4, 0))
        );
        assert_eq!(
            Period::Month.start(Period::Month.index(t)),
            Some(civil(2024, 2, 1, 0))
        );
        assert_eq!(
            Period::Month.end(Period::Month.index(t)),
            Some(civil(2024, 3, 1, 0))
        );
        assert_eq!(
            Period::Month.end(Period::Month.index(civil(2025, 12, 31, 23))),
            Some(civil(2026, 1, 1, 0))
        );
        assert_eq!(Period::Total.end(Period::Total.index(t)), None);
        let minute = Period::Minute.index(UnixMs(t.0 + 59_999));
        assert_eq!(Period::Minute.start(minute), Some(t));
        assert_eq!(Period::Minute.end(minute), Some(UnixMs(t.0 + 60_000)));
        // The last millisecond of a month is still in it.
        let last = civil(2026, 12, 1, 0).plus_ms(-1);
        assert_eq!(
            Period::Month.index(last) + 1,
            Period::Month.index(civil(2026, 12, 1, 0))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn civil_round_trips_and_matches_naive_count(days in -200_000i64..200_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), Some(days));
            if (1800..2300).contains(&y) {
                prop_assert_eq!(naive_days(y, m, d), days);
            }
        }

        #[test]
        fn every_instant_lies_in_its_period_and_rollover_is_exact(
            ms in -5_000_000_000_000i64..10_000_000_000_000,
            which in 0usize..3,
        ) {
            let period = [Period::Day, Period::Week, Period::Month][which];
            let t = UnixMs(ms);
            let index = period.index(t);
            let start = period.start(index).unwrap();
            let end = period.end(index).unwrap();
            prop_assert!(start <= t && t < end, "{t} not in [{start}, {end})");
            // The boundary belongs to the next period, the millisecond before it to this one.
            prop_assert_eq!(period.index(end), index + 1);
            prop_assert_eq!(period.index(end.plus_ms(-1)), index);
            prop_assert_eq!(period.index(start), index);
            let c = start.to_civil();
            prop_assert_eq!((c.hour, c.minute, c.second, c.millisecond), (0, 0, 0, 0));
            match period {
                Period::Month => prop_assert_eq!(c.day, 1),
                Period::Week => prop_assert_eq!(start.0.div_euclid(MS_PER_DAY).rem_euclid(7), 4), // Monday
                _ => {}
            }
        }
    }
}
