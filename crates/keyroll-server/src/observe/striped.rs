//! Hot-path counters striped per thread: each thread adds to its own cache line, so two cores
//! counting the same decision never hand a line back and forth; a scrape adds the stripes up.
//!
//! Why not the recorder's own handles on the hot path: a `metrics` counter is one shared
//! atomic, and the Prometheus recorder's histogram pushes every sample into one shared lock-free
//! bucket and bumps a shared generation counter. Measured with two threads recording at full
//! speed on the 2-core machine: ≈ 135 ns per decision for a counter plus a histogram sample,
//! against ≈ 10 ns striped. The recorder still renders the counters (they are copied into its
//! handles at scrape); the latency histogram, whose buckets the recorder cannot take
//! pre-aggregated, is rendered here.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter set. More than the cores of any likely host, so threads rarely share.
pub const STRIPES: usize = 16;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, handed out round-robin on first use.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

fn stripe() -> usize {
    STRIPE.with(|s| *s)
}

/// Two cache lines, because x86 prefetches lines in adjacent pairs.
#[repr(align(128))]
struct Padded<const N: usize>([AtomicU64; N]);

/// `N` counters, striped.
pub struct StripedCounts<const N: usize> {
    stripes: Box<[Padded<N>]>,
}

impl<const N: usize> std::fmt::Debug for StripedCounts<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StripedCounts")
            .field(&self.totals())
            .finish()
    }
}

impl<const N: usize> Default for StripedCounts<N> {
    fn default() -> Self {
        StripedCounts::new()
    }
}

impl<const N: usize> StripedCounts<N> {
    /// All zero.
    pub fn new() -> StripedCounts<N> {
        StripedCounts {
            stripes: (0..STRIPES)
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds `n` to counter `i` (ignored when out of range).
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.stripes.get(stripe()).and_then(|s| s.0.get(i)) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sums over all stripes.
    pub fn totals(&self) -> [u64; N] {
        let mut out = [0u64; N];
        for s in self.stripes.iter() {
            for (o, c) in out.iter_mut().zip(s.0.iter()) {
                *o = o.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        out
    }
}

/// Upper bounds of the verification latency buckets, microseconds: a verification is a fraction
/// of a microsecond to a few; the tail (lock waits, a descheduled worker) reaches milliseconds.
pub const VERIFY_BOUNDS_US: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

const SLOTS: usize = VERIFY_BOUNDS_US.len() + 2;
const INF: usize = VERIFY_BOUNDS_US.len();
const SUM: usize = VERIFY_BOUNDS_US.len() + 1;

/// A Prometheus histogram of microsecond latencies with [`VERIFY_BOUNDS_US`] buckets.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (non-cumulative), then `+Inf` overflow, then the sum of microseconds.
    counts: StripedCounts<SLOTS>,
}

impl LatencyHistogram {
    /// Records one latency.
    #[inline]
    pub fn record(&self, us: u64) {
        let bucket = VERIFY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(INF);
        self.counts.add(bucket, 1);
        self.counts.add(SUM, us);
    }

    /// Appends the exposition text (`_bucket` cumulative, `_sum` in seconds, `_count`).
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let totals = self.counts.totals();
        // Writing to a String cannot fail.
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cumulative = 0u64;
        for (bound, n) in VERIFY_BOUNDS_US.iter().zip(totals.iter()) {
            cumulative += n;
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += totals[INF];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", totals[SUM] as f64 / 1e6);
        let _ = write!(out, "{name}_count {cumulative}\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_threads() {
        let c = std::sync::Arc::new(StripedCounts::<3>::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1, 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.add(7, 1);
        assert_eq!(c.totals(), [0, 8000, 0]);
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = LatencyHistogram::default();
        for us in [1, 5, 6, 30, 20_000] {
            h.record(us);
        }
        let mut text = String::new();
        h.render("x_seconds", "help", &mut text);
        assert!(text.starts_with("# HELP x_seconds help\n# TYPE x_seconds histogram\n"));
        assert!(
            text.contains("x_seconds_bucket{le=\"0.000005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"0.00001\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{le=\"0.00005\"} 4\n"));
        assert!(text.contains("x_seconds_bucket{le=\"0.01\"} 4\n"));
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("x_seconds_sum 0.020042\n"));
        assert!(text.contains("x_seconds_count 5\n"));
    }
}
