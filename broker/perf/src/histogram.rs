//! A log-linear histogram of durations: 32 steps per power of two (at most ~3% error), fixed
//! size, so recording a million latencies costs no allocation.

use std::time::Duration;

const SUB: u32 = 5;
const BUCKETS: usize = 32 + (64 - SUB as usize) * 32;

/// Counts of nanosecond values.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < 32 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let mantissa = (v >> (e - SUB)) as usize - 32;
    32 + (e - SUB) as usize * 32 + mantissa
}

fn value(i: usize) -> u64 {
    if i < 32 {
        return i as u64;
    }
    let (e, mantissa) = ((i - 32) / 32, (i - 32) % 32);
    (32 + mantissa as u64) << e
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(ns)] += 1;
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0.0..=1.0), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(value(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0)] {
            let got = h.quantile(q).map(|d| d.as_secs_f64() * 1e6).unwrap_or_default();
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert!(Histogram::default().quantile(0.5).is_none());
        for v in [0, 1, 31, 32, 33, 1000, 1 << 40, u64::MAX] {
            let back = value(index(v));
            assert!(back <= v && (v - back) as f64 <= v as f64 / 32.0 + 1.0, "{v} -> {back}");
        }
    }
}
