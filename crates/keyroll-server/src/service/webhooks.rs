//! Webhook endpoint changes through the service layer: register (the secret shown once), remove,
//! rotate the secret with an overlap, re-enable, replay a delivery, and disable an endpoint that
//! answered 410. Each is one store transaction with its audit entry (`webhook.created`,
//! `webhook.deleted`, `webhook.secret_rotated`, `webhook.enabled`, `webhook.disabled`,
//! `webhook.replayed`), never carrying the secret; the secret is stored only sealed under the
//! master key, with the endpoint id as associated data. The HTTP layer validates the input
//! (URL, address filter, event names) before calling here.

use std::time::Duration;

use keyroll_core::{Timestamp, random_base62, rfc3339};
use keyroll_store::{DeliveryState, EventRecord, WebhookDelivery, WebhookEndpoint};
use keyroll_webhooks::Secret;
use serde_json::json;

use super::{Actor, ServiceError};
use crate::state::AppState;

fn target(id: &str) -> String {
    format!("webhook {id}")
}

/// A new id: `prefix` + 16 base62 characters.
pub fn new_id(state: &AppState, prefix: &str) -> Result<String, ServiceError> {
    let id: [u8; 16] = random_base62(&mut state.randomness.entropy())
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    Ok(format!("{prefix}{}", String::from_utf8_lossy(&id)))
}

fn new_secret(state: &AppState, id: &str) -> Result<(Secret, Vec<u8>), ServiceError> {
    let mut bytes = [0u8; 32];
    state
        .randomness
        .fill(&mut bytes)
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    let sealed = state
        .master_key
        .seal(id.as_bytes(), &bytes)
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    Ok((Secret::from_bytes(bytes), sealed))
}

/// An endpoint that exists, or `NotFound`.
pub async fn existing(state: &AppState, id: &str) -> Result<WebhookEndpoint, ServiceError> {
    state
        .store
        .get_webhook_endpoint(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("webhook endpoint {id} does not exist")))
}

/// Registers an endpoint: the endpoint as stored and its secret (to show once).
pub async fn create(
    state: &AppState,
    actor: &Actor,
    url: &str,
    events: Vec<String>,
    description: Option<String>,
) -> Result<(WebhookEndpoint, Secret), ServiceError> {
    let at = state.clock.now();
    let id = new_id(state, "wh_")?;
    let (secret, sealed) = new_secret(state, &id)?;
    let endpoint = WebhookEndpoint {
        id: id.clone(),
        url: url.to_owned(),
        events,
        description,
        sealed_secret: sealed,
        previous_secret: None,
        created_at: at,
        disabled: None,
    };
    let record = actor.audit(
        at,
        "webhook.created",
        target(&id),
        &json!({ "url": endpoint.url, "events": endpoint.events, "description": endpoint.description }),
    );
    state
        .store
        .create_webhook_endpoint(&endpoint, &record)
        .await?;
    tracing::info!(
        event = "webhook.created",
        webhook = id.as_str(),
        url = url,
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        "webhook endpoint {id} registered for {url}"
    );
    Ok((endpoint, secret))
}

/// Removes an endpoint with its deliveries.
pub async fn delete(
    state: &AppState,
    actor: &Actor,
    id: &str,
) -> Result<WebhookEndpoint, ServiceError> {
    let endpoint = existing(state, id).await?;
    let at = state.clock.now();
    let record = actor.audit(
        at,
        "webhook.deleted",
        target(id),
        &json!({ "url": endpoint.url }),
    );
    state.store.delete_webhook_endpoint(id, &record).await?;
    tracing::info!(
        event = "webhook.deleted",
        webhook = id,
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        "webhook endpoint {id} removed"
    );
    Ok(endpoint)
}

/// Gives an endpoint a new secret; the current one keeps signing beside it for `overlap`.
pub async fn rotate_secret(
    state: &AppState,
    actor: &Actor,
    id: &str,
    overlap: Duration,
) -> Result<(WebhookEndpoint, Secret), ServiceError> {
    let mut endpoint = existing(state, id).await?;
    let at = state.clock.now();
    let (secret, sealed) = new_secret(state, id)?;
    let old = std::mem::replace(&mut endpoint.sealed_secret, sealed);
    let until = at.saturating_add(overlap);
    endpoint.previous_secret = (!overlap.is_zero()).then_some((old, until));
    let record = actor.audit(
        at,
        "webhook.secret_rotated",
        target(id),
        &json!({ "overlap": keyroll_core::format_duration(overlap), "previous_signs_until": (!overlap.is_zero()).then(|| rfc3339(until)) }),
    );
    state
        .store
        .update_webhook_endpoint(&endpoint, std::slice::from_ref(&record), &[])
        .await?;
    tracing::info!(
        event = "webhook.secret_rotated",
        webhook = id,
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        "webhook endpoint {id} has a new secret; the old one signs until {}",
        rfc3339(until)
    );
    Ok((endpoint, secret))
}

/// Enables a disabled endpoint again (new events reach it; replay what it missed).
pub async fn enable(
    state: &AppState,
    actor: &Actor,
    id: &str,
) -> Result<WebhookEndpoint, ServiceError> {
    let mut endpoint = existing(state, id).await?;
    if endpoint.disabled.is_none() {
        return Ok(endpoint);
    }
    let at = state.clock.now();
    endpoint.disabled = None;
    let record = actor.audit(at, "webhook.enabled", target(id), &json!({}));
    state
        .store
        .update_webhook_endpoint(&endpoint, std::slice::from_ref(&record), &[])
        .await?;
    tracing::info!(
        event = "webhook.enabled",
        webhook = id,
        actor = actor.id.as_str(),
        "webhook endpoint {id} enabled"
    );
    Ok(endpoint)
}

/// Disables an endpoint that answered 410 Gone, with its audit entry and a `webhook.disabled`
/// event, in one transaction.
pub async fn disable_for_gone(
    state: &AppState,
    endpoint: &WebhookEndpoint,
    at: Timestamp,
) -> Result<(), ServiceError> {
    let mut endpoint = existing(state, &endpoint.id).await?;
    if endpoint.disabled.is_some() {
        return Ok(());
    }
    let reason = "the endpoint answered 410 Gone".to_owned();
    endpoint.disabled = Some((at, reason.clone()));
    let actor = Actor::webhooks(crate::request_id::new_request_id());
    let detail = json!({ "webhook": endpoint.id, "url": endpoint.url, "reason": reason });
    let record = actor.audit(at, "webhook.disabled", target(&endpoint.id), &detail);
    let event = EventRecord {
        seq: 0,
        at,
        kind: "webhook.disabled".into(),
        consumer: String::new(),
        version: None,
        detail: detail.to_string(),
    };
    state
        .store
        .update_webhook_endpoint(
            &endpoint,
            std::slice::from_ref(&record),
            std::slice::from_ref(&event),
        )
        .await?;
    tracing::warn!(
        event = "webhook.disabled",
        webhook = endpoint.id.as_str(),
        url = endpoint.url.as_str(),
        "webhook endpoint {} answered 410 Gone and is disabled; `keyroll webhook enable {}` turns it on again",
        endpoint.id,
        endpoint.id
    );
    state.webhook_wake.notify_one();
    Ok(())
}

/// Queues one more attempt of a delivery, now, with the same `webhook-id`.
pub async fn replay(
    state: &AppState,
    actor: &Actor,
    delivery_id: &str,
) -> Result<WebhookDelivery, ServiceError> {
    let (mut d, _) = state
        .store
        .get_webhook_delivery(delivery_id)
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!("webhook delivery {delivery_id} does not exist"))
        })?;
    let endpoint = existing(state, &d.endpoint_id).await?;
    if endpoint.disabled.is_some() {
        return Err(ServiceError::Invalid(format!(
            "webhook endpoint {} is disabled; enable it first (keyroll webhook enable {})",
            endpoint.id, endpoint.id
        )));
    }
    let at = state.clock.now();
    d.state = DeliveryState::Pending;
    d.next_attempt_at = Some(at);
    state.store.record_webhook_attempt(&d, None).await?;
    tracing::info!(
        event = "webhook.replayed",
        delivery = delivery_id,
        msg_id = d.msg_id.as_str(),
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        "webhook delivery {delivery_id} queued again"
    );
    state.webhook_wake.notify_one();
    Ok(d)
}
