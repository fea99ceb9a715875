//! Decisions (SPEC §4): the outcome of one verification, with a stable reason code.
//!
//! [`judge`] is the last step of the hot path: given what the index knows about the version a
//! well-formed key names (its secret already compared), it decides at `now`. The codes are a
//! public contract: never renamed once released. How a code is answered over a transport (HTTP
//! status, title, challenge) is the transport's business, not the core's.

use crate::lifecycle::{Policy, State, VersionView, effective_state, shown_deadline};
use crate::timestamp::Timestamp;

/// Every reason a verification can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionCode {
    /// Active version.
    Valid,
    /// Retiring version inside its grace window.
    ValidDeprecated,
    /// No key in the request.
    MissingCredential,
    /// Bad prefix, length, charset or checksum.
    MalformedCredential,
    /// A well-formed key for another environment.
    WrongEnvironment,
    /// Well-formed, kid not known.
    UnknownKey,
    /// Kid known, secret does not match.
    InvalidSecret,
    /// Grace window over.
    KeyRetired,
    /// Revoked.
    KeyRevoked,
    /// Past `expires_at`.
    KeyExpired,
    /// Consumer switched off.
    ConsumerDisabled,
    /// A required scope is not granted.
    InsufficientScope,
    /// The request itself cannot be judged (too many headers, an over-long URI, a gateway
    /// header that is not text or not a valid name). Added after SPEC §4's table: a gateway
    /// must still get a code, a request id and a log line for such a request.
    MalformedRequest,
}

impl DecisionCode {
    /// All codes, in the order of the SPEC table.
    pub const ALL: [DecisionCode; 13] = [
        DecisionCode::Valid,
        DecisionCode::ValidDeprecated,
        DecisionCode::MissingCredential,
        DecisionCode::MalformedCredential,
        DecisionCode::WrongEnvironment,
        DecisionCode::UnknownKey,
        DecisionCode::InvalidSecret,
        DecisionCode::KeyRetired,
        DecisionCode::KeyRevoked,
        DecisionCode::KeyExpired,
        DecisionCode::ConsumerDisabled,
        DecisionCode::InsufficientScope,
        DecisionCode::MalformedRequest,
    ];

    /// The stable code, as logged.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionCode::Valid => "valid",
            DecisionCode::ValidDeprecated => "valid_deprecated",
            DecisionCode::MissingCredential => "missing_credential",
            DecisionCode::MalformedCredential => "malformed_credential",
            DecisionCode::WrongEnvironment => "wrong_environment",
            DecisionCode::UnknownKey => "unknown_key",
            DecisionCode::InvalidSecret => "invalid_secret",
            DecisionCode::KeyRetired => "key_retired",
            DecisionCode::KeyRevoked => "key_revoked",
            DecisionCode::KeyExpired => "key_expired",
            DecisionCode::ConsumerDisabled => "consumer_disabled",
            DecisionCode::InsufficientScope => "insufficient_scope",
            DecisionCode::MalformedRequest => "malformed_request",
        }
    }

    /// Parses [`DecisionCode::as_str`] back.
    pub fn parse(input: &str) -> Option<DecisionCode> {
        DecisionCode::ALL.into_iter().find(|c| c.as_str() == input)
    }

    /// The code the caller is told: it never learns whether a kid exists, so `unknown_key` and
    /// `invalid_secret` both become `invalid_key`.
    pub fn public_code(&self) -> &'static str {
        match self {
            DecisionCode::UnknownKey | DecisionCode::InvalidSecret => "invalid_key",
            other => other.as_str(),
        }
    }

    /// Whether the request is let through.
    pub fn allowed(&self) -> bool {
        matches!(self, DecisionCode::Valid | DecisionCode::ValidDeprecated)
    }
}

/// What the index knows about the consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerFacts<'a, S> {
    /// Switched off.
    pub disabled: bool,
    /// Granted scopes.
    pub scopes: &'a [S],
    /// Its retirement settings (the stall rule needs `idle` and `on_stall`).
    pub policy: Policy,
}

/// The outcome of judging a version whose secret matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The reason code.
    pub code: DecisionCode,
    /// The version's state at `now`.
    pub state: State,
    /// For `valid_deprecated`: when it stops working, stall extension included (`Sunset`).
    pub sunset: Option<Timestamp>,
    /// For `insufficient_scope`: the first required scope not granted (index into `required`).
    pub missing_scope: Option<usize>,
}

/// Decides for a version whose secret matched. Order: the key's own state first (it is what the
/// caller can fix), then the consumer switch, then scopes.
#[inline]
pub fn judge<S: AsRef<str>, R: AsRef<str>>(
    version: &VersionView,
    consumer: &ConsumerFacts<'_, S>,
    required_scopes: &[R],
    now: Timestamp,
) -> Decision {
    let state = effective_state(version, &consumer.policy, now);
    let reject = |code| Decision {
        code,
        state,
        sunset: None,
        missing_scope: None,
    };
    let code = match state {
        State::Revoked => return reject(DecisionCode::KeyRevoked),
        State::Expired => return reject(DecisionCode::KeyExpired),
        State::Retired => return reject(DecisionCode::KeyRetired),
        State::Active => DecisionCode::Valid,
        State::Retiring => DecisionCode::ValidDeprecated,
    };
    if consumer.disabled {
        return reject(DecisionCode::ConsumerDisabled);
    }
    if let Some(i) = required_scopes
        .iter()
        .position(|r| !consumer.scopes.iter().any(|g| g.as_ref() == r.as_ref()))
    {
        return Decision {
            code: DecisionCode::InsufficientScope,
            state,
            sunset: None,
            missing_scope: Some(i),
        };
    }
    // Past the stored deadline a valid retiring version is on its extension: the effective
    // deadline is the shown one then, and before it the stored one is.
    let sunset = (code == DecisionCode::ValidDeprecated)
        .then(|| shown_deadline(version, &consumer.policy, now))
        .flatten();
    Decision {
        code,
        state,
        sunset,
        missing_scope: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lifecycle::StoredState;
    use std::time::Duration;

    fn facts(state: StoredState, deadline: Option<i64>, expires: Option<i64>) -> VersionView {
        VersionView {
            state,
            deadline: deadline.map(Timestamp::from_unix_millis),
            expires_at: expires.map(Timestamp::from_unix_millis),
            grace: Duration::from_secs(10),
            extended: false,
            enforced: false,
            last_used: None,
        }
    }

    fn consumer(disabled: bool) -> ConsumerFacts<'static, &'static str> {
        ConsumerFacts {
            disabled,
            scopes: &["invoices:read"],
            policy: Policy::default(),
        }
    }

    #[test]
    fn a_version_in_use_at_its_deadline_stalls_once() {
        let at = Timestamp::from_unix_millis;
        let mut v = facts(StoredState::Retiring, Some(100_000), None);
        v.last_used = Some(at(99_000));
        // Still valid past the deadline, until deadline + grace, with the extended sunset.
        let d = judge(&v, &consumer(false), &NONE, at(105_000));
        assert_eq!(
            (d.code, d.sunset),
            (DecisionCode::ValidDeprecated, Some(at(110_000)))
        );
        assert_eq!(
            judge(&v, &consumer(false), &NONE, at(110_000)).code,
            DecisionCode::KeyRetired
        );
        // Enforced, already extended, or on_stall = retire: the exact deadline.
        let mut enforced = v;
        enforced.enforced = true;
        assert_eq!(
            judge(&enforced, &consumer(false), &NONE, at(100_000)).code,
            DecisionCode::KeyRetired
        );
        let mut extended = v;
        extended.extended = true;
        assert_eq!(
            judge(&extended, &consumer(false), &NONE, at(100_000)).code,
            DecisionCode::KeyRetired
        );
        let mut strict = consumer(false);
        strict.policy.on_stall = crate::lifecycle::OnStall::Retire;
        assert_eq!(
            judge(&v, &strict, &NONE, at(100_000)).code,
            DecisionCode::KeyRetired
        );
        // Last seen before the idle window: retired at the deadline.
        let mut quiet = v;
        quiet.last_used = Some(at(100_000 - 3_600_000 - 1));
        assert_eq!(
            judge(&quiet, &consumer(false), &NONE, at(100_000)).code,
            DecisionCode::KeyRetired
        );
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn codes_round_trip_and_are_snake_case() {
        for code in DecisionCode::ALL {
            assert_eq!(DecisionCode::parse(code.as_str()), Some(code));
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        assert_eq!(DecisionCode::UnknownKey.public_code(), "invalid_key");
        assert_eq!(DecisionCode::InvalidSecret.public_code(), "invalid_key");
        // The HTTP statuses of codes are the server's (keyroll-server `http::decision_http`).
    }

    #[test]
    fn deadlines_pass_by_themselves() {
        let now = Timestamp::from_unix_millis(1_000);
        let retiring = facts(StoredState::Retiring, Some(1_000), None);
        assert_eq!(
            judge(&retiring, &consumer(false), &NONE, now).code,
            DecisionCode::KeyRetired
        );
        let before = Timestamp::from_unix_millis(999);
        let d = judge(&retiring, &consumer(false), &NONE, before);
        assert_eq!(d.code, DecisionCode::ValidDeprecated);
        assert_eq!(d.sunset, Some(Timestamp::from_unix_millis(1_000)));
    }

    #[test]
    fn precedence_state_then_disabled_then_scope() {
        let now = Timestamp::from_unix_millis(5);
        let revoked = facts(StoredState::Revoked, None, Some(1));
        assert_eq!(
            judge(&revoked, &consumer(true), &["x"], now).code,
            DecisionCode::KeyRevoked
        );
        let expired = facts(StoredState::Active, None, Some(5));
        assert_eq!(
            judge(&expired, &consumer(true), &["x"], now).code,
            DecisionCode::KeyExpired
        );
        let active = facts(StoredState::Active, None, None);
        assert_eq!(
            judge(&active, &consumer(true), &["x"], now).code,
            DecisionCode::ConsumerDisabled
        );
        let d = judge(&active, &consumer(false), &["invoices:read", "x"], now);
        assert_eq!(
            (d.code, d.missing_scope),
            (DecisionCode::InsufficientScope, Some(1))
        );
        assert_eq!(
            judge(&active, &consumer(false), &["invoices:read"], now).code,
            DecisionCode::Valid
        );
    }
}
