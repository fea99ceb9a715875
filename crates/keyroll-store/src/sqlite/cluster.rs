//! What several nodes on one database share, on SQLite: the change log, node heartbeats, the
//! leader lease and the adoption merge's read. (SQLite normally has one node; the server runs
//! the same code on both backends.)
//!
//! Invariants:
//! - A consumer change takes the next seq of the one-row `change_counter` inside its own write
//!   transaction ([`SqliteStore::log_change`]), stores it on the consumer and appends it to
//!   `changes`. SQLite has one writer at a time, so seqs commit in order with no gaps, and a
//!   rolled-back change takes its seq back with it.
//! - Pruning removes old `changes` rows only; the counter keeps the head, so a node whose
//!   `applied` fell behind the oldest logged change can tell and reload everything.
//! - The lease is taken by one conditional upsert: two nodes never both get it.
//! - There is no `LISTEN` on SQLite: [`listen_changes`](crate::Store::listen_changes) answers
//!   `None` and callers poll.

use std::time::Duration;

use keyroll_core::{Kid, Timestamp};
use sqlx::sqlite::SqliteConnection;

use super::SqliteStore;
use super::consumers::Filter;
use super::decode::{change_from_row, lease_from_row, node_from_row, usage_last_used_from_row};
use crate::rows;
use crate::rows::millis;
use crate::{ChangeRecord, Lease, NodeRecord, StoreError, StoredConsumer};

/// Takes the lease when free, expired at `?3` (`expires_at <= now`) or held by `?2`; a new
/// tenure (another holder, or a lapsed lease) gets the next term and starts at `?3`, a renewal
/// keeps both. `SET` expressions read the row as it was, whatever their order.
const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, holder, term, acquired_at, expires_at) \
     VALUES (?1, ?2, 1, ?3, ?4) \
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

impl SqliteStore {
    /// Takes the next change seq for consumer `consumer_id` inside a write transaction: bumps
    /// the counter, stores the seq on the consumer and appends it to the log at `at` (else the
    /// consumer's `updated_at`). Returns the seq.
    pub(super) async fn log_change(
        &self,
        conn: &mut SqliteConnection,
        consumer_id: i64,
        at: Option<Timestamp>,
        doing: &str,
    ) -> Result<i64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq",
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?
        .ok_or_else(|| StoreError::Corrupt("the change_counter row is missing".to_owned()))?;
        sqlx::query("UPDATE consumers SET change_seq = ?1 WHERE id = ?2")
            .bind(seq)
            .bind(consumer_id)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        sqlx::query(
            "INSERT INTO changes (seq, consumer_id, at) \
             SELECT ?1, id, COALESCE(?2, updated_at) FROM consumers WHERE id = ?3",
        )
        .bind(seq)
        .bind(at.map(Timestamp::unix_millis))
        .bind(consumer_id)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?;
        Ok(seq)
    }

    /// Takes the next change seq for a CA change (the trust bundle changed) inside a write
    /// transaction and appends it to the log as kind `ca`. Returns the seq.
    pub(super) async fn log_ca_change(
        &self,
        conn: &mut SqliteConnection,
        at: Timestamp,
        doing: &str,
    ) -> Result<i64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq",
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?
        .ok_or_else(|| StoreError::Corrupt("the change_counter row is missing".to_owned()))?;
        sqlx::query("INSERT INTO changes (seq, consumer_id, at, kind) VALUES (?1, 0, ?2, 'ca')")
            .bind(seq)
            .bind(at.unix_millis())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        Ok(seq)
    }

    pub(super) async fn change_head_get(&self) -> Result<i64, StoreError> {
        let doing = "reading the change head";
        self.check_file(doing)?;
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
        self.check_file(&doing)?;
        let rows = sqlx::query(
            "SELECT seq, consumer_id, at, kind FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
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
        let json = serde_json::Value::from(ids.to_vec()).to_string();
        let doing = format!("reading {} consumers by id", ids.len());
        self.read_consumers(Filter::Ids(&json), &doing).await
    }

    pub(super) async fn change_prune(&self, before: Timestamp) -> Result<u64, StoreError> {
        let doing = "pruning the change log";
        let mut tx = self.begin_write(doing).await?;
        let deleted = sqlx::query("DELETE FROM changes WHERE at < ?1")
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
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
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
        self.check_file(doing)?;
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY node_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        rows.iter().map(node_from_row).collect()
    }

    pub(super) async fn node_remove(&self, node_id: &str) -> Result<(), StoreError> {
        let doing = format!("removing node {node_id}");
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query("DELETE FROM nodes WHERE node_id = ?1")
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
        self.check_file(&doing)?;
        let row = sqlx::query(
            "SELECT name, holder, term, acquired_at, expires_at FROM leases WHERE name = ?1",
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
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = ?1 AND holder = ?2")
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
        self.check_file(doing)?;
        let rows =
            sqlx::query("SELECT kid, last_used_at FROM version_usage WHERE last_used_at >= ?1")
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
