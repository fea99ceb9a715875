//! Consumers and their key versions on PostgreSQL: the reads (one consumer, one environment's, all)
//! and the two lifecycle writes, `create_consumer` and `write_consumer`.
//!
//! Invariants:
//! - One lifecycle change = one transaction: the consumer's row, its versions, its audit
//!   entries, its events and its idempotency record commit together or not at all (audit and
//!   events in [`audit`](super::audit), the record in [`idempotency`](super::idempotency), on
//!   the same transaction).
//! - Optimistic concurrency: `write_consumer` updates the row only at the revision it was
//!   computed from; a write that matched nothing is explained as `Conflict` (the revision moved)
//!   or `NotFound` (no such id, or the id is another consumer's).
//! - Versions are never deleted, and a version's kid, secret hash, fingerprint and creation time
//!   never change: a write that lacks a version or changes its key material is refused as
//!   `Corrupt`, since it was computed from a partial read or would silently swap a key.
//! - At most one active version per consumer (a unique index): demoted versions are written
//!   first, so the index holds after every statement.
//! - A read of consumers and their versions runs in one REPEATABLE READ transaction, so both
//!   queries see the same snapshot.
//! - Two nodes writing one consumer: the revision-guarded `UPDATE` of the second waits for the
//!   first to commit, then re-checks the revision on the row as committed, matches nothing and
//!   fails as `Conflict`; so exactly one of them makes its change.
//! - Every create and write takes the next change seq, logs it and notifies it in its own
//!   transaction ([`cluster`](super::cluster)), last, so the change log holds exactly the
//!   committed changes, in commit order.
//! - No column holds a secret: a version stores the SHA-256 of its secret and its fingerprint.

use futures_util::TryStreamExt;
use keyroll_core::{Consumer, ConsumerRef, Environment, StoredState, Timestamp};
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, Postgres, Row};

use super::PostgresStore;
use super::decode::{consumer_from_row, version_from_row};
use super::errors::{Violation, violation};
use crate::rows;
use crate::{
    AuditRecord, ConsumerWrite, EventRecord, IdempotencyRecord, StoreError, StoredConsumer,
};

/// Only rows whose key material is unchanged are updated (see `upsert_versions`).
const UPSERT_VERSION: &str = "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, \
     fingerprint, state, created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, \
     replaced_by, enforced, grace_ms, extended, unused_reported, due_raised, expiry_warned, \
     rotation_requested_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20) \
     ON CONFLICT (consumer_id, version) DO UPDATE SET state = excluded.state, \
     deadline = excluded.deadline, expires_at = excluded.expires_at, \
     retired_at = excluded.retired_at, revoked_at = excluded.revoked_at, \
     revoke_reason = excluded.revoke_reason, replaced_by = excluded.replaced_by, \
     enforced = excluded.enforced, grace_ms = excluded.grace_ms, extended = excluded.extended, \
     unused_reported = excluded.unused_reported, due_raised = excluded.due_raised, \
     expiry_warned = excluded.expiry_warned, \
     rotation_requested_ms = excluded.rotation_requested_ms \
     WHERE key_versions.kid = excluded.kid AND key_versions.secret_hash = excluded.secret_hash \
     AND key_versions.fingerprint = excluded.fingerprint \
     AND key_versions.created_at = excluded.created_at";

/// Which consumers a read wants.
#[derive(Clone, Copy)]
pub(super) enum Filter<'a> {
    All,
    Environment(&'a Environment),
    One(&'a ConsumerRef),
    /// What the schedule's runner looks at (the `schedule_candidates` view).
    ScheduleCandidates,
    /// These ids.
    Ids(&'a [i64]),
}

impl<'a> Filter<'a> {
    /// The consumers query and the versions query. Literal strings, so each is prepared once
    /// per connection and cached. Names sort by byte (`COLLATE "C"`), as SQLite sorts them,
    /// whatever the database's collation.
    pub(super) fn queries(&self) -> (&'static str, &'static str) {
        macro_rules! pair {
            ($where_consumers:literal, $where_versions:literal) => {
                (
                    concat!(
                        "SELECT ",
                        rows::consumer_columns!(),
                        " FROM consumers ",
                        $where_consumers,
                        " ORDER BY environment COLLATE \"C\", name COLLATE \"C\""
                    ),
                    concat!(
                        "SELECT ",
                        rows::version_columns!(),
                        " FROM key_versions ",
                        $where_versions,
                        " ORDER BY consumer_id, version"
                    ),
                )
            };
        }
        match self {
            Filter::All => pair!("", ""),
            Filter::Environment(_) => pair!(
                "WHERE environment = $1",
                "WHERE consumer_id IN (SELECT id FROM consumers WHERE environment = $1)"
            ),
            Filter::One(_) => pair!(
                "WHERE environment = $1 AND name = $2",
                "WHERE consumer_id IN (SELECT id FROM consumers WHERE environment = $1 AND name = $2)"
            ),
            Filter::ScheduleCandidates => pair!(
                "WHERE id IN (SELECT id FROM schedule_candidates)",
                "WHERE consumer_id IN (SELECT id FROM schedule_candidates)"
            ),
            Filter::Ids(_) => pair!(
                "WHERE id = ANY($1::bigint[])",
                "WHERE consumer_id = ANY($1::bigint[])"
            ),
        }
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        match *self {
            Filter::All | Filter::ScheduleCandidates => query,
            Filter::Environment(env) => query.bind(env.as_str()),
            Filter::Ids(ids) => query.bind(ids),
            Filter::One(r) => query.bind(r.environment.as_str()).bind(r.name.as_str()),
        }
    }
}

impl PostgresStore {
    /// Creates a consumer with its versions, audit entries and idempotency record in one
    /// transaction.
    pub(super) async fn consumer_create(
        &self,
        consumer: &Consumer,
        audit: &[AuditRecord],
        events: &[EventRecord],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<StoredConsumer, StoreError> {
        let reference = consumer.reference();
        let doing = format!("creating consumer {reference}");
        let created_at = consumer.created_at.unix_millis();
        let (retire_policy, idle_ms, on_stall) = rows::policy_values(consumer)?;
        let (rotate_every_ms, rotation_grace_ms, delivery, managed_spec) =
            rows::schedule_values(consumer)?;
        let mut tx = self.begin_write(&doing).await?;
        let inserted = sqlx::query(
            "INSERT INTO consumers (environment, name, scopes, owner, disabled, revision, \
             created_at, updated_at, retire_policy, idle_ms, on_stall, rotate_every_ms, \
             rotation_grace_ms, delivery, managed_spec) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(consumer.environment.as_str())
        .bind(consumer.name.as_str())
        .bind(rows::join_scopes(&consumer.scopes))
        .bind(consumer.owner.as_deref())
        .bind(consumer.disabled)
        .bind(created_at)
        .bind(retire_policy)
        .bind(idle_ms)
        .bind(on_stall)
        .bind(rotate_every_ms)
        .bind(rotation_grace_ms)
        .bind(delivery)
        .bind(managed_spec)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("consumer {reference}"))
            }
            Some(Violation::ForeignKey) => {
                StoreError::NotFound(format!("environment {}", consumer.environment))
            }
            None => self.fail(&doing, e),
        })?;
        let id: i64 = inserted.try_get(0).map_err(|e| self.fail(&doing, e))?;
        self.upsert_versions(&mut tx, id, consumer, &doing).await?;
        self.append_audit(&mut tx, audit, &doing).await?;
        self.append_events(&mut tx, events, &doing).await?;
        self.remember_idempotency(&mut tx, idempotency, &doing)
            .await?;
        let change_seq = self
            .log_change(&mut tx, id, rows::change_time(audit, events), &doing)
            .await?;
        self.commit_write(tx, &doing).await?;
        Ok(StoredConsumer {
            id,
            revision: 1,
            change_seq,
            consumer: consumer.clone(),
        })
    }

    pub(super) async fn consumer_get(
        &self,
        r: &ConsumerRef,
    ) -> Result<Option<StoredConsumer>, StoreError> {
        let doing = format!("reading consumer {r}");
        let mut found = self.read_consumers(Filter::One(r), &doing).await?;
        Ok(found.pop())
    }

    pub(super) async fn consumer_schedule_candidates(
        &self,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        self.read_consumers(
            Filter::ScheduleCandidates,
            "reading the schedule's consumers",
        )
        .await
    }

    pub(super) async fn consumer_list(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        match environment {
            Some(env) => {
                let doing = format!("listing consumers of {env}");
                self.read_consumers(Filter::Environment(env), &doing).await
            }
            None => self.read_consumers(Filter::All, "listing consumers").await,
        }
    }

    /// Writes a consumer's new state with its versions, audit entries, events and idempotency
    /// record in one transaction, at the revision it was computed from.
    pub(super) async fn consumer_write(
        &self,
        write: ConsumerWrite<'_>,
    ) -> Result<StoredConsumer, StoreError> {
        let consumer = write.consumer;
        let doing = format!("writing consumer {}", consumer.reference());
        let (retire_policy, idle_ms, on_stall) = rows::policy_values(consumer)?;
        let (rotate_every_ms, rotation_grace_ms, delivery, managed_spec) =
            rows::schedule_values(consumer)?;
        let mut tx = self.begin_write(&doing).await?;
        // `updated_at` is the time of the latest audited change this write carries; a write
        // without audit entries leaves it as it was rather than reading a clock here.
        let updated_at = write.audit.iter().map(|a| a.at.unix_millis()).max();
        let updated = sqlx::query(
            "UPDATE consumers SET scopes = $1, owner = $2, disabled = $3, \
             revision = revision + 1, updated_at = COALESCE($4, updated_at), \
             retire_policy = $9, idle_ms = $10, on_stall = $11, rotate_every_ms = $12, \
             rotation_grace_ms = $13, delivery = $14, managed_spec = $15 \
             WHERE id = $5 AND environment = $6 AND name = $7 AND revision = $8",
        )
        .bind(rows::join_scopes(&consumer.scopes))
        .bind(consumer.owner.as_deref())
        .bind(consumer.disabled)
        .bind(updated_at)
        .bind(write.id)
        .bind(consumer.environment.as_str())
        .bind(consumer.name.as_str())
        .bind(write.expected_revision)
        .bind(retire_policy)
        .bind(idle_ms)
        .bind(on_stall)
        .bind(rotate_every_ms)
        .bind(rotation_grace_ms)
        .bind(delivery)
        .bind(managed_spec)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        if updated.rows_affected() == 0 {
            return Err(self.explain_missed_write(&mut tx, &write, &doing).await);
        }
        self.upsert_versions(&mut tx, write.id, consumer, &doing)
            .await?;
        // Versions are never deleted: a write that lacks some was computed from a partial read.
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM key_versions WHERE consumer_id = $1")
                .bind(write.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
        if usize::try_from(stored).ok() != Some(consumer.versions.len()) {
            return Err(StoreError::Corrupt(format!(
                "refusing to write {}: it has {stored} stored versions but the write carries {}; \
                 versions are never deleted",
                consumer.reference(),
                consumer.versions.len()
            )));
        }
        self.write_handover(&mut tx, write.id, write.handover, &doing)
            .await?;
        self.append_audit(&mut tx, write.audit, &doing).await?;
        self.append_events(&mut tx, write.events, &doing).await?;
        self.remember_idempotency(&mut tx, write.idempotency, &doing)
            .await?;
        let change_seq = self
            .log_change(
                &mut tx,
                write.id,
                rows::change_time(write.audit, write.events),
                &doing,
            )
            .await?;
        self.commit_write(tx, &doing).await?;
        Ok(StoredConsumer {
            id: write.id,
            revision: write.expected_revision + 1,
            change_seq,
            consumer: consumer.clone(),
        })
    }

    /// Consumers matching `filter`, by environment then name, each with its versions.
    pub(super) async fn read_consumers(
        &self,
        filter: Filter<'_>,
        doing: &str,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        let mut tx = self.begin_read(doing).await?;
        let consumers = self.read_consumers_in(&mut tx, filter, doing).await?;
        self.commit(tx, doing).await?;
        Ok(consumers)
    }

    async fn read_consumers_in(
        &self,
        conn: &mut PgConnection,
        filter: Filter<'_>,
        doing: &str,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        let (consumers_sql, versions_sql) = filter.queries();
        let mut assembly = rows::Assembly::default();
        {
            let mut rows = filter.bind(sqlx::query(consumers_sql)).fetch(&mut *conn);
            while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
                assembly.consumer(consumer_from_row(&row)?);
            }
        }
        let mut rows = filter.bind(sqlx::query(versions_sql)).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
            let (consumer_id, version) = version_from_row(&row)?;
            assembly.version(consumer_id, version)?;
        }
        Ok(assembly.finish())
    }

    /// Inserts or updates every version of a consumer. Demoted versions go first so that the
    /// one-active index holds after every statement (a unique index is checked per statement).
    async fn upsert_versions(
        &self,
        conn: &mut PgConnection,
        consumer_id: i64,
        consumer: &Consumer,
        doing: &str,
    ) -> Result<(), StoreError> {
        let demoted = consumer
            .versions
            .iter()
            .filter(|v| v.state != StoredState::Active);
        let active = consumer
            .versions
            .iter()
            .filter(|v| v.state == StoredState::Active);
        for v in demoted.chain(active) {
            let grace = rows::duration_value(v.grace, || {
                format!("the grace window of {} {}", consumer.reference(), v.number)
            })?;
            let result = sqlx::query(UPSERT_VERSION)
                .bind(consumer_id)
                .bind(rows::version_value(v.number))
                .bind(v.kid.as_str())
                .bind(v.secret_hash.0.as_slice())
                .bind(v.fingerprint.0.as_slice())
                .bind(v.state.as_str())
                .bind(v.created_at.unix_millis())
                .bind(v.deadline.map(Timestamp::unix_millis))
                .bind(v.expires_at.map(Timestamp::unix_millis))
                .bind(v.retired_at.map(Timestamp::unix_millis))
                .bind(v.revoked_at.map(Timestamp::unix_millis))
                .bind(v.revoke_reason.as_deref())
                .bind(v.replaced_by.map(rows::version_value))
                .bind(v.enforced)
                .bind(grace)
                .bind(v.extended)
                .bind(v.unused_reported)
                .bind(v.due_raised)
                .bind(v.expiry_warned)
                .bind(v.rotation_requested.map(Timestamp::unix_millis))
                .execute(&mut *conn)
                .await
                .map_err(|e| match violation(&e) {
                    Some(Violation::Unique(target)) if target.contains("kid") => {
                        StoreError::KidCollision
                    }
                    Some(Violation::Unique(_)) => StoreError::Corrupt(format!(
                        "refusing to store {} with more than one active version",
                        consumer.reference()
                    )),
                    _ => self.fail(doing, e),
                })?;
            // The upsert only updates a row whose key material is unchanged: a version's kid,
            // hash and fingerprint are fixed at issue, and a write that changes them is a bug
            // that would silently swap a consumer's key.
            if result.rows_affected() == 0 {
                return Err(StoreError::Corrupt(format!(
                    "refusing to change the key material of {} {} (kid {})",
                    consumer.reference(),
                    v.number,
                    v.kid
                )));
            }
        }
        Ok(())
    }

    /// Why an `UPDATE ... WHERE revision = ?` matched nothing.
    async fn explain_missed_write(
        &self,
        conn: &mut PgConnection,
        write: &ConsumerWrite<'_>,
        doing: &str,
    ) -> StoreError {
        let reference = write.consumer.reference();
        let row = sqlx::query("SELECT environment, name FROM consumers WHERE id = $1")
            .bind(write.id)
            .fetch_optional(&mut *conn)
            .await;
        match row {
            Err(e) => self.fail(doing, e),
            Ok(None) => StoreError::NotFound(format!("consumer {reference} (id {})", write.id)),
            Ok(Some(row)) => {
                let env: Result<&str, _> = row.try_get(0);
                let name: Result<&str, _> = row.try_get(1);
                match (env, name) {
                    (Ok(env), Ok(name))
                        if env == write.consumer.environment.as_str()
                            && name == write.consumer.name.as_str() =>
                    {
                        StoreError::Conflict(reference)
                    }
                    (Ok(env), Ok(name)) => StoreError::NotFound(format!(
                        "consumer {reference} with id {} (that id is {env}/{name})",
                        write.id
                    )),
                    (Err(e), _) | (_, Err(e)) => self.fail(doing, e),
                }
            }
        }
    }
}
