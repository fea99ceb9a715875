//! The SQLite [`Store`](crate::Store): one file beside the config, zero setup, the default
//! backend (SPEC §11).
//!
//! This module opens the database (pool, WAL, migrations), hands out transactions, and
//! implements the trait by delegating each operation to the module of its concern:
//! - [`consumers`]: consumer and version reads, `create_consumer`, `write_consumer`;
//! - [`audit`]: the audit log and the event outbox; [`idempotency`]: `Idempotency-Key` records;
//! - [`environments`], [`tokens`] (admin tokens), [`installation`], [`usage`];
//! - [`load`]: the bulk reads at start (`load_all`, `last_used_all`) through rusqlite;
//! - [`ca`]: the certificate authority (authorities, certificates, CRLs, handshake uses);
//! - [`cluster`]: the change log, node heartbeats, the leader lease, recent last uses;
//! - [`webhooks`]: webhook endpoints, deliveries, attempts and the sender's cursor;
//! - [`health`]: the outage state, the write probe and the database file's identity;
//! - [`decode`]: every sqlx row to a record; [`errors`]: every SQLite failure to a
//!   [`StoreError`].
//!
//! Settings and why:
//! - WAL journal: readers (`load_all`, admin reads) never wait for the writer, and a commit is one
//!   append to the log.
//! - `synchronous = NORMAL`: with WAL, a commit survives a crash of the process; only a power
//!   loss can lose the last commits, and never corrupts the file.
//! - `busy_timeout` 5 s: several nodes never share a SQLite file, but several connections of the
//!   pool do; a writer waits for another instead of failing at once.
//! - Writes start with `BEGIN IMMEDIATE` ([`SqliteStore::begin_write`]), taking the write lock
//!   before the first read, so two writers queue on the busy timeout instead of one of them
//!   failing with `SQLITE_BUSY` when it tries to upgrade a read snapshot.
//! - Reads of a consumer and its versions run in one (deferred) transaction
//!   ([`SqliteStore::begin_read`]): both queries see the same snapshot, so a concurrent write can
//!   never pair a consumer row with versions of another revision, nor show versions of a
//!   consumer created between the two queries.
//! - A failed transaction never goes back to the pool open. sqlx rolls a dropped transaction
//!   back lazily, and when SQLite has already rolled it back itself (it does on `SQLITE_FULL`
//!   and I/O errors) that `ROLLBACK` fails and sqlx still counts the transaction as open: every
//!   later `BEGIN` on that connection failed, until a restart. The pool's `after_release` check
//!   waits for the queued rollback and closes a connection still inside a transaction; the pool
//!   opens a fresh one.
//! - After the first open the pool never creates the file: a connection opened later must not
//!   make a new, empty database where the opened one was deleted (and `ping`, writes and read
//!   transactions check that the file is still the one opened, see [`health`]).

mod audit;
mod ca;
mod cluster;
mod consumers;
mod decode;
mod delivery;
mod environments;
mod errors;
mod health;
mod idempotency;
mod installation;
mod load;
mod sessions;
mod tokens;
mod usage;
mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyroll_core::{Consumer, ConsumerRef, Environment, Kid, Timestamp};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite};

use crate::{
    AdminGuard, AdminTokenEntry, AdminTokenRecord, AgentRecord, AuditQuery, AuditRecord,
    ChainedAudit, ConsumerWrite, DeliveryRecord, EnvironmentRecord, EventRecord, HandoverRecord,
    IdempotencyRecord, Installation, StoreError, StoredConsumer, TokenRevocation, UsageDelta,
    VersionUsage,
};
use crate::{ChangeListener, ChangeRecord, Lease, NodeRecord};
use crate::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use errors::{migrate_error, open_error};
use health::{FileId, file_id};

/// The schema, embedded at build time (`build.rs` makes cargo rebuild when a file is added).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another's write lock before the operation fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite serialises writers anyway; a few connections let reads run beside a write.
const MAX_CONNECTIONS: u32 = 4;

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
        let store = SqliteStore {
            pool,
            location,
            file,
            identity,
            outage: Arc::new(Mutex::new(None)),
        };
        store.chain_unchained_audit().await?;
        Ok(store)
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
}

#[async_trait]
impl crate::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_health().await
    }

    async fn load_all(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        self.load_all_consumers().await
    }

    async fn create_environment(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.environment_create(env, audit).await
    }

    async fn update_environment(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.environment_update(env, audit).await
    }

    async fn list_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.environment_list().await
    }

    async fn get_environment(
        &self,
        name: &Environment,
    ) -> Result<Option<EnvironmentRecord>, StoreError> {
        self.environment_get(name).await
    }

    async fn create_consumer(
        &self,
        consumer: &Consumer,
        audit: &[AuditRecord],
        events: &[EventRecord],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<StoredConsumer, StoreError> {
        self.consumer_create(consumer, audit, events, idempotency)
            .await
    }

    async fn get_consumer(&self, r: &ConsumerRef) -> Result<Option<StoredConsumer>, StoreError> {
        self.consumer_get(r).await
    }

    async fn list_consumers(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        self.consumer_list(environment).await
    }

    async fn list_schedule_candidates(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        self.consumer_schedule_candidates().await
    }

    async fn write_consumer(&self, write: ConsumerWrite<'_>) -> Result<StoredConsumer, StoreError> {
        self.consumer_write(write).await
    }

    async fn find_idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.idempotency_find(key).await
    }

    async fn create_admin_token(
        &self,
        token: &AdminTokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.token_create_record(token, audit).await
    }

    async fn find_admin_token(&self, id: &str) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.token_find_record(id).await
    }

    async fn count_admin_tokens(&self) -> Result<u64, StoreError> {
        self.token_count().await
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_list(limit).await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<ChainedAudit>, StoreError> {
        self.audit_query(query).await
    }

    async fn record_usage(&self, batch: &[UsageDelta], max_sources: u32) -> Result<(), StoreError> {
        self.usage_record(batch, max_sources).await
    }

    async fn last_used_all(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        self.load_last_used().await
    }

    async fn usage(&self, kids: &[Kid], since: Timestamp) -> Result<Vec<VersionUsage>, StoreError> {
        self.usage_read(kids, since).await
    }

    async fn list_events(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.event_list(after_seq, limit).await
    }

    async fn create_admin_token_entry(
        &self,
        token: &AdminTokenEntry,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.token_create(token, audit).await
    }

    async fn get_admin_token(&self, id: &str) -> Result<Option<AdminTokenEntry>, StoreError> {
        self.token_get(id).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenEntry>, StoreError> {
        self.token_list().await
    }

    async fn revoke_admin_token(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
        guard: AdminGuard,
        audit: &AuditRecord,
    ) -> Result<TokenRevocation, StoreError> {
        self.token_revoke(id, at, reason, guard, audit).await
    }

    async fn rotate_admin_token(
        &self,
        old_id: &str,
        retires_at: Timestamp,
        new: &AdminTokenEntry,
        audit: &[AuditRecord],
    ) -> Result<AdminTokenEntry, StoreError> {
        self.token_rotate(old_id, retires_at, new, audit).await
    }

    async fn installation(&self, new_id: &str) -> Result<Installation, StoreError> {
        self.installation_get(new_id).await
    }

    async fn master_key_check(&self, check: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.installation_master_key_check(check).await
    }

    async fn create_ui_session(&self, session: &crate::UiSession) -> Result<(), StoreError> {
        self.session_create(session).await
    }

    async fn get_ui_session(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<crate::UiSession>, StoreError> {
        self.session_get(id_hash).await
    }

    async fn touch_ui_session(&self, id_hash: &[u8; 32], at: Timestamp) -> Result<(), StoreError> {
        self.session_touch(id_hash, at).await
    }

    async fn delete_ui_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.session_delete(id_hash).await
    }

    async fn prune_ui_sessions(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
    ) -> Result<u64, StoreError> {
        self.session_prune(now, idle_before).await
    }

    async fn ca_state(&self) -> Result<crate::CaState, StoreError> {
        self.ca_state_read().await
    }

    async fn write_ca(&self, write: crate::CaWrite<'_>) -> Result<crate::CaCommit, StoreError> {
        self.ca_write(write).await
    }

    async fn list_certificates(
        &self,
        query: &crate::CertQuery,
    ) -> Result<Vec<crate::IssuedCertRecord>, StoreError> {
        self.cert_list(query).await
    }

    async fn get_certificate(
        &self,
        serial: &str,
    ) -> Result<Option<crate::IssuedCertRecord>, StoreError> {
        self.cert_get(serial).await
    }

    async fn identity_revocation(
        &self,
        identity: &ConsumerRef,
    ) -> Result<Option<crate::RevokedIdentityRecord>, StoreError> {
        self.identity_revocation_get(identity).await
    }

    async fn record_handshakes(&self, uses: &[crate::HandshakeUse]) -> Result<(), StoreError> {
        self.handshakes_record(uses).await
    }

    async fn list_handshakes(
        &self,
        since: Timestamp,
    ) -> Result<Vec<crate::HandshakeUse>, StoreError> {
        self.handshakes_list(since).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.webhook_endpoint_create(endpoint, audit).await
    }

    async fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        self.webhook_endpoint_get(id).await
    }

    async fn list_webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.webhook_endpoint_list().await
    }

    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<(), StoreError> {
        self.webhook_endpoint_update(endpoint, audit, events).await
    }

    async fn delete_webhook_endpoint(
        &self,
        id: &str,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.webhook_endpoint_delete(id, audit).await
    }

    async fn webhook_cursor(&self) -> Result<i64, StoreError> {
        self.webhook_cursor_get().await
    }

    async fn enqueue_webhook_deliveries(
        &self,
        from: i64,
        to: i64,
        deliveries: &[WebhookDelivery],
    ) -> Result<(), StoreError> {
        self.webhook_enqueue(from, to, deliveries).await
    }

    async fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.webhook_due(now, limit).await
    }

    async fn record_webhook_attempt(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), StoreError> {
        self.webhook_record_attempt(delivery, attempt).await
    }

    async fn list_webhook_deliveries(
        &self,
        query: &DeliveryQuery,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.webhook_delivery_list(query).await
    }

    async fn get_webhook_delivery(
        &self,
        id: &str,
    ) -> Result<Option<(WebhookDelivery, Vec<WebhookAttempt>)>, StoreError> {
        self.webhook_delivery_get(id).await
    }

    async fn find_handover(
        &self,
        consumer_id: i64,
        from_version: u32,
    ) -> Result<Option<HandoverRecord>, StoreError> {
        self.handover_find(consumer_id, from_version).await
    }

    async fn record_agent(
        &self,
        consumer_id: i64,
        agent: &AgentRecord,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<bool, StoreError> {
        self.agent_record(consumer_id, agent, audit, events).await
    }

    async fn list_agents(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        self.agent_list(environment).await
    }

    async fn list_deliveries(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.delivery_list(environment).await
    }

    async fn change_head(&self) -> Result<i64, StoreError> {
        self.change_head_get().await
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<ChangeRecord>, StoreError> {
        self.change_list(after, limit).await
    }

    async fn consumers_by_id(&self, ids: &[i64]) -> Result<Vec<StoredConsumer>, StoreError> {
        self.consumer_by_ids(ids).await
    }

    async fn listen_changes(&self) -> Result<Option<Box<dyn ChangeListener>>, StoreError> {
        // One node per SQLite file: nothing else commits changes to notify of; callers poll.
        Ok(None)
    }

    async fn prune_changes(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.change_prune(before).await
    }

    async fn heartbeat_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.node_heartbeat(node).await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.node_list().await
    }

    async fn remove_node(&self, node_id: &str) -> Result<(), StoreError> {
        self.node_remove(node_id).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_acquire(name, holder, now, ttl).await
    }

    async fn get_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.lease_get(name).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.lease_release(name, holder).await
    }

    async fn last_used_since(&self, since: Timestamp) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        self.usage_last_used_since(since).await
    }
}
