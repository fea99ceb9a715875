//! The PostgreSQL [`Store`](crate::Store): one database shared by several keyroll nodes
//! (SPEC §11), with the same conformance suite as SQLite.
//!
//! This module opens the database (pool, migrations), hands out transactions, and implements the
//! trait by delegating each operation to the module of its concern, split as the SQLite backend
//! is:
//! - [`consumers`]: consumer and version reads, `create_consumer`, `write_consumer`;
//! - [`audit`]: the audit log and the event outbox; [`idempotency`]: `Idempotency-Key` records;
//! - [`environments`], [`tokens`] (admin tokens), [`installation`], [`usage`];
//! - [`load`]: the bulk reads at start (`load_all`, `last_used_all`), streamed through a binary
//!   `COPY` parsed by [`copy`];
//! - [`webhooks`]: webhook endpoints, deliveries, attempts and the sender's cursor;
//! - [`delivery`]: handovers, agents' reports and deliveries;
//! - [`health`]: `ping`, the outage state and the write probe;
//! - [`ca`]: the certificate authority (authorities, certificates, CRLs, handshake uses);
//! - [`cluster`]: the change log and its notifications, node heartbeats, the leader lease,
//!   recent last uses;
//! - [`decode`]: every sqlx row to a record; [`errors`]: every PostgreSQL failure to a
//!   [`StoreError`].
//!
//! Settings and why:
//! - Fail fast when the database is down: a connection attempt and the wait for a pooled
//!   connection are each bounded by about 2 s ([`CONNECT_TIMEOUT`], [`ACQUIRE_TIMEOUT`]), so an
//!   admin write during an outage answers `Unavailable` (503) quickly instead of hanging, and the
//!   verification path, which never touches the store, is unaffected.
//! - Ten connections at most: writes are short transactions; several nodes share the server's
//!   `max_connections`.
//! - Isolation: writes run in READ COMMITTED and are made safe by what they lock, not by retries:
//!   a consumer write is guarded by its `revision` (`UPDATE … WHERE revision = $n`, which waits
//!   for a concurrent writer of the row and then re-checks); appends to the audit chain and the
//!   outbox hold one transaction-scoped advisory lock ([`APPEND_LOCK`]) from before they read the
//!   chain's head until commit, so the chain stays one chain across nodes and `seq`s commit in
//!   order; usage flushes hold [`USAGE_LOCK`]; the admin-token checks hold [`TOKENS_LOCK`].
//!   Locks are always taken in the order tokens → usage → append, and a transaction takes
//!   [`APPEND_LOCK`] last, so they cannot deadlock with one another.
//! - Reads of a consumer and its versions (and `load_all`) run in one REPEATABLE READ, READ ONLY
//!   transaction: both queries see one snapshot.

mod audit;
mod ca;
mod cluster;
mod consumers;
mod copy;
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

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyroll_core::{Consumer, ConsumerRef, Environment, Kid, Timestamp};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use crate::{
    AdminGuard, AdminTokenEntry, AdminTokenRecord, AgentRecord, AuditQuery, AuditRecord,
    ChainedAudit, ConsumerWrite, DeliveryQuery, DeliveryRecord, EnvironmentRecord, EventRecord,
    HandoverRecord, IdempotencyRecord, Installation, StoreError, StoredConsumer, TokenRevocation,
    UsageDelta, VersionUsage, WebhookAttempt, WebhookDelivery, WebhookEndpoint,
};
use crate::{ChangeListener, ChangeRecord, Lease, NodeRecord};
use errors::{migrate_error, open_error};

/// The schema, embedded at build time (`build.rs` makes cargo rebuild when a file is added).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long one connection attempt may take (TCP, TLS, startup, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an operation waits for a pooled connection (including opening one) before it fails
/// as `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Per node; writes are short.
const MAX_CONNECTIONS: u32 = 10;

/// Advisory lock keys (`pg_advisory_xact_lock`), constants of keyroll's own: `b"krAPPEND"` etc.
/// read as big-endian integers, unlikely to meet another application's keys in the same database.
/// Held by every transaction that appends to the audit log or the outbox.
pub(super) const APPEND_LOCK: i64 = i64::from_be_bytes(*b"krAPPEND");
/// Held by every usage flush.
pub(super) const USAGE_LOCK: i64 = i64::from_be_bytes(*b"krUSAGE_");
/// Held by admin-token revocations and rotations (the last-admin check).
pub(super) const TOKENS_LOCK: i64 = i64::from_be_bytes(*b"krTOKENS");

/// Bounds on every write transaction, set for this transaction only (`set_config(…, true)` is
/// `SET LOCAL` in one round trip; a pooler in transaction mode keeps working). Writers of several nodes queue on the same locks
/// (the change counter's row, [`APPEND_LOCK`]): a wait longer than `lock_timeout` means another
/// node holds a lock it is not using, which is an outage to report (`Unavailable`, 503), not a
/// queue to join forever. A transaction its client left idle (a paused process, a half-open link
/// after a partition) is ended by the server after `idle_in_transaction_session_timeout`,
/// freeing its locks for the other nodes; the client then sees its connection closed.
pub(super) const WRITE_LIMITS: &str = "SELECT set_config('lock_timeout', '5s', true), \
     set_config('idle_in_transaction_session_timeout', '15s', true)";

/// `BEGIN` for reads that must see one snapshot.
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The [`Store`](crate::Store) on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The database URL with its password redacted, for error messages.
    location: String,
    /// The connection settings, for a direct connection that tells why the pool has none.
    options: PgConnectOptions,
    /// The outage the last failed operation met, until a write succeeds again.
    outage: Arc<Mutex<Option<String>>>,
}

impl PostgresStore {
    /// Opens the database at a `postgres://` (or `postgresql://`) URL and brings its schema up
    /// to date. Several nodes may open the same database at once: migrations run under
    /// PostgreSQL's advisory lock.
    ///
    /// Errors name the database (password redacted): `Unavailable` when the URL is not a
    /// PostgreSQL URL or the server cannot be reached, refuses the login or has no such database
    /// (within about 2 s); `Corrupt` when the schema was migrated by a newer keyroll.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let location = keyroll_core::redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Unavailable(format!(
                "cannot open PostgreSQL database {location}: not a postgres:// URL"
            )));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open PostgreSQL database {location}: {}",
                keyroll_core::redact_url(&e.to_string())
            ))
        })?;
        // One direct connection first: the pool retries a refused connection until its timeout
        // and then reports only that it timed out, while this says why (refused, unknown host,
        // authentication, no such database).
        let first = connect_once(&options)
            .await
            .map_err(|e| open_error(&location, e))?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A server restart leaves dead connections in the pool: the check before handing one
            // out replaces them instead of failing the operation.
            .test_before_acquire(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(&location, e))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| migrate_error(&location, e))?;
        tracing::debug!(database = %location, "opened PostgreSQL store");
        let store = PostgresStore {
            pool,
            location,
            options,
            outage: Arc::new(Mutex::new(None)),
        };
        store.chain_unchained_audit().await?;
        Ok(store)
    }

    /// Starts a write transaction (READ COMMITTED; see the module documentation).
    async fn begin_write(
        &self,
        doing: &str,
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.fail(doing, e))?;
        sqlx::query(WRITE_LIMITS)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        Ok(tx)
    }

    /// Commits a write transaction: its success shows the store takes writes again.
    async fn commit_write(
        &self,
        tx: sqlx::Transaction<'static, Postgres>,
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
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with(BEGIN_SNAPSHOT)
            .await
            .map_err(|e| self.fail(doing, e))
    }

    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, Postgres>,
        doing: &str,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| self.fail(doing, e))
    }
}

/// One connection, bounded by [`CONNECT_TIMEOUT`].
async fn connect_once(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs_f32().round()
            ),
        ))),
    }
}

/// Takes a transaction-scoped advisory lock: held until the transaction ends.
async fn lock(conn: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

#[async_trait]
impl crate::Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
        self.change_listener().await.map(Some)
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
