//! Latencies in fixed buckets: a connection's (or a `top` row's) `wait`
//! percentiles without keeping its samples.
//!
//! Values are microseconds. Below 16 each value has a bucket of its own;
//! above, every power of two is cut into eight buckets, so a bucket spans
//! an eighth of its lower bound. A percentile is its bucket's midpoint
//! (kept within the smallest and largest value seen), at most 1/16 away
//! from the exact nearest-rank value. The counts take one kilobyte,
//! allocated with the first value.

/// Values below this have a bucket each.
const LINEAR: u64 = 16;
/// log2 of the buckets per power of two above [`LINEAR`].
const SUB_BITS: u32 = 3;
/// The largest power of two with buckets of its own (2^40 us is 12 days);
/// larger values count in its last bucket.
const TOP_POWER: u32 = 40;
const BUCKETS: usize = LINEAR as usize + ((TOP_POWER - 3) << SUB_BITS) as usize;

/// Counts of values in fixed buckets, with the exact extremes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Option<Box<[u32; BUCKETS]>>,
    count: u64,
    min: u64,
    max: u64,
}

/// The bucket of `value`.
fn bucket(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let power = (63 - value.leading_zeros()).min(TOP_POWER);
    if power == TOP_POWER && value >> power > 1 {
        return BUCKETS - 1;
    }
    let sub = (value >> (power - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + (((power - 4) << SUB_BITS) as u64 + sub) as usize
}

/// The midpoint of bucket `index`.
fn midpoint(index: usize) -> u64 {
    if index < LINEAR as usize {
        return index as u64;
    }
    let above = (index - LINEAR as usize) as u64;
    let power = (above >> SUB_BITS) as u32 + 4;
    let sub = above & ((1 << SUB_BITS) - 1);
    let width = 1u64 << (power - SUB_BITS);
    ((1 << SUB_BITS) + sub) * width + width / 2
}

impl Histogram {
    pub fn add(&mut self, value: u64) {
        let counts = self.counts.get_or_insert_with(|| Box::new([0; BUCKETS]));
        let slot = &mut counts[bucket(value)];
        *slot = slot.saturating_add(1);
        self.min = if self.count == 0 {
            value
        } else {
            self.min.min(value)
        };
        self.max = self.max.max(value);
        self.count += 1;
    }

    /// Adds every value of `other` (one `top` row of many connections).
    pub fn merge(&mut self, other: &Self) {
        let Some(theirs) = &other.counts else { return };
        let ours = self.counts.get_or_insert_with(|| Box::new([0; BUCKETS]));
        for (ours, theirs) in ours.iter_mut().zip(theirs.iter()) {
            *ours = ours.saturating_add(*theirs);
        }
        self.min = if self.count == 0 {
            other.min
        } else {
            self.min.min(other.min)
        };
        self.max = self.max.max(other.max);
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The nearest-rank `percent`ile (the value below which `percent` of
    /// the values fall, rounded up to a whole value), none when empty.
    pub fn percentile(&self, percent: u32) -> Option<u64> {
        let counts = self.counts.as_ref().filter(|_| self.count > 0)?;
        let rank = (self.count * u64::from(percent)).div_ceil(100).max(1);
        // The extremes are kept exactly.
        if rank == self.count {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = 0u64;
        for (index, &count) in counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return Some(midpoint(index).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest-rank percentile of sorted values, computed exactly.
    fn exact(sorted: &[u64], percent: u32) -> u64 {
        let rank = (sorted.len() as u64 * u64::from(percent))
            .div_ceil(100)
            .max(1);
        sorted[rank as usize - 1]
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for value in (0..100_000u64).chain([1 << 39, (1 << 40) - 1, 1 << 40, u64::MAX]) {
            let index = bucket(value);
            assert!(index >= last && index < BUCKETS, "{value} -> {index}");
            last = index;
            let mid = midpoint(index);
            assert!(
                mid.abs_diff(value) <= value / 16 || index == BUCKETS - 1,
                "{value} ~ {mid}"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_a_sixteenth_of_the_exact_ones() {
        // A spread of latencies: a fast mode, a slow mode and outliers.
        let mut values: Vec<u64> = (0..1000u64)
            .map(|i| match i % 10 {
                0..=6 => 40 + i % 13,
                7 | 8 => 5_000 + i * 7,
                _ => 80_000 + i * 131,
            })
            .collect();
        let mut histogram = Histogram::default();
        for &value in &values {
            histogram.add(value);
        }
        values.sort_unstable();
        for percent in [1, 50, 90, 99, 100] {
            let want = exact(&values, percent);
            let got = histogram.percentile(percent).unwrap();
            assert!(
                got.abs_diff(want) <= want / 16,
                "p{percent}: {got} vs {want}"
            );
        }
        assert_eq!(histogram.max(), Some(*values.last().unwrap()));
        assert_eq!(histogram.percentile(100), Some(*values.last().unwrap()));
    }

    #[test]
    fn small_values_are_exact() {
        let mut a = Histogram::default();
        assert_eq!((a.percentile(50), a.max()), (None, None));
        for value in [1, 2, 3, 7, 9] {
            a.add(value);
        }
        assert_eq!(a.count(), 5);
        assert_eq!(a.percentile(50), Some(3));
        assert_eq!(a.percentile(90), Some(9));
    }

    #[test]
    fn merging_adds_the_values() {
        let (mut a, mut b, mut both) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for value in [1, 2, 3, 40_000] {
            a.add(value);
            both.add(value);
        }
        for value in [7, 9, 500] {
            b.add(value);
            both.add(value);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        merged.merge(&Histogram::default());
        assert_eq!(merged, both);
        let mut empty = Histogram::default();
        empty.merge(&b);
        assert_eq!(
            (empty.count(), empty.percentile(1), empty.max()),
            (3, Some(7), Some(500))
        );
    }
}
