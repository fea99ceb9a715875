//! Standard Webhooks (<https://www.standardwebhooks.com/>) for keyroll's event deliveries, as pure
//! functions: `whsec_` secrets, the `webhook-signature` header (`v1,` + base64 HMAC-SHA256 over
//! `id.timestamp.body`, the exact bytes sent), its verification, and what a delivery attempt's
//! answer means for the next one (the retry schedule, `Retry-After`, 410 disables the endpoint).
//!
//! No IO, no clock, no randomness of its own: the caller passes the time, the secret bytes and
//! the jitter, so every rule is a plain function that tests drive to any instant. The sender
//! (server) and any receiver written in Rust share this one implementation; the tests also check
//! it against the specification's published example.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret as shown once to the operator.
/// What an endpoint registered without `events` receives: the rotation events, sorted. The one
/// definition: the server registers with it and the policy file plans with it.
pub const DEFAULT_EVENTS: [&str; 9] = [
    "key.expiring",
    "rotation.due",
    "rotation.requested",
    "rotation.stalled",
    "rotation.started",
    "version.delivered",
    "version.retired",
    "version.revoked",
    "version.unused",
];

/// Every event type an endpoint can receive, and `*` for all of them: the webhook types
/// (docs/webhooks.md) and the other kinds of the outbox by their own names, sorted.
pub const EVENTS: [&str; 17] = [
    "*",
    "consumer.created",
    "consumer.disabled",
    "consumer.enabled",
    "consumer.updated",
    "key.expiring",
    "rotation.due",
    "rotation.requested",
    "rotation.stalled",
    "rotation.started",
    "version.delivered",
    "version.issued",
    "version.retired",
    "version.retiring",
    "version.revoked",
    "version.unused",
    "webhook.disabled",
];

pub const SECRET_PREFIX: &str = "whsec_";

/// How far a receiver lets `webhook-timestamp` be from its clock (the specification's default).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// An endpoint's signing secret: 24 to 64 random bytes. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Why a secret, or a signed message, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret text is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("a webhook secret is whsec_ followed by base64 of 24 to 64 bytes: {0}")]
    BadSecret(&'static str),
    /// A header is missing or malformed.
    #[error("header {header}: {problem}")]
    BadHeader {
        /// Which.
        header: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// The timestamp is too far from the receiver's clock (a replay, or a wrong clock).
    #[error("webhook-timestamp is {seconds} s away from now (at most {} s allowed)", TIMESTAMP_TOLERANCE.as_secs())]
    StaleTimestamp {
        /// How far, in seconds.
        seconds: u64,
    },
    /// No `v1` signature matched.
    #[error("no v1 signature in webhook-signature matches the body")]
    NoMatchingSignature,
}

impl Secret {
    /// A secret from random bytes (the caller's CSPRNG).
    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes.to_vec())
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, WebhookError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::BadSecret("it does not start with whsec_"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| WebhookError::BadSecret("the rest is not base64"))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(WebhookError::BadSecret("wrong length"));
        }
        Ok(Secret(bytes))
    }

    /// `whsec_<base64>`: the form shown once when an endpoint is registered.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts a key of any length; `new_from_slice` cannot fail for HMAC.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac::new_from_slice only fails for fixed-size keys, which HMAC-SHA256 does not have.
    #[allow(clippy::panic)]
    {
        panic!("HMAC-SHA256 accepts keys of every length")
    }
}

/// The `webhook-signature` header for a message: one `v1,` signature per secret, space-separated.
/// During a secret rotation both the new and the old secret sign, so a receiver that still holds
/// the old one keeps verifying until the overlap ends.
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a received message as a receiver would: the timestamp within
/// [`TIMESTAMP_TOLERANCE`] of `now` (unix seconds), and one `v1` signature in `signature` that
/// matches (compared in constant time).
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: u64,
) -> Result<(), WebhookError> {
    if id.is_empty() {
        return Err(WebhookError::BadHeader {
            header: "webhook-id",
            problem: "empty",
        });
    }
    let ts: u64 = timestamp.parse().map_err(|_| WebhookError::BadHeader {
        header: "webhook-timestamp",
        problem: "not unix seconds",
    })?;
    let seconds = ts.abs_diff(now);
    if seconds > TIMESTAMP_TOLERANCE.as_secs() {
        return Err(WebhookError::StaleTimestamp { seconds });
    }
    for candidate in signature.split(' ') {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            continue;
        };
        if secret.mac(id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(WebhookError::NoMatchingSignature)
}

/// When attempts are made after the first fails, measured from the previous attempt (the
/// specification's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
pub const RETRY_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long an endpoint has to answer before the attempt counts as failed.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// What one attempt's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status within [`ATTEMPT_TIMEOUT`], and its `Retry-After` in seconds if any.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After`, when the endpoint sent one.
        retry_after: Option<Duration>,
    },
    /// No answer in time, or no connection.
    NoAnswer,
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered: a 2xx.
    Delivered,
    /// Try again after this long.
    RetryAfter(Duration),
    /// The schedule is exhausted: the delivery failed for good.
    GiveUp,
    /// 410 Gone: the endpoint asked to be disabled; no more deliveries to it.
    DisableEndpoint,
}

/// The next step after attempt number `attempt` (1 for the first) answered `answer`. `jitter` in
/// `[0, 1)` (from the caller's randomness) spreads a retry over ±10% of its delay, so endpoints
/// that failed together are not retried together; a `Retry-After` longer than the schedule's
/// delay is honoured as it is.
pub fn next_step(attempt: u32, answer: Answer, jitter: f64) -> Next {
    let retry_after = match answer {
        Answer::Status { status, .. } if (200..300).contains(&status) => return Next::Delivered,
        Answer::Status { status: 410, .. } => return Next::DisableEndpoint,
        Answer::Status { retry_after, .. } => retry_after,
        Answer::NoAnswer => None,
    };
    let Some(delay) = usize::try_from(attempt)
        .ok()
        .and_then(|a| RETRY_SCHEDULE.get(a))
    else {
        return Next::GiveUp;
    };
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = delay.mul_f64(0.9 + 0.2 * jitter);
    Next::RetryAfter(match retry_after {
        Some(r) if r > spread => r,
        _ => spread,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference libraries).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specifications_example_signs_and_verifies() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(s.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert_eq!(s.reveal(), SPEC_SECRET);
        verify(
            &s,
            SPEC_ID,
            "1614265330",
            SPEC_SIGNATURE,
            SPEC_BODY,
            SPEC_TS + 10,
        )
        .unwrap();
    }

    #[test]
    fn a_changed_byte_id_or_time_does_not_verify() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        let ok =
            |id: &str, ts: &str, body: &[u8]| verify(&s, id, ts, SPEC_SIGNATURE, body, SPEC_TS);
        assert_eq!(
            ok(SPEC_ID, "1614265330", br#"{"test": 2432232315}"#),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            ok("msg_other", "1614265330", SPEC_BODY),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            ok(SPEC_ID, "1614265331", SPEC_BODY),
            Err(WebhookError::NoMatchingSignature)
        );
        assert!(matches!(
            verify(
                &s,
                SPEC_ID,
                "1614265330",
                SPEC_SIGNATURE,
                SPEC_BODY,
                SPEC_TS + 301
            ),
            Err(WebhookError::StaleTimestamp { seconds: 301 })
        ));
        assert!(matches!(
            verify(&s, SPEC_ID, "soon", SPEC_SIGNATURE, SPEC_BODY, SPEC_TS),
            Err(WebhookError::BadHeader {
                header: "webhook-timestamp",
                ..
            })
        ));
    }

    #[test]
    fn during_a_secret_rotation_both_secrets_sign_and_either_verifies() {
        let old = Secret::from_bytes([7; 32]);
        let new = Secret::from_bytes([9; 32]);
        let header = signature_header(&[&new, &old], "msg_1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        verify(&old, "msg_1", "100", &header, b"{}", 100).unwrap();
        verify(&new, "msg_1", "100", &header, b"{}", 100).unwrap();
        let other = Secret::from_bytes([1; 32]);
        assert_eq!(
            verify(&other, "msg_1", "100", &header, b"{}", 100),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn secrets_parse_precisely_and_never_show_in_debug() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err(), "3 bytes is too short");
        let s = Secret::from_bytes([42; 32]);
        let debug = format!("{s:?}");
        assert!(!debug.contains(&s.reveal()[6..]), "{debug}");
        assert_eq!(Secret::parse(&s.reveal()).unwrap(), s);
    }

    #[test]
    fn the_retry_schedule_honours_retry_after_stops_on_410_and_gives_up_after_the_last() {
        let fail = Answer::Status {
            status: 500,
            retry_after: None,
        };
        assert_eq!(
            next_step(
                1,
                Answer::Status {
                    status: 204,
                    retry_after: None
                },
                0.5
            ),
            Next::Delivered
        );
        assert_eq!(
            next_step(1, fail, 0.5),
            Next::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            next_step(2, Answer::NoAnswer, 0.5),
            Next::RetryAfter(Duration::from_secs(300))
        );
        // ±10% jitter around the scheduled delay.
        assert_eq!(
            next_step(1, fail, 0.0),
            Next::RetryAfter(Duration::from_millis(4_500))
        );
        assert_eq!(
            next_step(1, fail, 1.0),
            Next::RetryAfter(Duration::from_millis(5_500))
        );
        // A longer Retry-After wins; a shorter one does not make us retry sooner than scheduled.
        let busy = |s| Answer::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            next_step(1, busy(60), 0.5),
            Next::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            next_step(2, busy(1), 0.5),
            Next::RetryAfter(Duration::from_secs(300))
        );
        assert_eq!(
            next_step(
                3,
                Answer::Status {
                    status: 410,
                    retry_after: None
                },
                0.5
            ),
            Next::DisableEndpoint
        );
        assert_eq!(
            next_step(7, fail, 0.5),
            Next::RetryAfter(Duration::from_secs(36_000))
        );
        assert_eq!(next_step(8, fail, 0.5), Next::GiveUp);
    }
}
