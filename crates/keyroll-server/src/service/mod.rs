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
pub mod error;
pub mod idempotency;
pub mod tokens;

use std::time::Duration;

use keyroll_core::{
    Command, Consumer, ConsumerRef, ConsumerSpec, Effect, Environment, IssuedKey, Kid, NewVersion,
    RetireReason, Timestamp, Usage, VersionNumber, issue_key, rfc3339,
};
use keyroll_store::{ConsumerWrite, EnvironmentRecord, StoreError};
use serde_json::{Value, json};

pub use audit::Actor;
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
            actor: Actor::system(crate::request_id::new()),
            idempotency: None,
        }
    }
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
}

impl Planned {
    /// A lifecycle transition that issued no key.
    pub fn from_transition(t: keyroll_core::Transition) -> Planned {
        Planned {
            consumer: t.consumer,
            effects: t.effects,
            issued: None,
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

/// Creates an environment (audited).
pub async fn create_environment(
    state: &AppState,
    actor: &Actor,
    name: Environment,
    protected: bool,
) -> Result<EnvironmentRecord, ServiceError> {
    let at = state.clock.now();
    let record = EnvironmentRecord {
        name: name.clone(),
        protected,
        created_at: at,
    };
    let audit = actor.audit(
        at,
        "environment.created",
        format!("environment {name}"),
        &json!({ "protected": protected }),
    );
    state.store.create_environment(&record, &audit).await?;
    tracing::info!(event = "environment.created", environment = %name, actor = actor.id.as_str(), "environment {name} created");
    Ok(record)
}

/// Creates a consumer and its first key. `render` builds the answer from the new consumer and
/// its key (the key is removed from the copy remembered for replays).
pub async fn create_consumer(
    state: &AppState,
    request: &Request,
    spec: ConsumerSpec,
    expires_in: Option<Duration>,
    change: Change<'_>,
    render: impl Fn(&Consumer, &IssuedKey, Timestamp) -> Value,
) -> Result<Answer, ServiceError> {
    let r = ConsumerRef {
        environment: spec.environment.clone(),
        name: spec.name.clone(),
    };
    with_replay(state, request, || async {
        for _ in 0..MAX_ATTEMPTS {
            let at = state.clock.now();
            let (issued, first) = issue(
                &state.randomness,
                &r.environment,
                expires_in.map(|d| at.saturating_add(d)),
            )?;
            let t = Consumer::created(spec.clone(), first, at);
            let (with_key, public) = split_secret(render(&t.consumer, &issued, at));
            let (audit, events) = audit::audit_and_events(
                &request.actor,
                at,
                &t.consumer,
                change.command,
                change.params,
                &t.effects,
                &[],
            );
            let idem = remember(request, change.status, &public, at, Some(&issued), state);
            match state
                .store
                .create_consumer(&t.consumer, &audit, &events, idem.as_ref())
                .await
            {
                Ok(stored) => {
                    state.index.upsert(stored.revision, &stored.consumer);
                    after_write(state, &request.actor, &r, &t.effects, &events);
                    return Ok(Answer::Fresh {
                        body: with_key,
                        effects: t.effects,
                    });
                }
                Err(StoreError::KidCollision) => continue,
                Err(StoreError::NotFound(_)) => {
                    return Err(ServiceError::NotFound(format!(
                        "environment {} does not exist; create it first (keyroll env create {})",
                        r.environment, r.environment
                    )));
                }
                Err(StoreError::AlreadyExists(_)) => {
                    return Err(ServiceError::AlreadyExists(format!(
                        "consumer {r} already exists; rotate it to get a new key"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::KidsExhausted)
    })
    .await
}

/// Reads, plans, writes and indexes one change to an existing consumer. `plan` computes the
/// change from the stored consumer, what is known of its use and `now`; `render` builds the
/// answer from the consumer before and the planned change.
pub async fn change(
    state: &AppState,
    request: &Request,
    r: &ConsumerRef,
    change: Change<'_>,
    plan: impl Fn(&Consumer, &Usage<'_>, Timestamp) -> Result<Planned, ServiceError>,
    render: impl Fn(&Consumer, &Planned, Timestamp) -> Value,
) -> Result<Answer, ServiceError> {
    with_replay(state, request, || async {
        let (body, effects) = write(state, request, r, change, &plan, &render).await?;
        Ok(Answer::Fresh { body, effects })
    })
    .await
}

/// Writes down what time and traffic decided for one consumer (deadlines, stalls, idle
/// retirements, unused versions): the sweeper's step. Returns the effects written.
pub async fn settle(state: &AppState, r: &ConsumerRef) -> Result<Vec<Effect>, ServiceError> {
    let request = Request::system();
    let params = json!({});
    let (_, effects) = write(
        state,
        &request,
        r,
        Change {
            command: "settle",
            params: &params,
            status: 200,
        },
        &|c: &Consumer, usage: &Usage<'_>, at| {
            Ok(Planned::from_transition(c.apply(
                Command::Settle,
                usage,
                at,
            )?))
        },
        &|_: &Consumer, _: &Planned, _| Value::Null,
    )
    .await?;
    Ok(effects)
}

/// Answers a repeated request from its first answer; otherwise runs `fresh`. A concurrent
/// request with the same key that wins the race is answered the same way.
async fn with_replay<F, Fut>(
    state: &AppState,
    request: &Request,
    fresh: F,
) -> Result<Answer, ServiceError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Answer, ServiceError>>,
{
    let Some(idem) = &request.idempotency else {
        return fresh().await;
    };
    let now = state.clock.now();
    if let Some(replayed) = idem.replay(state.store.as_ref(), now).await? {
        return Ok(Answer::Replayed(replayed));
    }
    match fresh().await {
        Err(ServiceError::Store(StoreError::IdempotencyKeyUsed)) => {
            match idem.replay(state.store.as_ref(), state.clock.now()).await? {
                Some(replayed) => Ok(Answer::Replayed(replayed)),
                None => Err(StoreError::IdempotencyKeyUsed.into()),
            }
        }
        other => other,
    }
}

/// The idempotency record of a request, if it had a key.
fn remember(
    request: &Request,
    status: u16,
    public: &Value,
    at: Timestamp,
    issued: Option<&IssuedKey>,
    state: &AppState,
) -> Option<keyroll_store::IdempotencyRecord> {
    request.idempotency.as_ref().map(|i| {
        i.record(
            status,
            public,
            at,
            issued,
            &state.randomness,
            &request.actor.request_id,
        )
    })
}

async fn write(
    state: &AppState,
    request: &Request,
    r: &ConsumerRef,
    change: Change<'_>,
    plan: &impl Fn(&Consumer, &Usage<'_>, Timestamp) -> Result<Planned, ServiceError>,
    render: &impl Fn(&Consumer, &Planned, Timestamp) -> Value,
) -> Result<(Value, Vec<Effect>), ServiceError> {
    for _ in 0..MAX_ATTEMPTS {
        let stored = state
            .store
            .get_consumer(r)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("consumer {r} does not exist")))?;
        let at = state.clock.now();
        let seen = usage_of(state, &stored.consumer);
        let planned = plan(&stored.consumer, &Usage::new(&seen), at)?;
        let (with_key, public) = split_secret(render(&stored.consumer, &planned, at));
        // Nothing changed (a retried retire, a second disable): answer without writing.
        if planned.effects.is_empty() && planned.consumer == stored.consumer {
            return Ok((with_key, Vec::new()));
        }
        let mut extra = Vec::new();
        for (i, e) in planned.effects.iter().enumerate() {
            if let Effect::Stalled { version, .. } = e
                && let Some(v) = planned.consumer.version(*version)
            {
                extra.push((i, stall_sources(state, v.kid, at).await));
            }
        }
        let (audit, events) = audit::audit_and_events(
            &request.actor,
            at,
            &planned.consumer,
            change.command,
            change.params,
            &planned.effects,
            &extra,
        );
        let idem = remember(
            request,
            change.status,
            &public,
            at,
            planned.issued.as_ref(),
            state,
        );
        let write = ConsumerWrite {
            expected_revision: stored.revision,
            id: stored.id,
            consumer: &planned.consumer,
            audit: &audit,
            idempotency: idem.as_ref(),
            events: &events,
        };
        match state.store.write_consumer(write).await {
            Ok(written) => {
                state.index.upsert(written.revision, &written.consumer);
                after_write(state, &request.actor, r, &planned.effects, &events);
                return Ok((with_key, planned.effects));
            }
            Err(StoreError::Conflict(_) | StoreError::KidCollision) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Busy(r.to_string()))
}

/// Effects of a written change: one lifecycle log line each, and the rotation metrics.
fn after_write(
    state: &AppState,
    actor: &Actor,
    r: &ConsumerRef,
    effects: &[Effect],
    events: &[keyroll_store::EventRecord],
) {
    for (e, event) in effects.iter().zip(events) {
        if let Some(o) = outcome(e) {
            state.observer.rotation(r.environment.as_str(), o);
        }
        match e {
            Effect::Stalled { .. } => {
                tracing::error!(event = "rotation.stalled", consumer = %r, version = event.version, detail = event.detail.as_str(), actor = actor.id.as_str(), "rotation of {r} stalled: v{} is still in use at its deadline; extended once", event.version.unwrap_or(0))
            }
            _ => {
                tracing::info!(event = e.kind(), consumer = %r, version = event.version, detail = event.detail.as_str(), actor = actor.id.as_str(), request_id = actor.request_id.as_str(), "{} {r}", e.kind())
            }
        }
    }
}

/// The metric outcome of an effect, if it is one `keyroll_rotations_total` counts.
fn outcome(e: &Effect) -> Option<&'static str> {
    match e {
        Effect::Issued(n) if n.0 > 1 => Some("rotated"),
        Effect::Retired {
            reason: RetireReason::Idle,
            ..
        } => Some("retired_idle"),
        Effect::Retired {
            reason: RetireReason::Deadline,
            ..
        } => Some("retired_deadline"),
        Effect::Retired { .. } => Some("retired"),
        Effect::Stalled { .. } => Some("stalled"),
        Effect::Revoked(_) => Some("revoked"),
        _ => None,
    }
}

/// Who was still using a stalled version, as recorded (flushes pending usage first).
async fn stall_sources(state: &AppState, kid: Kid, at: Timestamp) -> Value {
    crate::usage::flush_once(state).await;
    let since = at.saturating_sub(Duration::from_secs(24 * 3600));
    match state.store.usage(&[kid], since).await {
        Ok(usage) => {
            let u = usage.into_iter().next();
            let hourly: u64 = u
                .as_ref()
                .map(|u| {
                    u.hourly
                        .iter()
                        .filter(|(h, _)| at.duration_since(*h) < Duration::from_secs(3600))
                        .map(|(_, n)| *n)
                        .sum()
                })
                .unwrap_or(0);
            let sources: Vec<Value> = u
                .map(|u| u.sources.iter().map(|s| json!({ "address": s.address, "user_agent": s.user_agent, "client_id": s.client_id, "last_seen": rfc3339(s.last_seen), "count": s.count })).collect())
                .unwrap_or_default();
            json!({ "sources": sources, "requests_last_hour": hourly })
        }
        Err(e) => json!({ "sources_unavailable": e.to_string() }),
    }
}

/// The answer with the plaintext key, and the copy to remember without it.
fn split_secret(mut answer: Value) -> (Value, Value) {
    let public = {
        let mut p = answer.clone();
        if let Some(obj) = p.as_object_mut()
            && obj.contains_key("key")
        {
            obj.insert("key".into(), Value::Null);
        }
        p
    };
    if let Some(obj) = answer.as_object_mut() {
        obj.entry("replayed").or_insert(Value::Bool(false));
    }
    (answer, public)
}
