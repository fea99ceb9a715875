//! `GET /v1/keys/{kid}`: what the server knows about one key version, asked by kid only.
//!
//! This is what `keyroll scan` calls for every key it finds in a tree: the secret never leaves
//! the scanning machine, and the answer comes from the in-memory index (no database), judged at
//! the same `now` and by the same rules as a verification.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyroll_core::Kid;
use keyroll_proto as proto;

use crate::http::auth::Admin;
use crate::http::{ApiError, ApiPath, current_request_id, problem};
use crate::state::AppState;
use keyroll_core::rfc3339;
use keyroll_verify::index::KeyDescription;

fn key_info(d: &KeyDescription) -> proto::KeyInfo {
    proto::KeyInfo {
        kid: d.kid.to_string(),
        fingerprint: d.fingerprint.to_string(),
        consumer: d.consumer.reference().to_owned(),
        environment: d.consumer.environment().to_owned(),
        version: d.version.0,
        state: d.state.as_str().to_owned(),
        deadline: d.deadline.map(rfc3339),
        expires_at: d.expires_at.map(rfc3339),
        replaced_by: d.replaced_by.map(|n| n.0),
        revoked_at: d.revoked_at.map(rfc3339),
        revoke_reason: d.revoke_reason.as_deref().map(str::to_owned),
        consumer_disabled: d.consumer.disabled,
        last_used_at: d.last_used.map(rfc3339),
    }
}

/// `GET /v1/keys/{kid}`.
#[utoipa::path(get, path = "/v1/keys/{kid}", tag = "keys",
    params(("kid" = String, Path, description = "the 12-character key id (never the key)")),
    responses((status = 200, body = proto::KeyInfo), (status = 400, body = proto::Problem),
        (status = 404, body = proto::Problem, description = "no key version has this kid; the problem's `kid` field is set")),
    security(("admin_token" = ["keys:read"])))]
pub async fn get_key(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(kid): ApiPath<String>,
) -> Result<Response, ApiError> {
    // `keys:read` is the least a pre-deploy scan needs; `consumers:read` includes it.
    admin.require("keys:read")?;
    // The input is not echoed: someone may paste a whole key where the kid belongs, and the
    // answer (or a proxy's log of it) must not carry the secret.
    let Some(kid) = Kid::parse(&kid) else {
        let hint = if kid.starts_with(keyroll_core::key::PREFIX) {
            "this looks like a whole key; send only its kid (the 12 characters after kr_<env>_)"
        } else {
            "expected 12 base62 characters (0-9A-Za-z)"
        };
        return Err(ApiError::bad_request(format!("invalid kid: {hint}")));
    };
    match state.index.describe(&kid, state.clock.now()) {
        Some(d) => Ok(Json(key_info(&d)).into_response()),
        // The `kid` field tells a client this 404 is about the key, not a missing route (an
        // older server answers `not_found` for an unknown path too).
        None => Ok(problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not Found",
            &format!("no key version has kid {kid}"),
            Some(kid.to_string()),
            &current_request_id(),
        )),
    }
}
