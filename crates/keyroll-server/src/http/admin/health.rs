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

/// `GET /readyz`: whether this node can serve verification, and whether its store is healthy.
///
/// A node whose index is loaded verifies from memory whatever the database does, so it stays
/// ready (200) while the store is unavailable and says `degraded` with the reason: a load
/// balancer that took every node out of rotation during a database outage would turn a failure
/// of admin writes into a failure of all traffic. Before the index is loaded it answers 503.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = proto::Health), (status = 503, body = proto::Health)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
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
        (Err(e), true) => (StatusCode::OK, "degraded", Some(e)),
    };
    let body = proto::Health {
        status: status.to_owned(),
        reason,
        store: Some(state.store.backend().into()),
        key_versions: Some(state.index.len()),
    };
    (code, Json(body)).into_response()
}
