//! Delivery by agents on PostgreSQL: handovers (a new version sealed for the other holders of an
//! older one), agents' reports and the deliveries they record.
//!
//! A handover row is useful only while its older version is valid: the agent that fetches it
//! authenticates with that older key. Every consumer write therefore deletes the rows of
//! versions that are now retired or revoked, in the same transaction, so a key leaked after its
//! retirement opens nothing.

use futures_util::TryStreamExt;
use keyroll_core::{ConsumerRef, Environment, Timestamp};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::decode::get;
use crate::rows::{self, Place};
use crate::{AgentRecord, AuditRecord, DeliveryRecord, EventRecord, HandoverRecord, StoreError};

impl PostgresStore {
    /// Inside a consumer's write: stores its handover, if any, and deletes the handovers whose
    /// older version (or sealed version) is no longer valid.
    pub(super) async fn write_handover(
        &self,
        conn: &mut PgConnection,
        consumer_id: i64,
        handover: Option<&HandoverRecord>,
        doing: &str,
    ) -> Result<(), StoreError> {
        if let Some(h) = handover {
            sqlx::query(
                "INSERT INTO handovers (consumer_id, version, from_version, sealed, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(consumer_id)
            .bind(i64::from(h.version))
            .bind(i64::from(h.from_version))
            .bind(h.sealed.as_slice())
            .bind(h.created_at.unix_millis())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        sqlx::query(
            "DELETE FROM handovers WHERE consumer_id = $1 AND (from_version IN \
             (SELECT version FROM key_versions WHERE consumer_id = $1 \
              AND state IN ('retired', 'revoked')) \
             OR version IN (SELECT version FROM key_versions WHERE consumer_id = $1 \
              AND state IN ('retired', 'revoked')))",
        )
        .bind(consumer_id)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?;
        Ok(())
    }

    pub(super) async fn handover_find(
        &self,
        consumer_id: i64,
        from_version: u32,
    ) -> Result<Option<HandoverRecord>, StoreError> {
        let doing = "reading a handover";
        let row = sqlx::query(
            "SELECT version, from_version, sealed, created_at FROM handovers \
             WHERE consumer_id = $1 AND from_version = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(consumer_id)
        .bind(i64::from(from_version))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let Some(row) = row else { return Ok(None) };
        let place = move || format!("handovers row (consumer_id {consumer_id})");
        let place: Place<'_> = &place;
        let version: i64 = get(&row, 0, place)?;
        let from: i64 = get(&row, 1, place)?;
        Ok(Some(HandoverRecord {
            version: rows::version_number(version, "version", place)?.0,
            from_version: rows::version_number(from, "from_version", place)?.0,
            sealed: get(&row, 2, place)?,
            created_at: Timestamp::from_unix_millis(get(&row, 3, place)?),
        }))
    }

    pub(super) async fn agent_record(
        &self,
        consumer_id: i64,
        agent: &AgentRecord,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<bool, StoreError> {
        let doing = format!("recording agent {} of {}", agent.agent_id, agent.consumer);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(
            "INSERT INTO agents (consumer_id, agent_id, host, mode, version, health, detail, \
             first_seen, last_contact, bundle_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (consumer_id, agent_id) DO UPDATE SET host = excluded.host, \
             mode = excluded.mode, version = excluded.version, health = excluded.health, \
             detail = excluded.detail, last_contact = excluded.last_contact, \
             bundle_version = COALESCE(excluded.bundle_version, agents.bundle_version)",
        )
        .bind(consumer_id)
        .bind(agent.agent_id.as_str())
        .bind(agent.host.as_deref())
        .bind(agent.mode.as_deref())
        .bind(i64::from(agent.version))
        .bind(agent.health.as_deref())
        .bind(agent.detail.as_deref())
        .bind(agent.first_seen.unix_millis())
        .bind(agent.last_contact.unix_millis())
        .bind(agent.bundle_version.map(rows::count_value))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        let inserted = sqlx::query(
            "INSERT INTO deliveries (consumer_id, version, agent_id, delivered_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(consumer_id)
        .bind(i64::from(agent.version))
        .bind(agent.agent_id.as_str())
        .bind(agent.last_contact.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?
        .rows_affected()
            == 1;
        if inserted {
            self.append_audit(&mut tx, audit, &doing).await?;
            self.append_events(&mut tx, events, &doing).await?;
        }
        self.commit_write(tx, &doing).await?;
        Ok(inserted)
    }

    pub(super) async fn agent_list(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let doing = "listing agents";
        let mut rows = sqlx::query(
            "SELECT c.environment, c.name, a.agent_id, a.host, a.mode, a.version, a.health, \
             a.detail, a.first_seen, a.last_contact, a.bundle_version FROM agents a \
             JOIN consumers c ON c.id = a.consumer_id \
             WHERE $1::text IS NULL OR c.environment = $1 \
             ORDER BY c.environment COLLATE \"C\", c.name COLLATE \"C\", a.agent_id COLLATE \"C\"",
        )
        .bind(environment.map(Environment::as_str))
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
            out.push(agent_from_row(&row)?);
        }
        Ok(out)
    }

    pub(super) async fn delivery_list(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let doing = "listing deliveries";
        let mut rows = sqlx::query(
            "SELECT c.environment, c.name, d.version, d.agent_id, d.delivered_at \
             FROM deliveries d JOIN consumers c ON c.id = d.consumer_id \
             WHERE $1::text IS NULL OR c.environment = $1 \
             ORDER BY c.environment COLLATE \"C\", c.name COLLATE \"C\", d.version, \
             d.agent_id COLLATE \"C\"",
        )
        .bind(environment.map(Environment::as_str))
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
            let place = || "deliveries row".to_owned();
            let place: Place<'_> = &place;
            let version: i64 = get(&row, 2, place)?;
            out.push(DeliveryRecord {
                consumer: consumer_ref(&row, place)?,
                version: rows::version_number(version, "version", place)?.0,
                agent_id: get(&row, 3, place)?,
                delivered_at: Timestamp::from_unix_millis(get(&row, 4, place)?),
            });
        }
        Ok(out)
    }
}

fn consumer_ref(row: &PgRow, place: Place<'_>) -> Result<ConsumerRef, StoreError> {
    let env: String = get(row, 0, place)?;
    let name: String = get(row, 1, place)?;
    Ok(ConsumerRef {
        environment: rows::environment(&env, "environment", place)?,
        name: rows::consumer_name(&name, place)?,
    })
}

fn agent_from_row(row: &PgRow) -> Result<AgentRecord, StoreError> {
    let place = || "agents row".to_owned();
    let place: Place<'_> = &place;
    let version: i64 = get(row, 5, place)?;
    let bundle_version: Option<i64> = get(row, 10, place)?;
    Ok(AgentRecord {
        consumer: consumer_ref(row, place)?,
        agent_id: get(row, 2, place)?,
        host: get(row, 3, place)?,
        mode: get(row, 4, place)?,
        version: rows::version_number(version, "version", place)?.0,
        health: get(row, 6, place)?,
        detail: get(row, 7, place)?,
        first_seen: Timestamp::from_unix_millis(get(row, 8, place)?),
        last_contact: Timestamp::from_unix_millis(get(row, 9, place)?),
        bundle_version: bundle_version
            .map(|v| rows::counter(v, "bundle_version", place))
            .transpose()?,
    })
}
