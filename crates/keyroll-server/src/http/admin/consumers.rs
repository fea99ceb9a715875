//! Consumers: create (with the first key, shown once), list, show, update (scopes, owner,
//! policy), disable and enable.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use keyroll_core::{Command, ConsumerSpec, ConsumerUpdate, Environment, Policy, Schedule};
use keyroll_proto as proto;
use serde_json::{Value, json};

use super::render::consumer_json;
use super::{
    Caller, PolicyFields, ScheduleFields, consumer_ref, expiry, name_error, owner,
    propagation_wait, respond, scopes, with_propagation,
};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service::{self, Change, Planned};
use crate::state::AppState;

/// `POST /v1/consumers`: creates a consumer and its first key (shown once).
#[utoipa::path(post, path = "/v1/consumers", tag = "consumers", request_body = proto::CreateConsumer,
    params(("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key does not create twice")),
    responses((status = 201, body = proto::ConsumerCreated), (status = 404, body = proto::Problem, description = "the environment does not exist"), (status = 409, body = proto::Problem, description = "`already_exists`"),
        (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request")),
    security(("admin_token" = ["consumers:write"])))]
pub async fn create_consumer(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<proto::CreateConsumer>,
) -> Result<Response, ApiError> {
    caller.admin.require("consumers:write")?;
    let request = caller.request(&body.body_hash)?;
    let req = body.value;
    let r = consumer_ref(&req.environment, &req.name)?;
    let spec = ConsumerSpec {
        environment: r.environment.clone(),
        name: r.name.clone(),
        scopes: scopes(&req.scopes)?,
        owner: owner(req.owner.as_deref())?,
        policy: PolicyFields::parse(
            req.retire.as_deref(),
            req.idle.as_deref(),
            req.on_stall.as_deref(),
        )?
        .apply(Policy::default()),
        schedule: ScheduleFields::parse(
            Some(req.rotate_every.as_deref()),
            Some(req.grace.as_deref()),
            req.delivery.as_deref(),
        )?
        .apply(Schedule::default())?,
        managed: req.managed,
    };
    let expires_in = expiry("expires_in", req.expires_in.as_deref())?;
    let params = json!({
        "scopes": req.scopes, "owner": spec.owner, "expires_in": req.expires_in,
        "rotate_every": req.rotate_every, "grace": req.grace, "delivery": req.delivery,
        "managed": req.managed,
    });
    let change = Change {
        command: "consumer.create",
        params: &params,
        status: StatusCode::CREATED.as_u16(),
    };
    let answer =
        service::create_consumer(&state, &request, spec, expires_in, change, |c, key, at| {
            let answer = proto::ConsumerCreated {
                consumer: consumer_json(c, &state.index, at),
                key: Some(key.reveal().to_owned()),
                kid: key.kid.to_string(),
                version: 1,
                replayed: false,
                key_unavailable: None,
            };
            serde_json::to_value(&answer).unwrap_or(Value::Null)
        })
        .await?;
    let location = format!("/v1/consumers/{}/{}", r.environment, r.name);
    Ok(respond(answer, StatusCode::CREATED, Some(location)))
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

/// A schedule refused against the stored one, as the service's rejection.
fn invalid_schedule(e: ApiError) -> service::ServiceError {
    service::ServiceError::Invalid(e.detail)
}

/// `PATCH /v1/consumers/{env}/{name}`: scopes, owner, policy, schedule, delivery, baseline.
#[utoipa::path(patch, path = "/v1/consumers/{env}/{name}", tag = "consumers", request_body = proto::UpdateConsumer,
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Consumer), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request")),
    security(("admin_token" = ["consumers:write"])))]
pub async fn update_consumer(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((env, name)): ApiPath<(String, String)>,
    body: ApiJson<proto::UpdateConsumer>,
) -> Result<Response, ApiError> {
    caller.admin.require("consumers:write")?;
    let request = caller.request(&body.body_hash)?;
    let r = consumer_ref(&env, &name)?;
    let new_scopes = body.value.scopes.as_deref().map(scopes).transpose()?;
    let new_owner = body
        .value
        .owner
        .as_deref()
        .map(|o| owner(Some(o)))
        .transpose()?;
    let u = &body.value;
    // Validated now (a precise 400 before any read), applied to the stored policy below.
    let policy = PolicyFields::parse(
        u.retire.as_deref(),
        u.idle.as_deref(),
        u.on_stall.as_deref(),
    )?;
    let schedule = ScheduleFields::parse(
        u.rotate_every.as_ref().map(Option::as_deref),
        u.grace.as_ref().map(Option::as_deref),
        u.delivery.as_deref(),
    )?;
    let params = json!({
        "scopes": u.scopes, "owner": u.owner, "retire": u.retire, "idle": u.idle,
        "on_stall": u.on_stall, "rotate_every": u.rotate_every, "grace": u.grace,
        "delivery": u.delivery, "managed": u.managed,
    });
    let managed = u.managed;
    let change = Change {
        command: "consumer.update",
        params: &params,
        status: StatusCode::OK.as_u16(),
    };
    let answer = service::change(
        &state,
        &request,
        &r,
        change,
        |c, usage, at| {
            let update = ConsumerUpdate {
                scopes: new_scopes.clone(),
                owner: new_owner.clone(),
                policy: (!policy.is_empty()).then(|| policy.apply(c.policy)),
                schedule: if schedule.is_empty() {
                    None
                } else {
                    Some(schedule.apply(c.schedule).map_err(invalid_schedule)?)
                },
                managed,
            };
            Ok(Planned::from_transition(c.apply(
                Command::Update(update),
                usage,
                at,
            )?))
        },
        |_, p, at| {
            serde_json::to_value(consumer_json(&p.consumer, &state.index, at))
                .unwrap_or(Value::Null)
        },
    )
    .await?;
    Ok(respond(answer, StatusCode::OK, None))
}

/// Disable or enable: the command, and the confirmation a protected environment needs.
async fn switch(
    state: Arc<AppState>,
    caller: Caller,
    (env, name): (String, String),
    command: Command,
    action: &'static str,
    confirm: Option<(bool, [u8; 32])>,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    caller.admin.require("consumers:write")?;
    let body_hash = confirm.map_or([0; 32], |(_, h)| h);
    let request = caller.request(&body_hash)?;
    let r = consumer_ref(&env, &name)?;
    if let Some((yes, _)) = confirm {
        service::require_confirmation(&state, &r, yes, action).await?;
    }
    let params = json!({});
    let change = Change {
        command: action,
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
                command.clone(),
                usage,
                at,
            )?))
        },
        |_, p, at| {
            serde_json::to_value(consumer_json(&p.consumer, &state.index, at))
                .unwrap_or(Value::Null)
        },
    )
    .await?;
    let answer = with_propagation(&state, &r, answer, wait).await?;
    Ok(respond(answer, StatusCode::OK, None))
}

/// `POST /v1/consumers/{env}/{name}/disable`: every key of the consumer is rejected.
#[utoipa::path(post, path = "/v1/consumers/{env}/{name}/disable", tag = "lifecycle", request_body = proto::Confirm,
    params(("env" = String, Path), ("name" = String, Path),
        ("wait" = Option<String>, Query, description = "after the change commits, wait up to this long (a duration, at most 30s) for every live node's index to have it; the answer's `propagation` says which did")),
    responses((status = 200, body = proto::Consumer, description = "the consumer; with `wait`, `propagation` too"), (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "a lifecycle rule forbids it now, or the consumer kept changing under concurrent requests"), (status = 422, body = proto::Problem, description = "`secret_in_text`, or `idempotency_key_reused`: this Idempotency-Key was used for another request"),
        (status = 428, body = proto::Problem, description = "`confirmation_required`: the environment is protected; send `confirm: true`")),
    security(("admin_token" = ["consumers:write"])))]
pub async fn disable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(path): ApiPath<(String, String)>,
    uri: Uri,
    body: ApiJson<proto::Confirm>,
) -> Result<Response, ApiError> {
    caller.admin.require("consumers:write")?;
    let wait = propagation_wait(&uri)?;
    let confirm = Some((body.value.confirm, body.body_hash));
    switch(
        state,
        caller,
        path,
        Command::Disable,
        "disable",
        confirm,
        wait,
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
    caller: Caller,
    ApiPath(path): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    switch(state, caller, path, Command::Enable, "enable", None, None).await
}
