//! keyroll's pure core: the key format, names, decisions and the key-version lifecycle.
//!
//! Architecture invariant: nothing in this crate does IO, reads a clock, spawns, allocates a
//! random number by itself or knows about JSON. Time comes in as a [`Timestamp`] argument and
//! randomness through the [`Entropy`] trait, so every rule here is a plain function that tests
//! can drive to any instant.

pub mod audit_chain;
pub mod base62;
pub mod ca_timeline;
pub mod decision;
pub mod duration;
pub mod key;
pub mod lifecycle;
pub mod names;
pub mod redact;
pub mod status;
pub mod timestamp;

pub use decision::{ConsumerFacts, Decision, DecisionCode, judge};
pub use duration::{DurationError, format_duration, parse_duration};
pub use key::{
    Entropy, EntropyUnavailable, Fingerprint, IssuedKey, KeyShapedRun, Kid, MalformedKey,
    ParsedKey, SecretHash, assemble_key, fingerprint, issue_key, key_shaped_runs, parse_key,
    random_base62,
};
pub use lifecycle::{AgentAction, RotateReason, agent_action, holds_active};
pub use lifecycle::{
    Blocker, DEFAULT_GRACE, Delivery, EXPIRY_WARNING, ManagedSpec, Schedule, ScheduleState,
    Waiting, expiring_versions, next_due, ordering_waits, schedule_state,
};
pub use lifecycle::{
    Command, Consumer, ConsumerSpec, ConsumerUpdate, Effect, KeyVersion, LifecycleError,
    NewVersion, OnStall, Policy, RetirePolicy, RetireReason, State, StoredState, Transition, Usage,
    VersionNumber, VersionView, effective_deadline, effective_state, extension_if_stalled,
    is_extended_at, is_stalled, shown_deadline,
};
pub use names::{ConsumerName, ConsumerRef, Environment, NameError, Scope};
pub use redact::redact_url;
pub use status::{Verdict, VersionFacts, verdict};
pub use timestamp::{Timestamp, http_date, parse_rfc3339, rfc3339};
