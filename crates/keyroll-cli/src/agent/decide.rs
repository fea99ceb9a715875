//! The agent's decisions as pure functions of what the server said and a random draw: what to
//! do after a poll, how long to back off, when `keyroll run` restarts its child, when a
//! certificate is renewed and whether the trust bundle needs a refresh. The loops in
//! `worker.rs` and `run.rs` only carry them out, so they are tested here without a server.

use std::time::Duration;

use keyroll_core::Timestamp;
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

/// Where in a certificate's lifetime it is renewed when nothing else is configured (SPEC §9:
/// half the lifetime).
pub const DEFAULT_RENEW_AT: f64 = 0.5;
/// The renewal point a setting may ask for, as a fraction of the lifetime.
pub const RENEW_AT_MIN: f64 = 0.1;
/// See [`RENEW_AT_MIN`].
pub const RENEW_AT_MAX: f64 = 0.9;
/// The jitter around the renewal point: ±10 % of the offset, so replicas issued at the same
/// moment do not all come back at the same moment.
pub const RENEW_JITTER: f64 = 0.1;
/// However a certificate's window looks (a notAfter capped at an expiring issuer's), it is not
/// renewed sooner than this after it was received: no renewal loop.
pub const MIN_CERT_AGE: Duration = Duration::from_secs(10);

/// The instant a certificate valid from `not_before` to `not_after` is renewed: at `renew_at`
/// (bounded to [`RENEW_AT_MIN`]..=[`RENEW_AT_MAX`]) of its lifetime, times `1 ± RENEW_JITTER`
/// by the uniform draw `u` in `[0, 1)` (so 45–55 % by default, never past 99 %). The lifetime
/// counts from when the agent `received` it, when known and later than notBefore: the CA sets
/// notBefore back a minute for clock skew, which would otherwise eat a short certificate's
/// first renewal window. Never sooner than [`MIN_CERT_AGE`] after that start.
pub fn renewal_instant(
    not_before: Timestamp,
    not_after: Timestamp,
    received: Option<Timestamp>,
    renew_at: f64,
    u: f64,
) -> Timestamp {
    let start = received.map_or(not_before, |r| r.max(not_before));
    let life_ms = not_after.duration_since(start).as_millis() as f64;
    // NaN (never from a checked setting) falls to the bounds instead of poisoning the sum.
    let u = if u.is_nan() { 0.5 } else { u.clamp(0.0, 1.0) };
    let renew_at = if renew_at.is_nan() {
        RENEW_AT_MIN
    } else {
        renew_at.clamp(RENEW_AT_MIN, RENEW_AT_MAX)
    };
    let fraction = renew_at * (1.0 + RENEW_JITTER * (2.0 * u - 1.0));
    // Whole milliseconds, rounded: the product is at most 0.99 of the lifetime.
    let offset = Duration::from_millis((life_ms * fraction).round() as u64);
    start
        .saturating_add(offset)
        .max(start.saturating_add(MIN_CERT_AGE))
}

/// What the agent knows of the certificate set in its `--cert-dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCert {
    /// When the certificate expires.
    pub not_after: Timestamp,
    /// When it is to be renewed ([`renewal_instant`], drawn once per certificate).
    pub renew_at: Timestamp,
    /// The bundle version `ca.pem` holds (`None`: not known, e.g. after a lost state file).
    pub bundle_version: Option<u64>,
}

/// What to do about the certificate set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStep {
    /// A new key pair, CSR and certificate: `missing`, `due` or `expired`.
    Renew(&'static str),
    /// Fetch `/v1/ca/bundle` and replace `ca.pem`: the server's bundle is not the one held.
    RefreshBundle,
    /// Nothing until this instant (the renewal), or a change of the server's bundle.
    Wait(Timestamp),
    /// The server has no CA (bundle version 0): nothing to renew from until `ca init`.
    NoCa,
}

/// The certificate step at `now`, given what is held and the server's bundle version (0: the
/// server has no CA yet, so there is nothing to renew from or refresh to, and the files are
/// left as they are). A renewal comes first: it brings a current `ca.pem` with it.
pub fn cert_step(held: Option<&HeldCert>, server_bundle: u64, now: Timestamp) -> CertStep {
    if server_bundle == 0 {
        return CertStep::NoCa;
    }
    let Some(h) = held else {
        return CertStep::Renew("missing");
    };
    if now >= h.not_after {
        return CertStep::Renew("expired");
    }
    if now >= h.renew_at {
        return CertStep::Renew("due");
    }
    if server_bundle != 0 && h.bundle_version != Some(server_bundle) {
        return CertStep::RefreshBundle;
    }
    CertStep::Wait(h.renew_at)
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
            bundle_version: 0,
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

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(secs * 1000)
    }

    #[test]
    fn renewal_falls_at_half_the_lifetime_within_ten_percent() {
        // 24 h certificate.
        let (nb, na) = (ts(0), ts(86_400));
        let half = 43_200_000i64;
        let lo = renewal_instant(nb, na, None, DEFAULT_RENEW_AT, 0.0).unix_millis();
        let mid = renewal_instant(nb, na, None, DEFAULT_RENEW_AT, 0.5).unix_millis();
        let hi = renewal_instant(nb, na, None, DEFAULT_RENEW_AT, 0.999_999).unix_millis();
        assert_eq!(mid, half);
        assert_eq!(lo, half - half / 10);
        assert!(
            hi <= half + half / 10 && hi > half + half / 10 - 1000,
            "{hi}"
        );
        for i in 0..1000 {
            let u = f64::from(i) / 1000.0;
            let at = renewal_instant(nb, na, None, DEFAULT_RENEW_AT, u).unix_millis();
            assert!(
                (half - half / 10..=half + half / 10).contains(&at),
                "{u}: {at}"
            );
        }
        // Out-of-range draws are clamped, not extrapolated.
        assert_eq!(renewal_instant(nb, na, None, 0.5, -3.0).unix_millis(), lo);
        assert_eq!(
            renewal_instant(nb, na, None, 0.5, 7.0).unix_millis(),
            half + half / 10
        );
    }

    #[test]
    fn the_renewal_point_is_bounded_and_counts_from_receipt() {
        let (nb, na) = (ts(0), ts(1000));
        // Asked for outside 0.1..0.9: bounded (and never at or past notAfter).
        assert_eq!(renewal_instant(nb, na, None, 0.0, 0.5), ts(100));
        assert_eq!(renewal_instant(nb, na, None, 5.0, 0.5), ts(900));
        assert!(renewal_instant(nb, na, None, 5.0, 0.999) < na);
        assert_eq!(renewal_instant(nb, na, None, f64::NAN, 0.5), ts(100));
        // A 5-minute certificate backdated by a minute, received at notBefore + 60 s, renewed
        // at 0.1 of what is left: 30 s after receipt, not at once.
        let (nb, na, got) = (ts(0), ts(360), ts(60));
        assert_eq!(renewal_instant(nb, na, Some(got), 0.1, 0.5), ts(90));
        // A receipt before notBefore (clock skew) counts from notBefore.
        assert_eq!(
            renewal_instant(ts(100), ts(300), Some(ts(50)), 0.5, 0.5),
            ts(200)
        );
        // Never sooner than MIN_CERT_AGE after the start.
        assert_eq!(renewal_instant(ts(0), ts(12), None, 0.1, 0.0), ts(10));
    }

    #[test]
    fn an_expired_or_missing_certificate_is_renewed_at_once() {
        let held = HeldCert {
            not_after: ts(1000),
            renew_at: ts(500),
            bundle_version: Some(3),
        };
        assert_eq!(cert_step(None, 0, ts(0)), CertStep::NoCa);
        assert_eq!(cert_step(None, 1, ts(0)), CertStep::Renew("missing"));
        assert_eq!(cert_step(Some(&held), 0, ts(5000)), CertStep::NoCa);
        assert_eq!(
            cert_step(Some(&held), 3, ts(5000)),
            CertStep::Renew("expired")
        );
        assert_eq!(
            cert_step(Some(&held), 3, ts(1000)),
            CertStep::Renew("expired")
        );
        assert_eq!(cert_step(Some(&held), 3, ts(500)), CertStep::Renew("due"));
        // Renewal beats a bundle refresh (the new certificate brings ca.pem along).
        assert_eq!(cert_step(Some(&held), 4, ts(600)), CertStep::Renew("due"));
        assert_eq!(cert_step(Some(&held), 3, ts(499)), CertStep::Wait(ts(500)));
        assert_eq!(cert_step(Some(&held), 4, ts(499)), CertStep::RefreshBundle);
        // An unknown held version is refreshed; a server without a CA has nothing to give.
        let unknown = HeldCert {
            bundle_version: None,
            ..held
        };
        assert_eq!(cert_step(Some(&unknown), 4, ts(1)), CertStep::RefreshBundle);
        assert_eq!(cert_step(Some(&unknown), 0, ts(1)), CertStep::NoCa);
        // An already expired certificate, read at start: its renewal instant is in the past.
        let (nb, na) = (ts(0), ts(300));
        let old = HeldCert {
            not_after: na,
            renew_at: renewal_instant(nb, na, None, DEFAULT_RENEW_AT, 0.3),
            bundle_version: Some(1),
        };
        assert_eq!(
            cert_step(Some(&old), 1, ts(10_000)),
            CertStep::Renew("expired")
        );
    }
}
