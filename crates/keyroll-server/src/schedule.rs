//! The rotation schedule on the server: where every consumer stands ([`place_all`], read by
//! `GET /v1/schedule`, the preflight, `keyroll status` and `keyroll plan`), and one run of it
//! ([`run_once`], paced by `jobs::scheduler`).
//!
//! A run raises `rotation.due` once per active version whose rotation fell due and may run, and
//! `key.expiring` once per version whose hard expiry is within 7 days, each through the service
//! layer's one write path (audited as actor `scheduler`). It never issues a key: a new key that
//! reaches nobody is the founding incident again. `ci` consumers are rotated by the pipeline
//! that runs `keyroll rotate --due` and hands the key on, `agent` consumers by their agent, and
//! `manual` consumers by a person; the event and the `due` state tell each of them. The rules
//! (when due, what blocks) are the core's pure `schedule_state`.

use keyroll_core::{
    Command, Consumer, ConsumerRef, Environment, ScheduleState, Timestamp, Usage,
    expiring_versions, format_duration, rfc3339, schedule_state,
};
use keyroll_proto as proto;
use keyroll_store::EnvironmentRecord;
use serde_json::{Value, json};

use crate::service::{self, Actor, Change, Planned, Request, ServiceError, usage_of};
use crate::state::AppState;

/// One consumer's place in the schedule at a time.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The consumer, settled in memory at that time (what the stored state will become).
    pub consumer: Consumer,
    /// Its environment is protected.
    pub protected: bool,
    /// Its environment's ordering rule.
    pub rotate_after: Option<Environment>,
    /// Where it stands.
    pub state: ScheduleState,
}

impl Placed {
    /// As the API shows it.
    pub fn to_proto(&self) -> proto::ScheduleEntry {
        let c = &self.consumer;
        let active = c.active_version();
        let blockers = match &self.state {
            ScheduleState::Blocked(_, b) => b
                .iter()
                .map(|b| proto::Blocker {
                    code: b.code().into(),
                    message: b.describe(c),
                })
                .collect(),
            _ => Vec::new(),
        };
        proto::ScheduleEntry {
            consumer: c.reference(),
            environment: c.environment.to_string(),
            name: c.name.to_string(),
            delivery: c.schedule.delivery.as_str().into(),
            protected: self.protected,
            state: self.state.as_str().into(),
            rotate_every: c.schedule.rotate_every.map(format_duration),
            active_version: active.map(|v| v.number.0),
            active_since: active.map(|v| rfc3339(v.created_at)),
            next_due: self.state.due_at().map(rfc3339),
            blockers,
        }
    }
}

/// Every environment and every consumer, settled in memory at `now`: what the schedule is
/// computed from (an ordering rule looks at another environment's consumers).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every environment.
    pub environments: Vec<EnvironmentRecord>,
    /// Every consumer, settled at `now`.
    pub consumers: Vec<Consumer>,
    /// When.
    pub now: Timestamp,
}

impl Snapshot {
    /// Reads the store. Consumers are settled in memory, so a grace window that ended but was
    /// not yet written down counts as ended.
    pub async fn read(state: &AppState, now: Timestamp) -> Result<Snapshot, ServiceError> {
        let all = state.store.list_consumers(None).await?;
        Snapshot::of(state, all, now).await
    }

    /// Only what a run of the schedule needs ([`keyroll_store::Store::list_schedule_candidates`]):
    /// a run every 30 s must not read a million consumers that have no schedule.
    pub async fn read_candidates(
        state: &AppState,
        now: Timestamp,
    ) -> Result<Snapshot, ServiceError> {
        let some = state.store.list_schedule_candidates().await?;
        Snapshot::of(state, some, now).await
    }

    /// From consumers the caller already read: all of them, or the ordering rules see only part.
    pub async fn of(
        state: &AppState,
        stored: Vec<keyroll_store::StoredConsumer>,
        now: Timestamp,
    ) -> Result<Snapshot, ServiceError> {
        let environments = state.store.list_environments().await?;
        let consumers = stored
            .into_iter()
            .map(|s| settled(state, s.consumer, now))
            .collect();
        Ok(Snapshot {
            environments,
            consumers,
            now,
        })
    }

    /// `c`'s place.
    pub fn place(&self, c: &Consumer) -> Placed {
        place(c, &self.environments, &self.consumers, self.now)
    }

    /// The consumer named `r`.
    pub fn consumer(&self, r: &ConsumerRef) -> Option<&Consumer> {
        self.consumers
            .iter()
            .find(|c| c.environment == r.environment && c.name == r.name)
    }
}

/// Every consumer's place at `now` (one environment's with `only`).
pub async fn place_all(
    state: &AppState,
    only: Option<&Environment>,
    now: Timestamp,
) -> Result<Vec<Placed>, ServiceError> {
    let snapshot = Snapshot::read(state, now).await?;
    Ok(snapshot
        .consumers
        .iter()
        .filter(|c| only.is_none_or(|e| c.environment == *e))
        .map(|c| snapshot.place(c))
        .collect())
}

/// One consumer's place, given every environment and every (settled) consumer.
pub fn place(
    c: &Consumer,
    environments: &[EnvironmentRecord],
    all: &[Consumer],
    now: Timestamp,
) -> Placed {
    let env = environments.iter().find(|e| e.name == c.environment);
    let rotate_after = env.and_then(|e| e.rotate_after.clone());
    let earlier = rotate_after.as_ref().and_then(|after| {
        all.iter()
            .find(|o| o.environment == *after && o.name == c.name)
    });
    Placed {
        consumer: c.clone(),
        protected: env.is_some_and(|e| e.protected),
        state: schedule_state(c, rotate_after.as_ref(), earlier, now),
        rotate_after,
    }
}

/// One consumer's place at `now`, reading only what its ordering rule looks at.
pub async fn place_one(
    state: &AppState,
    c: Consumer,
    now: Timestamp,
) -> Result<Placed, ServiceError> {
    let environments = state.store.list_environments().await?;
    let rotate_after = environments
        .iter()
        .find(|e| e.name == c.environment)
        .and_then(|e| e.rotate_after.clone());
    let mut all = vec![settled(state, c, now)];
    if let Some(after) = rotate_after {
        let twin = ConsumerRef {
            environment: after,
            name: all[0].name.clone(),
        };
        if let Some(t) = state.store.get_consumer(&twin).await? {
            all.push(settled(state, t.consumer, now));
        }
    }
    Ok(place(&all[0], &environments, &all, now))
}

/// `c` as `Settle` would leave it at `now` (pure; nothing is written).
fn settled(state: &AppState, c: Consumer, now: Timestamp) -> Consumer {
    let seen = usage_of(state, &c);
    match c.apply(Command::Settle, &Usage::new(&seen), now) {
        Ok(t) => t.consumer,
        Err(_) => c,
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// `rotation.due` events raised.
    pub due_raised: usize,
    /// `key.expiring` events raised.
    pub expiring_raised: usize,
    /// Consumers whose write failed (retried next run).
    pub failed: usize,
}

/// One run of the schedule at the clock's now.
pub async fn run_once(state: &AppState) -> RunOutcome {
    let now = state.clock.now();
    let mut outcome = RunOutcome::default();
    let placed = match Snapshot::read_candidates(state, now).await {
        Ok(snapshot) => snapshot
            .consumers
            .iter()
            .map(|c| snapshot.place(c))
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(event = "schedule.failed", error = %e, "could not read the schedule; will retry");
            outcome.failed += 1;
            return outcome;
        }
    };
    for p in placed {
        let c = &p.consumer;
        let r = ConsumerRef {
            environment: c.environment.clone(),
            name: c.name.clone(),
        };
        if let ScheduleState::Due(due_at) = p.state
            && c.active_version().is_some_and(|v| !v.due_raised)
        {
            match raise(state, &r, "schedule.due", Command::RaiseDue { due_at }).await {
                Ok(true) => {
                    outcome.due_raised += 1;
                    let delivery = c.schedule.delivery.as_str();
                    let next = match c.schedule.delivery {
                        keyroll_core::Delivery::Manual => format!(
                            "no delivery path: rotate it and hand the new key over by hand (keyroll rotate {r})"
                        ),
                        keyroll_core::Delivery::Ci => {
                            "the pipeline running `keyroll rotate --due` will rotate it".into()
                        }
                        keyroll_core::Delivery::Agent => "its agent will rotate it".into(),
                    };
                    tracing::info!(event = "rotation.due", consumer = %r, delivery, due_at = %rfc3339(due_at), "rotation of {r} is due since {}: {next}", rfc3339(due_at));
                }
                Ok(false) => {}
                Err(e) => {
                    outcome.failed += 1;
                    tracing::warn!(event = "schedule.failed", consumer = %r, error = %e, "could not record that {r} is due; will retry");
                }
            }
        }
        let expiring = expiring_versions(c, now);
        if !expiring.is_empty() {
            let n = expiring.len();
            match raise(
                state,
                &r,
                "schedule.expiring",
                Command::WarnExpiring { versions: expiring },
            )
            .await
            {
                Ok(true) => {
                    outcome.expiring_raised += n;
                    tracing::warn!(event = "key.expiring", consumer = %r, versions = n, "{n} version(s) of {r} reach their hard expiry within 7 days");
                }
                Ok(false) => {}
                Err(e) => {
                    outcome.failed += 1;
                    tracing::warn!(event = "schedule.failed", consumer = %r, error = %e, "could not record that {r} expires soon; will retry");
                }
            }
        }
    }
    outcome
}

/// Writes one schedule command for `r` as the scheduler; whether it changed anything.
async fn raise(
    state: &AppState,
    r: &ConsumerRef,
    command: &'static str,
    cmd: Command,
) -> Result<bool, ServiceError> {
    let request = Request {
        actor: Actor::scheduler(crate::request_id::new_request_id()),
        idempotency: None,
    };
    let params = json!({});
    let answer = service::change(
        state,
        &request,
        r,
        Change {
            command,
            params: &params,
            status: 200,
        },
        |c, usage, at| Ok(Planned::from_transition(c.apply(cmd.clone(), usage, at)?)),
        |_, _, _| Value::Null,
    )
    .await?;
    Ok(match answer {
        service::Answer::Fresh { effects, .. } => !effects.is_empty(),
        service::Answer::Replayed(_) => false,
    })
}
