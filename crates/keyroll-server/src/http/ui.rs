//! The dashboard's routes: `/ui/` pages (one shell; the script draws the page the path names),
//! `/ui/assets/<version>/…`, the login form (`POST /ui/login`: an admin token exchanged for a
//! session cookie; the token travels only in the form body) and `POST /ui/logout`.
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (no inline script or style),
//! `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and `Referrer-Policy: same-origin` (with `no-referrer` Chromium sends `Origin: null` on form posts, which the origin check must refuse)
//! ([`security_headers`]). Pages are `no-store`; versioned assets are immutable.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::http::auth::{Admin, RequestInfo, check_token};
use crate::state::AppState;
use crate::ui::assets;
use crate::ui::session::{self, ServedOverTls};

/// The Content-Security-Policy of every `/ui` answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Adds the security headers to every answer of the `/ui` routes.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn html(status: StatusCode, text: String) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn redirect(to: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let error = match error {
        Some(e) => format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            assets::escape_html(e)
        ),
        None => String::new(),
    };
    html(
        status,
        assets::LOGIN
            .replace("{{v}}", assets::version())
            .replace("{{error}}", &error),
    )
}

/// Whether cookies answered to this request get `Secure`: over TLS (the listener's
/// [`ServedOverTls`]), `X-Forwarded-Proto: https` from a trusted proxy, or `ui.secure_cookie`.
fn secure(parts: &Parts, state: &AppState) -> bool {
    if state.config.ui.secure_cookie || parts.extensions.get::<ServedOverTls>().is_some() {
        return true;
    }
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let trusted =
        peer.is_some_and(|ip| state.config.trusted_proxies.iter().any(|n| n.contains(ip)));
    trusted
        && parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `GET /ui`: to `/ui/`.
pub async fn ui_root() -> Response {
    redirect("/ui/")
}

/// `GET /ui/` and every page path: the shell, or the login page without a valid session.
pub async fn page(admin: Result<Admin, ApiError>) -> Response {
    match admin {
        Ok(_) => html(
            StatusCode::OK,
            assets::SHELL.replace("{{v}}", assets::version()),
        ),
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => e.into_response(),
        Err(_) => redirect("/ui/login"),
    }
}

/// `GET /ui/login`.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// `POST /ui/login` (form `token=kra_…`): a session for the token, or the form again with why.
pub async fn login(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let request = RequestInfo::from_parts(&parts, &state);
    // A login from another site would log the browser in as someone else's token.
    if let Err(r) = session::check_origin(&parts.headers) {
        return login_page(StatusCode::FORBIDDEN, Some(&r.to_string()));
    }
    let Ok(bytes) = axum::body::to_bytes(body, 8 * 1024).await else {
        return login_page(StatusCode::BAD_REQUEST, Some("the form could not be read"));
    };
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if token.trim().is_empty() {
        return login_page(StatusCode::BAD_REQUEST, Some("enter an admin token"));
    }
    let admin = match check_token(&state, request, &token).await {
        Ok(a) => a,
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return e.into_response(),
        Err(e) => return login_page(StatusCode::UNAUTHORIZED, Some(&e.detail)),
    };
    let now = state.clock.now();
    let settings = state.config.ui;
    let new = match session::new_session(&state.randomness, &admin.token_id, now, &settings) {
        Ok(n) => n,
        Err(e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "entropy_unavailable", e.0)
                .into_response();
        }
    };
    // Ended sessions are deleted here rather than by a job of their own: logins are rare.
    let idle_before = now.saturating_sub(settings.idle_timeout);
    if let Err(e) = state.store.prune_ui_sessions(now, idle_before).await {
        return ApiError::from(e).into_response();
    }
    if let Err(e) = state.store.create_ui_session(&new.record).await {
        return ApiError::from(e).into_response();
    }
    tracing::info!(
        event = "ui.login",
        token_id = admin.token_id.as_str(),
        request_id = admin.request.request_id.as_str(),
        remote_addr = admin.request.remote_addr().as_deref(),
        "dashboard login"
    );
    let secure = secure(&parts, &state);
    let mut r = redirect("/ui/");
    for c in session::set_cookies(&new, secure, settings.session_lifetime) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `POST /ui/logout`: ends the session (on every node: it is deleted from the store) and clears
/// the cookies. Needs the session and its CSRF token (header, or the form's `csrf` field).
pub async fn logout(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 8 * 1024)
        .await
        .unwrap_or_else(|_| Bytes::new());
    // A plain form cannot set a header: its `csrf` field stands in for it.
    if !parts.headers.contains_key(session::CSRF_HEADER)
        && let Some((_, v)) = form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf")
        && let Ok(v) = HeaderValue::from_str(&v)
    {
        parts.headers.insert(session::CSRF_HEADER, v);
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return ApiError::bad_request(
            "logout ends a dashboard session; send its cookie, not a token",
        )
        .into_response();
    }
    let admin = match Admin::from_request_parts(&mut parts, &state).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let Some(id) = session::cookie(&parts.headers, session::SESSION_COOKIE) else {
        return ApiError::bad_request("no session cookie").into_response();
    };
    if let Err(e) = state.store.delete_ui_session(&session::hash(id)).await {
        return ApiError::from(e).into_response();
    }
    tracing::info!(
        event = "ui.logout",
        token_id = admin.token_id.as_str(),
        request_id = admin.request.request_id.as_str(),
        "dashboard logout"
    );
    let mut r = redirect("/ui/login");
    for c in session::clear_cookies(secure(&parts, &state)) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `GET /ui/api/session`: who the session acts as (for the page header).
pub async fn whoami(admin: Admin) -> Response {
    axum::Json(serde_json::json!({
        "token_id": admin.token_id,
        "scopes": admin.scopes,
    }))
    .into_response()
}

/// `GET /ui/assets/{version}/{name}`.
pub async fn asset(
    crate::http::ApiPath((version, name)): crate::http::ApiPath<(String, String)>,
) -> Response {
    let Some(a) = assets::find(&name) else {
        return ApiError::not_found(format!("no asset {name}")).into_response();
    };
    let mut r = Response::new(Body::from(a.body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // An old version's URL still answers (a page loaded before an upgrade), but is not cached.
    let cache = if version == assets::version() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}
