//! `GET /v1/status` (who uses which version, and a verdict per consumer) and `GET /v1/events`
//! (the outbox of lifecycle events).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use keyroll_core::{
    Consumer, ConsumerRef, Environment, State as VersionState, Timestamp, VersionFacts,
    extension_if_stalled, is_extended_at,
};
use keyroll_proto as proto;
use keyroll_store::VersionUsage;

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::state::AppState;
use keyroll_core::rfc3339;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn query(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The most consumers one `/v1/status` page holds.
pub const MAX_STATUS_LIMIT: usize = 1000;

/// `GET /v1/status[?environment=E][&consumer=ENV/NAME][&attention=true][&q=TEXT][&offset=N&limit=N]`.
///
/// `q`, `offset` and `limit` cut the consumer list before anything is computed for it, so a
/// dashboard page at a million versions costs one page; `attention` keeps only the consumers
/// that need someone (a version retiring, stalled, a delivery warning, a rotation due or
/// blocked), which needs every consumer's status first.
#[utoipa::path(get, path = "/v1/status", tag = "status",
    params(("environment" = Option<String>, Query), ("consumer" = Option<String>, Query, description = "ENV/NAME"),
        ("attention" = Option<bool>, Query, description = "only consumers that need attention: retiring, stalled, delivery warnings, due or blocked"),
        ("q" = Option<String>, Query, description = "only consumers whose ENV/NAME or owner contains this text (case-insensitive)"),
        ("offset" = Option<u32>, Query, description = "skip this many matching consumers (by ENV/NAME)"),
        ("limit" = Option<u32>, Query, description = "at most this many consumers (1 to 1000)")),
    responses((status = 200, body = proto::StatusPage),
        (status = 400, body = proto::Problem, description = "a bad query parameter"),
        (status = 404, body = proto::Problem, description = "the consumer does not exist")),
    security(("admin_token" = ["consumers:read"])))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::StatusPage>, ApiError> {
    admin.require("consumers:read")?;
    let mut environment = None;
    let mut only = None;
    let mut attention = false;
    let mut text: Option<String> = None;
    let mut offset = 0usize;
    let mut limit: Option<usize> = None;
    for (k, v) in query(&uri) {
        match k.as_str() {
            "environment" => {
                environment =
                    Some(Environment::parse(&v).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            "consumer" => {
                only =
                    Some(ConsumerRef::parse(&v).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            "attention" => {
                attention = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "attention must be true or false, not {v:?}"
                        )));
                    }
                }
            }
            "q" => text = Some(v.to_lowercase()).filter(|t| !t.is_empty()),
            "offset" => {
                let n: i32 = v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "offset must be a whole number from 0 to {}, not {v:?}",
                        i32::MAX
                    ))
                })?;
                offset = n as usize;
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit must be a whole number, not {v:?}"))
                })?;
                if !(1..=MAX_STATUS_LIMIT).contains(&n) {
                    return Err(ApiError::bad_request(format!(
                        "limit must be between 1 and {MAX_STATUS_LIMIT}, not {n}"
                    )));
                }
                limit = Some(n);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    // What this node counted but has not flushed yet belongs in the answer.
    crate::jobs::flush_usage(&state).await;
    let consumers = match &only {
        Some(r) => vec![
            state
                .store
                .get_consumer(r)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("consumer {r} does not exist")))?,
        ],
        None => state.store.list_consumers(environment.as_ref()).await?,
    };
    let listed_all = consumers.len();
    let mut consumers = consumers;
    if let Some(t) = &text {
        consumers.retain(|c| {
            let r = format!("{}/{}", c.consumer.environment, c.consumer.name);
            r.to_lowercase().contains(t)
                || c.consumer
                    .owner
                    .as_deref()
                    .is_some_and(|o| o.to_lowercase().contains(t))
        });
    }
    consumers.sort_by(|a, b| {
        (a.consumer.environment.as_str(), a.consumer.name.as_str())
            .cmp(&(b.consumer.environment.as_str(), b.consumer.name.as_str()))
    });
    // Without `attention` the page is known before any status is computed.
    let mut matched = consumers.len();
    if !attention {
        consumers = page(consumers, offset, limit);
    }
    let whole = consumers.len() == listed_all;
    let at = state.clock.now();
    let kids: Vec<_> = consumers
        .iter()
        .flat_map(|c| c.consumer.versions.iter().map(|v| v.kid))
        .collect();
    let usage = state.store.usage(&kids, at.saturating_sub(DAY)).await?;
    // Unfiltered, `consumers` is every consumer: place them from it rather than reading the
    // store a second time (`status --watch` asks every 2 s).
    let snapshot = if only.is_none() && environment.is_none() && whole {
        crate::schedule::Snapshot::of(&state, consumers.clone(), at).await?
    } else {
        crate::schedule::Snapshot::read(&state, at).await?
    };
    // The agents and deliveries of the environment asked about (all of them unfiltered).
    let scope = environment
        .as_ref()
        .or(only.as_ref().map(|r| &r.environment));
    let agents = state.store.list_agents(scope).await?;
    let deliveries = state.store.list_deliveries(scope).await?;
    let items = consumers
        .iter()
        .map(|c| {
            let mut status = consumer_status(&state, &c.consumer, &usage, at);
            status.delivery = crate::service::delivery::delivery_status(
                &c.consumer,
                &status.versions,
                &agents,
                &deliveries,
                state.config.unseen_after,
                at,
            );
            let r = ConsumerRef {
                environment: c.consumer.environment.clone(),
                name: c.consumer.name.clone(),
            };
            status.schedule = snapshot
                .consumer(&r)
                .map(|settled| snapshot.place(settled).to_proto());
            status
        })
        .collect::<Vec<_>>();
    let items = if attention {
        let needing: Vec<_> = items.into_iter().filter(needs_attention).collect();
        matched = needing.len();
        page(needing, offset, limit)
    } else {
        items
    };
    Ok(Json(proto::StatusPage {
        items,
        matched: matched as u64,
    }))
}

/// `offset` and `limit` applied to an ordered list.
fn page<T>(items: Vec<T>, offset: usize, limit: Option<usize>) -> Vec<T> {
    items
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect()
}

/// What the dashboard's overview lists: a rotation under way or stalled, a delivery warning,
/// a scheduled rotation due or blocked.
fn needs_attention(c: &proto::ConsumerStatus) -> bool {
    c.verdict_code == "stalled"
        || c.versions.iter().any(|v| v.state == "retiring")
        || c.delivery.as_ref().is_some_and(|d| !d.warnings.is_empty())
        || c.schedule
            .as_ref()
            .is_some_and(|s| s.state == "due" || s.state == "blocked")
}

fn requests_within(u: &VersionUsage, at: Timestamp, window: Duration) -> u64 {
    // An hour bucket counts when any of it falls inside the window.
    u.hourly
        .iter()
        .filter(|(h, _)| at.duration_since(*h) < window)
        .map(|(_, n)| *n)
        .sum()
}

fn who(sources: &[proto::UsageSource]) -> String {
    match sources.first() {
        None => "unknown sources".into(),
        Some(s) => {
            let mut text = s.address.clone();
            let label = s.client_id.clone().unwrap_or_else(|| s.user_agent.clone());
            if !label.is_empty() {
                text.push_str(&format!(" ({label})"));
            }
            if sources.len() > 1 {
                text.push_str(&format!(" and {} more", sources.len() - 1));
            }
            text
        }
    }
}

/// One consumer's status and verdict at `at`.
pub fn consumer_status(
    state: &AppState,
    c: &Consumer,
    usage: &[VersionUsage],
    at: Timestamp,
) -> proto::ConsumerStatus {
    let mut versions = Vec::new();
    let mut facts = Vec::new();
    for v in c.versions.iter().rev() {
        let u = usage.iter().find(|u| u.kid == v.kid);
        let last_used = match (
            u.and_then(|u| u.last_used_at),
            state.index.last_used(&v.kid),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let st = v.state_with(&c.policy, last_used, at);
        let stalled =
            st == VersionState::Retiring && is_extended_at(&v.view(last_used), &c.policy, at);
        let deadline = v.deadline_with(&c.policy, last_used, at);
        let extension = extension_if_stalled(&v.view(last_used), &c.policy, at)
            .filter(|_| st == VersionState::Retiring);
        let requests_last_hour = u.map(|u| requests_within(u, at, HOUR)).unwrap_or(0);
        let sources: Vec<proto::UsageSource> = u
            .map(|u| {
                u.sources
                    .iter()
                    .map(|s| proto::UsageSource {
                        address: s.address.clone(),
                        user_agent: s.user_agent.clone(),
                        client_id: s.client_id.clone(),
                        last_seen: rfc3339(s.last_seen),
                        count: s.count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        facts.push(VersionFacts {
            number: v.number,
            state: st,
            stalled,
            deadline,
            extension_if_stalled: extension,
            last_used,
            requests_last_hour,
            who: who(&sources),
        });
        versions.push(proto::VersionStatus {
            version: v.number.0,
            kid: v.kid.to_string(),
            state: st.as_str().into(),
            deadline: deadline.map(rfc3339),
            stalled,
            last_used_at: last_used.map(rfc3339),
            requests_last_hour,
            requests_last_day: u.map(|u| requests_within(u, at, DAY)).unwrap_or(0),
            sources,
            extension_if_stalled: extension.map(rfc3339),
        });
    }
    let verdict = keyroll_core::verdict(c.disabled, c.policy.idle, &facts, at);
    proto::ConsumerStatus {
        consumer: c.reference(),
        owner: c.owner.clone(),
        disabled: c.disabled,
        verdict: verdict.describe(),
        verdict_code: verdict.code().into(),
        schedule: None,
        versions,
        delivery: None,
    }
}

/// `GET /v1/events?after=SEQ&limit=N`.
#[utoipa::path(get, path = "/v1/events", tag = "status",
    params(("after" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = proto::List<proto::Event>)),
    security(("admin_token" = ["consumers:read"])))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::List<proto::Event>>, ApiError> {
    admin.require("consumers:read")?;
    let mut after = 0i64;
    let mut limit = 100u32;
    for (k, v) in query(&uri) {
        match k.as_str() {
            "after" => {
                after = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("after: {v:?} is not a sequence number"))
                })?
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: {v:?} is not a number from 1 to 1000"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let items = state
        .store
        .list_events(after, limit)
        .await?
        .into_iter()
        .map(|e| proto::Event {
            seq: e.seq,
            at: rfc3339(e.at),
            kind: e.kind,
            consumer: e.consumer,
            version: e.version,
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(proto::List { items }))
}
