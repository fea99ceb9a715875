//! The service layer: the one write path every writer uses — admin handlers today; the sweeper,
//! and next the scheduler, policy `apply`, the agent's self-rotation and change propagation.
//!
//! A change is: read the consumer → `Consumer::apply` (pure, at `now` from the injected clock)
//! → one store transaction (state, audit entries, events, idempotency record, guarded by the
//! consumer's revision) → index update → effects (lifecycle log lines, metrics). A concurrent
//! writer makes the transaction fail with a conflict and the whole step is recomputed from fresh
//! state. Nothing here knows HTTP: callers pass an [`Actor`] and, for requests, an
//! [`Idempotency`]; errors are [`ServiceError`]s; answers are JSON values the caller renders
//! (the same value is what an idempotent replay returns).

pub mod audit;
pub mod ca;
mod consumers;
pub mod delivery;
mod effects;
mod environments;
pub mod error;
pub mod idempotency;
pub mod tokens;
pub mod webhooks;

use keyroll_core::{
    Consumer, ConsumerRef, Effect, Environment, IssuedKey, NewVersion, Timestamp, VersionNumber,
    issue_key,
};
use serde_json::Value;

pub use audit::Actor;
pub use consumers::{change, create_consumer, rotate, settle};
pub use environments::{EnvironmentChange, create_environment, update_environment};
pub use error::ServiceError;
pub use idempotency::{Idempotency, Replayed};

use crate::clock::Randomness;
use crate::state::AppState;

/// How often a change is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 5;

/// Who asks, and the idempotency key of the request if it had one.
#[derive(Debug)]
pub struct Request {
    /// Who acts (audit actor, request id, client address).
    pub actor: Actor,
    /// The request's `Idempotency-Key` and fingerprint.
    pub idempotency: Option<Idempotency>,
}

impl Request {
    /// keyroll itself, with no idempotency key.
    pub fn system() -> Request {
        Request {
            actor: Actor::system(crate::request_id::new_request_id()),
            idempotency: None,
        }
    }
}

/// What a rotation asks for.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// How long older valid versions keep working.
    pub grace: std::time::Duration,
    /// Retire exactly at the deadline, whatever traffic says.
    pub enforce: bool,
    /// A hard expiry of the new key, after its issue.
    pub expires_in: Option<std::time::Duration>,
}

/// A computed change to one consumer, before it is written.
#[derive(Debug)]
pub struct Planned {
    /// The consumer after the change.
    pub consumer: Consumer,
    /// What changed, in order (empty with an unchanged consumer: nothing is written).
    pub effects: Vec<Effect>,
    /// The new key, when the change issued one (shown once; sealed for replays).
    pub issued: Option<IssuedKey>,
    /// The new key sealed for the other holders of the key that asked (an agent's rotation).
    pub handover: Option<keyroll_store::HandoverRecord>,
}

impl Planned {
    /// A lifecycle transition that issued no key.
    pub fn from_transition(t: keyroll_core::Transition) -> Planned {
        Planned {
            consumer: t.consumer,
            effects: t.effects,
            issued: None,
            handover: None,
        }
    }
}

/// What a change answered.
#[derive(Debug)]
pub enum Answer {
    /// Done now: the answer (with the new key, if any) and the effects written.
    Fresh {
        /// The answer as the caller rendered it.
        body: Value,
        /// What was written.
        effects: Vec<Effect>,
        /// The consumer's last change in the change log: this one's, or (when nothing had to
        /// be written) the one that already left it so. What `?wait=` waits for.
        change_seq: i64,
    },
    /// An earlier request with the same `Idempotency-Key` was answered: its answer again.
    Replayed(Replayed),
}

/// What to do and how to describe it in the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The command's name in audit entries (`rotate`, `revoke`, `consumer.update`, …).
    pub command: &'static str,
    /// Its parameters, as audited.
    pub params: &'a Value,
    /// The status the caller answers with, remembered for replays.
    pub status: u16,
}

/// When each version of `consumer` was last seen, as this node's index knows it.
pub fn usage_of(state: &AppState, consumer: &Consumer) -> Vec<(VersionNumber, Timestamp)> {
    consumer
        .versions
        .iter()
        .filter_map(|v| state.index.last_used(&v.kid).map(|t| (v.number, t)))
        .collect()
}

/// A new key for `environment` and the version that holds its hash.
pub fn issue(
    randomness: &Randomness,
    environment: &Environment,
    expires_at: Option<Timestamp>,
) -> Result<(IssuedKey, NewVersion), ServiceError> {
    let key = issue_key(environment, &mut randomness.entropy()).map_err(|e| {
        tracing::error!(event = "entropy.unavailable", error = %e, "cannot issue a key");
        ServiceError::EntropyUnavailable(e.to_string())
    })?;
    let v = NewVersion {
        kid: key.kid,
        secret_hash: key.secret_hash,
        fingerprint: key.fingerprint,
        expires_at,
    };
    Ok((key, v))
}

/// The grace a rotation of `r` gets when the request names none: the consumer's scheduled
/// grace if it has one, else the server's `[rotation] default_grace`.
pub async fn default_grace(
    state: &AppState,
    r: &ConsumerRef,
) -> Result<std::time::Duration, ServiceError> {
    let stored = state
        .store
        .get_consumer(r)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("consumer {r} does not exist")))?;
    Ok(stored
        .consumer
        .schedule
        .grace
        .unwrap_or(state.config.default_grace))
}

/// Refuses a change in a protected environment that was not confirmed.
pub async fn require_confirmation(
    state: &AppState,
    r: &ConsumerRef,
    confirmed: bool,
    action: &str,
) -> Result<(), ServiceError> {
    if confirmed {
        return Ok(());
    }
    let protected = state
        .store
        .get_environment(&r.environment)
        .await?
        .is_some_and(|e| e.protected);
    if !protected {
        return Ok(());
    }
    let urgency = if action == "revoke" {
        " Revoke is immediate once confirmed: run the same command again with --yes."
    } else {
        ""
    };
    Err(ServiceError::ConfirmationRequired(format!(
        "environment {} is protected: {action} of {r} needs explicit confirmation; repeat with \
         --yes (CLI) or \"confirm\": true in the JSON body.{urgency}",
        r.environment
    )))
}
