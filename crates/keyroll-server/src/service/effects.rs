//! What follows a written change: one lifecycle log line per effect, the rotation metrics, and,
//! for a stall, who was still using the version (recorded in its audit entry and event).

use std::time::Duration;

use keyroll_core::{ConsumerRef, Effect, Kid, RetireReason, Timestamp, rfc3339};
use keyroll_store::EventRecord;
use serde_json::{Value, json};

use super::Actor;
use crate::state::AppState;

/// Effects of a written change: one lifecycle log line each, and the rotation metrics.
pub(super) fn after_write(
    state: &AppState,
    actor: &Actor,
    r: &ConsumerRef,
    effects: &[Effect],
    events: &[EventRecord],
) {
    if !events.is_empty() {
        state.webhook_wake.notify_one();
    }
    for (e, event) in effects.iter().zip(events) {
        if let Some(o) = outcome(e) {
            state.observer.rotation(r.environment.as_str(), o);
        }
        match e {
            Effect::Stalled { .. } => {
                tracing::error!(event = "rotation.stalled", consumer = %r, version = event.version, detail = event.detail.as_str(), actor = actor.id.as_str(), "rotation of {r} stalled: v{} is still in use at its deadline; extended once", event.version.unwrap_or(0))
            }
            _ => {
                tracing::info!(event = e.kind(), consumer = %r, version = event.version, detail = event.detail.as_str(), actor = actor.id.as_str(), request_id = actor.request_id.as_str(), "{} {r}", e.kind())
            }
        }
    }
}

/// The metric outcome of an effect, if it is one `keyroll_rotations_total` counts.
fn outcome(e: &Effect) -> Option<&'static str> {
    match e {
        Effect::Issued(n) if n.0 > 1 => Some("rotated"),
        Effect::Retired {
            reason: RetireReason::Idle,
            ..
        } => Some("retired_idle"),
        Effect::Retired {
            reason: RetireReason::Deadline,
            ..
        } => Some("retired_deadline"),
        Effect::Retired { .. } => Some("retired"),
        Effect::Stalled { .. } => Some("stalled"),
        Effect::Revoked(_) => Some("revoked"),
        _ => None,
    }
}

/// Who was still using a stalled version, as recorded (flushes pending usage first).
pub(super) async fn stall_sources(state: &AppState, kid: Kid, at: Timestamp) -> Value {
    crate::jobs::flush_usage(state).await;
    let since = at.saturating_sub(Duration::from_secs(24 * 3600));
    match state.store.usage(&[kid], since).await {
        Ok(usage) => {
            let u = usage.into_iter().next();
            let hourly: u64 = u
                .as_ref()
                .map(|u| {
                    u.hourly
                        .iter()
                        .filter(|(h, _)| at.duration_since(*h) < Duration::from_secs(3600))
                        .map(|(_, n)| *n)
                        .sum()
                })
                .unwrap_or(0);
            let sources: Vec<Value> = u
                .map(|u| u.sources.iter().map(|s| json!({ "address": s.address, "user_agent": s.user_agent, "client_id": s.client_id, "last_seen": rfc3339(s.last_seen), "count": s.count })).collect())
                .unwrap_or_default();
            json!({ "sources": sources, "requests_last_hour": hourly })
        }
        Err(e) => json!({ "sources_unavailable": e.to_string() }),
    }
}
