//! The two bulk reads at start: `load_all` (every consumer and version, in one snapshot) and
//! `last_used_all` (every version's last use).
//!
//! Both read through a binary `COPY` ([`copy`](super::copy): why, and what keeps it safe),
//! streamed, never a `Vec` of a million rows, and validate each row as it arrives through the
//! conversions shared with every backend ([`rows`]). `load_all` is two queries in one
//! REPEATABLE READ, READ ONLY transaction, the consumers and then the versions, merged by
//! [`rows::Assembly`] (SPEC §12: 1,000,000 versions within 5 s; docs/benchmarks.md has the
//! measurement). `list_consumers` and the other reads keep sqlx's row API, with the same
//! validation.
//!
//! Unlike the other reads, the two queries have no `ORDER BY`: at a million versions the
//! server's sort (an index walk for the versions, an on-disk merge sort for the consumers) took
//! as long as everything else together, while putting the rows in order here is cheap. The
//! versions still arrive mostly grouped by consumer (the table's physical order), which is what
//! [`rows::Assembly`] is fast at; the result is then sorted as every consumer read is (by
//! environment, then name, as bytes; each consumer's versions oldest first).

use keyroll_core::{KeyVersion, Kid, Timestamp};
use sqlx::PgConnection;

use super::PostgresStore;
use super::copy::{
    CopyError, Fields, boolean, bytea, copy_rows, int8, int8_or_null, text, text_or_null,
};
use crate::rows::{self, Place};
use crate::{StoreError, StoredConsumer};

/// What `load_all` does, in error messages.
const LOADING_ALL: &str = "loading all consumers";
/// What `last_used_all` does, in error messages.
const LOADING_LAST_USED: &str = "loading the last use of every version";

/// Every consumer, in no particular order.
const SELECT_CONSUMERS: &str = concat!("SELECT ", rows::consumer_columns!(), " FROM consumers");

/// Every version, in no particular order.
const SELECT_VERSIONS: &str = concat!("SELECT ", rows::version_columns!(), " FROM key_versions");

/// Every version's last use.
const SELECT_LAST_USED_ALL: &str = "SELECT kid, last_used_at FROM version_usage";

/// The types of [`rows::consumer_columns`], in order.
const CONSUMER_TYPES: &[&str] = &[
    "INT8", "TEXT", "TEXT", "TEXT", "TEXT", "BOOL", "INT8", "INT8", "TEXT", "INT8", "TEXT", "INT8",
    "INT8", "TEXT", "TEXT", "INT8",
];

/// The types of [`rows::version_columns`], in order.
const VERSION_TYPES: &[&str] = &[
    "INT8", "INT8", "TEXT", "BYTEA", "BYTEA", "TEXT", "INT8", "INT8", "INT8", "INT8", "INT8",
    "TEXT", "INT8", "BOOL", "INT8", "BOOL", "BOOL", "BOOL", "BOOL", "INT8",
];

impl PostgresStore {
    /// Every consumer with every version, in one snapshot.
    pub(super) async fn load_all_consumers(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        let mut tx = self.begin_read(LOADING_ALL).await?;
        let mut assembly = rows::Assembly::default();
        self.copy(
            &mut tx,
            SELECT_CONSUMERS,
            CONSUMER_TYPES,
            "consumers",
            |f| {
                assembly.consumer(consumer(f)?);
                Ok(())
            },
        )
        .await?;
        self.copy(
            &mut tx,
            SELECT_VERSIONS,
            VERSION_TYPES,
            "key_versions",
            |f| {
                let (consumer_id, version) = version(f)?;
                assembly.version(consumer_id, version)
            },
        )
        .await?;
        self.commit(tx, LOADING_ALL).await?;
        let mut all = assembly.finish();
        all.sort_unstable_by(|a, b| {
            let (a, b) = (&a.consumer, &b.consumer);
            (a.environment.as_str(), a.name.as_str())
                .cmp(&(b.environment.as_str(), b.name.as_str()))
        });
        for stored in &mut all {
            let versions = &mut stored.consumer.versions;
            if !versions.is_sorted_by_key(|v| v.number) {
                versions.sort_unstable_by_key(|v| v.number);
            }
        }
        Ok(all)
    }

    /// Every version's last use.
    pub(super) async fn load_last_used(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.fail(LOADING_LAST_USED, e))?;
        let mut all = Vec::new();
        self.copy(
            &mut conn,
            SELECT_LAST_USED_ALL,
            &["TEXT", "INT8"],
            "version_usage",
            |f| {
                let place = || "version_usage row".to_owned();
                let kid = text(f[0], "kid", &place)?;
                all.push(rows::last_used(kid, int8(f[1], "last_used_at", &place)?)?);
                Ok(())
            },
        )
        .await?;
        Ok(all)
    }

    async fn copy(
        &self,
        conn: &mut PgConnection,
        select: &str,
        types: &[&str],
        table: &str,
        row: impl FnMut(&Fields<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        copy_rows(conn, select, types, table, row)
            .await
            .map_err(|e| match e {
                CopyError::Sqlx(e) => {
                    let doing = format!("reading {table}");
                    self.fail(&doing, e)
                }
                CopyError::Store(e) => e,
            })
    }
}

/// A consumers row (columns as in [`rows::consumer_columns`]) with no versions yet.
fn consumer(f: &Fields<'_>) -> Result<StoredConsumer, StoreError> {
    let id = int8(f[0], "id", &|| "consumers row".to_owned())?;
    let place = rows::consumer_place(id);
    let place: Place<'_> = &place;
    let columns = rows::ConsumerColumns {
        id,
        environment: text(f[1], "environment", place)?,
        name: text(f[2], "name", place)?,
        scopes: text(f[3], "scopes", place)?,
        owner: text_or_null(f[4], "owner", place)?,
        disabled: boolean(f[5], "disabled", place)?,
        revision: int8(f[6], "revision", place)?,
        created_at: int8(f[7], "created_at", place)?,
        retire_policy: text(f[8], "retire_policy", place)?,
        idle_ms: int8(f[9], "idle_ms", place)?,
        on_stall: text(f[10], "on_stall", place)?,
        rotate_every_ms: int8_or_null(f[11], "rotate_every_ms", place)?,
        rotation_grace_ms: int8_or_null(f[12], "rotation_grace_ms", place)?,
        delivery: text(f[13], "delivery", place)?,
        managed_spec: text_or_null(f[14], "managed_spec", place)?,
        change_seq: int8(f[15], "change_seq", place)?,
    };
    columns.validate(place)
}

/// A key_versions row (columns as in [`rows::version_columns`]) and its consumer's id.
fn version(f: &Fields<'_>) -> Result<(i64, KeyVersion), StoreError> {
    let table = || "key_versions row".to_owned();
    let consumer_id = int8(f[0], "consumer_id", &table)?;
    let version = int8(f[1], "version", &table)?;
    let place = rows::version_place(consumer_id, version);
    let place: Place<'_> = &place;
    let columns = rows::VersionColumns {
        consumer_id,
        version,
        kid: text(f[2], "kid", place)?,
        secret_hash: bytea(f[3], "secret_hash", place)?,
        fingerprint: bytea(f[4], "fingerprint", place)?,
        state: text(f[5], "state", place)?,
        created_at: int8(f[6], "created_at", place)?,
        deadline: int8_or_null(f[7], "deadline", place)?,
        expires_at: int8_or_null(f[8], "expires_at", place)?,
        retired_at: int8_or_null(f[9], "retired_at", place)?,
        revoked_at: int8_or_null(f[10], "revoked_at", place)?,
        revoke_reason: text_or_null(f[11], "revoke_reason", place)?,
        replaced_by: int8_or_null(f[12], "replaced_by", place)?,
        enforced: boolean(f[13], "enforced", place)?,
        grace_ms: int8(f[14], "grace_ms", place)?,
        extended: boolean(f[15], "extended", place)?,
        unused_reported: boolean(f[16], "unused_reported", place)?,
        due_raised: boolean(f[17], "due_raised", place)?,
        expiry_warned: boolean(f[18], "expiry_warned", place)?,
        rotation_requested_ms: int8_or_null(f[19], "rotation_requested_ms", place)?,
    };
    columns.validate(place)
}
