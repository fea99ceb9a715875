//! Flood collapsing of the decision log (SPEC §5): identical rejections — same code, same kid
//! (or fingerprint when there is no kid), same source address — beyond `limit` per window are
//! not logged one by one; a summary line with the count follows when the window ends.
//!
//! Fixed windows per key: the first `limit` rejections of a window are logged, the rest only
//! counted. A window's summary is handed out by the next rejection of the same key after the
//! window ended, or by [`FloodGate::sweep`], which a background task runs every second, so a
//! flood that simply stops still gets its summary. State is bounded: at most
//! [`MAX_KEYS`] keys are tracked; past that, new keys share one overflow window per code, so a
//! flood of all-different garbage is collapsed too rather than growing the table.
//!
//! Time is passed in (unix milliseconds): the gate reads no clock, so tests drive it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use keyroll_core::{DecisionCode, Fingerprint, Kid};
use parking_lot::Mutex;

/// Keys tracked at once, over all shards.
pub const MAX_KEYS: usize = 4096;

const SHARDS: usize = 8;

/// What a rejection is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A well-formed key's id.
    Kid(Kid),
    /// The fingerprint of something that is not a well-formed key.
    Fingerprint(Fingerprint),
    /// Nothing presented.
    Nothing,
}

/// What makes two rejections identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FloodKey {
    /// The reason code.
    pub code: DecisionCode,
    /// The kid or fingerprint.
    pub subject: Subject,
    /// The client address.
    pub source: Option<IpAddr>,
}

/// Whether to write a rejection's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it.
    Log,
    /// Count it only.
    Suppress,
}

/// How many lines of one key were left out in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The key; for the overflow window only `code` is meaningful.
    pub key: FloodKey,
    /// Whether this is the shared window of keys beyond [`MAX_KEYS`].
    pub overflow: bool,
    /// Lines left out.
    pub suppressed: u64,
    /// When the window began, unix milliseconds.
    pub window_start_ms: i64,
    /// The last request id left out, to find one of them elsewhere.
    pub last_request_id: Box<str>,
}

#[derive(Debug)]
struct Window {
    start_ms: i64,
    seen: u64,
    suppressed: u64,
    last_request_id: Box<str>,
}

#[derive(Debug, Default)]
struct Shard {
    keys: HashMap<FloodKey, Window>,
    overflow: HashMap<DecisionCode, Window>,
}

/// The flood limiter.
#[derive(Debug)]
pub struct FloodGate {
    limit: u64,
    window_ms: i64,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl FloodGate {
    /// At most `limit` identical rejections logged per `window_ms`. `limit == 0` turns
    /// collapsing off: everything is logged.
    pub fn new(limit: u32, window_ms: i64) -> FloodGate {
        FloodGate {
            limit: u64::from(limit),
            window_ms: window_ms.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The window length in seconds, for the summary line.
    pub fn window_s(&self) -> f64 {
        self.window_ms as f64 / 1000.0
    }

    /// Whether collapsing is on.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Decides for one rejection at `now_ms`. Also returns the summary of this key's previous
    /// window when it ended with lines left out.
    pub fn check(&self, key: FloodKey, request_id: &str, now_ms: i64) -> (Admit, Option<Summary>) {
        if !self.enabled() {
            return (Admit::Log, None);
        }
        let Some(shard) = self
            .shards
            .get((self.hasher.hash_one(key) as usize) % SHARDS)
        else {
            return (Admit::Log, None);
        };
        let mut shard = shard.lock();
        let per_shard = MAX_KEYS / SHARDS;
        let Shard { keys, overflow } = &mut *shard;
        let (window, is_overflow) = if keys.contains_key(&key) || keys.len() < per_shard {
            (keys.entry(key).or_insert_with(|| fresh(now_ms)), false)
        } else {
            (
                overflow.entry(key.code).or_insert_with(|| fresh(now_ms)),
                true,
            )
        };
        let mut ended = None;
        if now_ms >= window.start_ms.saturating_add(self.window_ms) {
            if window.suppressed > 0 {
                ended = Some(Summary {
                    key: if is_overflow {
                        overflow_key(key.code)
                    } else {
                        key
                    },
                    overflow: is_overflow,
                    suppressed: window.suppressed,
                    window_start_ms: window.start_ms,
                    last_request_id: std::mem::take(&mut window.last_request_id),
                });
            }
            *window = fresh(now_ms);
        }
        window.seen += 1;
        let admit = if window.seen <= self.limit {
            Admit::Log
        } else {
            window.suppressed += 1;
            if window.last_request_id.as_ref() != request_id {
                window.last_request_id = request_id.into();
            }
            Admit::Suppress
        };
        (admit, ended)
    }

    /// Forgets every window that ended by `now_ms`, returning the summaries of those that left
    /// lines out. `i64::MAX` ends them all (at shutdown).
    pub fn sweep(&self, now_ms: i64) -> Vec<Summary> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard { keys, overflow } = &mut *shard;
            keys.retain(|key, w| {
                if now_ms < w.start_ms.saturating_add(self.window_ms) {
                    return true;
                }
                if w.suppressed > 0 {
                    out.push(summary(*key, false, w));
                }
                false
            });
            overflow.retain(|code, w| {
                if now_ms < w.start_ms.saturating_add(self.window_ms) {
                    return true;
                }
                if w.suppressed > 0 {
                    out.push(summary(overflow_key(*code), true, w));
                }
                false
            });
        }
        out
    }

    /// Keys tracked now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.keys.len() + s.overflow.len()
            })
            .sum()
    }
}

fn overflow_key(code: DecisionCode) -> FloodKey {
    FloodKey {
        code,
        subject: Subject::Nothing,
        source: None,
    }
}

fn fresh(now_ms: i64) -> Window {
    Window {
        start_ms: now_ms,
        seen: 0,
        suppressed: 0,
        last_request_id: Box::default(),
    }
}

fn summary(key: FloodKey, overflow: bool, w: &mut Window) -> Summary {
    Summary {
        key,
        overflow,
        suppressed: w.suppressed,
        window_start_ms: w.start_ms,
        last_request_id: std::mem::take(&mut w.last_request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> FloodKey {
        FloodKey {
            code: DecisionCode::UnknownKey,
            subject: Subject::Fingerprint(Fingerprint([n; 8])),
            source: Some(IpAddr::from([10, 0, 0, 1])),
        }
    }

    fn run(gate: &FloodGate, k: FloodKey, n: usize, now_ms: i64) -> (usize, Vec<Summary>) {
        let mut logged = 0;
        let mut summaries = Vec::new();
        for i in 0..n {
            let (admit, s) = gate.check(k, &format!("rq_{i}"), now_ms);
            if admit == Admit::Log {
                logged += 1;
            }
            summaries.extend(s);
        }
        (logged, summaries)
    }

    #[test]
    fn logs_the_first_limit_then_summarizes_lazily() {
        let gate = FloodGate::new(10, 10_000);
        let (logged, summaries) = run(&gate, key(1), 100, 1_000);
        assert_eq!(logged, 10);
        assert!(summaries.is_empty());
        // Still inside the window: nothing more is logged.
        assert_eq!(run(&gate, key(1), 5, 10_999).0, 0);
        // The next window: the summary of the last one arrives with its first rejection.
        let (logged, summaries) = run(&gate, key(1), 1, 11_000);
        assert_eq!(logged, 1);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].suppressed, 95);
        assert_eq!(summaries[0].window_start_ms, 1_000);
        assert_eq!(&*summaries[0].last_request_id, "rq_4");
        assert!(!summaries[0].overflow);
    }

    #[test]
    fn a_flood_that_stops_is_summarized_by_the_sweep() {
        let gate = FloodGate::new(10, 10_000);
        run(&gate, key(1), 100, 0);
        run(&gate, key(2), 3, 0);
        assert!(gate.sweep(9_999).is_empty());
        assert_eq!(gate.tracked(), 2);
        let summaries = gate.sweep(10_000);
        assert_eq!(
            summaries.len(),
            1,
            "a key under the limit has nothing to say"
        );
        assert_eq!(summaries[0].key, key(1));
        assert_eq!(summaries[0].suppressed, 90);
        assert_eq!(gate.tracked(), 0, "ended windows are forgotten");
    }

    #[test]
    fn different_keys_are_counted_apart() {
        let gate = FloodGate::new(2, 1_000);
        let mut other_source = key(1);
        other_source.source = Some(IpAddr::from([10, 0, 0, 2]));
        let mut other_code = key(1);
        other_code.code = DecisionCode::InvalidSecret;
        for k in [key(1), other_source, other_code] {
            assert_eq!(run(&gate, k, 5, 0).0, 2);
        }
    }

    #[test]
    fn state_is_bounded_and_overflow_is_collapsed() {
        let gate = FloodGate::new(10, 10_000);
        let mut logged = 0;
        for i in 0..(MAX_KEYS * 4) {
            let mut k = key(0);
            k.subject = Subject::Fingerprint(Fingerprint((i as u64).to_le_bytes()));
            if gate.check(k, "rq", 0).0 == Admit::Log {
                logged += 1;
            }
        }
        assert!(gate.tracked() <= MAX_KEYS + SHARDS, "{}", gate.tracked());
        // Up to MAX_KEYS distinct keys, then `limit` per shard's overflow window.
        assert!(logged <= MAX_KEYS + 10 * SHARDS, "{logged}");
        let summaries = gate.sweep(i64::MAX);
        let overflowed: u64 = summaries
            .iter()
            .filter(|s| s.overflow)
            .map(|s| s.suppressed)
            .sum();
        assert_eq!(overflowed as usize, MAX_KEYS * 4 - logged);
    }

    #[test]
    fn limit_zero_logs_everything() {
        let gate = FloodGate::new(0, 10_000);
        assert_eq!(run(&gate, key(1), 50, 0).0, 50);
        assert_eq!(gate.tracked(), 0);
    }
}
