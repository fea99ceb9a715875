//! The admin-token API: create (shown once), list (never the secret), revoke, rotate with an
//! overlap. A token only ever hands out or manages scopes it holds itself, so no token can
//! mint a stronger one; revoking the last working `admin` token needs `force`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{Timestamp, parse_duration};
use keyroll_proto as proto;
use keyroll_store::{AdminTokenEntry, TokenRevocation};

use crate::admin_token::{self, TokenState};
use crate::http::admin::{actor, no_secret_in};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service;
use crate::state::AppState;
use keyroll_core::rfc3339;

/// How long a rotated token keeps working when the request does not say.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(3600);

fn unprocessable(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

fn view(t: &AdminTokenEntry, at: Timestamp) -> proto::AdminToken {
    proto::AdminToken {
        id: t.token.id.clone(),
        name: t.token.name.clone(),
        scopes: t.token.scopes.clone(),
        state: TokenState::of(t, at).name().to_owned(),
        created_at: rfc3339(t.token.created_at),
        created_by: t.created_by.clone(),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
        revoke_reason: t.revoke_reason.clone(),
        replaced_by: t.replaced_by.clone(),
        retires_at: t.retires_at.map(rfc3339),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(char::is_control);
    if !ok {
        return Err(unprocessable(
            "invalid_name",
            "a token name is 1 to 64 printable characters",
        ));
    }
    no_secret_in("name", name)
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.is_empty() {
        return Err(unprocessable(
            "invalid_scope",
            format!(
                "a token needs at least one scope; known scopes: {}",
                admin_token::SCOPES.join(", ")
            ),
        ));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !admin_token::SCOPES.contains(&s.as_str()))
    {
        return Err(unprocessable(
            "invalid_scope",
            format!(
                "unknown scope {bad:?}; known scopes: {}",
                admin_token::SCOPES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// 403 `scope_escalation` unless the caller holds every scope of `scopes`.
fn no_escalation(admin: &Admin, scopes: &[String], doing: &str) -> Result<(), ApiError> {
    match admin_token::first_not_granted(&admin.scopes, scopes) {
        None => Ok(()),
        Some(missing) => Err(admin.forbidden(
            "scope_escalation",
            &format!(
                "admin token {} cannot {doing} with the scope {missing}, which it does not hold itself",
                admin.token_id
            ),
            missing,
        )),
    }
}

fn duration_field(field: &str, text: &str) -> Result<Duration, ApiError> {
    parse_duration(text).map_err(|e| unprocessable("invalid_duration", format!("{field}: {e}")))
}

async fn existing(state: &AppState, id: &str) -> Result<AdminTokenEntry, ApiError> {
    state
        .store
        .get_admin_token(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("admin token {id} does not exist")))
}

fn issued(status: StatusCode, answer: &proto::TokenIssued) -> Response {
    let mut response = (status, Json(answer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/tokens/{}", answer.info.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    // The plaintext must not be kept by a cache on the way.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /v1/tokens`.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = proto::CreateToken,
    responses((status = 201, body = proto::TokenIssued, description = "the plaintext token, shown this once"),
        (status = 403, body = proto::Problem, description = "`insufficient_scope`, or `scope_escalation`: a scope the caller does not hold"),
        (status = 422, body = proto::Problem)),
    security(("admin_token" = ["tokens:write"])))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    body: ApiJson<proto::CreateToken>,
) -> Result<Response, ApiError> {
    admin.require("tokens:write")?;
    let req = body.value;
    check_name(&req.name)?;
    check_scopes(&req.scopes)?;
    let mut scopes = req.scopes.clone();
    scopes.sort();
    scopes.dedup();
    no_escalation(&admin, &scopes, "create a token")?;
    let at = state.clock.now();
    let expires_at = match &req.expires_in {
        None => None,
        Some(text) => {
            let d = duration_field("expires_in", text)?;
            if d.is_zero() {
                return Err(unprocessable(
                    "invalid_duration",
                    "expires_in: 0 would make a token that is expired already",
                ));
            }
            Some(at.saturating_add(d))
        }
    };
    let (plaintext, entry) =
        service::tokens::create(&state, &actor(&admin), &req.name, &scopes, expires_at).await?;
    let answer = proto::TokenIssued {
        token: plaintext,
        info: view(&entry, at),
        replaces: None,
    };
    Ok(issued(StatusCode::CREATED, &answer))
}

/// `GET /v1/tokens`.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = proto::List<proto::AdminToken>)),
    security(("admin_token" = ["tokens:read"])))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<proto::List<proto::AdminToken>>, ApiError> {
    admin.require("tokens:read")?;
    let at = state.clock.now();
    let items = state
        .store
        .list_admin_tokens()
        .await?
        .iter()
        .map(|t| view(t, at))
        .collect();
    Ok(Json(proto::List { items }))
}

/// `GET /v1/tokens/{id}`: one token (never its secret), the resource a creation's `Location`
/// names.
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "the token id (never the token)")),
    responses((status = 200, body = proto::AdminToken), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["tokens:read"])))]
pub async fn get_token(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<proto::AdminToken>, ApiError> {
    admin.require("tokens:read")?;
    let entry = existing(&state, &id).await?;
    Ok(Json(view(&entry, state.clock.now())))
}

/// `POST /v1/tokens/{id}/revoke`.
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens", request_body = proto::RevokeToken,
    params(("id" = String, Path, description = "the token id (never the token)")),
    responses((status = 200, body = proto::AdminToken),
        (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "`already_revoked`, or `last_admin_token`: it is the last working admin token (send `force`)"),
        (status = 422, body = proto::Problem, description = "`invalid_reason`, or `secret_in_text`")),
    security(("admin_token" = ["tokens:write"])))]
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<proto::RevokeToken>,
) -> Result<Json<proto::AdminToken>, ApiError> {
    admin.require("tokens:write")?;
    let req = body.value;
    let reason = req.reason.unwrap_or_default();
    if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(unprocessable(
            "invalid_reason",
            "a reason is at most 500 printable characters",
        ));
    }
    no_secret_in("reason", &reason)?;
    let target = existing(&state, &id).await?;
    no_escalation(&admin, &target.token.scopes, "revoke a token")?;
    let at = state.clock.now();
    match service::tokens::revoke(&state, &actor(&admin), &target, &reason, req.force).await? {
        TokenRevocation::Revoked(entry) => Ok(Json(view(&entry, at))),
        TokenRevocation::AlreadyRevoked(entry) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_revoked",
            format!(
                "admin token {id} was already revoked at {}; nothing changed",
                entry.revoked_at.map(rfc3339).unwrap_or_default()
            ),
        )),
        TokenRevocation::LastAdmin => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin_token",
            format!(
                "admin token {id} is the last working token with the scope admin; revoking it would lock every administrator out. Create or rotate another admin token first, or send force (keyroll token revoke --force)"
            ),
        )),
    }
}

/// `POST /v1/tokens/{id}/rotate`.
#[utoipa::path(post, path = "/v1/tokens/{id}/rotate", tag = "tokens", request_body = proto::RotateToken,
    params(("id" = String, Path, description = "the token id (never the token)")),
    responses((status = 201, body = proto::TokenIssued, description = "the new plaintext token, shown this once; the old one works until `replaces.retires_at`"),
        (status = 404, body = proto::Problem),
        (status = 409, body = proto::Problem, description = "`token_not_rotatable`: revoked, expired or rotated already"),
        (status = 422, body = proto::Problem, description = "`invalid_duration`")),
    security(("admin_token" = ["tokens:write"])))]
pub async fn rotate_token(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<proto::RotateToken>,
) -> Result<Response, ApiError> {
    admin.require("tokens:write")?;
    let overlap = match &body.value.overlap {
        None => DEFAULT_OVERLAP,
        Some(text) => duration_field("overlap", text)?,
    };
    let old = existing(&state, &id).await?;
    no_escalation(&admin, &old.token.scopes, "rotate a token")?;
    let at = state.clock.now();
    let current = TokenState::of(&old, at);
    if current != TokenState::Valid {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token_not_rotatable",
            format!(
                "admin token {id} is {} and cannot be rotated{}",
                current.name(),
                old.replaced_by
                    .as_deref()
                    .map(|by| format!(" (admin token {by} replaces it; rotate that one)"))
                    .unwrap_or_default()
            ),
        ));
    }
    // The replacement lives as long as the old one was meant to.
    let (plaintext, entry, old) =
        service::tokens::rotate(&state, &actor(&admin), &old, overlap).await?;
    let answer = proto::TokenIssued {
        token: plaintext,
        info: view(&entry, at),
        replaces: Some(view(&old, at)),
    };
    Ok(issued(StatusCode::CREATED, &answer))
}
