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

/// `GET /readyz`: the store answers and takes writes, and the index is loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = proto::Health), (status = 503, body = proto::Health)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.ready.load(Ordering::Acquire);
    let ping = state.store.ping().await;
    let status = match (&ping, loaded) {
        (Ok(()), true) => "ok".to_owned(),
        (_, false) => "loading keys".to_owned(),
        // Down too when the last write failed and a probe write still fails (a full disk: reads
        // work all along), or when the database file was deleted or replaced.
        (Err(e), true) => format!("store unreachable: {e}"),
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = proto::Health {
        status,
        store: Some(state.store.backend().into()),
        key_versions: Some(state.index.len()),
    };
    (code, Json(body)).into_response()
}
