//! Changes to consumers: creation with the first key, every lifecycle command, and the
//! sweeper's settling — read → `Consumer::apply` → one transaction → index → effects, recomputed
//! from fresh state when a concurrent writer wins, and answered from the first answer when the
//! request repeats an `Idempotency-Key`.

use std::time::Duration;

use keyroll_core::{
    Command, Consumer, ConsumerRef, ConsumerSpec, Effect, IssuedKey, Timestamp, Usage,
};
use keyroll_store::{ConsumerWrite, StoreError};
use serde_json::{Value, json};

use super::effects::{after_write, stall_sources};
use super::{
    Answer, Change, MAX_ATTEMPTS, Planned, Request, Rotation, ServiceError, audit, issue, usage_of,
};
use crate::state::AppState;

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
                None,
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
                    state.cluster.note_local(stored.change_seq);
                    state.changed();
                    after_write(state, &request.actor, &r, &t.effects, &events);
                    return Ok(Answer::Fresh {
                        body: with_key,
                        effects: t.effects,
                        change_seq: stored.change_seq,
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

/// Rotates `r`: a new key (shown once, expiring `expires_in` after issue if given), older valid
/// versions retiring after `grace`. The one rotation every writer uses (admin API now; the
/// scheduler and the agent next).
pub async fn rotate(
    state: &AppState,
    request: &Request,
    r: &ConsumerRef,
    rotation: Rotation,
    change: Change<'_>,
    render: impl Fn(&Consumer, &Planned, Timestamp) -> Value,
) -> Result<Answer, ServiceError> {
    self::change(
        state,
        request,
        r,
        change,
        |c, usage, at| {
            let expires_at = rotation.expires_in.map(|d| at.saturating_add(d));
            let (issued, new_version) = issue(&state.randomness, &c.environment, expires_at)?;
            let command = Command::Rotate {
                grace: rotation.grace,
                enforce: rotation.enforce,
                new_version,
            };
            Ok(Planned {
                issued: Some(issued),
                ..Planned::from_transition(c.apply(command, usage, at)?)
            })
        },
        render,
    )
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
        let (body, effects, change_seq) = write(state, request, r, change, &plan, &render).await?;
        Ok(Answer::Fresh {
            body,
            effects,
            change_seq,
        })
    })
    .await
}

/// Writes down what time and traffic decided for one consumer (deadlines, stalls, idle
/// retirements, unused versions): the sweeper's step. Returns the effects written.
pub async fn settle(state: &AppState, r: &ConsumerRef) -> Result<Vec<Effect>, ServiceError> {
    let request = Request {
        actor: audit::Actor::sweeper(crate::request_id::new_request_id()),
        idempotency: None,
    };
    let params = json!({});
    let (_, effects, _) = write(
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
) -> Result<(Value, Vec<Effect>, i64), ServiceError> {
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
            return Ok((with_key, Vec::new(), stored.change_seq));
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
            Some(&stored.consumer),
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
            handover: planned.handover.as_ref(),
        };
        match state.store.write_consumer(write).await {
            Ok(written) => {
                state.index.upsert(written.revision, &written.consumer);
                state.cluster.note_local(written.change_seq);
                state.changed();
                after_write(state, &request.actor, r, &planned.effects, &events);
                return Ok((with_key, planned.effects, written.change_seq));
            }
            Err(StoreError::Conflict(_) | StoreError::KidCollision) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Busy(r.to_string()))
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
