//! The agent's decisions as pure functions of what the server said and a random draw: what to
//! do after a poll, how long to back off, when `keyroll run` restarts its child. The loops in
//! `worker.rs` and `run.rs` only carry them out, so they are tested here without a server.

use std::time::Duration;

use keyroll_proto::SelfState;

/// What the agent does after reading its consumer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fetch version `n` with `POST /v1/self/handover` (someone else rotated, or this agent
    /// before a crash).
    Handover(u32),
    /// Rotate now with `POST /v1/self/rotate`, expecting `expect_active` to be the active version.
    Rotate {
        /// The active version the server reported.
        expect_active: u32,
        /// `due`, `requested` or `superseded`.
        reason: String,
    },
    /// Nothing to do: wait for the next change.
    Wait,
}

/// What to do with the consumer's state `s` (as the server answered for the key held). A
/// handover comes first: a newer key exists, and rotating again would only orphan it.
pub fn next_step(s: &SelfState) -> Step {
    if let Some(n) = s.handover.filter(|&n| n > s.version) {
        return Step::Handover(n);
    }
    if let Some(r) = &s.rotate {
        return Step::Rotate {
            expect_active: s.active_version,
            reason: r.reason.clone(),
        };
    }
    Step::Wait
}

/// First pause after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest pause between retries while the server is unreachable.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The pause between retries with a key the server rejects: nothing changes until someone
/// writes a new key, so asking often helps no one.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);
/// No pause is shorter than this, so a draw near zero cannot turn the retry into a busy loop.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// The pause before retry number `failures` (1 for the first failure): exponential backoff
/// with full jitter, `u` uniform in `[0, 1)` times `min(cap, base · 2^(failures-1))`.
pub fn backoff(failures: u32, u: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    ceiling.mul_f64(u.clamp(0.0, 1.0)).max(BACKOFF_FLOOR)
}

/// When `keyroll run` restarts its child after a new key: `u` (uniform in `[0, 1)`) times
/// `min(restart_within, half of the old key's remaining grace)`, so replicas spread their
/// restarts and every one of them has restarted while the old key still works.
pub fn restart_delay(restart_within: Duration, old_key_left: Option<Duration>, u: f64) -> Duration {
    let window = match old_key_left {
        Some(left) => restart_within.min(left / 2),
        None => restart_within,
    };
    window.mul_f64(u.clamp(0.0, 1.0))
}

/// How long the next long-poll may be held: the server's usual wait, shortened so that the
/// heartbeat report is not late (whole seconds, at least one: the server takes `wait=Ns`).
pub fn poll_wait(wait: Duration, until_heartbeat: Duration) -> Duration {
    let secs = wait.min(until_heartbeat).as_secs().max(1);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use keyroll_proto::SelfRotate;

    use super::*;

    fn state(version: u32, active: u32) -> SelfState {
        SelfState {
            consumer: "prod/billing".to_owned(),
            kid: "k".to_owned(),
            version,
            state: "active".to_owned(),
            deadline: None,
            active_version: active,
            handover: None,
            rotate: None,
            grace: "20s".to_owned(),
            delivery: "agent".to_owned(),
            revision: 7,
        }
    }

    fn rotate(reason: &str) -> Option<SelfRotate> {
        Some(SelfRotate {
            reason: reason.to_owned(),
            since: None,
            detail: String::new(),
        })
    }

    #[test]
    fn a_handover_beats_a_rotation_and_rotation_expects_the_active_version() {
        assert_eq!(next_step(&state(1, 1)), Step::Wait);
        let s = SelfState {
            rotate: rotate("requested"),
            ..state(1, 1)
        };
        assert_eq!(
            next_step(&s),
            Step::Rotate {
                expect_active: 1,
                reason: "requested".to_owned()
            }
        );
        let s = SelfState {
            handover: Some(2),
            rotate: rotate("requested"),
            ..state(1, 2)
        };
        assert_eq!(next_step(&s), Step::Handover(2));
        // An orphan the caller cannot fetch: rotate again, expecting the orphan to be active.
        let s = SelfState {
            rotate: rotate("superseded"),
            ..state(1, 2)
        };
        assert_eq!(
            next_step(&s),
            Step::Rotate {
                expect_active: 2,
                reason: "superseded".to_owned()
            }
        );
        // A "handover" of the version already held is nothing to fetch.
        let s = SelfState {
            handover: Some(3),
            ..state(3, 3)
        };
        assert_eq!(next_step(&s), Step::Wait);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        assert_eq!(
            backoff(1, 0.999_999),
            Duration::from_secs(1).mul_f64(0.999_999)
        );
        assert_eq!(backoff(2, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(7, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(1000, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(0, 1.0), BACKOFF_BASE);
        // Never a busy loop, whatever the draw.
        assert_eq!(backoff(5, 0.0), BACKOFF_FLOOR);
        for n in 1..40 {
            for u in [0.0, 0.1, 0.5, 0.9, 0.999] {
                let d = backoff(n, u);
                assert!(d >= BACKOFF_FLOOR && d <= BACKOFF_CAP, "{n} {u} {d:?}");
            }
        }
    }

    #[test]
    fn restarts_fall_inside_half_the_remaining_grace() {
        let five_min = Duration::from_secs(300);
        assert_eq!(restart_delay(five_min, None, 0.5), Duration::from_secs(150));
        assert_eq!(
            restart_delay(five_min, Some(Duration::from_secs(20)), 1.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            restart_delay(five_min, Some(Duration::from_secs(3600)), 1.0),
            five_min
        );
        assert_eq!(
            restart_delay(five_min, Some(Duration::ZERO), 0.7),
            Duration::ZERO
        );
        assert_eq!(restart_delay(Duration::ZERO, None, 0.7), Duration::ZERO);
    }

    #[test]
    fn the_poll_is_cut_short_for_the_heartbeat() {
        let s = Duration::from_secs;
        assert_eq!(poll_wait(s(25), s(30)), s(25));
        assert_eq!(poll_wait(s(25), s(4)), s(4));
        assert_eq!(poll_wait(s(25), Duration::ZERO), s(1));
        assert_eq!(poll_wait(s(25), Duration::from_millis(2500)), s(2));
    }
}
