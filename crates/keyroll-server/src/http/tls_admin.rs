//! `[tls] client_auth = "require_admin"`: on a TLS connection, the admin API answers only a
//! client whose certificate the listener verified and whose identity `tls.admin_identities`
//! allows — 401 `cert_missing` without a certificate, 403 `cert_wrong_identity` for another
//! identity. Health, verification, the agent's self-service (it has its consumer key) and the
//! public CA material stay reachable without one.
//!
//! The certificate itself was judged in the handshake (an invalid one never gets this far, and
//! the `cert.decision` line named why); this layer only reads what the listener put in the
//! request's extensions ([`crate::tls::ConnectionTls`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::ClientAuth;
use crate::state::AppState;
use crate::tls::ConnectionTls;

/// Paths reachable without an admin certificate.
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/verify" | "/readyz" | "/openapi.json" | "/v1/ca/bundle" | "/v1/ca/crl"
    ) || path == "/v1/self"
        || path.starts_with("/v1/self/")
        || path.starts_with("/v1/forward-auth-cert")
}

/// Whether `identity` (`spiffe://TD/ENV/SERVICE`) is allowed by one of `patterns` (`ENV/SERVICE`,
/// `*` for a whole part). The trust domain was checked by the handshake's identity policy.
pub fn identity_allowed(identity: &str, patterns: &[String]) -> bool {
    let Ok(id) = keyroll_ca::SpiffeId::parse(identity) else {
        return false;
    };
    patterns.iter().any(|p| match p.split_once('/') {
        Some((e, s)) => (e == "*" || e == id.environment()) && (s == "*" || s == id.service()),
        None => false,
    })
}

/// The layer over the admin router.
pub async fn require_admin_certificate(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(tls) = req.extensions().get::<Arc<ConnectionTls>>() else {
        return next.run(req).await;
    };
    if tls.client_auth != ClientAuth::RequireAdmin || open_path(req.uri().path()) {
        return next.run(req).await;
    }
    let patterns = state
        .config
        .tls
        .as_ref()
        .map(|t| t.admin_identities.as_slice())
        .unwrap_or_default();
    match &tls.peer_certificate {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "cert_missing",
            "the admin API needs a client certificate on this listener (tls.client_auth = \"require_admin\")",
        )
        .into_response(),
        Some(peer) if !identity_allowed(&peer.identity, patterns) => ApiError::new(
            StatusCode::FORBIDDEN,
            "cert_wrong_identity",
            format!(
                "the client certificate's identity {} (serial {}) is not in tls.admin_identities",
                peer.identity, peer.serial
            ),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_environment_and_service() {
        let p = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let alice = "spiffe://example.org/ops/alice";
        assert!(identity_allowed(alice, &p(&["ops/*"])));
        assert!(identity_allowed(alice, &p(&["prod/x", "*/alice"])));
        assert!(!identity_allowed(alice, &p(&["prod/*"])));
        assert!(!identity_allowed(alice, &p(&["ops/bob"])));
        assert!(!identity_allowed("not a spiffe id", &p(&["*/*"])));
        assert!(open_path("/v1/self/certificate"));
        assert!(open_path("/v1/verify"));
        assert!(!open_path("/v1/consumers"));
        assert!(!open_path("/v1/selfish"));
    }
}
