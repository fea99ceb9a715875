//! `GET /metrics` (Prometheus exposition, unauthenticated like `/healthz`) and
//! `GET /v1/decisions` (the in-memory decision history, admin scope `consumers:read`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use keyroll_core::{ConsumerRef, DecisionCode, Fingerprint, Kid, Timestamp, parse_duration};
use keyroll_proto as proto;

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::observe::cert_history::{CertEntry, CertQuery};
use crate::observe::history::{Entry, Query};
use crate::state::AppState;
use keyroll_ca::CertCode;
use keyroll_core::rfc3339;

/// Decisions returned when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;

/// The most a request may ask for.
pub const MAX_LIMIT: usize = 100_000;

/// `GET /metrics`: Prometheus text format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus exposition text (format 0.0.4)", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // Counting key versions walks the whole index: off the async workers.
    let render =
        tokio::task::spawn_blocking(move || state.observer.render(&state.index, state.clock.now()))
            .await;
    match render {
        Ok(text) => {
            let mut response = Response::new(Body::from(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(event = "metrics.failed", error = %e, "rendering /metrics failed");
            let mut response = Response::new(Body::from("metrics unavailable\n"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// `GET /v1/decisions`: the last decisions, key and certificate ones, filtered, newest first.
#[utoipa::path(
    get,
    path = "/v1/decisions",
    tag = "decisions",
    params(
        ("kid" = Option<String>, Query, description = "only decisions about this key id"),
        ("consumer" = Option<String>, Query, description = "only this consumer, ENV/NAME"),
        ("code" = Option<String>, Query, description = "only these codes (comma-separated or repeated); `invalid_key` means unknown_key and invalid_secret; `cert_…` codes are certificate decisions, `valid` both kinds"),
        ("fingerprint" = Option<String>, Query, description = "only this key fingerprint (fp_…)"),
        ("kind" = Option<String>, Query, description = "only `key` or only `cert` decisions"),
        ("identity" = Option<String>, Query, description = "only certificates of this identity, ENV/SERVICE or spiffe://…"),
        ("serial" = Option<String>, Query, description = "only certificates with this serial (hex)"),
        ("since" = Option<String>, Query, description = "only the last DURATION (10m, 1h)"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100)"),
    ),
    responses(
        (status = 200, body = proto::DecisionList),
        (status = 400, body = proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = proto::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = ["consumers:read"]))
)]
pub async fn decisions(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::DecisionList>, ApiError> {
    admin.require("consumers:read")?;
    let Parsed {
        key: mut q,
        cert,
        kinds,
    } = parse_query(uri.query(), state.clock.now())?;
    if let Some(reference) = &q.consumer
        && let Ok(r) = ConsumerRef::parse(reference)
        && let Some(stored) = state.store.get_consumer(&r).await?
    {
        q.consumer_kids = stored.consumer.versions.iter().map(|v| v.kid).collect();
    }
    let history = state.observer.history();
    let found = if kinds.key {
        history.query(&q)
    } else {
        Default::default()
    };
    let certs = if kinds.cert {
        state.observer.cert_history().query(&cert)
    } else {
        Default::default()
    };
    let (capacity_rejected, capacity_allowed) = history.capacity();
    // Both lists are newest first on one clock: merged by it, then cut at the limit.
    let mut items: Vec<(u64, proto::DecisionRecord)> = found
        .entries
        .iter()
        .map(|e| (e.seq, record(e, &state.index)))
        .chain(certs.entries.iter().map(|e| (e.seq, cert_record(e))))
        .collect();
    items.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    items.truncate(q.limit);
    Ok(Json(proto::DecisionList {
        items: items.into_iter().map(|(_, r)| r).collect(),
        matched: (found.matched + certs.matched) as u64,
        capacity_rejected: capacity_rejected as u64,
        capacity_allowed: capacity_allowed as u64,
    }))
}

/// Which kinds of decision a query can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kinds {
    key: bool,
    cert: bool,
}

/// A parsed query: the key history's, the certificate history's, and which apply.
#[derive(Debug)]
struct Parsed {
    key: Query,
    cert: CertQuery,
    kinds: Kinds,
}

/// Validates the query string; every unknown or malformed parameter is a 400 that says which.
/// A filter only one kind has (a kid, a serial) leaves the other kind out.
fn parse_query(query: Option<&str>, now: Timestamp) -> Result<Parsed, ApiError> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    let mut c = CertQuery::default();
    let mut kinds = Kinds {
        key: true,
        cert: true,
    };
    let mut codes_given = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "kid" => {
                q.kid = Some(Kid::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "kid {v:?} is not a key id (12 base62 characters)"
                    ))
                })?);
                kinds.cert = false;
            }
            "consumer" => {
                let r = ConsumerRef::parse(&v).map_err(|e| {
                    ApiError::bad_request(format!("consumer {v:?}: {e} (expected ENV/NAME)"))
                })?;
                q.consumer = Some(r.to_string());
                kinds.cert = false;
            }
            "code" => {
                for code in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    codes_given = true;
                    if code == "invalid_key" {
                        q.codes
                            .extend([DecisionCode::UnknownKey, DecisionCode::InvalidSecret]);
                        continue;
                    }
                    let key = DecisionCode::parse(code);
                    let cert = CertCode::parse(code);
                    if key.is_none() && cert.is_none() {
                        let known: Vec<&str> = DecisionCode::ALL
                            .iter()
                            .map(DecisionCode::as_str)
                            .chain(CertCode::ALL.iter().skip(1).map(|c| c.as_str()))
                            .collect();
                        return Err(ApiError::bad_request(format!(
                            "unknown code {code:?}; expected one of {}, or invalid_key",
                            known.join(", ")
                        )));
                    }
                    q.codes.extend(key);
                    c.codes.extend(cert);
                }
            }
            "fingerprint" => {
                q.fingerprint = Some(Fingerprint::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "fingerprint {v:?} is not fp_ followed by 16 hex digits"
                    ))
                })?);
                kinds.cert = false;
            }
            "kind" => match &*v {
                "key" => kinds.cert = false,
                "cert" => kinds.key = false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "kind {other:?}: expected key or cert"
                    )));
                }
            },
            "identity" => {
                let ok = keyroll_ca::SpiffeId::parse(&v).is_ok() || ConsumerRef::parse(&v).is_ok();
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "identity {v:?}: expected ENV/SERVICE or spiffe://TRUST_DOMAIN/ENV/SERVICE"
                    )));
                }
                c.identity = Some(v.into_owned());
                kinds.key = false;
            }
            "serial" => {
                if v.len() != 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::bad_request(format!(
                        "serial {v:?}: expected 32 hex digits, as `keyroll cert list` shows them"
                    )));
                }
                c.serial = Some(v.to_ascii_lowercase());
                kinds.key = false;
            }
            "since" => {
                let d = parse_duration(&v)
                    .map_err(|e| ApiError::bad_request(format!("since {v:?}: {e}")))?;
                q.since_ms = Some(now.saturating_sub(d).unix_millis());
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit {v:?}: expected a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; expected kid, consumer, code, fingerprint, kind, identity, serial, since or limit"
                )));
            }
        }
    }
    // Codes of one kind only leave the other kind out.
    if codes_given {
        kinds.key &= !q.codes.is_empty();
        kinds.cert &= !c.codes.is_empty();
    }
    c.since_ms = q.since_ms;
    c.limit = q.limit;
    Ok(Parsed {
        key: q,
        cert: c,
        kinds,
    })
}

fn record(e: &Entry, index: &keyroll_verify::index::Index) -> proto::DecisionRecord {
    let consumer = e
        .consumer
        .as_ref()
        .map(|c| c.reference().to_owned())
        .or_else(|| {
            e.kid
                .and_then(|k| index.consumer_of(&k))
                .map(|c| c.reference().to_owned())
        });
    proto::DecisionRecord {
        kind: "key".into(),
        ts: rfc3339(Timestamp::from_unix_millis(e.ts_ms)),
        decision: if e.code.allowed() {
            "allowed"
        } else {
            "rejected"
        }
        .into(),
        code: e.code.as_str().into(),
        detail: e.detail.as_deref().map(str::to_owned),
        kid: e.kid.map(|k| k.to_string()),
        fingerprint: e.fingerprint.map(|f| f.to_string()),
        consumer,
        environment: e.environment().map(str::to_owned),
        version: e.version.map(|n| n.0),
        state: e.state.map(|s| s.as_str().to_owned()),
        request_id: e.request_id.as_str().to_owned(),
        remote_addr: e.remote_addr.map(|a| a.to_string()),
        identity: None,
        spiffe_id: None,
        serial: None,
        issuer: None,
        not_after: None,
        anchor: None,
        edge: None,
    }
}

fn cert_record(e: &CertEntry) -> proto::DecisionRecord {
    let path = e.identity_path();
    proto::DecisionRecord {
        kind: "cert".into(),
        ts: rfc3339(Timestamp::from_unix_millis(e.ts_ms)),
        decision: if e.code.allowed() {
            "allowed"
        } else {
            "rejected"
        }
        .into(),
        code: e.code.as_str().into(),
        detail: Some(e.detail.to_string()),
        kid: None,
        fingerprint: e.fingerprint.map(|f| f.to_string()),
        consumer: None,
        environment: path
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .map(|(env, _)| env.to_owned()),
        version: None,
        state: None,
        request_id: e.request_id.as_deref().unwrap_or_default().to_owned(),
        remote_addr: e
            .remote_addr
            .map(|a| a.to_string())
            .or_else(|| e.peer.map(|p| p.to_string())),
        identity: path,
        spiffe_id: e.identity.as_deref().map(str::to_owned),
        serial: e.serial.map(|s| s.to_string()),
        issuer: e.issuer.as_deref().map(str::to_owned),
        not_after: e.not_after.map(rfc3339),
        anchor: e.anchor.map(|a| a.to_string()),
        edge: Some(e.edge.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let p = parse_query(
            Some("kid=3kTq8ZpW1xYv&consumer=prod/billing-app&code=invalid_key,key_revoked&since=10m&limit=5"),
            now,
        )
        .unwrap();
        let q = &p.key;
        assert_eq!(q.kid.unwrap().as_str(), "3kTq8ZpW1xYv");
        assert_eq!(q.consumer.as_deref(), Some("prod/billing-app"));
        assert_eq!(
            q.codes,
            vec![
                DecisionCode::UnknownKey,
                DecisionCode::InvalidSecret,
                DecisionCode::KeyRevoked
            ]
        );
        assert_eq!(q.since_ms, Some(1_000_000 - 600_000));
        assert_eq!(q.limit, 5);
        assert_eq!(
            p.kinds,
            Kinds {
                key: true,
                cert: false
            }
        );
        assert_eq!(parse_query(None, now).unwrap().key.limit, DEFAULT_LIMIT);
        for bad in [
            "kid=short",
            "consumer=prod",
            "code=nope",
            "fingerprint=fp_xyz",
            "since=forever",
            "limit=0",
            "limit=x",
            "colour=red",
            "kind=both",
            "identity=Prod",
            "serial=xyz",
        ] {
            let e = parse_query(Some(bad), now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn certificate_filters_select_certificate_decisions() {
        let now = Timestamp::from_unix_millis(1_000_000);
        let kinds = |q: &str| parse_query(Some(q), now).unwrap().kinds;
        let both = Kinds {
            key: true,
            cert: true,
        };
        let cert = Kinds {
            key: false,
            cert: true,
        };
        let key = Kinds {
            key: true,
            cert: false,
        };
        assert_eq!(kinds("since=1h"), both);
        assert_eq!(kinds("code=valid"), both);
        assert_eq!(kinds("code=cert_revoked"), cert);
        assert_eq!(kinds("code=key_revoked"), key);
        assert_eq!(kinds("code=cert_revoked,key_revoked"), both);
        assert_eq!(kinds("identity=prod/billing"), cert);
        assert_eq!(kinds("identity=spiffe://example.org/prod/billing"), cert);
        assert_eq!(kinds("serial=0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b"), cert);
        assert_eq!(kinds("kind=cert"), cert);
        assert_eq!(kinds("kind=key"), key);
        let p = parse_query(Some("code=cert_expired&identity=prod/billing&limit=3"), now).unwrap();
        assert_eq!(p.cert.codes, vec![CertCode::CertExpired]);
        assert_eq!(p.cert.identity.as_deref(), Some("prod/billing"));
        assert_eq!(p.cert.limit, 3);
    }
}
