//! The start-up read at scale (SPEC §12: 1,000,000 key versions loaded within 5 s), on either
//! backend: seeds a fresh database with N key versions (four per consumer: three retired, the
//! last active, each with a last use), then times `load_all` and `last_used_all`.
//!
//! ```text
//! cargo run --release -p keyroll-store --example load_1m -- sqlite|postgres [N]
//! ```
//!
//! N defaults to 1,000,000. SQLite seeds a file in a temporary directory (one transaction of
//! set-based inserts); PostgreSQL creates a database `keyroll_bench_<random>` on the server at
//! `KEYROLL_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), seeds it
//! with `INSERT … SELECT generate_series`, runs `VACUUM ANALYZE` (what autovacuum does to a
//! database at rest), and drops it at the end. The figures go to docs/benchmarks.md.
#![allow(clippy::print_stdout)] // A benchmark's output is its figures.

use std::error::Error;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use keyroll_store::{PostgresStore, SqliteStore, Store};
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How many times each read is timed (the first includes the server's cold caches).
const RUNS: usize = 3;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_default();
    let versions: i64 = match args.next() {
        Some(n) => n.replace(['_', ','], "").parse()?,
        None => 1_000_000,
    };
    // Four versions per consumer.
    let consumers = versions / 4;
    let versions = consumers * 4;
    match backend.as_str() {
        "sqlite" => sqlite(consumers).await?,
        "postgres" => postgres(consumers).await?,
        _ => return Err("usage: load_1m sqlite|postgres [N]".into()),
    }
    println!("({versions} versions, {consumers} consumers)");
    Ok(())
}

async fn sqlite(consumers: i64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keyroll.db");
    let store = SqliteStore::open(&path).await?;
    let started = Instant::now();
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    let mut tx = conn.begin().await?;
    tx.execute("INSERT INTO environments (name, protected, created_at) VALUES ('prod', 0, 0)")
        .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
         created_at, updated_at) SELECT i, 'prod', 'c' || i, 'invoices:read', NULL, 0, 4, 0, 0 \
         FROM n",
    )
    .bind(consumers)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
         created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, replaced_by, \
         enforced) SELECT i / 4 + 1, i % 4 + 1, printf('%012d', i), randomblob(32), \
         randomblob(8), CASE WHEN i % 4 = 3 THEN 'active' ELSE 'retired' END, i, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i % 4 + 2 END, 0 FROM n",
    )
    .bind(consumers * 4)
    .execute(&mut *tx)
    .await?;
    tx.execute(
        "INSERT INTO version_usage (kid, last_used_at) SELECT kid, created_at FROM key_versions",
    )
    .await?;
    tx.commit().await?;
    conn.close().await?;
    println!("sqlite: seeded in {:.2?}", started.elapsed());
    measure("sqlite", &store, consumers).await
}

async fn postgres(consumers: i64) -> Result<()> {
    let admin_url = std::env::var("KEYROLL_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!(
        "keyroll_bench_{:08x}",
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32
    );
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or("the admin URL has no database path")?;
    let url = format!("{base}/{name}");
    let outcome = seed_and_measure_postgres(&url, consumers).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    outcome
}

async fn seed_and_measure_postgres(url: &str, consumers: i64) -> Result<()> {
    let store = PostgresStore::open_url(url).await?;
    let started = Instant::now();
    let mut conn = PgConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    tx.execute("INSERT INTO environments (name, protected, created_at) VALUES ('prod', false, 0)")
        .await?;
    sqlx::query(
        "INSERT INTO consumers (id, environment, name, scopes, owner, disabled, revision, \
         created_at, updated_at) OVERRIDING SYSTEM VALUE \
         SELECT i, 'prod', 'c' || i, 'invoices:read', NULL, false, 4, 0, 0 \
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(consumers)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO key_versions (consumer_id, version, kid, secret_hash, fingerprint, state, \
         created_at, deadline, expires_at, retired_at, revoked_at, revoke_reason, replaced_by, \
         enforced) SELECT i / 4 + 1, i % 4 + 1, lpad(i::text, 12, '0'), \
         decode(md5(i::text) || md5(i::text || 'x'), 'hex'), \
         decode(substr(md5(i::text || 'f'), 1, 16), 'hex'), \
         CASE WHEN i % 4 = 3 THEN 'active' ELSE 'retired' END, i, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i + 1 END, NULL, NULL, \
         CASE WHEN i % 4 = 3 THEN NULL ELSE i % 4 + 2 END, false \
         FROM generate_series(0, $1::bigint - 1) AS i",
    )
    .bind(consumers * 4)
    .execute(&mut *tx)
    .await?;
    tx.execute(
        "INSERT INTO version_usage (kid, last_used_at) SELECT kid, created_at FROM key_versions",
    )
    .await?;
    tx.commit().await?;
    conn.execute("VACUUM ANALYZE").await?;
    conn.close().await?;
    println!("postgres: seeded in {:.2?}", started.elapsed());
    measure("postgres", &store, consumers).await
}

async fn measure(backend: &str, store: &dyn Store, consumers: i64) -> Result<()> {
    for run in 1..=RUNS {
        let started = Instant::now();
        let loaded = store.load_all().await?;
        let load = started.elapsed();
        let total: usize = loaded.iter().map(|c| c.consumer.versions.len()).sum();
        if loaded.len() as i64 != consumers || total as i64 != 4 * consumers {
            return Err(format!(
                "load_all returned {} consumers with {total} versions",
                loaded.len()
            )
            .into());
        }
        drop(loaded);
        let started = Instant::now();
        let used = store.last_used_all().await?;
        let last_used = started.elapsed();
        if used.len() as i64 != 4 * consumers {
            return Err(format!("last_used_all returned {} rows", used.len()).into());
        }
        println!(
            "{backend} run {run}: load_all {:.2} s, last_used_all {:.2} s",
            load.as_secs_f64(),
            last_used.as_secs_f64()
        );
    }
    Ok(())
}
