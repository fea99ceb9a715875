//! The verification hot path: presented key → parse → index lookup → decision, with the facts
//! the log line, the metrics and the response are built from.
//!
//! Nothing here touches the database or allocates for an allowed key beyond what the answer
//! needs. Detail sentences are built only when asked for (rejections, `/v1/verify`, logs).

use std::sync::Arc;

use keyroll_core::{
    DecisionCode, Fingerprint, Kid, MalformedKey, SecretHash, State, Timestamp, VersionNumber,
    fingerprint, parse_key,
};

use crate::index::{ConsumerEntry, Index, Lookup};
use crate::timefmt::rfc3339;

/// Where the key was found, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer`.
    Bearer,
    /// `X-API-Key`.
    ApiKeyHeader,
    /// A JSON body (`/v1/verify`).
    Body,
}

/// What a request presented.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// No credential at all.
    Missing,
    /// Something that cannot be a key before parsing (non-ASCII header, wrong auth scheme).
    Unreadable {
        /// Why, for the detail.
        reason: &'static str,
        /// The raw bytes, for the fingerprint.
        raw: &'a [u8],
    },
    /// A candidate key.
    Key(&'a [u8]),
}

/// Why the key was rejected before lookup, or the lookup facts.
#[derive(Debug, Clone)]
pub enum Facts {
    /// No credential.
    Missing,
    /// Unreadable header.
    Unreadable(&'static str),
    /// Parse failure.
    Malformed(MalformedKey),
    /// Key of another environment.
    WrongEnvironment {
        /// The key's environment.
        presented: Box<str>,
        /// The one required.
        expected: Box<str>,
    },
    /// Known kid or not, judged or not.
    Looked(Lookup),
}

/// An environment name of at most 16 bytes, held without allocating.
#[derive(Debug, Clone, Copy)]
pub struct InlineEnv {
    bytes: [u8; 16],
    len: u8,
}

impl InlineEnv {
    fn new(name: &str) -> InlineEnv {
        let mut bytes = [0u8; 16];
        let len = name.len().min(16);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        InlineEnv {
            bytes,
            len: len as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// The outcome of one verification, everything a response or a log line needs.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The reason code.
    pub code: DecisionCode,
    /// The kid, when well-formed.
    pub kid: Option<Kid>,
    /// The fingerprint of what was presented.
    pub fingerprint: Option<Fingerprint>,
    /// The environment in the key prefix, when well-formed (inline: no allocation).
    pub key_environment: Option<InlineEnv>,
    /// What was found out.
    pub facts: Facts,
    /// The scopes required (for `insufficient_scope` messages).
    pub missing_scope: Option<Box<str>>,
}

impl Verification {
    /// The consumer the key belongs to, when known.
    pub fn consumer(&self) -> Option<&Arc<ConsumerEntry>> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => Some(&f.consumer),
            Facts::Looked(Lookup::SecretMismatch { consumer, .. }) => Some(consumer),
            _ => None,
        }
    }

    /// The key's environment, when the key was well-formed.
    pub fn environment(&self) -> Option<&str> {
        match self.consumer() {
            Some(c) => Some(c.environment()),
            None => self.key_environment.as_ref().map(InlineEnv::as_str),
        }
    }

    /// The version, when known.
    pub fn version(&self) -> Option<VersionNumber> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => Some(f.version),
            Facts::Looked(Lookup::SecretMismatch { version, .. }) => Some(*version),
            _ => None,
        }
    }

    /// The version's state at decision time, when the secret matched.
    pub fn state(&self) -> Option<State> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => Some(f.decision.state),
            _ => None,
        }
    }

    /// For a retiring key: when it stops working.
    pub fn sunset(&self) -> Option<Timestamp> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => f.decision.sunset,
            _ => None,
        }
    }

    /// Since when a retiring key is deprecated.
    pub fn deprecated_since(&self) -> Option<Timestamp> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) if self.code == DecisionCode::ValidDeprecated => {
                f.changed_at
            }
            _ => None,
        }
    }

    /// Whether the caller may be told who the key belongs to: only once it proved the secret.
    pub fn caller_may_see_consumer(&self) -> bool {
        matches!(&self.facts, Facts::Looked(Lookup::Found(_)))
    }

    /// The full explanation, for logs (and callers when `explain = "full"`, except for
    /// `unknown_key`/`invalid_secret`, see [`Verification::caller_detail`]).
    pub fn detail(&self) -> String {
        let kid = self.kid.map(|k| k.to_string()).unwrap_or_default();
        match &self.facts {
            Facts::Missing => {
                "no API key in the request: send Authorization: Bearer <key> or X-API-Key".into()
            }
            Facts::Unreadable(reason) => (*reason).into(),
            Facts::Malformed(m) => m.to_string(),
            Facts::WrongEnvironment {
                presented,
                expected,
            } => format!(
                "key {kid} belongs to environment {presented}, but this endpoint verifies {expected} keys"
            ),
            Facts::Looked(Lookup::UnknownKid) => format!("no key version has kid {kid}"),
            Facts::Looked(Lookup::SecretMismatch { consumer, version }) => format!(
                "secret does not match kid {kid} ({} {version})",
                consumer.reference()
            ),
            Facts::Looked(Lookup::Found(f)) => {
                let who = format!("key {kid} ({} {})", f.consumer.reference(), f.version);
                match self.code {
                    DecisionCode::Valid => format!("{who} is active"),
                    DecisionCode::ValidDeprecated => format!(
                        "{who} is retiring and stops working at {}{}",
                        f.deadline.map(rfc3339).unwrap_or_default(),
                        f.replaced_by
                            .map(|n| format!("; switch to {n}"))
                            .unwrap_or_default()
                    ),
                    DecisionCode::KeyRetired => format!(
                        "{who} was retired at {}{}",
                        f.deadline
                            .map(rfc3339)
                            .unwrap_or_else(|| "an earlier time".into()),
                        f.replaced_by
                            .map(|n| format!("; {n} replaces it"))
                            .unwrap_or_default()
                    ),
                    DecisionCode::KeyRevoked => format!(
                        "{who} was revoked at {}: {}",
                        f.changed_at.map(rfc3339).unwrap_or_default(),
                        f.revoke_reason.as_deref().unwrap_or("no reason recorded")
                    ),
                    DecisionCode::KeyExpired => format!(
                        "{who} expired at {}",
                        f.expires_at.map(rfc3339).unwrap_or_default()
                    ),
                    DecisionCode::ConsumerDisabled => {
                        format!("{who}: consumer {} is disabled", f.consumer.reference())
                    }
                    DecisionCode::InsufficientScope => format!(
                        "{who} lacks the required scope {}",
                        self.missing_scope.as_deref().unwrap_or("?")
                    ),
                    other => other.as_str().into(),
                }
            }
        }
    }

    /// What the caller is told: never whether a kid exists.
    pub fn caller_detail(&self) -> String {
        match self.code {
            DecisionCode::UnknownKey | DecisionCode::InvalidSecret => format!(
                "key {} is not valid",
                self.kid.map(|k| k.to_string()).unwrap_or_default()
            ),
            _ => self.detail(),
        }
    }
}

/// Verifies one presented key against the index at `now`.
///
/// `environment` is the environment the request must belong to, if any.
#[inline]
pub fn verify<R: AsRef<str>>(
    index: &Index,
    presented: Presented<'_>,
    environment: Option<&str>,
    required_scopes: &[R],
    now: Timestamp,
) -> Verification {
    let raw = match presented {
        Presented::Missing => {
            return Verification {
                code: DecisionCode::MissingCredential,
                kid: None,
                fingerprint: None,
                key_environment: None,
                facts: Facts::Missing,
                missing_scope: None,
            };
        }
        Presented::Unreadable { reason, raw } => {
            return Verification {
                code: DecisionCode::MalformedCredential,
                kid: None,
                fingerprint: Some(fingerprint(raw)),
                key_environment: None,
                facts: Facts::Unreadable(reason),
                missing_scope: None,
            };
        }
        Presented::Key(raw) => raw,
    };
    let parsed = match parse_key(raw) {
        Ok(p) => p,
        Err(m) => {
            return Verification {
                code: DecisionCode::MalformedCredential,
                kid: None,
                fingerprint: Some(fingerprint(raw)),
                key_environment: None,
                facts: Facts::Malformed(m),
                missing_scope: None,
            };
        }
    };
    let kid = parsed.kid();
    if let Some(expected) = environment
        && parsed.environment() != expected
    {
        return Verification {
            code: DecisionCode::WrongEnvironment,
            kid: Some(kid),
            fingerprint: Some(fingerprint(raw)),
            key_environment: Some(InlineEnv::new(parsed.environment())),
            facts: Facts::WrongEnvironment {
                presented: parsed.environment().into(),
                expected: expected.into(),
            },
            missing_scope: None,
        };
    }
    let secret: SecretHash = parsed.secret_hash();
    let lookup = index.lookup(&kid, &secret, required_scopes, now);
    let (code, fp, missing_scope) = match &lookup {
        Lookup::UnknownKid => (DecisionCode::UnknownKey, fingerprint(raw), None),
        Lookup::SecretMismatch { .. } => (DecisionCode::InvalidSecret, fingerprint(raw), None),
        // The secret matched, so the presented string is the issued key: its fingerprint is
        // the stored one and needs no second hash.
        Lookup::Found(f) => (
            f.decision.code,
            f.fingerprint,
            f.decision
                .missing_scope
                .and_then(|i| required_scopes.get(i))
                .map(|s| s.as_ref().into()),
        ),
    };
    Verification {
        code,
        kid: Some(kid),
        fingerprint: Some(fp),
        key_environment: Some(InlineEnv::new(parsed.environment())),
        facts: Facts::Looked(lookup),
        missing_scope,
    }
}
