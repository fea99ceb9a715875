//! `POST /v1/environments`, `GET /v1/environments[/{name}]` and `PATCH /v1/environments/{name}`
//! (protection and the `rotate_after` ordering rule).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::Environment;
use keyroll_proto as proto;

use super::render::environment_json;
use super::{actor, name_error};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service;
use crate::state::AppState;

/// `POST /v1/environments`.
#[utoipa::path(post, path = "/v1/environments", tag = "environments", request_body = proto::CreateEnvironment,
    responses((status = 201, body = proto::Environment), (status = 409, body = proto::Problem, description = "`already_exists`"),
        (status = 422, body = proto::Problem, description = "`invalid_request`: `rotate_after` names an unknown environment or forms a cycle; `idempotency_key_reused`")),
    security(("admin_token" = ["environments:write"])))]
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    body: ApiJson<proto::CreateEnvironment>,
) -> Result<Response, ApiError> {
    admin.require("environments:write")?;
    let name = Environment::parse(&body.value.name).map_err(name_error)?;
    let rotate_after = rotate_after(body.value.rotate_after.as_deref())?;
    let record = service::create_environment(
        &state,
        &actor(&admin),
        name,
        body.value.protected,
        rotate_after,
    )
    .await?;
    let answer = environment_json(&record);
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/environments/{}", record.name)) {
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
        .map(|e| environment_json(&e))
        .collect();
    Ok(Json(proto::List { items }))
}

/// `GET /v1/environments/{name}`: the resource a creation's `Location` names.
#[utoipa::path(get, path = "/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path)),
    responses((status = 200, body = proto::Environment), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn get_environment(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<proto::Environment>, ApiError> {
    admin.require("consumers:read")?;
    let name = Environment::parse(&name).map_err(name_error)?;
    let e = state.store.get_environment(&name).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "environment {name} does not exist; create it with keyroll env create {name}"
        ))
    })?;
    Ok(Json(environment_json(&e)))
}

/// `PATCH /v1/environments/{name}`: protection and the ordering rule.
#[utoipa::path(patch, path = "/v1/environments/{name}", tag = "environments", request_body = proto::UpdateEnvironment,
    params(("name" = String, Path)),
    responses((status = 200, body = proto::Environment), (status = 404, body = proto::Problem),
        (status = 422, body = proto::Problem, description = "`invalid_request`: `rotate_after` names an unknown environment, the environment itself, or forms a cycle")),
    security(("admin_token" = ["environments:write"])))]
pub async fn update_environment(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(name): ApiPath<String>,
    body: ApiJson<proto::UpdateEnvironment>,
) -> Result<Json<proto::Environment>, ApiError> {
    admin.require("environments:write")?;
    let name = Environment::parse(&name).map_err(name_error)?;
    let change = service::EnvironmentChange {
        protected: body.value.protected,
        rotate_after: body
            .value
            .rotate_after
            .as_ref()
            .map(|r| rotate_after(r.as_deref()))
            .transpose()?,
    };
    let record = service::update_environment(&state, &actor(&admin), &name, change).await?;
    Ok(Json(environment_json(&record)))
}

/// Parses the name an ordering rule gives.
fn rotate_after(value: Option<&str>) -> Result<Option<Environment>, ApiError> {
    value
        .map(|v| {
            Environment::parse(v).map_err(|e| {
                ApiError::bad_request(format!(
                    "rotate_after: {v:?} is not an environment name: {e}"
                ))
            })
        })
        .transpose()
}
