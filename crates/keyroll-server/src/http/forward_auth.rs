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
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::response::Response;

use crate::client_addr::{TrustedNet, client_addr};
use crate::config::Explain;
use crate::decided::{DecisionFacts, DecisionRecord, Edge, Origin, RequiredEnvironment};
use crate::http::auth::Admin;
use crate::http::decision_http;
use crate::http::{ApiError, ApiJson, ProblemExtras, current_request_id, problem_with};
use crate::request_id::EdgeRequestId;
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
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_CLIENT_ID: HeaderName = HeaderName::from_static("x-client-id");
const X_KEYROLL_SCOPES: HeaderName = HeaderName::from_static("x-keyroll-scopes");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_OPERATOR_CHECK: HeaderName = HeaderName::from_static(OPERATOR_CHECK_HEADER);

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
fn text_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, String> {
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
    let scopes = match text_header(headers, &X_KEYROLL_SCOPES) {
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
    match text_header(headers, &X_ENVIRONMENT) {
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
    match text_header(headers, &X_OPERATOR_CHECK) {
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
        if headers.get(&X_API_KEY).is_none() {
            return Presented::Unreadable {
                reason: "the Authorization header does not use the Bearer scheme",
                raw,
            };
        }
    }
    match headers.get(&X_API_KEY) {
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

/// A header as text, if present and visible ASCII. Names are constants: no parsing per request.
fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The original request behind a forward-auth subrequest, as far as the gateway says: the
/// method from `X-Forwarded-Method` / `X-Original-Method`, else ours; the URI from
/// `X-Forwarded-Uri` / `X-Original-URI`, else the path below the endpoint. Borrowed.
fn origin<'r>(headers: &'r HeaderMap, method: &'r Method, uri: &'r Uri) -> Origin<'r> {
    let method = header_text(headers, &X_FORWARDED_METHOD)
        .or_else(|| header_text(headers, &X_ORIGINAL_METHOD))
        .unwrap_or(method.as_str());
    let uri = header_text(headers, &X_FORWARDED_URI)
        .or_else(|| header_text(headers, &X_ORIGINAL_URI))
        .unwrap_or_else(|| {
            let path = uri.path();
            match path.strip_prefix("/v1/forward-auth") {
                Some("") => "/",
                Some(rest) => rest,
                None => path,
            }
        });
    Origin { method, uri }
}

/// What the edge knows of an HTTP request, built once: the client after the one trusted-proxy
/// rule, the user agent and client id. The latency is filled in after the verification.
#[allow(clippy::too_many_arguments)]
fn http_facts<'r>(
    edge: Edge,
    request_id: &'r str,
    headers: &'r HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &[TrustedNet],
    origin: Option<Origin<'r>>,
    required_environment: Option<RequiredEnvironment<'r>>,
    recording: Recording,
    now: keyroll_core::Timestamp,
) -> DecisionFacts<'r> {
    DecisionFacts {
        edge,
        request_id,
        peer,
        client: client_addr(peer, headers, trusted),
        origin,
        user_agent: header_text(headers, &header::USER_AGENT).unwrap_or(""),
        client_id: header_text(headers, &X_CLIENT_ID),
        required_environment,
        recording,
        now,
        latency_us: 0,
    }
}

/// The environment a request must belong to: the one it names (when valid), else the server's.
fn required<'a>(named: Option<&'a str>, state: &'a AppState) -> Option<RequiredEnvironment<'a>> {
    named.and_then(RequiredEnvironment::new).or_else(|| {
        state
            .config
            .verify_environment
            .as_ref()
            .map(RequiredEnvironment::of)
    })
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Hands a decision to everything that follows it, one way: the observer (log line, metrics,
/// history) and, when it counts as use, usage recording. Every edge calls this once, then
/// renders its answer from the same record.
pub fn hand_off(state: &AppState, record: &DecisionRecord<'_>) {
    state
        .observer
        .decision(record, state.config.log_allowed_at_info);
    if record.counts_as_use() {
        state.usage.record(record);
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
    let request_id = EdgeRequestId::of(headers);
    let (p, judgeable) = gateway_params(headers, uri);
    // Validated by `gateway_params` when the request is judgeable; an invalid one is dropped for
    // the log and metrics label of a `malformed_request`.
    let environment = required(p.environment.as_deref(), &state);
    let mut facts = http_facts(
        Edge::ForwardAuth,
        request_id.as_str(),
        headers,
        peer,
        &state.config.trusted_proxies,
        None,
        environment,
        p.recording,
        now,
    );
    let v = match judgeable {
        Ok(()) => verify(
            &state.index,
            presented(headers),
            environment.map(|e| e.as_str()),
            &p.scopes,
            p.recording,
            now,
        ),
        Err(reason) => Verification::bad_request(reason),
    };
    facts.latency_us = micros_since(started);
    // Only the log line reads the original request: an allowed decision that is not logged (the
    // common case) skips its four header lookups.
    if crate::logging::decision_enabled(v.code, state.config.log_allowed_at_info) {
        facts.origin = Some(origin(headers, method, uri));
    }
    let record = DecisionRecord {
        facts: &facts,
        verification: &v,
    };
    hand_off(&state, &record);
    respond(&record, &request_id, state.config.explain, p.bodyless)
}

/// Versions below this get a static `X-Keyroll-Version` value (no formatting per request).
const STATIC_VERSIONS: u32 = 128;

/// `v<n>` as a header value from a table made once, for the common small versions.
fn version_value(n: u32) -> Option<HeaderValue> {
    static TABLE: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..STATIC_VERSIONS)
            .map(|i| {
                // Leaked once (a few hundred bytes): a static value is cloned without a copy
                // or a reference count.
                let text: &'static str = Box::leak(format!("v{i}").into_boxed_str());
                HeaderValue::from_static(text)
            })
            .collect()
    });
    table.get(usize::try_from(n).ok()?).cloned()
}

/// The `X-Keyroll-Consumer` and `-Environment` values of the consumer this worker thread
/// answered for last, made once and then shared (traffic comes in runs of the same consumer);
/// another consumer replaces them.
fn identity_values(
    reference: &str,
    environment: &str,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    type Cached = Option<(Box<str>, Option<HeaderValue>, Option<HeaderValue>)>;
    thread_local! {
        static LAST: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            // The environment is part of the reference (`ENV/NAME`): one comparison covers both.
            Some((r, c, e)) if **r == *reference => (c.clone(), e.clone()),
            _ => {
                let c = HeaderValue::from_str(reference).ok();
                let e = HeaderValue::from_str(environment).ok();
                *last = Some((reference.into(), c.clone(), e.clone()));
                (c, e)
            }
        }
    })
}

/// Builds the forward-auth answer for a verification.
fn respond(
    record: &DecisionRecord<'_>,
    id: &EdgeRequestId<'_>,
    explain: Explain,
    bodyless: bool,
) -> Response {
    let (v, request_id) = (record.verification, record.facts.request_id);
    let code = v.code;
    if code.allowed() {
        // The allowed answer is the hot path: header values are shared or static where they
        // can be, not formatted and copied per request, and the map is sized once.
        let mut response = Response::new(Body::empty());
        *response.headers_mut() = HeaderMap::with_capacity(8);
        let h = response.headers_mut();
        if let Some(c) = v.consumer() {
            let (consumer, environment) = identity_values(c.reference(), c.environment());
            if let Some(value) = consumer {
                h.insert(X_CONSUMER, value);
            }
            if let Some(value) = environment {
                h.insert(X_ENVIRONMENT, value);
            }
        }
        if let Some(kid) = v.kid {
            insert(h, X_KID, kid.as_str());
        }
        if let Some(n) = v.version() {
            match version_value(n.0) {
                Some(value) => {
                    h.insert(X_VERSION, value);
                }
                None => insert(h, X_VERSION, &n.to_string()),
            }
        }
        h.insert(X_CODE, HeaderValue::from_static(code.as_str()));
        if let Some(value) = id.header_value() {
            h.insert(X_REQUEST_ID, value);
        }
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
    let status = decision_http::status(code);
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
            decision_http::title(code),
            &detail,
            request_id,
            &rejection_extras(v, explain),
        )
    };
    let h = response.headers_mut();
    let challenge = match decision_http::bearer_error(code) {
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
    let environment = required(req.environment.as_deref(), &state);
    let header_check = match text_header(&headers, &X_OPERATOR_CHECK) {
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
    // No original request behind a JSON body: no method or URI is made up for it.
    let mut facts = http_facts(
        Edge::VerifyApi,
        &request_id,
        &headers,
        Some(peer),
        &state.config.trusted_proxies,
        None,
        environment,
        recording,
        now,
    );
    let v = verify(
        &state.index,
        presented,
        environment.map(|e| e.as_str()),
        &req.scopes,
        recording,
        now,
    );
    facts.latency_us = micros_since(started);
    hand_off(
        &state,
        &DecisionRecord {
            facts: &facts,
            verification: &v,
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

    fn request_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn facts_name_the_client_once_by_the_trusted_proxy_rule() {
        use crate::client_addr::ClientAddr;
        let h = request_headers(&[
            ("x-forwarded-for", "203.0.113.9, 198.51.100.7"),
            ("user-agent", "curl/8"),
            ("x-client-id", "billing"),
        ]);
        let trusted = [TrustedNet::parse("10.0.0.0/8").unwrap()];
        let now = keyroll_core::Timestamp::EPOCH;
        let from_proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let f = http_facts(
            Edge::ForwardAuth,
            "rq_1",
            &h,
            Some(from_proxy),
            &trusted,
            None,
            None,
            Recording::CountsAsUse,
            now,
        );
        assert_eq!(
            f.client,
            Some(ClientAddr::Forwarded("198.51.100.7".parse().unwrap()))
        );
        assert_eq!(f.peer, Some(from_proxy));
        assert_eq!((f.user_agent, f.client_id), ("curl/8", Some("billing")));
        // The same headers from a peer that is not a trusted proxy name the peer.
        let direct: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let f = http_facts(
            Edge::ForwardAuth,
            "rq_2",
            &h,
            Some(direct),
            &trusted,
            None,
            None,
            Recording::CountsAsUse,
            now,
        );
        assert_eq!(f.client, Some(ClientAddr::Peer(direct)));
    }

    #[test]
    fn verify_api_facts_have_no_made_up_origin() {
        let h = request_headers(&[("x-forwarded-uri", "/from/a/header")]);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let f = http_facts(
            Edge::VerifyApi,
            "rq_1",
            &h,
            Some(peer),
            &[],
            None,
            RequiredEnvironment::new("prod"),
            Recording::OperatorCheck,
            keyroll_core::Timestamp::EPOCH,
        );
        assert!(f.origin.is_none());
        assert_eq!(f.required_environment.map(|e| e.as_str()), Some("prod"));
        assert_eq!((f.user_agent, f.client_id), ("", None));
    }

    #[test]
    fn forward_auth_origin_comes_from_the_gateway_else_the_path_below_the_endpoint() {
        let (get, put) = (Method::GET, Method::PUT);
        let below: Uri = "/v1/forward-auth/invoices/7?x=1".parse().unwrap();
        let bare: Uri = "/v1/forward-auth".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            origin(&none, &get, &below),
            Origin {
                method: "GET",
                uri: "/invoices/7"
            }
        );
        assert_eq!(
            origin(&none, &get, &bare),
            Origin {
                method: "GET",
                uri: "/"
            }
        );
        let nginx = request_headers(&[("x-original-method", "DELETE"), ("x-original-uri", "/a?b")]);
        assert_eq!(
            origin(&nginx, &get, &bare),
            Origin {
                method: "DELETE",
                uri: "/a?b"
            }
        );
        let traefik = request_headers(&[
            ("x-forwarded-method", "POST"),
            ("x-original-method", "DELETE"),
            ("x-forwarded-uri", "/t"),
        ]);
        assert_eq!(
            origin(&traefik, &put, &below),
            Origin {
                method: "POST",
                uri: "/t"
            }
        );
    }
}
