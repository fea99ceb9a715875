//! `/v1/forward-auth-cert[/…]`, any method: certificate forward-auth. A proxy that terminated
//! mTLS (nginx `auth_request` with `proxy_set_header X-Client-Cert $ssl_client_escaped_cert`)
//! forwards the client's certificate; keyroll verifies it with keyroll-ca against the CA's
//! current trust store at the server clock's `now` and answers 200 with the identity, 401 with
//! the `cert_…` code, or 403 `cert_wrong_identity`, like key forward-auth (reason in headers as
//! well as the body, because nginx drops the body).
//!
//! **Who may forward a certificate.** A certificate is public: anyone can put one in a header.
//! It proves something only when the proxy that sends it checked, in its own TLS handshake, that
//! the client holds the certificate's private key. So `X-Client-Cert` is honoured only from a
//! peer in `usage.trusted_proxies` — the same rule, and the same list, that decides whose
//! `X-Forwarded-For` is believed (its default is loopback, where a proxy beside keyroll runs).
//! From any other peer the header is ignored and the answer is `cert_missing`, with a detail
//! naming the untrusted peer.
//!
//! Nothing a request carries can make this endpoint fail with a 5xx: every header content is
//! either a certificate decision or a `cert_malformed` one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use keyroll_ca::{CertCode, CertDecision, Fingerprint, IdentityPolicy, SpiffeId, Usage};

use crate::client_addr::{ClientAddr, client_addr};
use crate::config::Explain;
use crate::decided::{CertDecisionRecord, CertEdge};
use crate::http::{ProblemExtras, problem_with};
use crate::request_id::EdgeRequestId;
use crate::state::AppState;

/// The header the proxy forwards the client certificate in.
pub const CLIENT_CERT_HEADER: &str = "x-client-cert";

const X_CLIENT_CERT: HeaderName = HeaderName::from_static(CLIENT_CERT_HEADER);
const X_IDENTITY_POLICY: HeaderName = HeaderName::from_static("x-keyroll-identity-policy");
const X_ENVIRONMENT: HeaderName = HeaderName::from_static("x-keyroll-environment");
const X_IDENTITY: HeaderName = HeaderName::from_static("x-keyroll-identity");
const X_SPIFFE_ID: HeaderName = HeaderName::from_static("x-keyroll-spiffe-id");
const X_SERIAL: HeaderName = HeaderName::from_static("x-keyroll-serial");
const X_REASON: HeaderName = HeaderName::from_static("x-keyroll-reason");
const X_CODE: HeaderName = HeaderName::from_static("x-keyroll-code");
const X_DETAIL: HeaderName = HeaderName::from_static("x-keyroll-detail");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest forwarded certificate header accepted: a leaf and an intermediate, URL-encoded,
/// are about 3 KB; this leaves room for longer chains and RSA keys.
pub const MAX_CERT_HEADER: usize = 32 * 1024;

/// The most identity patterns a request may name.
pub const MAX_PATTERNS: usize = 32;

/// The identity policy a request asks for, as the gateway's config says it.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// Nothing named: the whole trust domain.
    Any,
    /// `ENV/SERVICE` patterns (an environment becomes `ENV/*`).
    Patterns(Vec<String>),
}

/// A header's text when present once and visible ASCII; `Err` says what is wrong with it.
fn one_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, String> {
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

fn split_patterns(text: &str) -> impl Iterator<Item = &str> {
    text.split([' ', ',']).filter(|s| !s.is_empty())
}

/// The identity policy from `X-Keyroll-Identity-Policy` (patterns, comma or space separated) or
/// `X-Keyroll-Environment`, else `?identity=` / `?environment=`. Headers win over the query:
/// Envoy appends the client's own query string to the auth path, so a query parameter could
/// come from the caller rather than the gateway.
fn asked_policy(headers: &HeaderMap, uri: &Uri) -> Result<Asked, String> {
    let mut patterns: Vec<String> = Vec::new();
    if let Some(text) = one_header(headers, &X_IDENTITY_POLICY)? {
        patterns.extend(split_patterns(text).map(str::to_owned));
    }
    if let Some(env) = one_header(headers, &X_ENVIRONMENT)? {
        patterns.push(format!("{}/*", env.trim()));
    }
    if patterns.is_empty()
        && let Some(q) = uri.query()
    {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "identity" => patterns.extend(split_patterns(&v).map(str::to_owned)),
                "environment" => patterns.push(format!("{}/*", v.trim())),
                _ => {}
            }
        }
    }
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "the identity policy has {} patterns; at most {MAX_PATTERNS} are accepted",
            patterns.len()
        ));
    }
    Ok(if patterns.is_empty() {
        Asked::Any
    } else {
        Asked::Patterns(patterns)
    })
}

/// Percent-decoding as nginx's `$ssl_client_escaped_cert` needs it: `%XX` only (a `+` is a `+`:
/// base64 uses it, and nginx escapes it anyway).
fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) => out.push(byte),
                None => {
                    return Err(format!(
                        "the {CLIENT_CERT_HEADER} header has a broken %-escape at byte {i}"
                    ));
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A decision that is not the verifier's (nothing presented, an unreadable header, no CA).
fn decision_without_certificate(
    code: CertCode,
    detail: String,
    presented: Option<&[u8]>,
) -> CertDecision {
    CertDecision {
        code,
        detail,
        serial: None,
        identity: None,
        issuer: None,
        not_before: None,
        not_after: None,
        anchor: None,
        fingerprint: presented.map(Fingerprint::of),
    }
}

/// Judges what the request carries: the forwarding peer, the header, the policy, the chain.
fn judge(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    peer: Option<SocketAddr>,
) -> CertDecision {
    let now = state.clock.now();
    let missing = || {
        decision_without_certificate(
            CertCode::CertMissing,
            format!(
                "no client certificate was forwarded (the {CLIENT_CERT_HEADER} header is absent or empty)"
            ),
            None,
        )
    };
    if !headers.contains_key(&X_CLIENT_CERT) {
        return missing();
    }
    // Who sent it comes before what it says: from an untrusted peer the header is not read.
    let trusted = peer.is_some_and(|p| {
        state
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(p.ip()))
    });
    if !trusted {
        let from = peer.map_or_else(|| "an unknown peer".to_owned(), |p| p.ip().to_string());
        return decision_without_certificate(
            CertCode::CertMissing,
            format!(
                "the {CLIENT_CERT_HEADER} header came from {from}, which is not in usage.trusted_proxies, so it was ignored: a forwarded certificate counts only from a proxy that verified the TLS handshake"
            ),
            None,
        );
    }
    let raw = match one_header(headers, &X_CLIENT_CERT) {
        Ok(Some(v)) if !v.trim().is_empty() => v.trim(),
        Ok(_) => return missing(),
        Err(reason) => {
            return decision_without_certificate(CertCode::CertMalformed, reason, None);
        }
    };
    if raw.len() > MAX_CERT_HEADER {
        return decision_without_certificate(
            CertCode::CertMalformed,
            format!(
                "the {CLIENT_CERT_HEADER} header is {} bytes long; at most {MAX_CERT_HEADER} are accepted",
                raw.len()
            ),
            Some(raw.as_bytes()),
        );
    }
    let bytes = match percent_decode(raw) {
        Ok(b) => b,
        Err(reason) => {
            return decision_without_certificate(
                CertCode::CertMalformed,
                reason,
                Some(raw.as_bytes()),
            );
        }
    };
    let (Some(trust), Some(td)) = (state.ca.current(), state.ca.trust_domain()) else {
        return decision_without_certificate(
            CertCode::CertUnknownIssuer,
            "keyroll has no CA yet (run `keyroll ca init`), so no certificate chains to a trusted anchor".to_owned(),
            Some(&bytes),
        );
    };
    let (policy, bad_policy) = match asked_policy(headers, uri) {
        Ok(Asked::Any) => (IdentityPolicy::any(td), None),
        Ok(Asked::Patterns(p)) => match IdentityPolicy::new(td.clone(), &p) {
            Ok(policy) => (policy, None),
            Err(e) => (
                IdentityPolicy::any(td),
                Some(format!(
                    "the gateway's identity policy is not valid ({e}), so no identity is allowed"
                )),
            ),
        },
        Err(reason) => (
            IdentityPolicy::any(td),
            Some(format!("{reason}, so no identity is allowed")),
        ),
    };
    let mut d = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        keyroll_ca::verify_pem_chain(&trust, &policy, &bytes, Usage::Client, now)
    } else {
        // Traefik and HAProxy forward base64 DER without PEM lines.
        match base64::engine::general_purpose::STANDARD.decode(bytes.trim_ascii()) {
            Ok(der) => keyroll_ca::verify(&trust, &policy, &der, &[], Usage::Client, now),
            Err(_) => decision_without_certificate(
                CertCode::CertMalformed,
                format!(
                    "the {CLIENT_CERT_HEADER} header is neither a URL-encoded PEM certificate nor base64 DER"
                ),
                Some(&bytes),
            ),
        }
    };
    // A policy that does not parse allows nobody; the certificate's own faults come first.
    if let Some(reason) = bad_policy
        && d.allowed()
    {
        d.code = CertCode::CertWrongIdentity;
        d.detail = reason;
    }
    d
}

/// The status of a certificate decision: 200 valid, 403 wrong identity, else 401.
pub fn status(code: CertCode) -> StatusCode {
    match code {
        CertCode::Valid => StatusCode::OK,
        CertCode::CertWrongIdentity => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// A short title for problem+json.
fn title(code: CertCode) -> &'static str {
    match code {
        CertCode::Valid => "Valid certificate",
        CertCode::CertMissing => "Missing client certificate",
        CertCode::CertExpired => "Certificate expired",
        CertCode::CertNotYetValid => "Certificate not yet valid",
        CertCode::CertUnknownIssuer => "Unknown certificate issuer",
        CertCode::CertRevoked => "Certificate revoked",
        CertCode::CertRevocationUnknown => "Certificate revocation unknown",
        CertCode::CertBadSignature => "Bad certificate signature",
        CertCode::CertWrongUsage => "Certificate not allowed for this use",
        CertCode::CertWrongIdentity => "Identity not allowed",
        CertCode::CertMalformed => "Malformed certificate",
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Makes text safe for a header value and for a JSON string a gateway builds from it (the
/// shipped nginx config puts `X-Keyroll-Detail` into a problem body as it is).
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

/// `/v1/forward-auth-cert[/…]`, any method.
#[utoipa::path(
    get,
    path = "/v1/forward-auth-cert",
    tag = "verification",
    params(
        ("X-Keyroll-Identity-Policy" = Option<String>, Header, description = "allowed identities, ENV/SERVICE patterns (`prod/*`), comma separated"),
        ("X-Keyroll-Environment" = Option<String>, Header, description = "allowed environment (the same as the pattern ENV/*)"),
        ("identity" = Option<Vec<String>>, Query, description = "allowed identities when no policy header is sent"),
        ("environment" = Option<String>, Query, description = "allowed environment when no policy header is sent"),
        ("body" = Option<String>, Query, description = "`none` for bodyless rejections"),
    ),
    responses(
        (status = 200, description = "valid; X-Keyroll-Identity (ENV/SERVICE), X-Keyroll-Spiffe-Id, X-Keyroll-Serial, X-Request-Id headers, no body"),
        (status = 401, description = "rejected; X-Keyroll-Reason (cert_…) says why", body = keyroll_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "cert_wrong_identity: a valid certificate of an identity the policy does not allow", body = keyroll_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forward_auth_cert(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, uri) = (request.headers(), request.uri());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let request_id = EdgeRequestId::of(headers);
    let decision = judge(&state, headers, uri, peer);
    let now = state.clock.now();
    let client = client_addr(peer, headers, &state.config.trusted_proxies);
    state.observer.cert_decision(
        &CertDecisionRecord {
            decision: &decision,
            edge: CertEdge::ForwardAuthCert,
            peer,
            client,
            request_id: Some(request_id.as_str()),
            now,
        },
        state.config.log_allowed_at_info,
    );
    if decision.allowed()
        && let (Some(anchor), Some(identity), Some(serial)) =
            (&decision.anchor, &decision.identity, &decision.serial)
    {
        // The workload behind the proxy is the one using the anchor: the forwarded client
        // address (the proxy's own when it names none).
        let user = client.map(|c| match c {
            ClientAddr::Peer(a) => a,
            ClientAddr::Forwarded(ip) => SocketAddr::new(ip, 0),
        });
        state
            .ca
            .record_handshake(anchor, identity, serial, user, now);
    }
    let bodyless = uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "body" && v == "none")
    });
    respond(&decision, &request_id, state.config.explain, bodyless)
}

fn respond(d: &CertDecision, id: &EdgeRequestId<'_>, explain: Explain, bodyless: bool) -> Response {
    let code = d.code;
    let request_id = id.as_str();
    if code.allowed() {
        let mut response = Response::new(Body::empty());
        let h = response.headers_mut();
        if let Some(uri) = &d.identity
            && let Ok(spiffe) = SpiffeId::parse(uri)
        {
            insert(h, X_IDENTITY, &spiffe.path());
            insert(h, X_SPIFFE_ID, &spiffe.to_string());
        }
        if let Some(serial) = &d.serial {
            insert(h, X_SERIAL, &serial.to_string());
        }
        h.insert(X_REASON, HeaderValue::from_static(code.as_str()));
        h.insert(X_CODE, HeaderValue::from_static(code.as_str()));
        if let Some(v) = id.header_value() {
            h.insert(X_REQUEST_ID, v);
        }
        return response;
    }
    let status = status(code);
    let detail = match explain {
        Explain::Full => d.detail.clone(),
        Explain::Code => format!("rejected: {code}"),
    };
    let mut response = if bodyless {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = status;
        r
    } else {
        problem_with(
            status,
            code.as_str(),
            title(code),
            &detail,
            request_id,
            &ProblemExtras::default(),
        )
    };
    let h = response.headers_mut();
    h.insert(X_REASON, HeaderValue::from_static(code.as_str()));
    h.insert(X_CODE, HeaderValue::from_static(code.as_str()));
    insert(h, X_REQUEST_ID, request_id);
    if explain == Explain::Full {
        insert(h, X_DETAIL, &header_safe(&detail));
        if let Some(serial) = &d.serial {
            insert(h, X_SERIAL, &serial.to_string());
        }
    }
    if bodyless {
        h.remove(header::CONTENT_TYPE);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn percent_escapes_decode_and_broken_ones_are_refused() {
        assert_eq!(
            percent_decode("-----BEGIN%20CERTIFICATE-----%0Aab+/=").unwrap(),
            b"-----BEGIN CERTIFICATE-----\nab+/=".to_vec()
        );
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%\u{e9}x").is_err());
    }

    #[test]
    fn the_policy_comes_from_the_headers_else_the_query() {
        let bare: Uri = "/v1/forward-auth-cert".parse().unwrap();
        let q: Uri = "/v1/forward-auth-cert?identity=prod/a,prod/b&environment=ops"
            .parse()
            .unwrap();
        assert_eq!(asked_policy(&HeaderMap::new(), &bare), Ok(Asked::Any));
        assert_eq!(
            asked_policy(&HeaderMap::new(), &q),
            Ok(Asked::Patterns(vec![
                "prod/a".into(),
                "prod/b".into(),
                "ops/*".into()
            ]))
        );
        let h = headers(&[("x-keyroll-identity-policy", "prod/* staging/api")]);
        assert_eq!(
            asked_policy(&h, &q),
            Ok(Asked::Patterns(vec!["prod/*".into(), "staging/api".into()])),
            "the gateway's header wins over the caller's query"
        );
        let h = headers(&[("x-keyroll-environment", "prod")]);
        assert_eq!(
            asked_policy(&h, &bare),
            Ok(Asked::Patterns(vec!["prod/*".into()]))
        );
        let twice = headers(&[
            ("x-keyroll-environment", "prod"),
            ("x-keyroll-environment", "ops"),
        ]);
        assert!(asked_policy(&twice, &bare).is_err());
    }

    #[test]
    fn details_are_safe_in_headers_and_json_strings() {
        assert_eq!(
            header_safe("issuer \"CN=a\\b\"\n\u{e9}"),
            "issuer 'CN=a/b'??"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status(CertCode::Valid), StatusCode::OK);
        assert_eq!(status(CertCode::CertWrongIdentity), StatusCode::FORBIDDEN);
        for code in CertCode::ALL {
            if !matches!(code, CertCode::Valid | CertCode::CertWrongIdentity) {
                assert_eq!(status(code), StatusCode::UNAUTHORIZED, "{code}");
            }
        }
    }
}
