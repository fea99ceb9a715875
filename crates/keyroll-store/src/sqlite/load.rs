//! The two bulk reads at start: `load_all` (every consumer and version, in one snapshot) and
//! `last_used_all` (every version's last use). On a database file both read through rusqlite on
//! a blocking thread; an in-memory database, which only the pool's connections can see, is read
//! through sqlx.
//!
//! Why not sqlx for a file: sqlx's SQLite driver copies each column value of each row into its
//! own heap allocation on the connection's worker thread and frees it on the reader's. At
//! start-up (1,000,000 versions of 14 columns, SPEC §12: loaded in at most 5 s) that alone
//! measured 5–9 s; rusqlite reads the values in place. Everything else stays on sqlx: these are
//! the two bulk reads at start, with the same queries ([`Filter::queries`],
//! [`SELECT_LAST_USED_ALL`]) and the same validation ([`rows`]) as the sqlx path,
//! which `list_consumers` and an in-memory database still use. The rusqlite connection is
//! read-only, and its failures are mapped by [`classify_rusqlite`] as sqlx's are.

use std::path::Path;

use futures_util::TryStreamExt;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};

use keyroll_core::{Kid, Timestamp};

use super::consumers::Filter;
use super::decode::last_used_from_row;
use super::errors::classify_rusqlite;
use super::{BUSY_TIMEOUT, SqliteStore};
use crate::rows::{self, Place};
use crate::{StoreError, StoredConsumer};

/// What `load_all` does, in error messages.
const LOADING_ALL: &str = "loading all consumers";
/// What `last_used_all` does, in error messages.
const LOADING_LAST_USED: &str = "loading the last use of every version";

/// Every version's last use, in the order of the table (by kid).
const SELECT_LAST_USED_ALL: &str = "SELECT kid, last_used_at FROM version_usage ORDER BY kid";

impl SqliteStore {
    /// Every consumer with every version: from the file on a blocking thread, or through the
    /// pool for an in-memory database.
    pub(super) async fn load_all_consumers(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        let Some(file) = self.file.clone() else {
            return self.read_consumers(Filter::All, LOADING_ALL).await;
        };
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || load_all(&file, &location))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "SQLite database {}: {LOADING_ALL}: the reading task failed: {e}",
                    self.location
                ))
            })?
    }

    /// Every version's last use, read as `load_all_consumers` reads.
    pub(super) async fn load_last_used(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        let Some(file) = self.file.clone() else {
            let mut rows = sqlx::query(SELECT_LAST_USED_ALL).fetch(&self.pool);
            let mut all = Vec::new();
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| self.fail(LOADING_LAST_USED, e))?
            {
                all.push(last_used_from_row(&row)?);
            }
            return Ok(all);
        };
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || last_used_all(&file, &location))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "SQLite database {}: {LOADING_LAST_USED}: the reading task failed: {e}",
                    self.location
                ))
            })?
    }
}

/// A read-only connection: it can never write, whatever happens to the code around it.
fn open(
    path: &Path,
    fail: impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    Ok(conn)
}

/// Reads every consumer with every version from the database file at `path`.
fn load_all(path: &Path, location: &str) -> Result<Vec<StoredConsumer>, StoreError> {
    let fail = |e: rusqlite::Error| classify_rusqlite(location, LOADING_ALL, e);
    let mut conn = open(path, fail)?;
    // One read transaction: both queries see the same snapshot.
    let tx = conn.transaction().map_err(fail)?;
    let (consumers_sql, versions_sql) = Filter::All.queries();
    let mut assembly = rows::Assembly::default();
    {
        let mut statement = tx.prepare(consumers_sql).map_err(fail)?;
        let mut rows = statement.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            assembly.consumer(consumer(row)?);
        }
    }
    {
        let mut statement = tx.prepare(versions_sql).map_err(fail)?;
        let mut rows = statement.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let (consumer_id, version) = version(row)?;
            assembly.version(consumer_id, version)?;
        }
    }
    tx.commit().map_err(fail)?;
    Ok(assembly.finish())
}

/// Reads every version's last use from the database file at `path`.
fn last_used_all(path: &Path, location: &str) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
    let fail = |e: rusqlite::Error| classify_rusqlite(location, LOADING_LAST_USED, e);
    let conn = open(path, fail)?;
    let mut statement = conn.prepare(SELECT_LAST_USED_ALL).map_err(fail)?;
    let mut rows = statement.query([]).map_err(fail)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next().map_err(fail)? {
        let table = || "version_usage row".to_owned();
        all.push(rows::last_used(
            text(row, 0, &table)?,
            int(row, 1, &table)?,
        )?);
    }
    Ok(all)
}

fn consumer(row: &Row<'_>) -> Result<StoredConsumer, StoreError> {
    let id = int(row, 0, &|| "consumers row".to_owned())?;
    let place = rows::consumer_place(id);
    let place: Place<'_> = &place;
    let columns = rows::ConsumerColumns {
        id,
        environment: text(row, 1, place)?,
        name: text(row, 2, place)?,
        scopes: text(row, 3, place)?,
        owner: optional(row, 4, place, text)?,
        disabled: flag(row, 5, place)?,
        revision: int(row, 6, place)?,
        created_at: int(row, 7, place)?,
        retire_policy: text(row, 8, place)?,
        idle_ms: int(row, 9, place)?,
        on_stall: text(row, 10, place)?,
        rotate_every_ms: optional(row, 11, place, int)?,
        rotation_grace_ms: optional(row, 12, place, int)?,
        delivery: text(row, 13, place)?,
        managed_spec: optional(row, 14, place, text)?,
        change_seq: int(row, 15, place)?,
    };
    columns.validate(place)
}

fn version(row: &Row<'_>) -> Result<(i64, keyroll_core::KeyVersion), StoreError> {
    let table = || "key_versions row".to_owned();
    let consumer_id = int(row, 0, &table)?;
    let version = int(row, 1, &table)?;
    let place = rows::version_place(consumer_id, version);
    let place: Place<'_> = &place;
    let columns = rows::VersionColumns {
        consumer_id,
        version,
        kid: text(row, 2, place)?,
        secret_hash: blob(row, 3, place)?,
        fingerprint: blob(row, 4, place)?,
        state: text(row, 5, place)?,
        created_at: int(row, 6, place)?,
        deadline: optional(row, 7, place, int)?,
        expires_at: optional(row, 8, place, int)?,
        retired_at: optional(row, 9, place, int)?,
        revoked_at: optional(row, 10, place, int)?,
        revoke_reason: optional(row, 11, place, text)?,
        replaced_by: optional(row, 12, place, int)?,
        enforced: flag(row, 13, place)?,
        grace_ms: int(row, 14, place)?,
        extended: flag(row, 15, place)?,
        unused_reported: flag(row, 16, place)?,
        due_raised: flag(row, 17, place)?,
        expiry_warned: flag(row, 18, place)?,
        rotation_requested_ms: optional(row, 19, place, int)?,
    };
    columns.validate(place)
}

/// `Corrupt`: column `index` does not hold what the schema says.
fn wrong_type(row: &Row<'_>, index: usize, place: Place<'_>, expected: &str) -> StoreError {
    let column = row.as_ref().column_name(index).unwrap_or("?");
    let found = match row.get_ref(index) {
        Ok(ValueRef::Null) => "NULL",
        Ok(ValueRef::Integer(_)) => "an integer",
        Ok(ValueRef::Real(_)) => "a real number",
        Ok(ValueRef::Text(_)) => "text",
        Ok(ValueRef::Blob(_)) => "a blob",
        Err(_) => "nothing",
    };
    rows::corrupt(
        place,
        column,
        format_args!("expected {expected}, found {found}"),
    )
}

fn int(row: &Row<'_>, index: usize, place: Place<'_>) -> Result<i64, StoreError> {
    match row.get_ref(index) {
        Ok(ValueRef::Integer(n)) => Ok(n),
        _ => Err(wrong_type(row, index, place, "an integer")),
    }
}

fn flag(row: &Row<'_>, index: usize, place: Place<'_>) -> Result<bool, StoreError> {
    Ok(int(row, index, place)? != 0)
}

fn text<'r>(row: &'r Row<'_>, index: usize, place: Place<'_>) -> Result<&'r str, StoreError> {
    match row.get_ref(index) {
        Ok(ValueRef::Text(bytes)) => {
            std::str::from_utf8(bytes).map_err(|_| wrong_type(row, index, place, "UTF-8 text"))
        }
        _ => Err(wrong_type(row, index, place, "text")),
    }
}

fn blob<'r>(row: &'r Row<'_>, index: usize, place: Place<'_>) -> Result<&'r [u8], StoreError> {
    match row.get_ref(index) {
        Ok(ValueRef::Blob(bytes)) => Ok(bytes),
        _ => Err(wrong_type(row, index, place, "a blob")),
    }
}

/// `None` for SQL NULL, else what `read` makes of the value.
fn optional<'r, T>(
    row: &'r Row<'_>,
    index: usize,
    place: Place<'_>,
    read: fn(&'r Row<'_>, usize, Place<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match row.get_ref(index) {
        Ok(ValueRef::Null) => Ok(None),
        _ => read(row, index, place).map(Some),
    }
}
