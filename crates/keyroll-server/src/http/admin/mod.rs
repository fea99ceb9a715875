//! The admin API, one file per resource: [`health`], [`environments`], [`consumers`] (create,
//! list, show, update, disable/enable) and [`versions`] (rotate, revoke, retire); [`render`]
//! turns core values into the wire types.
//!
//! Handlers only parse, call the service layer ([`crate::service`]) and render: every change
//! goes through its one write path. This module holds what they share: field parsing with
//! precise messages, the service request built from an admin caller, and the mapping of
//! [`ServiceError`] to statuses and stable codes.

pub mod consumers;
pub mod environments;
pub mod health;
pub mod render;
pub mod versions;

use std::time::Duration;

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyroll_core::{
    ConsumerName, ConsumerRef, Delivery, Environment, LifecycleError, OnStall, Policy,
    RetirePolicy, Schedule, Scope, VersionNumber, parse_duration, rfc3339,
};

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::service::idempotency::IdempotencyKey;
use crate::service::{Actor, Answer, Idempotency, Request, ServiceError};
use crate::state::AppState;

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::NotFound(what) => ApiError::not_found(what),
            ServiceError::AlreadyExists(what) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", what)
            }
            ServiceError::Lifecycle(e) => match e {
                LifecycleError::UnknownVersion { .. } => ApiError::not_found(e.to_string()),
                LifecycleError::BadRevokeReason => ApiError::bad_request(e.to_string()),
                LifecycleError::RetireActive { .. }
                | LifecycleError::NotRetiring { .. }
                | LifecycleError::VersionsExhausted { .. } => ApiError::conflict(e.to_string()),
                LifecycleError::NoActiveVersion => {
                    ApiError::new(StatusCode::CONFLICT, "no_active_version", e.to_string())
                }
            },
            ServiceError::Busy(_) => ApiError::conflict(e.to_string()),
            // The header is not echoed: it is what protects a sealed key.
            ServiceError::IdempotencyKeyReused { first_used } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was used at {} for a different request (another \
                     method, path or body); use a new Idempotency-Key for a new request",
                    rfc3339(first_used)
                ),
            ),
            // 428: the request is right but needs a precondition, and retrying it with the
            // confirmation is the whole fix.
            ServiceError::Invalid(detail) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
            }
            ServiceError::ConfirmationRequired(detail) => ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "confirmation_required",
                detail,
            ),
            ServiceError::EntropyUnavailable(detail) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "entropy_unavailable",
                detail,
            ),
            ServiceError::Raced(detail) => {
                ApiError::new(StatusCode::CONFLICT, "rotation_raced", detail)
            }
            ServiceError::NoHandover(detail) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_handover", detail)
            }
            ServiceError::KidsExhausted => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "retry", e.to_string())
            }
            ServiceError::Store(e) => e.into(),
        }
    }
}

/// An authenticated admin call, with what the service needs of it besides the body: the actor,
/// and the `Idempotency-Key` with the method and path its fingerprint covers.
#[derive(Debug)]
pub struct Caller {
    /// The authenticated token.
    pub admin: Admin,
    /// The header, parsed; its error is answered only after the scope check, as before.
    idempotency: Result<Option<IdempotencyKey>, String>,
    method: Method,
    path: String,
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let admin = Admin::from_request_parts(parts, state).await?;
        let idempotency = parts
            .headers
            .get("idempotency-key")
            .map(|v| IdempotencyKey::parse(v.as_bytes()).map_err(|e| e.to_string()))
            .transpose();
        Ok(Caller {
            admin,
            idempotency,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
        })
    }
}

impl Caller {
    /// The service request for a body whose canonical JSON hashes to `body_hash`.
    pub(crate) fn request(&self, body_hash: &[u8; 32]) -> Result<Request, ApiError> {
        let idempotency = match &self.idempotency {
            Ok(None) => None,
            Ok(Some(key)) => Some(Idempotency::new(
                key.clone(),
                self.method.as_str(),
                &self.path,
                body_hash,
            )),
            Err(e) => return Err(ApiError::bad_request(e.clone())),
        };
        Ok(Request {
            actor: actor(&self.admin),
            idempotency,
        })
    }
}

/// The audit actor of an admin call.
pub(crate) fn actor(admin: &Admin) -> Actor {
    Actor {
        id: admin.token_id.clone(),
        request_id: admin.request.request_id.clone(),
        remote_addr: admin.request.remote_addr(),
    }
}

/// The HTTP answer of a service answer: `status` when fresh, the remembered one on a replay
/// (with `Idempotent-Replayed: true`); `location` for a created resource.
pub(crate) fn respond(answer: Answer, status: StatusCode, location: Option<String>) -> Response {
    match answer {
        Answer::Fresh { body, .. } => {
            let mut response = (status, Json(body)).into_response();
            if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Answer::Replayed(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(r.body)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
    }
}

/// The `?wait=DURATION` of a revoke or disable: how long to wait for every live node to have
/// the change (at most [`crate::cluster::MAX_WAIT`], as `/v1/self` caps its own wait).
/// Another query parameter, or a wait that is not a duration, is a 400.
pub(crate) fn propagation_wait(uri: &axum::http::Uri) -> Result<Option<Duration>, ApiError> {
    let mut wait = None;
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "wait" => {
                let d = parse_duration(&v).map_err(|e| {
                    ApiError::bad_request(format!("wait: {e} (a duration such as 2s, at most 30s)"))
                })?;
                wait = Some(d.min(crate::cluster::MAX_WAIT));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; expected wait"
                )));
            }
        }
    }
    Ok(wait)
}

/// With a `wait`, adds `propagation` to the answer: which live nodes' indexes have the
/// consumer's change, waiting up to `wait` for all of them. A replayed answer waits for the
/// consumer's last change (the replayed one, or a later one).
pub(crate) async fn with_propagation(
    state: &AppState,
    r: &ConsumerRef,
    answer: Answer,
    wait: Option<Duration>,
) -> Result<Answer, ApiError> {
    let Some(wait) = wait else {
        return Ok(answer);
    };
    let seq = match &answer {
        Answer::Fresh { change_seq, .. } => *change_seq,
        Answer::Replayed(_) => state
            .store
            .get_consumer(r)
            .await?
            .map_or(0, |c| c.change_seq),
    };
    let propagation = crate::cluster::steps::wait_for(state, seq, wait).await;
    let value = serde_json::to_value(propagation).unwrap_or(serde_json::Value::Null);
    Ok(match answer {
        Answer::Fresh {
            mut body,
            effects,
            change_seq,
        } => {
            if let Some(obj) = body.as_object_mut() {
                obj.insert("propagation".into(), value);
            }
            Answer::Fresh {
                body,
                effects,
                change_seq,
            }
        }
        Answer::Replayed(mut replayed) => {
            if let Some(obj) = replayed.body.as_object_mut() {
                obj.insert("propagation".into(), value);
            }
            Answer::Replayed(replayed)
        }
    })
}

pub(crate) fn name_error(e: keyroll_core::NameError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

pub(crate) fn consumer_ref(env: &str, name: &str) -> Result<ConsumerRef, ApiError> {
    Ok(ConsumerRef {
        environment: Environment::parse(env).map_err(name_error)?,
        name: ConsumerName::parse(name).map_err(name_error)?,
    })
}

fn duration(field: &str, value: &str) -> Result<Duration, ApiError> {
    parse_duration(value).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

fn scopes(list: &[String]) -> Result<Vec<Scope>, ApiError> {
    list.iter()
        .map(|s| Scope::parse(s).map_err(name_error))
        .collect()
}

fn version_number(text: &str) -> Result<VersionNumber, ApiError> {
    VersionNumber::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid version {text:?}: expected v1, v2, … or 1, 2, …"
        ))
    })
}

/// Refuses free text that holds a keyroll key (`kr_<env>_…` with a valid checksum) or an admin
/// token (`kra_…`): pasted by mistake, it would be stored, logged and returned. The detail never
/// echoes the value.
pub(crate) fn no_secret_in(field: &str, value: &str) -> Result<(), ApiError> {
    let bytes = value.as_bytes();
    let token_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    for start in 0..bytes.len() {
        if bytes[start] != b'k' || (start > 0 && token_char(&bytes[start - 1])) {
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|b| !token_char(b))
            .map_or(bytes.len(), |n| start + n);
        let run = &value[start..end];
        let what = if run.starts_with("kra_") && crate::admin_token::parse(run).is_some() {
            "an admin token (kra_…)"
        } else if keyroll_core::parse_key(run.as_bytes()).is_ok() {
            "a keyroll key (kr_<env>_… with a valid checksum)"
        } else {
            continue;
        };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "secret_in_text",
            format!(
                "{field} contains {what}; secrets are never stored in free text (the value is \
                 not repeated here). Remove it, and treat that secret as exposed: revoke or \
                 rotate it"
            ),
        ));
    }
    Ok(())
}

/// A hard expiry from a request: in the future, or refused.
fn expiry(field: &str, value: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = value else { return Ok(None) };
    let d = duration(field, text)?;
    if d.is_zero() {
        return Err(ApiError::bad_request(format!(
            "{field}: must be longer than 0; a key that expires when it is issued would never \
             work (leave it out for no expiry)"
        )));
    }
    Ok(Some(d))
}

fn owner(value: Option<&str>) -> Result<Option<String>, ApiError> {
    if let Some(o) = value {
        no_secret_in("owner", o)?;
    }
    match value {
        None => Ok(None),
        Some("") => Ok(None),
        Some(o) if o.chars().count() <= 200 && !o.chars().any(char::is_control) => {
            Ok(Some(o.into()))
        }
        Some(_) => Err(ApiError::bad_request(
            "owner must be at most 200 characters without control characters",
        )),
    }
}

/// The policy fields a request names, each validated with a precise message.
#[derive(Debug, Clone, Copy, Default)]
struct PolicyFields {
    retire: Option<RetirePolicy>,
    idle: Option<Duration>,
    on_stall: Option<OnStall>,
}

impl PolicyFields {
    fn parse(
        retire: Option<&str>,
        idle: Option<&str>,
        on_stall: Option<&str>,
    ) -> Result<PolicyFields, ApiError> {
        let retire = retire
            .map(|r| {
                RetirePolicy::parse(r).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "retire: {r:?} is not a retire policy; expected when-idle or at-deadline"
                    ))
                })
            })
            .transpose()?;
        let idle = idle.map(|i| duration("idle", i)).transpose()?;
        if idle.is_some_and(|i| i.is_zero()) {
            return Err(ApiError::bad_request("idle: must be longer than 0"));
        }
        let on_stall = on_stall
            .map(|o| {
                OnStall::parse(o).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "on_stall: {o:?} is not accepted; expected extend or retire"
                    ))
                })
            })
            .transpose()?;
        Ok(PolicyFields {
            retire,
            idle,
            on_stall,
        })
    }

    fn is_empty(&self) -> bool {
        self.retire.is_none() && self.idle.is_none() && self.on_stall.is_none()
    }

    /// `base` with the named fields replaced.
    fn apply(self, base: Policy) -> Policy {
        Policy {
            retire: self.retire.unwrap_or(base.retire),
            idle: self.idle.unwrap_or(base.idle),
            on_stall: self.on_stall.unwrap_or(base.on_stall),
        }
    }
}

/// The schedule fields a request names: `Some(None)` clears a duration.
#[derive(Debug, Clone, Copy, Default)]
struct ScheduleFields {
    rotate_every: Option<Option<Duration>>,
    grace: Option<Option<Duration>>,
    delivery: Option<Delivery>,
}

impl ScheduleFields {
    fn parse(
        rotate_every: Option<Option<&str>>,
        grace: Option<Option<&str>>,
        delivery: Option<&str>,
    ) -> Result<ScheduleFields, ApiError> {
        let positive = |field: &str, text: &str| {
            let d = duration(field, text)?;
            if d.is_zero() {
                return Err(ApiError::bad_request(format!(
                    "{field}: must be longer than 0 (leave it out, or send null, for none)"
                )));
            }
            Ok(d)
        };
        let rotate_every = rotate_every
            .map(|v| v.map(|t| positive("rotate_every", t)).transpose())
            .transpose()?;
        let grace = grace
            .map(|v| v.map(|t| positive("grace", t)).transpose())
            .transpose()?;
        let delivery = delivery
            .map(|d| {
                Delivery::parse(d).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "delivery: {d:?} is not a delivery path; expected agent, ci or manual"
                    ))
                })
            })
            .transpose()?;
        Ok(ScheduleFields {
            rotate_every,
            grace,
            delivery,
        })
    }

    fn is_empty(&self) -> bool {
        self.rotate_every.is_none() && self.grace.is_none() && self.delivery.is_none()
    }

    /// `base` with the named fields replaced; the grace of a scheduled rotation must end before
    /// the next one falls due, or every rotation would start inside the previous one's window.
    fn apply(self, base: Schedule) -> Result<Schedule, ApiError> {
        let s = Schedule {
            rotate_every: self.rotate_every.unwrap_or(base.rotate_every),
            grace: self.grace.unwrap_or(base.grace),
            delivery: self.delivery.unwrap_or(base.delivery),
        };
        if let Some(every) = s.rotate_every
            && s.grace_or_default() >= every
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_schedule",
                format!(
                    "grace ({}) must be shorter than rotate_every ({}): the old key must retire \
                     before the next rotation falls due",
                    keyroll_core::format_duration(s.grace_or_default()),
                    keyroll_core::format_duration(every)
                ),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Randomness;

    #[test]
    fn finds_pasted_tokens_and_keys_and_never_repeats_them() {
        let (plain, _) = crate::admin_token::generate(
            "t",
            &["admin"],
            keyroll_core::Timestamp::EPOCH,
            &mut Randomness::os().entropy(),
        )
        .unwrap();
        let e = no_secret_in("reason", &format!("leaked: {plain}.")).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "secret_in_text")
        );
        assert!(!e.detail.contains(&plain));
        assert!(no_secret_in("reason", "laptop lost").is_ok());
        let key = keyroll_core::issue_key(
            &Environment::parse("prod").unwrap(),
            &mut Randomness::os().entropy(),
        )
        .unwrap();
        let e = no_secret_in("owner", &format!("team={}", key.reveal())).unwrap_err();
        assert!(!e.detail.contains(key.reveal()));
    }
}
