//! Admin authentication: `Authorization: Bearer kra_…` tokens with scopes. A missing or bad
//! token is rejected like any other credential: a reason code, a `WWW-Authenticate` challenge,
//! a problem+json body and a log line.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::admin_token;
use crate::http::{ApiError, current_request_id};
use crate::state::AppState;

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token id (the audit actor).
    pub token_id: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

fn challenge(code: &'static str, error: &str, detail: &str) -> ApiError {
    tracing::warn!(
        event = "admin.auth",
        code,
        detail,
        request_id = current_request_id().as_str(),
        "admin request rejected"
    );
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, code, detail);
    e.www_authenticate = Some(format!(
        "Bearer realm=\"keyroll-admin\", error=\"{error}\", error_description=\"{detail}\""
    ));
    e
}

impl Admin {
    /// Fails with 403 `insufficient_scope` unless the token has `scope` (or `admin`).
    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope || s == "admin") {
            return Ok(());
        }
        let detail = format!("admin token {} lacks the scope {scope}", self.token_id);
        tracing::warn!(
            event = "admin.auth",
            code = "insufficient_scope",
            detail = detail.as_str(),
            "admin request rejected"
        );
        let mut e = ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", detail);
        e.www_authenticate = Some(format!(
            "Bearer realm=\"keyroll-admin\", error=\"insufficient_scope\", scope=\"{scope}\""
        ));
        Err(e)
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(challenge(
                "missing_credential",
                "invalid_request",
                "no admin token: send Authorization: Bearer <admin token>",
            ));
        };
        let text = value.to_str().map_err(|_| {
            challenge(
                "malformed_credential",
                "invalid_request",
                "Authorization header is not ASCII",
            )
        })?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                challenge(
                    "malformed_credential",
                    "invalid_request",
                    "Authorization scheme is not Bearer",
                )
            })?;
        let presented = admin_token::parse(token).ok_or_else(|| {
            challenge(
                "malformed_credential",
                "invalid_request",
                "not an admin token (expected kra_<id>_<secret>)",
            )
        })?;
        let record = state.store.find_admin_token(presented.id).await?;
        match record {
            Some(r) if r.secret_hash.matches(&presented.secret_hash) => Ok(Admin {
                token_id: r.id,
                scopes: r.scopes,
            }),
            _ => Err(challenge(
                "invalid_token",
                "invalid_token",
                &format!("admin token {} is not valid", presented.id),
            )),
        }
    }
}
