//! The wall clock, read in one place: budgets, periods and event stamps take `now` from here and
//! hand it to the engine, which never reads a clock itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_engine::UnixMs;

/// Wall-clock now, for budgets, periods and event stamps.
#[must_use]
pub fn now_ms() -> UnixMs {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMs(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A span in whole milliseconds, to add to or compare with a [`UnixMs`] (saturating).
#[must_use]
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
