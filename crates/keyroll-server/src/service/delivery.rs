//! Delivery by agents (SPEC §10): what an agent holding one key of its consumer is told, its
//! self-rotation (one more writer on the one write path), handovers to the consumer's other
//! agents, and agents' reports, which record each delivery.
//!
//! Why handovers: several replicas of one app each run an agent with the same consumer key, and
//! an agent can crash between receiving a new key and writing it. keyroll stores no plaintext,
//! so the agent that rotates leaves the new key sealed under a key derived (HKDF) from the
//! secret of the key it presented; every holder of that older key can open it, the database
//! cannot (it holds only the older secret's SHA-256). Handovers die with their older version
//! (the store deletes them in the write that retires or revokes it).

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use keyroll_core::{
    AgentAction, Command, ConsumerRef, Effect, IssuedKey, Kid, Timestamp, Usage, VersionNumber,
    agent_action, rfc3339,
};
use keyroll_store::{AgentRecord, EventRecord, HandoverRecord, StoredConsumer};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Actor, Answer, Change, Planned, Request, Rotation, ServiceError, issue, usage_of};
use crate::clock::Randomness;
use crate::state::AppState;

/// The longest a long-poll is held.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

const SALT: &[u8] = b"keyroll handover v1";
const NONCE_LEN: usize = 12;

/// A caller authenticated by one of its consumer's keys (which it must hold to seal or open a
/// handover; never logged: `Debug` shows the key id only).
pub struct ConsumerCaller {
    /// Its consumer.
    pub consumer: ConsumerRef,
    /// The key id it presented.
    pub kid: Kid,
    /// That key's version.
    pub version: VersionNumber,
    /// The key itself.
    key: String,
    /// The request id and client address, for the audit actor.
    pub request_id: String,
    /// The client's address.
    pub remote_addr: Option<String>,
}

impl std::fmt::Debug for ConsumerCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerCaller")
            .field("consumer", &self.consumer)
            .field("kid", &self.kid)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ConsumerCaller {
    /// A caller whose key the verifier accepted.
    pub fn new(
        consumer: ConsumerRef,
        kid: Kid,
        version: VersionNumber,
        key: String,
        request_id: String,
        remote_addr: Option<String>,
    ) -> ConsumerCaller {
        ConsumerCaller {
            consumer,
            kid,
            version,
            key,
            request_id,
            remote_addr,
        }
    }

    /// The audit actor of this caller acting as `agent`.
    pub fn actor(&self, agent: &str) -> Actor {
        Actor::agent(
            agent,
            self.kid.as_str(),
            self.request_id.clone(),
            self.remote_addr.clone(),
        )
    }
}

/// An agent id: `agt_` and 1 to 60 of `[A-Za-z0-9_-]`.
pub fn check_agent_id(agent: &str) -> Result<(), ServiceError> {
    let rest = agent.strip_prefix("agt_").unwrap_or("");
    if rest.is_empty()
        || rest.len() > 60
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        let shown: String = agent.chars().take(70).collect();
        return Err(ServiceError::Invalid(format!(
            "agent {shown:?} is not an agent id (agt_ followed by 1 to 60 letters, digits, _ or -)"
        )));
    }
    Ok(())
}

fn info(r: &ConsumerRef, from: VersionNumber, to: VersionNumber) -> Vec<u8> {
    format!("{r} {from} -> {to}").into_bytes()
}

fn cipher(key: &str, info: &[u8]) -> ChaCha20Poly1305 {
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(Some(SALT), key.as_bytes()).expand(info, &mut out);
    ChaCha20Poly1305::new(Key::from_slice(&out))
}

/// Seals `issued` (version `to`) under the key of version `from` that `holder_key` is.
pub fn seal_handover(
    randomness: &Randomness,
    holder_key: &str,
    r: &ConsumerRef,
    from: VersionNumber,
    to: VersionNumber,
    issued: &IssuedKey,
    at: Timestamp,
) -> Result<HandoverRecord, ServiceError> {
    let info = info(r, from, to);
    let mut nonce = [0u8; NONCE_LEN];
    randomness
        .fill(&mut nonce)
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    let sealed = cipher(holder_key, &info)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: issued.reveal().as_bytes(),
                aad: &info,
            },
        )
        .map_err(|_| ServiceError::Invalid("cannot seal the handover".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(HandoverRecord {
        version: to.0,
        from_version: from.0,
        sealed: out,
        created_at: at,
    })
}

/// Opens a handover with the key of its older version; `None` when it does not open (another
/// key, or tampered).
pub fn open_handover(holder_key: &str, r: &ConsumerRef, h: &HandoverRecord) -> Option<String> {
    let info = info(r, VersionNumber(h.from_version), VersionNumber(h.version));
    if h.sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = h.sealed.split_at(NONCE_LEN);
    let plain = cipher(holder_key, &info)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &info,
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

async fn stored(state: &AppState, r: &ConsumerRef) -> Result<StoredConsumer, ServiceError> {
    state
        .store
        .get_consumer(r)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("consumer {r} does not exist")))
}

/// What the agent holding `caller`'s key should know, at `now`.
pub async fn self_state(
    state: &AppState,
    caller: &ConsumerCaller,
    now: Timestamp,
) -> Result<(keyroll_proto::SelfState, i64), ServiceError> {
    let stored = stored(state, &caller.consumer).await?;
    let placed = crate::schedule::place_one(state, stored.consumer.clone(), now).await?;
    let c = &placed.consumer;
    let held = c.version(caller.version).ok_or_else(|| {
        ServiceError::NotFound(format!("{} has no {}", caller.consumer, caller.version))
    })?;
    let seen = usage_of(state, c);
    let usage = Usage::new(&seen);
    let handover = match c.active_version() {
        Some(a) if a.number != caller.version => state
            .store
            .find_handover(stored.id, caller.version.0)
            .await?
            .map(|h| VersionNumber(h.version)),
        _ => None,
    };
    let action = agent_action(c, caller.version, handover, &placed.state);
    let rotate = match &action {
        AgentAction::Rotate(reason) => Some(keyroll_proto::SelfRotate {
            reason: reason.code().into(),
            since: reason.since().map(rfc3339),
            detail: match reason {
                keyroll_core::RotateReason::Due(at) => {
                    format!("the scheduled rotation is due since {}", rfc3339(*at))
                }
                keyroll_core::RotateReason::Requested(at) => {
                    format!("an operator asked for a rotation at {}", rfc3339(*at))
                }
                keyroll_core::RotateReason::Superseded(n) => format!(
                    "{n} was issued but not handed over to holders of {}: rotate again (the \
                     orphan retires unused)",
                    caller.version
                ),
            },
        }),
        _ => None,
    };
    let grace = c.schedule.grace.unwrap_or(state.config.default_grace);
    let view = held.view(usage.last_seen(held.number));
    let deadline = keyroll_core::shown_deadline(&view, &c.policy, now);
    Ok((
        keyroll_proto::SelfState {
            consumer: caller.consumer.to_string(),
            kid: held.kid.to_string(),
            version: held.number.0,
            state: held
                .state_with(&c.policy, usage.last_seen(held.number), now)
                .as_str()
                .into(),
            deadline: deadline.map(rfc3339),
            active_version: c.active_version().map_or(0, |v| v.number.0),
            handover: match action {
                AgentAction::TakeHandover(n) => Some(n.0),
                _ => None,
            },
            rotate,
            grace: keyroll_core::format_duration(grace),
            delivery: c.schedule.delivery.as_str().into(),
            revision: stored.revision,
            bundle_version: state.ca.bundle_version(),
        },
        stored.revision,
    ))
}

/// The agent's own rotation: the next version, its plaintext for this agent, and a handover
/// sealed for every other holder of the caller's key.
pub async fn self_rotate(
    state: &AppState,
    request: &Request,
    caller: &ConsumerCaller,
    expect_active: Option<u32>,
    render: impl Fn(&keyroll_core::Consumer, &Planned, Timestamp) -> Value,
) -> Result<Answer, ServiceError> {
    let r = &caller.consumer;
    let grace = super::default_grace(state, r).await?;
    let params = json!({ "grace": keyroll_core::format_duration(grace), "via": "agent", "from_version": caller.version.0 });
    let rotation = Rotation {
        grace,
        enforce: false,
        expires_in: None,
    };
    super::change(
        state,
        request,
        r,
        Change {
            command: "rotate",
            params: &params,
            status: 201,
        },
        |c, usage, at| {
            let active = c.active_version().map(|v| v.number);
            if let Some(expected) = expect_active
                && active.map(|n| n.0) != Some(expected)
            {
                return Err(ServiceError::Raced(format!(
                    "the active version of {r} is {} now, not v{expected}: another agent \
                     rotated first; read GET /v1/self again and take its handover",
                    active.map_or("none".to_owned(), |n| n.to_string())
                )));
            }
            let expires_at = rotation.expires_in.map(|d| at.saturating_add(d));
            let (issued, new_version) = issue(&state.randomness, &c.environment, expires_at)?;
            let t = c.apply(
                Command::Rotate {
                    grace: rotation.grace,
                    enforce: false,
                    new_version,
                },
                usage,
                at,
            )?;
            let to = t
                .consumer
                .active_version()
                .map_or(VersionNumber(1), |v| v.number);
            let handover = seal_handover(
                &state.randomness,
                &caller.key,
                r,
                caller.version,
                to,
                &issued,
                at,
            )?;
            Ok(Planned {
                issued: Some(issued),
                handover: Some(handover),
                ..Planned::from_transition(t)
            })
        },
        render,
    )
    .await
}

/// The newest version a holder of `caller`'s key was left, opened with that key.
pub async fn take_handover(
    state: &AppState,
    caller: &ConsumerCaller,
    agent: &str,
) -> Result<keyroll_proto::Handover, ServiceError> {
    let stored = stored(state, &caller.consumer).await?;
    let h = state
        .store
        .find_handover(stored.id, caller.version.0)
        .await?
        .ok_or_else(|| {
            ServiceError::NoHandover(format!(
                "no newer version of {} was left for holders of {}; GET /v1/self says what to do",
                caller.consumer, caller.version
            ))
        })?;
    let version = stored
        .consumer
        .version(VersionNumber(h.version))
        .ok_or_else(|| ServiceError::NoHandover(format!("v{} is gone", h.version)))?;
    let key = open_handover(&caller.key, &caller.consumer, &h).ok_or_else(|| {
        ServiceError::NoHandover(format!(
            "the handover of v{} does not open with this key",
            h.version
        ))
    })?;
    tracing::info!(event = "agent.handover", consumer = %caller.consumer, agent, from_version = caller.version.0, version = h.version, request_id = caller.request_id.as_str(), "handed v{} of {} over to agent {agent}", h.version, caller.consumer);
    Ok(keyroll_proto::Handover {
        consumer: caller.consumer.to_string(),
        key,
        kid: version.kid.to_string(),
        version: h.version,
    })
}

/// An agent's report, made with the key it holds now: records its contact, and, the first time
/// it reports a version, the delivery (`version.delivered`, audited).
pub async fn report(
    state: &AppState,
    caller: &ConsumerCaller,
    report: &keyroll_proto::AgentReport,
) -> Result<keyroll_proto::AgentInfo, ServiceError> {
    check_agent_id(&report.agent)?;
    for (field, value, max) in [
        ("host", report.host.as_deref(), 255),
        ("mode", report.mode.as_deref(), 16),
        ("health", report.health.as_deref(), 16),
        ("detail", report.detail.as_deref(), 500),
    ] {
        if let Some(v) = value
            && (v.chars().count() > max || v.chars().any(char::is_control))
        {
            return Err(ServiceError::Invalid(format!(
                "{field} must be at most {max} characters without control characters"
            )));
        }
    }
    let stored = stored(state, &caller.consumer).await?;
    let now = state.clock.now();
    let record = AgentRecord {
        consumer: caller.consumer.clone(),
        agent_id: report.agent.clone(),
        host: report.host.clone(),
        mode: report.mode.clone(),
        version: caller.version.0,
        health: report.health.clone(),
        detail: report.detail.clone(),
        // The store keeps the first report's time on an existing row.
        first_seen: now,
        last_contact: now,
        bundle_version: report.bundle_version,
    };
    let actor = caller.actor(&report.agent);
    let detail = json!({
        "kid": caller.kid.to_string(),
        "agent": report.agent,
        "host": report.host,
        "mode": report.mode,
    });
    let target = format!("{}/{}", caller.consumer, caller.version);
    let audit = actor.audit(now, "version.delivered", target, &detail);
    let event = EventRecord {
        seq: 0,
        at: now,
        kind: "version.delivered".into(),
        consumer: caller.consumer.to_string(),
        version: Some(caller.version.0),
        detail: detail.to_string(),
    };
    let first = state
        .store
        .record_agent(
            stored.id,
            &record,
            std::slice::from_ref(&audit),
            std::slice::from_ref(&event),
        )
        .await?;
    if first {
        tracing::info!(event = "version.delivered", consumer = %caller.consumer, version = caller.version.0, agent = report.agent.as_str(), host = report.host.as_deref(), request_id = caller.request_id.as_str(), "{} of {} delivered to agent {}", caller.version, caller.consumer, report.agent);
        state.changed();
        state.webhook_wake.notify_one();
    }
    Ok(agent_info(&record))
}

/// An agent as the API shows it.
pub fn agent_info(a: &AgentRecord) -> keyroll_proto::AgentInfo {
    keyroll_proto::AgentInfo {
        agent: a.agent_id.clone(),
        consumer: a.consumer.to_string(),
        host: a.host.clone(),
        mode: a.mode.clone(),
        version: a.version,
        last_contact: rfc3339(a.last_contact),
        health: a.health.clone(),
        detail: a.detail.clone(),
        bundle_version: a.bundle_version,
    }
}

/// Asks `r`'s agents to rotate its active version (`rotation.requested`).
pub async fn request_rotation(
    state: &AppState,
    request: &Request,
    r: &ConsumerRef,
    render: impl Fn(&keyroll_core::Consumer, &Planned, Timestamp) -> Value,
) -> Result<(Value, Vec<Effect>), ServiceError> {
    let params = json!({});
    let answer = super::change(
        state,
        request,
        r,
        Change {
            command: "request-rotation",
            params: &params,
            status: 200,
        },
        |c, usage, at| {
            Ok(Planned::from_transition(c.apply(
                Command::RequestRotation,
                usage,
                at,
            )?))
        },
        render,
    )
    .await?;
    match answer {
        Answer::Fresh { body, effects, .. } => Ok((body, effects)),
        Answer::Replayed(r) => Ok((r.body, Vec::new())),
    }
}

/// An agent silent this long is called out in status (it reports every 30 s).
pub const AGENT_SILENT_AFTER: Duration = Duration::from_secs(120);

/// How `c`'s keys reach it, from its agents' reports and deliveries and the status of its
/// versions (newest first); `None` for a consumer with no agent and another delivery mode.
pub fn delivery_status(
    c: &keyroll_core::Consumer,
    versions: &[keyroll_proto::VersionStatus],
    agents: &[AgentRecord],
    deliveries: &[keyroll_store::DeliveryRecord],
    unseen_after: Duration,
    now: Timestamp,
) -> Option<keyroll_proto::DeliveryStatus> {
    let mine = |r: &ConsumerRef| r.environment == c.environment && r.name == c.name;
    let agents: Vec<&AgentRecord> = agents.iter().filter(|a| mine(&a.consumer)).collect();
    let deliveries: Vec<_> = deliveries.iter().filter(|d| mine(&d.consumer)).collect();
    if agents.is_empty() && c.schedule.delivery != keyroll_core::Delivery::Agent {
        return None;
    }
    let delivered_version = deliveries.iter().map(|d| d.version).max();
    let mut warnings = Vec::new();
    let mut delivered_to = 0;
    let mut seen_sources = 0;
    let mut summary = None;
    if let Some(n) = delivered_version {
        let to: Vec<_> = deliveries.iter().filter(|d| d.version == n).collect();
        delivered_to = u32::try_from(to.len()).unwrap_or(u32::MAX);
        let status = versions.iter().find(|v| v.version == n);
        seen_sources = status.map_or(0, |v| u32::try_from(v.sources.len()).unwrap_or(u32::MAX));
        let plural = |k: u32, one: &str, many: &str| {
            if k == 1 {
                format!("1 {one}")
            } else {
                format!("{k} {many}")
            }
        };
        summary = Some(format!(
            "delivered v{n} to {}; v{n} seen from {}",
            plural(delivered_to, "agent", "agents"),
            plural(seen_sources, "source", "sources")
        ));
        let first = to.iter().map(|d| d.delivered_at).min();
        if let (Some(first), Some(v)) = (first, status)
            && v.last_used_at.is_none()
            && v.state == "active"
            && now.duration_since(first) >= unseen_after
        {
            warnings.push(format!(
                "v{n} was delivered at {} but has not been seen in traffic since: the app may \
                 not have reloaded its key (check the agent's --on-change)",
                rfc3339(first)
            ));
        }
    }
    let active = c.active_version().map(|v| v.number.0);
    for a in &agents {
        if now.duration_since(a.last_contact) >= AGENT_SILENT_AFTER {
            warnings.push(format!(
                "agent {} on {} has been silent since {}",
                a.agent_id,
                a.host.as_deref().unwrap_or("?"),
                rfc3339(a.last_contact)
            ));
        }
        if let Some(active) = active
            && a.version < active
        {
            warnings.push(format!(
                "agent {} still holds v{} (v{active} is active)",
                a.agent_id, a.version
            ));
        }
        if a.health.as_deref() == Some("degraded") {
            warnings.push(format!(
                "agent {} is degraded: {}",
                a.agent_id,
                a.detail.as_deref().unwrap_or("no detail")
            ));
        }
    }
    Some(keyroll_proto::DeliveryStatus {
        mode: c.schedule.delivery.as_str().into(),
        agents: agents.iter().map(|a| agent_info(a)).collect(),
        delivered_version,
        delivered_to,
        seen_sources,
        summary,
        warnings,
    })
}

/// Raises `version.unused` once for each active version delivered to an agent more than
/// `unseen_after` ago and never seen in traffic (the app did not reload). Run with the schedule.
pub async fn report_unseen(state: &AppState) -> Result<usize, ServiceError> {
    let now = state.clock.now();
    let deliveries = state.store.list_deliveries(None).await?;
    let mut firsts: Vec<(ConsumerRef, u32, Timestamp)> = Vec::new();
    for d in deliveries {
        match firsts
            .iter_mut()
            .find(|(r, n, _)| *r == d.consumer && *n == d.version)
        {
            Some(f) => f.2 = f.2.min(d.delivered_at),
            None => firsts.push((d.consumer, d.version, d.delivered_at)),
        }
    }
    let mut raised = 0;
    for (r, n, first) in firsts {
        if now.duration_since(first) < state.config.unseen_after {
            continue;
        }
        let Some(stored) = state.store.get_consumer(&r).await? else {
            continue;
        };
        let Some(v) = stored.consumer.version(VersionNumber(n)) else {
            continue;
        };
        if v.unused_reported
            || v.state != keyroll_core::StoredState::Active
            || state.index.last_used(&v.kid).is_some()
        {
            continue;
        }
        let request = Request {
            actor: Actor::scheduler(crate::request_id::new_request_id()),
            idempotency: None,
        };
        let params = json!({ "delivered_at": rfc3339(first) });
        let version = VersionNumber(n);
        let answer = super::change(
            state,
            &request,
            &r,
            Change {
                command: "report-unseen",
                params: &params,
                status: 200,
            },
            |c, usage, at| {
                Ok(Planned::from_transition(c.apply(
                    Command::ReportUnseen { version },
                    usage,
                    at,
                )?))
            },
            |_, _, _| Value::Null,
        )
        .await?;
        if let Answer::Fresh { effects, .. } = answer
            && !effects.is_empty()
        {
            tracing::warn!(event = "delivery.unseen", consumer = %r, version = n, delivered_at = %rfc3339(first), "v{n} of {r} was delivered to an agent at {} but has not been seen in traffic: the app may not have reloaded its key", rfc3339(first));
            raised += 1;
        }
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyroll_core::{ConsumerName, Environment, issue_key};

    #[test]
    fn a_handover_opens_only_with_the_older_key_of_the_same_consumer_and_versions() {
        let randomness = Randomness::os();
        let env = Environment::parse("prod").unwrap();
        let old = issue_key(&env, &mut randomness.entropy()).unwrap();
        let new = issue_key(&env, &mut randomness.entropy()).unwrap();
        let other = issue_key(&env, &mut randomness.entropy()).unwrap();
        let r = ConsumerRef {
            environment: env.clone(),
            name: ConsumerName::parse("billing").unwrap(),
        };
        let at = Timestamp::from_unix_millis(1_700_000_000_000);
        let h = seal_handover(
            &randomness,
            old.reveal(),
            &r,
            VersionNumber(3),
            VersionNumber(4),
            &new,
            at,
        )
        .unwrap();
        assert_eq!(
            open_handover(old.reveal(), &r, &h).as_deref(),
            Some(new.reveal())
        );
        assert_eq!(open_handover(other.reveal(), &r, &h), None, "another key");
        assert_eq!(
            open_handover(new.reveal(), &r, &h),
            None,
            "the sealed key itself"
        );
        let elsewhere = ConsumerRef {
            environment: env,
            name: ConsumerName::parse("orders").unwrap(),
        };
        assert_eq!(
            open_handover(old.reveal(), &elsewhere, &h),
            None,
            "another consumer"
        );
        let moved = HandoverRecord {
            version: 5,
            ..h.clone()
        };
        assert_eq!(
            open_handover(old.reveal(), &r, &moved),
            None,
            "another version"
        );
        let mut tampered = h.clone();
        if let Some(b) = tampered.sealed.last_mut() {
            *b ^= 1;
        }
        assert_eq!(open_handover(old.reveal(), &r, &tampered), None, "tampered");
        let plain = new.reveal().as_bytes();
        assert!(
            !h.sealed.windows(plain.len()).any(|w| w == plain),
            "the sealed bytes do not contain the key"
        );
    }

    #[test]
    fn agent_ids_are_checked() {
        assert!(check_agent_id("agt_0123abcd").is_ok());
        for bad in [
            "",
            "agt_",
            "agent",
            "agt_a b",
            "agt_\u{7}",
            &format!("agt_{}", "a".repeat(61)),
        ] {
            assert!(check_agent_id(bad).is_err(), "{bad:?}");
        }
    }
}
