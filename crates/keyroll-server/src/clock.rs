//! The server's time and randomness, injected: every reading of the wall clock and every random
//! byte the server uses come from the [`Clock`] and the [`Randomness`] in `AppState`.
//!
//! In production both are the operating system's; tests build a state with a [`Clock::manual`]
//! they set and advance, so the sweeper, the scheduler and every change can be driven at a chosen
//! instant without sleeping, and with a failing randomness source to see what a key-issuing
//! request answers then. clippy's `disallowed_methods` (clippy.toml) keeps
//! `SystemTime::now`, `OffsetDateTime::now_utc` and `getrandom::fill` out of every other module.
//! `Instant` (monotonic, for latencies and timeouts) is not a wall clock and stays allowed.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use keyroll_core::{Entropy, EntropyUnavailable, Timestamp};

/// The wall clock the server reads: the system's, or one a test sets.
#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. A branch on the hot path rather than a virtual call.
    manual: Option<Arc<AtomicI64>>,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(at) => write!(f, "Clock::Manual({})", at.load(Ordering::Relaxed)),
        }
    }
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `at` until [`Clock::set`] or [`Clock::advance`] moves it. Clones
    /// share the same time.
    pub fn manual(at: Timestamp) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(at.unix_millis()))),
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            None => system_now(),
            Some(at) => Timestamp::from_unix_millis(at.load(Ordering::Acquire)),
        }
    }

    /// Moves a manual clock to `at` (a system clock is not moved).
    pub fn set(&self, at: Timestamp) {
        if let Some(m) = &self.manual {
            m.store(at.unix_millis(), Ordering::Release);
        }
    }

    /// Moves a manual clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.set(self.now().saturating_add(d));
    }
}

/// The system wall clock: the one place it is read. Also for what has no state at hand (the
/// timestamp of a log line, which is always real time).
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> Timestamp {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    Timestamp::from_unix_millis(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX))
}

/// Where the server's random bytes come from (keys, admin tokens, nonces, ids).
pub trait RandomSource: Send + Sync {
    /// Fills `dest`, or says the source failed.
    fn fill(&self, dest: &mut [u8]) -> Result<(), EntropyUnavailable>;
}

/// The operating system's CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    #[allow(clippy::disallowed_methods)]
    fn fill(&self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        getrandom::fill(dest).map_err(|e| EntropyUnavailable(e.to_string()))
    }
}

/// The server's randomness: shared, cheap to clone.
#[derive(Clone)]
pub struct Randomness(Arc<dyn RandomSource>);

impl fmt::Debug for Randomness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Randomness")
    }
}

impl Default for Randomness {
    fn default() -> Self {
        Randomness::os()
    }
}

impl Randomness {
    /// The operating system's CSPRNG.
    pub fn os() -> Randomness {
        Randomness(Arc::new(OsRandom))
    }

    /// Any source (tests: one that fails, to see what a request answers without entropy).
    pub fn from_source(source: impl RandomSource + 'static) -> Randomness {
        Randomness(Arc::new(source))
    }

    /// Fills `dest` with random bytes.
    pub fn fill(&self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        self.0.fill(dest)
    }

    /// The core's view of this source (`issue_key`, token generation take `&mut impl Entropy`).
    pub fn entropy(&self) -> impl Entropy + '_ {
        CoreEntropy(self)
    }
}

struct CoreEntropy<'a>(&'a Randomness);

impl Entropy for CoreEntropy<'_> {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        self.0.fill(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual(Timestamp::from_unix_millis(1_000));
        let shared = c.clone();
        assert_eq!(c.now().unix_millis(), 1_000);
        c.advance(Duration::from_secs(2));
        assert_eq!(shared.now().unix_millis(), 3_000);
        shared.set(Timestamp::from_unix_millis(10));
        assert_eq!(c.now().unix_millis(), 10);
    }

    #[test]
    fn the_system_clock_is_not_moved_by_set() {
        let c = Clock::system();
        c.set(Timestamp::EPOCH);
        assert!(c.now().unix_millis() > 1_700_000_000_000);
    }

    #[test]
    fn randomness_fills_and_a_failing_source_says_so() {
        let mut a = [0u8; 32];
        Randomness::os().fill(&mut a).unwrap();
        assert_ne!(a, [0u8; 32]);
        struct Broken;
        impl RandomSource for Broken {
            fn fill(&self, _: &mut [u8]) -> Result<(), EntropyUnavailable> {
                Err(EntropyUnavailable("test source".into()))
            }
        }
        let r = Randomness::from_source(Broken);
        assert!(r.fill(&mut a).is_err());
        let env = keyroll_core::Environment::parse("prod").unwrap();
        assert!(keyroll_core::issue_key(&env, &mut r.entropy()).is_err());
    }
}
