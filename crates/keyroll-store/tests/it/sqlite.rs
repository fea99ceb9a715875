//! The conformance suite on SQLite, and what only SQLite has: a file on disk that can be missing,
//! misplaced, not a database, read-only, from a newer keyroll or edited by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyroll_core::{Command, Kid, Policy, StoredState, Usage, VersionNumber};
use keyroll_store::{ConsumerWrite, EnvironmentRecord, SqliteStore, Store, StoreError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Column, Connection, Row};
use tempfile::TempDir;

use crate::conformance::{
    self, Backend, Cell, audit, conformance_suite, consumer_ref, delta, env, source,
};

/// A store on a fresh file in its own temporary directory.
pub struct SqliteBackend {
    store: SqliteStore,
    path: PathBuf,
    dir: TempDir,
}

async fn fresh() -> SqliteBackend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyroll.db");
    let store = SqliteStore::open(&path).await.unwrap();
    SqliteBackend { store, path, dir }
}

/// A connection behind the store's back, for reading and damaging rows. Foreign keys are off so
/// that a test can break them.
async fn raw(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(false);
    SqliteConnection::connect_with(&options).await.unwrap()
}

#[async_trait]
impl Backend for SqliteBackend {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn dump_cells(&self) -> Vec<Cell> {
        let mut conn = raw(&self.path).await;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let mut cells = Vec::new();
        for table in tables {
            let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for row in rows {
                for (i, column) in row.columns().iter().enumerate() {
                    // Unchecked: SQLite hands out any value as bytes (numbers as their text).
                    let bytes: Option<Vec<u8>> = row.try_get_unchecked(i).unwrap();
                    cells.push(Cell {
                        table: table.clone(),
                        column: column.name().to_owned(),
                        bytes: bytes.unwrap_or_default(),
                    });
                }
            }
        }
        // The files themselves too (database, WAL, shared memory): a secret must not be on disk
        // anywhere, not even in a page SQLite has let go of.
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let entry = entry.unwrap();
            cells.push(Cell {
                table: "<file>".to_owned(),
                column: entry.file_name().to_string_lossy().into_owned(),
                bytes: std::fs::read(entry.path()).unwrap(),
            });
        }
        cells
    }
}

conformance_suite!(fresh);

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

#[tokio::test]
async fn a_path_under_a_regular_file_is_unavailable() {
    // Tests run as root, where permissions do not stop writes; a path whose "directory" is a
    // file fails for root too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("somefile");
    std::fs::write(&file, "not a directory").unwrap();
    let path = file.join("keyroll.db");
    let message = unavailable(SqliteStore::open(&path).await.unwrap_err());
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("{} is not a directory", file.display())),
        "{message}"
    );

    let deeper = file.join("data").join("keyroll.db");
    let message = unavailable(SqliteStore::open(&deeper).await.unwrap_err());
    assert!(
        message.contains(&format!("{} is a file, not a directory", file.display())),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("keyroll.db");
    let message = unavailable(SqliteStore::open(&path).await.unwrap_err());
    assert!(
        message.starts_with(&format!("cannot open SQLite database {}: ", path.display())),
        "{message}"
    );
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test]
async fn a_directory_as_the_database_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyroll.db");
    std::fs::create_dir(&path).unwrap();
    let message = unavailable(SqliteStore::open(&path).await.unwrap_err());
    assert_eq!(
        message,
        format!(
            "cannot open SQLite database {}: it is a directory",
            path.display()
        )
    );
    let url = format!("sqlite://{}", path.display());
    let message = unavailable(SqliteStore::open_url(&url).await.unwrap_err());
    assert!(message.contains("it is a directory"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyroll.db");
    std::fs::write(&path, "this is a config file, not a database\n".repeat(200)).unwrap();
    let message = corrupt(SqliteStore::open(&path).await.unwrap_err());
    assert_eq!(
        message,
        format!(
            "cannot open SQLite database {}: file is not a database",
            path.display()
        )
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        "this is a config file, not a database\n"
            .repeat(200)
            .as_bytes(),
        "the file is left as it was"
    );
}

#[tokio::test]
async fn a_bad_url_is_unavailable() {
    let message = unavailable(
        SqliteStore::open_url("sqlite://x.db?mode=sideways")
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("sqlite://x.db?mode=sideways") && message.contains("sideways"),
        "{message}"
    );
    let message = unavailable(
        SqliteStore::open_url("postgres://db/keyroll")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        message,
        "cannot open SQLite database postgres://db/keyroll: not a sqlite: URL"
    );
}

#[tokio::test]
async fn a_read_only_database_refuses_writes_as_unavailable() {
    let backend = fresh().await;
    conformance::ping_and_backend(&backend.store).await;
    drop(backend.store);
    let url = format!("sqlite://{}?mode=ro", backend.path.display());
    let store = SqliteStore::open_url(&url).await.unwrap();
    assert!(
        store.list_environments().await.unwrap().is_empty(),
        "reads work"
    );
    let record = EnvironmentRecord {
        name: env("prod"),
        protected: false,
        rotate_after: None,
        created_at: conformance::at(1),
    };
    let err = store
        .create_environment(
            &record,
            &audit(1, "environment.created", "environment prod"),
        )
        .await
        .unwrap_err();
    let message = unavailable(err);
    assert!(
        message.contains(&backend.path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("readonly"), "{message}");
}

#[tokio::test]
async fn a_read_only_url_to_a_missing_file_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let url = format!("sqlite://{}?mode=ro", path.display());
    let message = unavailable(SqliteStore::open_url(&url).await.unwrap_err());
    assert!(
        message.starts_with(&format!("cannot open SQLite database {}: ", path.display())),
        "{message}"
    );
    assert!(message.ends_with("the file does not exist"), "{message}");
    assert!(!path.exists(), "mode=ro creates nothing");
}

#[tokio::test]
async fn open_url_creates_the_file_and_memory_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("by-url.db");
    let store = SqliteStore::open_url(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.ping().await.unwrap();
    assert!(path.is_file());

    // In memory, load_all reads through the pool instead of a second connection to a file.
    let memory = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    conformance::load_all_returns_everything(&memory).await;
    let memory = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    conformance::write_round_trips_every_version_field(&memory).await;
    let memory = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    conformance::policy_and_stall_fields_round_trip(&memory).await;
    // And last_used_all reads through the pool too.
    let memory = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    conformance::last_used_all_lists_every_used_version(&memory).await;
    let memory = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    conformance::record_usage_adds_keeps_the_latest_and_trims(&memory).await;
}

#[tokio::test]
async fn reopening_keeps_data_and_settings() {
    let backend = fresh().await;
    let record = EnvironmentRecord {
        name: env("prod"),
        protected: true,
        rotate_after: None,
        created_at: conformance::at(7),
    };
    backend
        .store
        .create_environment(
            &record,
            &audit(7, "environment.created", "environment prod"),
        )
        .await
        .unwrap();
    drop(backend.store);

    let reopened = SqliteStore::open(&backend.path).await.unwrap();
    assert_eq!(reopened.list_environments().await.unwrap(), vec![record]);
    assert_eq!(reopened.list_audit(10).await.unwrap().len(), 1);

    let mut conn = raw(&backend.path).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        mode, "wal",
        "WAL is a property of the file, kept across opens"
    );
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        migrations,
        migration_versions().len() as i64,
        "each migration ran once"
    );
}

/// The versions of the SQLite migrations shipped (from the file names), so the tests follow
/// when a migration is added.
fn migration_versions() -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
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
async fn a_database_from_a_newer_keyroll_is_corrupt() {
    let backend = fresh().await;
    let mut conn = raw(&backend.path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let message = corrupt(SqliteStore::open(&backend.path).await.unwrap_err());
    assert!(
        message.contains(&backend.path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("9999") && message.contains("newer keyroll"),
        "{message}"
    );
}

#[tokio::test]
async fn the_audit_log_and_the_outbox_are_append_only() {
    let backend = fresh().await;
    conformance::ping_and_backend(&backend.store).await;
    let record = EnvironmentRecord {
        name: env("prod"),
        protected: false,
        rotate_after: None,
        created_at: conformance::at(1),
    };
    backend
        .store
        .create_environment(
            &record,
            &audit(1, "environment.created", "environment prod"),
        )
        .await
        .unwrap();
    let mut conn = raw(&backend.path).await;
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

/// Damage done by hand to a stored consumer, and what the error must say about it.
const DAMAGE: &[(&str, &str)] = &[
    (
        "UPDATE key_versions SET kid = 'not-base62!!'",
        "key_versions row (consumer_id 1, version 1): column kid: \"not-base62!!\" is not 12 base62 characters",
    ),
    (
        "UPDATE key_versions SET secret_hash = zeroblob(31)",
        "key_versions row (consumer_id 1, version 1): column secret_hash: 31 bytes where a SHA-256 digest has 32",
    ),
    (
        "UPDATE key_versions SET fingerprint = zeroblob(9)",
        "column fingerprint: 9 bytes where a fingerprint has 8",
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
        "UPDATE key_versions SET replaced_by = -3",
        "column replaced_by: -3 is not a version number",
    ),
    (
        "UPDATE consumers SET scopes = 'invoices:read bad!scope'",
        "consumers row (id 1): column scopes: invalid scope \"bad!scope\"",
    ),
    (
        "UPDATE consumers SET name = 'Billing App'",
        "consumers row (id 1): column name: invalid consumer name \"Billing App\"",
    ),
    (
        "UPDATE consumers SET environment = 'Prod'",
        "consumers row (id 1): column environment: invalid environment name \"Prod\"",
    ),
    (
        "UPDATE key_versions SET consumer_id = 77",
        "key_versions row (consumer_id 77, version 1) belongs to no consumer",
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
        "UPDATE consumers SET on_stall = 'panic'",
        "consumers row (id 1): column on_stall: \"panic\" is not one of extend, retire",
    ),
    (
        "UPDATE key_versions SET grace_ms = -60000",
        "key_versions row (consumer_id 1, version 1): column grace_ms: -60000 is a negative duration",
    ),
];

#[tokio::test]
async fn damaged_rows_are_reported_as_corrupt_with_what_is_wrong() {
    for (damage, expected) in DAMAGE {
        let backend = fresh().await;
        let store: &dyn Store = &backend.store;
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
        let (consumer, _) = {
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
            (consumer, key)
        };
        store
            .create_consumer(&consumer, &[], &[], None)
            .await
            .unwrap();

        let mut conn = raw(&backend.path).await;
        // The CHECK constraints would stop most of this damage; a hand edit can switch them off.
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(damage).execute(&mut conn).await.unwrap();

        let message = corrupt(store.load_all().await.unwrap_err());
        assert!(
            message.contains(expected),
            "{damage}:\n  got      {message}\n  expected {expected}"
        );
        // A consumer moved out of `prod`, or versions moved off their consumer, are simply not
        // among prod's consumers; everything else is found and must be reported the same way.
        match store.list_consumers(Some(&env("prod"))).await {
            Err(err) => assert!(corrupt(err).contains(expected), "{damage}"),
            Ok(_) => assert!(
                damage.contains("environment") || damage.contains("consumer_id"),
                "{damage}"
            ),
        }
    }
}

#[tokio::test]
async fn load_all_at_scale() {
    // 100,000 versions by default; KEYROLL_STORE_LOAD_VERSIONS=1000000 measures the SPEC §12
    // budget (1,000,000 versions in 5 s), best in a release build.
    let versions: i64 = std::env::var("KEYROLL_STORE_LOAD_VERSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let consumers = versions / 4;
    let backend = fresh().await;
    let mut conn = raw(&backend.path).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO environments (name, protected, created_at) VALUES ('prod', 0, 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
         created_at, updated_at) SELECT i, 'prod', 'c' || i, 'invoices:read', NULL, 0, 4, 0, 0 FROM n",
    )
    .bind(consumers)
    .execute(&mut *tx)
    .await
    .unwrap();
    // Four versions per consumer: three retired, the last active.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
         created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, replaced_by, \
         enforced) SELECT i / 4 + 1, i % 4 + 1, printf('%012d', i), randomblob(32), randomblob(8), \
         CASE WHEN i % 4 = 3 THEN 'active' ELSE 'retired' END, i, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i % 4 + 2 END, 0 FROM n",
    )
    .bind(consumers * 4)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let started = Instant::now();
    let loaded = backend.store.load_all().await.unwrap();
    let elapsed = started.elapsed();
    eprintln!("load_all: {} versions in {elapsed:?}", consumers * 4);

    assert_eq!(loaded.len(), usize::try_from(consumers).unwrap());
    let total: usize = loaded.iter().map(|c| c.consumer.versions.len()).sum();
    assert_eq!(total, usize::try_from(consumers * 4).unwrap());
    for stored in &loaded {
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
        assert_eq!(stored.consumer.name.as_str(), format!("c{}", stored.id));
    }
}

#[tokio::test]
async fn a_database_of_schema_version_1_is_upgraded_with_default_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyroll.db");
    // What a keyroll that shipped only 0001 made: its migrations directory, run by sqlx.
    let old_migrations = dir.path().join("migrations-v1");
    std::fs::create_dir(&old_migrations).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite/0001_init.sql"),
        old_migrations.join("0001_init.sql"),
    )
    .unwrap();
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap();
        migrator.run(&mut conn).await.unwrap();
        for statement in [
            "INSERT INTO environments (name, protected, created_at) VALUES ('prod', 0, 1)",
            "INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
             created_at, updated_at) VALUES (1, 'prod', 'billing-app', 'invoices:read', NULL, 0, 2, \
             1000, 2000)",
            "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
             created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, replaced_by, \
             enforced) VALUES (1, 1, 'AAAAAAAAAAA1', randomblob(32), randomblob(8), 'retiring', \
             1000, 3602000, NULL, NULL, NULL, NULL, 2, 0)",
            "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
             created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, replaced_by, \
             enforced) VALUES (1, 2, 'AAAAAAAAAAA2', randomblob(32), randomblob(8), 'active', \
             2000, NULL, NULL, NULL, NULL, NULL, NULL, 0)",
        ] {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let loaded = store.load_all().await.unwrap();
    assert_eq!(loaded.len(), 1);
    let stored = &loaded[0];
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.consumer.policy, Policy::default());
    let versions = &stored.consumer.versions;
    assert_eq!(versions.len(), 2);
    for v in versions {
        assert_eq!(v.grace, Duration::ZERO, "{}", v.number);
        assert!(!v.extended && !v.unused_reported, "{}", v.number);
    }
    assert_eq!(versions[0].state, StoredState::Retiring);
    // The pool reads the same as the bulk read.
    let got = store
        .get_consumer(&consumer_ref("prod", "billing-app"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, stored);
    let mut conn = raw(&path).await;
    let migrations: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(migrations, migration_versions());
    assert_eq!(&migrations[..2], [1, 2]);

    // The upgraded database takes usage, events and the new fields.
    let k2 = Kid::parse("AAAAAAAAAAA2").unwrap();
    store
        .record_usage(
            &[delta(
                k2,
                5_000,
                &[(0, 3)],
                vec![source("10.1.1.1", "a", None, 4_000, 5_000, 3)],
            )],
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        store.last_used_all().await.unwrap(),
        [(k2, conformance::at(5_000))]
    );
    let seen = [(VersionNumber(2), conformance::at(5_000))];
    let now = 2 * 3_600_000;
    let transition = stored
        .consumer
        .apply(Command::Settle, &Usage::new(&seen), conformance::at(now))
        .unwrap();
    let events: Vec<_> = transition
        .effects
        .iter()
        .map(|e| conformance::event(now, e, "prod/billing-app"))
        .collect();
    assert!(!events.is_empty(), "v1's deadline has passed");
    let written = store
        .write_consumer(ConsumerWrite {
            expected_revision: stored.revision,
            id: stored.id,
            consumer: &transition.consumer,
            audit: &[],
            idempotency: None,
            events: &events,
            handover: None,
        })
        .await
        .unwrap();
    assert_eq!(store.load_all().await.unwrap(), vec![written]);
    assert_eq!(store.list_events(0, 10).await.unwrap().len(), events.len());
}

/// Damage done by hand to usage and event rows, and what the error must say about it.
#[tokio::test]
async fn damaged_usage_and_event_rows_are_corrupt() {
    let backend = fresh().await;
    let store: &dyn Store = &backend.store;
    let mut conn = raw(&backend.path).await;
    // Foreign keys are off on this connection: usage of kids that have no version.
    for statement in [
        "INSERT INTO version_usage (kid, last_used_at) VALUES ('bad kid!', 5)",
        "INSERT INTO usage_hourly (kid, hour, count) VALUES ('AAAAAAAAAAA1', 0, -4)",
        "INSERT INTO usage_sources (kid, address, user_agent, client_id, first_seen, last_seen, \
         count) VALUES ('AAAAAAAAAAA2', '10.0.0.1', 'ua', '', 1, 2, -1)",
        "INSERT INTO events (at, kind, consumer, version, detail) \
         VALUES (1, 'version.issued', 'prod/app', 0, '{}')",
    ] {
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let message = corrupt(store.last_used_all().await.unwrap_err());
    assert!(
        message.contains("version_usage row: column kid: \"bad kid!\" is not 12 base62 characters"),
        "{message}"
    );
    let k1 = Kid::parse("AAAAAAAAAAA1").unwrap();
    let k2 = Kid::parse("AAAAAAAAAAA2").unwrap();
    let message = corrupt(store.usage(&[k1], conformance::at(0)).await.unwrap_err());
    assert!(
        message.contains("usage_hourly row (kid AAAAAAAAAAA1, hour 0): column count: negative: -4"),
        "{message}"
    );
    let message = corrupt(store.usage(&[k2], conformance::at(0)).await.unwrap_err());
    assert!(
        message.contains("usage_sources row (kid AAAAAAAAAAA2): column count: negative: -1"),
        "{message}"
    );
    let message = corrupt(store.list_events(0, 10).await.unwrap_err());
    assert!(
        message.contains("events row (seq 1): column version: 0 is not a version number"),
        "{message}"
    );
}

#[tokio::test]
async fn record_usage_at_scale() {
    // A flush of 1,000 versions, each with two hours and three sources, into a database of
    // 10,000 versions: new rows first, then the same batch again (every row an update), then a
    // trim of every version's sources.
    let versions: i64 = 10_000;
    let backend = fresh().await;
    let mut conn = raw(&backend.path).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO environments (name, protected, created_at) VALUES ('prod', 0, 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
         created_at, updated_at) SELECT i, 'prod', 'c' || i, 'invoices:read', NULL, 0, 1, 0, 0 FROM n",
    )
    .bind(versions)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
         created_at, enforced) SELECT i, 1, printf('%012d', i), randomblob(32), randomblob(8), \
         'active', 0, 0 FROM n",
    )
    .bind(versions)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let hour = 3_600_000;
    let batch: Vec<_> = (1..=1_000i64)
        .map(|i| {
            let kid = Kid::parse(&format!("{:012}", i * 7)).unwrap();
            delta(
                kid,
                2 * hour + i,
                &[(hour, 10), (2 * hour, 5)],
                (0..3)
                    .map(|s| {
                        source(
                            &format!("10.0.{s}.{}", i % 250),
                            "billing/2.1 (linux)",
                            Some("billing-worker"),
                            hour,
                            2 * hour + s,
                            5,
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let store: &dyn Store = &backend.store;
    for round in ["insert", "update"] {
        let started = Instant::now();
        store.record_usage(&batch, 20).await.unwrap();
        eprintln!(
            "record_usage ({round}): 1000 deltas in {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    store.record_usage(&batch, 1).await.unwrap();
    eprintln!(
        "record_usage (trim to 1): 1000 deltas in {:?}",
        started.elapsed()
    );

    let kids: Vec<Kid> = batch.iter().map(|d| d.kid).collect();
    let started = Instant::now();
    let usage = store.usage(&kids, conformance::at(0)).await.unwrap();
    eprintln!("usage: 1000 versions in {:?}", started.elapsed());
    assert_eq!(usage.len(), 1_000);
    for (u, d) in usage.iter().zip(&batch) {
        assert_eq!(u.kid, d.kid);
        assert_eq!(
            u.hourly,
            [(conformance::at(hour), 30), (conformance::at(2 * hour), 15)]
        );
        assert_eq!(u.sources.len(), 1);
        assert_eq!(u.sources[0].count, 15);
        assert_eq!(
            u.sources[0].address,
            format!(
                "10.0.2.{}",
                (d.kid.as_str().parse::<i64>().unwrap() / 7) % 250
            )
        );
    }
    let started = Instant::now();
    assert_eq!(store.last_used_all().await.unwrap().len(), 1_000);
    eprintln!("last_used_all: 1000 rows in {:?}", started.elapsed());
}

/// A small tmpfs mounted for one test and unmounted when dropped (even when the test fails).
pub struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or `None` with a visible
    /// SKIPPED line when this is not root; in CI (`CI=true`) not being able to is a failure.
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallFs { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let line = format!(
                    "SKIPPED: cannot mount a small tmpfs ({why}); run the tests as root to test \
                     a full disk (install: run as root, or `sudo -E cargo test`)"
                );
                if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!("{line}");
                }
                // The harness shows a test's stdout only when it fails: SKIPPED goes to stderr,
                // which `cargo test -- --nocapture` and CI logs show.
                eprintln!("{line}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the file system is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // Whatever is left in smaller pieces, so not even a page fits.
        loop {
            if f.write_all(&chunk[..512]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn writes_work_again_once_a_full_disk_has_space() {
    let Some(fs) = SmallFs::mount("4m") else {
        return;
    };
    let path = fs.path().join("keyroll.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let make = |name: String, n: i64| {
        let store = &store;
        async move {
            let record = EnvironmentRecord {
                name: env(&name),
                protected: false,
                rotate_after: None,
                created_at: conformance::at(n),
            };
            let audit = audit(n, "environment.created", &format!("environment {name}"));
            store.create_environment(&record, &audit).await
        }
    };
    make("before".to_owned(), 1).await.unwrap();
    store.ping().await.unwrap();

    let filler = fs.fill();
    // The log may still have room for a commit or two; the disk is full once one fails.
    let mut acknowledged = vec!["before".to_owned()];
    let mut failure = None;
    for n in 0..200 {
        let name = format!("full{n}");
        match make(name.clone(), 10 + n).await {
            Ok(()) => acknowledged.push(name),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a write fails on a full disk");
    let message = unavailable(failure);
    assert!(
        message.contains(&path.display().to_string()) && message.contains("full"),
        "{message}"
    );
    // While the disk is full, every write fails the same way and the store says so.
    for n in 0..5 {
        let again = unavailable(make(format!("again{n}"), 300 + n).await.unwrap_err());
        assert!(again.contains("full"), "{again}");
    }
    let down = unavailable(store.ping().await.unwrap_err());
    assert!(down.contains("full"), "{down}");

    std::fs::remove_file(&filler).unwrap();
    // No restart: the same store takes writes again, at once, on every pooled connection.
    for n in 0..12 {
        let name = format!("after{n}");
        make(name.clone(), 400 + n).await.unwrap();
        acknowledged.push(name);
    }
    store.ping().await.unwrap();
    let reopened = SqliteStore::open(&path).await.unwrap();
    let stored: Vec<String> = reopened
        .list_environments()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    for name in &acknowledged {
        assert!(
            stored.contains(name),
            "acknowledged {name} was lost: {stored:?}"
        );
    }
    assert_eq!(stored.len(), acknowledged.len(), "{stored:?}");
}

#[tokio::test]
async fn a_deleted_or_replaced_database_file_refuses_writes_and_fails_the_ping() {
    let backend = fresh().await;
    let store = &backend.store;
    let path = &backend.path;
    let make = |name: &str, n: i64| {
        let record = EnvironmentRecord {
            name: env(name),
            protected: false,
            rotate_after: None,
            created_at: conformance::at(n),
        };
        let audit = audit(n, "environment.created", &format!("environment {name}"));
        async move { store.create_environment(&record, &audit).await }
    };
    make("one", 1).await.unwrap();
    let aside = backend.dir.path().join("aside.db");
    std::fs::rename(path, &aside).unwrap();
    let refused = unavailable(make("two", 2).await.unwrap_err());
    assert!(
        refused.contains(&path.display().to_string()) && refused.contains("deleted"),
        "{refused}"
    );
    let down = unavailable(store.ping().await.unwrap_err());
    assert!(down.contains("deleted"), "{down}");

    // Another file at the path is not the database that was opened.
    std::fs::copy(&aside, path).unwrap();
    let refused = unavailable(make("two", 2).await.unwrap_err());
    assert!(refused.contains("replaced"), "{refused}");
    assert!(store.ping().await.is_err());

    // The original back in place: writes work again, into the file that is read at start.
    std::fs::rename(&aside, path).unwrap();
    make("two", 2).await.unwrap();
    store.ping().await.unwrap();
    let reopened = SqliteStore::open(path).await.unwrap();
    assert_eq!(reopened.list_environments().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_installation_id_is_recorded_once_and_emptiness_reported() {
    let backend = fresh().await;
    let store = &backend.store;
    let first = store.installation("abc").await.unwrap();
    assert_eq!(first.id, "abc");
    assert!(first.empty);
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
    let again = store.installation("other").await.unwrap();
    assert_eq!(again.id, "abc", "the first id stays");
    assert!(!again.empty);
}

/// The audit entries, oldest first, with their hashes.
async fn chain_of(store: &SqliteStore) -> Vec<keyroll_store::ChainedAudit> {
    store
        .query_audit(&keyroll_store::AuditQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn verify_chain(
    all: &[keyroll_store::ChainedAudit],
) -> Result<keyroll_core::audit_chain::Head, keyroll_core::audit_chain::ChainBreak> {
    use keyroll_core::audit_chain::{ChainEntry, StoredLink, verify};
    let links: Vec<StoredLink<'_>> = all
        .iter()
        .map(|c| StoredLink {
            entry: ChainEntry {
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
    verify(&links)
}

#[tokio::test]
async fn entries_from_before_the_chain_are_chained_once_at_open() {
    let backend = fresh().await;
    for (i, name) in ["prod", "staging", "dev"].iter().enumerate() {
        let record = EnvironmentRecord {
            name: env(name),
            protected: false,
            rotate_after: None,
            created_at: conformance::at(i as i64),
        };
        let entry = audit(
            i as i64,
            "environment.created",
            &format!("environment {name}"),
        );
        backend
            .store
            .create_environment(&record, &entry)
            .await
            .unwrap();
    }
    let chained = chain_of(&backend.store).await;
    drop(backend.store);

    // The rows as migration 0006 finds them in a database of an earlier keyroll: no hashes. Its
    // trigger lets exactly this be filled in later.
    let trigger = include_str!("../../migrations/sqlite/0006_audit_chain.sql");
    let trigger = &trigger[trigger.find("CREATE TRIGGER").unwrap()..];
    let mut conn = raw(&backend.path).await;
    sqlx::raw_sql(&format!(
        "DROP TRIGGER audit_log_no_update; \
         UPDATE audit_log SET prev_hash = NULL, hash = NULL; {trigger}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);

    let reopened = SqliteStore::open(&backend.path).await.unwrap();
    assert_eq!(
        chain_of(&reopened).await,
        chained,
        "chained at open as they would have been when written"
    );
    assert_eq!(verify_chain(&chained).unwrap().entries, 3);

    // The trigger still refuses any other change.
    let mut conn = raw(&backend.path).await;
    let err = sqlx::query("UPDATE audit_log SET detail = '{}' WHERE seq = 2")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // A row stripped of its hashes later is a manual edit: left as it is, for verify to report.
    sqlx::raw_sql(
        "DROP TRIGGER audit_log_no_update; \
         UPDATE audit_log SET prev_hash = NULL, hash = NULL WHERE seq = 2",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    drop(reopened);
    let again = SqliteStore::open(&backend.path).await.unwrap();
    let broken = verify_chain(&chain_of(&again).await).unwrap_err();
    assert_eq!((broken.position, broken.seq), (2, 2), "{broken}");
}
