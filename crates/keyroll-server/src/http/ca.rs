//! The certificate authority's HTTP API (SPEC §9, /work contract "CA HTTP contract"):
//! `POST /v1/ca/init`, `POST /v1/certs`, the workload's own `POST /v1/self/certificate`, and
//! the public `GET /v1/ca/bundle` and `GET /v1/ca/crl` (like a JWKS: no credential, reachable
//! through `tls.client_auth = "require_admin"`).
//!
//! Handlers only parse and render: every field is checked here with a message naming it, the
//! change itself is `service::ca`. A generated private key is in the 201 body and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{ConsumerRef, parse_duration, rfc3339};
use keyroll_proto::ca as wire;

use crate::http::admin::{Caller, actor};
use crate::http::auth::RequestInfo;
use crate::http::self_service::SelfCaller;
use crate::http::{ApiError, ApiJson};
use crate::service::ca::{self as ca, CaServiceError, SelfAuth};
use crate::state::AppState;
use crate::tls::ConnectionTls;

impl From<CaServiceError> for ApiError {
    fn from(e: CaServiceError) -> ApiError {
        match e {
            CaServiceError::NoCa => ApiError::new(StatusCode::NOT_FOUND, "no_ca", e.to_string()),
            CaServiceError::BadInput { .. } => ApiError::bad_request(e.to_string()),
            CaServiceError::NotFound(m) => ApiError::not_found(m),
            CaServiceError::IdentityRevoked(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "identity_revoked", m)
            }
            CaServiceError::CertificateRefused(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "cert_refused", m)
            }
            CaServiceError::Service(e) => e.into(),
        }
    }
}

/// A duration field: `None` when absent, 400 naming the field when it is not a duration.
fn duration_field(field: &str, value: Option<&str>) -> Result<Option<Duration>, ApiError> {
    value
        .map(|v| {
            parse_duration(v).map_err(|e| {
                ApiError::bad_request(format!("{field}: {e} (a duration such as 24h or 30m)"))
            })
        })
        .transpose()
}

/// The query parameters of `uri`, refusing any not in `known`.
fn query(uri: &Uri, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if !known.contains(&&*k) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}; expected {}",
                known.join(", ")
            )));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn issued_json(i: &ca::Issued, renew: bool) -> wire::CertIssued {
    wire::CertIssued {
        serial: i.record.serial.clone(),
        identity: i.record.identity.to_string(),
        spiffe_id: i.spiffe_id.clone(),
        issuer_id: i.record.issuer_id.clone(),
        not_before: rfc3339(i.record.not_before),
        not_after: rfc3339(i.record.not_after),
        fingerprint: i.record.fingerprint.clone(),
        server_auth: i.record.server_auth,
        cert_pem: i.cert_pem.clone(),
        key_pem: i.key_pem.as_ref().map(|k| k.expose().to_owned()),
        ca_pem: i.ca_pem.clone(),
        bundle_version: i.bundle_version,
        renew_after: renew
            .then(|| rfc3339(ca::renew_after(i.record.not_before, i.record.not_after))),
    }
}

/// `POST /v1/ca/init`: a root and an intermediate for the trust domain.
#[utoipa::path(post, path = "/v1/ca/init", tag = "ca", request_body = wire::CaInit,
    responses((status = 201, body = wire::CaInitialized),
        (status = 400, body = keyroll_proto::Problem, description = "a field is wrong; the message names it"),
        (status = 409, body = keyroll_proto::Problem, description = "`already_exists`: there is a CA"),
        (status = 422, body = keyroll_proto::Problem, description = "a lifetime too short to make a CA of")),
    security(("admin_token" = ["ca:write"])))]
pub async fn init(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<wire::CaInit>,
) -> Result<Response, ApiError> {
    caller.admin.require("ca:write")?;
    let b = body.value;
    let trust_domain = keyroll_ca::TrustDomain::parse(&b.trust_domain)
        .map_err(|e| ApiError::bad_request(format!("trust_domain: {e}")))?;
    let root_ttl = duration_field("root_ttl", b.root_ttl.as_deref())?;
    let intermediate_ttl = duration_field("intermediate_ttl", b.intermediate_ttl.as_deref())?;
    let made = ca::init(
        &state,
        &actor(&caller.admin),
        ca::InitRequest {
            trust_domain: trust_domain.clone(),
            root_ttl,
            intermediate_ttl,
        },
    )
    .await?;
    let answer = wire::CaInitialized {
        trust_domain: trust_domain.to_string(),
        bundle_version: made.bundle_version,
        root: wire::AuthorityRef {
            id: made.root,
            serial: made.root_cert.0.to_string(),
            not_after: rfc3339(made.root_cert.1),
        },
        intermediate: wire::AuthorityRef {
            id: made.intermediate,
            serial: made.intermediate_cert.0.to_string(),
            not_after: rfc3339(made.intermediate_cert.1),
        },
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `POST /v1/certs`: a workload certificate (a generated key returned once, or a CSR's key).
#[utoipa::path(post, path = "/v1/certs", tag = "ca", request_body = wire::IssueCert,
    responses((status = 201, body = wire::CertIssued, description = "the certificate; `key_pem` (shown once) only without a CSR"),
        (status = 400, body = keyroll_proto::Problem, description = "a field is wrong (identity, ttl, csr, dns, ip); the message names it"),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`, or the environment does not exist"),
        (status = 422, body = keyroll_proto::Problem, description = "dns or ip without server_auth, or no intermediate can sign now")),
    security(("admin_token" = ["certs:write"])))]
pub async fn issue(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<wire::IssueCert>,
) -> Result<Response, ApiError> {
    caller.admin.require("certs:write")?;
    let b = body.value;
    let identity = ConsumerRef::parse(&b.identity)
        .map_err(|e| ApiError::bad_request(format!("identity: {e} (expected ENV/SERVICE)")))?;
    let ttl = duration_field("ttl", b.ttl.as_deref())?;
    let ip =
        b.ip.iter()
            .map(|s| {
                s.parse::<std::net::IpAddr>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "ip: {:?} is not an IP address",
                        s.chars().take(60).collect::<String>()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
    let req = ca::IssueRequest {
        identity,
        ttl,
        server_auth: b.server_auth.unwrap_or(false),
        dns: b.dns,
        ip,
        csr: b.csr.map(String::into_bytes),
    };
    let issued = ca::issue(&state, &actor(&caller.admin), req, None).await?;
    Ok((StatusCode::CREATED, Json(issued_json(&issued, false))).into_response())
}

/// Who calls `POST /v1/self/certificate`: a consumer key when there is an `Authorization`
/// header, else the client certificate the TLS listener verified.
#[derive(Debug)]
pub struct CertCaller {
    auth: SelfAuth,
    request: RequestInfo,
}

impl FromRequestParts<Arc<AppState>> for CertCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let request = RequestInfo::from_parts(parts, state);
        if parts.headers.contains_key(header::AUTHORIZATION) {
            let caller = SelfCaller::from_request_parts(parts, state).await?;
            return Ok(CertCaller {
                auth: SelfAuth::ConsumerKey(caller.caller.consumer.clone()),
                request,
            });
        }
        let peer = parts
            .extensions
            .get::<Arc<ConnectionTls>>()
            .and_then(|t| t.peer_certificate.clone());
        match peer {
            Some(p) => Ok(CertCaller {
                auth: SelfAuth::Certificate {
                    spiffe_id: p.identity,
                    serial: p.serial,
                },
                request,
            }),
            None => {
                let mut e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_credential",
                    "no credential: send Authorization: Bearer <the consumer's key>, or present this CA's client certificate over TLS",
                );
                e.www_authenticate = Some(
                    "Bearer realm=\"keyroll-self\", error=\"invalid_token\", error_description=\"missing_credential\"".to_owned(),
                );
                Err(e)
            }
        }
    }
}

/// `POST /v1/self/certificate`: a workload's own certificate from its CSR.
#[utoipa::path(post, path = "/v1/self/certificate", tag = "agent", request_body = wire::SelfCertRequest,
    responses((status = 201, body = wire::CertIssued, description = "the certificate (no key: it stays with the workload) and `renew_after`"),
        (status = 400, body = keyroll_proto::Problem), (status = 401, body = keyroll_proto::Problem),
        (status = 403, body = keyroll_proto::Problem, description = "`identity_revoked`: the identity may no longer renew itself; `cert_refused`: a client certificate this CA did not issue"),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`"),
        (status = 422, body = keyroll_proto::Problem, description = "no intermediate can sign now")),
    security(("consumer_key" = []), ()))]
pub async fn self_certificate(
    State(state): State<Arc<AppState>>,
    caller: CertCaller,
    body: ApiJson<wire::SelfCertRequest>,
) -> Result<Response, ApiError> {
    let b = body.value;
    let ttl = duration_field("ttl", b.ttl.as_deref())?;
    if b.csr.trim().is_empty() {
        return Err(ApiError::bad_request(
            "csr: required (a PEM CERTIFICATE REQUEST)",
        ));
    }
    let issued = ca::issue_self(
        &state,
        &caller.auth,
        caller.request.request_id.clone(),
        caller.request.remote_addr(),
        b.csr.into_bytes(),
        ttl,
        b.server_auth.unwrap_or(false),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued_json(&issued, true))).into_response())
}

fn pem_response(body: String, bundle_version: u64) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-keyroll-bundle-version",
        HeaderValue::from(bundle_version),
    );
    r
}

/// `GET /v1/ca/bundle[?format=json]`: every root in the bundle, every current intermediate,
/// one CRL per issuer.
#[utoipa::path(get, path = "/v1/ca/bundle", tag = "ca",
    params(("format" = Option<String>, Query, description = "`pem` (default) or `json`")),
    responses((status = 200, description = "PEM (roots, intermediates, CRLs), or with `?format=json` the same as JSON; header X-Keyroll-Bundle-Version",
            content((String = "text/plain"), (wire::CaBundle = "application/json"))),
        (status = 400, body = keyroll_proto::Problem),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`")),
    security(()))]
pub async fn bundle(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let mut json = false;
    for (k, v) in query(&uri, &["format"])? {
        if k == "format" {
            json = match v.as_str() {
                "json" => true,
                "pem" => false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "format: {:?} is not pem or json",
                        other.chars().take(20).collect::<String>()
                    )));
                }
            };
        }
    }
    let b = ca::bundle(&state).await?;
    let crls_pem: String = b.crls.iter().map(|(_, p)| p.as_str()).collect();
    if json {
        let v = b.bundle_version;
        let mut r = Json(wire::CaBundle {
            bundle_version: b.bundle_version,
            trust_domain: b.trust_domain,
            roots_pem: b.roots_pem,
            intermediates_pem: b.intermediates_pem,
            crls_pem,
        })
        .into_response();
        r.headers_mut()
            .insert("x-keyroll-bundle-version", HeaderValue::from(v));
        return Ok(r);
    }
    let text = format!("{}{}{}", b.roots_pem, b.intermediates_pem, crls_pem);
    Ok(pem_response(text, b.bundle_version))
}

/// `GET /v1/ca/crl[?issuer=ca_…]`: every issuer's current CRL, or one.
#[utoipa::path(get, path = "/v1/ca/crl", tag = "ca",
    params(("issuer" = Option<String>, Query, description = "only this authority's CRL")),
    responses((status = 200, content_type = "text/plain", body = String, description = "PEM X509 CRL blocks"),
        (status = 400, body = keyroll_proto::Problem),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`, or no such issuer")),
    security(()))]
pub async fn crl(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let mut issuer = None;
    for (k, v) in query(&uri, &["issuer"])? {
        if k == "issuer" {
            issuer = Some(v);
        }
    }
    let b = ca::bundle(&state).await?;
    let text: String = match &issuer {
        None => b.crls.iter().map(|(_, p)| p.as_str()).collect(),
        Some(id) => match b.crls.iter().find(|(i, _)| i == id) {
            Some((_, p)) => p.clone(),
            None => {
                return Err(ApiError::not_found(format!(
                    "issuer: no authority {:?} with a current CRL; see `keyroll ca status`",
                    id.chars().take(40).collect::<String>()
                )));
            }
        },
    };
    Ok(pem_response(text, b.bundle_version))
}

/// `live`, `expired` or `revoked` at `now`.
fn cert_state(c: &keyroll_store::IssuedCertRecord, now: keyroll_core::Timestamp) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.not_after <= now {
        "expired"
    } else {
        "live"
    }
}

/// A certificate as listed.
pub fn cert_info(
    c: &keyroll_store::IssuedCertRecord,
    now: keyroll_core::Timestamp,
) -> wire::CertInfo {
    wire::CertInfo {
        serial: c.serial.clone(),
        identity: c.identity.to_string(),
        issuer_id: c.issuer_id.clone(),
        not_before: rfc3339(c.not_before),
        not_after: rfc3339(c.not_after),
        fingerprint: c.fingerprint.clone(),
        server_auth: c.server_auth,
        requested_by: c.requested_by.clone(),
        superseded_by: c.superseded_by.clone(),
        revoked_at: c.revoked_at.map(rfc3339),
        revocation_reason: c.revocation_reason.clone(),
        state: cert_state(c, now).to_owned(),
    }
}

/// `POST /v1/certs/revoke`: one certificate by serial, or every live certificate of an identity
/// (which may then no longer renew itself).
#[utoipa::path(post, path = "/v1/certs/revoke", tag = "ca", request_body = wire::RevokeCert,
    responses((status = 200, body = wire::CertsRevoked),
        (status = 400, body = keyroll_proto::Problem, description = "not exactly one of serial and identity, or a bad serial, identity or reason"),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca`, or no certificate with that serial")),
    security(("admin_token" = ["certs:write"])))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<wire::RevokeCert>,
) -> Result<Json<wire::CertsRevoked>, ApiError> {
    caller.admin.require("certs:write")?;
    let b = body.value;
    let reason = match b.reason.as_deref() {
        None => keyroll_ca::RevocationReason::Unspecified,
        Some(r) => keyroll_ca::RevocationReason::parse(r)
            .map_err(|e| ApiError::bad_request(format!("reason: {e}")))?,
    };
    let target = match (b.serial.as_deref(), b.identity.as_deref()) {
        (Some(s), None) => ca::RevokeTarget::Serial(
            keyroll_ca::Serial::parse(s)
                .map_err(|e| ApiError::bad_request(format!("serial: {e}")))?,
        ),
        (None, Some(i)) => {
            ca::RevokeTarget::Identity(ConsumerRef::parse(i).map_err(|e| {
                ApiError::bad_request(format!("identity: {e} (expected ENV/SERVICE)"))
            })?)
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of serial (one certificate) and identity (every live certificate of ENV/SERVICE)",
            ));
        }
    };
    let done = ca::revoke(&state, &actor(&caller.admin), target, reason).await?;
    Ok(Json(wire::CertsRevoked {
        revoked: done.revoked,
        identity_blocked: done.identity_blocked,
        bundle_version: done.bundle_version,
    }))
}

/// The largest page of `GET /v1/certs`.
const MAX_LIST: u32 = 1000;

/// `GET /v1/certs`: issued certificates by serial, filtered.
#[utoipa::path(get, path = "/v1/certs", tag = "ca",
    params(("identity" = Option<String>, Query, description = "only ENV/SERVICE's"),
        ("state" = Option<String>, Query, description = "live, expired or revoked"),
        ("issuer" = Option<String>, Query, description = "only those this authority signed"),
        ("after" = Option<String>, Query, description = "the next_after of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (default 100)")),
    responses((status = 200, body = wire::CertList), (status = 400, body = keyroll_proto::Problem)),
    security(("admin_token" = ["certs:read"])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    admin: crate::http::auth::Admin,
    uri: Uri,
) -> Result<Json<wire::CertList>, ApiError> {
    admin.require("certs:read")?;
    let now = state.clock.now();
    let mut q = keyroll_store::CertQuery {
        identity: None,
        issuer: None,
        state: None,
        at: now,
        after: None,
        limit: 100,
    };
    for (k, v) in query(&uri, &["identity", "state", "issuer", "after", "limit"])? {
        match k.as_str() {
            "identity" => {
                q.identity = Some(ConsumerRef::parse(&v).map_err(|e| {
                    ApiError::bad_request(format!("identity: {e} (expected ENV/SERVICE)"))
                })?);
            }
            "state" => {
                q.state = Some(keyroll_store::CertFilter::parse(&v).ok_or_else(|| {
                    ApiError::bad_request("state: expected live, expired or revoked")
                })?);
            }
            "issuer" => q.issuer = Some(v),
            "after" => {
                keyroll_ca::Serial::parse(&v)
                    .map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
                q.after = Some(v.to_ascii_lowercase());
            }
            _ => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit: expected 1 to 1000"))?;
            }
        }
    }
    let page = state.store.list_certificates(&q).await?;
    let next_after = (page.len() == q.limit as usize)
        .then(|| page.last().map(|c| c.serial.clone()))
        .flatten();
    Ok(Json(wire::CertList {
        certificates: page.iter().map(|c| cert_info(c, now)).collect(),
        next_after,
    }))
}

/// `GET /v1/certs/{serial}`.
#[utoipa::path(get, path = "/v1/certs/{serial}", tag = "ca",
    params(("serial" = String, Path, description = "32 hex digits")),
    responses((status = 200, body = wire::CertInfo), (status = 400, body = keyroll_proto::Problem),
        (status = 404, body = keyroll_proto::Problem)),
    security(("admin_token" = ["certs:read"])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    admin: crate::http::auth::Admin,
    crate::http::ApiPath(serial): crate::http::ApiPath<String>,
) -> Result<Json<wire::CertInfo>, ApiError> {
    admin.require("certs:read")?;
    let s = keyroll_ca::Serial::parse(&serial)
        .map_err(|e| ApiError::bad_request(format!("serial: {e}")))?;
    match state.store.get_certificate(&s.to_string()).await? {
        Some(c) => Ok(Json(cert_info(&c, state.clock.now()))),
        None => Err(ApiError::not_found(format!(
            "no certificate with serial {s}; see `keyroll cert list`"
        ))),
    }
}

/// The status body (also the 202 of a rotation).
async fn status_body(state: &AppState) -> Result<wire::CaStatus, ApiError> {
    let (ca, deps, next) = ca::status(state).await?;
    let trust_domain = ca
        .authorities
        .last()
        .map(|a| a.trust_domain.clone())
        .unwrap_or_default();
    let authorities = ca
        .authorities
        .iter()
        .zip(deps)
        .map(|(a, d)| wire::Authority {
            id: a.id.clone(),
            kind: a.kind.as_str().to_owned(),
            generation: a.generation,
            parent_id: a.parent_id.clone(),
            state: a.state.as_str().to_owned(),
            subject: a.subject.clone(),
            serial: a.serial.clone(),
            fingerprint: a.fingerprint.clone(),
            not_before: rfc3339(a.not_before),
            not_after: rfc3339(a.not_after),
            enters_bundle_at: rfc3339(a.enters_bundle_at),
            signs_from: rfc3339(a.signs_from),
            removed_at: a.removed_at.map(rfc3339),
            depends: wire::Depends {
                live_certificates: d
                    .live_certificates
                    .iter()
                    .map(|c| wire::DependentCert {
                        identity: c.identity.to_string(),
                        serial: c.serial.clone(),
                        not_after: rfc3339(c.not_after),
                    })
                    .collect(),
                recent_handshakes: d
                    .recent_handshakes
                    .iter()
                    .map(|h| wire::DependentHandshake {
                        identity: h.identity.clone(),
                        peer: h.peer.clone(),
                        serial: h.serial.clone(),
                        last_at: rfc3339(h.last_at),
                        count: h.count,
                    })
                    .collect(),
                agents_on_old_bundle: d
                    .agents_on_old_bundle
                    .iter()
                    .map(|g| wire::DependentAgent {
                        consumer: g.consumer.to_string(),
                        agent_id: g.agent_id.clone(),
                        bundle_version: g.bundle_version.unwrap_or(0),
                    })
                    .collect(),
            },
        })
        .collect();
    Ok(wire::CaStatus {
        trust_domain,
        bundle_version: ca.bundle_version,
        authorities,
        next_step: next.map(|(kind, authority, at)| wire::NextStep {
            kind: kind.to_owned(),
            authority,
            at: rfc3339(at),
        }),
    })
}

/// `GET /v1/ca/status`: every authority, what its removal waits for, the timeline's next step.
#[utoipa::path(get, path = "/v1/ca/status", tag = "ca",
    responses((status = 200, body = wire::CaStatus),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`")),
    security(("admin_token" = ["ca:read"])))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    admin: crate::http::auth::Admin,
) -> Result<Json<wire::CaStatus>, ApiError> {
    admin.require("ca:read")?;
    Ok(Json(status_body(&state).await?))
}

/// `POST /v1/ca/rotate`: start a rotation (the timeline job carries it out).
#[utoipa::path(post, path = "/v1/ca/rotate", tag = "ca", request_body = wire::CaRotate,
    responses((status = 202, body = wire::CaStatus),
        (status = 400, body = keyroll_proto::Problem),
        (status = 404, body = keyroll_proto::Problem, description = "`no_ca` before `ca init`"),
        (status = 409, body = keyroll_proto::Problem, description = "`already_exists`: a rotation is under way"),
        (status = 422, body = keyroll_proto::Problem, description = "signs_from before enters_bundle_at, or no active CA to rotate")),
    security(("admin_token" = ["ca:write"])))]
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<wire::CaRotate>,
) -> Result<Response, ApiError> {
    caller.admin.require("ca:write")?;
    let b = body.value;
    let time =
        |field: &str, v: Option<&str>| -> Result<Option<keyroll_core::Timestamp>, ApiError> {
            v.map(|t| {
                keyroll_core::parse_rfc3339(t).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{field}: expected an RFC 3339 time such as 2026-12-24T00:00:00Z"
                    ))
                })
            })
            .transpose()
        };
    let req = ca::RotateRequest {
        root: b.root.unwrap_or(false),
        enters_bundle_at: time("enters_bundle_at", b.enters_bundle_at.as_deref())?,
        signs_from: time("signs_from", b.signs_from.as_deref())?,
        idle: duration_field("idle", b.idle.as_deref())?,
    };
    ca::rotate(&state, &actor(&caller.admin), req).await?;
    // What is due now (a rotation entering the bundle at once) happens before the answer.
    if state.is_leader() {
        crate::jobs::ca_step(&state).await;
    }
    Ok((StatusCode::ACCEPTED, Json(status_body(&state).await?)).into_response())
}
