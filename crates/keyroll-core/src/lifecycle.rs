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
//! Usage-gated retirement (SPEC §3): traffic facts (when each version was last seen) are an input,
//! never a side effect. At its deadline a retiring version that was still seen within the
//! consumer's `idle` window is *stalled*: it keeps working until `deadline + grace`, once. This
//! rule is a pure function of the stored deadline, the grace, `idle` and the last use, so the hot
//! path ([`effective_state`]) and the sweeper ([`Command::Settle`], which writes the extension and
//! the early `when-idle` retirements down) always agree, whichever runs first.

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

/// How a consumer's old versions are retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetirePolicy {
    /// Retire early once the newer version is seen and the old one has been idle for `idle`.
    WhenIdle,
    /// No early retirement: retiring versions work until their deadline.
    AtDeadline,
}

impl RetirePolicy {
    /// `when-idle` / `at-deadline`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RetirePolicy::WhenIdle => "when-idle",
            RetirePolicy::AtDeadline => "at-deadline",
        }
    }

    /// Parses [`RetirePolicy::as_str`].
    pub fn parse(input: &str) -> Option<RetirePolicy> {
        match input {
            "when-idle" => Some(RetirePolicy::WhenIdle),
            "at-deadline" => Some(RetirePolicy::AtDeadline),
            _ => None,
        }
    }
}

/// What happens at the deadline of a version that is still in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnStall {
    /// Extend the deadline once by the grace window, and say so loudly.
    Extend,
    /// Retire anyway.
    Retire,
}

impl OnStall {
    /// `extend` / `retire`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnStall::Extend => "extend",
            OnStall::Retire => "retire",
        }
    }

    /// Parses [`OnStall::as_str`].
    pub fn parse(input: &str) -> Option<OnStall> {
        match input {
            "extend" => Some(OnStall::Extend),
            "retire" => Some(OnStall::Retire),
            _ => None,
        }
    }
}

/// A consumer's retirement settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Early retirement or not.
    pub retire: RetirePolicy,
    /// How long a version must go unseen to count as idle (default 1h).
    pub idle: Duration,
    /// What a deadline does to a version still in use.
    pub on_stall: OnStall,
}

/// The idle window of a consumer that names none.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retire: RetirePolicy::WhenIdle,
            idle: DEFAULT_IDLE,
            on_stall: OnStall::Extend,
        }
    }
}

/// What deciding a version's state needs: the stored facts and its last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionView {
    /// Stored state.
    pub state: StoredState,
    /// While retiring: the stored deadline.
    pub deadline: Option<Timestamp>,
    /// Hard expiry.
    pub expires_at: Option<Timestamp>,
    /// The grace window of the rotation that made it retiring (the stall extension).
    pub grace: Duration,
    /// Its deadline was already extended once.
    pub extended: bool,
    /// Retire exactly at the deadline (`rotate --enforce`).
    pub enforced: bool,
    /// When it was last seen in allowed traffic.
    pub last_used: Option<Timestamp>,
}

/// Whether a retiring version is stalled: at its deadline it was still seen within `idle`, and
/// nothing forbids the one extension.
pub fn is_stalled(v: &VersionView, policy: &Policy) -> bool {
    let (Some(deadline), Some(last)) = (v.deadline, v.last_used) else {
        return false;
    };
    v.state == StoredState::Retiring
        && !v.extended
        && !v.enforced
        && policy.on_stall == OnStall::Extend
        && !v.grace.is_zero()
        && last >= deadline.saturating_sub(policy.idle)
}

/// When a retiring version stops working: its deadline, or `deadline + grace` when stalled.
pub fn effective_deadline(v: &VersionView, policy: &Policy) -> Option<Timestamp> {
    let deadline = v.deadline?;
    Some(if is_stalled(v, policy) {
        deadline.saturating_add(v.grace)
    } else {
        deadline
    })
}

/// The deadline to show at `now`: the stored one, until a stall's extension has happened (the
/// stored deadline passed while the version was still in use), then the extended one. Before its
/// deadline a version in use is only *predicted* to be extended: that is
/// [`extension_if_stalled`], never the deadline shown, so every caller (API, status, verify,
/// `Sunset`) says the same thing as the rotation and its event did.
pub fn shown_deadline(v: &VersionView, policy: &Policy, now: Timestamp) -> Option<Timestamp> {
    match v.state {
        StoredState::Retiring if is_extended_at(v, policy, now) && !v.extended => {
            effective_deadline(v, policy)
        }
        _ => v.deadline,
    }
}

/// Whether a version is on (or has had) its one extension at `now`: written down, or decided by
/// the stall rule once its stored deadline has passed.
pub fn is_extended_at(v: &VersionView, policy: &Policy, now: Timestamp) -> bool {
    v.extended || (is_stalled(v, policy) && v.deadline.is_some_and(|d| now >= d))
}

/// The prediction to state in words while it has not happened: the deadline a retiring version
/// would get if it is still in use (seen within `idle` before it) at its stored deadline. `None`
/// when no extension can come: not retiring, already extended (or past the deadline), enforced,
/// `on_stall = retire`, or no grace.
pub fn extension_if_stalled(v: &VersionView, policy: &Policy, now: Timestamp) -> Option<Timestamp> {
    let deadline = v.deadline?;
    (v.state == StoredState::Retiring
        && !v.extended
        && !v.enforced
        && policy.on_stall == OnStall::Extend
        && !v.grace.is_zero()
        && now < deadline)
        .then(|| deadline.saturating_add(v.grace))
}

/// The state of a version at `now`. Revocation wins over expiry (it is the more useful thing to
/// tell someone handling a leak), expiry over retirement; a retiring version past its
/// (effective) deadline is retired whether or not anything wrote that down yet.
#[inline]
pub fn effective_state(v: &VersionView, policy: &Policy, now: Timestamp) -> State {
    if v.state == StoredState::Revoked {
        return State::Revoked;
    }
    if v.expires_at.is_some_and(|at| now >= at) {
        return State::Expired;
    }
    match v.state {
        StoredState::Active => State::Active,
        StoredState::Retiring => match v.deadline {
            Some(d) if now >= d => match effective_deadline(v, policy) {
                Some(extended) if now < extended => State::Retiring,
                _ => State::Retired,
            },
            _ => State::Retiring,
        },
        StoredState::Retired => State::Retired,
        StoredState::Revoked => State::Revoked,
    }
}

/// When each version was last seen in allowed traffic: the usage facts commands decide with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage<'a> {
    last_seen: &'a [(VersionNumber, Timestamp)],
}

impl<'a> Usage<'a> {
    /// No usage known (every version unseen).
    pub const NONE: Usage<'static> = Usage { last_seen: &[] };

    /// Usage from `(version, last seen)` pairs.
    pub fn new(last_seen: &'a [(VersionNumber, Timestamp)]) -> Usage<'a> {
        Usage { last_seen }
    }

    /// When `version` was last seen.
    pub fn last_seen(&self, version: VersionNumber) -> Option<Timestamp> {
        self.last_seen
            .iter()
            .filter(|(n, _)| *n == version)
            .map(|(_, t)| *t)
            .max()
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
    /// The grace window of the rotation that made it retiring: the stall extension.
    pub grace: Duration,
    /// The deadline was extended once because the version was still in use (stalled).
    pub extended: bool,
    /// A `version.unused` event was recorded for it (nobody used it 24h after issue).
    pub unused_reported: bool,
    /// While active: a `rotation.due` event was raised for it (once per version).
    pub due_raised: bool,
    /// A `key.expiring` event was raised for its hard expiry (once).
    pub expiry_warned: bool,
    /// While active: an operator asked its agents to rotate it (`rotate --via-agent`), since
    /// then. The next version does not carry it, so a rotation answers the request.
    pub rotation_requested: Option<Timestamp>,
}

/// How long after its issue an unused active version is reported.
pub const UNUSED_AFTER: Duration = Duration::from_secs(24 * 3600);

impl KeyVersion {
    /// The facts [`effective_state`] decides from.
    pub fn view(&self, last_used: Option<Timestamp>) -> VersionView {
        VersionView {
            state: self.state,
            deadline: self.deadline,
            expires_at: self.expires_at,
            grace: self.grace,
            extended: self.extended,
            enforced: self.enforced,
            last_used,
        }
    }

    /// The state at `now`, given its last use and the consumer's policy.
    pub fn state_with(
        &self,
        policy: &Policy,
        last_used: Option<Timestamp>,
        now: Timestamp,
    ) -> State {
        effective_state(&self.view(last_used), policy, now)
    }

    /// The state at `now` when nothing is known of its use (no stall possible).
    pub fn state_at(&self, now: Timestamp) -> State {
        self.state_with(&Policy::default(), None, now)
    }

    /// The deadline to show at `now`, given its last use: see [`shown_deadline`]; once retired,
    /// when it was.
    pub fn deadline_with(
        &self,
        policy: &Policy,
        last_used: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        match self.state {
            StoredState::Retiring => shown_deadline(&self.view(last_used), policy, now),
            _ => self.retirement_time(),
        }
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
    /// How its old versions are retired.
    pub policy: Policy,
    /// When it rotates by itself and how its new keys are delivered.
    pub schedule: Schedule,
    /// The settings the last policy `apply` left it with; `None`: not managed by a policy.
    pub managed: Option<ManagedSpec>,
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
    /// Change what the consumer may do and who owns it: scopes, owner, retirement policy.
    Update(ConsumerUpdate),
    /// Write down what time has already decided: retiring versions past their deadline.
    Settle,
    /// Record that the active version's scheduled rotation fell due (`rotation.due`, once per
    /// version). Only the schedule's runner sends it, when [`schedule_state`] says due or blocked.
    RaiseDue {
        /// Since when it is due.
        due_at: Timestamp,
    },
    /// Ask the consumer's agents to rotate the active version now (`rotation.requested`; a
    /// repeated request while one is open changes nothing).
    RequestRotation,
    /// Record that this version was delivered to an agent but has not been seen in traffic
    /// since (the app did not reload): `version.unused`, once per version, like the 24 h rule.
    ReportUnseen {
        /// Which.
        version: VersionNumber,
    },
    /// Record that these versions' hard expiry is near (`key.expiring`, once per version).
    WarnExpiring {
        /// The versions ([`expiring_versions`]).
        versions: Vec<VersionNumber>,
    },
}

/// The fields [`Command::Update`] changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerUpdate {
    /// The new scopes (sorted and deduplicated when applied).
    pub scopes: Option<Vec<Scope>>,
    /// The new owner (`Some(None)` clears it).
    pub owner: Option<Option<String>>,
    /// The new retirement policy.
    pub policy: Option<Policy>,
    /// The new schedule.
    pub schedule: Option<Schedule>,
    /// `Some(true)`: record the settings after this update as the policy's baseline;
    /// `Some(false)`: no longer managed by a policy.
    pub managed: Option<bool>,
}

/// What a new consumer is: everything but its first key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Its environment.
    pub environment: Environment,
    /// Its name.
    pub name: ConsumerName,
    /// Granted scopes (sorted and deduplicated on creation).
    pub scopes: Vec<Scope>,
    /// Who to call about it.
    pub owner: Option<String>,
    /// Its retirement policy.
    pub policy: Policy,
    /// Its schedule.
    pub schedule: Schedule,
    /// Created by a policy `apply`: its settings become the policy's baseline.
    pub managed: bool,
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
    Retired {
        /// Which.
        version: VersionNumber,
        /// Why.
        reason: RetireReason,
    },
    /// A retiring version was still in use at its deadline: extended once.
    Stalled {
        /// Which.
        version: VersionNumber,
        /// The deadline it had.
        deadline: Timestamp,
        /// The new deadline (`deadline + grace`), after which it is retired regardless.
        until: Timestamp,
    },
    /// An active version nobody has used 24h after it was issued.
    Unused(VersionNumber),
    /// A version was revoked.
    Revoked(VersionNumber),
    /// The consumer was disabled.
    Disabled,
    /// The consumer was enabled.
    Enabled,
    /// The consumer was created (its first version is a separate [`Effect::Issued`]).
    Created,
    /// Scopes, owner, policy, schedule or the policy baseline changed.
    Updated,
    /// The active version's scheduled rotation fell due.
    Due {
        /// The active version.
        version: VersionNumber,
        /// Since when.
        due_at: Timestamp,
    },
    /// An operator asked the agents to rotate this active version.
    RotationRequested(VersionNumber),
    /// A version's hard expiry is within [`EXPIRY_WARNING`].
    Expiring {
        /// Which.
        version: VersionNumber,
        /// Its expiry.
        expires_at: Timestamp,
    },
}

impl Effect {
    /// The version it is about, if it is about one.
    pub fn version(&self) -> Option<VersionNumber> {
        match self {
            Effect::Issued(v)
            | Effect::Unused(v)
            | Effect::Revoked(v)
            | Effect::RotationRequested(v) => Some(*v),
            Effect::Retiring { version, .. }
            | Effect::Retired { version, .. }
            | Effect::Stalled { version, .. }
            | Effect::Due { version, .. }
            | Effect::Expiring { version, .. } => Some(*version),
            Effect::Disabled | Effect::Enabled | Effect::Created | Effect::Updated => None,
        }
    }

    /// A stable event name for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Issued(_) => "version.issued",
            Effect::Retiring { .. } => "version.retiring",
            Effect::Retired { .. } => "version.retired",
            Effect::Stalled { .. } => "rotation.stalled",
            Effect::Unused(_) => "version.unused",
            Effect::Revoked(_) => "version.revoked",
            Effect::Disabled => "consumer.disabled",
            Effect::Enabled => "consumer.enabled",
            Effect::Due { .. } => "rotation.due",
            Effect::RotationRequested(_) => "rotation.requested",
            Effect::Expiring { .. } => "key.expiring",
            Effect::Created => "consumer.created",
            Effect::Updated => "consumer.updated",
        }
    }
}

/// Why a version was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    /// Its (possibly extended) deadline passed.
    Deadline,
    /// `when-idle`: the newer version is in use and this one went quiet.
    Idle,
    /// An operator ended its grace window (`retire`).
    Operator,
    /// Rotated with grace `0`.
    Rotation,
}

impl RetireReason {
    /// A stable name for events and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RetireReason::Deadline => "deadline",
            RetireReason::Idle => "idle",
            RetireReason::Operator => "operator",
            RetireReason::Rotation => "rotation",
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
    /// Nothing to rotate: the consumer has no active version (its newest was revoked or expired).
    #[error("there is no active version to rotate; rotate the consumer to issue one")]
    NoActiveVersion,
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
            policy: Policy::default(),
            schedule: Schedule::default(),
            managed: None,
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
                grace: Duration::ZERO,
                extended: false,
                unused_reported: false,
                due_raised: false,
                expiry_warned: false,
                rotation_requested: None,
            }],
        }
    }

    /// The command form of creation: the new consumer with `v1` active, and its effects
    /// (`Created`, then `Issued(v1)`), so a creation is written, audited and announced through the
    /// same path as every other change.
    pub fn created(spec: ConsumerSpec, first: NewVersion, now: Timestamp) -> Transition {
        let mut consumer = Consumer::create(
            spec.environment,
            spec.name,
            spec.scopes,
            spec.owner,
            first,
            now,
        );
        consumer.policy = spec.policy;
        consumer.schedule = spec.schedule;
        if spec.managed {
            consumer.managed = Some(ManagedSpec::of(&consumer));
        }
        Transition {
            consumer,
            effects: vec![Effect::Created, Effect::Issued(VersionNumber(1))],
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

    /// Active versions besides the newest active one: empty unless the stored state breaks the
    /// SPEC §3 invariant (at most one active version), which no command produces but a manual
    /// edit or a restored backup can.
    pub fn extra_active_versions(&self) -> Vec<VersionNumber> {
        let newest = self.active_version().map(|v| v.number);
        self.versions
            .iter()
            .filter(|v| v.state == StoredState::Active && Some(v.number) != newest)
            .map(|v| v.number)
            .collect()
    }

    /// A version by number.
    pub fn version(&self, number: VersionNumber) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// Whether any version is accepted at `now`, given what is known of their use.
    pub fn has_valid_version(&self, usage: &Usage<'_>, now: Timestamp) -> bool {
        self.versions.iter().any(|v| {
            v.state_with(&self.policy, usage.last_seen(v.number), now)
                .is_valid()
        })
    }

    /// Applies a command at `now`, knowing when each version was last seen.
    pub fn apply(
        &self,
        command: Command,
        usage: &Usage<'_>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        let mut next = self.clone();
        let mut effects = Vec::new();
        // Every command starts from a settled state, so effects never mix "what time did" with
        // "what the command did" out of order.
        next.settle(usage, now, &mut effects);
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
            Command::Update(update) => {
                let before = next.clone();
                if let Some(mut scopes) = update.scopes {
                    scopes.sort();
                    scopes.dedup();
                    next.scopes = scopes;
                }
                if let Some(owner) = update.owner {
                    next.owner = owner;
                }
                if let Some(policy) = update.policy {
                    next.policy = policy;
                }
                if let Some(schedule) = update.schedule {
                    next.schedule = schedule;
                }
                match update.managed {
                    Some(true) => next.managed = Some(ManagedSpec::of(&next)),
                    Some(false) => next.managed = None,
                    None => {}
                }
                if next != before {
                    effects.push(Effect::Updated);
                }
            }
            Command::RaiseDue { due_at } => {
                if let Some(v) = next
                    .versions
                    .iter_mut()
                    .rev()
                    .find(|v| v.state == StoredState::Active)
                    && !v.due_raised
                {
                    v.due_raised = true;
                    effects.push(Effect::Due {
                        version: v.number,
                        due_at,
                    });
                }
            }
            Command::RequestRotation => {
                let v = next
                    .versions
                    .iter_mut()
                    .rev()
                    .find(|v| v.state == StoredState::Active)
                    .ok_or(LifecycleError::NoActiveVersion)?;
                if v.rotation_requested.is_none() {
                    v.rotation_requested = Some(now);
                    effects.push(Effect::RotationRequested(v.number));
                }
            }
            Command::ReportUnseen { version } => {
                if let Some(v) = next.versions.iter_mut().find(|v| v.number == version)
                    && v.state == StoredState::Active
                    && !v.unused_reported
                {
                    v.unused_reported = true;
                    effects.push(Effect::Unused(version));
                }
            }
            Command::WarnExpiring { versions } => {
                for v in next.versions.iter_mut() {
                    if versions.contains(&v.number)
                        && !v.expiry_warned
                        && let Some(expires_at) = v.expires_at
                    {
                        v.expiry_warned = true;
                        effects.push(Effect::Expiring {
                            version: v.number,
                            expires_at,
                        });
                    }
                }
            }
            Command::Retire { version } => next.retire(version, usage, now, &mut effects)?,
            Command::Revoke { version, reason } => {
                next.revoke(version, reason, now, &mut effects)?
            }
        }
        Ok(Transition {
            consumer: next,
            effects,
        })
    }

    fn settle(&mut self, usage: &Usage<'_>, now: Timestamp, effects: &mut Vec<Effect>) {
        let policy = self.policy;
        let active = self.active_version().map(|v| v.number);
        for i in 0..self.versions.len() {
            let v = &self.versions[i];
            if v.state != StoredState::Retiring {
                continue;
            }
            let Some(deadline) = v.deadline else { continue };
            let view = v.view(usage.last_seen(v.number));
            let number = v.number;
            if now >= deadline {
                if is_stalled(&view, &policy) {
                    let until = deadline.saturating_add(view.grace);
                    let v = &mut self.versions[i];
                    v.deadline = Some(until);
                    v.extended = true;
                    effects.push(Effect::Stalled {
                        version: number,
                        deadline,
                        until,
                    });
                    if now < until {
                        continue;
                    }
                }
                let v = &mut self.versions[i];
                v.state = StoredState::Retired;
                v.retired_at = v.deadline;
                effects.push(Effect::Retired {
                    version: number,
                    reason: RetireReason::Deadline,
                });
                continue;
            }
            // `when-idle`: retire early once a newer version is in use and this one went quiet.
            let newer_seen = self
                .versions
                .iter()
                .any(|n| n.number > number && usage.last_seen(n.number).is_some());
            let quiet_since = view.last_used.unwrap_or(v.created_at);
            if policy.retire == RetirePolicy::WhenIdle
                && !view.enforced
                && newer_seen
                && now.duration_since(quiet_since) >= policy.idle
            {
                let v = &mut self.versions[i];
                v.state = StoredState::Retired;
                v.retired_at = Some(now);
                v.deadline = Some(now);
                effects.push(Effect::Retired {
                    version: number,
                    reason: RetireReason::Idle,
                });
            }
        }
        // An active version nobody adopted a day after it was issued: say so once.
        if let Some(n) = active
            && let Some(v) = self.versions.iter_mut().find(|v| v.number == n)
            && !v.unused_reported
            && usage.last_seen(n).is_none()
            && now.duration_since(v.created_at) >= UNUSED_AFTER
        {
            v.unused_reported = true;
            effects.push(Effect::Unused(n));
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
                effects.push(Effect::Retired {
                    version: v.number,
                    reason: RetireReason::Rotation,
                });
            } else {
                // The extension a stall gets is the grace of the rotation that started it.
                if v.state == StoredState::Active {
                    v.grace = grace;
                }
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
            grace: Duration::ZERO,
            extended: false,
            unused_reported: false,
            due_raised: false,
            expiry_warned: false,
            rotation_requested: None,
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
        usage: &Usage<'_>,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LifecycleError> {
        let consumer = self.reference();
        let policy = self.policy;
        let v = self.version_mut(number)?;
        match v.state_with(&policy, usage.last_seen(number), now) {
            State::Retiring => {
                v.state = StoredState::Retired;
                v.retired_at = Some(now);
                v.deadline = Some(now);
                effects.push(Effect::Retired {
                    version: number,
                    reason: RetireReason::Operator,
                });
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

// Which versions `Settle` has something to write down for, as a pure function of plain facts (the
// sweeper's scan of the verifier's index decides with it).
mod due;
pub use due::{DueFacts, consumer_is_due, is_due};

// When rotations fall due, whether they may run, which versions near their expiry.
pub mod agent;
pub mod schedule;
pub use agent::{AgentAction, RotateReason, agent_action, holds_active};
pub use schedule::{
    Blocker, DEFAULT_GRACE, Delivery, EXPIRY_WARNING, ManagedSpec, Schedule, ScheduleState,
    Waiting, expiring_versions, next_due, ordering_waits, schedule_state,
};
