//! The test PostgreSQL: reach it or skip, and a throw-away database per test.
//!
//! Self-contained (sqlx, tokio and std only) so that another test crate can copy this file as it
//! is. Its contract:
//! - The server is the one at `KEYROLL_TEST_POSTGRES_URL`, by default
//!   `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication); that URL is only used
//!   to create and drop databases.
//! - [`TestDatabase::create`] returns `None` when the server is not reachable (within 3 s) and
//!   the test should skip: it prints a loud `SKIPPED` line to stderr. With `CI=true` an
//!   unreachable server is a failure instead ("PostgreSQL at HOST:PORT is not reachable; CI
//!   requires it"), so CI can never pass by skipping.
//! - Each [`TestDatabase`] is a new database `keyroll_test_<pid>_<n>_<random>`, unique across
//!   tests running in parallel (threads or processes), dropped with `WITH (FORCE)` when the value
//!   is dropped (best effort: a failure to drop is printed, never a panic; a killed test run can
//!   leave databases named `keyroll_test_…` behind, harmless and safe to drop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The server's admin URL when `KEYROLL_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long the reachability check waits.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin URL: `KEYROLL_TEST_POSTGRES_URL`, else [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("KEYROLL_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// `HOST:PORT` of a URL, for messages.
fn host_port(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => format!("{}:{}", o.get_host(), o.get_port()),
        Err(_) => "(unparsable KEYROLL_TEST_POSTGRES_URL)".to_owned(),
    }
}

/// A connection to the admin database, or why there is none.
async fn admin_connection(url: &str) -> Result<PgConnection, String> {
    let options: PgConnectOptions = url.parse().map_err(|e| format!("{e}"))?;
    match tokio::time::timeout(REACH_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", REACH_TIMEOUT.as_secs())),
    }
}

/// A fresh database on the test server, dropped with the value.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's own URL.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh database, or `None` (with a loud line) when the server is not reachable
    /// outside CI. Panics when it is not reachable with `CI=true`, or when the server answers
    /// but refuses to create a database.
    pub async fn create() -> Option<TestDatabase> {
        let admin_url = admin_url();
        let mut admin = match admin_connection(&admin_url).await {
            Ok(conn) => conn,
            Err(why) => {
                let place = host_port(&admin_url);
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("PostgreSQL at {place} is not reachable; CI requires it ({why})");
                }
                eprintln!(
                    "\n*** SKIPPED: PostgreSQL at {place} is not reachable ({why}); start it or \
                     set KEYROLL_TEST_POSTGRES_URL to run the PostgreSQL tests ***\n"
                );
                return None;
            }
        };
        let name = unique_name();
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = admin.close().await;
        let url = database_url(&admin_url, &name);
        Some(TestDatabase {
            url,
            name,
            admin_url,
        })
    }

    /// A connection to this database, behind the store's back.
    pub async fn connect(&self) -> PgConnection {
        admin_connection(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
    }

    /// A connection to the server's admin database (to drop this one early, say).
    pub async fn connect_admin(&self) -> PgConnection {
        admin_connection(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.admin_url))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own drops the database (FORCE ends the store's connections).
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = admin_connection(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// `keyroll_test_<pid>_<n>_<random>`: unique across the threads of a process (the counter) and
/// across processes (the pid, and random bits against pid reuse: std's randomly seeded hasher).
fn unique_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "keyroll_test_{}_{n}_{:08x}",
        std::process::id(),
        random as u32
    )
}

/// The admin URL with its database path replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
