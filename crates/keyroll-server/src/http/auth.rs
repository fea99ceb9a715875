//! Admin authentication: `Authorization: Bearer kra_…` tokens with scopes and a lifecycle
//! (expiry, revocation, rotation overlap). A missing or bad token is rejected like any other
//! credential: a reason code, a `WWW-Authenticate` challenge, a problem+json body and a log
//! line naming the request (id, client address, method, URI) and the token id when known.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};

use crate::admin_token::{self, AuthorizationError, TokenState};
use crate::http::{ApiError, current_request_id};
use crate::logging::redact_keys;
use crate::state::AppState;
use keyroll_core::rfc3339;

/// The request an admin call came with, for log lines and audit entries.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The request id.
    pub request_id: String,
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The client: the peer, or what a trusted proxy forwarded (`client_addr::client_addr`).
    pub client: Option<IpAddr>,
    /// The method.
    pub method: Method,
    /// The URI, with anything key-shaped masked.
    pub uri: String,
}

impl RequestInfo {
    pub(crate) fn from_parts(parts: &Parts, state: &AppState) -> RequestInfo {
        let request_id = current_request_id();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let client =
            crate::client_addr::client_addr(peer, &parts.headers, &state.config.trusted_proxies)
                .map(|c| c.ip());
        let uri = redact_keys(&parts.uri.to_string()).into_owned();
        RequestInfo {
            request_id,
            peer,
            client,
            method: parts.method.clone(),
            uri,
        }
    }

    /// The client's address as text (for audit entries), else the peer's.
    pub fn remote_addr(&self) -> Option<String> {
        self.client
            .map(|c| c.to_string())
            .or_else(|| self.peer.map(|p| p.to_string()))
    }

    /// One `admin.auth` WARN line for a rejected request.
    fn log_rejection(&self, code: &str, detail: &str, token_id: Option<&str>) {
        let remote = self.remote_addr();
        let peer = self.peer.map(|p| p.to_string());
        tracing::warn!(
            event = "admin.auth",
            code,
            detail,
            request_id = self.request_id.as_str(),
            remote_addr = remote.as_deref(),
            peer_addr = peer.as_deref(),
            method = self.method.as_str(),
            uri = self.uri.as_str(),
            token_id,
            "admin request rejected"
        );
    }
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token id (the audit actor).
    pub token_id: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The request it came with.
    pub request: RequestInfo,
}

fn challenge(
    request: &RequestInfo,
    code: &'static str,
    error: &str,
    detail: &str,
    token_id: Option<&str>,
) -> ApiError {
    request.log_rejection(code, detail, token_id);
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, code, detail);
    // A revocation reason is free text: the quoted string must stay one visible-ASCII
    // quoted-string, or the whole challenge header would be dropped.
    let description: String = detail
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    e.www_authenticate = Some(format!(
        "Bearer realm=\"keyroll-admin\", error=\"{error}\", error_description=\"{description}\""
    ));
    e
}

impl Admin {
    /// Fails with 403 `insufficient_scope` unless the token grants `scope` (it holds it, or
    /// `admin`, or a scope that includes it: see [`admin_token::grants`]).
    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if admin_token::grants(&self.scopes, scope) {
            return Ok(());
        }
        let detail = format!("admin token {} lacks the scope {scope}", self.token_id);
        Err(self.forbidden("insufficient_scope", &detail, scope))
    }

    /// A 403 with its log line and challenge, for a check beyond [`Admin::require`] (a token
    /// that tries to give scopes it does not hold).
    pub fn forbidden(&self, code: &'static str, detail: &str, scope: &str) -> ApiError {
        self.request
            .log_rejection(code, detail, Some(&self.token_id));
        let mut e = ApiError::new(StatusCode::FORBIDDEN, code, detail);
        e.www_authenticate = Some(format!(
            "Bearer realm=\"keyroll-admin\", error=\"insufficient_scope\", scope=\"{scope}\""
        ));
        e
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let request = RequestInfo::from_parts(parts, state);
        let malformed = |detail: &str| {
            challenge(
                &request,
                "malformed_credential",
                "invalid_request",
                detail,
                None,
            )
        };
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // The dashboard's session cookie acts as the token it was made from.
            if let Some(id) =
                crate::ui::session::cookie(&parts.headers, crate::ui::session::SESSION_COOKIE)
            {
                return session_admin(parts, state, request, id).await;
            }
            return Err(challenge(
                &request,
                "missing_credential",
                "invalid_request",
                "no admin token: send Authorization: Bearer <admin token>",
                None,
            ));
        };
        let text = value
            .to_str()
            .map_err(|_| malformed("Authorization header is not ASCII"))?;
        let token = admin_token::bearer(text).map_err(|e| match e {
            AuthorizationError::Empty => malformed("Authorization header is empty"),
            AuthorizationError::NotBearer => malformed("Authorization scheme is not Bearer"),
            AuthorizationError::NoToken => malformed("Authorization: Bearer carries no token"),
            AuthorizationError::ExtraWords => {
                malformed("Authorization: Bearer must be followed by exactly one token")
            }
        })?;
        let presented = admin_token::parse(token)
            .ok_or_else(|| malformed("not an admin token (expected kra_<id>_<secret>)"))?;
        let id = presented.id;
        let record = state.store.get_admin_token(id).await?;
        // Without the secret, a caller learns nothing about the token (not even that it exists).
        let Some(entry) = record.filter(|r| r.token.secret_hash.matches(&presented.secret_hash))
        else {
            return Err(challenge(
                &request,
                "invalid_token",
                "invalid_token",
                &format!("admin token {id} is not valid"),
                Some(id),
            ));
        };
        admit(state, request, entry, id)
    }
}

/// Checks a token given in a form (the dashboard's login) as the `Authorization` header is.
pub async fn check_token(
    state: &AppState,
    request: RequestInfo,
    token: &str,
) -> Result<Admin, ApiError> {
    let Some(presented) = admin_token::parse(token.trim()) else {
        return Err(challenge(
            &request,
            "malformed_credential",
            "invalid_request",
            "not an admin token (expected kra_<id>_<secret>)",
            None,
        ));
    };
    let id = presented.id;
    let record = state.store.get_admin_token(id).await?;
    let Some(entry) = record.filter(|r| r.token.secret_hash.matches(&presented.secret_hash)) else {
        return Err(challenge(
            &request,
            "invalid_token",
            "invalid_token",
            &format!("admin token {id} is not valid"),
            Some(id),
        ));
    };
    admit(state, request, entry, id)
}

/// A request with the dashboard's session cookie: the session (valid, and for a
/// state-changing request same-origin with its CSRF token), then the token it acts as.
async fn session_admin(
    parts: &Parts,
    state: &AppState,
    request: RequestInfo,
    id: &str,
) -> Result<Admin, ApiError> {
    use crate::ui::session::{self, SessionError};
    let now = state.clock.now();
    let found = session::find(
        state.store.as_ref(),
        &parts.method,
        &parts.headers,
        id,
        now,
        state.config.ui.idle_timeout,
    )
    .await;
    let s = match found {
        Ok(s) => s,
        Err(SessionError::Store(e)) => return Err(e.into()),
        Err(SessionError::Rejected(r)) => {
            let detail = r.to_string();
            if r.is_forbidden() {
                request.log_rejection(r.code(), &detail, None);
                return Err(ApiError::new(StatusCode::FORBIDDEN, r.code(), detail));
            }
            return Err(challenge(
                &request,
                r.code(),
                "invalid_token",
                &detail,
                None,
            ));
        }
    };
    let token_id = s.token_id.clone();
    let entry = state.store.get_admin_token(&token_id).await?;
    let admitted = match entry {
        Some(entry) => admit(state, request, entry, &token_id),
        None => Err(challenge(
            &request,
            "invalid_token",
            "invalid_token",
            &format!("admin token {token_id} is not valid"),
            Some(&token_id),
        )),
    };
    if admitted.is_err() {
        // A revoked, expired or replaced token ends its sessions.
        state.store.delete_ui_session(&s.id_hash).await?;
    } else {
        session::note_activity(state.store.as_ref(), &s, now).await;
    }
    admitted
}

/// A token that matched: admitted if its lifecycle says it works at `now`.
fn admit(
    state: &AppState,
    request: RequestInfo,
    entry: keyroll_store::AdminTokenEntry,
    id: &str,
) -> Result<Admin, ApiError> {
    let rejected = |code, detail: String| {
        Err(challenge(
            &request,
            code,
            "invalid_token",
            &detail,
            Some(id),
        ))
    };
    match TokenState::of(&entry, state.clock.now()) {
        TokenState::Valid | TokenState::Overlap { .. } => Ok(Admin {
            token_id: entry.token.id,
            scopes: entry.token.scopes,
            request,
        }),
        TokenState::Revoked { at, reason } => rejected(
            "token_revoked",
            match reason.filter(|r| !r.is_empty()) {
                Some(r) => format!("admin token {id} was revoked at {}: {r}", rfc3339(at)),
                None => format!("admin token {id} was revoked at {}", rfc3339(at)),
            },
        ),
        TokenState::Expired { at } => rejected(
            "token_expired",
            format!("admin token {id} expired at {}", rfc3339(at)),
        ),
        TokenState::Replaced { by, at } => rejected(
            "token_replaced",
            format!(
                "admin token {id} was rotated; its overlap ended at {} and admin token {by} replaces it",
                rfc3339(at)
            ),
        ),
    }
}
