//! sqlx rows to store records, for every table, in one place (PostgreSQL).
//!
//! Each function takes the columns in the order of the query that produced the row (named in
//! its documentation) and validates through [`rows`], the conversions shared with every
//! backend: a row edited by hand or by a newer keyroll becomes `Corrupt` naming the row and the
//! column, never a panic. The same functions serve the bulk reads of [`load`](super::load).
//!
//! PostgreSQL's types are strict where SQLite's are not: `BIGINT` columns are read as `i64`,
//! `BOOLEAN` as `bool`, `BYTEA` as bytes, and the few `INTEGER` columns (HTTP statuses, attempt
//! numbers) as `i32` and widened.

use keyroll_core::audit_chain::ChainHash;
use keyroll_core::{KeyVersion, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};

use crate::rows::{self, Place};
use crate::{
    AdminTokenEntry, AdminTokenRecord, AuditRecord, ChainedAudit, ChangeRecord, EnvironmentRecord,
    EventRecord, IdempotencyRecord, Installation, Lease, NodeRecord, SourceSeen, StoreError,
    StoredConsumer,
};

/// Reads column `index`, turning a type mismatch into `Corrupt` naming the column.
pub(super) fn get<'r, T>(row: &'r PgRow, index: usize, place: Place<'_>) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(index).map_err(|e| {
        let column = row.columns().get(index).map_or("?", sqlx::Column::name);
        rows::corrupt(place, column, e)
    })
}

/// A consumer row (columns as in [`rows::consumer_columns`]) with no versions
/// yet.
pub(super) fn consumer_from_row(row: &PgRow) -> Result<StoredConsumer, StoreError> {
    let id: i64 = get(row, 0, &|| "consumers row".to_owned())?;
    let place = rows::consumer_place(id);
    let place: Place<'_> = &place;
    let columns = rows::ConsumerColumns {
        id,
        environment: get(row, 1, place)?,
        name: get(row, 2, place)?,
        scopes: get(row, 3, place)?,
        owner: get(row, 4, place)?,
        disabled: get(row, 5, place)?,
        revision: get(row, 6, place)?,
        created_at: get(row, 7, place)?,
        retire_policy: get(row, 8, place)?,
        idle_ms: get(row, 9, place)?,
        on_stall: get(row, 10, place)?,
        rotate_every_ms: get(row, 11, place)?,
        rotation_grace_ms: get(row, 12, place)?,
        delivery: get(row, 13, place)?,
        managed_spec: get(row, 14, place)?,
        change_seq: get(row, 15, place)?,
    };
    columns.validate(place)
}

/// A version row (columns as in [`rows::version_columns`]) and the consumer
/// it belongs to.
pub(super) fn version_from_row(row: &PgRow) -> Result<(i64, KeyVersion), StoreError> {
    let table = || "key_versions row".to_owned();
    let consumer_id: i64 = get(row, 0, &table)?;
    let version: i64 = get(row, 1, &table)?;
    let place = rows::version_place(consumer_id, version);
    let place: Place<'_> = &place;
    let columns = rows::VersionColumns {
        consumer_id,
        version,
        kid: get(row, 2, place)?,
        secret_hash: get(row, 3, place)?,
        fingerprint: get(row, 4, place)?,
        state: get(row, 5, place)?,
        created_at: get(row, 6, place)?,
        deadline: get(row, 7, place)?,
        expires_at: get(row, 8, place)?,
        retired_at: get(row, 9, place)?,
        revoked_at: get(row, 10, place)?,
        revoke_reason: get(row, 11, place)?,
        replaced_by: get(row, 12, place)?,
        enforced: get(row, 13, place)?,
        grace_ms: get(row, 14, place)?,
        extended: get(row, 15, place)?,
        unused_reported: get(row, 16, place)?,
        due_raised: get(row, 17, place)?,
        expiry_warned: get(row, 18, place)?,
        rotation_requested_ms: get(row, 19, place)?,
    };
    columns.validate(place)
}

/// An `environments` row: `name, protected, created_at, rotate_after`.
pub(super) fn environment_from_row(row: &PgRow) -> Result<EnvironmentRecord, StoreError> {
    let table = || "environments row".to_owned();
    let name: &str = get(row, 0, &table)?;
    let place = || format!("environments row ({name:?})");
    let place: Place<'_> = &place;
    Ok(EnvironmentRecord {
        name: rows::environment(name, "name", place)?,
        protected: get(row, 1, place)?,
        created_at: Timestamp::from_unix_millis(get(row, 2, place)?),
        rotate_after: get::<Option<&str>>(row, 3, place)?
            .map(|e| rows::environment(e, "rotate_after", place))
            .transpose()?,
    })
}

/// An `audit_log` row: `seq, at, actor, action, target, detail, request_id, remote_addr,
/// prev_hash, hash`. A hash that is not 32 bytes (only a manual edit makes one) reads as none,
/// for verification to report rather than for the read to fail.
pub(super) fn chained_audit_from_row(row: &PgRow) -> Result<ChainedAudit, StoreError> {
    let table = || "audit_log row".to_owned();
    let seq: i64 = get(row, 0, &table)?;
    let place = || format!("audit_log row (seq {seq})");
    let place: Place<'_> = &place;
    let hash = |i| -> Result<Option<ChainHash>, StoreError> {
        let bytes: Option<Vec<u8>> = get(row, i, place)?;
        Ok(bytes.as_deref().and_then(ChainHash::from_slice))
    };
    Ok(ChainedAudit {
        entry: AuditRecord {
            seq,
            at: Timestamp::from_unix_millis(get(row, 1, place)?),
            actor: get(row, 2, place)?,
            action: get(row, 3, place)?,
            target: get(row, 4, place)?,
            detail: get(row, 5, place)?,
            request_id: get(row, 6, place)?,
            remote_addr: get(row, 7, place)?,
        },
        prev_hash: hash(8)?,
        hash: hash(9)?,
    })
}

/// An `events` row: `seq, at, kind, consumer, version, detail`.
pub(super) fn event_from_row(row: &PgRow) -> Result<EventRecord, StoreError> {
    let table = || "events row".to_owned();
    let seq: i64 = get(row, 0, &table)?;
    let place = || format!("events row (seq {seq})");
    let place: Place<'_> = &place;
    Ok(EventRecord {
        seq,
        at: Timestamp::from_unix_millis(get(row, 1, place)?),
        kind: get(row, 2, place)?,
        consumer: get(row, 3, place)?,
        version: rows::event_version(get(row, 4, place)?, place)?,
        detail: get(row, 5, place)?,
    })
}

/// An `idempotency_keys` row: `key, request_hash, status, response, created_at, sealed_key`;
/// `key` is the one looked up, to name the row.
pub(super) fn idempotency_from_row(
    row: &PgRow,
    key: &str,
) -> Result<IdempotencyRecord, StoreError> {
    let place = || format!("idempotency_keys row ({key:?})");
    let place: Place<'_> = &place;
    Ok(IdempotencyRecord {
        key: get(row, 0, place)?,
        request_hash: get(row, 1, place)?,
        status: rows::http_status(get::<i32>(row, 2, place)?.into(), place)?,
        response: get(row, 3, place)?,
        created_at: Timestamp::from_unix_millis(get(row, 4, place)?),
        sealed_key: get(row, 5, place)?,
    })
}

/// An `admin_tokens` row without its lifecycle: `id, secret_hash, name, scopes, created_at`;
/// `id` is the one looked up, to name the row.
pub(super) fn admin_token_from_row(row: &PgRow, id: &str) -> Result<AdminTokenRecord, StoreError> {
    let place = || format!("admin_tokens row ({id:?})");
    let place: Place<'_> = &place;
    Ok(AdminTokenRecord {
        id: get(row, 0, place)?,
        secret_hash: rows::secret_hash(get(row, 1, place)?, place)?,
        name: get(row, 2, place)?,
        scopes: rows::admin_scopes(get(row, 3, place)?),
        created_at: Timestamp::from_unix_millis(get(row, 4, place)?),
    })
}

/// An `admin_tokens` row with its lifecycle (columns as in
/// [`tokens::COLUMNS`](super::tokens)).
pub(super) fn admin_token_entry_from_row(row: &PgRow) -> Result<AdminTokenEntry, StoreError> {
    let id: String = get(row, 0, &|| "admin_tokens row".to_owned())?;
    let place = || format!("admin_tokens row ({id:?})");
    let place: Place<'_> = &place;
    let time = |v: Option<i64>| v.map(Timestamp::from_unix_millis);
    let hash: Vec<u8> = get(row, 1, place)?;
    let scopes: String = get(row, 3, place)?;
    Ok(AdminTokenEntry {
        token: AdminTokenRecord {
            id: id.clone(),
            secret_hash: rows::secret_hash(&hash, place)?,
            name: get(row, 2, place)?,
            scopes: rows::admin_scopes(&scopes),
            created_at: Timestamp::from_unix_millis(get(row, 4, place)?),
        },
        created_by: get(row, 5, place)?,
        expires_at: time(get(row, 6, place)?),
        revoked_at: time(get(row, 7, place)?),
        revoke_reason: get(row, 8, place)?,
        replaced_by: get(row, 9, place)?,
        retires_at: time(get(row, 10, place)?),
    })
}

/// The `installation` row with its emptiness: `id, created_at, empty`.
pub(super) fn installation_from_row(row: &PgRow) -> Result<Installation, StoreError> {
    let place = || "installation row".to_owned();
    let place: Place<'_> = &place;
    Ok(Installation {
        id: get(row, 0, place)?,
        created_at: Timestamp::from_unix_millis(get(row, 1, place)?),
        empty: get(row, 2, place)?,
    })
}

/// A `version_usage` row of a usage read: `kid, last_used_at`.
pub(super) fn usage_last_used_from_row(row: &PgRow) -> Result<(&str, Timestamp), StoreError> {
    let table = || "version_usage row".to_owned();
    let kid: &str = get(row, 0, &table)?;
    let place = || format!("version_usage row (kid {kid})");
    let at: i64 = get(row, 1, &place)?;
    Ok((kid, Timestamp::from_unix_millis(at)))
}

/// A `usage_hourly` row: `kid, hour, count`.
pub(super) fn usage_hourly_from_row(row: &PgRow) -> Result<(&str, Timestamp, u64), StoreError> {
    let table = || "usage_hourly row".to_owned();
    let kid: &str = get(row, 0, &table)?;
    let hour: i64 = get(row, 1, &table)?;
    let place = || format!("usage_hourly row (kid {kid}, hour {hour})");
    let count = rows::counter(get(row, 2, &place)?, "count", &place)?;
    Ok((kid, Timestamp::from_unix_millis(hour), count))
}

/// A `usage_sources` row: `kid, address, user_agent, client_id, first_seen, last_seen, count`.
pub(super) fn usage_source_from_row(row: &PgRow) -> Result<(&str, SourceSeen), StoreError> {
    let table = || "usage_sources row".to_owned();
    let kid: &str = get(row, 0, &table)?;
    let place = || format!("usage_sources row (kid {kid})");
    let place: Place<'_> = &place;
    let client_id: String = get(row, 3, place)?;
    let source = SourceSeen {
        address: get(row, 1, place)?,
        user_agent: get(row, 2, place)?,
        client_id: (!client_id.is_empty()).then_some(client_id),
        first_seen: Timestamp::from_unix_millis(get(row, 4, place)?),
        last_seen: Timestamp::from_unix_millis(get(row, 5, place)?),
        count: rows::counter(get(row, 6, place)?, "count", place)?,
    };
    Ok((kid, source))
}

/// A `webhook_endpoints` row: `id, url, events, description, sealed_secret,
/// sealed_previous_secret, previous_secret_until, created_at, disabled_at, disabled_reason`.
pub(super) fn webhook_endpoint_from_row(row: &PgRow) -> Result<crate::WebhookEndpoint, StoreError> {
    let id: String = get(row, 0, &|| "webhook_endpoints row".to_owned())?;
    let place = || format!("webhook_endpoints row ({id:?})");
    let place: Place<'_> = &place;
    let events: String = get(row, 2, place)?;
    let events: Vec<String> =
        serde_json::from_str(&events).map_err(|e| rows::corrupt(place, "events", e))?;
    let previous: Option<Vec<u8>> = get(row, 5, place)?;
    let until: Option<i64> = get(row, 6, place)?;
    let disabled_at: Option<i64> = get(row, 8, place)?;
    let reason: Option<String> = get(row, 9, place)?;
    Ok(crate::WebhookEndpoint {
        url: get(row, 1, place)?,
        events,
        description: get(row, 3, place)?,
        sealed_secret: get(row, 4, place)?,
        previous_secret: previous
            .zip(until)
            .map(|(s, t)| (s, Timestamp::from_unix_millis(t))),
        created_at: Timestamp::from_unix_millis(get(row, 7, place)?),
        disabled: disabled_at.map(|t| (Timestamp::from_unix_millis(t), reason.unwrap_or_default())),
        id,
    })
}

/// A `webhook_deliveries` row: `id, endpoint_id, event_seq, msg_id, state, attempts,
/// next_attempt_at, last_status, last_error, created_at, delivered_at`.
pub(super) fn webhook_delivery_from_row(row: &PgRow) -> Result<crate::WebhookDelivery, StoreError> {
    let id: String = get(row, 0, &|| "webhook_deliveries row".to_owned())?;
    let place = || format!("webhook_deliveries row ({id:?})");
    let place: Place<'_> = &place;
    let state: String = get(row, 4, place)?;
    let state = crate::DeliveryState::parse(&state)
        .ok_or_else(|| rows::corrupt(place, "state", format!("unknown state {state:?}")))?;
    let attempts: i32 = get(row, 5, place)?;
    let last_status: Option<i32> = get(row, 7, place)?;
    Ok(crate::WebhookDelivery {
        endpoint_id: get(row, 1, place)?,
        event_seq: get(row, 2, place)?,
        msg_id: get(row, 3, place)?,
        state,
        attempts: u32::try_from(attempts).map_err(|e| rows::corrupt(place, "attempts", e))?,
        next_attempt_at: get::<Option<i64>>(row, 6, place)?.map(Timestamp::from_unix_millis),
        last_status: last_status
            .map(|s| rows::http_status(s.into(), place))
            .transpose()?,
        last_error: get(row, 8, place)?,
        created_at: Timestamp::from_unix_millis(get(row, 9, place)?),
        delivered_at: get::<Option<i64>>(row, 10, place)?.map(Timestamp::from_unix_millis),
        id,
    })
}

/// A `webhook_attempts` row: `delivery_id, n, at, status, duration_ms, error, retry_after_ms`.
pub(super) fn webhook_attempt_from_row(row: &PgRow) -> Result<crate::WebhookAttempt, StoreError> {
    let delivery_id: String = get(row, 0, &|| "webhook_attempts row".to_owned())?;
    let n: i32 = get(row, 1, &|| "webhook_attempts row".to_owned())?;
    let place = || format!("webhook_attempts row ({delivery_id:?}, {n})");
    let place: Place<'_> = &place;
    let status: Option<i32> = get(row, 3, place)?;
    let duration: i64 = get(row, 4, place)?;
    let retry_after: Option<i64> = get(row, 6, place)?;
    Ok(crate::WebhookAttempt {
        n: u32::try_from(n).map_err(|e| rows::corrupt(place, "n", e))?,
        at: Timestamp::from_unix_millis(get(row, 2, place)?),
        status: status
            .map(|s| rows::http_status(s.into(), place))
            .transpose()?,
        duration_ms: rows::counter(duration, "duration_ms", place)?,
        error: get(row, 5, place)?,
        retry_after_ms: retry_after
            .map(|r| rows::counter(r, "retry_after_ms", place))
            .transpose()?,
        delivery_id,
    })
}

/// A `changes` row: `seq, consumer_id, at, kind`.
pub(super) fn change_from_row(row: &PgRow) -> Result<ChangeRecord, StoreError> {
    let table = || "changes row".to_owned();
    let seq: i64 = get(row, 0, &table)?;
    let place = || format!("changes row (seq {seq})");
    let kind: String = get(row, 3, &place)?;
    Ok(ChangeRecord {
        seq,
        kind: crate::ChangeKind::parse(&kind).ok_or_else(|| {
            rows::corrupt(&place, "kind", format!("unknown change kind {kind:?}"))
        })?,
        consumer_id: get(row, 1, &place)?,
        at: Timestamp::from_unix_millis(get(row, 2, &place)?),
    })
}

/// A `nodes` row: `node_id, address, version, started_at, heartbeat_at, applied_seq,
/// usage_flushed_at, leader`.
pub(super) fn node_from_row(row: &PgRow) -> Result<NodeRecord, StoreError> {
    let table = || "nodes row".to_owned();
    let node_id: String = get(row, 0, &table)?;
    let place = || format!("nodes row ({node_id})");
    let time = |index| -> Result<Timestamp, StoreError> {
        Ok(Timestamp::from_unix_millis(get(row, index, &place)?))
    };
    let usage_flushed_at: Option<i64> = get(row, 6, &place)?;
    Ok(NodeRecord {
        address: get(row, 1, &place)?,
        version: get(row, 2, &place)?,
        started_at: time(3)?,
        heartbeat_at: time(4)?,
        applied_seq: get(row, 5, &place)?,
        usage_flushed_at: usage_flushed_at.map(Timestamp::from_unix_millis),
        leader: get(row, 7, &place)?,
        node_id: node_id.clone(),
    })
}

/// A `leases` row: `name, holder, term, acquired_at, expires_at`.
pub(super) fn lease_from_row(row: &PgRow) -> Result<Lease, StoreError> {
    let table = || "leases row".to_owned();
    let name: String = get(row, 0, &table)?;
    let place = || format!("leases row ({name})");
    Ok(Lease {
        holder: get(row, 1, &place)?,
        term: get(row, 2, &place)?,
        acquired_at: Timestamp::from_unix_millis(get(row, 3, &place)?),
        expires_at: Timestamp::from_unix_millis(get(row, 4, &place)?),
        name: name.clone(),
    })
}
