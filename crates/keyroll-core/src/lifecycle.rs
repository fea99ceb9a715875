//! The key-version lifecycle (SPEC §3) as one state machine you can read in one file.
//!
//! `Consumer::apply(command, now)` is pure: it returns the consumer's next state and the effects
//! (what changed, for the audit log and the index) or refuses the command. Nothing here knows
//! about storage; the store persists whatever state comes out, in one transaction.
//!
//! States: `active` → `retiring` → `retired`; any → `revoked`; any past `expires_at` → `expired`.
//! A `retiring` version whose deadline has passed *is* retired, whether or not anything has yet
//! written that down: [`effective_state`] decides from the stored state and `now`, so deadlines
//! pass by themselves on the hot path and a deadline that passed while the server was down is
//! applied the moment it starts. [`Command::Settle`] only makes the stored state catch up.
//!
//! Where usage-gated retirement (SPEC §3 `when-idle`, stalls) slots in: `effective_state` gains
//! the version's usage facts as an input, and `Settle` the stall extension; `KeyVersion::enforced`
//! already records which retiring versions must go at their exact deadline.

use std::fmt;
use std::time::Duration;

use crate::key::{Fingerprint, Kid, SecretHash};
use crate::names::{ConsumerName, Environment, Scope};
use crate::timestamp::Timestamp;

/// A version number: `v1`, `v2`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionNumber(pub u32);

impl VersionNumber {
    /// Parses `v3` or `3`. Version numbers start at 1.
    pub fn parse(input: &str) -> Option<VersionNumber> {
        let digits = input.strip_prefix('v').unwrap_or(input);
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|n| *n > 0).map(VersionNumber)
    }
}

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What the store records about a version. `expired` is never stored: it is derived from
/// `expires_at` and `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredState {
    /// The consumer's current version.
    Active,
    /// Replaced, still valid until its deadline.
    Retiring,
    /// No longer valid; replaced.
    Retired,
    /// Withdrawn (leaked, compromised). Never valid again.
    Revoked,
}

impl StoredState {
    /// The stable name used in storage and APIs.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoredState::Active => "active",
            StoredState::Retiring => "retiring",
            StoredState::Retired => "retired",
            StoredState::Revoked => "revoked",
        }
    }

    /// Parses [`StoredState::as_str`] back.
    pub fn parse(input: &str) -> Option<StoredState> {
        Some(match input {
            "active" => StoredState::Active,
            "retiring" => StoredState::Retiring,
            "retired" => StoredState::Retired,
            "revoked" => StoredState::Revoked,
            _ => return None,
        })
    }
}

/// The state a version is in at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Valid, current.
    Active,
    /// Valid until its deadline.
    Retiring,
    /// Past its grace window.
    Retired,
    /// Revoked.
    Revoked,
    /// Past its hard expiry.
    Expired,
}

impl State {
    /// The stable name used in logs and APIs.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Active => "active",
            State::Retiring => "retiring",
            State::Retired => "retired",
            State::Revoked => "revoked",
            State::Expired => "expired",
        }
    }

    /// Whether a key in this state is accepted.
    pub fn is_valid(&self) -> bool {
        matches!(self, State::Active | State::Retiring)
    }
}

/// The state of a version at `now`, from what is stored. Revocation wins over expiry (it is the
/// more useful thing to tell someone handling a leak), expiry over retirement.
#[inline]
pub fn effective_state(
    stored: StoredState,
    deadline: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> State {
    if stored == StoredState::Revoked {
        return State::Revoked;
    }
    if expires_at.is_some_and(|at| now >= at) {
        return State::Expired;
    }
    match stored {
        StoredState::Active => State::Active,
        StoredState::Retiring if deadline.is_some_and(|d| now >= d) => State::Retired,
        StoredState::Retiring => State::Retiring,
        StoredState::Retired => State::Retired,
        StoredState::Revoked => State::Revoked,
    }
}

/// One issued key version of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// `v1`, `v2`, …
    pub number: VersionNumber,
    /// Public key id.
    pub kid: Kid,
    /// SHA-256 of the secret.
    pub secret_hash: SecretHash,
    /// Fingerprint of the whole key string.
    pub fingerprint: Fingerprint,
    /// Stored state.
    pub state: StoredState,
    /// When it was issued.
    pub created_at: Timestamp,
    /// While retiring: when it stops working.
    pub deadline: Option<Timestamp>,
    /// Hard expiry, never extended.
    pub expires_at: Option<Timestamp>,
    /// When it was retired (stored state `retired`).
    pub retired_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// The version that replaced it.
    pub replaced_by: Option<VersionNumber>,
    /// Retire exactly at the deadline, whatever the traffic says (`rotate --enforce`).
    pub enforced: bool,
}

impl KeyVersion {
    /// The state at `now`.
    pub fn state_at(&self, now: Timestamp) -> State {
        effective_state(self.state, self.deadline, self.expires_at, now)
    }

    /// When it stopped (or stops) being valid because of retirement: the stored retirement time,
    /// else the deadline.
    pub fn retirement_time(&self) -> Option<Timestamp> {
        self.retired_at.or(self.deadline)
    }
}

/// The key material of a new version, generated by the caller (randomness is not the core's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// Its kid.
    pub kid: Kid,
    /// SHA-256 of its secret.
    pub secret_hash: SecretHash,
    /// Fingerprint of the whole key.
    pub fingerprint: Fingerprint,
    /// Optional hard expiry.
    pub expires_at: Option<Timestamp>,
}

/// One consumer in one environment and all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Its environment.
    pub environment: Environment,
    /// Its name.
    pub name: ConsumerName,
    /// Granted scopes, sorted and without duplicates.
    pub scopes: Vec<Scope>,
    /// Who to call about it.
    pub owner: Option<String>,
    /// Switched off: every key is rejected as `consumer_disabled`.
    pub disabled: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// Versions in issue order.
    pub versions: Vec<KeyVersion>,
}

/// What can happen to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Issue the next version; older valid versions retire after `grace` (zero: at once).
    Rotate {
        /// The grace window.
        grace: Duration,
        /// Retire exactly at the deadline, whatever traffic says.
        enforce: bool,
        /// The new key material.
        new_version: NewVersion,
    },
    /// End a retiring version's grace window now.
    Retire {
        /// Which version.
        version: VersionNumber,
    },
    /// Withdraw a version at once (leaks). Never gated.
    Revoke {
        /// Which version.
        version: VersionNumber,
        /// Why; recorded and shown in rejections.
        reason: String,
    },
    /// Reject every key of the consumer.
    Disable,
    /// Undo [`Command::Disable`].
    Enable,
    /// Write down what time has already decided: retiring versions past their deadline.
    Settle,
}

/// What a command changed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A version was issued.
    Issued(VersionNumber),
    /// A version started retiring (or its deadline moved earlier).
    Retiring {
        /// Which.
        version: VersionNumber,
        /// Until when it works.
        deadline: Timestamp,
    },
    /// A version was retired.
    Retired(VersionNumber),
    /// A version was revoked.
    Revoked(VersionNumber),
    /// The consumer was disabled.
    Disabled,
    /// The consumer was enabled.
    Enabled,
}

impl Effect {
    /// A stable event name for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Issued(_) => "version.issued",
            Effect::Retiring { .. } => "version.retiring",
            Effect::Retired(_) => "version.retired",
            Effect::Revoked(_) => "version.revoked",
            Effect::Disabled => "consumer.disabled",
            Effect::Enabled => "consumer.enabled",
        }
    }
}

/// The result of a command: the next state and what changed. No effects means nothing to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The consumer after the command.
    pub consumer: Consumer,
    /// What changed.
    pub effects: Vec<Effect>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// No such version.
    #[error("{consumer} has no version {version}")]
    UnknownVersion {
        /// `ENV/NAME`.
        consumer: String,
        /// The version asked for.
        version: VersionNumber,
    },
    /// Retiring the active version would leave the consumer without a valid key.
    #[error(
        "{version} is the active version of {consumer}; rotate first, then retire the old version"
    )]
    RetireActive {
        /// `ENV/NAME`.
        consumer: String,
        /// The active version.
        version: VersionNumber,
    },
    /// The version cannot move to the asked state from the one it is in.
    #[error("{version} of {consumer} is {state}; only a retiring version can be retired")]
    NotRetiring {
        /// `ENV/NAME`.
        consumer: String,
        /// The version.
        version: VersionNumber,
        /// Its state now.
        state: &'static str,
    },
    /// A revocation needs a reason: it is what the next person reads.
    #[error("a revocation needs a reason (1 to 500 characters)")]
    BadRevokeReason,
    /// No more version numbers.
    #[error("{consumer} has used every version number")]
    VersionsExhausted {
        /// `ENV/NAME`.
        consumer: String,
    },
}

impl Consumer {
    /// A new consumer whose `v1` is active.
    pub fn create(
        environment: Environment,
        name: ConsumerName,
        mut scopes: Vec<Scope>,
        owner: Option<String>,
        first: NewVersion,
        now: Timestamp,
    ) -> Consumer {
        scopes.sort();
        scopes.dedup();
        Consumer {
            environment,
            name,
            scopes,
            owner,
            disabled: false,
            created_at: now,
            versions: vec![KeyVersion {
                number: VersionNumber(1),
                kid: first.kid,
                secret_hash: first.secret_hash,
                fingerprint: first.fingerprint,
                state: StoredState::Active,
                created_at: now,
                deadline: None,
                expires_at: first.expires_at,
                retired_at: None,
                revoked_at: None,
                revoke_reason: None,
                replaced_by: None,
                enforced: false,
            }],
        }
    }

    /// `ENV/NAME`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.environment, self.name)
    }

    /// The current active version, if any.
    pub fn active_version(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == StoredState::Active)
    }

    /// A version by number.
    pub fn version(&self, number: VersionNumber) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// Whether any version is accepted at `now`.
    pub fn has_valid_version(&self, now: Timestamp) -> bool {
        self.versions.iter().any(|v| v.state_at(now).is_valid())
    }

    /// Applies a command at `now`.
    pub fn apply(&self, command: Command, now: Timestamp) -> Result<Transition, LifecycleError> {
        let mut next = self.clone();
        let mut effects = Vec::new();
        // Every command starts from a settled state, so effects never mix "what time did" with
        // "what the command did" out of order.
        next.settle(now, &mut effects);
        match command {
            Command::Settle => {}
            Command::Disable => {
                if !next.disabled {
                    next.disabled = true;
                    effects.push(Effect::Disabled);
                }
            }
            Command::Enable => {
                if next.disabled {
                    next.disabled = false;
                    effects.push(Effect::Enabled);
                }
            }
            Command::Rotate {
                grace,
                enforce,
                new_version,
            } => {
                next.rotate(grace, enforce, new_version, now, &mut effects)?;
            }
            Command::Retire { version } => next.retire(version, now, &mut effects)?,
            Command::Revoke { version, reason } => {
                next.revoke(version, reason, now, &mut effects)?
            }
        }
        Ok(Transition {
            consumer: next,
            effects,
        })
    }

    fn settle(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        for v in &mut self.versions {
            if v.state == StoredState::Retiring && v.deadline.is_some_and(|d| now >= d) {
                v.state = StoredState::Retired;
                v.retired_at = v.deadline;
                effects.push(Effect::Retired(v.number));
            }
        }
    }

    fn rotate(
        &mut self,
        grace: Duration,
        enforce: bool,
        new: NewVersion,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LifecycleError> {
        let last = self.versions.iter().map(|v| v.number.0).max().unwrap_or(0);
        let number = last.checked_add(1).map(VersionNumber).ok_or_else(|| {
            LifecycleError::VersionsExhausted {
                consumer: self.reference(),
            }
        })?;
        let deadline = now.saturating_add(grace);
        for v in &mut self.versions {
            if !matches!(v.state, StoredState::Active | StoredState::Retiring) {
                continue;
            }
            v.replaced_by = Some(number);
            v.enforced |= enforce;
            if grace.is_zero() {
                v.state = StoredState::Retired;
                v.retired_at = Some(now);
                v.deadline = Some(v.deadline.map_or(now, |d| d.min(now)));
                effects.push(Effect::Retired(v.number));
            } else {
                // A second rotation never extends an earlier deadline.
                let d = v.deadline.map_or(deadline, |d| d.min(deadline));
                v.state = StoredState::Retiring;
                v.deadline = Some(d);
                effects.push(Effect::Retiring {
                    version: v.number,
                    deadline: d,
                });
            }
        }
        self.versions.push(KeyVersion {
            number,
            kid: new.kid,
            secret_hash: new.secret_hash,
            fingerprint: new.fingerprint,
            state: StoredState::Active,
            created_at: now,
            deadline: None,
            expires_at: new.expires_at,
            retired_at: None,
            revoked_at: None,
            revoke_reason: None,
            replaced_by: None,
            enforced: false,
        });
        effects.push(Effect::Issued(number));
        Ok(())
    }

    fn version_mut(&mut self, number: VersionNumber) -> Result<&mut KeyVersion, LifecycleError> {
        let consumer = self.reference();
        self.versions.iter_mut().find(|v| v.number == number).ok_or(
            LifecycleError::UnknownVersion {
                consumer,
                version: number,
            },
        )
    }

    fn retire(
        &mut self,
        number: VersionNumber,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LifecycleError> {
        let consumer = self.reference();
        let v = self.version_mut(number)?;
        match v.state_at(now) {
            State::Retiring => {
                v.state = StoredState::Retired;
                v.retired_at = Some(now);
                v.deadline = Some(now);
                effects.push(Effect::Retired(number));
                Ok(())
            }
            // Retiring what is already retired is a no-op, so retries are harmless.
            State::Retired => Ok(()),
            State::Active => Err(LifecycleError::RetireActive {
                consumer,
                version: number,
            }),
            other => Err(LifecycleError::NotRetiring {
                consumer,
                version: number,
                state: other.as_str(),
            }),
        }
    }

    fn revoke(
        &mut self,
        number: VersionNumber,
        reason: String,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LifecycleError> {
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(LifecycleError::BadRevokeReason);
        }
        let v = self.version_mut(number)?;
        if v.state == StoredState::Revoked {
            // Already revoked: keep the first time and reason, they are the useful ones.
            return Ok(());
        }
        v.state = StoredState::Revoked;
        v.revoked_at = Some(now);
        v.revoke_reason = Some(reason);
        effects.push(Effect::Revoked(number));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
