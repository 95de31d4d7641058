//! What calls really produce: a bounded, decaying sketch of how much each call generated, and
//! a high percentile of it, which admission may hold instead of a call's declared maximum.
//!
//! Agents declare `max_tokens` far above what they use (Claude Code asks 32,000 and most
//! answers are a few hundred tokens), so holding the declared maximum lets a handful of calls
//! fill a budget that could serve hundreds. The gateway records what each finished call
//! generated into an [`OutputSketch`] per key and model, off the request path, and holds a
//! high percentile of it; a call that runs longer extends its hold as it streams (see
//! [`crate::stream`]).
//!
//! The sketch is a log-linear histogram: exact below 4, then four buckets per power of two,
//! so a value is placed within 25 % of itself, and a percentile is read as its bucket's upper
//! bound: never below the true percentile of what was recorded. It holds 124 counts of two
//! bytes whatever it records; every [`DECAY_EVERY`] records every count is halved, so what
//! was recorded long ago weighs less than what was recorded lately. Pure: no clock, no I/O.

/// Values below this have a bucket each.
const EXACT: u64 = 4;
/// Buckets per power of two above [`EXACT`].
const SUB_BUCKETS: u64 = 4;
/// Powers of two covered above [`EXACT`]: values up to 2^32 have a bucket of their own size
/// class; larger ones share the last bucket, read as unbounded.
const OCTAVES: u64 = 30;
/// The sketch's bucket count.
pub const BUCKETS: usize = (EXACT + SUB_BUCKETS * OCTAVES) as usize;
/// Records between two halvings of every count.
pub const DECAY_EVERY: u16 = 256;

/// A decaying histogram of what calls generated. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSketch {
    counts: [u16; BUCKETS],
    /// The sum of `counts`.
    total: u32,
    /// Records since the last halving.
    since_decay: u16,
}

impl Default for OutputSketch {
    fn default() -> Self {
        OutputSketch {
            counts: [0; BUCKETS],
            total: 0,
            since_decay: 0,
        }
    }
}

/// The bucket of `value`.
fn bucket(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let octave = u64::from(63 - value.leading_zeros()); // >= 2
    let sub = (value >> (octave - 2)) & (SUB_BUCKETS - 1);
    let index = EXACT + (octave - 2) * SUB_BUCKETS + sub;
    (index as usize).min(BUCKETS - 1)
}

/// The largest value in bucket `index` (`u64::MAX` for the last one, which also holds every
/// larger value).
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    if index + 1 >= BUCKETS as u64 {
        return u64::MAX;
    }
    let octave = (index - EXACT) / SUB_BUCKETS + 2;
    let sub = (index - EXACT) % SUB_BUCKETS;
    ((SUB_BUCKETS + sub + 1) << (octave - 2)) - 1
}

impl OutputSketch {
    /// Records one call's `value`.
    pub fn record(&mut self, value: u64) {
        if let Some(count) = self.counts.get_mut(bucket(value)) {
            *count = count.saturating_add(1);
            self.total = self.total.saturating_add(1);
        }
        self.since_decay += 1;
        if self.since_decay >= DECAY_EVERY {
            self.since_decay = 0;
            for count in &mut self.counts {
                *count /= 2;
            }
            self.total = self.counts.iter().map(|&c| u32::from(c)).sum();
        }
    }

    /// The weight of what is recorded (each record counts one, halved at every decay).
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.total
    }

    /// The value `percent` of the recorded weight is at or below, read as its bucket's upper
    /// bound; `None` while the weight is under `samples_min` (or zero).
    #[must_use]
    pub fn percentile(&self, percent: u8, samples_min: u32) -> Option<u64> {
        if self.total == 0 || self.total < samples_min {
            return None;
        }
        let percent = u64::from(percent.clamp(1, 100));
        let rank = (u64::from(self.total) * percent).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return Some(upper_bound(index));
            }
        }
        Some(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn buckets_tile_the_values_and_their_bounds_are_within_a_quarter() {
        let mut previous_upper: Option<u64> = None;
        for index in 0..BUCKETS {
            let upper = upper_bound(index);
            assert_eq!(bucket(upper), index, "bucket {index} upper {upper}");
            if let Some(previous) = previous_upper {
                assert_eq!(bucket(previous + 1), index, "no gap before bucket {index}");
            }
            previous_upper = (upper != u64::MAX).then_some(upper);
        }
        for value in [4u64, 5, 100, 1_000, 65_535, 1 << 20, 1 << 31] {
            let upper = upper_bound(bucket(value));
            assert!(
                upper >= value && upper <= value + value / 4,
                "{value} -> {upper}"
            );
        }
        assert_eq!(upper_bound(bucket(u64::MAX)), u64::MAX);
        assert_eq!(bucket(1 << 40), BUCKETS - 1);
    }

    #[test]
    fn a_percentile_needs_enough_samples_then_follows_what_calls_produce() {
        let mut sketch = OutputSketch::default();
        assert_eq!(sketch.percentile(99, 1), None);
        for _ in 0..19 {
            sketch.record(300);
        }
        assert_eq!(sketch.percentile(99, 20), None);
        sketch.record(12_000);
        // 19 of 20 at 300: the 95th percentile is 300's bucket, the 99th the long call's.
        let p95 = sketch.percentile(95, 20).unwrap();
        assert!((300..=375).contains(&p95), "{p95}");
        let p99 = sketch.percentile(99, 20).unwrap();
        assert!((12_000..=15_000).contains(&p99), "{p99}");
    }

    #[test]
    fn old_calls_weigh_less_than_recent_ones() {
        let mut sketch = OutputSketch::default();
        for _ in 0..DECAY_EVERY {
            sketch.record(10_000);
        }
        // Halved once: 128 long calls' weight, then a run of short ones outweighs them.
        assert_eq!(sketch.weight(), u32::from(DECAY_EVERY) / 2);
        for _ in 0..(u32::from(DECAY_EVERY) * 3) {
            sketch.record(100);
        }
        let p90 = sketch.percentile(90, 1).unwrap();
        assert!(p90 < 200, "{p90}");
        // Bounded whatever it records.
        assert!(sketch.weight() <= u32::from(DECAY_EVERY));
    }

    proptest! {
        /// Read before any decay, a percentile is never below the exact percentile of the
        /// values recorded, and within a quarter above it; and it grows with the percent.
        #[test]
        fn percentiles_bound_the_exact_ones_from_above(
            mut values in proptest::collection::vec(0u64..5_000_000, 1..(DECAY_EVERY as usize)),
            percent in 1u8..=100,
        ) {
            let mut sketch = OutputSketch::default();
            for &v in &values {
                sketch.record(v);
            }
            values.sort_unstable();
            let rank = (values.len() as u64 * u64::from(percent)).div_ceil(100).max(1);
            let exact = values[rank as usize - 1];
            let read = sketch.percentile(percent, 1).unwrap();
            prop_assert!(read >= exact, "p{percent}: {read} below {exact}");
            prop_assert!(read <= exact + exact / 4 + 1, "p{percent}: {read} far above {exact}");
            if percent < 100 {
                prop_assert!(sketch.percentile(percent + 1, 1).unwrap() >= read);
            }
        }
    }
}
