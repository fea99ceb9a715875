//! Column values to core types and back, shared by every backend so that they store alike and
//! reject the same damage alike.
//!
//! Reading validates: a row edited by hand (or by a newer keyroll) becomes a
//! [`StoreError::Corrupt`] that names the row, the column and what is wrong with it, never a
//! panic and never a core value that breaks its own invariants. `place` closures name the row;
//! they only run when something is wrong, so the happy path of `load_all` formats nothing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use keyroll_core::{
    Consumer, ConsumerName, Delivery, Environment, Fingerprint, KeyVersion, Kid, ManagedSpec,
    OnStall, Policy, RetirePolicy, Schedule, Scope, SecretHash, StoredState, Timestamp,
    VersionNumber,
};
use serde_json::{Value, json};

use crate::{AuditRecord, EventRecord, StoreError, StoredConsumer};

/// The columns of a consumer, in the order [`ConsumerColumns`] is read from.
macro_rules! consumer_columns {
    () => {
        "id, environment, name, scopes, owner, disabled, revision, created_at, retire_policy, \
         idle_ms, on_stall, rotate_every_ms, rotation_grace_ms, delivery, managed_spec, change_seq"
    };
}
pub(crate) use consumer_columns;

/// The columns of a key version, in the order [`VersionColumns`] is read from.
macro_rules! version_columns {
    () => {
        "consumer_id, version, kid, secret_hash, fingerprint, state, created_at, deadline, \
         expires_at, retired_at, revoked_at, revoke_reason, replaced_by, enforced, grace_ms, \
         extended, unused_reported, due_raised, expiry_warned, rotation_requested_ms"
    };
}
pub(crate) use version_columns;

/// A `consumers` row as a driver hands it over, before validation.
pub(crate) struct ConsumerColumns<'r> {
    pub id: i64,
    pub environment: &'r str,
    pub name: &'r str,
    pub scopes: &'r str,
    pub owner: Option<&'r str>,
    pub disabled: bool,
    pub revision: i64,
    pub created_at: i64,
    pub retire_policy: &'r str,
    pub idle_ms: i64,
    pub on_stall: &'r str,
    pub rotate_every_ms: Option<i64>,
    pub rotation_grace_ms: Option<i64>,
    pub delivery: &'r str,
    pub managed_spec: Option<&'r str>,
    pub change_seq: i64,
}

/// Names a consumers row in `Corrupt` messages.
pub(crate) fn consumer_place(id: i64) -> impl Fn() -> String {
    move || format!("consumers row (id {id})")
}

impl ConsumerColumns<'_> {
    /// Validates the row into a consumer without versions.
    pub(crate) fn validate(self, place: Place<'_>) -> Result<StoredConsumer, StoreError> {
        Ok(StoredConsumer {
            id: self.id,
            revision: self.revision,
            change_seq: self.change_seq,
            consumer: Consumer {
                environment: environment(self.environment, "environment", place)?,
                name: consumer_name(self.name, place)?,
                scopes: scopes(self.scopes, place)?,
                owner: self.owner.map(str::to_owned),
                disabled: self.disabled,
                created_at: Timestamp::from_unix_millis(self.created_at),
                policy: Policy {
                    retire: retire_policy(self.retire_policy, place)?,
                    idle: duration(self.idle_ms, "idle_ms", place)?,
                    on_stall: on_stall(self.on_stall, place)?,
                },
                schedule: Schedule {
                    rotate_every: self
                        .rotate_every_ms
                        .map(|v| duration(v, "rotate_every_ms", place))
                        .transpose()?,
                    grace: self
                        .rotation_grace_ms
                        .map(|v| duration(v, "rotation_grace_ms", place))
                        .transpose()?,
                    delivery: delivery(self.delivery, "delivery", place)?,
                },
                managed: self
                    .managed_spec
                    .map(|text| managed_spec(text, place))
                    .transpose()?,
                versions: Vec::new(),
            },
        })
    }
}

/// The time a consumer change is logged at: its latest audit entry or event (the store reads no
/// clock); `None` means the consumer's `updated_at`.
pub(crate) fn change_time(audit: &[AuditRecord], events: &[EventRecord]) -> Option<Timestamp> {
    let audited = audit.iter().map(|a| a.at);
    audited.chain(events.iter().map(|e| e.at)).max()
}

/// A `key_versions` row as a driver hands it over, before validation.
pub(crate) struct VersionColumns<'r> {
    pub consumer_id: i64,
    pub version: i64,
    pub kid: &'r str,
    pub secret_hash: &'r [u8],
    pub fingerprint: &'r [u8],
    pub state: &'r str,
    pub created_at: i64,
    pub deadline: Option<i64>,
    pub expires_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<&'r str>,
    pub replaced_by: Option<i64>,
    pub enforced: bool,
    pub grace_ms: i64,
    pub extended: bool,
    pub unused_reported: bool,
    pub due_raised: bool,
    pub expiry_warned: bool,
    pub rotation_requested_ms: Option<i64>,
}

/// Names a key_versions row in `Corrupt` messages.
pub(crate) fn version_place(consumer_id: i64, version: i64) -> impl Fn() -> String {
    move || format!("key_versions row (consumer_id {consumer_id}, version {version})")
}

impl VersionColumns<'_> {
    /// Validates the row into a version and the id of its consumer.
    pub(crate) fn validate(self, place: Place<'_>) -> Result<(i64, KeyVersion), StoreError> {
        let time = |ms: Option<i64>| ms.map(Timestamp::from_unix_millis);
        let version = KeyVersion {
            number: version_number(self.version, "version", place)?,
            kid: kid(self.kid, place)?,
            secret_hash: secret_hash(self.secret_hash, place)?,
            fingerprint: fingerprint(self.fingerprint, place)?,
            state: stored_state(self.state, place)?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            deadline: time(self.deadline),
            expires_at: time(self.expires_at),
            retired_at: time(self.retired_at),
            revoked_at: time(self.revoked_at),
            revoke_reason: self.revoke_reason.map(str::to_owned),
            replaced_by: self
                .replaced_by
                .map(|n| version_number(n, "replaced_by", place))
                .transpose()?,
            enforced: self.enforced,
            grace: duration(self.grace_ms, "grace_ms", place)?,
            extended: self.extended,
            unused_reported: self.unused_reported,
            due_raised: self.due_raised,
            expiry_warned: self.expiry_warned,
            rotation_requested: time(self.rotation_requested_ms),
        };
        Ok((self.consumer_id, version))
    }
}

/// Puts versions into their consumers. Consumers come first; versions then arrive grouped by
/// consumer (`ORDER BY consumer_id, version`), so the id map is consulted once per consumer,
/// not once per version: with a million versions at start, this is the loop that matters.
#[derive(Default)]
pub(crate) struct Assembly {
    consumers: Vec<StoredConsumer>,
    position: HashMap<i64, usize>,
    current: Option<(i64, usize)>,
}

impl Assembly {
    /// Adds a consumer, in the order they are to be returned.
    pub(crate) fn consumer(&mut self, consumer: StoredConsumer) {
        self.position.insert(consumer.id, self.consumers.len());
        self.consumers.push(consumer);
    }

    /// Adds a version to its consumer; `Corrupt` if no consumer was added with that id.
    pub(crate) fn version(
        &mut self,
        consumer_id: i64,
        version: KeyVersion,
    ) -> Result<(), StoreError> {
        let index = match self.current {
            Some((id, index)) if id == consumer_id => index,
            _ => {
                let index = *self.position.get(&consumer_id).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "key_versions row (consumer_id {consumer_id}, version {}) belongs to no \
                         consumer",
                        version.number.0
                    ))
                })?;
                self.current = Some((consumer_id, index));
                index
            }
        };
        if let Some(slot) = self.consumers.get_mut(index) {
            slot.consumer.versions.push(version);
        }
        Ok(())
    }

    /// The consumers with their versions.
    pub(crate) fn finish(self) -> Vec<StoredConsumer> {
        self.consumers
    }
}

/// Names the row being read, e.g. `key_versions row (consumer_id 3, version 2)`.
pub(crate) type Place<'a> = &'a dyn Fn() -> String;

/// A `Corrupt` error for `column` of the row at `place`.
pub(crate) fn corrupt(place: Place<'_>, column: &str, problem: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{}: column {column}: {problem}", place()))
}

/// Reads an environment name.
pub(crate) fn environment(
    value: &str,
    column: &str,
    place: Place<'_>,
) -> Result<Environment, StoreError> {
    Environment::parse(value).map_err(|e| corrupt(place, column, e))
}

/// Reads a consumer name.
pub(crate) fn consumer_name(value: &str, place: Place<'_>) -> Result<ConsumerName, StoreError> {
    ConsumerName::parse(value).map_err(|e| corrupt(place, "name", e))
}

/// Writes consumer scopes: space-separated (the scope grammar has no whitespace), in the
/// consumer's order, which is sorted.
pub(crate) fn join_scopes(scopes: &[Scope]) -> String {
    let mut out = String::with_capacity(scopes.iter().map(|s| s.as_str().len() + 1).sum());
    for scope in scopes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(scope.as_str());
    }
    out
}

/// Reads consumer scopes, restoring `Consumer`'s invariant (sorted, no duplicates) should a
/// manual edit have broken it.
pub(crate) fn scopes(value: &str, place: Place<'_>) -> Result<Vec<Scope>, StoreError> {
    let mut scopes = value
        .split_ascii_whitespace()
        .map(|s| Scope::parse(s).map_err(|e| corrupt(place, "scopes", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if !scopes.is_sorted() {
        scopes.sort();
    }
    scopes.dedup();
    Ok(scopes)
}

/// Writes admin-token scopes. They are free-form strings, so one with whitespace (or an empty
/// one) could not be read back from a space-separated column: refuse it rather than store
/// something that reads back different.
pub(crate) fn join_admin_scopes(token_id: &str, scopes: &[String]) -> Result<String, StoreError> {
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        return Err(StoreError::Corrupt(format!(
            "refusing to store admin token {token_id}: scope {bad:?} is empty or contains \
             whitespace, which the space-separated scopes column cannot hold"
        )));
    }
    Ok(scopes.join(" "))
}

/// Reads admin-token scopes.
pub(crate) fn admin_scopes(value: &str) -> Vec<String> {
    value.split_ascii_whitespace().map(str::to_owned).collect()
}

/// Reads a version number (`version`, `replaced_by`).
pub(crate) fn version_number(
    value: i64,
    column: &str,
    place: Place<'_>,
) -> Result<VersionNumber, StoreError> {
    u32::try_from(value)
        .ok()
        .filter(|n| *n > 0)
        .map(VersionNumber)
        .ok_or_else(|| {
            corrupt(
                place,
                column,
                format_args!("{value} is not a version number (1 to 2^32-1)"),
            )
        })
}

/// Writes a version number.
pub(crate) fn version_value(number: VersionNumber) -> i64 {
    i64::from(number.0)
}

/// Reads a kid.
pub(crate) fn kid(value: &str, place: Place<'_>) -> Result<Kid, StoreError> {
    Kid::parse(value).ok_or_else(|| {
        let shown: String = value.chars().take(40).collect();
        corrupt(
            place,
            "kid",
            format_args!("{shown:?} is not 12 base62 characters"),
        )
    })
}

/// Reads a SHA-256 digest.
pub(crate) fn secret_hash(value: &[u8], place: Place<'_>) -> Result<SecretHash, StoreError> {
    <[u8; 32]>::try_from(value).map(SecretHash).map_err(|_| {
        corrupt(
            place,
            "secret_hash",
            format_args!("{} bytes where a SHA-256 digest has 32", value.len()),
        )
    })
}

/// Reads a fingerprint.
pub(crate) fn fingerprint(value: &[u8], place: Place<'_>) -> Result<Fingerprint, StoreError> {
    <[u8; 8]>::try_from(value).map(Fingerprint).map_err(|_| {
        corrupt(
            place,
            "fingerprint",
            format_args!("{} bytes where a fingerprint has 8", value.len()),
        )
    })
}

/// Reads a stored state.
pub(crate) fn stored_state(value: &str, place: Place<'_>) -> Result<StoredState, StoreError> {
    StoredState::parse(value).ok_or_else(|| {
        let shown: String = value.chars().take(40).collect();
        corrupt(
            place,
            "state",
            format_args!("{shown:?} is not one of active, retiring, retired, revoked"),
        )
    })
}

/// Reads a retirement policy.
pub(crate) fn retire_policy(value: &str, place: Place<'_>) -> Result<RetirePolicy, StoreError> {
    RetirePolicy::parse(value).ok_or_else(|| {
        let shown: String = value.chars().take(40).collect();
        corrupt(
            place,
            "retire_policy",
            format_args!("{shown:?} is not one of when-idle, at-deadline"),
        )
    })
}

/// Reads what a stall does.
pub(crate) fn on_stall(value: &str, place: Place<'_>) -> Result<OnStall, StoreError> {
    OnStall::parse(value).ok_or_else(|| {
        let shown: String = value.chars().take(40).collect();
        corrupt(
            place,
            "on_stall",
            format_args!("{shown:?} is not one of extend, retire"),
        )
    })
}

/// Reads a duration stored as whole milliseconds (`idle_ms`, `grace_ms`).
pub(crate) fn duration(value: i64, column: &str, place: Place<'_>) -> Result<Duration, StoreError> {
    u64::try_from(value)
        .map(Duration::from_millis)
        .map_err(|_| {
            corrupt(
                place,
                column,
                format_args!("{value} is a negative duration"),
            )
        })
}

/// Writes a duration as whole milliseconds. One that is not a whole number of milliseconds, or
/// too long for the column, would read back different: refuse it rather than store it.
pub(crate) fn duration_value(
    value: Duration,
    what: impl Fn() -> String,
) -> Result<i64, StoreError> {
    let ms = value.as_millis();
    match i64::try_from(ms) {
        Ok(stored) if Duration::from_millis(stored.unsigned_abs()) == value => Ok(stored),
        _ => Err(StoreError::Corrupt(format!(
            "refusing to store {}: {value:?} is not a whole number of milliseconds up to 2^63-1",
            what()
        ))),
    }
}

/// Writes a count (of requests): saturating, as no column can hold more than `i64::MAX`.
pub(crate) fn count_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Writes the consumer's policy columns: `retire_policy`, `idle_ms`, `on_stall`.
pub(crate) fn policy_values(
    consumer: &Consumer,
) -> Result<(&'static str, i64, &'static str), StoreError> {
    let policy = &consumer.policy;
    let idle = duration_value(policy.idle, || {
        format!("the idle window of {}", consumer.reference())
    })?;
    Ok((policy.retire.as_str(), idle, policy.on_stall.as_str()))
}

/// The schedule columns of a consumer: `rotate_every_ms, rotation_grace_ms, delivery,
/// managed_spec`.
pub(crate) type ScheduleValues = (Option<i64>, Option<i64>, &'static str, Option<String>);

/// Writes a consumer's schedule and policy baseline.
pub(crate) fn schedule_values(consumer: &Consumer) -> Result<ScheduleValues, StoreError> {
    let ms = |d: Option<Duration>, what: &str| {
        d.map(|d| duration_value(d, || format!("the {what} of {}", consumer.reference())))
            .transpose()
    };
    let s = &consumer.schedule;
    Ok((
        ms(s.rotate_every, "rotation period")?,
        ms(s.grace, "rotation grace")?,
        s.delivery.as_str(),
        consumer
            .managed
            .as_ref()
            .map(|m| managed_spec_value(m, consumer))
            .transpose()?,
    ))
}

/// The policy baseline as JSON text: durations in milliseconds, names as text.
fn managed_spec_value(m: &ManagedSpec, consumer: &Consumer) -> Result<String, StoreError> {
    let ms = |d: Duration, what: &str| {
        duration_value(d, || {
            format!("the {what} of {}'s baseline", consumer.reference())
        })
    };
    let optional = |d: Option<Duration>, what: &str| d.map(|d| ms(d, what)).transpose();
    Ok(json!({
        "scopes": m.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
        "owner": m.owner,
        "retire": m.policy.retire.as_str(),
        "idle_ms": ms(m.policy.idle, "idle window")?,
        "on_stall": m.policy.on_stall.as_str(),
        "rotate_every_ms": optional(m.schedule.rotate_every, "rotation period")?,
        "grace_ms": optional(m.schedule.grace, "rotation grace")?,
        "delivery": m.schedule.delivery.as_str(),
    })
    .to_string())
}

/// Reads the policy baseline written by [`schedule_values`].
fn managed_spec(text: &str, place: Place<'_>) -> Result<ManagedSpec, StoreError> {
    const COLUMN: &str = "managed_spec";
    let bad = |what: &str| corrupt(place, COLUMN, format_args!("{what}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let text_of = |key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{key} is missing or not text")))
    };
    let ms_of = |key: &str| -> Result<Option<Duration>, StoreError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .map(|n| Some(Duration::from_millis(n)))
                .ok_or_else(|| bad(&format!("{key} is not a number of milliseconds"))),
        }
    };
    let scopes = v
        .get("scopes")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("scopes is missing"))?
        .iter()
        .map(|s| {
            s.as_str()
                .and_then(|s| Scope::parse(s).ok())
                .ok_or_else(|| bad("a scope is not a valid scope"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ManagedSpec {
        scopes,
        owner: v.get("owner").and_then(Value::as_str).map(str::to_owned),
        policy: Policy {
            retire: retire_policy(text_of("retire")?, place)?,
            idle: ms_of("idle_ms")?.ok_or_else(|| bad("idle_ms is missing"))?,
            on_stall: on_stall(text_of("on_stall")?, place)?,
        },
        schedule: Schedule {
            rotate_every: ms_of("rotate_every_ms")?,
            grace: ms_of("grace_ms")?,
            delivery: delivery(text_of("delivery")?, COLUMN, place)?,
        },
    })
}

/// Reads a delivery path.
pub(crate) fn delivery(
    value: &str,
    column: &str,
    place: Place<'_>,
) -> Result<Delivery, StoreError> {
    Delivery::parse(value).ok_or_else(|| {
        corrupt(
            place,
            column,
            format_args!("{value:?} is not agent, ci or manual"),
        )
    })
}

/// Reads an HTTP status.
pub(crate) fn http_status(value: i64, place: Place<'_>) -> Result<u16, StoreError> {
    u16::try_from(value).map_err(|_| {
        corrupt(
            place,
            "status",
            format_args!("{value} is not an HTTP status"),
        )
    })
}

/// Reads a stored counter (requests of an hour or a source).
pub(crate) fn counter(value: i64, column: &str, place: Place<'_>) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(place, column, format_args!("negative: {value}")))
}

/// Reads an event's version (SQL NULL for an event about the whole consumer).
pub(crate) fn event_version(
    value: Option<i64>,
    place: Place<'_>,
) -> Result<Option<u32>, StoreError> {
    value
        .map(|n| version_number(n, "version", place).map(|v| v.0))
        .transpose()
}

/// Reads a `version_usage` row.
pub(crate) fn last_used(kid_value: &str, at: i64) -> Result<(Kid, Timestamp), StoreError> {
    let place = || "version_usage row".to_owned();
    Ok((kid(kid_value, &place)?, Timestamp::from_unix_millis(at)))
}

/// Reads a row count.
pub(crate) fn count(value: i64, place: Place<'_>) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(place, "count(*)", format_args!("negative: {value}")))
}

/// The wall clock, for the probe row and the installation row (the store otherwise takes times
/// from its callers): values nothing decides on. 0 when the clock is before 1970.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// A duration as whole milliseconds, saturating (a lease ttl, a look-back).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An optional time as its column value.
pub(crate) fn ms(t: Option<Timestamp>) -> Option<i64> {
    t.map(|t| t.unix_millis())
}

/// A webhook endpoint's event types as their column value (a JSON list).
pub(crate) fn events_json(events: &[String]) -> String {
    Value::from(events.to_vec()).to_string()
}

/// What the audit chain hashes of entry `e` at position `seq`.
pub(crate) fn chain_entry(seq: i64, e: &AuditRecord) -> keyroll_core::audit_chain::ChainEntry<'_> {
    keyroll_core::audit_chain::ChainEntry {
        seq,
        at: e.at,
        actor: &e.actor,
        action: &e.action,
        target: &e.target,
        detail: &e.detail,
        request_id: e.request_id.as_deref(),
        remote_addr: e.remote_addr.as_deref(),
    }
}

/// The usage of a version nobody used (or that is unknown): asked for, so answered.
pub(crate) fn unused(kid: Kid) -> crate::VersionUsage {
    crate::VersionUsage {
        kid,
        last_used_at: None,
        hourly: Vec::new(),
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn here() -> String {
        "t row 1".to_owned()
    }

    #[test]
    fn scopes_round_trip_and_are_normalised() {
        let parsed = scopes("b:write a:read a:read", &here).unwrap();
        let texts: Vec<&str> = parsed.iter().map(Scope::as_str).collect();
        assert_eq!(texts, ["a:read", "b:write"]);
        assert_eq!(join_scopes(&parsed), "a:read b:write");
        assert!(scopes("", &here).unwrap().is_empty());
        assert_eq!(join_scopes(&[]), "");
    }

    #[test]
    fn damage_is_named() {
        let err = kid("short", &here).unwrap_err().to_string();
        assert!(
            err.contains("t row 1: column kid") && err.contains("\"short\""),
            "{err}"
        );
        let err = secret_hash(&[0; 31], &here).unwrap_err().to_string();
        assert!(err.contains("31 bytes"), "{err}");
        let err = version_number(0, "version", &here).unwrap_err().to_string();
        assert!(err.contains("column version: 0"), "{err}");
        let err = stored_state("expired", &here).unwrap_err().to_string();
        assert!(err.contains("\"expired\""), "{err}");
        let err = scopes("ok bad\u{0}scope", &here).unwrap_err().to_string();
        assert!(err.contains("column scopes"), "{err}");
        assert!(join_admin_scopes("t1", &["a b".to_owned()]).is_err());
        assert!(join_admin_scopes("t1", &[String::new()]).is_err());
        assert_eq!(
            join_admin_scopes("t1", &["a".into(), "b".into()]).unwrap(),
            "a b"
        );
    }
}
