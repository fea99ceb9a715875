//! What several nodes on one database share, on PostgreSQL: the change log and its
//! notifications, node heartbeats, the leader lease and the adoption merge's read.
//!
//! Invariants:
//! - A consumer change takes the next seq of the one-row `change_counter` inside its own write
//!   transaction ([`PostgresStore::log_change`]), stores it on the consumer and appends it to
//!   `changes`. The `UPDATE` of the counter row locks it until the transaction ends, so writers
//!   of consumers on every node take seqs one after another and commit in seq order, and a
//!   rolled-back change rolls its increment back: the log has no gaps. The counter is taken
//!   last in the transaction (after the append lock of [`audit`](super::audit)), so the row is
//!   held only for the commit, and the two locks are always taken in one order.
//! - The same transaction sends `pg_notify('keyroll_changes', seq)`, which PostgreSQL delivers
//!   at commit and never for a rolled-back transaction, in commit order.
//! - [`PgChangeListener`] listens on a connection of its own (not one of the pool's). A lost
//!   connection is an `Err(Unavailable)` from `next`; the call after reconnects and, since
//!   notifications sent meanwhile are lost, answers the current head first, so a caller that
//!   catches up to each answer misses nothing.
//! - Pruning removes old `changes` rows only; the counter keeps the head, so a node whose
//!   `applied` fell behind the oldest logged change can tell and reload everything.
//! - The lease is taken by one conditional upsert: two nodes never both get it (the second
//!   waits for the first's row and re-checks the condition on it).

use std::time::Duration;

use async_trait::async_trait;
use keyroll_core::{Kid, Timestamp};
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::consumers::Filter;
use super::decode::{change_from_row, lease_from_row, node_from_row, usage_last_used_from_row};
use super::errors::classify;
use super::{ACQUIRE_TIMEOUT, PostgresStore};
use crate::rows;
use crate::rows::millis;
use crate::{ChangeListener, ChangeRecord, Lease, NodeRecord, StoreError, StoredConsumer};

/// The channel of change notifications; the payload is the change's seq.
const CHANNEL: &str = "keyroll_changes";

/// Takes the lease when free, expired at `$3` (`expires_at <= now`) or held by `$2`; a new
/// tenure (another holder, or a lapsed lease) gets the next term and starts at `$3`, a renewal
/// keeps both. `SET` expressions read the row as it was, whatever their order.
const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, holder, term, acquired_at, expires_at) \
     VALUES ($1, $2, 1, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET \
     term = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > excluded.acquired_at \
     THEN leases.term ELSE leases.term + 1 END, \
     acquired_at = CASE WHEN leases.holder = excluded.holder \
     AND leases.expires_at > excluded.acquired_at \
     THEN leases.acquired_at ELSE excluded.acquired_at END, \
     holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at \
     RETURNING name, holder, term, acquired_at, expires_at";

const NODE_COLUMNS: &str = "node_id, address, version, started_at, heartbeat_at, applied_seq, \
     usage_flushed_at, leader";

impl PostgresStore {
    /// Takes the next change seq for consumer `consumer_id` inside a write transaction: bumps
    /// the counter, stores the seq on the consumer and appends it to the log at `at` (else the
    /// consumer's `updated_at`). Returns the seq.
    pub(super) async fn log_change(
        &self,
        conn: &mut PgConnection,
        consumer_id: i64,
        at: Option<Timestamp>,
        doing: &str,
    ) -> Result<i64, StoreError> {
        // One round trip for the counter, the consumer's seq and the log row.
        let seq: i64 = sqlx::query_scalar(
            "WITH next AS (UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq), \
             consumer AS (UPDATE consumers SET change_seq = (SELECT seq FROM next) \
             WHERE id = $1 RETURNING id, updated_at) \
             INSERT INTO changes (seq, consumer_id, at) \
             SELECT next.seq, consumer.id, COALESCE($2, consumer.updated_at) FROM next, consumer \
             RETURNING seq",
        )
        .bind(consumer_id)
        .bind(at.map(Timestamp::unix_millis))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "PostgreSQL database {}: {doing}: the change_counter row or consumer {consumer_id} \
                 is missing",
                self.location
            ))
        })?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(seq.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        Ok(seq)
    }

    /// Takes the next change seq for a CA change (the trust bundle changed) inside a write
    /// transaction, appends it to the log as kind `ca` and notifies. Returns the seq.
    pub(super) async fn log_ca_change(
        &self,
        conn: &mut PgConnection,
        at: Timestamp,
        doing: &str,
    ) -> Result<i64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "WITH next AS (UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq) \
             INSERT INTO changes (seq, consumer_id, at, kind) \
             SELECT next.seq, 0, $1, 'ca' FROM next RETURNING seq",
        )
        .bind(at.unix_millis())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "PostgreSQL database {}: {doing}: the change_counter row is missing",
                self.location
            ))
        })?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(seq.to_string())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        Ok(seq)
    }

    pub(super) async fn change_head_get(&self) -> Result<i64, StoreError> {
        let doing = "reading the change head";
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM change_counter WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.fail(doing, e))?;
        seq.ok_or_else(|| StoreError::Corrupt("the change_counter row is missing".to_owned()))
    }

    pub(super) async fn change_list(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let doing = format!("reading changes after {after}");
        let rows = sqlx::query(
            "SELECT seq, consumer_id, at, kind FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        rows.iter().map(change_from_row).collect()
    }

    pub(super) async fn consumer_by_ids(
        &self,
        ids: &[i64],
    ) -> Result<Vec<StoredConsumer>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let doing = format!("reading {} consumers by id", ids.len());
        self.read_consumers(Filter::Ids(ids), &doing).await
    }

    pub(super) async fn change_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        let doing = "pruning the change log";
        let mut tx = self.begin_write(doing).await?;
        let deleted = sqlx::query("DELETE FROM changes WHERE at < $1")
            .bind(before.unix_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await?;
        Ok(deleted.rows_affected())
    }

    pub(super) async fn node_heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let doing = format!("recording the heartbeat of node {}", node.node_id);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(&format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
             version = excluded.version, started_at = excluded.started_at, \
             heartbeat_at = excluded.heartbeat_at, applied_seq = excluded.applied_seq, \
             usage_flushed_at = excluded.usage_flushed_at, leader = excluded.leader"
        ))
        .bind(node.node_id.as_str())
        .bind(node.address.as_deref())
        .bind(node.version.as_str())
        .bind(node.started_at.unix_millis())
        .bind(node.heartbeat_at.unix_millis())
        .bind(node.applied_seq)
        .bind(node.usage_flushed_at.map(Timestamp::unix_millis))
        .bind(node.leader)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn node_list(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let doing = "listing nodes";
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY node_id COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        rows.iter().map(node_from_row).collect()
    }

    pub(super) async fn node_remove(&self, node_id: &str) -> Result<(), StoreError> {
        let doing = format!("removing node {node_id}");
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query("DELETE FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let doing = format!("taking the {name} lease for {holder}");
        let mut tx = self.begin_write(&doing).await?;
        let expires_at = now.unix_millis().saturating_add(millis(ttl));
        let row = sqlx::query(ACQUIRE_LEASE)
            .bind(name)
            .bind(holder)
            .bind(now.unix_millis())
            .bind(expires_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        let lease = row.as_ref().map(lease_from_row).transpose()?;
        self.commit_write(tx, &doing).await?;
        Ok(lease)
    }

    pub(super) async fn lease_get(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let doing = format!("reading the {name} lease");
        let row = sqlx::query(
            "SELECT name, holder, term, acquired_at, expires_at FROM leases WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        row.as_ref().map(lease_from_row).transpose()
    }

    pub(super) async fn lease_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let doing = format!("releasing the {name} lease of {holder}");
        let mut tx = self.begin_write(&doing).await?;
        // Lapsed rather than deleted: the row keeps the term, so the next tenure's is higher.
        // `expires_at = 0` is before any `now` a caller passes.
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn usage_last_used_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        let doing = "reading recent last uses";
        let rows =
            sqlx::query("SELECT kid, last_used_at FROM version_usage WHERE last_used_at >= $1")
                .bind(since.unix_millis())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.fail(doing, e))?;
        rows.iter()
            .map(|row| {
                let (kid, at) = usage_last_used_from_row(row)?;
                rows::last_used(kid, at.unix_millis())
            })
            .collect()
    }
}

impl PostgresStore {
    /// A listener on a connection of its own, listening already.
    pub(super) async fn change_listener(&self) -> Result<Box<dyn ChangeListener>, StoreError> {
        let mut listener = PgChangeListener {
            options: self.options.clone(),
            location: self.location.clone(),
            inner: None,
        };
        listener.inner = Some(listener.connect().await?);
        Ok(Box::new(listener))
    }
}

/// Notifications of committed changes through `LISTEN keyroll_changes`.
pub(super) struct PgChangeListener {
    options: PgConnectOptions,
    location: String,
    /// `None` after the connection was lost, until the next `next` reconnects.
    inner: Option<PgListener>,
}

impl std::fmt::Debug for PgChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeListener")
            .field("database", &self.location)
            .field("connected", &self.inner.is_some())
            .finish()
    }
}

impl PgChangeListener {
    fn fail(&self, doing: &str, err: sqlx::Error) -> StoreError {
        match classify(&self.location, doing, err) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            // Whatever breaks a listener, the caller's answer is the same: catch up and listen
            // again.
            other => StoreError::Unavailable(other.to_string()),
        }
    }

    /// A dedicated one-connection pool (the listener reconnects through it), listening.
    async fn connect(&self) -> Result<PgListener, StoreError> {
        let doing = "listening for changes";
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(self.options.clone())
            .await
            .map_err(|e| self.fail(doing, e))?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| self.fail(doing, e))?;
        // The pool is this listener's alone: nothing closes it but the listener's drop.
        listener.ignore_pool_close_event(true);
        // A lost connection is reported first (`Ok(None)`), reconnected on the next call.
        listener.eager_reconnect(false);
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| self.fail(doing, e))?;
        Ok(listener)
    }
}

#[async_trait]
impl ChangeListener for PgChangeListener {
    async fn next(&mut self) -> Result<i64, StoreError> {
        let doing = "waiting for change notifications";
        let Some(listener) = self.inner.as_mut() else {
            // Reconnected after a loss: notifications of the meantime are gone, so the head,
            // read after LISTEN, stands for them.
            let mut listener = self.connect().await?;
            let head: i64 = sqlx::query_scalar("SELECT seq FROM change_counter WHERE id = 1")
                .fetch_one(&mut listener)
                .await
                .map_err(|e| self.fail(doing, e))?;
            self.inner = Some(listener);
            return Ok(head);
        };
        let lost = match listener.try_recv().await {
            Ok(Some(notification)) => {
                let payload = notification.payload();
                return payload.parse::<i64>().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "PostgreSQL database {}: {doing}: notification {payload:?} on {CHANNEL} \
                         is not a change seq",
                        self.location
                    ))
                });
            }
            Ok(None) => StoreError::Unavailable(format!(
                "PostgreSQL database {}: {doing}: the connection was lost",
                self.location
            )),
            Err(e) => self.fail(doing, e),
        };
        self.inner = None;
        Err(lost)
    }
}
