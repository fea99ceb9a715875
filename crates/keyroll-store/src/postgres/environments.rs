//! Environments on PostgreSQL: created and updated with their audit entry in one transaction, read
//! by name.
//!
//! The store has no operation that renames or deletes an environment. Consumers refer to theirs
//! by name (a foreign key), so creating a consumer in an unknown environment fails as `NotFound`
//! (see [`consumers`](super::consumers)).

use keyroll_core::Environment;

use super::PostgresStore;
use super::decode::environment_from_row;
use super::errors::{Violation, violation};
use crate::{AuditRecord, EnvironmentRecord, StoreError};

impl PostgresStore {
    /// Creates an environment and its audit entry in one transaction.
    pub(super) async fn environment_create(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("creating environment {}", env.name);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(
            "INSERT INTO environments (name, protected, created_at, rotate_after) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(env.name.as_str())
        .bind(env.protected)
        .bind(env.created_at.unix_millis())
        .bind(env.rotate_after.as_ref().map(Environment::as_str))
        .execute(&mut *tx)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("environment {}", env.name))
            }
            Some(Violation::ForeignKey) => StoreError::NotFound(format!(
                "environment {} (named by rotate_after)",
                env.rotate_after.as_ref().map_or("?", Environment::as_str)
            )),
            _ => self.fail(&doing, e),
        })?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    /// Changes an environment's settings and appends its audit entry in one transaction.
    pub(super) async fn environment_update(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("updating environment {}", env.name);
        let mut tx = self.begin_write(&doing).await?;
        let updated = sqlx::query(
            "UPDATE environments SET protected = $2, rotate_after = $3 WHERE name = $1",
        )
        .bind(env.name.as_str())
        .bind(env.protected)
        .bind(env.rotate_after.as_ref().map(Environment::as_str))
        .execute(&mut *tx)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::ForeignKey) => StoreError::NotFound(format!(
                "environment {} (named by rotate_after)",
                env.rotate_after.as_ref().map_or("?", Environment::as_str)
            )),
            _ => self.fail(&doing, e),
        })?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("environment {}", env.name)));
        }
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn environment_list(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, protected, created_at, rotate_after FROM environments \
             ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("listing environments", e))?;
        rows.iter().map(environment_from_row).collect()
    }

    pub(super) async fn environment_get(
        &self,
        name: &Environment,
    ) -> Result<Option<EnvironmentRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, protected, created_at, rotate_after FROM environments WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(&format!("reading environment {name}"), e))?;
        row.as_ref().map(environment_from_row).transpose()
    }
}
