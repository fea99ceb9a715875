//! `GET /metrics` (Prometheus exposition, unauthenticated like `/healthz`) and
//! `GET /v1/decisions` (the in-memory decision history, admin scope `consumers:read`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use keyroll_core::{ConsumerRef, DecisionCode, Fingerprint, Kid, Timestamp, parse_duration};
use keyroll_proto as proto;

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::observe::history::{Entry, Query};
use crate::state::AppState;
use keyroll_core::rfc3339;

/// Decisions returned when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;

/// The most a request may ask for.
pub const MAX_LIMIT: usize = 100_000;

/// `GET /metrics`: Prometheus text format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus exposition text (format 0.0.4)", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // Counting key versions walks the whole index: off the async workers.
    let render =
        tokio::task::spawn_blocking(move || state.observer.render(&state.index, state.clock.now()))
            .await;
    match render {
        Ok(text) => {
            let mut response = Response::new(Body::from(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(event = "metrics.failed", error = %e, "rendering /metrics failed");
            let mut response = Response::new(Body::from("metrics unavailable\n"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// `GET /v1/decisions`: the last decisions, filtered, newest first.
#[utoipa::path(
    get,
    path = "/v1/decisions",
    tag = "decisions",
    params(
        ("kid" = Option<String>, Query, description = "only decisions about this key id"),
        ("consumer" = Option<String>, Query, description = "only this consumer, ENV/NAME"),
        ("code" = Option<String>, Query, description = "only these codes (comma-separated or repeated); `invalid_key` means unknown_key and invalid_secret"),
        ("fingerprint" = Option<String>, Query, description = "only this fingerprint (fp_…)"),
        ("since" = Option<String>, Query, description = "only the last DURATION (10m, 1h)"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100)"),
    ),
    responses(
        (status = 200, body = proto::DecisionList),
        (status = 400, body = proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = proto::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = ["consumers:read"]))
)]
pub async fn decisions(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::DecisionList>, ApiError> {
    admin.require("consumers:read")?;
    let mut q = parse_query(uri.query(), state.clock.now())?;
    if let Some(reference) = &q.consumer
        && let Ok(r) = ConsumerRef::parse(reference)
        && let Some(stored) = state.store.get_consumer(&r).await?
    {
        q.consumer_kids = stored.consumer.versions.iter().map(|v| v.kid).collect();
    }
    let history = state.observer.history();
    let found = history.query(&q);
    let (capacity_rejected, capacity_allowed) = history.capacity();
    Ok(Json(proto::DecisionList {
        items: found
            .entries
            .iter()
            .map(|e| record(e, &state.index))
            .collect(),
        matched: found.matched as u64,
        capacity_rejected: capacity_rejected as u64,
        capacity_allowed: capacity_allowed as u64,
    }))
}

/// Validates the query string; every unknown or malformed parameter is a 400 that says which.
fn parse_query(query: Option<&str>, now: Timestamp) -> Result<Query, ApiError> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "kid" => {
                q.kid = Some(Kid::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "kid {v:?} is not a key id (12 base62 characters)"
                    ))
                })?);
            }
            "consumer" => {
                let r = ConsumerRef::parse(&v).map_err(|e| {
                    ApiError::bad_request(format!("consumer {v:?}: {e} (expected ENV/NAME)"))
                })?;
                q.consumer = Some(r.to_string());
            }
            "code" => {
                for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if c == "invalid_key" {
                        q.codes
                            .extend([DecisionCode::UnknownKey, DecisionCode::InvalidSecret]);
                        continue;
                    }
                    let code = DecisionCode::parse(c).ok_or_else(|| {
                        let known: Vec<&str> =
                            DecisionCode::ALL.iter().map(DecisionCode::as_str).collect();
                        ApiError::bad_request(format!(
                            "unknown code {c:?}; expected one of {}, or invalid_key",
                            known.join(", ")
                        ))
                    })?;
                    q.codes.push(code);
                }
            }
            "fingerprint" => {
                q.fingerprint = Some(Fingerprint::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "fingerprint {v:?} is not fp_ followed by 16 hex digits"
                    ))
                })?);
            }
            "since" => {
                let d = parse_duration(&v)
                    .map_err(|e| ApiError::bad_request(format!("since {v:?}: {e}")))?;
                q.since_ms = Some(now.saturating_sub(d).unix_millis());
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit {v:?}: expected a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; expected kid, consumer, code, fingerprint, since or limit"
                )));
            }
        }
    }
    Ok(q)
}

fn record(e: &Entry, index: &keyroll_verify::index::Index) -> proto::DecisionRecord {
    let consumer = e
        .consumer
        .as_ref()
        .map(|c| c.reference().to_owned())
        .or_else(|| {
            e.kid
                .and_then(|k| index.consumer_of(&k))
                .map(|c| c.reference().to_owned())
        });
    proto::DecisionRecord {
        ts: rfc3339(Timestamp::from_unix_millis(e.ts_ms)),
        decision: if e.code.allowed() {
            "allowed"
        } else {
            "rejected"
        }
        .into(),
        code: e.code.as_str().into(),
        detail: e.detail.as_deref().map(str::to_owned),
        kid: e.kid.map(|k| k.to_string()),
        fingerprint: e.fingerprint.map(|f| f.to_string()),
        consumer,
        environment: e.environment().map(str::to_owned),
        version: e.version.map(|n| n.0),
        state: e.state.map(|s| s.as_str().to_owned()),
        request_id: e.request_id.as_str().to_owned(),
        remote_addr: e.remote_addr.map(|a| a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let q = parse_query(
            Some("kid=3kTq8ZpW1xYv&consumer=prod/billing-app&code=invalid_key,key_revoked&since=10m&limit=5"),
            now,
        )
        .unwrap();
        assert_eq!(q.kid.unwrap().as_str(), "3kTq8ZpW1xYv");
        assert_eq!(q.consumer.as_deref(), Some("prod/billing-app"));
        assert_eq!(
            q.codes,
            vec![
                DecisionCode::UnknownKey,
                DecisionCode::InvalidSecret,
                DecisionCode::KeyRevoked
            ]
        );
        assert_eq!(q.since_ms, Some(1_000_000 - 600_000));
        assert_eq!(q.limit, 5);
        assert_eq!(parse_query(None, now).unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "kid=short",
            "consumer=prod",
            "code=nope",
            "fingerprint=fp_xyz",
            "since=forever",
            "limit=0",
            "limit=x",
            "colour=red",
        ] {
            let e = parse_query(Some(bad), now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
