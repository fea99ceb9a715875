//! The installation a SQLite database belongs to: its id, recorded by the first start that asks,
//! whether anything an operator makes exists yet, and the check value of its master key.
//!
//! The `installation` table has one row at most (`only = 1`). Recording and reading it is one
//! write transaction, so two starts racing on a new database agree on one id.

use super::SqliteStore;
use super::decode::installation_from_row;
use crate::rows::unix_millis_now;
use crate::{Installation, StoreError};

impl SqliteStore {
    /// The installation's id, recording `new_id` when the database has none yet.
    pub(super) async fn installation_get(&self, new_id: &str) -> Result<Installation, StoreError> {
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
        installation_from_row(&row)
    }

    /// The recorded master-key check value, recording `check` when there is none.
    pub(super) async fn installation_master_key_check(
        &self,
        check: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let doing = "recording the master key's check value";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query("UPDATE installation SET master_key_check = ?1 WHERE master_key_check IS NULL")
            .bind(check)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        let recorded: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT master_key_check FROM installation")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await?;
        match recorded {
            Some(Some(v)) => Ok(v),
            _ => Err(StoreError::NotFound(
                "the installation record (read the installation first)".to_owned(),
            )),
        }
    }
}
