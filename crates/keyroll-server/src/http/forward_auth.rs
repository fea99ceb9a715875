//! `/v1/forward-auth` (nginx `auth_request`, Traefik ForwardAuth, Envoy `ext_authz`) and
//! `POST /v1/verify`: the verification endpoints.
//!
//! Forward-auth answers 200 with no body (nginx closes the upstream connection after an auth
//! answer with a body: SPEC §12 measured 8× fewer requests per second), and puts the reason of a
//! rejection in headers as well as the body, because nginx drops the body.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;

use crate::config::Explain;
use crate::decided::{self, DecisionContext};
use crate::http::auth::Admin;
use crate::http::{
    ApiError, ApiJson, ProblemExtras, current_request_id, problem_with, request_id_from,
};
use crate::state::AppState;
use keyroll_core::{http_date, rfc3339};
use keyroll_verify::verify::{Presented, Recording, Verification, verify};

const X_CONSUMER: HeaderName = HeaderName::from_static("x-keyroll-consumer");
const X_ENVIRONMENT: HeaderName = HeaderName::from_static("x-keyroll-environment");
const X_KID: HeaderName = HeaderName::from_static("x-keyroll-kid");
const X_VERSION: HeaderName = HeaderName::from_static("x-keyroll-version");
const X_CODE: HeaderName = HeaderName::from_static("x-keyroll-code");
const X_DETAIL: HeaderName = HeaderName::from_static("x-keyroll-detail");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FINGERPRINT: HeaderName = HeaderName::from_static("x-keyroll-fingerprint");

/// Header an operator's tool sends so that its check does not count as the consumer using the
/// key (SPEC §6): `keyroll verify` and monitoring probes must not keep an old version "in use".
pub const OPERATOR_CHECK_HEADER: &str = "x-keyroll-operator-check";

/// The most headers a forward-auth request may carry. Gateways forward the client's headers;
/// beyond this the request is answered `malformed_request` rather than judged.
pub const MAX_HEADERS: usize = 100;

/// The longest URI (path and query) a forward-auth request may carry.
pub const MAX_URI: usize = 8 * 1024;

/// Forward-auth parameters from the query string and the gateway's headers. The environment
/// is borrowed from the header (the common case) rather than copied: this is the hot path.
#[derive(Debug)]
struct Params<'a> {
    environment: Option<Cow<'a, str>>,
    scopes: Vec<String>,
    bodyless: bool,
    recording: Recording,
}

fn params(uri: &Uri) -> Params<'_> {
    let mut p = Params {
        environment: None,
        scopes: Vec::new(),
        bodyless: false,
        recording: Recording::CountsAsUse,
    };
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "environment" => p.environment = Some(v),
                "scope" => p.scopes.push(v.into_owned()),
                "body" => p.bodyless = v == "none",
                _ => {}
            }
        }
    }
    p
}

/// A header's text; `Err` names it when it is there but not visible ASCII (a gateway header
/// that cannot be read must not be treated as absent: that would widen the check).
fn text_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("the {name} header is sent more than once"));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| format!("the {name} header is not visible ASCII text"))
}

fn operator_check(value: &str) -> Result<Recording, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(Recording::OperatorCheck),
        "0" | "false" | "no" => Ok(Recording::CountsAsUse),
        _ => Err(format!(
            "the {OPERATOR_CHECK_HEADER} header must be true or false, not {:?}",
            value.chars().take(20).collect::<String>()
        )),
    }
}

/// Checks what the request itself carries, before any key is looked at. `Err` is the reason a
/// request cannot be judged: it is answered `malformed_request` (401, so that nginx
/// `auth_request`, which understands only 2xx/401/403, passes the reason on).
fn gateway_params<'h>(headers: &'h HeaderMap, uri: &'h Uri) -> (Params<'h>, Result<(), String>) {
    let mut p = params(uri);
    let fail = |p: Params<'h>, reason: String| (p, Err(reason));
    if headers.len() > MAX_HEADERS {
        let n = headers.len();
        return fail(
            p,
            format!(
                "the request has {n} headers; keyroll judges requests with at most {MAX_HEADERS}"
            ),
        );
    }
    let uri_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI {
        return fail(
            p,
            format!(
                "the request URI is {uri_len} bytes long; keyroll judges URIs of at most {MAX_URI}"
            ),
        );
    }
    let scopes = match text_header(headers, "x-keyroll-scopes") {
        Ok(s) => s,
        Err(reason) => return fail(p, reason),
    };
    if let Some(h) = scopes {
        p.scopes.extend(
            h.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    // The gateway's header wins over the query: Envoy appends the client's own query string to
    // the auth path, so a query parameter could come from the caller rather than the gateway.
    match text_header(headers, "x-keyroll-environment") {
        Ok(Some(e)) => p.environment = Some(Cow::Borrowed(e)),
        Ok(None) => {}
        Err(reason) => return fail(p, reason),
    }
    if let Some(e) = &p.environment
        && !keyroll_core::Environment::is_valid(e)
    {
        let shown: String = e.chars().take(40).collect();
        return fail(
            p,
            format!(
                "the required environment {shown:?} is not an environment name ([a-z][a-z0-9]{{0,15}})"
            ),
        );
    }
    match text_header(headers, OPERATOR_CHECK_HEADER) {
        Ok(Some(v)) => match operator_check(v) {
            Ok(r) => p.recording = r,
            Err(reason) => return fail(p, reason),
        },
        Ok(None) => {}
        Err(reason) => return fail(p, reason),
    }
    (p, Ok(()))
}

/// Finds the credential: `Authorization: Bearer` first, then `X-API-Key`.
fn presented(headers: &HeaderMap) -> Presented<'_> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let raw = value.as_bytes();
        if raw.len() > 7 && raw[..7].eq_ignore_ascii_case(b"bearer ") {
            return Presented::Key(raw[7..].trim_ascii());
        }
        if headers.get("x-api-key").is_none() {
            return Presented::Unreadable {
                reason: "the Authorization header does not use the Bearer scheme",
                raw,
            };
        }
    }
    match headers.get("x-api-key") {
        Some(v) => Presented::Key(v.as_bytes().trim_ascii()),
        None => Presented::Missing,
    }
}

/// Makes text safe for a header value and for an RFC 6750 quoted string.
fn header_safe(text: &str) -> String {
    text.chars()
        .take(400)
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// `/v1/forward-auth[/…]`, any method.
#[utoipa::path(
    get,
    path = "/v1/forward-auth",
    tag = "verification",
    params(
        ("environment" = Option<String>, Query, description = "environment the key must belong to, when the X-Keyroll-Environment header is absent (else the server default)"),
        ("scope" = Option<Vec<String>>, Query, description = "required scopes (also X-Keyroll-Scopes)"),
        ("body" = Option<String>, Query, description = "`none` for bodyless rejections"),
    ),
    responses(
        (status = 200, description = "allowed; X-Keyroll-Consumer, -Environment, -Kid, -Version, X-Request-Id headers, no body"),
        (status = 401, description = "rejected; X-Keyroll-Code and WWW-Authenticate say why", body = keyroll_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "insufficient scope", body = keyroll_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forward_auth(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // The whole request, not the `HeaderMap`/`Uri` extractors: those clone what they extract,
    // which showed up as a measurable share of this endpoint's cost.
    let started = Instant::now();
    let (headers, uri, method) = (request.headers(), request.uri(), request.method());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let now = state.clock.now();
    let request_id = request_id_from(headers);
    let client = crate::client_addr::client_addr(peer, headers, &state.config.trusted_proxies);
    let (p, judgeable) = gateway_params(headers, uri);
    // Validated by `gateway_params` when the request is judgeable; an invalid one is dropped for
    // the log and metrics label of a `malformed_request`.
    let environment = p
        .environment
        .as_deref()
        .filter(|e| keyroll_core::Environment::is_valid(e))
        .or_else(|| state.config.verify_environment.as_ref().map(|e| e.as_str()));
    let v = match judgeable {
        Ok(()) => verify(
            &state.index,
            presented(headers),
            environment,
            &p.scopes,
            p.recording,
            now,
        ),
        Err(reason) => Verification::bad_request(reason),
    };
    let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    decided::after(
        &state,
        &v,
        &DecisionContext {
            request_id: &request_id,
            peer,
            client,
            required_environment: environment,
            recording: p.recording,
            method,
            uri,
            headers,
            latency_us: latency,
            now,
        },
    );
    respond(&v, &request_id, state.config.explain, p.bodyless)
}

/// Builds the forward-auth answer for a verification.
fn respond(v: &Verification, request_id: &str, explain: Explain, bodyless: bool) -> Response {
    let code = v.code;
    if code.allowed() {
        let mut response = Response::new(Body::empty());
        let h = response.headers_mut();
        if let Some(c) = v.consumer() {
            insert(h, X_CONSUMER, c.reference());
            insert(h, X_ENVIRONMENT, c.environment());
        }
        if let Some(kid) = v.kid {
            insert(h, X_KID, kid.as_str());
        }
        if let Some(n) = v.version() {
            insert(h, X_VERSION, &n.to_string());
        }
        h.insert(X_CODE, HeaderValue::from_static(code.as_str()));
        insert(h, X_REQUEST_ID, request_id);
        if let Some(sunset) = v.sunset() {
            // RFC 9745: `Deprecation: @<unix seconds>`; RFC 8594: `Sunset: <HTTP-date>`.
            let since = v.deprecated_since().unwrap_or(sunset);
            insert(
                h,
                HeaderName::from_static("deprecation"),
                &format!("@{}", since.unix_millis().div_euclid(1000)),
            );
            insert(h, HeaderName::from_static("sunset"), &http_date(sunset));
        }
        return response;
    }
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let public = code.public_code();
    let detail = match explain {
        Explain::Full => v.caller_detail(),
        Explain::Code => format!("rejected: {public}"),
    };
    let safe = header_safe(&detail);
    let mut response = if bodyless {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = status;
        r
    } else {
        problem_with(
            status,
            public,
            code.title(),
            &detail,
            request_id,
            &rejection_extras(v, explain),
        )
    };
    let h = response.headers_mut();
    let challenge = match code.bearer_error() {
        Some(error) => {
            format!("Bearer realm=\"keyroll\", error=\"{error}\", error_description=\"{safe}\"")
        }
        None => "Bearer realm=\"keyroll\"".to_owned(),
    };
    insert(h, header::WWW_AUTHENTICATE, &challenge);
    h.insert(X_CODE, HeaderValue::from_static(public));
    insert(h, X_REQUEST_ID, request_id);
    if let Some(fp) = v.fingerprint {
        insert(h, X_FINGERPRINT, &fp.to_string());
    }
    if explain == Explain::Full {
        insert(h, X_DETAIL, &safe);
        if let Some(kid) = v.kid {
            insert(h, X_KID, kid.as_str());
        }
        // Once the secret is proven the caller holds the issued key: naming its consumer and
        // version tells it nothing new and tells its operator which key to replace.
        if v.caller_may_see_consumer() {
            if let Some(c) = v.consumer() {
                insert(h, X_CONSUMER, c.reference());
                insert(h, X_ENVIRONMENT, c.environment());
            }
            if let Some(n) = v.version() {
                insert(h, X_VERSION, &n.to_string());
            }
        }
    }
    response
}

/// What a rejection's body says besides the code: the fingerprint of what was presented
/// always (the caller can compute it too), the kid, consumer and version only with
/// `explain = "full"`, and the owner only once the secret is proven.
fn rejection_extras(v: &Verification, explain: Explain) -> ProblemExtras {
    let mut extras = ProblemExtras {
        fingerprint: v.fingerprint.map(|f| f.to_string()),
        ..ProblemExtras::default()
    };
    if explain == Explain::Full {
        extras.kid = v.kid.map(|k| k.to_string());
        if v.caller_may_see_consumer() {
            extras.consumer = v.consumer().map(|c| c.reference().to_owned());
            extras.version = v.version().map(|n| n.to_string());
        }
    }
    extras
}

/// `POST /v1/verify`: the decision in a JSON body, for SDKs. Needs the `verify` admin scope.
#[utoipa::path(
    post,
    path = "/v1/verify",
    tag = "verification",
    request_body = keyroll_proto::VerifyRequest,
    responses(
        (status = 200, description = "the decision (allowed or not)", body = keyroll_proto::VerifyResponse),
        (status = 400, description = "bad request", body = keyroll_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "bad admin token", body = keyroll_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = ["verify"]))
)]
pub async fn verify_json(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admin: Admin,
    headers: HeaderMap,
    body: ApiJson<keyroll_proto::VerifyRequest>,
) -> Result<axum::Json<keyroll_proto::VerifyResponse>, ApiError> {
    admin.require("verify")?;
    let started = Instant::now();
    let now = state.clock.now();
    let request_id = current_request_id();
    let req = body.value;
    if let Some(e) = req.environment.as_deref()
        && !keyroll_core::Environment::is_valid(e)
    {
        let shown: String = e.chars().take(40).collect();
        return Err(ApiError::bad_request(format!(
            "environment {shown:?} is not an environment name ([a-z][a-z0-9]{{0,15}})"
        )));
    }
    let environment = req
        .environment
        .as_deref()
        .or_else(|| state.config.verify_environment.as_ref().map(|e| e.as_str()));
    let header_check = match text_header(&headers, OPERATOR_CHECK_HEADER) {
        Ok(Some(v)) => Some(operator_check(v).map_err(ApiError::bad_request)?),
        Ok(None) => None,
        Err(reason) => return Err(ApiError::bad_request(reason)),
    };
    let recording = match (req.operator_check, header_check) {
        (Some(true), _) | (_, Some(Recording::OperatorCheck)) => Recording::OperatorCheck,
        _ => Recording::CountsAsUse,
    };
    let presented = if req.key.is_empty() {
        Presented::Missing
    } else {
        Presented::Key(req.key.as_bytes())
    };
    let v = verify(
        &state.index,
        presented,
        environment,
        &req.scopes,
        recording,
        now,
    );
    let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    decided::after(
        &state,
        &v,
        &DecisionContext {
            request_id: &request_id,
            peer: Some(peer),
            client: crate::client_addr::client_addr(
                Some(peer),
                &headers,
                &state.config.trusted_proxies,
            ),
            required_environment: environment,
            recording,
            method: &Method::POST,
            uri: &Uri::from_static("/v1/verify"),
            headers: &headers,
            latency_us: latency,
            now,
        },
    );
    let show_owner = v.caller_may_see_consumer();
    let consumer = if show_owner { v.consumer() } else { None };
    let detail = match state.config.explain {
        Explain::Full => v.caller_detail(),
        Explain::Code => format!(
            "{}: {}",
            if v.code.allowed() {
                "allowed"
            } else {
                "rejected"
            },
            v.code.public_code()
        ),
    };
    Ok(axum::Json(keyroll_proto::VerifyResponse {
        allowed: v.code.allowed(),
        code: v.code.public_code().into(),
        detail,
        kid: v.kid.map(|k| k.to_string()),
        consumer: consumer.map(|c| c.reference().to_owned()),
        environment: consumer.map(|c| c.environment().to_owned()),
        version: if show_owner {
            v.version().map(|n| n.0)
        } else {
            None
        },
        state: v.state().map(|s| s.as_str().into()),
        sunset: v.sunset().map(rfc3339),
        fingerprint: v.fingerprint.map(|f| f.to_string()),
        request_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_strips_quotes_and_controls() {
        assert_eq!(header_safe("a \"b\" \\ c\n\u{e9}"), "a 'b' / c??");
    }

    #[test]
    fn credential_sources() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h), Presented::Missing));
        h.insert("x-api-key", HeaderValue::from_static("kr_x"));
        assert!(matches!(presented(&h), Presented::Key(b"kr_x")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  kr_y "),
        );
        assert!(matches!(presented(&h), Presented::Key(b"kr_y")));
        h.remove("x-api-key");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(presented(&h), Presented::Unreadable { .. }));
    }
}
