//! The HTTP interface: routes, request ids, problem+json errors and the JSON body extractor.
//!
//! Forward-auth and `/healthz` are routed without middleware: they are what the throughput
//! budget of SPEC §12 compares. Admin routes run inside [`with_request_id`], which makes the
//! request id available to every error response through a task-local.

pub mod admin;
pub mod adoption;
pub mod audit;
pub mod auth;
pub mod ca;
pub mod cluster;
pub mod decision_http;
pub mod forward_auth;
pub mod keys;
pub mod observe;
pub mod openapi;
pub mod schedule;
pub mod self_service;
pub mod status;
pub mod tls_admin;
pub mod tokens;
pub mod ui;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::request_id::{new_request_id, request_id_from};
use crate::state::AppState;

/// Largest accepted admin or verify request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route(
            "/v1/environments",
            post(admin::environments::create_environment)
                .get(admin::environments::list_environments),
        )
        .route(
            "/v1/environments/{name}",
            get(admin::environments::get_environment)
                .patch(admin::environments::update_environment),
        )
        .route(
            "/v1/consumers",
            post(admin::consumers::create_consumer).get(admin::consumers::list_consumers),
        )
        .route(
            "/v1/consumers/{env}/{name}",
            get(admin::consumers::get_consumer).patch(admin::consumers::update_consumer),
        )
        .route(
            "/v1/consumers/{env}/{name}/rotate",
            post(admin::versions::rotate),
        )
        .route(
            "/v1/consumers/{env}/{name}/disable",
            post(admin::consumers::disable),
        )
        .route(
            "/v1/consumers/{env}/{name}/enable",
            post(admin::consumers::enable),
        )
        .route(
            "/v1/consumers/{env}/{name}/versions/{version}/revoke",
            post(admin::versions::revoke),
        )
        .route(
            "/v1/consumers/{env}/{name}/versions/{version}/retire",
            post(admin::versions::retire),
        )
        .route(
            "/v1/consumers/{env}/{name}/preflight",
            get(schedule::preflight),
        )
        .route(
            "/v1/consumers/{env}/{name}/adoption",
            get(adoption::adoption),
        )
        .route("/v1/schedule", get(schedule::schedule))
        .route("/v1/ca/init", post(ca::init))
        .route("/v1/ca/status", get(ca::status))
        .route("/v1/ca/rotate", post(ca::rotate))
        .route("/v1/ca/bundle", get(ca::bundle))
        .route("/v1/ca/crl", get(ca::crl))
        .route("/v1/certs", post(ca::issue).get(ca::list))
        .route("/v1/certs/revoke", post(ca::revoke))
        .route("/v1/certs/{serial}", get(ca::get))
        .route("/v1/self/certificate", post(ca::self_certificate))
        .route("/v1/self", get(self_service::self_state))
        .route("/v1/self/rotate", post(self_service::self_rotate))
        .route("/v1/self/handover", post(self_service::self_handover))
        .route("/v1/self/report", post(self_service::self_report))
        .route("/v1/agents", get(self_service::list_agents))
        .route(
            "/v1/consumers/{env}/{name}/request-rotation",
            post(self_service::request_rotation),
        )
        .route("/v1/keys/{kid}", get(keys::get_key))
        .route("/v1/verify", post(forward_auth::verify_json))
        .route("/v1/status", get(status::status))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/events", get(status::events))
        .route("/v1/audit", get(audit::audit))
        .route("/v1/decisions", get(observe::decisions))
        .route(
            "/v1/tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route("/v1/tokens/{id}", get(tokens::get_token))
        .route("/v1/tokens/{id}/revoke", post(tokens::revoke_token))
        .route("/v1/tokens/{id}/rotate", post(tokens::rotate_token))
        .route(
            "/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_webhook).delete(webhooks::delete_webhook),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/webhooks/{id}/enable", post(webhooks::enable_webhook))
        .route("/v1/webhook-deliveries", get(webhooks::list_deliveries))
        .route("/v1/webhook-deliveries/{id}", get(webhooks::get_delivery))
        .route(
            "/v1/webhook-deliveries/{id}/replay",
            post(webhooks::replay_delivery),
        )
        .merge(ui_routes())
        .route("/readyz", get(admin::health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            tls_admin::require_admin_certificate,
        ))
        .layer(middleware::from_fn(with_request_id));
    Router::new()
        .route("/v1/forward-auth", any(forward_auth::forward_auth))
        .route("/v1/forward-auth/", any(forward_auth::forward_auth))
        .route("/v1/forward-auth/{*rest}", any(forward_auth::forward_auth))
        .route("/healthz", get(admin::health::healthz))
        .route("/metrics", get(observe::metrics))
        .merge(admin)
        .with_state(state)
}

/// The dashboard: pages, assets, login and logout, each answer with the security headers.
fn ui_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(ui::ui_root))
        .route("/ui/", get(ui::page))
        .route("/ui/consumer/{env}/{name}", get(ui::page))
        .route("/ui/rotate/{env}/{name}", get(ui::page))
        .route("/ui/decisions", get(ui::page))
        .route("/ui/login", get(ui::login_form).post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/api/session", get(ui::whoami))
        .route("/ui/assets/{version}/{name}", get(ui::asset))
        .layer(middleware::from_fn(ui::security_headers))
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id inside admin handlers.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_request_id())
}

async fn with_request_id(req: Request, next: Next) -> Response {
    let id = request_id_from(req.headers());
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// An API error, rendered as RFC 9457 problem+json with the request id.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code.
    pub code: &'static str,
    /// What happened, in words.
    pub detail: String,
    /// Extra headers (`WWW-Authenticate`).
    pub www_authenticate: Option<String>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            www_authenticate: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 409 `conflict`.
    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", detail)
    }
}

impl From<keyroll_store::StoreError> for ApiError {
    fn from(e: keyroll_store::StoreError) -> ApiError {
        use keyroll_store::StoreError as E;
        match e {
            E::AlreadyExists(what) => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} already exists"),
            ),
            E::NotFound(what) => ApiError::not_found(format!("{what} does not exist")),
            E::Conflict(what) => {
                ApiError::conflict(format!("{what} was changed by another request; retry"))
            }
            E::IdempotencyKeyUsed => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used",
            ),
            E::KidCollision => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "key id collision; retry",
            ),
            E::Unavailable(msg) => {
                tracing::error!(event = "store.unavailable", error = %msg, "storage unavailable");
                // The store's message names the database and the cause (a full disk, a deleted
                // file): what the operator has to fix. It never holds a secret.
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!(
                        "the store is unavailable ({msg}); verification keeps working from memory, changes cannot be saved now"
                    ),
                )
            }
            E::Corrupt(msg) => {
                tracing::error!(event = "store.corrupt", error = %msg, "corrupt stored data");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_corrupt",
                    "stored data could not be read; see the server log",
                )
            }
        }
    }
}

/// Renders a problem+json response.
pub fn problem(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    kid: Option<String>,
    request_id: &str,
) -> Response {
    let extras = ProblemExtras {
        kid,
        ..ProblemExtras::default()
    };
    problem_with(status, code, title, detail, request_id, &extras)
}

/// The optional members of a problem body about a presented key.
#[derive(Debug, Clone, Default)]
pub struct ProblemExtras {
    /// The kid, when well-formed.
    pub kid: Option<String>,
    /// The fingerprint of what was presented.
    pub fingerprint: Option<String>,
    /// The consumer, once the secret matched.
    pub consumer: Option<String>,
    /// The version, once the secret matched.
    pub version: Option<String>,
}

/// A problem+json response with the members of [`ProblemExtras`].
pub fn problem_with(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    request_id: &str,
    extras: &ProblemExtras,
) -> Response {
    let body = keyroll_proto::Problem {
        type_uri: format!("https://keyroll.dev/problems/{code}"),
        title: title.into(),
        status: status.as_u16(),
        detail: detail.into(),
        code: code.into(),
        kid: extras.kid.clone(),
        fingerprint: extras.fingerprint.clone(),
        consumer: extras.consumer.clone(),
        version: extras.version.clone(),
        request_id: request_id.into(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Body::from(json));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut response = problem(
            self.status,
            self.code,
            title,
            &self.detail,
            None,
            &current_request_id(),
        );
        if let Some(challenge) = self.www_authenticate
            && let Ok(v) = HeaderValue::from_str(&challenge)
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /openapi.json",
    )
}

/// A JSON body with a precise 4xx on every kind of bad input, and the SHA-256 of its canonical
/// JSON (for `Idempotency-Key` checks).
#[derive(Debug)]
pub struct ApiJson<T> {
    /// The parsed body.
    pub value: T,
    /// SHA-256 of the body as canonical JSON (sorted keys, no whitespace).
    pub body_hash: [u8; 32],
}

/// `an array`, `a string`, … for error messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {e}"))
            }
        })?;
        let body: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let raw: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        // Every request body of the API is an object. serde would also fill a struct from an
        // array by position (`[null, null]` read as "clear both fields"), which no client means.
        if !raw.is_object() {
            return Err(ApiError::bad_request(format!(
                "invalid JSON body: expected an object, got {}",
                json_kind(&raw)
            )));
        }
        // The fingerprint of canonical JSON, so whitespace and field order do not make a retry
        // a different request.
        let body_hash = Sha256::digest(canonical_json(&raw).as_bytes()).into();
        let value = serde_json::from_value(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        Ok(ApiJson { value, body_hash })
    }
}

/// JSON text with object keys sorted at every level and no insignificant whitespace (sorted
/// explicitly: serde_json keeps insertion order when any crate enables `preserve_order`).
fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// Path parameters with a problem+json rejection.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))
    }
}
