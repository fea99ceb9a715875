//! Key versions: rotate (the next version; older ones retire after the grace window), revoke
//! (immediate, never gated) and retire (end a grace window now).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use keyroll_core::{
    Command, Consumer, Effect, StoredState, Timestamp, Usage, VersionNumber, rfc3339,
};
use keyroll_proto as proto;
use serde_json::{Value, json};

use super::render::version_json;
use super::{
    Caller, consumer_ref, duration, expiry, no_secret_in, propagation_wait, respond,
    version_number, with_propagation,
};
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service::{self, Change, Planned, Rotation};
use crate::state::AppState;

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
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((env, name)): ApiPath<(String, String)>,
    body: ApiJson<proto::RotateRequest>,
) -> Result<Response, ApiError> {
    caller.admin.require("keys:write")?;
    let request = caller.request(&body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let grace = match body.value.grace.as_deref() {
        Some(g) => duration("grace", g)?,
        None => service::default_grace(&state, &r).await?,
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
    service::require_confirmation(&state, &r, body.value.confirm, "rotate").await?;
    let enforce = body.value.enforce;
    let params = json!({ "grace": keyroll_core::format_duration(grace), "enforce": enforce, "expires_in": body.value.expires_in });
    let change = Change {
        command: "rotate",
        params: &params,
        status: StatusCode::CREATED.as_u16(),
    };
    let rotation = Rotation {
        grace,
        enforce,
        expires_in,
    };
    let answer = service::rotate(&state, &request, &r, rotation, change, |_, p, _at| {
        rotated(&r, p)
    })
    .await?;
    Ok(respond(answer, StatusCode::CREATED, None))
}

/// `POST /v1/consumers/{env}/{name}/versions/{n}/revoke`: immediate, never gated.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/versions/{version}/revoke", tag = "lifecycle", request_body = proto::RevokeRequest,
    params(("env" = String, Path), ("name" = String, Path), ("version" = String, Path, description = "v3 or 3"),
        ("wait" = Option<String>, Query, description = "after the revocation commits, wait up to this long (a duration, at most 30s) for every live node's index to have it; the answer's `propagation` says which did")),
    responses((status = 200, body = proto::KeyVersion, description = "the version; with `wait`, `propagation` too"), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["keys:write"])))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((env, name, version)): ApiPath<(String, String, String)>,
    uri: Uri,
    body: ApiJson<proto::RevokeRequest>,
) -> Result<Response, ApiError> {
    caller.admin.require("keys:write")?;
    let request = caller.request(&body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let wait = propagation_wait(&uri)?;
    let n = version_number(&version)?;
    let reason = body.value.reason.clone();
    no_secret_in("reason", &reason)?;
    service::require_confirmation(&state, &r, body.value.confirm, "revoke").await?;
    let params = json!({ "version": n.0, "reason": reason });
    let change = Change {
        command: "revoke",
        params: &params,
        status: StatusCode::OK.as_u16(),
    };
    let answer = service::change(
        &state,
        &request,
        &r,
        change,
        |c, usage, at| {
            let command = Command::Revoke {
                version: n,
                reason: reason.clone(),
            };
            Ok(Planned::from_transition(c.apply(command, usage, at)?))
        },
        |before, p, at| {
            let mut answer = version_answer(&state, &p.consumer, n, at);
            if let Some(obj) = answer.as_object_mut() {
                // Idempotent but honest: a second revoke changes nothing and says so.
                if before
                    .version(n)
                    .is_some_and(|v| v.state == StoredState::Revoked)
                {
                    obj.insert("already_revoked".into(), Value::Bool(true));
                }
                let seen = service::usage_of(&state, &p.consumer);
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
    .await?;
    let answer = with_propagation(&state, &r, answer, wait).await?;
    Ok(respond(answer, StatusCode::OK, None))
}

/// A version of `c` as the API shows it at `at`.
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
pub async fn retire(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((env, name, version)): ApiPath<(String, String, String)>,
    body: ApiJson<proto::Confirm>,
) -> Result<Response, ApiError> {
    caller.admin.require("keys:write")?;
    let request = caller.request(&body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let n = version_number(&version)?;
    service::require_confirmation(&state, &r, body.value.confirm, "retire").await?;
    let params = json!({ "version": n.0 });
    let change = Change {
        command: "retire",
        params: &params,
        status: StatusCode::OK.as_u16(),
    };
    let answer = service::change(
        &state,
        &request,
        &r,
        change,
        |c, usage, at| {
            Ok(Planned::from_transition(c.apply(
                Command::Retire { version: n },
                usage,
                at,
            )?))
        },
        |before, p, at| {
            let mut answer = version_answer(&state, &p.consumer, n, at);
            // Like a second revoke: a no-op that says so.
            if let Some(obj) = answer.as_object_mut()
                && before
                    .version(n)
                    .is_some_and(|v| v.state == StoredState::Retired)
            {
                obj.insert("already_retired".into(), Value::Bool(true));
            }
            answer
        },
    )
    .await?;
    Ok(respond(answer, StatusCode::OK, None))
}

/// The answer to a rotation (admin or agent): the new key once, what started retiring.
pub(crate) fn rotated(r: &keyroll_core::ConsumerRef, p: &Planned) -> Value {
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
}
