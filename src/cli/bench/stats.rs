//! Latency recording for `tandem bench`: an HDR histogram in microseconds, one per thread,
//! merged at the end, summarized in milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (an hour); longer ones are recorded as this.
const HIGHEST_US: u64 = 3_600_000_000;

/// Latencies in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("constant, valid histogram bounds");
        Self { histogram }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
    }

    /// Records a value given in milliseconds (as the service reports them).
    pub fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.histogram.saturating_record(((ms * 1e3).round() as u64).max(1));
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides; a value past them would have been saturated on record.
        if self.histogram.add(&other.histogram).is_err() {
            for value in other.histogram.iter_recorded() {
                self.histogram.saturating_record_n(value.value_iterated_to(), value.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| round3(us as f64 / 1e3);
        Some(Summary {
            count: self.histogram.len(),
            p50_ms: ms(self.histogram.value_at_quantile(0.50)),
            p90_ms: ms(self.histogram.value_at_quantile(0.90)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            max_ms: ms(self.histogram.max()),
            mean_ms: round3(self.histogram.mean() / 1e3),
        })
    }
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Three decimals: microsecond resolution in milliseconds, without float noise in the JSON.
pub fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

/// `{:.2}` of an optional value, or `-`.
pub fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        let s = a.summary().expect("values recorded");
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.mean_ms - 50.5).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn empty_has_no_summary_and_huge_values_saturate() {
        let mut l = Latency::new();
        assert!(l.summary().is_none());
        l.record(Duration::from_secs(10 * 3600));
        l.record_ms(f64::NAN);
        assert_eq!(l.count(), 1);
    }
}
