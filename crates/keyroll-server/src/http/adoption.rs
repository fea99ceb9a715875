//! `GET /v1/consumers/{env}/{name}/adoption`: requests per minute (or hour) per version and the
//! moments of its rotations, which the dashboard draws as the adoption chart.
//!
//! Windows up to 3 hours are answered per minute from this node's in-memory series
//! (`usage::UsageRecorder::recent_minutes`, after flushing what is pending, so the answer is
//! current to the request); longer ones per hour from the store, which holds every node's
//! counts. The resolution is named in the answer, so a reader knows which it got.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use keyroll_core::{Timestamp, extension_if_stalled, is_extended_at, parse_duration, rfc3339};
use keyroll_proto as proto;

use crate::http::admin::consumer_ref;
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiPath};
use crate::state::AppState;
use crate::usage::RECENT_MINUTES;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// The longest window answered.
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// `GET /v1/consumers/{env}/{name}/adoption[?window=DURATION]`.
#[utoipa::path(get, path = "/v1/consumers/{env}/{name}/adoption", tag = "status",
    params(("env" = String, Path), ("name" = String, Path),
        ("window" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,3}(ms|s|m|h|d)( [1-9][0-9]{0,3}(ms|s|m|h|d)){0,2}$", description = "how far back (default 1h, more than 0, at most 30d, longer is cut to 30d); up to 3h per minute from this node's memory, longer per hour from the store")),
    responses((status = 200, body = proto::Adoption),
        (status = 404, body = proto::Problem, description = "the consumer does not exist")),
    security(("admin_token" = ["consumers:read"])))]
pub async fn adoption(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath((env, name)): ApiPath<(String, String)>,
    uri: Uri,
) -> Result<Json<proto::Adoption>, ApiError> {
    admin.require("consumers:read")?;
    let r = consumer_ref(&env, &name)?;
    let mut window = Duration::from_secs(3600);
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            // An empty value is the default, as a form's empty field means.
            "window" if v.is_empty() => {}
            "window" => {
                window = parse_duration(&v)
                    .map_err(|e| ApiError::bad_request(format!("window: {e}")))?;
                if window.is_zero() {
                    return Err(ApiError::bad_request("window: expected more than 0"));
                }
                window = window.min(MAX_WINDOW);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    crate::jobs::flush_usage(&state).await;
    let stored = state
        .store
        .get_consumer(&r)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("consumer {r} does not exist")))?;
    let c = &stored.consumer;
    let now = state.clock.now();
    let by_minute = window <= Duration::from_secs(RECENT_MINUTES as u64 * 60);
    let step = if by_minute { MINUTE_MS } else { HOUR_MS };
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let start = now.unix_millis().saturating_sub(window_ms);
    let from = Timestamp::from_unix_millis(start - start.rem_euclid(step));
    let kids: Vec<_> = c.versions.iter().map(|v| v.kid).collect();
    let hourly = if by_minute {
        Vec::new()
    } else {
        state.store.usage(&kids, from).await?
    };
    let mut versions = Vec::new();
    let mut marks = Vec::new();
    let mark = |marks: &mut Vec<proto::AdoptionMark>, kind: &str, version: u32, at: Timestamp| {
        marks.push(proto::AdoptionMark {
            kind: kind.into(),
            version,
            at: rfc3339(at),
        });
    };
    for v in &c.versions {
        let series: Vec<(Timestamp, u64)> = if by_minute {
            state.usage.recent_minutes(&v.kid, from)
        } else {
            hourly
                .iter()
                .find(|u| u.kid == v.kid)
                .map(|u| {
                    u.hourly
                        .iter()
                        .filter(|(h, _)| *h >= from)
                        .copied()
                        .collect()
                })
                .unwrap_or_default()
        };
        let last_used = state.index.last_used(&v.kid);
        let view = v.view(last_used);
        let st = v.state_with(&c.policy, last_used, now);
        versions.push(proto::AdoptionVersion {
            version: v.number.0,
            kid: v.kid.to_string(),
            state: st.as_str().into(),
            points: series
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(at, requests)| proto::AdoptionPoint {
                    at: rfc3339(at),
                    requests,
                })
                .collect(),
        });
        mark(&mut marks, "issued", v.number.0, v.created_at);
        let shown = v.deadline_with(&c.policy, last_used, now);
        if is_extended_at(&view, &c.policy, now) {
            if let Some(extended) = shown {
                // The deadline it had before the extension: one grace window earlier.
                let grace = i64::try_from(v.grace.as_millis()).unwrap_or(0);
                mark(
                    &mut marks,
                    "deadline",
                    v.number.0,
                    Timestamp::from_unix_millis(extended.unix_millis() - grace),
                );
                mark(&mut marks, "stall_extension", v.number.0, extended);
            }
        } else if let Some(deadline) = shown {
            mark(&mut marks, "deadline", v.number.0, deadline);
            if let Some(ext) = extension_if_stalled(&view, &c.policy, now) {
                mark(&mut marks, "extension_if_stalled", v.number.0, ext);
            }
        }
        if let Some(at) = v.retired_at {
            mark(&mut marks, "retired", v.number.0, at);
        }
        if let Some(at) = v.revoked_at {
            mark(&mut marks, "revoked", v.number.0, at);
        }
    }
    marks.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(Json(proto::Adoption {
        consumer: c.reference(),
        step_seconds: if by_minute { 60 } else { 3600 },
        resolution: if by_minute { "minute" } else { "hour" }.into(),
        from: rfc3339(from),
        to: rfc3339(now),
        versions,
        marks,
    }))
}
