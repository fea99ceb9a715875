//! `GET /v1/cluster`: the nodes sharing this database, what each has applied of the change
//! log, the leader lease and the log's head (what `keyroll cluster status` shows).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use keyroll_proto as proto;

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::state::AppState;

/// `GET /v1/cluster`.
#[utoipa::path(get, path = "/v1/cluster", tag = "status",
    responses((status = 200, body = proto::ClusterStatus)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn cluster(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<proto::ClusterStatus>, ApiError> {
    admin.require("consumers:read")?;
    Ok(Json(crate::cluster::steps::status(&state).await?))
}
