//! The webhooks API: register endpoints (the `whsec_` secret shown once), list, show, remove,
//! rotate the secret with an overlap, re-enable; list deliveries with their attempts and replay
//! one. Handlers parse and check (URL, the address filter, event names, durations) and call
//! `service::webhooks`; bad input is a precise 4xx, never a 500.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{Timestamp, parse_duration, rfc3339};
use keyroll_proto as proto;
use keyroll_store::{
    DeliveryQuery, DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
};

use crate::http::admin::{actor, no_secret_in};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, ApiPath};
use crate::service;
use crate::state::AppState;
use crate::webhooks::ssrf::{AddressPolicy, check_registration};

/// How long the old secret signs beside the new one when the request does not say.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap accepted.
pub const MAX_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest URL accepted.
pub const MAX_URL: usize = 2048;

fn unprocessable(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 16 && keyroll_core::base62::first_invalid(rest.as_bytes()).is_none()
    })
}

fn check_id(id: &str, prefix: &str, what: &str) -> Result<(), ApiError> {
    if is_id(id, prefix) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} id {id:?} is not {prefix} followed by 16 letters and digits"
        )))
    }
}

/// The endpoint as the API shows it (never a secret).
pub fn view(e: &WebhookEndpoint, at: Timestamp) -> proto::Webhook {
    proto::Webhook {
        id: e.id.clone(),
        url: e.url.clone(),
        events: e.events.clone(),
        description: e.description.clone(),
        created_at: rfc3339(e.created_at),
        state: if e.disabled.is_some() {
            "disabled"
        } else {
            "enabled"
        }
        .to_owned(),
        disabled_at: e.disabled.as_ref().map(|(t, _)| rfc3339(*t)),
        disabled_reason: e.disabled.as_ref().map(|(_, r)| r.clone()),
        previous_secret_until: e
            .previous_secret
            .as_ref()
            .filter(|(_, until)| *until > at)
            .map(|(_, until)| rfc3339(*until)),
    }
}

fn attempt_view(a: &WebhookAttempt) -> proto::WebhookAttemptInfo {
    proto::WebhookAttemptInfo {
        n: a.n,
        at: rfc3339(a.at),
        status: a.status,
        duration_ms: a.duration_ms,
        error: a.error.clone(),
        retry_after_s: a.retry_after_ms.map(|ms| ms / 1000),
    }
}

fn delivery_view(
    d: &WebhookDelivery,
    attempts: Option<&[WebhookAttempt]>,
) -> proto::WebhookDeliveryInfo {
    proto::WebhookDeliveryInfo {
        id: d.id.clone(),
        endpoint: d.endpoint_id.clone(),
        event_seq: d.event_seq,
        msg_id: d.msg_id.clone(),
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at.map(rfc3339),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        created_at: rfc3339(d.created_at),
        delivered_at: d.delivered_at.map(rfc3339),
        attempt_log: attempts.map(|a| a.iter().map(attempt_view).collect()),
    }
}

/// Checks a URL for registration: http or https, no credentials, a host the address filter allows.
async fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    if url.len() > MAX_URL {
        return Err(unprocessable(
            "invalid_url",
            format!("url: longer than {MAX_URL} characters"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| unprocessable("invalid_url", format!("url: not a URL ({e})")))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(unprocessable(
                "invalid_url",
                format!("url: scheme {other:?}; a webhook URL is http:// or https://"),
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(unprocessable("invalid_url", "url: no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(unprocessable(
            "invalid_url",
            "url: credentials in the URL would be stored and logged; put a token in the path, or rely on the signature",
        ));
    }
    no_secret_in("url", url)?;
    let policy = AddressPolicy {
        allow_loopback: state.config.webhooks.allow_loopback,
        allow_private: state.config.webhooks.allow_private,
    };
    check_registration(&policy, &parsed)
        .await
        .map_err(|why| unprocessable("webhook_address_refused", format!("url: {why}")))?;
    Ok(parsed.to_string())
}

fn check_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(d) = d else { return Ok(None) };
    if d.chars().count() > 200 || d.chars().any(char::is_control) {
        return Err(unprocessable(
            "invalid_description",
            "description: at most 200 characters, none of them control characters",
        ));
    }
    no_secret_in("description", &d)?;
    Ok(Some(d))
}

fn with_secret(status: StatusCode, body: &proto::WebhookSecret) -> Response {
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&format!("/v1/webhooks/{}", body.webhook.id))
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /v1/webhooks`.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = proto::CreateWebhook,
    responses((status = 201, body = proto::WebhookSecret, description = "the endpoint and its whsec_ secret, shown this once"),
        (status = 422, body = proto::Problem, description = "a bad URL or event type, or an address the filter refuses (`webhook_address_refused` names the setting)")),
    security(("admin_token" = ["webhooks:write"])))]
pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    body: ApiJson<proto::CreateWebhook>,
) -> Result<Response, ApiError> {
    admin.require("webhooks:write")?;
    let req = body.value;
    let url = check_url(&state, &req.url).await?;
    let events = match req.events {
        None => crate::webhooks::DEFAULT_EVENTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        Some(list) => crate::webhooks::check_events(&list)
            .map_err(|why| unprocessable("invalid_events", why))?,
    };
    let description = check_description(req.description)?;
    let (endpoint, secret) =
        service::webhooks::create(&state, &actor(&admin), &url, events, description).await?;
    let answer = proto::WebhookSecret {
        webhook: view(&endpoint, state.clock.now()),
        secret: secret.reveal(),
    };
    Ok(with_secret(StatusCode::CREATED, &answer))
}

/// `GET /v1/webhooks`.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = proto::List<proto::Webhook>)),
    security(("admin_token" = ["webhooks:read"])))]
pub async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<proto::List<proto::Webhook>>, ApiError> {
    admin.require("webhooks:read")?;
    let at = state.clock.now();
    let items = state
        .store
        .list_webhook_endpoints()
        .await?
        .iter()
        .map(|e| view(e, at))
        .collect();
    Ok(Json(proto::List { items }))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "the endpoint id (wh_…)")),
    responses((status = 200, body = proto::Webhook), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["webhooks:read"])))]
pub async fn get_webhook(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<proto::Webhook>, ApiError> {
    admin.require("webhooks:read")?;
    check_id(&id, "wh_", "webhook")?;
    let e = service::webhooks::existing(&state, &id).await?;
    Ok(Json(view(&e, state.clock.now())))
}

/// `DELETE /v1/webhooks/{id}`: the endpoint, its deliveries and their attempts.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "the endpoint id (wh_…)")),
    responses((status = 200, body = proto::Webhook, description = "removed; the endpoint as it was"), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["webhooks:write"])))]
pub async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<proto::Webhook>, ApiError> {
    admin.require("webhooks:write")?;
    check_id(&id, "wh_", "webhook")?;
    let e = service::webhooks::delete(&state, &actor(&admin), &id).await?;
    Ok(Json(view(&e, state.clock.now())))
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "the endpoint id (wh_…)")),
    request_body = proto::RotateWebhookSecret,
    responses((status = 200, body = proto::WebhookSecret, description = "the new secret, shown this once; the old one signs beside it until `previous_secret_until`"),
        (status = 404, body = proto::Problem), (status = 422, body = proto::Problem)),
    security(("admin_token" = ["webhooks:write"])))]
pub async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<proto::RotateWebhookSecret>,
) -> Result<Response, ApiError> {
    admin.require("webhooks:write")?;
    check_id(&id, "wh_", "webhook")?;
    let overlap = match &body.value.overlap {
        None => DEFAULT_OVERLAP,
        Some(text) => parse_duration(text)
            .map_err(|e| unprocessable("invalid_duration", format!("overlap: {e}")))?,
    };
    if overlap > MAX_OVERLAP {
        return Err(unprocessable(
            "invalid_duration",
            "overlap: at most 30d (both secrets sign meanwhile)",
        ));
    }
    let (endpoint, secret) =
        service::webhooks::rotate_secret(&state, &actor(&admin), &id, overlap).await?;
    let answer = proto::WebhookSecret {
        webhook: view(&endpoint, state.clock.now()),
        secret: secret.reveal(),
    };
    Ok(with_secret(StatusCode::OK, &answer))
}

/// `POST /v1/webhooks/{id}/enable`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks",
    params(("id" = String, Path, description = "the endpoint id (wh_…)")),
    responses((status = 200, body = proto::Webhook), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["webhooks:write"])))]
pub async fn enable_webhook(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<proto::Webhook>, ApiError> {
    admin.require("webhooks:write")?;
    check_id(&id, "wh_", "webhook")?;
    let e = service::webhooks::enable(&state, &actor(&admin), &id).await?;
    Ok(Json(view(&e, state.clock.now())))
}

/// `GET /v1/webhook-deliveries[?endpoint=&state=&limit=]`, newest first.
#[utoipa::path(get, path = "/v1/webhook-deliveries", tag = "webhooks",
    params(("endpoint" = Option<String>, Query, description = "only to this endpoint (wh_…)"),
        ("state" = Option<String>, Query, description = "pending, delivered, failed or disabled"),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = proto::List<proto::WebhookDeliveryInfo>)),
    security(("admin_token" = ["webhooks:read"])))]
pub async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::List<proto::WebhookDeliveryInfo>>, ApiError> {
    admin.require("webhooks:read")?;
    let mut q = DeliveryQuery {
        limit: 100,
        ..DeliveryQuery::default()
    };
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "endpoint" => {
                check_id(&v, "wh_", "webhook")?;
                q.endpoint_id = Some(v.into_owned());
            }
            "state" => {
                q.state = Some(DeliveryState::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state: {v:?} is not pending, delivered, failed or disabled"
                    ))
                })?)
            }
            "limit" => {
                q.limit = v
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
        .list_webhook_deliveries(&q)
        .await?
        .iter()
        .map(|d| delivery_view(d, None))
        .collect();
    Ok(Json(proto::List { items }))
}

/// `GET /v1/webhook-deliveries/{id}`: one delivery with its attempts.
#[utoipa::path(get, path = "/v1/webhook-deliveries/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "the delivery id (whd_…)")),
    responses((status = 200, body = proto::WebhookDeliveryInfo), (status = 404, body = proto::Problem)),
    security(("admin_token" = ["webhooks:read"])))]
pub async fn get_delivery(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<proto::WebhookDeliveryInfo>, ApiError> {
    admin.require("webhooks:read")?;
    check_id(&id, "whd_", "delivery")?;
    let (d, attempts) = state
        .store
        .get_webhook_delivery(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook delivery {id} does not exist")))?;
    Ok(Json(delivery_view(&d, Some(&attempts))))
}

/// `POST /v1/webhook-deliveries/{id}/replay`: one more attempt now, same `webhook-id`.
#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "the delivery id (whd_…)")),
    responses((status = 202, body = proto::WebhookDeliveryInfo, description = "queued; the sender attempts it at once"),
        (status = 404, body = proto::Problem),
        (status = 422, body = proto::Problem, description = "its endpoint is disabled: enable it first")),
    security(("admin_token" = ["webhooks:write"])))]
pub async fn replay_delivery(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    admin.require("webhooks:write")?;
    check_id(&id, "whd_", "delivery")?;
    let d = service::webhooks::replay(&state, &actor(&admin), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(&d, None))).into_response())
}
