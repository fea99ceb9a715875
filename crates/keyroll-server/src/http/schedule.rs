//! `GET /v1/schedule` (every consumer's place in the rotation schedule) and
//! `GET /v1/consumers/{env}/{name}/preflight` (the checklist before a rotation: versions in use
//! and their sources, the delivery path, the ordering rule, what happens when, warnings).
//! Both only read.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use keyroll_core::{
    ConsumerRef, Delivery, Environment, OnStall, RetirePolicy, Timestamp, format_duration,
    ordering_waits, rfc3339,
};
use keyroll_proto as proto;

use crate::http::admin::{consumer_ref, name_error};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiPath};
use crate::schedule::{Placed, Snapshot};
use crate::state::AppState;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `GET /v1/schedule[?environment=E]`.
#[utoipa::path(get, path = "/v1/schedule", tag = "schedule",
    params(("environment" = Option<String>, Query, description = "only this environment")),
    responses((status = 200, body = proto::Schedule), (status = 400, body = proto::Problem)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn schedule(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::Schedule>, ApiError> {
    admin.require("consumers:read")?;
    let mut only = None;
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "environment" => only = Some(Environment::parse(&v).map_err(name_error)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let now = state.clock.now();
    let entries = crate::schedule::place_all(&state, only.as_ref(), now)
        .await?
        .iter()
        .map(Placed::to_proto)
        .collect();
    Ok(Json(proto::Schedule {
        now: rfc3339(now),
        entries,
    }))
}

/// `GET /v1/consumers/{env}/{name}/preflight`: what a rotation of the consumer would meet now.
#[utoipa::path(get, path = "/v1/consumers/{env}/{name}/preflight", tag = "schedule",
    params(("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = proto::Preflight), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn preflight(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath((env, name)): ApiPath<(String, String)>,
) -> Result<Json<proto::Preflight>, ApiError> {
    admin.require("consumers:read")?;
    let r = consumer_ref(&env, &name)?;
    // What this node counted but has not flushed belongs in the checklist.
    crate::jobs::flush_usage(&state).await;
    let now = state.clock.now();
    let snapshot = Snapshot::read(&state, now).await?;
    let c = snapshot
        .consumer(&r)
        .ok_or_else(|| ApiError::not_found(format!("consumer {r} does not exist")))?;
    let placed = snapshot.place(c);
    let kids: Vec<_> = c.versions.iter().map(|v| v.kid).collect();
    let usage = state.store.usage(&kids, now.saturating_sub(DAY)).await?;
    let status = crate::http::status::consumer_status(&state, c, &usage, now);
    let valid: Vec<&proto::VersionStatus> = status
        .versions
        .iter()
        .filter(|v| matches!(v.state.as_str(), "active" | "retiring"))
        .collect();
    let total_1h: u64 = valid.iter().map(|v| v.requests_last_hour).sum();
    let versions: Vec<proto::PreflightVersion> = valid
        .iter()
        .map(|v| proto::PreflightVersion {
            version: v.version,
            state: v.state.clone(),
            requests_24h: v.requests_last_day,
            requests_1h: v.requests_last_hour,
            share_1h: share(v.requests_last_hour, total_1h),
            last_used_at: v.last_used_at.clone(),
            sources: v.sources.clone(),
        })
        .collect();
    let grace = c.schedule.grace.unwrap_or(state.config.default_grace);
    let ordering = ordering_check(&snapshot, &placed, &r);
    let mut warnings = Vec::new();
    for v in &versions {
        if v.requests_1h > 0 {
            warnings.push(format!(
                "v{} served {:.0}% of this consumer's requests in the last hour from {} source{}",
                v.version,
                v.share_1h * 100.0,
                v.sources.len(),
                if v.sources.len() == 1 { "" } else { "s" }
            ));
        }
    }
    if versions.iter().all(|v| v.requests_24h == 0) {
        warnings.push(
            "no traffic seen in the last 24 h: nothing shows which apps hold the current key"
                .into(),
        );
    }
    match c.schedule.delivery {
        Delivery::Manual => {
            warnings.push("no delivery path: the new key must be handed over by hand".into())
        }
        Delivery::Ci => warnings.push(
            "delivery ci: the pipeline that runs `keyroll rotate --due` hands the key on; a \
             rotation from here must be handed over by you"
                .into(),
        ),
        Delivery::Agent => {}
    }
    if placed.protected {
        warnings.push(format!(
            "{} is protected: the rotation needs --yes",
            c.environment
        ));
    }
    if !ordering.satisfied {
        warnings.push(format!("ordering: {}", ordering.detail));
    }
    if let keyroll_core::ScheduleState::Blocked(_, blockers) = &placed.state {
        for b in blockers {
            if b.code() != "ordering" {
                warnings.push(format!("blocked: {}", b.describe(c)));
            }
        }
    }
    Ok(Json(proto::Preflight {
        consumer: r.to_string(),
        now: rfc3339(now),
        protected: placed.protected,
        delivery: c.schedule.delivery.as_str().into(),
        grace: format_duration(grace),
        schedule: placed.to_proto(),
        ordering,
        timeline: timeline(c, grace, now),
        versions,
        warnings,
    }))
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        // Request counts are far below 2^52: exact in an f64.
        part as f64 / total as f64
    }
}

/// The ordering rule of `r`'s environment and whether it holds now.
fn ordering_check(snapshot: &Snapshot, placed: &Placed, r: &ConsumerRef) -> proto::OrderingCheck {
    let Some(after) = &placed.rotate_after else {
        return proto::OrderingCheck {
            rotate_after: None,
            satisfied: true,
            detail: format!("{} has no ordering rule", r.environment),
        };
    };
    let earlier = snapshot.consumer(&ConsumerRef {
        environment: after.clone(),
        name: r.name.clone(),
    });
    let waits = ordering_waits(&placed.consumer, earlier);
    let detail = match &waits {
        None => format!(
            "{after}/{} has completed a rotation since the current key",
            r.name
        ),
        Some(w) => keyroll_core::Blocker::Ordering {
            after: after.clone(),
            waiting: w.clone(),
        }
        .describe(&placed.consumer),
    };
    proto::OrderingCheck {
        rotate_after: Some(after.to_string()),
        satisfied: waits.is_none(),
        detail,
    }
}

/// What a rotation now would set in motion, in time order.
fn timeline(
    c: &keyroll_core::Consumer,
    grace: Duration,
    now: Timestamp,
) -> Vec<proto::TimelineStep> {
    let step = |at: Timestamp, what: String| proto::TimelineStep {
        at: rfc3339(at),
        what,
    };
    let Some(active) = c.active_version() else {
        return vec![step(
            now,
            "a new version is issued (no version to retire)".into(),
        )];
    };
    let old = active.number;
    let new = old.0.saturating_add(1);
    let mut steps = vec![step(
        now,
        format!("v{new} is issued and shown once; {old} starts retiring (it keeps working)"),
    )];
    if c.policy.retire == RetirePolicy::WhenIdle {
        steps.push(step(
            now,
            format!(
                "from then on: {old} retires early once v{new} is in use and {old} has been \
                 unseen for {}",
                format_duration(c.policy.idle)
            ),
        ));
    }
    let deadline = now.saturating_add(grace);
    match c.policy.on_stall {
        OnStall::Extend => {
            steps.push(step(
                deadline,
                format!(
                    "deadline: {old} retires, unless it was seen within {} before it (a stall: \
                     its deadline is then extended once, to {})",
                    format_duration(c.policy.idle),
                    rfc3339(deadline.saturating_add(grace))
                ),
            ));
            steps.push(step(
                deadline.saturating_add(grace),
                format!("{old} retires whatever traffic says, if it stalled"),
            ));
        }
        OnStall::Retire => steps.push(step(
            deadline,
            format!("deadline: {old} retires whatever traffic says (on_stall = retire)"),
        )),
    }
    if let Some(every) = c.schedule.rotate_every {
        steps.push(step(
            now.saturating_add(every),
            format!(
                "the next scheduled rotation falls due (rotate_every {})",
                format_duration(every)
            ),
        ));
    }
    steps
}
