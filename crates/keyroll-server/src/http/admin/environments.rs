//! `POST /v1/environments` and `GET /v1/environments`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{Environment, rfc3339};
use keyroll_proto as proto;

use super::{actor, name_error};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service;
use crate::state::AppState;

/// `POST /v1/environments`.
#[utoipa::path(post, path = "/v1/environments", tag = "environments", request_body = proto::CreateEnvironment,
    responses((status = 201, body = proto::Environment), (status = 409, body = proto::Problem, description = "`already_exists`"),
        (status = 422, body = proto::Problem, description = "`idempotency_key_reused`")),
    security(("admin_token" = ["environments:write"])))]
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    body: ApiJson<proto::CreateEnvironment>,
) -> Result<Response, ApiError> {
    admin.require("environments:write")?;
    let name = Environment::parse(&body.value.name).map_err(name_error)?;
    let record =
        service::create_environment(&state, &actor(&admin), name, body.value.protected).await?;
    let answer = proto::Environment {
        name: record.name.to_string(),
        protected: record.protected,
        created_at: rfc3339(record.created_at),
    };
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
        .map(|e| proto::Environment {
            name: e.name.to_string(),
            protected: e.protected,
            created_at: rfc3339(e.created_at),
        })
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
    Ok(Json(proto::Environment {
        name: e.name.to_string(),
        protected: e.protected,
        created_at: rfc3339(e.created_at),
    }))
}
