//! The conformance suite on PostgreSQL, and what only a database server has: URLs, a server that
//! is down or unreachable, a schema from a newer keyroll, rows edited by hand, and several nodes
//! (pools) writing one database at once.
//!
//! Every test gets a database of its own on the test server (see [`test_postgres`]); without a
//! reachable server the tests skip loudly, except in CI, where they fail.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyroll_core::{Command, Kid, StoredState};
use keyroll_store::{AuditQuery, EnvironmentRecord, PostgresStore, Store, StoreError};
use sqlx::{PgConnection, Row};

use crate::conformance::{
    self, Backend, Cell, audit, conformance_suite, consumer_ref, delta, env, source,
};
use crate::test_postgres::TestDatabase;

/// A store on a fresh database of its own. The store is dropped before the database.
pub struct PgBackend {
    store: PostgresStore,
    db: TestDatabase,
}

/// A fresh database with the store opened on it, or `None` to skip (see [`TestDatabase`]).
async fn fresh() -> Option<PgBackend> {
    let db = TestDatabase::create().await?;
    let store = PostgresStore::open_url(&db.url).await.unwrap();
    Some(PgBackend { store, db })
}

#[async_trait]
impl Backend for PgBackend {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn dump_cells(&self) -> Vec<Cell> {
        let mut conn = self.db.connect().await;
        dump_cells(&mut conn).await
    }
}

/// Every cell of every table of the `public` schema (the migrations' bookkeeping included):
/// `BYTEA` as its bytes, everything else as its text form in UTF-8 (numbers in decimal).
async fn dump_cells(conn: &mut PgConnection) -> Vec<Cell> {
    let columns = sqlx::query(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut by_table: Vec<(String, Vec<(String, bool)>)> = Vec::new();
    for row in &columns {
        let table: String = row.get(0);
        let column: String = row.get(1);
        let bytea = row.get::<String, _>(2) == "bytea";
        match by_table.last_mut() {
            Some((t, cols)) if *t == table => cols.push((column, bytea)),
            _ => by_table.push((table, vec![(column, bytea)])),
        }
    }
    let mut cells = Vec::new();
    for (table, cols) in by_table {
        let select: Vec<String> = cols
            .iter()
            .map(|(c, bytea)| {
                if *bytea {
                    format!("\"{c}\"")
                } else {
                    format!("convert_to(\"{c}\"::text, 'UTF8')")
                }
            })
            .collect();
        let rows = sqlx::query(&format!("SELECT {} FROM \"{table}\"", select.join(", ")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        for row in rows {
            for (i, (column, _)) in cols.iter().enumerate() {
                let bytes: Option<Vec<u8>> = row.get(i);
                cells.push(Cell {
                    table: table.clone(),
                    column: column.clone(),
                    bytes: bytes.unwrap_or_default(),
                });
            }
        }
    }
    cells
}

conformance_suite!(optional fresh);

fn unavailable(err: StoreError) -> String {
    match err {
        StoreError::Unavailable(message) => message,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn corrupt(err: StoreError) -> String {
    match err {
        StoreError::Corrupt(message) => message,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

async fn prod(store: &dyn Store) {
    let record = EnvironmentRecord {
        name: env("prod"),
        protected: false,
        rotate_after: None,
        created_at: conformance::at(1),
    };
    store
        .create_environment(
            &record,
            &audit(1, "environment.created", "environment prod"),
        )
        .await
        .unwrap();
}

/// A consumer `prod/billing-app` with one version.
async fn billing_app(store: &dyn Store) -> keyroll_store::StoredConsumer {
    let mut entropy = conformance::TestEntropy(5);
    let key = conformance::issue(&env("prod"), &mut entropy);
    let first = keyroll_core::NewVersion {
        kid: key.kid,
        secret_hash: key.secret_hash,
        fingerprint: key.fingerprint,
        expires_at: None,
    };
    let consumer = keyroll_core::Consumer::create(
        env("prod"),
        keyroll_core::ConsumerName::parse("billing-app").unwrap(),
        vec![keyroll_core::Scope::parse("invoices:read").unwrap()],
        None,
        first,
        conformance::at(2),
    );
    store
        .create_consumer(&consumer, &[], &[], None)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_url_that_is_not_postgres_is_unavailable() {
    let message = unavailable(
        PostgresStore::open_url("sqlite://keyroll.db")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        message,
        "cannot open PostgreSQL database sqlite://keyroll.db: not a postgres:// URL"
    );
    let message = unavailable(
        PostgresStore::open_url("postgres://keyroll:hunter2@db:notaport/keyroll")
            .await
            .unwrap_err(),
    );
    assert!(
        message.starts_with("cannot open PostgreSQL database postgres://keyroll:***@db:notaport/"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_fast_naming_the_host() {
    // Nothing listens on port 1: refused at once. The pool alone would retry a refused
    // connection until its timeout and then say only that it timed out.
    let started = Instant::now();
    let message = unavailable(
        PostgresStore::open_url("postgres://keyroll:hunter2@127.0.0.1:1/keyroll")
            .await
            .unwrap_err(),
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{message}");
    assert!(
        message.starts_with("cannot open PostgreSQL database postgres://keyroll:***@127.0.0.1:1/"),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");

    // An address that drops packets (TEST-NET-1, RFC 5737): the connect timeout answers.
    let started = Instant::now();
    let message = unavailable(
        PostgresStore::open_url("postgres://keyroll@192.0.2.1:5432/keyroll")
            .await
            .unwrap_err(),
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{message}");
    assert!(message.contains("192.0.2.1"), "{message}");
}

#[tokio::test]
async fn an_unknown_database_is_unavailable_and_says_so() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let url = db.url.replace(&db.name, "keyroll_no_such_database");
    let message = unavailable(PostgresStore::open_url(&url).await.unwrap_err());
    assert!(message.contains("keyroll_no_such_database"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test]
async fn a_database_that_goes_away_fails_fast_as_unavailable_and_recovers_connections() {
    let Some(backend) = fresh().await else {
        return;
    };
    let store: &dyn Store = &backend.store;
    prod(store).await;
    // The server ends every connection of the store (a restart, a failover): the pool replaces
    // them, and the next operations work.
    let mut admin = backend.db.connect().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.list_environments().await.unwrap().len(), 1);
    drop(admin);

    // The database disappears (stands in for a server that is down): every operation fails as
    // Unavailable within a few seconds, naming the database, instead of hanging.
    let mut admin = backend.db.connect_admin().await;
    sqlx::query(&format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        backend.db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let started = Instant::now();
    let message = unavailable(store.ping().await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(5), "{message}");
    assert!(message.contains(&backend.db.name), "{message}");
    let started = Instant::now();
    let err = store
        .create_environment(
            &EnvironmentRecord {
                name: env("staging"),
                protected: false,
                rotate_after: None,
                created_at: conformance::at(2),
            },
            &audit(2, "environment.created", "environment staging"),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err:?}");
    unavailable(err);
}

/// The versions of the PostgreSQL migrations shipped (from the file names).
fn migration_versions() -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.split('_').next().and_then(|n| n.parse().ok())
        })
        .collect();
    versions.sort();
    versions
}

#[tokio::test]
async fn a_lock_held_by_a_stuck_node_fails_writes_after_the_lock_timeout_instead_of_hanging() {
    let Some(backend) = fresh().await else {
        return;
    };
    let store: &dyn Store = &backend.store;
    prod(store).await;
    // Another "node" takes the append lock (audit chain, outbox) and sits on it.
    let mut stuck = backend.db.connect().await;
    sqlx::query("BEGIN").execute(&mut stuck).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from_be_bytes(*b"krAPPEND"))
        .execute(&mut stuck)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .create_environment(
            &EnvironmentRecord {
                name: env("staging"),
                protected: false,
                rotate_after: None,
                created_at: conformance::at(2),
            },
            &audit(2, "environment.created", "environment staging"),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    let message = unavailable(err);
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}: {message}"
    );
    assert!(message.contains("lock"), "{message}");
    // Nothing was written; once the lock is free the same write works.
    assert_eq!(store.list_environments().await.unwrap().len(), 1);
    sqlx::query("ROLLBACK").execute(&mut stuck).await.unwrap();
    store
        .create_environment(
            &EnvironmentRecord {
                name: env("staging"),
                protected: false,
                rotate_after: None,
                created_at: conformance::at(3),
            },
            &audit(3, "environment.created", "environment staging"),
        )
        .await
        .unwrap();
    assert_eq!(store.list_environments().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_database_from_a_newer_keyroll_is_corrupt() {
    let Some(backend) = fresh().await else {
        return;
    };
    let mut conn = backend.db.connect().await;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(applied, migration_versions());
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let message = corrupt(PostgresStore::open_url(&backend.db.url).await.unwrap_err());
    assert!(message.contains(&backend.db.name), "{message}");
    assert!(
        message.contains("9999") && message.contains("newer keyroll"),
        "{message}"
    );
}

#[tokio::test]
async fn reopening_keeps_data() {
    let Some(backend) = fresh().await else {
        return;
    };
    prod(&backend.store).await;
    let created = billing_app(&backend.store).await;
    let again = PostgresStore::open_url(&backend.db.url).await.unwrap();
    assert_eq!(again.load_all().await.unwrap(), [created]);
}

#[tokio::test]
async fn the_audit_log_and_the_outbox_are_append_only() {
    let Some(backend) = fresh().await else {
        return;
    };
    prod(&backend.store).await;
    let mut conn = backend.db.connect().await;
    sqlx::query(
        "INSERT INTO events (at, kind, consumer, version, detail) \
         VALUES (1, 'version.issued', 'prod/app', 1, '{}')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for statement in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "UPDATE events SET kind = 'version.revoked'",
        "DELETE FROM events",
    ] {
        let err = sqlx::query(statement).execute(&mut conn).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
}

/// Damage done by hand (with the schema's checks dropped first, as a hand edit can), and what
/// the error must say about it.
const DAMAGE: &[(&str, &str)] = &[
    (
        "UPDATE key_versions SET kid = 'not-base62!!'",
        "key_versions row (consumer_id 1, version 1): column kid: \"not-base62!!\" is not 12 base62 characters",
    ),
    (
        "UPDATE key_versions SET secret_hash = '\\x00'",
        "key_versions row (consumer_id 1, version 1): column secret_hash: 1 bytes where a SHA-256 digest has 32",
    ),
    (
        "UPDATE key_versions SET state = 'expired'",
        "column state: \"expired\" is not one of",
    ),
    (
        "UPDATE key_versions SET version = 0",
        "key_versions row (consumer_id 1, version 0): column version",
    ),
    (
        "UPDATE consumers SET scopes = 'invoices:read bad!scope'",
        "consumers row (id 1): column scopes: invalid scope \"bad!scope\"",
    ),
    (
        "UPDATE consumers SET retire_policy = 'sometimes'",
        "consumers row (id 1): column retire_policy: \"sometimes\" is not one of when-idle, at-deadline",
    ),
    (
        "UPDATE consumers SET idle_ms = -1",
        "consumers row (id 1): column idle_ms: -1 is a negative duration",
    ),
    (
        "UPDATE key_versions SET consumer_id = 77",
        "key_versions row (consumer_id 77, version 1) belongs to no consumer",
    ),
    (
        "ALTER TABLE key_versions ALTER COLUMN grace_ms TYPE text",
        "key_versions: column grace_ms is TEXT, not INT8",
    ),
];

#[tokio::test]
async fn damaged_rows_are_reported_as_corrupt_with_what_is_wrong() {
    for (damage, expected) in DAMAGE {
        let Some(backend) = fresh().await else {
            return;
        };
        let store: &dyn Store = &backend.store;
        prod(store).await;
        billing_app(store).await;
        let mut conn = backend.db.connect().await;
        // Drop every CHECK and foreign key of the two tables, as a hand edit can.
        let constraints: Vec<(String, String)> = sqlx::query_as(
            "SELECT conrelid::regclass::text, conname::text FROM pg_constraint \
             WHERE conrelid IN ('consumers'::regclass, 'key_versions'::regclass) \
             AND contype IN ('c', 'f')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (table, name) in constraints {
            sqlx::query(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT \"{name}\" CASCADE"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        sqlx::query(damage).execute(&mut conn).await.unwrap();
        let message = corrupt(store.load_all().await.unwrap_err());
        assert!(
            message.contains(expected),
            "{damage}:\n  got      {message}\n  expected {expected}"
        );
    }
}

#[tokio::test]
async fn the_installation_id_is_recorded_once_and_emptiness_reported() {
    let Some(backend) = fresh().await else {
        return;
    };
    let store = &backend.store;
    let first = store.installation("abc").await.unwrap();
    assert_eq!(first.id, "abc");
    assert!(first.empty);
    prod(store).await;
    let again = store.installation("other").await.unwrap();
    assert_eq!(again.id, "abc", "the first id stays");
    assert!(!again.empty);
}

#[tokio::test]
async fn entries_from_before_the_chain_are_chained_once_at_open() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // What a keyroll that shipped only 0001..0005 made, with audit entries.
    let dir = tempfile::tempdir().unwrap();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"))
            .unwrap()
    {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
        }
    }
    {
        let mut conn = db.connect().await;
        let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        migrator.run(&mut conn).await.unwrap();
        for i in 1..=3 {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail) \
                 VALUES ($1, 'system', 'environment.created', 'environment prod', '{}')",
            )
            .bind(i * 1000_i64)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let store = PostgresStore::open_url(&db.url).await.unwrap();
    let chain = store
        .query_audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[0].prev_hash, Some(keyroll_core::audit_chain::GENESIS));
    for pair in chain.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // Appending goes on from the chained head; opening again changes nothing.
    prod(&store).await;
    let reopened = PostgresStore::open_url(&db.url).await.unwrap();
    let after = reopened
        .query_audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 4);
    assert_eq!(after[..3], chain[..]);
    assert_eq!(after[3].prev_hash, chain[2].hash);
}

// ---------------------------------------------------------------------------------------------
// Several nodes on one database: two stores, two pools.

/// Two "nodes" on one fresh database.
async fn two_nodes() -> Option<(PgBackend, PostgresStore)> {
    let backend = fresh().await?;
    let other = PostgresStore::open_url(&backend.db.url).await.unwrap();
    Some((backend, other))
}

#[tokio::test]
async fn two_nodes_rotating_one_consumer_make_exactly_one_new_version() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    prod(&a.store).await;
    let base = billing_app(&a.store).await;
    for round in 0..5_u64 {
        let current = a
            .store
            .get_consumer(&consumer_ref("prod", "billing-app"))
            .await
            .unwrap()
            .unwrap();
        let rotate = |seed: u64| {
            let key = conformance::issue(&env("prod"), &mut conformance::TestEntropy(seed));
            Command::Rotate {
                grace: Duration::from_secs(60),
                enforce: false,
                new_version: keyroll_core::NewVersion {
                    kid: key.kid,
                    secret_hash: key.secret_hash,
                    fingerprint: key.fingerprint,
                    expires_at: None,
                },
            }
        };
        let write = |store: &PostgresStore, seed: u64| {
            let transition = current
                .consumer
                .apply(
                    rotate(seed),
                    &keyroll_core::Usage::NONE,
                    conformance::at(10_000),
                )
                .unwrap();
            let store = store.clone();
            let id = current.id;
            let revision = current.revision;
            async move {
                let entries = [audit(10_000, "version.issued", "prod/billing-app")];
                store
                    .write_consumer(keyroll_store::ConsumerWrite {
                        expected_revision: revision,
                        id,
                        consumer: &transition.consumer,
                        audit: &entries,
                        idempotency: None,
                        events: &[],
                        handover: None,
                    })
                    .await
            }
        };
        let (ra, rb) = tokio::join!(write(&a.store, 100 + round), write(&b, 200 + round));
        let won = match (ra, rb) {
            (Ok(won), Err(StoreError::Conflict(_))) | (Err(StoreError::Conflict(_)), Ok(won)) => {
                won
            }
            other => panic!("exactly one node must win: {other:?}"),
        };
        let read = b
            .get_consumer(&consumer_ref("prod", "billing-app"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, won);
        assert_eq!(read.consumer.versions.len() as u64, 2 + round);
        assert_eq!(
            read.consumer
                .versions
                .iter()
                .filter(|v| v.state == StoredState::Active)
                .count(),
            1
        );
    }
    assert_eq!(base.consumer.versions.len(), 1);
}

#[tokio::test]
async fn two_nodes_appending_audit_entries_keep_one_chain() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    const PER_NODE: usize = 12;
    let append = |store: PostgresStore, node: &'static str| async move {
        for i in 0..PER_NODE {
            let record = EnvironmentRecord {
                name: env(&format!("{node}{i}")),
                protected: false,
                rotate_after: None,
                created_at: conformance::at(1),
            };
            store
                .create_environment(&record, &audit(i as i64, "environment.created", node))
                .await
                .unwrap();
        }
    };
    let (one, two) = tokio::join!(
        tokio::spawn(append(a.store.clone(), "one")),
        tokio::spawn(append(b.clone(), "two")),
    );
    one.unwrap();
    two.unwrap();
    let chain = a
        .store
        .query_audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(chain.len(), 2 * PER_NODE);
    let links: Vec<keyroll_core::audit_chain::StoredLink<'_>> = chain
        .iter()
        .map(|c| keyroll_core::audit_chain::StoredLink {
            entry: keyroll_core::audit_chain::ChainEntry {
                seq: c.entry.seq,
                at: c.entry.at,
                actor: &c.entry.actor,
                action: &c.entry.action,
                target: &c.entry.target,
                detail: &c.entry.detail,
                request_id: c.entry.request_id.as_deref(),
                remote_addr: c.entry.remote_addr.as_deref(),
            },
            prev_hash: c.prev_hash,
            hash: c.hash,
        })
        .collect();
    let head = keyroll_core::audit_chain::verify(&links).unwrap();
    assert_eq!(head.entries as usize, 2 * PER_NODE);
}

#[tokio::test]
async fn two_nodes_flushing_usage_of_one_kid_add_up_exactly() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    prod(&a.store).await;
    let app = billing_app(&a.store).await;
    let kid: Kid = app.consumer.versions[0].kid;
    const FLUSHES: i64 = 20;
    let flush = |store: PostgresStore, node: &'static str| async move {
        for i in 0..FLUSHES {
            let batch = [delta(
                kid,
                1_000 + i,
                &[(0, 3), (3_600_000, 1)],
                vec![source(node, "app/1", None, i, 1_000 + i, 2)],
            )];
            store.record_usage(&batch, 10).await.unwrap();
        }
    };
    let (one, two) = tokio::join!(
        tokio::spawn(flush(a.store.clone(), "10.0.0.1")),
        tokio::spawn(flush(b.clone(), "10.0.0.2")),
    );
    one.unwrap();
    two.unwrap();
    let usage = b.usage(&[kid], conformance::at(0)).await.unwrap();
    let n = 2 * FLUSHES as u64;
    assert_eq!(
        usage[0].hourly,
        [(conformance::at(0), 3 * n), (conformance::at(3_600_000), n)]
    );
    let counts: Vec<u64> = usage[0].sources.iter().map(|s| s.count).collect();
    assert_eq!(counts, [2 * FLUSHES as u64, 2 * FLUSHES as u64]);
    assert_eq!(
        usage[0].last_used_at,
        Some(conformance::at(1_000 + FLUSHES - 1))
    );
}

/// The next notification within 10 s.
async fn notified(
    listener: &mut Box<dyn keyroll_store::ChangeListener>,
) -> Result<i64, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("an answer within 10 s")
}

#[tokio::test]
async fn two_nodes_writing_take_gapless_seqs_and_the_other_node_hears_every_one() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    prod(&a.store).await;
    let mut listener = a.store.listen_changes().await.unwrap().unwrap();
    const PER_NODE: usize = 10;
    let create_on = |store: PostgresStore, node: &'static str, seed: u64| async move {
        let mut seqs = Vec::new();
        for i in 0..PER_NODE {
            let (consumer, _) =
                conformance::draft("prod", &format!("{node}-{i}"), seed + i as u64, 2_000);
            let target = consumer.reference();
            let made = store
                .create_consumer(
                    &consumer,
                    &[audit(2_000, "consumer.created", &target)],
                    &[],
                    None,
                )
                .await
                .unwrap();
            seqs.push(made.change_seq);
        }
        seqs
    };
    let (one, two) = tokio::join!(
        tokio::spawn(create_on(a.store.clone(), "one", 1_000)),
        tokio::spawn(create_on(b.clone(), "two", 2_000)),
    );
    let mut seqs: Vec<i64> = one.unwrap().into_iter().chain(two.unwrap()).collect();
    seqs.sort();
    let all = (1..=(2 * PER_NODE) as i64).collect::<Vec<_>>();
    assert_eq!(seqs, all, "gapless across nodes");
    let log: Vec<i64> = b
        .changes_since(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(log, all);
    // Node a hears every commit of both nodes, in commit (= seq) order.
    for expected in &all {
        assert_eq!(notified(&mut listener).await.unwrap(), *expected);
    }
}

#[tokio::test]
async fn a_listener_that_loses_its_connection_says_so_then_answers_the_head() {
    let Some(backend) = fresh().await else {
        return;
    };
    let store: &dyn Store = &backend.store;
    prod(store).await;
    let mut listener = store.listen_changes().await.unwrap().unwrap();
    let first = conformance::create(store, "prod", "app", 1).await;
    assert_eq!(notified(&mut listener).await.unwrap(), first.change_seq);

    // The server ends the listener's connection (a restart, a failover, a proxy timeout).
    let mut admin = backend.db.connect().await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one listening connection");
    let lost = notified(&mut listener).await.unwrap_err();
    assert!(matches!(lost, StoreError::Unavailable(_)), "{lost:?}");
    // Changes committed while it was not listening are not lost: the next answer, once
    // listening again, is the head, which a caller catches up to.
    let second = conformance::create(store, "prod", "other", 2).await;
    assert_eq!(notified(&mut listener).await.unwrap(), second.change_seq);
    let third = conformance::create(store, "prod", "third", 3).await;
    assert_eq!(notified(&mut listener).await.unwrap(), third.change_seq);
}

#[tokio::test]
async fn load_all_at_scale() {
    // 20,000 versions; examples/load_1m.rs measures 1,000,000 (docs/benchmarks.md).
    let Some(backend) = fresh().await else {
        return;
    };
    let consumers: i64 = 5_000;
    let mut conn = backend.db.connect().await;
    for statement in [
        "INSERT INTO environments (name, protected, created_at) VALUES ('prod', false, 0)",
        "INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
         created_at, updated_at) OVERRIDING SYSTEM VALUE \
         SELECT i, 'prod', 'c' || i, 'invoices:read', NULL, false, 4, 0, 0 \
         FROM generate_series(1, 5000) AS i",
        // Inserted in reverse, so the table's physical order is not the order read.
        "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
         created_at, enforced) SELECT i / 4 + 1, i % 4 + 1, lpad(i::text, 12, '0'), \
         decode(md5(i::text) || md5(i::text), 'hex'), decode(substr(md5(i::text), 1, 16), 'hex'), \
         CASE WHEN i % 4 = 3 THEN 'active' ELSE 'retired' END, i, false \
         FROM generate_series(19999, 0, -1) AS i",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let loaded = backend.store.load_all().await.unwrap();
    assert_eq!(loaded.len() as i64, consumers);
    for (i, stored) in loaded.iter().enumerate() {
        let states: Vec<StoredState> = stored.consumer.versions.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [
                StoredState::Retired,
                StoredState::Retired,
                StoredState::Retired,
                StoredState::Active
            ],
            "{}",
            stored.consumer.reference()
        );
        let numbers: Vec<u32> = stored
            .consumer
            .versions
            .iter()
            .map(|v| v.number.0)
            .collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
        // By environment, then name (as bytes: c1, c10, c100, …).
        if i > 0 {
            assert!(loaded[i - 1].consumer.name.as_str() < stored.consumer.name.as_str());
        }
    }
}
