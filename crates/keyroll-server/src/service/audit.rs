//! The one builder of audit records and events: who acted ([`Actor`]), and what each effect of a
//! change means in the audit log and the event outbox. Every writer — admin handlers, admin
//! tokens, the sweeper, start-up — builds its entries here, so they cannot drift apart.

use keyroll_core::{Consumer, Effect, Timestamp, VersionNumber, rfc3339};
use keyroll_store::{AuditRecord, EventRecord};
use serde_json::{Value, json};

/// Who made a change, under which request, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// An admin token id; `sweeper` or `scheduler` for what time and traffic decided; `system`
    /// for start-up.
    pub id: String,
    /// The request id (also in the log lines of the change).
    pub request_id: String,
    /// The client's address (after the trusted-proxy rule), when there was a client.
    pub remote_addr: Option<String>,
}

impl Actor {
    /// keyroll itself at start-up, under a fresh request id.
    pub fn system(request_id: String) -> Actor {
        Actor {
            id: "system".into(),
            request_id,
            remote_addr: None,
        }
    }

    /// The sweeper (deadlines, stalls, idle retirements), under a fresh request id.
    pub fn sweeper(request_id: String) -> Actor {
        Actor {
            id: "sweeper".into(),
            request_id,
            remote_addr: None,
        }
    }

    /// A consumer's agent, authenticated by the consumer's own key: the actor id names the
    /// agent and the key id it presented.
    pub fn agent(agent: &str, kid: &str, request_id: String, remote_addr: Option<String>) -> Actor {
        Actor {
            id: format!("agent:{agent} (kid {kid})"),
            request_id,
            remote_addr,
        }
    }

    /// The rotation scheduler, under a fresh request id.
    pub fn scheduler(request_id: String) -> Actor {
        Actor {
            id: "scheduler".into(),
            request_id,
            remote_addr: None,
        }
    }

    /// The webhook sender (an endpoint disabled by its 410 answer), under a fresh request id.
    pub fn webhooks(request_id: String) -> Actor {
        Actor {
            id: "webhooks".into(),
            request_id,
            remote_addr: None,
        }
    }

    /// An audit record of `action` on `target` by this actor at `at`.
    pub fn audit(
        &self,
        at: Timestamp,
        action: &str,
        target: String,
        detail: &Value,
    ) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at,
            actor: self.id.clone(),
            action: action.into(),
            target,
            detail: detail.to_string(),
            request_id: Some(self.request_id.clone()),
            remote_addr: self.remote_addr.clone(),
        }
    }
}

/// The target, version and details of an effect, for its audit entry and its event.
pub fn effect_detail(
    e: &Effect,
    consumer: &Consumer,
    reference: &str,
) -> (String, Option<u32>, Value) {
    let kid = |n: VersionNumber| consumer.version(n).map(|v| v.kid.to_string());
    let on_version =
        |n: VersionNumber, detail: Value| (format!("{reference} {n}"), Some(n.0), detail);
    match e {
        Effect::Issued(n) => on_version(*n, json!({ "kid": kid(*n) })),
        Effect::Retiring { version, deadline } => on_version(
            *version,
            json!({ "kid": kid(*version), "deadline": rfc3339(*deadline) }),
        ),
        Effect::Retired { version, reason } => on_version(
            *version,
            json!({
                "kid": kid(*version),
                "reason": reason.as_str(),
                "replaced_by": consumer.version(*version).and_then(|v| v.replaced_by).map(|n| n.0),
            }),
        ),
        Effect::Revoked(n) => on_version(
            *n,
            json!({ "kid": kid(*n), "reason": consumer.version(*n).and_then(|v| v.revoke_reason.clone()) }),
        ),
        Effect::Stalled {
            version,
            deadline,
            until,
        } => on_version(
            *version,
            json!({ "kid": kid(*version), "deadline": rfc3339(*deadline), "extended_until": rfc3339(*until) }),
        ),
        Effect::RotationRequested(n) => on_version(
            *n,
            json!({ "kid": kid(*n), "delivery": consumer.schedule.delivery.as_str() }),
        ),
        Effect::Unused(n) => on_version(
            *n,
            json!({ "kid": kid(*n), "issued_at": consumer.version(*n).map(|v| rfc3339(v.created_at)) }),
        ),
        Effect::Created | Effect::Updated => (reference.to_owned(), None, settings(consumer)),
        Effect::Due { version, due_at } => on_version(
            *version,
            json!({
                "kid": kid(*version),
                "due_at": rfc3339(*due_at),
                "delivery": consumer.schedule.delivery.as_str(),
                "rotate_every": consumer.schedule.rotate_every.map(keyroll_core::format_duration),
            }),
        ),
        Effect::Expiring {
            version,
            expires_at,
        } => on_version(
            *version,
            json!({ "kid": kid(*version), "expires_at": rfc3339(*expires_at) }),
        ),
        Effect::Disabled | Effect::Enabled => (reference.to_owned(), None, json!({})),
    }
}

/// A consumer's settings (scopes, owner, retirement policy): what `consumer.created` records and
/// `consumer.updated` records before and after. Never a secret.
fn settings(consumer: &Consumer) -> Value {
    json!({
        "scopes": consumer.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "owner": consumer.owner,
        "retire": consumer.policy.retire.as_str(),
        "idle": keyroll_core::format_duration(consumer.policy.idle),
        "on_stall": consumer.policy.on_stall.as_str(),
        "rotate_every": consumer.schedule.rotate_every.map(keyroll_core::format_duration),
        "grace": consumer.schedule.grace.map(keyroll_core::format_duration),
        "delivery": consumer.schedule.delivery.as_str(),
        "managed": consumer.managed.is_some(),
    })
}

/// One audit entry and one event per effect of a change, in order. `before` is the consumer as
/// it was (`None` for a creation): the audit entry of `consumer.updated` records its settings
/// before and after. `extra[i]` adds fields to effect `i`'s details (who was still using a
/// stalled version).
#[allow(clippy::too_many_arguments)]
pub fn audit_and_events(
    actor: &Actor,
    at: Timestamp,
    before: Option<&Consumer>,
    consumer: &Consumer,
    command: &str,
    params: &Value,
    effects: &[Effect],
    extra: &[(usize, Value)],
) -> (Vec<AuditRecord>, Vec<EventRecord>) {
    let reference = consumer.reference();
    let mut audit = Vec::with_capacity(effects.len());
    let mut events = Vec::with_capacity(effects.len());
    for (i, e) in effects.iter().enumerate() {
        let (target, version, mut detail) = effect_detail(e, consumer, &reference);
        if let Some((_, more)) = extra.iter().find(|(j, _)| *j == i)
            && let (Some(d), Some(m)) = (detail.as_object_mut(), more.as_object())
        {
            d.extend(m.clone());
        }
        let mut entry = json!({ "command": command, "params": params, "effect": detail });
        if let (Effect::Updated, Some(before)) = (e, before) {
            entry["before"] = settings(before);
            entry["after"] = settings(consumer);
        }
        audit.push(actor.audit(at, e.kind(), target, &entry));
        events.push(EventRecord {
            seq: 0,
            at,
            kind: e.kind().into(),
            consumer: reference.clone(),
            version,
            detail: detail.to_string(),
        });
    }
    (audit, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyroll_core::{ConsumerName, Environment, NewVersion, Scope};

    #[test]
    fn one_entry_and_one_event_per_effect_with_the_actor_and_the_command() {
        let key = keyroll_core::issue_key(
            &Environment::parse("prod").unwrap(),
            &mut crate::clock::Randomness::os().entropy(),
        )
        .unwrap();
        let t = Consumer::created(
            keyroll_core::ConsumerSpec {
                environment: Environment::parse("prod").unwrap(),
                name: ConsumerName::parse("app").unwrap(),
                scopes: vec![Scope::parse("read").unwrap()],
                owner: Some("team".into()),
                policy: Default::default(),
                schedule: Default::default(),
                managed: false,
            },
            NewVersion {
                kid: key.kid,
                secret_hash: key.secret_hash,
                fingerprint: key.fingerprint,
                expires_at: None,
            },
            Timestamp::from_unix_millis(1_000),
        );
        let actor = Actor {
            id: "tok_1".into(),
            request_id: "rq_1".into(),
            remote_addr: Some("192.0.2.1".into()),
        };
        let params = json!({ "scopes": ["read"] });
        let (audit, events) = audit_and_events(
            &actor,
            Timestamp::from_unix_millis(1_000),
            None,
            &t.consumer,
            "consumer.create",
            &params,
            &t.effects,
            &[],
        );
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["consumer.created", "version.issued"]);
        assert_eq!(audit[1].target, "prod/app v1");
        assert!(audit.iter().all(|a| a.actor == "tok_1"
            && a.remote_addr.as_deref() == Some("192.0.2.1")
            && a.request_id.as_deref() == Some("rq_1")));
        let detail: Value = serde_json::from_str(&audit[1].detail).unwrap();
        assert_eq!(detail["command"], "consumer.create");
        assert_eq!(detail["effect"]["kid"], key.kid.to_string());
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            [None, Some(1)]
        );
        assert!(
            !audit[1].detail.contains(key.reveal()),
            "no secret in an audit entry"
        );
    }
}
