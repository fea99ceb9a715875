//! `GET /healthz` and `GET /readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyroll_proto as proto;

use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "up")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// What a caller of `GET /readyz?for=` needs the node ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyFor {
    /// Verification only: ready while the index serves, whatever the store does.
    Verify,
}

/// Which readiness `GET /readyz` reports.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadyQuery {
    /// `verify`: ready while the index serves verification, whatever the store does (for the
    /// health check of a load balancer in front of forward-auth); without it, the store must
    /// answer too (SPEC §11).
    #[serde(rename = "for")]
    #[param(rename = "for", inline)]
    pub for_: Option<ReadyFor>,
}

/// `GET /readyz`: the index is loaded and the store answers and takes writes (SPEC §11).
///
/// While the store is unavailable it answers 503 with `status: degraded` and the reason; a node
/// in that state still verifies from memory, so `?for=verify` answers 200 (with the same body):
/// a load balancer in front of forward-auth that took every node out of rotation during a
/// database outage would turn a failure of admin writes into a failure of all traffic.
#[utoipa::path(get, path = "/readyz", tag = "health", params(ReadyQuery), responses(
    (status = 200, body = proto::Health), (status = 503, body = proto::Health),
    (status = 400, description = "unknown `for`", body = keyroll_proto::Problem, content_type = "application/problem+json")))]
pub async fn readyz(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<ReadyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let for_verify = match query.map(|q| q.0.for_) {
        Ok(f) => f == Some(ReadyFor::Verify),
        Err(e) => {
            return crate::http::ApiError::bad_request(e.body_text()).into_response();
        }
    };
    let loaded = state.ready.load(Ordering::Acquire);
    // Bounded: a database that does not answer must not hang the health check.
    let ping = match tokio::time::timeout(crate::observe::PING_TIMEOUT, state.store.ping()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "storage unavailable: the {} store did not answer within {} ms",
            state.store.backend(),
            crate::observe::PING_TIMEOUT.as_millis()
        )),
    };
    let (code, status, reason) = match (ping, loaded) {
        (_, false) => (StatusCode::SERVICE_UNAVAILABLE, "loading keys", None),
        (Ok(()), true) => (StatusCode::OK, "ok", None),
        // Down when the last write failed and a probe write still fails (a full disk: reads
        // work all along), when the database file was deleted or replaced, or when the
        // database cannot be reached.
        (Err(e), true) if for_verify => (StatusCode::OK, "degraded", Some(e)),
        (Err(e), true) => (StatusCode::SERVICE_UNAVAILABLE, "degraded", Some(e)),
    };
    let body = proto::Health {
        status: status.to_owned(),
        reason,
        store: Some(state.store.backend().into()),
        key_versions: Some(state.index.len()),
    };
    (code, Json(body)).into_response()
}
