//! The certificate authority on PostgreSQL: authorities, issued certificates, revoked identities,
//! CRLs, handshake uses and the bundle version (migration 0013).
//!
//! Invariants:
//! - One CA change is one write transaction: its authorities, certificate,
//!   revocations, CRLs, audit entries and events commit together or not at all.
//! - The bundle version is read inside that transaction with `FOR UPDATE` (the row lock
//!   serialises CA writers on every node; taken first, before the audit lock and the change
//!   counter, the order every writer keeps); a caller that computed its change from
//!   an older version gets `Conflict` (two `ca init` or two rotations never both commit).
//! - A change to the bundle bumps the version and appends a `ca` change to the cluster log in the
//!   same transaction, so every node that applies the log rebuilds its trust store.
//! - Private keys reach this module only sealed by the server.

use std::time::Duration;

use futures_util::TryStreamExt;
use keyroll_core::{ConsumerRef, Timestamp};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::decode::get;
use super::errors::{Violation, violation};
use crate::rows::{self, Place};
use crate::{
    AuthorityKind, AuthorityRecord, AuthorityState, CaCommit, CaState, CaWrite, CertFilter,
    CertQuery, CrlRecord, HandshakeUse, IssuedCertRecord, RevokedIdentityRecord, StoreError,
};

const AUTHORITY_COLUMNS: &str = "id, kind, generation, parent_id, trust_domain, subject, \
     cert_der, sealed_key, serial, fingerprint, not_before, not_after, enters_bundle_at, \
     signs_from, idle_ms, entered_version, removed_at, state, created_at";

const CERT_COLUMNS: &str = "serial, environment, service, issuer_id, not_before, not_after, \
     issued_at, fingerprint, server_auth, requested_by, superseded_by, revoked_at, \
     revocation_reason";

impl PostgresStore {
    pub(super) async fn ca_state_read(&self) -> Result<CaState, StoreError> {
        let doing = "reading the CA";
        let mut tx = self.begin_read(doing).await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM ca_bundle WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        let rows = sqlx::query(&format!(
            "SELECT {AUTHORITY_COLUMNS} FROM ca_authorities ORDER BY created_at, kind DESC, generation, id"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let authorities = rows
            .iter()
            .map(authority_from_row)
            .collect::<Result<_, _>>()?;
        let rows = sqlx::query(
            "SELECT issuer_id, number, this_update, next_update, der FROM ca_crls \
             ORDER BY issuer_id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let crls = rows.iter().map(crl_from_row).collect::<Result<_, _>>()?;
        self.commit(tx, doing).await?;
        Ok(CaState {
            authorities,
            crls,
            bundle_version: rows::counter(version, "version", &|| "ca_bundle row".to_owned())?,
        })
    }

    pub(super) async fn ca_write(&self, w: CaWrite<'_>) -> Result<CaCommit, StoreError> {
        let doing = "writing the CA";
        let mut tx = self.begin_write(doing).await?;
        let stored: i64 =
            sqlx::query_scalar("SELECT version FROM ca_bundle WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?;
        let mut version = rows::counter(stored, "version", &|| "ca_bundle row".to_owned())?;
        if let Some(expected) = w.expected_bundle_version
            && expected != version
        {
            return Err(StoreError::Conflict(format!(
                "the CA (bundle version {expected}, now {version})"
            )));
        }
        for a in w.authorities {
            self.authority_put(&mut tx, a, doing).await?;
        }
        if let Some(c) = w.certificate {
            cert_insert(&mut tx, c)
                .await
                .map_err(|e| match violation(&e) {
                    Some(Violation::Unique(_)) => {
                        StoreError::AlreadyExists(format!("certificate {}", c.serial))
                    }
                    _ => self.fail(doing, e),
                })?;
        }
        if let (Some(old), Some(new)) = (w.supersedes, w.certificate) {
            let n = sqlx::query("UPDATE ca_certificates SET superseded_by = $1 WHERE serial = $2")
                .bind(new.serial.as_str())
                .bind(old)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("certificate {old}")));
            }
        }
        for r in w.revocations {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT serial FROM ca_certificates WHERE serial = $1")
                    .bind(r.serial.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.fail(doing, e))?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("certificate {}", r.serial)));
            }
            sqlx::query(
                "UPDATE ca_certificates SET revoked_at = $1, revocation_reason = $2 \
                 WHERE serial = $3 AND revoked_at IS NULL",
            )
            .bind(r.at.unix_millis())
            .bind(r.reason.as_str())
            .bind(r.serial.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        if let Some(r) = w.revoke_identity {
            sqlx::query(
                "INSERT INTO ca_revoked_identities \
                 (environment, service, revoked_at, reason, revoked_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (environment, service) DO UPDATE SET \
                 revoked_at = excluded.revoked_at, reason = excluded.reason, \
                 revoked_by = excluded.revoked_by",
            )
            .bind(r.identity.environment.as_str())
            .bind(r.identity.name.as_str())
            .bind(r.revoked_at.unix_millis())
            .bind(r.reason.as_str())
            .bind(r.revoked_by.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        for c in w.crls {
            sqlx::query(
                "INSERT INTO ca_crls (issuer_id, number, this_update, next_update, der) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer_id) DO UPDATE SET \
                 number = excluded.number, this_update = excluded.this_update, \
                 next_update = excluded.next_update, der = excluded.der",
            )
            .bind(c.issuer_id.as_str())
            .bind(rows::count_value(c.number))
            .bind(c.this_update.unix_millis())
            .bind(c.next_update.unix_millis())
            .bind(c.der.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| match violation(&e) {
                Some(Violation::ForeignKey) => {
                    StoreError::NotFound(format!("authority {}", c.issuer_id))
                }
                _ => self.fail(doing, e),
            })?;
        }
        self.append_audit(&mut tx, w.audit, doing).await?;
        self.append_events(&mut tx, w.events, doing).await?;
        let mut change_seq = None;
        if w.bump_bundle {
            version += 1;
            sqlx::query("UPDATE ca_bundle SET version = $1 WHERE id = 1")
                .bind(rows::count_value(version))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?;
            let at = rows::change_time(w.audit, w.events)
                .unwrap_or_else(|| Timestamp::from_unix_millis(rows::unix_millis_now()));
            change_seq = Some(self.log_ca_change(&mut tx, at, doing).await?);
        }
        self.commit_write(tx, doing).await?;
        Ok(CaCommit {
            bundle_version: version,
            change_seq,
        })
    }

    async fn authority_put(
        &self,
        conn: &mut PgConnection,
        a: &AuthorityRecord,
        doing: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO ca_authorities ({AUTHORITY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
             ON CONFLICT (id) DO UPDATE SET enters_bundle_at = excluded.enters_bundle_at, \
             signs_from = excluded.signs_from, idle_ms = excluded.idle_ms, \
             entered_version = excluded.entered_version, removed_at = excluded.removed_at, \
             state = excluded.state"
        ))
        .bind(a.id.as_str())
        .bind(a.kind.as_str())
        .bind(i64::from(a.generation))
        .bind(a.parent_id.as_deref())
        .bind(a.trust_domain.as_str())
        .bind(a.subject.as_str())
        .bind(a.cert_der.as_slice())
        .bind(a.sealed_key.as_slice())
        .bind(a.serial.as_str())
        .bind(a.fingerprint.as_str())
        .bind(a.not_before.unix_millis())
        .bind(a.not_after.unix_millis())
        .bind(a.enters_bundle_at.unix_millis())
        .bind(a.signs_from.unix_millis())
        .bind(rows::millis(a.idle))
        .bind(a.entered_version.map(rows::count_value))
        .bind(rows::ms(a.removed_at))
        .bind(a.state.as_str())
        .bind(a.created_at.unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("authority serial {}", a.serial))
            }
            Some(Violation::ForeignKey) => StoreError::NotFound(format!(
                "parent authority {}",
                a.parent_id.as_deref().unwrap_or("?")
            )),
            _ => self.fail(doing, e),
        })?;
        Ok(())
    }

    pub(super) async fn cert_list(
        &self,
        q: &CertQuery,
    ) -> Result<Vec<IssuedCertRecord>, StoreError> {
        let doing = "listing certificates";
        let state = q.state.map(CertFilter::as_str);
        let sql = format!(
            "SELECT {CERT_COLUMNS} FROM ca_certificates \
             WHERE ($1 IS NULL OR (environment = $1 AND service = $2)) \
             AND ($3 IS NULL OR issuer_id = $3) \
             AND ($4 IS NULL \
                  OR ($4 = 'live' AND revoked_at IS NULL AND not_after > $5) \
                  OR ($4 = 'expired' AND revoked_at IS NULL AND not_after <= $5) \
                  OR ($4 = 'revoked' AND revoked_at IS NOT NULL)) \
             AND ($6 IS NULL OR serial > $6) \
             ORDER BY serial LIMIT $7"
        );
        let mut rows = sqlx::query(&sql)
            .bind(q.identity.as_ref().map(|i| i.environment.as_str()))
            .bind(q.identity.as_ref().map(|i| i.name.as_str()))
            .bind(q.issuer.as_deref())
            .bind(state)
            .bind(q.at.unix_millis())
            .bind(q.after.as_deref())
            .bind(i64::from(q.limit))
            .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
            out.push(cert_from_row(&row)?);
        }
        Ok(out)
    }

    pub(super) async fn cert_get(
        &self,
        serial: &str,
    ) -> Result<Option<IssuedCertRecord>, StoreError> {
        let doing = "reading a certificate";
        let row = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM ca_certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        row.as_ref().map(cert_from_row).transpose()
    }

    pub(super) async fn identity_revocation_get(
        &self,
        identity: &ConsumerRef,
    ) -> Result<Option<RevokedIdentityRecord>, StoreError> {
        let doing = "reading an identity's revocation";
        let row = sqlx::query(
            "SELECT environment, service, revoked_at, reason, revoked_by \
             FROM ca_revoked_identities WHERE environment = $1 AND service = $2",
        )
        .bind(identity.environment.as_str())
        .bind(identity.name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let Some(row) = row else { return Ok(None) };
        let place = || "ca_revoked_identities row".to_owned();
        let place: Place<'_> = &place;
        Ok(Some(RevokedIdentityRecord {
            identity: identity_of(&row, 0, place)?,
            revoked_at: Timestamp::from_unix_millis(get(&row, 2, place)?),
            reason: get(&row, 3, place)?,
            revoked_by: get(&row, 4, place)?,
        }))
    }

    pub(super) async fn handshakes_record(&self, uses: &[HandshakeUse]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let doing = format!("recording {} handshake uses", uses.len());
        let mut tx = self.begin_write(&doing).await?;
        for u in uses {
            sqlx::query(
                "INSERT INTO ca_handshakes (anchor_id, identity, peer, serial, last_at, count) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (anchor_id, identity, peer) DO UPDATE SET \
                 serial = CASE WHEN excluded.last_at >= ca_handshakes.last_at \
                 THEN excluded.serial ELSE ca_handshakes.serial END, \
                 last_at = GREATEST(ca_handshakes.last_at, excluded.last_at), \
                 count = ca_handshakes.count + excluded.count",
            )
            .bind(u.anchor_id.as_str())
            .bind(u.identity.as_str())
            .bind(u.peer.as_str())
            .bind(u.serial.as_str())
            .bind(u.last_at.unix_millis())
            .bind(rows::count_value(u.count))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        }
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn handshakes_list(
        &self,
        since: Timestamp,
    ) -> Result<Vec<HandshakeUse>, StoreError> {
        let doing = "listing handshake uses";
        let mut rows = sqlx::query(
            "SELECT anchor_id, identity, peer, serial, last_at, count FROM ca_handshakes \
             WHERE last_at >= $1 ORDER BY last_at DESC, anchor_id, identity, peer",
        )
        .bind(since.unix_millis())
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(|e| self.fail(doing, e))? {
            let place = || "ca_handshakes row".to_owned();
            let place: Place<'_> = &place;
            let count: i64 = get(&row, 5, place)?;
            out.push(HandshakeUse {
                anchor_id: get(&row, 0, place)?,
                identity: get(&row, 1, place)?,
                peer: get(&row, 2, place)?,
                serial: get(&row, 3, place)?,
                last_at: Timestamp::from_unix_millis(get(&row, 4, place)?),
                count: rows::counter(count, "count", place)?,
            });
        }
        Ok(out)
    }
}

async fn cert_insert(conn: &mut PgConnection, c: &IssuedCertRecord) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO ca_certificates ({CERT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(c.serial.as_str())
    .bind(c.identity.environment.as_str())
    .bind(c.identity.name.as_str())
    .bind(c.issuer_id.as_str())
    .bind(c.not_before.unix_millis())
    .bind(c.not_after.unix_millis())
    .bind(c.issued_at.unix_millis())
    .bind(c.fingerprint.as_str())
    .bind(c.server_auth)
    .bind(c.requested_by.as_str())
    .bind(c.superseded_by.as_deref())
    .bind(rows::ms(c.revoked_at))
    .bind(c.revocation_reason.as_deref())
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

fn identity_of(row: &PgRow, first: usize, place: Place<'_>) -> Result<ConsumerRef, StoreError> {
    let env: String = get(row, first, place)?;
    let name: String = get(row, first + 1, place)?;
    Ok(ConsumerRef {
        environment: rows::environment(&env, "environment", place)?,
        name: rows::consumer_name(&name, place)?,
    })
}

/// An `ca_authorities` row, columns as in [`AUTHORITY_COLUMNS`].
fn authority_from_row(row: &PgRow) -> Result<AuthorityRecord, StoreError> {
    let id: String = get(row, 0, &|| "ca_authorities row".to_owned())?;
    let place = || format!("ca_authorities row ({id})");
    let place: Place<'_> = &place;
    let kind: String = get(row, 1, place)?;
    let generation: i64 = get(row, 2, place)?;
    let idle: i64 = get(row, 14, place)?;
    let entered: Option<i64> = get(row, 15, place)?;
    let removed: Option<i64> = get(row, 16, place)?;
    let state: String = get(row, 17, place)?;
    Ok(AuthorityRecord {
        kind: AuthorityKind::parse(&kind)
            .ok_or_else(|| rows::corrupt(place, "kind", format!("unknown kind {kind:?}")))?,
        generation: u32::try_from(generation).map_err(|e| rows::corrupt(place, "generation", e))?,
        parent_id: get(row, 3, place)?,
        trust_domain: get(row, 4, place)?,
        subject: get(row, 5, place)?,
        cert_der: get(row, 6, place)?,
        sealed_key: get(row, 7, place)?,
        serial: get(row, 8, place)?,
        fingerprint: get(row, 9, place)?,
        not_before: Timestamp::from_unix_millis(get(row, 10, place)?),
        not_after: Timestamp::from_unix_millis(get(row, 11, place)?),
        enters_bundle_at: Timestamp::from_unix_millis(get(row, 12, place)?),
        signs_from: Timestamp::from_unix_millis(get(row, 13, place)?),
        idle: Duration::from_millis(rows::counter(idle, "idle_ms", place)?),
        entered_version: entered
            .map(|v| rows::counter(v, "entered_version", place))
            .transpose()?,
        removed_at: removed.map(Timestamp::from_unix_millis),
        state: AuthorityState::parse(&state)
            .ok_or_else(|| rows::corrupt(place, "state", format!("unknown state {state:?}")))?,
        created_at: Timestamp::from_unix_millis(get(row, 18, place)?),
        id: id.clone(),
    })
}

/// A `ca_crls` row: `issuer_id, number, this_update, next_update, der`.
fn crl_from_row(row: &PgRow) -> Result<CrlRecord, StoreError> {
    let place = || "ca_crls row".to_owned();
    let place: Place<'_> = &place;
    let number: i64 = get(row, 1, place)?;
    Ok(CrlRecord {
        issuer_id: get(row, 0, place)?,
        number: rows::counter(number, "number", place)?,
        this_update: Timestamp::from_unix_millis(get(row, 2, place)?),
        next_update: Timestamp::from_unix_millis(get(row, 3, place)?),
        der: get(row, 4, place)?,
    })
}

/// A `ca_certificates` row, columns as in [`CERT_COLUMNS`].
fn cert_from_row(row: &PgRow) -> Result<IssuedCertRecord, StoreError> {
    let serial: String = get(row, 0, &|| "ca_certificates row".to_owned())?;
    let place = || format!("ca_certificates row ({serial})");
    let place: Place<'_> = &place;
    let revoked: Option<i64> = get(row, 11, place)?;
    Ok(IssuedCertRecord {
        identity: identity_of(row, 1, place)?,
        issuer_id: get(row, 3, place)?,
        not_before: Timestamp::from_unix_millis(get(row, 4, place)?),
        not_after: Timestamp::from_unix_millis(get(row, 5, place)?),
        issued_at: Timestamp::from_unix_millis(get(row, 6, place)?),
        fingerprint: get(row, 7, place)?,
        server_auth: get(row, 8, place)?,
        requested_by: get(row, 9, place)?,
        superseded_by: get(row, 10, place)?,
        revoked_at: revoked.map(Timestamp::from_unix_millis),
        revocation_reason: get(row, 12, place)?,
        serial: serial.clone(),
    })
}
