//! The SQLite [`Store`]: one file beside the config, zero setup, the default backend (SPEC §11).
//!
//! Settings and why:
//! - WAL journal: readers (`load_all`, admin reads) never wait for the writer, and a commit is one
//!   append to the log.
//! - `synchronous = NORMAL`: with WAL, a commit survives a crash of the process; only a power
//!   loss can lose the last commits, and never corrupts the file.
//! - `busy_timeout` 5 s: several nodes never share a SQLite file, but several connections of the
//!   pool do; a writer waits for another instead of failing at once.
//! - Writes start with `BEGIN IMMEDIATE`, taking the write lock before the first read, so two
//!   writers queue on the busy timeout instead of one of them failing with `SQLITE_BUSY` when it
//!   tries to upgrade a read snapshot.
//! - Reads of a consumer and its versions run in one (deferred) transaction: both queries see the
//!   same snapshot, so a concurrent write can never pair a consumer row with versions of another
//!   revision, nor show versions of a consumer created between the two queries.
//! - `load_all` and `last_used_all` of a database file read through rusqlite on a blocking thread
//!   (see [`load`]).
//! - A usage batch is a handful of set-based statements whatever its size (see [`usage`]).
//! - A failed transaction never goes back to the pool open. sqlx rolls a dropped transaction
//!   back lazily, and when SQLite has already rolled it back itself (it does on `SQLITE_FULL`
//!   and I/O errors) that `ROLLBACK` fails and sqlx still counts the transaction as open: every
//!   later `BEGIN` on that connection failed, until a restart. The pool's `after_release` check
//!   waits for the queued rollback and closes a connection still inside a transaction; the pool
//!   opens a fresh one.
//! - Health: a write that fails with `Unavailable` marks the store down; `ping` then writes a
//!   probe row until a write succeeds (a read would work all along on a full disk), and any
//!   successful write marks it up again. `ping` and every write also check that the database
//!   file is still the one opened (device and inode): writes to a deleted or replaced file would
//!   be acknowledged and then lost.

mod load;
mod tokens;
mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use keyroll_core::{Consumer, ConsumerRef, Environment, KeyVersion, Kid, StoredState, Timestamp};
use sqlx::error::DatabaseError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite};

use crate::rows::{self, Place};
use crate::{
    AdminTokenRecord, AuditRecord, ConsumerWrite, EnvironmentRecord, EventRecord,
    IdempotencyRecord, Installation, SourceSeen, StoreError, StoredConsumer, UsageDelta,
    VersionUsage,
};

/// What `load_all` does, in error messages.
const LOADING_ALL: &str = "loading all consumers";
/// What `last_used_all` does, in error messages.
const LOADING_LAST_USED: &str = "loading the last use of every version";

/// The schema, embedded at build time (`build.rs` makes cargo rebuild when a file is added).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another's write lock before the operation fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite serialises writers anyway; a few connections let reads run beside a write.
const MAX_CONNECTIONS: u32 = 4;

// Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low
// byte.
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_CONSTRAINT: i32 = 19;
const SQLITE_NOTADB: i32 = 26;

/// The [`Store`](crate::Store) on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database, for error messages.
    location: String,
    /// The database file, for the bulk read of `load_all`; `None` for an in-memory database,
    /// which only the pool's connections can see.
    file: Option<PathBuf>,
    /// The file's identity when it was opened, to notice it deleted or replaced.
    identity: Option<FileId>,
    /// The outage the last failed operation met, until a write succeeds again.
    outage: Arc<Mutex<Option<String>>>,
}

/// Which file a path named when the store opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Some(FileId {
        device: meta.dev(),
        inode: meta.ino(),
    }))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    std::fs::metadata(path).map(|_| None)
}

/// Descriptors of this process still open on `path` after it was deleted (Linux), to say where
/// its content can still be copied from.
fn deleted_descriptors(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let wanted = path.display().to_string();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.display().to_string();
        if let Some(name) = target.strip_suffix(" (deleted)")
            && (name == wanted || name == format!("{wanted}-wal"))
            && !found.iter().any(|(n, _): &(String, String)| *n == name)
        {
            found.push((
                name.to_owned(),
                entry.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    let pid = std::process::id();
    found
        .into_iter()
        .map(|(name, fd)| format!("/proc/{pid}/fd/{fd} to {name}"))
        .collect()
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to date.
    ///
    /// The directory must exist. Errors name the path and the cause: `Unavailable` when the file
    /// cannot be opened or written, `Corrupt` when it is not a keyroll SQLite database or was
    /// migrated by a newer keyroll.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        // SQLite's own answer for a directory is a vague "unable to open database file" or, on
        // some systems, a disk I/O error at the first read: say what it is.
        if path.is_dir() {
            return Err(StoreError::Unavailable(format!(
                "cannot open SQLite database {location}: it is a directory"
            )));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::connect(options, location, Some(path.to_path_buf())).await
    }

    /// Opens a database given as a `sqlite://PATH[?mode=ro|rw|rwc|memory]` URL (or
    /// `sqlite::memory:`). Without a `mode`, the file is created if missing, as with
    /// [`SqliteStore::open`].
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        // sqlx would take anything else for a file name (`postgres://db` as a file `postgres:`).
        let shown = keyroll_core::redact_url(url);
        if !url.starts_with("sqlite:") {
            return Err(StoreError::Unavailable(format!(
                "cannot open SQLite database {shown}: not a sqlite: URL"
            )));
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite database {shown}: {e}"))
        })?;
        let has_mode = url
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("mode=")));
        let options = if has_mode {
            options
        } else {
            options.create_if_missing(true)
        };
        let path = options.get_filename().to_path_buf();
        // A URL's userinfo ends up in the file name (`sqlite://user:pw@host/db`).
        let location = keyroll_core::redact_url(&path.display().to_string());
        if path.is_dir() {
            return Err(StoreError::Unavailable(format!(
                "cannot open SQLite database {location}: it is a directory"
            )));
        }
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::connect(options, location, (!in_memory).then_some(path)).await
    }

    async fn connect(
        options: SqliteConnectOptions,
        location: String,
        file: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        let path = file.as_deref();
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);
        if path.is_some() {
            // Switch a new file to WAL on one connection first. Changing the journal mode needs
            // an exclusive lock that SQLite's busy handler does not wait for, so the pool's
            // first connections, opened concurrently, each trying it on a fresh file, failed
            // now and then with "database is locked". Once the file is in WAL mode the pool's
            // own `journal_mode = WAL` is a no-op.
            let first = sqlx::ConnectOptions::connect(&options)
                .await
                .map_err(|e| open_error(&location, path, e))?;
            Connection::close(first)
                .await
                .map_err(|e| open_error(&location, path, e))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // One connection always open and none retired: there is no server to drop idle
            // connections, and an in-memory database lives only while a connection does.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // A round trip runs after the rollback a dropped transaction queued.
                    conn.ping().await?;
                    if conn.is_in_transaction() {
                        tracing::warn!(
                            "closing a SQLite connection left inside a failed transaction"
                        );
                        return Ok(false);
                    }
                    Ok(true)
                })
            })
            // The file exists now: a connection the pool opens later (after one was closed, say)
            // must never create a new, empty database where the opened one was deleted.
            .connect_with(if path.is_some() {
                options.create_if_missing(false)
            } else {
                options
            })
            .await
            .map_err(|e| open_error(&location, path, e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| migrate_error(&location, path, e))?;
        let identity = match path {
            Some(p) => file_id(p).map_err(|e| {
                StoreError::Unavailable(format!("cannot open SQLite database {location}: {e}"))
            })?,
            None => None,
        };
        tracing::debug!(database = %location, "opened SQLite store");
        Ok(SqliteStore {
            pool,
            location,
            file,
            identity,
            outage: Arc::new(Mutex::new(None)),
        })
    }

    /// A failed operation as a `StoreError`, naming the database and what was being done. An
    /// outage marks the store down until a write succeeds.
    fn fail(&self, doing: &str, err: sqlx::Error) -> StoreError {
        let err = classify(&self.location, doing, err);
        if let StoreError::Unavailable(message) = &err {
            self.set_outage(Some(message.clone()));
        }
        err
    }

    fn set_outage(&self, outage: Option<String>) {
        let mut slot = self
            .outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() != outage.is_some() {
            match &outage {
                Some(m) => tracing::error!(event = "store.down", "store writes fail: {m}"),
                None => tracing::info!(event = "store.up", "store writes work again"),
            }
        }
        *slot = outage;
    }

    fn current_outage(&self) -> Option<String> {
        self.outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `Unavailable` when the database file is no longer the one opened: deleted, or another
    /// file moved to its path. Writes would go to a file nothing reads again.
    fn check_file(&self, doing: &str) -> Result<(), StoreError> {
        let (Some(path), Some(opened)) = (&self.file, self.identity) else {
            return Ok(());
        };
        let location = &self.location;
        let why = match file_id(path) {
            Ok(Some(now)) if now == opened => return Ok(()),
            Ok(None) => return Ok(()),
            Ok(Some(_)) => format!(
                "the file was replaced while keyroll was running (another file is at \
                 {location} now); writes are refused, they would go to the replaced file. Put \
                 the original file back, or stop keyroll and restore the database"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let copies = deleted_descriptors(path);
                let rescue = if copies.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; while this process runs, its content can still be copied back: {}",
                        copies.join(", ")
                    )
                };
                format!(
                    "the file was deleted while keyroll was running; writes are refused, they \
                     would go to the deleted file and be lost. Restore the database from a \
                     backup{rescue}"
                )
            }
            Err(e) => format!("cannot check the database file: {e}"),
        };
        Err(StoreError::Unavailable(format!(
            "SQLite database {location}: {doing}: {why}"
        )))
    }

    /// Starts a write transaction holding the write lock (see the module documentation).
    async fn begin_write(
        &self,
        doing: &str,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.check_file(doing)?;
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.fail(doing, e))
    }

    /// Commits a write transaction: its success shows the store takes writes again.
    async fn commit_write(
        &self,
        tx: sqlx::Transaction<'static, Sqlite>,
        doing: &str,
    ) -> Result<(), StoreError> {
        self.commit(tx, doing).await?;
        self.set_outage(None);
        Ok(())
    }

    /// Writes the probe row: whether a write goes through now.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let doing = "writing a probe row after a failed write";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query(
            "INSERT INTO write_probe (only, at) VALUES (1, ?1) \
             ON CONFLICT (only) DO UPDATE SET at = excluded.at",
        )
        .bind(unix_millis_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await
    }

    /// Starts a read transaction: every query in it sees one snapshot.
    async fn begin_read(
        &self,
        doing: &str,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // A read of a deleted or replaced file would answer from the wrong database (or an
        // empty one): the same check as writes, a `stat` (admin reads are not the hot path).
        self.check_file(doing)?;
        self.pool.begin().await.map_err(|e| self.fail(doing, e))
    }

    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, Sqlite>,
        doing: &str,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| self.fail(doing, e))
    }

    /// Consumers matching `filter`, by environment then name, each with its versions.
    async fn read_consumers(
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
        conn: &mut SqliteConnection,
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
        conn: &mut SqliteConnection,
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

    async fn append_audit(
        &self,
        conn: &mut SqliteConnection,
        entries: &[AuditRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        for entry in entries {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail, request_id, remote_addr) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(entry.at.unix_millis())
            .bind(entry.actor.as_str())
            .bind(entry.action.as_str())
            .bind(entry.target.as_str())
            .bind(entry.detail.as_str())
            .bind(entry.request_id.as_deref())
            .bind(entry.remote_addr.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        Ok(())
    }

    async fn append_events(
        &self,
        conn: &mut SqliteConnection,
        events: &[EventRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        for event in events {
            sqlx::query(
                "INSERT INTO events (at, kind, consumer, version, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(event.at.unix_millis())
            .bind(event.kind.as_str())
            .bind(event.consumer.as_str())
            .bind(event.version.map(i64::from))
            .bind(event.detail.as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        Ok(())
    }

    async fn remember_idempotency(
        &self,
        conn: &mut SqliteConnection,
        record: Option<&IdempotencyRecord>,
        doing: &str,
    ) -> Result<(), StoreError> {
        let Some(record) = record else {
            return Ok(());
        };
        // Prune on write: a sealed key outlives its replay window by at most the time until the
        // next idempotent write, and readers ignore it past the window anyway.
        let cutoff = record
            .created_at
            .saturating_sub(crate::IDEMPOTENT_KEY_WINDOW);
        sqlx::query(
            "UPDATE idempotency_keys SET sealed_key = NULL \
             WHERE sealed_key IS NOT NULL AND created_at < ?1",
        )
        .bind(cutoff.unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?;
        sqlx::query(
            "INSERT INTO idempotency_keys \
             (key, request_hash, status, response, created_at, sealed_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(record.key.as_str())
        .bind(record.request_hash.as_str())
        .bind(i64::from(record.status))
        .bind(record.response.as_str())
        .bind(record.created_at.unix_millis())
        .bind(record.sealed_key.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => StoreError::IdempotencyKeyUsed,
            _ => self.fail(doing, e),
        })?;
        Ok(())
    }

    /// Why an `UPDATE ... WHERE revision = ?` matched nothing.
    async fn explain_missed_write(
        &self,
        conn: &mut SqliteConnection,
        write: &ConsumerWrite<'_>,
        doing: &str,
    ) -> StoreError {
        let reference = write.consumer.reference();
        let row = sqlx::query("SELECT environment, name FROM consumers WHERE id = ?1")
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

/// Only rows whose key material is unchanged are updated (see `upsert_versions`).
const UPSERT_VERSION: &str = "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, \
     fingerprint, state, created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, \
     replaced_by, enforced, grace_ms, extended, unused_reported) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
     ON CONFLICT (consumer_id, version) DO UPDATE SET state = excluded.state, \
     deadline = excluded.deadline, expires_at = excluded.expires_at, \
     retired_at = excluded.retired_at, revoked_at = excluded.revoked_at, \
     revoke_reason = excluded.revoke_reason, replaced_by = excluded.replaced_by, \
     enforced = excluded.enforced, grace_ms = excluded.grace_ms, extended = excluded.extended, \
     unused_reported = excluded.unused_reported \
     WHERE key_versions.kid = excluded.kid AND key_versions.secret_hash = excluded.secret_hash \
     AND key_versions.fingerprint = excluded.fingerprint \
     AND key_versions.created_at = excluded.created_at";

/// Which consumers a read wants.
#[derive(Clone, Copy)]
enum Filter<'a> {
    All,
    Environment(&'a Environment),
    One(&'a ConsumerRef),
}

impl<'a> Filter<'a> {
    /// The consumers query and the versions query. Literal strings, so each is prepared once
    /// per connection and cached.
    fn queries(&self) -> (&'static str, &'static str) {
        macro_rules! pair {
            ($where_consumers:literal, $where_versions:literal) => {
                (
                    concat!(
                        "SELECT ",
                        rows::consumer_columns!(),
                        " FROM consumers ",
                        $where_consumers,
                        " ORDER BY environment, name"
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
                "WHERE environment = ?1",
                "WHERE consumer_id IN (SELECT id FROM consumers WHERE environment = ?1)"
            ),
            Filter::One(_) => pair!(
                "WHERE environment = ?1 AND name = ?2",
                "WHERE consumer_id IN (SELECT id FROM consumers WHERE environment = ?1 AND name = ?2)"
            ),
        }
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>
    where
        'a: 'q,
    {
        match *self {
            Filter::All => query,
            Filter::Environment(env) => query.bind(env.as_str()),
            Filter::One(r) => query.bind(r.environment.as_str()).bind(r.name.as_str()),
        }
    }
}

/// Reads column `index`, turning a type mismatch into `Corrupt` naming the column.
fn get<'r, T>(row: &'r SqliteRow, index: usize, place: Place<'_>) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(index).map_err(|e| {
        let column = row.columns().get(index).map_or("?", sqlx::Column::name);
        rows::corrupt(place, column, e)
    })
}

/// A consumer row (columns as in [`Filter::queries`]) with no versions yet.
fn consumer_from_row(row: &SqliteRow) -> Result<StoredConsumer, StoreError> {
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
    };
    columns.validate(place)
}

/// A version row (columns as in [`Filter::queries`]) and the consumer it belongs to.
fn version_from_row(row: &SqliteRow) -> Result<(i64, KeyVersion), StoreError> {
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
    };
    columns.validate(place)
}

fn environment_from_row(row: &SqliteRow) -> Result<EnvironmentRecord, StoreError> {
    let table = || "environments row".to_owned();
    let name: &str = get(row, 0, &table)?;
    let place = || format!("environments row ({name:?})");
    let place: Place<'_> = &place;
    Ok(EnvironmentRecord {
        name: rows::environment(name, "name", place)?,
        protected: get(row, 1, place)?,
        created_at: Timestamp::from_unix_millis(get(row, 2, place)?),
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let table = || "audit_log row".to_owned();
    let seq: i64 = get(row, 0, &table)?;
    let place = || format!("audit_log row (seq {seq})");
    let place: Place<'_> = &place;
    Ok(AuditRecord {
        seq,
        at: Timestamp::from_unix_millis(get(row, 1, place)?),
        actor: get(row, 2, place)?,
        action: get(row, 3, place)?,
        target: get(row, 4, place)?,
        detail: get(row, 5, place)?,
        request_id: get(row, 6, place)?,
        remote_addr: get(row, 7, place)?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord, StoreError> {
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

/// What a constraint violation was about: the constraint's name where the database gives one,
/// else its message (SQLite: `UNIQUE constraint failed: key_versions.kid`).
enum Violation {
    Unique(String),
    ForeignKey,
}

fn violation(err: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let target = || db.constraint().unwrap_or(db.message()).to_owned();
    if db.is_unique_violation() {
        Some(Violation::Unique(target()))
    } else if db.is_foreign_key_violation() {
        Some(Violation::ForeignKey)
    } else {
        None
    }
}

/// SQLite's primary result code of a database error.
fn primary_code(db: &dyn DatabaseError) -> Option<i32> {
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

/// The words of an error without sqlx's "error returned from database: (code: 8)" wrapping.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Maps a failure during operation: damage and rejected data are `Corrupt`, everything else
/// (locked, read-only, disk full, I/O, pool exhausted) is `Unavailable`.
fn classify(location: &str, doing: &str, err: sqlx::Error) -> StoreError {
    let message = format!("SQLite database {location}: {doing}: {}", cause(&err));
    match &err {
        sqlx::Error::Database(db) => match primary_code(db.as_ref()) {
            Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt(message),
            // A CHECK, NOT NULL or trigger refusal: the caller handed over something the schema
            // forbids; storing it anyway would make the data unreadable.
            Some(SQLITE_CONSTRAINT) => {
                StoreError::Corrupt(format!("{message} (refused by the schema)"))
            }
            _ => StoreError::Unavailable(message),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(message),
        _ => StoreError::Unavailable(message),
    }
}

/// Maps a failure to open, naming the path and, where the file system tells more than SQLite's
/// "unable to open database file", the actual cause.
fn open_error(location: &str, path: Option<&Path>, err: sqlx::Error) -> StoreError {
    let mut why = cause(&err);
    let code = match &err {
        sqlx::Error::Database(db) => primary_code(db.as_ref()),
        _ => None,
    };
    if let Some(diagnosis) = path.and_then(diagnose_path) {
        // The diagnosis names a path, which holds a URL's userinfo if one was given.
        why = format!("{} ({why})", keyroll_core::redact_url(&diagnosis));
    } else if code == Some(SQLITE_CANTOPEN) {
        match path {
            // A URL with `mode=ro` or `mode=rw` does not create the file.
            Some(p) if !p.exists() => why = format!("{why}: the file does not exist"),
            _ => why = format!("{why}; check that it and its directory are writable by this user"),
        }
    }
    let message = format!("cannot open SQLite database {location}: {why}");
    match code {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt(message),
        _ => StoreError::Unavailable(message),
    }
}

/// What is wrong with the place a database file should be, if the file system can tell.
fn diagnose_path(path: &Path) -> Option<String> {
    if path.is_dir() {
        return Some("it is a directory".to_owned());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", parent.display())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            // The parent may itself sit under a regular file: name the component that is one.
            let file = parent.ancestors().skip(1).find(|a| a.is_file());
            Some(match file {
                Some(file) => format!("{} is a file, not a directory", file.display()),
                None => format!("directory {} does not exist", parent.display()),
            })
        }
        Err(e) => Some(format!("{}: {e}", parent.display())),
    }
}

fn migrate_error(location: &str, path: Option<&Path>, err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            let damaged = matches!(
                &e,
                sqlx::Error::Database(db)
                    if matches!(primary_code(db.as_ref()), Some(SQLITE_CORRUPT | SQLITE_NOTADB))
            );
            let message = format!("cannot migrate SQLite database {location}: {}", cause(&e));
            if damaged {
                StoreError::Corrupt(message)
            } else if let Some(d) = path.and_then(diagnose_path) {
                StoreError::Unavailable(format!("{message} ({d})"))
            } else {
                StoreError::Unavailable(message)
            }
        }
        MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
            "SQLite database {location} has schema migration {v}, which this version of keyroll \
             does not know: it was written by a newer keyroll"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Corrupt(format!(
            "SQLite database {location}: schema migration {v} differs from the one this version \
             of keyroll ships"
        )),
        MigrateError::Dirty(v) => StoreError::Corrupt(format!(
            "SQLite database {location}: schema migration {v} was only partly applied"
        )),
        other => StoreError::Corrupt(format!(
            "cannot migrate SQLite database {location}: {other}"
        )),
    }
}

#[async_trait]
impl crate::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_file("ping")?;
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.fail("ping", e))?;
        if self.current_outage().is_some() {
            self.probe_write().await?;
        }
        Ok(())
    }

    async fn load_all(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        let Some(file) = self.file.clone() else {
            return self.read_consumers(Filter::All, LOADING_ALL).await;
        };
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || load::load_all(&file, &location))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "SQLite database {}: {LOADING_ALL}: the reading task failed: {e}",
                    self.location
                ))
            })?
    }

    async fn create_environment(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("creating environment {}", env.name);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query("INSERT INTO environments (name, protected, created_at) VALUES (?1, ?2, ?3)")
            .bind(env.name.as_str())
            .bind(env.protected)
            .bind(env.created_at.unix_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| match violation(&e) {
                Some(Violation::Unique(_)) => {
                    StoreError::AlreadyExists(format!("environment {}", env.name))
                }
                _ => self.fail(&doing, e),
            })?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    async fn list_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT name, protected, created_at FROM environments ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.fail("listing environments", e))?;
        rows.iter().map(environment_from_row).collect()
    }

    async fn get_environment(
        &self,
        name: &Environment,
    ) -> Result<Option<EnvironmentRecord>, StoreError> {
        let row =
            sqlx::query("SELECT name, protected, created_at FROM environments WHERE name = ?1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.fail(&format!("reading environment {name}"), e))?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn create_consumer(
        &self,
        consumer: &Consumer,
        audit: &[AuditRecord],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<StoredConsumer, StoreError> {
        let reference = consumer.reference();
        let doing = format!("creating consumer {reference}");
        let created_at = consumer.created_at.unix_millis();
        let (retire_policy, idle_ms, on_stall) = rows::policy_values(consumer)?;
        let mut tx = self.begin_write(&doing).await?;
        let inserted = sqlx::query(
            "INSERT INTO consumers (environment, name, scopes, owner, disabled, revision, \
             created_at, updated_at, retire_policy, idle_ms, on_stall) \
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6, ?7, ?8, ?9)",
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
        .execute(&mut *tx)
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
        let id = inserted.last_insert_rowid();
        self.upsert_versions(&mut tx, id, consumer, &doing).await?;
        self.append_audit(&mut tx, audit, &doing).await?;
        self.remember_idempotency(&mut tx, idempotency, &doing)
            .await?;
        self.commit_write(tx, &doing).await?;
        Ok(StoredConsumer {
            id,
            revision: 1,
            consumer: consumer.clone(),
        })
    }

    async fn get_consumer(&self, r: &ConsumerRef) -> Result<Option<StoredConsumer>, StoreError> {
        let doing = format!("reading consumer {r}");
        let mut found = self.read_consumers(Filter::One(r), &doing).await?;
        Ok(found.pop())
    }

    async fn list_consumers(
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

    async fn write_consumer(&self, write: ConsumerWrite<'_>) -> Result<StoredConsumer, StoreError> {
        let consumer = write.consumer;
        let doing = format!("writing consumer {}", consumer.reference());
        let (retire_policy, idle_ms, on_stall) = rows::policy_values(consumer)?;
        let mut tx = self.begin_write(&doing).await?;
        // `updated_at` is the time of the latest audited change this write carries; a write
        // without audit entries leaves it as it was rather than reading a clock here.
        let updated_at = write.audit.iter().map(|a| a.at.unix_millis()).max();
        let updated = sqlx::query(
            "UPDATE consumers SET scopes = ?1, owner = ?2, disabled = ?3, \
             revision = revision + 1, updated_at = COALESCE(?4, updated_at), \
             retire_policy = ?9, idle_ms = ?10, on_stall = ?11 \
             WHERE id = ?5 AND environment = ?6 AND name = ?7 AND revision = ?8",
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
            sqlx::query_scalar("SELECT count(*) FROM key_versions WHERE consumer_id = ?1")
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
        self.append_audit(&mut tx, write.audit, &doing).await?;
        self.append_events(&mut tx, write.events, &doing).await?;
        self.remember_idempotency(&mut tx, write.idempotency, &doing)
            .await?;
        self.commit_write(tx, &doing).await?;
        Ok(StoredConsumer {
            id: write.id,
            revision: write.expected_revision + 1,
            consumer: consumer.clone(),
        })
    }

    async fn find_idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT key, request_hash, status, response, created_at, sealed_key \
             FROM idempotency_keys WHERE key = ?1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail("reading an idempotency key", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let place = || format!("idempotency_keys row ({key:?})");
        let place: Place<'_> = &place;
        Ok(Some(IdempotencyRecord {
            key: get(&row, 0, place)?,
            request_hash: get(&row, 1, place)?,
            status: rows::http_status(get(&row, 2, place)?, place)?,
            response: get(&row, 3, place)?,
            created_at: Timestamp::from_unix_millis(get(&row, 4, place)?),
            sealed_key: get(&row, 5, place)?,
        }))
    }

    async fn create_admin_token(
        &self,
        token: &AdminTokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let scopes = rows::join_admin_scopes(&token.id, &token.scopes)?;
        let doing = format!("creating admin token {}", token.id);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(
            "INSERT INTO admin_tokens (id, secret_hash, name, scopes, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(token.id.as_str())
        .bind(token.secret_hash.0.as_slice())
        .bind(token.name.as_str())
        .bind(scopes)
        .bind(token.created_at.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("admin token {}", token.id))
            }
            _ => self.fail(&doing, e),
        })?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    async fn find_admin_token(&self, id: &str) -> Result<Option<AdminTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, secret_hash, name, scopes, created_at FROM admin_tokens WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail("reading an admin token", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let place = || format!("admin_tokens row ({id:?})");
        let place: Place<'_> = &place;
        Ok(Some(AdminTokenRecord {
            id: get(&row, 0, place)?,
            secret_hash: rows::secret_hash(get(&row, 1, place)?, place)?,
            name: get(&row, 2, place)?,
            scopes: rows::admin_scopes(get(&row, 3, place)?),
            created_at: Timestamp::from_unix_millis(get(&row, 4, place)?),
        }))
    }

    async fn count_admin_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail("counting admin tokens", e))?;
        rows::count(n, &|| "admin_tokens".to_owned())
    }

    async fn create_admin_token_entry(
        &self,
        token: &crate::AdminTokenEntry,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.token_create(token, audit).await
    }

    async fn get_admin_token(
        &self,
        id: &str,
    ) -> Result<Option<crate::AdminTokenEntry>, StoreError> {
        self.token_get(id).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<crate::AdminTokenEntry>, StoreError> {
        self.token_list().await
    }

    async fn revoke_admin_token(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
        guard: crate::AdminGuard,
        audit: &AuditRecord,
    ) -> Result<crate::TokenRevocation, StoreError> {
        self.token_revoke(id, at, reason, guard, audit).await
    }

    async fn rotate_admin_token(
        &self,
        old_id: &str,
        retires_at: Timestamp,
        new: &crate::AdminTokenEntry,
        audit: &[AuditRecord],
    ) -> Result<crate::AdminTokenEntry, StoreError> {
        self.token_rotate(old_id, retires_at, new, audit).await
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, detail, request_id, remote_addr \
             FROM audit_log ORDER BY seq DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the audit log", e))?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_usage(&self, batch: &[UsageDelta], max_sources: u32) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let merged = crate::usage::merge(batch);
        let doing = format!("recording the usage of {} versions", merged.last_used.len());
        // Made before taking the write lock, which is held only for the statements.
        let last_used = usage::last_used_json(&merged.last_used);
        let hourly = (!merged.hourly.is_empty()).then(|| usage::hourly_json(&merged.hourly));
        let sources = (!merged.sources.is_empty()).then(|| usage::sources_json(&merged.sources));
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(usage::UPSERT_LAST_USED)
            .bind(last_used.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        if let Some(hourly) = &hourly {
            sqlx::query(usage::UPSERT_HOURLY)
                .bind(hourly.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
        }
        if let Some(sources) = &sources {
            sqlx::query(usage::UPSERT_SOURCES)
                .bind(sources.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
        }
        // Every kid of the batch, not only those with new sources: a smaller `max_sources` than
        // last time applies to them too.
        sqlx::query(usage::TRIM_SOURCES)
            .bind(last_used.as_str())
            .bind(i64::from(max_sources))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        self.commit_write(tx, &doing).await
    }

    async fn last_used_all(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        let Some(file) = self.file.clone() else {
            let mut rows = sqlx::query(load::SELECT_LAST_USED_ALL).fetch(&self.pool);
            let mut all = Vec::new();
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| self.fail(LOADING_LAST_USED, e))?
            {
                let table = || "version_usage row".to_owned();
                all.push(rows::last_used(
                    get(&row, 0, &table)?,
                    get(&row, 1, &table)?,
                )?);
            }
            return Ok(all);
        };
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || load::last_used_all(&file, &location))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "SQLite database {}: {LOADING_LAST_USED}: the reading task failed: {e}",
                    self.location
                ))
            })?
    }

    async fn usage(&self, kids: &[Kid], since: Timestamp) -> Result<Vec<VersionUsage>, StoreError> {
        if kids.is_empty() {
            return Ok(Vec::new());
        }
        let doing = format!("reading the usage of {} versions", kids.len());
        let json = usage::kids_json(kids.iter().map(Kid::as_str));
        let mut found: HashMap<&str, VersionUsage> = kids
            .iter()
            .map(|kid| (kid.as_str(), unused(*kid)))
            .collect();
        let fail = |e: sqlx::Error| self.fail(&doing, e);
        let mut tx = self.begin_read(&doing).await?;
        let last_used = sqlx::query(usage::SELECT_LAST_USED)
            .bind(json.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let hourly = sqlx::query(usage::SELECT_HOURLY)
            .bind(json.as_str())
            .bind(since.unix_millis())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let sources = sqlx::query(usage::SELECT_SOURCES)
            .bind(json.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        self.commit(tx, &doing).await?;

        for row in &last_used {
            let table = || "version_usage row".to_owned();
            let kid: &str = get(row, 0, &table)?;
            let place = || format!("version_usage row (kid {kid})");
            let at: i64 = get(row, 1, &place)?;
            if let Some(entry) = found.get_mut(kid) {
                entry.last_used_at = Some(Timestamp::from_unix_millis(at));
            }
        }
        for row in &hourly {
            let table = || "usage_hourly row".to_owned();
            let kid: &str = get(row, 0, &table)?;
            let hour: i64 = get(row, 1, &table)?;
            let place = || format!("usage_hourly row (kid {kid}, hour {hour})");
            let count = rows::counter(get(row, 2, &place)?, "count", &place)?;
            if let Some(entry) = found.get_mut(kid) {
                entry
                    .hourly
                    .push((Timestamp::from_unix_millis(hour), count));
            }
        }
        for row in &sources {
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
            if let Some(entry) = found.get_mut(kid) {
                entry.sources.push(source);
            }
        }

        // In the order asked; a kid asked twice is answered twice.
        let mut answer: Vec<VersionUsage> = Vec::with_capacity(kids.len());
        for kid in kids {
            let entry = match found.remove(kid.as_str()) {
                Some(entry) => entry,
                None => answer
                    .iter()
                    .find(|u| u.kid == *kid)
                    .cloned()
                    .unwrap_or_else(|| unused(*kid)),
            };
            answer.push(entry);
        }
        Ok(answer)
    }

    async fn list_events(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, consumer, version, detail FROM events \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the event outbox", e))?;
        rows.iter().map(event_from_row).collect()
    }

    async fn installation(&self, new_id: &str) -> Result<Installation, StoreError> {
        let doing = "reading the installation id";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query(
            "INSERT INTO installation (only, id, created_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (only) DO NOTHING",
        )
        .bind(new_id)
        .bind(unix_millis_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let row = sqlx::query(
            "SELECT id, created_at, \
             NOT EXISTS (SELECT 1 FROM admin_tokens) AND NOT EXISTS (SELECT 1 FROM environments) \
             AND NOT EXISTS (SELECT 1 FROM consumers) AND NOT EXISTS (SELECT 1 FROM audit_log) \
             FROM installation",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await?;
        let place = || "installation row".to_owned();
        let place: Place<'_> = &place;
        Ok(Installation {
            id: get(&row, 0, place)?,
            created_at: Timestamp::from_unix_millis(get(&row, 1, place)?),
            empty: get(&row, 2, place)?,
        })
    }
}

/// The wall clock for the probe row (the store otherwise takes times from its callers): a
/// diagnostic value nothing decides on.
#[allow(clippy::disallowed_methods)]
fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// A version's usage before anything is known of it.
fn unused(kid: Kid) -> VersionUsage {
    VersionUsage {
        kid,
        last_used_at: None,
        hourly: Vec::new(),
        sources: Vec::new(),
    }
}
