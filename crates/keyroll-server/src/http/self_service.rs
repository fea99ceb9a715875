//! Self-service for agents (SPEC §10), authenticated by the consumer's own key
//! (`Authorization: Bearer kr_…`): `GET /v1/self` (long-poll), `POST /v1/self/rotate`,
//! `/handover`, `/report`. A consumer key reaches only these paths and only its own consumer;
//! every admin path refuses it as a malformed admin token. The key is checked by the verifier
//! as an operator check, so an agent's own calls never count as the app's traffic (they would
//! keep an old version "in use" and stall its retirement).
//!
//! Also the admin side: `POST /v1/consumers/{env}/{name}/request-rotation` and `GET /v1/agents`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use keyroll_core::{ConsumerRef, Effect, Environment};
use keyroll_proto as proto;
use keyroll_verify::verify::{Presented, Recording, verify};
use serde_json::Value;

use crate::http::admin::{Caller, consumer_ref, name_error, no_secret_in, respond};
use crate::http::auth::RequestInfo;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service::delivery::{self, ConsumerCaller, MAX_WAIT};
use crate::service::idempotency::{Idempotency, IdempotencyKey};
use crate::service::{self, Request};
use crate::state::AppState;

/// A caller authenticated by one of its consumer's keys, and its request's idempotency key.
#[derive(Debug)]
pub struct SelfCaller {
    /// Who.
    pub caller: ConsumerCaller,
    idempotency: Result<Option<IdempotencyKey>, String>,
    path: String,
}

fn rejected(request: &RequestInfo, code: &'static str, detail: String) -> ApiError {
    let remote = request.remote_addr();
    tracing::warn!(
        event = "self.auth",
        code,
        detail = detail.as_str(),
        request_id = request.request_id.as_str(),
        remote_addr = remote.as_deref(),
        method = request.method.as_str(),
        uri = request.uri.as_str(),
        "self-service request rejected"
    );
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, code, detail);
    e.www_authenticate = Some(format!(
        "Bearer realm=\"keyroll-self\", error=\"invalid_token\", error_description=\"{code}\""
    ));
    e
}

impl FromRequestParts<Arc<AppState>> for SelfCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let request = RequestInfo::from_parts(parts, state);
        let raw = match parts.headers.get(header::AUTHORIZATION) {
            None => {
                return Err(rejected(
                    &request,
                    "missing_credential",
                    "no key: send Authorization: Bearer <the consumer's key>".into(),
                ));
            }
            Some(v) => {
                let b = v.as_bytes();
                if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
                    b[7..].trim_ascii()
                } else {
                    return Err(rejected(
                        &request,
                        "malformed_credential",
                        "the Authorization header does not use the Bearer scheme".into(),
                    ));
                }
            }
        };
        let now = state.clock.now();
        let none: &[&str] = &[];
        let v = verify(
            &state.index,
            Presented::Key(raw),
            None,
            none,
            Recording::OperatorCheck,
            now,
        );
        if !v.code.allowed() {
            return Err(rejected(&request, v.code.as_str(), v.caller_detail()));
        }
        let (Some(entry), Some(version), Some(kid)) = (v.consumer(), v.version(), v.kid) else {
            return Err(rejected(
                &request,
                "unknown_key",
                "the key is not known".into(),
            ));
        };
        let consumer = ConsumerRef::parse(entry.reference()).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let key = String::from_utf8_lossy(raw).into_owned();
        let idempotency = parts
            .headers
            .get("idempotency-key")
            .map(|v| IdempotencyKey::parse(v.as_bytes()).map_err(|e| e.to_string()))
            .transpose();
        Ok(SelfCaller {
            caller: ConsumerCaller::new(
                consumer,
                kid,
                version,
                key,
                request.request_id.clone(),
                request.remote_addr(),
            ),
            idempotency,
            path: parts.uri.path().to_owned(),
        })
    }
}

impl SelfCaller {
    fn request(&self, agent: &str, body_hash: &[u8; 32]) -> Result<Request, ApiError> {
        let idempotency = match &self.idempotency {
            Ok(None) => None,
            Ok(Some(key)) => Some(Idempotency::new(key.clone(), "POST", &self.path, body_hash)),
            Err(e) => return Err(ApiError::bad_request(e.clone())),
        };
        Ok(Request {
            actor: self.caller.actor(agent),
            idempotency,
        })
    }
}

/// The long-poll's query: `wait`, `known` (the consumer revision seen) and `known_bundle` (the
/// CA bundle version the agent holds).
#[derive(Debug, Default)]
struct WaitParams {
    wait: Option<Duration>,
    known: Option<i64>,
    known_bundle: Option<u64>,
}

fn wait_params(uri: &Uri) -> Result<WaitParams, ApiError> {
    let mut p = WaitParams::default();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "wait" => {
                let d = keyroll_core::parse_duration(&v).map_err(|e| {
                    ApiError::bad_request(format!("wait: {e} (a duration such as 25s)"))
                })?;
                p.wait = Some(d.min(MAX_WAIT));
            }
            "known" => {
                p.known = Some(v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request("known: expected the revision of an earlier answer")
                })?);
            }
            "known_bundle" => {
                p.known_bundle = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "known_bundle: expected the bundle_version of an earlier answer (0 or more)",
                    )
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok(p)
}

/// `GET /v1/self[?wait=25s&known=REVISION&known_bundle=N]`.
#[utoipa::path(get, path = "/v1/self", tag = "agent",
    params(("wait" = Option<String>, Query, description = "hold the answer until the consumer changes or this long passes (at most 60s)"),
        ("known" = Option<i64>, Query, description = "the revision of the caller's last answer"),
        ("known_bundle" = Option<u64>, Query, description = "the CA bundle version the caller holds: the held answer is also released when the server's differs")),
    responses((status = 200, body = proto::SelfState), (status = 400, body = proto::Problem),
        (status = 401, body = proto::Problem, description = "the key is not valid: the code says why (key_retired, key_revoked, …)")),
    security(("consumer_key" = [])))]
pub async fn self_state(
    State(state): State<Arc<AppState>>,
    caller: SelfCaller,
    uri: Uri,
) -> Result<Json<proto::SelfState>, ApiError> {
    let WaitParams {
        wait,
        known,
        known_bundle,
    } = wait_params(&uri)?;
    let mut changes = state.changes.subscribe();
    // Every install of the CA's trust store (a write here, another node's change applied)
    // replaces the watched value: a long-poll waiting for a new bundle wakes on it.
    let mut bundle = state.ca.trust();
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        changes.borrow_and_update();
        bundle.borrow_and_update();
        let (answer, revision) =
            delivery::self_state(&state, &caller.caller, state.clock.now()).await?;
        let changed = known.is_none_or(|k| k != revision)
            || known_bundle.is_some_and(|b| b != answer.bundle_version);
        let Some(deadline) = deadline else {
            return Ok(Json(answer));
        };
        if changed || answer.rotate.is_some() || answer.handover.is_some() {
            return Ok(Json(answer));
        }
        // Time alone can make a rotation due: look again at least every few seconds.
        let next = deadline.min(tokio::time::Instant::now() + Duration::from_secs(5));
        let woke = tokio::select! {
            r = changes.changed() => r.is_ok(),
            r = bundle.changed() => r.is_ok(),
            () = tokio::time::sleep_until(next) => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Json(answer));
                }
                true
            }
        };
        if !woke {
            return Ok(Json(answer));
        }
    }
}

/// `POST /v1/self/rotate`.
#[utoipa::path(post, path = "/v1/self/rotate", tag = "agent", request_body = proto::SelfRotateRequest,
    responses((status = 201, body = proto::Rotated, description = "the new key, once"),
        (status = 400, body = proto::Problem), (status = 401, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "`rotation_raced`: another agent rotated first; take its handover"),
        (status = 422, body = proto::Problem)),
    security(("consumer_key" = [])))]
pub async fn self_rotate(
    State(state): State<Arc<AppState>>,
    caller: SelfCaller,
    body: ApiJson<proto::SelfRotateRequest>,
) -> Result<Response, ApiError> {
    delivery::check_agent_id(&body.value.agent)?;
    let request = caller.request(&body.value.agent, &body.body_hash)?;
    let r = caller.caller.consumer.clone();
    let answer = delivery::self_rotate(
        &state,
        &request,
        &caller.caller,
        body.value.expect_active,
        |_, p, _| crate::http::admin::versions::rotated(&r, p),
    )
    .await?;
    if let service::Answer::Fresh { effects, .. } = &answer
        && let Some(Effect::Issued(n)) = effects.iter().find(|e| matches!(e, Effect::Issued(_)))
    {
        tracing::info!(event = "agent.rotated", consumer = %r, agent = body.value.agent.as_str(), from_version = caller.caller.version.0, version = n.0, request_id = caller.caller.request_id.as_str(), "agent {} rotated {r} to {n}", body.value.agent);
    }
    Ok(respond(answer, StatusCode::CREATED, None))
}

/// `POST /v1/self/handover`.
#[utoipa::path(post, path = "/v1/self/handover", tag = "agent", request_body = proto::HandoverRequest,
    responses((status = 200, body = proto::Handover),
        (status = 400, body = proto::Problem), (status = 401, body = proto::Problem),
        (status = 404, body = proto::Problem, description = "`no_handover`: nothing was left for this key"),
        (status = 422, body = proto::Problem)),
    security(("consumer_key" = [])))]
pub async fn self_handover(
    State(state): State<Arc<AppState>>,
    caller: SelfCaller,
    body: ApiJson<proto::HandoverRequest>,
) -> Result<Json<proto::Handover>, ApiError> {
    delivery::check_agent_id(&body.value.agent)?;
    Ok(Json(
        delivery::take_handover(&state, &caller.caller, &body.value.agent).await?,
    ))
}

/// `POST /v1/self/report`.
#[utoipa::path(post, path = "/v1/self/report", tag = "agent", request_body = proto::AgentReport,
    responses((status = 200, body = proto::AgentInfo),
        (status = 400, body = proto::Problem), (status = 401, body = proto::Problem),
        (status = 422, body = proto::Problem)),
    security(("consumer_key" = [])))]
pub async fn self_report(
    State(state): State<Arc<AppState>>,
    caller: SelfCaller,
    body: ApiJson<proto::AgentReport>,
) -> Result<Json<proto::AgentInfo>, ApiError> {
    let r = &body.value;
    for (field, value) in [
        ("host", r.host.as_deref()),
        ("mode", r.mode.as_deref()),
        ("health", r.health.as_deref()),
        ("detail", r.detail.as_deref()),
    ] {
        if let Some(v) = value {
            no_secret_in(field, v)?;
        }
    }
    Ok(Json(delivery::report(&state, &caller.caller, r).await?))
}

/// `POST /v1/consumers/{env}/{name}/request-rotation`: ask the consumer's agents to rotate.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/request-rotation", tag = "agent", request_body = proto::RequestRotation,
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 400, body = proto::Problem),
        (status = 404, body = proto::Problem), (status = 409, body = proto::Problem),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["keys:write"])))]
pub async fn request_rotation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((env, name)): ApiPath<(String, String)>,
    body: ApiJson<proto::RequestRotation>,
) -> Result<Json<Value>, ApiError> {
    caller.admin.require("keys:write")?;
    let request = caller.request(&body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    service::require_confirmation(&state, &r, body.value.confirm, "rotate").await?;
    let (answer, _) = delivery::request_rotation(&state, &request, &r, |_, p, at| {
        serde_json::to_value(crate::http::admin::render::consumer_json(
            &p.consumer,
            &state.index,
            at,
        ))
        .unwrap_or(Value::Null)
    })
    .await?;
    Ok(Json(answer))
}

/// `GET /v1/agents[?environment=E]`: every agent's last report.
#[utoipa::path(get, path = "/v1/agents", tag = "agent",
    params(("environment" = Option<String>, Query, description = "only this environment")),
    responses((status = 200, body = proto::List<proto::AgentInfo>), (status = 400, body = proto::Problem)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    admin: crate::http::auth::Admin,
    uri: Uri,
) -> Result<Json<proto::List<proto::AgentInfo>>, ApiError> {
    admin.require("consumers:read")?;
    let mut only = None;
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "environment" => only = Some(Environment::parse(&v).map_err(name_error)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let agents = state
        .store
        .list_agents(only.as_ref())
        .await
        .map_err(ApiError::from)?;
    Ok(Json(proto::List {
        items: agents.iter().map(delivery::agent_info).collect(),
    }))
}
