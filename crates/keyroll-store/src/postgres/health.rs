//! Whether the store works: `ping`, the outage state and the write probe.
//!
//! Invariants:
//! - `ping` is a `SELECT 1` through the pool, so it fails (as `Unavailable`, with the reason)
//!   within the pool's acquire timeout when the server is down or unreachable. When the pool
//!   has no connection to give, a direct connection attempt (bounded by the connect timeout)
//!   finds out why: refused, unknown host, authentication, shutting down.
//! - A server can answer reads and refuse writes (a standby after a failover, a full disk, a
//!   read-only setting). An operation failing with `Unavailable` ([`PostgresStore::fail`]) marks
//!   the store down; while it is down `ping` also writes the one-row `write_probe` table, and any
//!   committed write marks it up again. No probe writes while healthy.

use super::errors::classify;
use super::{PostgresStore, connect_once};
use crate::StoreError;
use crate::rows::unix_millis_now;

impl PostgresStore {
    /// `ping`: the database answers, and takes a write if the last operation met an outage.
    pub(super) async fn check_health(&self) -> Result<(), StoreError> {
        match sqlx::query("SELECT 1").execute(&self.pool).await {
            Ok(_) => {}
            Err(sqlx::Error::PoolTimedOut) => return Err(self.diagnose("ping").await),
            Err(e) => return Err(self.fail("ping", e)),
        }
        if self.current_outage().is_some() {
            self.probe_write().await?;
        }
        Ok(())
    }

    /// Why the pool has no connection: the error of one direct attempt, or the pool's timeout
    /// if that attempt succeeds (every pooled connection busy).
    async fn diagnose(&self, doing: &str) -> StoreError {
        match connect_once(&self.options).await {
            Ok(conn) => {
                let _ = sqlx::Connection::close(conn).await;
                self.fail(doing, sqlx::Error::PoolTimedOut)
            }
            Err(e) => self.fail(doing, e),
        }
    }

    /// A failed operation as a `StoreError`, naming the database and what was being done. An
    /// outage marks the store down until a write succeeds.
    pub(super) fn fail(&self, doing: &str, err: sqlx::Error) -> StoreError {
        let err = classify(&self.location, doing, err);
        if let StoreError::Unavailable(message) = &err {
            self.set_outage(Some(message.clone()));
        }
        err
    }

    /// Marks the store down (`Some`, with the outage's message) or up (`None`), logging the
    /// change.
    pub(super) fn set_outage(&self, outage: Option<String>) {
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

    /// Writes the probe row: whether a write goes through now.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let doing = "writing a probe row after a failed write";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query(
            "INSERT INTO write_probe (only_row, at) VALUES (1, $1) \
             ON CONFLICT (only_row) DO UPDATE SET at = excluded.at",
        )
        .bind(unix_millis_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await
    }
}
