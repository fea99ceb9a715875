//! The admin API: environments, consumers, rotate, revoke, retire, disable/enable, and the
//! health endpoints.
//!
//! Every change follows one path ([`commit`]): read the consumer, compute its next state with
//! the pure lifecycle (`Consumer::apply`), write state + audit + idempotency record in one store
//! transaction guarded by the consumer's revision, then update the in-memory index before
//! answering. A concurrent change makes the write fail with a conflict and the whole step is
//! recomputed from fresh state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{
    Command, Consumer, ConsumerName, ConsumerRef, Effect, Environment, IssuedKey, KeyVersion, Kid,
    LifecycleError, NewVersion, OnStall, Policy, RetirePolicy, RetireReason, Scope, Timestamp,
    Usage, VersionNumber, extension_if_stalled, is_extended_at, issue_key, parse_duration,
};
use keyroll_proto as proto;
use keyroll_store::{
    AuditRecord, ConsumerWrite, EnvironmentRecord, EventRecord, IdempotencyRecord, StoreError,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::http::auth::Admin;
use crate::http::idempotency::IdempotencyKey;
use crate::http::{ApiError, ApiJson, ApiPath, current_request_id};
use crate::state::AppState;
use keyroll_core::rfc3339;

/// How often a change is recomputed after losing a race before giving up.
const MAX_ATTEMPTS: usize = 5;

/// Who is asking, from where, and the idempotency key if any.
#[derive(Debug)]
struct Ctx {
    actor: String,
    request_id: String,
    remote: String,
    /// The header and the request fingerprint (method, path, canonical JSON body).
    idempotency: Option<(IdempotencyKey, String)>,
}

fn ctx(
    admin: &Admin,
    peer: SocketAddr,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body_hash: &[u8; 32],
) -> Result<Ctx, ApiError> {
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = IdempotencyKey::parse(v.as_bytes())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut h = Sha256::new();
            h.update(method.as_str());
            h.update(b" ");
            h.update(uri.path());
            h.update(b"\n");
            h.update(body_hash);
            Some((key, hex::encode(h.finalize())))
        }
    };
    Ok(Ctx {
        actor: admin.token_id.clone(),
        request_id: current_request_id(),
        remote: peer.to_string(),
        idempotency,
    })
}

impl Ctx {
    fn audit(&self, at: Timestamp, action: &str, target: String, detail: Value) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at,
            actor: self.actor.clone(),
            action: action.into(),
            target,
            detail: detail.to_string(),
            request_id: Some(self.request_id.clone()),
            remote_addr: Some(self.remote.clone()),
        }
    }

    /// What to remember under the `Idempotency-Key`: the answer without its key, and the key
    /// sealed under the header when the header is strong enough to protect it.
    fn idempotency_record(
        &self,
        status: StatusCode,
        public: &Value,
        at: Timestamp,
        issued: Option<&IssuedKey>,
        randomness: &crate::clock::Randomness,
    ) -> Option<IdempotencyRecord> {
        self.idempotency.as_ref().map(|(key, hash)| {
            let sealed_key = issued
                .filter(|_| key.weakness().is_none())
                .and_then(|k| match key.seal(hash, k.reveal(), randomness) {
                    Ok(sealed) => Some(sealed),
                    Err(e) => {
                        // The change still happens; only a replay cannot show the key.
                        tracing::warn!(event = "idempotency.seal_failed", error = %e, request_id = self.request_id.as_str(), "cannot keep the new key for replays");
                        None
                    }
                });
            IdempotencyRecord {
                key: key.lookup(),
                request_hash: hash.clone(),
                status: status.as_u16(),
                response: public.to_string(),
                created_at: at,
                sealed_key,
            }
        })
    }

    /// The earlier answer, if this request repeats one with the same `Idempotency-Key`; with
    /// its key again when it was sealed and is still inside the replay window, else with
    /// `key_unavailable` saying why not.
    async fn replay(&self, state: &AppState) -> Result<Option<Response>, ApiError> {
        let Some((key, hash)) = &self.idempotency else {
            return Ok(None);
        };
        let Some(record) = state.store.find_idempotency(&key.lookup()).await? else {
            return Ok(None);
        };
        if &record.request_hash != hash {
            // The header is not echoed: it is what protects a sealed key.
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was used at {} for a different request (another \
                     method, path or body); use a new Idempotency-Key for a new request",
                    rfc3339(record.created_at)
                ),
            ));
        }
        let mut body: Value = serde_json::from_str(&record.response).unwrap_or(Value::Null);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("replayed".into(), Value::Bool(true));
            if obj.contains_key("key") {
                match reopen(key, hash, &record, state.clock.now()) {
                    Ok(plain) => {
                        obj.insert("key".into(), Value::String(plain));
                    }
                    Err(why) => {
                        obj.insert("key".into(), Value::Null);
                        obj.insert("key_unavailable".into(), Value::String(why));
                    }
                }
            }
        }
        let status = StatusCode::from_u16(record.status).unwrap_or(StatusCode::OK);
        let mut response = (status, Json(body)).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }
}

/// The key a remembered answer showed, or why it cannot be shown again.
fn reopen(
    key: &IdempotencyKey,
    request_hash: &str,
    record: &IdempotencyRecord,
    at: Timestamp,
) -> Result<String, String> {
    if let Some(why) = key.weakness() {
        return Err(format!("the key is not shown again: {why}"));
    }
    let window = keyroll_store::IDEMPOTENT_KEY_WINDOW;
    if at.duration_since(record.created_at) > window {
        return Err(format!(
            "the key is not shown again: it is kept for replays for {} only, and this request \
             was first answered at {}",
            keyroll_core::format_duration(window),
            rfc3339(record.created_at)
        ));
    }
    let Some(sealed) = &record.sealed_key else {
        return Err("the key is not shown again: it was not kept for this request".into());
    };
    key.open(request_hash, sealed)
        .map_err(|_| "the key is not shown again: the kept copy could not be opened".into())
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

fn lifecycle_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::UnknownVersion { .. } => ApiError::not_found(e.to_string()),
        LifecycleError::BadRevokeReason => ApiError::bad_request(e.to_string()),
        LifecycleError::RetireActive { .. }
        | LifecycleError::NotRetiring { .. }
        | LifecycleError::VersionsExhausted { .. } => ApiError::conflict(e.to_string()),
    }
}

fn name_error(e: keyroll_core::NameError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn consumer_ref(env: &str, name: &str) -> Result<ConsumerRef, ApiError> {
    Ok(ConsumerRef {
        environment: Environment::parse(env).map_err(name_error)?,
        name: ConsumerName::parse(name).map_err(name_error)?,
    })
}

fn duration(field: &str, value: &str) -> Result<Duration, ApiError> {
    parse_duration(value).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

fn scopes(list: &[String]) -> Result<Vec<Scope>, ApiError> {
    list.iter()
        .map(|s| Scope::parse(s).map_err(name_error))
        .collect()
}

/// Refuses free text that holds a keyroll key (`kr_<env>_…` with a valid checksum) or an admin
/// token (`kra_…`): pasted by mistake, it would be stored, logged and returned. The detail never
/// echoes the value.
pub(crate) fn no_secret_in(field: &str, value: &str) -> Result<(), ApiError> {
    let bytes = value.as_bytes();
    let token_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    for start in 0..bytes.len() {
        if bytes[start] != b'k' || (start > 0 && token_char(&bytes[start - 1])) {
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|b| !token_char(b))
            .map_or(bytes.len(), |n| start + n);
        let run = &value[start..end];
        let what = if run.starts_with("kra_") && crate::admin_token::parse(run).is_some() {
            "an admin token (kra_…)"
        } else if keyroll_core::parse_key(run.as_bytes()).is_ok() {
            "a keyroll key (kr_<env>_… with a valid checksum)"
        } else {
            continue;
        };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret_in_text",
            format!(
                "{field} contains {what}; secrets are never stored in free text (the value is \
                 not repeated here). Remove it, and treat that secret as exposed: revoke or \
                 rotate it"
            ),
        ));
    }
    Ok(())
}

/// Refuses a change in a protected environment that was not confirmed. 428: the request is
/// right but needs a precondition, and retrying it with the confirmation is the whole fix.
async fn confirmed(
    state: &AppState,
    r: &ConsumerRef,
    confirm: bool,
    action: &str,
) -> Result<(), ApiError> {
    if confirm {
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
    Err(ApiError::new(
        StatusCode::PRECONDITION_REQUIRED,
        "confirmation_required",
        format!(
            "environment {} is protected: {action} of {r} needs explicit confirmation; repeat \
             with --yes (CLI) or \"confirm\": true in the JSON body.{urgency}",
            r.environment
        ),
    ))
}

/// A hard expiry from a request: in the future, or refused.
fn expiry(field: &str, value: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = value else { return Ok(None) };
    let d = duration(field, text)?;
    if d.is_zero() {
        return Err(ApiError::bad_request(format!(
            "{field}: must be longer than 0; a key that expires when it is issued would never \
             work (leave it out for no expiry)"
        )));
    }
    Ok(Some(d))
}

fn owner(value: Option<&str>) -> Result<Option<String>, ApiError> {
    if let Some(o) = value {
        no_secret_in("owner", o)?;
    }
    match value {
        None => Ok(None),
        Some("") => Ok(None),
        Some(o) if o.chars().count() <= 200 && !o.chars().any(char::is_control) => {
            Ok(Some(o.into()))
        }
        Some(_) => Err(ApiError::bad_request(
            "owner must be at most 200 characters without control characters",
        )),
    }
}

/// Applies the policy fields of a request onto `base`; each is validated with a precise message.
fn policy_from(
    base: Policy,
    retire: Option<&str>,
    idle: Option<&str>,
    on_stall: Option<&str>,
) -> Result<Policy, ApiError> {
    let mut p = base;
    if let Some(r) = retire {
        p.retire = RetirePolicy::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!(
                "retire: {r:?} is not a retire policy; expected when-idle or at-deadline"
            ))
        })?;
    }
    if let Some(i) = idle {
        p.idle = duration("idle", i)?;
        if p.idle.is_zero() {
            return Err(ApiError::bad_request("idle: must be longer than 0"));
        }
    }
    if let Some(o) = on_stall {
        p.on_stall = OnStall::parse(o).ok_or_else(|| {
            ApiError::bad_request(format!(
                "on_stall: {o:?} is not accepted; expected extend or retire"
            ))
        })?;
    }
    Ok(p)
}

fn new_key(
    randomness: &crate::clock::Randomness,
    environment: &Environment,
    expires_at: Option<Timestamp>,
) -> Result<(IssuedKey, NewVersion), ApiError> {
    let key = issue_key(environment, &mut randomness.entropy()).map_err(|e| {
        tracing::error!(event = "entropy.unavailable", error = %e, "cannot issue a key");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "entropy_unavailable",
            e.to_string(),
        )
    })?;
    let v = NewVersion {
        kid: key.kid,
        secret_hash: key.secret_hash,
        fingerprint: key.fingerprint,
        expires_at,
    };
    Ok((key, v))
}

/// A version as the API shows it at `now`.
pub fn version_json(
    v: &KeyVersion,
    policy: &Policy,
    last_used: Option<Timestamp>,
    now: Timestamp,
) -> proto::KeyVersion {
    let deadline = v.deadline_with(policy, last_used, now);
    proto::KeyVersion {
        version: v.number.0,
        kid: v.kid.to_string(),
        fingerprint: v.fingerprint.to_string(),
        state: v.state_with(policy, last_used, now).as_str().into(),
        created_at: rfc3339(v.created_at),
        deadline: deadline.map(rfc3339),
        extended: is_extended_at(&v.view(last_used), policy, now),
        expires_at: v.expires_at.map(rfc3339),
        revoked_at: v.revoked_at.map(rfc3339),
        revoke_reason: v.revoke_reason.clone(),
        replaced_by: v.replaced_by.map(|n| n.0),
        last_used_at: last_used.map(rfc3339),
        extension_if_stalled: extension_if_stalled(&v.view(last_used), policy, now).map(rfc3339),
        already_revoked: false,
        already_retired: false,
        warning: None,
    }
}

/// A consumer as the API shows it at `now`, with what this node knows of its use.
pub fn consumer_json(
    c: &Consumer,
    index: &keyroll_verify::index::Index,
    now: Timestamp,
) -> proto::Consumer {
    proto::Consumer {
        environment: c.environment.to_string(),
        name: c.name.to_string(),
        scopes: c.scopes.iter().map(ToString::to_string).collect(),
        owner: c.owner.clone(),
        disabled: c.disabled,
        created_at: rfc3339(c.created_at),
        retire: c.policy.retire.as_str().into(),
        idle: keyroll_core::format_duration(c.policy.idle),
        on_stall: c.policy.on_stall.as_str().into(),
        versions: c
            .versions
            .iter()
            .map(|v| version_json(v, &c.policy, index.last_used(&v.kid), now))
            .collect(),
    }
}

/// A planned change to a consumer, before it is written.
struct Planned {
    consumer: Consumer,
    effects: Vec<Effect>,
    action: &'static str,
    params: Value,
    issued: Option<IssuedKey>,
}

/// The target and details of an effect, for its audit entry and its event.
fn effect_detail(e: &Effect, consumer: &Consumer, reference: &str) -> (String, Option<u32>, Value) {
    let kid = |n: VersionNumber| consumer.version(n).map(|v| v.kid.to_string());
    match e {
        Effect::Issued(n) => (
            format!("{reference} {n}"),
            Some(n.0),
            json!({ "kid": kid(*n) }),
        ),
        Effect::Retiring { version, deadline } => (
            format!("{reference} {version}"),
            Some(version.0),
            json!({ "kid": kid(*version), "deadline": rfc3339(*deadline) }),
        ),
        Effect::Retired { version, reason } => (
            format!("{reference} {version}"),
            Some(version.0),
            json!({
                "kid": kid(*version),
                "reason": reason.as_str(),
                "replaced_by": consumer.version(*version).and_then(|v| v.replaced_by).map(|n| n.0),
            }),
        ),
        Effect::Revoked(n) => (
            format!("{reference} {n}"),
            Some(n.0),
            json!({ "kid": kid(*n), "reason": consumer.version(*n).and_then(|v| v.revoke_reason.clone()) }),
        ),
        Effect::Stalled {
            version,
            deadline,
            until,
        } => (
            format!("{reference} {version}"),
            Some(version.0),
            json!({ "kid": kid(*version), "deadline": rfc3339(*deadline), "extended_until": rfc3339(*until) }),
        ),
        Effect::Unused(n) => (
            format!("{reference} {n}"),
            Some(n.0),
            json!({ "kid": kid(*n), "issued_at": consumer.version(*n).map(|v| rfc3339(v.created_at)) }),
        ),
        Effect::Disabled | Effect::Enabled => (reference.to_owned(), None, json!({})),
    }
}

/// When each version of `consumer` was last seen, as this node's index knows it.
pub(crate) fn usage_of(state: &AppState, consumer: &Consumer) -> Vec<(VersionNumber, Timestamp)> {
    consumer
        .versions
        .iter()
        .filter_map(|v| state.index.last_used(&v.kid).map(|t| (v.number, t)))
        .collect()
}

/// Who was still using a stalled version, as recorded (flushes pending usage first).
async fn stall_sources(state: &AppState, kid: Kid, at: Timestamp) -> Value {
    crate::jobs::flush_usage(state).await;
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

fn audit_and_events(
    ctx: &Ctx,
    at: Timestamp,
    reference: &str,
    planned: &Planned,
    extra: &[(usize, Value)],
) -> (Vec<AuditRecord>, Vec<EventRecord>) {
    let mut audit = Vec::new();
    let mut events = Vec::new();
    for (i, e) in planned.effects.iter().enumerate() {
        let (target, version, mut detail) = effect_detail(e, &planned.consumer, reference);
        if let Some((_, more)) = extra.iter().find(|(j, _)| *j == i)
            && let (Some(d), Some(m)) = (detail.as_object_mut(), more.as_object())
        {
            d.extend(m.clone());
        }
        audit.push(ctx.audit(
            at,
            e.kind(),
            target,
            json!({ "command": planned.action, "params": planned.params, "effect": detail }),
        ));
        events.push(EventRecord {
            seq: 0,
            at,
            kind: e.kind().into(),
            consumer: reference.to_owned(),
            version,
            detail: detail.to_string(),
        });
    }
    if audit.is_empty() && planned.action == "consumer.update" {
        audit.push(ctx.audit(
            at,
            "consumer.updated",
            reference.to_owned(),
            planned.params.clone(),
        ));
    }
    (audit, events)
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

/// Reads, plans, writes and indexes one change to a consumer; answers with `respond`.
async fn commit(
    state: &AppState,
    ctx: &Ctx,
    r: &ConsumerRef,
    status: StatusCode,
    plan: impl Fn(&Consumer, &Usage<'_>, Timestamp) -> Result<Planned, ApiError>,
    respond: impl Fn(&Consumer, &Planned, Timestamp) -> Value,
) -> Result<Response, ApiError> {
    if let Some(replayed) = ctx.replay(state).await? {
        return Ok(replayed);
    }
    match commit_planned(state, ctx, r, status, plan, respond).await {
        Ok(((code, body), _)) => Ok((code, Json(body)).into_response()),
        // A concurrent request with the same key won: answer what it answered.
        Err(e) if e.code == "idempotency_key_reused" => match ctx.replay(state).await? {
            Some(replayed) => Ok(replayed),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

type Answer = (StatusCode, Value);

async fn commit_planned(
    state: &AppState,
    ctx: &Ctx,
    r: &ConsumerRef,
    status: StatusCode,
    plan: impl Fn(&Consumer, &Usage<'_>, Timestamp) -> Result<Planned, ApiError>,
    respond: impl Fn(&Consumer, &Planned, Timestamp) -> Value,
) -> Result<(Answer, Vec<Effect>), ApiError> {
    for _ in 0..MAX_ATTEMPTS {
        let stored = state
            .store
            .get_consumer(r)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("consumer {r} does not exist")))?;
        let at = state.clock.now();
        let seen = usage_of(state, &stored.consumer);
        let planned = plan(&stored.consumer, &Usage::new(&seen), at)?;
        let answer = respond(&stored.consumer, &planned, at);
        let (with_key, public) = split_secret(answer);
        // Nothing changed (a retried retire, a second disable): answer without writing.
        if planned.effects.is_empty() && planned.consumer == stored.consumer {
            return Ok(((StatusCode::OK, with_key), Vec::new()));
        }
        let mut extra = Vec::new();
        for (i, e) in planned.effects.iter().enumerate() {
            if let Effect::Stalled { version, .. } = e
                && let Some(v) = planned.consumer.version(*version)
            {
                extra.push((i, stall_sources(state, v.kid, at).await));
            }
        }
        let reference = r.to_string();
        let (audit, events) = audit_and_events(ctx, at, &reference, &planned, &extra);
        let idem = ctx.idempotency_record(
            status,
            &public,
            at,
            planned.issued.as_ref(),
            &state.randomness,
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
                for (e, event) in planned.effects.iter().zip(&events) {
                    if let Some(o) = outcome(e) {
                        state.observer.rotation(r.environment.as_str(), o);
                    }
                    match e {
                        Effect::Stalled { .. } => {
                            tracing::error!(event = "rotation.stalled", consumer = %r, version = event.version, detail = event.detail.as_str(), actor = ctx.actor.as_str(), "rotation of {r} stalled: v{} is still in use at its deadline; extended once", event.version.unwrap_or(0))
                        }
                        _ => {
                            tracing::info!(event = e.kind(), consumer = %r, version = event.version, detail = event.detail.as_str(), actor = ctx.actor.as_str(), request_id = ctx.request_id.as_str(), "{} {r}", e.kind())
                        }
                    }
                }
                return Ok(((status, with_key), planned.effects));
            }
            Err(StoreError::Conflict(_) | StoreError::KidCollision) => continue,
            Err(StoreError::IdempotencyKeyUsed) => {
                return Err(StoreError::IdempotencyKeyUsed.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "{r} is being changed by other requests; retry"
    )))
}

/// Writes down what time and traffic decided for one consumer (deadlines, stalls, idle
/// retirements, unused versions): the sweeper's step. Returns the effects.
pub(crate) async fn settle(state: &AppState, r: &ConsumerRef) -> Result<Vec<Effect>, ApiError> {
    let ctx = Ctx {
        actor: "system".into(),
        request_id: crate::http::new_request_id(),
        remote: String::new(),
        idempotency: None,
    };
    let (_, effects) = commit_planned(
        state,
        &ctx,
        r,
        StatusCode::OK,
        |c, usage, at| {
            let t = c
                .apply(Command::Settle, usage, at)
                .map_err(lifecycle_error)?;
            Ok(Planned {
                consumer: t.consumer,
                effects: t.effects,
                action: "settle",
                params: json!({}),
                issued: None,
            })
        },
        |_, _, _| Value::Null,
    )
    .await?;
    Ok(effects)
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "up")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers and takes writes, and the index is loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = proto::Health), (status = 503, body = proto::Health)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.ready.load(Ordering::Acquire);
    let ping = state.store.ping().await;
    let status = match (&ping, loaded) {
        (Ok(()), true) => "ok".to_owned(),
        (_, false) => "loading keys".to_owned(),
        // Down too when the last write failed and a probe write still fails (a full disk: reads
        // work all along), or when the database file was deleted or replaced.
        (Err(e), true) => format!("store unreachable: {e}"),
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = proto::Health {
        status,
        store: Some(state.store.backend().into()),
        key_versions: Some(state.index.len()),
    };
    (code, Json(body)).into_response()
}

/// `POST /v1/environments`.
#[utoipa::path(post, path = "/v1/environments", tag = "environments", request_body = proto::CreateEnvironment,
    responses((status = 201, body = proto::Environment), (status = 409, body = proto::Problem, description = "`already_exists`"),
        (status = 422, body = proto::Problem, description = "`idempotency_key_reused`")),
    security(("admin_token" = ["environments:write"])))]
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: ApiJson<proto::CreateEnvironment>,
) -> Result<Response, ApiError> {
    admin.require("environments:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let name = Environment::parse(&body.value.name).map_err(name_error)?;
    let at = state.clock.now();
    let record = EnvironmentRecord {
        name: name.clone(),
        protected: body.value.protected,
        created_at: at,
    };
    let audit = ctx.audit(
        at,
        "environment.created",
        format!("environment {name}"),
        json!({ "protected": record.protected }),
    );
    state.store.create_environment(&record, &audit).await?;
    tracing::info!(event = "environment.created", environment = %name, actor = ctx.actor.as_str(), "environment {name} created");
    let answer = proto::Environment {
        name: name.to_string(),
        protected: record.protected,
        created_at: rfc3339(at),
    };
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/environments/{name}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/environments`.
#[utoipa::path(get, path = "/v1/environments", tag = "environments",
    responses((status = 200, body = proto::List<proto::Environment>)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn list_environments(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<proto::List<proto::Environment>>, ApiError> {
    admin.require("consumers:read")?;
    let items = state
        .store
        .list_environments()
        .await?
        .into_iter()
        .map(|e| proto::Environment {
            name: e.name.to_string(),
            protected: e.protected,
            created_at: rfc3339(e.created_at),
        })
        .collect();
    Ok(Json(proto::List { items }))
}

/// `POST /v1/consumers`: creates a consumer and its first key (shown once).
#[utoipa::path(post, path = "/v1/consumers", tag = "consumers", request_body = proto::CreateConsumer,
    params(("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key does not create twice")),
    responses((status = 201, body = proto::ConsumerCreated), (status = 404, body = proto::Problem, description = "the environment does not exist"), (status = 409, body = proto::Problem, description = "`already_exists`"),
        (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request")),
    security(("admin_token" = ["consumers:write"])))]
pub async fn create_consumer(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: ApiJson<proto::CreateConsumer>,
) -> Result<Response, ApiError> {
    admin.require("consumers:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let req = body.value;
    let r = consumer_ref(&req.environment, &req.name)?;
    let granted = scopes(&req.scopes)?;
    let owner = owner(req.owner.as_deref())?;
    let policy = policy_from(
        Policy::default(),
        req.retire.as_deref(),
        req.idle.as_deref(),
        req.on_stall.as_deref(),
    )?;
    let expires_in = expiry("expires_in", req.expires_in.as_deref())?;
    if let Some(replayed) = ctx.replay(&state).await? {
        return Ok(replayed);
    }
    for _ in 0..MAX_ATTEMPTS {
        let at = state.clock.now();
        let (issued, first) = new_key(
            &state.randomness,
            &r.environment,
            expires_in.map(|d| at.saturating_add(d)),
        )?;
        let mut consumer = Consumer::create(
            r.environment.clone(),
            r.name.clone(),
            granted.clone(),
            owner.clone(),
            first,
            at,
        );
        consumer.policy = policy;
        let answer = proto::ConsumerCreated {
            consumer: consumer_json(&consumer, &state.index, at),
            key: Some(issued.reveal().to_owned()),
            kid: issued.kid.to_string(),
            version: 1,
            replayed: false,
            key_unavailable: None,
        };
        let (with_key, public) = split_secret(serde_json::to_value(&answer).unwrap_or(Value::Null));
        let params = json!({ "scopes": req.scopes, "owner": owner, "expires_in": req.expires_in });
        let audit = [
            ctx.audit(at, "consumer.created", r.to_string(), params.clone()),
            ctx.audit(
                at,
                "version.issued",
                format!("{r} v1"),
                json!({ "kid": issued.kid.to_string() }),
            ),
        ];
        let idem = ctx.idempotency_record(
            StatusCode::CREATED,
            &public,
            at,
            Some(&issued),
            &state.randomness,
        );
        match state
            .store
            .create_consumer(&consumer, &audit, idem.as_ref())
            .await
        {
            Ok(stored) => {
                state.index.upsert(stored.revision, &stored.consumer);
                tracing::info!(event = "consumer.created", consumer = %r, kid = %issued.kid, actor = ctx.actor.as_str(), request_id = ctx.request_id.as_str(), "consumer {r} created with v1");
                let mut response = (StatusCode::CREATED, Json(with_key)).into_response();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("/v1/consumers/{}/{}", r.environment, r.name))
                {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                return Ok(response);
            }
            Err(StoreError::KidCollision) => continue,
            Err(StoreError::NotFound(_)) => {
                return Err(ApiError::not_found(format!(
                    "environment {} does not exist; create it first (keyroll env create {})",
                    r.environment, r.environment
                )));
            }
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_exists",
                    format!("consumer {r} already exists; rotate it to get a new key"),
                ));
            }
            Err(StoreError::IdempotencyKeyUsed) => {
                if let Some(replayed) = ctx.replay(&state).await? {
                    return Ok(replayed);
                }
                return Err(StoreError::IdempotencyKeyUsed.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "retry",
        "could not allocate a unique key id; retry",
    ))
}

/// `GET /v1/consumers?environment=E`.
#[utoipa::path(get, path = "/v1/consumers", tag = "consumers",
    params(("environment" = Option<String>, Query, description = "only this environment")),
    responses((status = 200, body = proto::List<proto::Consumer>)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn list_consumers(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::List<proto::Consumer>>, ApiError> {
    admin.require("consumers:read")?;
    let mut environment = None;
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "environment" => environment = Some(Environment::parse(&v).map_err(name_error)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let at = state.clock.now();
    let items = state
        .store
        .list_consumers(environment.as_ref())
        .await?
        .iter()
        .map(|s| consumer_json(&s.consumer, &state.index, at))
        .collect();
    Ok(Json(proto::List { items }))
}

/// `GET /v1/consumers/{env}/{name}`.
#[utoipa::path(get, path = "/v1/consumers/{env}/{name}", tag = "consumers",
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn get_consumer(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath((env, name)): ApiPath<(String, String)>,
) -> Result<Json<proto::Consumer>, ApiError> {
    admin.require("consumers:read")?;
    let r = consumer_ref(&env, &name)?;
    let stored = state
        .store
        .get_consumer(&r)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("consumer {r} does not exist")))?;
    Ok(Json(consumer_json(
        &stored.consumer,
        &state.index,
        state.clock.now(),
    )))
}

/// `PATCH /v1/consumers/{env}/{name}`: scopes, owner.
#[utoipa::path(patch, path = "/v1/consumers/{env}/{name}", tag = "consumers", request_body = proto::UpdateConsumer,
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request")),
    security(("admin_token" = ["consumers:write"])))]
#[allow(clippy::too_many_arguments)]
pub async fn update_consumer(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath((env, name)): ApiPath<(String, String)>,
    body: ApiJson<proto::UpdateConsumer>,
) -> Result<Response, ApiError> {
    admin.require("consumers:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let new_scopes = body.value.scopes.as_deref().map(scopes).transpose()?;
    let new_owner = body
        .value
        .owner
        .as_deref()
        .map(|o| owner(Some(o)))
        .transpose()?;
    let u = &body.value;
    // Validated against the default now (a precise 400 before any read), applied to the
    // stored policy below.
    policy_from(
        Policy::default(),
        u.retire.as_deref(),
        u.idle.as_deref(),
        u.on_stall.as_deref(),
    )?;
    let params = json!({ "scopes": u.scopes, "owner": u.owner, "retire": u.retire, "idle": u.idle, "on_stall": u.on_stall });
    commit(
        &state,
        &ctx,
        &r,
        StatusCode::OK,
        |c, _usage, _at| {
            let mut next = c.clone();
            if let Some(s) = &new_scopes {
                let mut s = s.clone();
                s.sort();
                s.dedup();
                next.scopes = s;
            }
            if let Some(o) = &new_owner {
                next.owner = o.clone();
            }
            next.policy = policy_from(
                c.policy,
                u.retire.as_deref(),
                u.idle.as_deref(),
                u.on_stall.as_deref(),
            )?;
            Ok(Planned {
                consumer: next,
                effects: Vec::new(),
                action: "consumer.update",
                params: params.clone(),
                issued: None,
            })
        },
        |_, p, at| {
            serde_json::to_value(consumer_json(&p.consumer, &state.index, at))
                .unwrap_or(Value::Null)
        },
    )
    .await
}

/// `POST /v1/consumers/{env}/{name}/rotate`: issues the next version; older ones retire after
/// the grace window.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/rotate", tag = "lifecycle", request_body = proto::RotateRequest,
    params(("env" = String, Path), ("name" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key does not rotate twice")),
    responses((status = 201, body = proto::Rotated), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"),
        (status = 422, body = proto::Problem, description = "`expiry_within_grace`, or `idempotency_key_reused`"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["keys:write"])))]
#[allow(clippy::too_many_arguments)]
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath((env, name)): ApiPath<(String, String)>,
    body: ApiJson<proto::RotateRequest>,
) -> Result<Response, ApiError> {
    admin.require("keys:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let grace = match body.value.grace.as_deref() {
        Some(g) => duration("grace", g)?,
        None => state.config.default_grace,
    };
    let expires_in = expiry("expires_in", body.value.expires_in.as_deref())?;
    // The new key must outlive the grace window, or it expires while the old one (which it
    // replaces) still works and the consumer is left with a key that retires and one that died.
    if let Some(e) = expires_in
        && e <= grace
        && !grace.is_zero()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiry_within_grace",
            format!(
                "expires_in ({}) is not longer than the grace window ({}): the new key would \
                 expire before the old one retires; give a longer expires_in or a shorter grace",
                keyroll_core::format_duration(e),
                keyroll_core::format_duration(grace)
            ),
        ));
    }
    confirmed(&state, &r, body.value.confirm, "rotate").await?;
    let enforce = body.value.enforce;
    let params = json!({ "grace": keyroll_core::format_duration(grace), "enforce": enforce, "expires_in": body.value.expires_in });
    commit(
        &state,
        &ctx,
        &r,
        StatusCode::CREATED,
        |c, usage, at| {
            let (issued, new_version) = new_key(
                &state.randomness,
                &c.environment,
                expires_in.map(|d| at.saturating_add(d)),
            )?;
            let t = c
                .apply(
                    Command::Rotate {
                        grace,
                        enforce,
                        new_version,
                    },
                    usage,
                    at,
                )
                .map_err(lifecycle_error)?;
            Ok(Planned {
                consumer: t.consumer,
                effects: t.effects,
                action: "rotate",
                params: params.clone(),
                issued: Some(issued),
            })
        },
        |_, p, _at| {
            let new = p.consumer.active_version();
            let answer = proto::Rotated {
                consumer: r.to_string(),
                key: p.issued.as_ref().map(|k| k.reveal().to_owned()),
                kid: new.map(|v| v.kid.to_string()).unwrap_or_default(),
                version: new.map(|v| v.number.0).unwrap_or(0),
                retiring: p
                    .effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Retiring { version, deadline } => Some(proto::Retiring {
                            version: version.0,
                            deadline: rfc3339(*deadline),
                        }),
                        _ => None,
                    })
                    .collect(),
                retired: p
                    .effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Retired { version, .. } => Some(version.0),
                        _ => None,
                    })
                    .collect(),
                replayed: false,
                key_unavailable: None,
            };
            serde_json::to_value(answer).unwrap_or(Value::Null)
        },
    )
    .await
}

fn version_number(text: &str) -> Result<VersionNumber, ApiError> {
    VersionNumber::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid version {text:?}: expected v1, v2, … or 1, 2, …"
        ))
    })
}

/// `POST /v1/consumers/{env}/{name}/versions/{n}/revoke`: immediate, never gated.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/versions/{version}/revoke", tag = "lifecycle", request_body = proto::RevokeRequest,
    params(("env" = String, Path), ("name" = String, Path), ("version" = String, Path, description = "v3 or 3")),
    responses((status = 200, body = proto::KeyVersion), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["keys:write"])))]
#[allow(clippy::too_many_arguments)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath((env, name, version)): ApiPath<(String, String, String)>,
    body: ApiJson<proto::RevokeRequest>,
) -> Result<Response, ApiError> {
    admin.require("keys:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let n = version_number(&version)?;
    let reason = body.value.reason.clone();
    no_secret_in("reason", &reason)?;
    confirmed(&state, &r, body.value.confirm, "revoke").await?;
    let params = json!({ "version": n.0, "reason": reason });
    commit(
        &state,
        &ctx,
        &r,
        StatusCode::OK,
        |c, usage, at| {
            let t = c
                .apply(
                    Command::Revoke {
                        version: n,
                        reason: reason.clone(),
                    },
                    usage,
                    at,
                )
                .map_err(lifecycle_error)?;
            Ok(Planned {
                consumer: t.consumer,
                effects: t.effects,
                action: "revoke",
                params: params.clone(),
                issued: None,
            })
        },
        |before, p, at| {
            let mut answer = version_answer(&state, &p.consumer, n, at);
            if let Some(obj) = answer.as_object_mut() {
                // Idempotent but honest: a second revoke changes nothing and says so.
                if before
                    .version(n)
                    .is_some_and(|v| v.state == keyroll_core::StoredState::Revoked)
                {
                    obj.insert("already_revoked".into(), Value::Bool(true));
                }
                let seen = usage_of(&state, &p.consumer);
                if !p.consumer.has_valid_version(&Usage::new(&seen), at) {
                    obj.insert(
                        "warning".into(),
                        Value::String(format!(
                            "{r} now has no working key: every request with its keys is \
                             rejected until you rotate (keyroll rotate {r})"
                        )),
                    );
                }
            }
            answer
        },
    )
    .await
}

fn version_answer(state: &AppState, c: &Consumer, n: VersionNumber, at: Timestamp) -> Value {
    c.version(n)
        .map(|v| {
            serde_json::to_value(version_json(
                v,
                &c.policy,
                state.index.last_used(&v.kid),
                at,
            ))
            .unwrap_or(Value::Null)
        })
        .unwrap_or(Value::Null)
}

/// `POST /v1/consumers/{env}/{name}/versions/{n}/retire`: ends a grace window now.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/versions/{version}/retire", tag = "lifecycle", request_body = proto::Confirm,
    params(("env" = String, Path), ("name" = String, Path), ("version" = String, Path, description = "v3 or 3")),
    responses((status = 200, body = proto::KeyVersion), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["keys:write"])))]
#[allow(clippy::too_many_arguments)]
pub async fn retire(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath((env, name, version)): ApiPath<(String, String, String)>,
    body: ApiJson<proto::Confirm>,
) -> Result<Response, ApiError> {
    admin.require("keys:write")?;
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let n = version_number(&version)?;
    confirmed(&state, &r, body.value.confirm, "retire").await?;
    commit(
        &state,
        &ctx,
        &r,
        StatusCode::OK,
        |c, usage, at| {
            let t = c
                .apply(Command::Retire { version: n }, usage, at)
                .map_err(lifecycle_error)?;
            Ok(Planned {
                consumer: t.consumer,
                effects: t.effects,
                action: "retire",
                params: json!({ "version": n.0 }),
                issued: None,
            })
        },
        |before, p, at| {
            let mut answer = version_answer(&state, &p.consumer, n, at);
            // Like a second revoke: a no-op that says so.
            if let Some(obj) = answer.as_object_mut()
                && before
                    .version(n)
                    .is_some_and(|v| v.state == keyroll_core::StoredState::Retired)
            {
                obj.insert("already_retired".into(), Value::Bool(true));
            }
            answer
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn switch(
    state: Arc<AppState>,
    admin: Admin,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    (env, name): (String, String),
    command: Command,
    action: &'static str,
    confirm: Option<(bool, [u8; 32])>,
) -> Result<Response, ApiError> {
    admin.require("consumers:write")?;
    let body_hash = confirm.map_or([0; 32], |(_, h)| h);
    let ctx = ctx(&admin, peer, &headers, &method, &uri, &body_hash)?;
    let r = consumer_ref(&env, &name)?;
    if let Some((yes, _)) = confirm {
        confirmed(&state, &r, yes, action).await?;
    }
    commit(
        &state,
        &ctx,
        &r,
        StatusCode::OK,
        |c, usage, at| {
            let t = c
                .apply(command.clone(), usage, at)
                .map_err(lifecycle_error)?;
            Ok(Planned {
                consumer: t.consumer,
                effects: t.effects,
                action,
                params: json!({}),
                issued: None,
            })
        },
        |_, p, at| {
            serde_json::to_value(consumer_json(&p.consumer, &state.index, at))
                .unwrap_or(Value::Null)
        },
    )
    .await
}

/// `POST /v1/consumers/{env}/{name}/disable`: every key of the consumer is rejected.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/disable", tag = "lifecycle", request_body = proto::Confirm,
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["consumers:write"])))]
#[allow(clippy::too_many_arguments)]
pub async fn disable(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath(path): ApiPath<(String, String)>,
    body: ApiJson<proto::Confirm>,
) -> Result<Response, ApiError> {
    switch(
        state,
        admin,
        peer,
        method,
        uri,
        headers,
        path,
        Command::Disable,
        "disable",
        Some((body.value.confirm, body.body_hash)),
    )
    .await
}

/// `POST /v1/consumers/{env}/{name}/enable`.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/enable", tag = "lifecycle",
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request")),
    security(("admin_token" = ["consumers:write"])))]
pub async fn enable(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ApiPath(path): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    switch(
        state,
        admin,
        peer,
        method,
        uri,
        headers,
        path,
        Command::Enable,
        "enable",
        None,
    )
    .await
}
