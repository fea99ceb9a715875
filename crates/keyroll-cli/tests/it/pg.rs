//! A PostgreSQL database of the test's own, for the tests that run several `keyroll serve`
//! processes on one database (or one node behind a proxy the test can cut).
//!
//! Each test creates a database `keyroll_e2e_<random>` on the server at
//! `KEYROLL_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust
//! auth) and drops it when done, so tests run in parallel. Without PostgreSQL the test fails
//! under `CI=true` (CI must run it) and returns early elsewhere, after one loud line on stderr.
//! Databases are made with `psql`, which ships with every PostgreSQL install.

use std::process::Command;

/// The server's address as the tests reach it.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that is dropped with this value.
pub struct Database {
    admin_url: String,
    name: String,
    /// The URL of the database, for `KEYROLL_DATABASE_URL`.
    pub url: String,
    /// The server's host and port (what a proxy in front of it connects to).
    pub host_port: String,
}

fn admin_url() -> String {
    std::env::var("KEYROLL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A fresh database, or `None` (outside CI) when PostgreSQL cannot be reached.
pub fn database(test: &str) -> Option<Database> {
    let admin = admin_url();
    if let Err(e) = psql(&admin, "SELECT 1") {
        let why = format!("PostgreSQL at {admin} is not reachable ({e})");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI requires it (.ci/run starts it)"
        );
        eprintln!("SKIPPED {test}: {why}; start PostgreSQL to run it");
        return None;
    }
    let name = format!("keyroll_e2e_{:016x}", fastrand::u64(..));
    psql(&admin, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let (base, _) = admin.rsplit_once('/').expect("a database URL has a path");
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    let host_port = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, hp)| hp)
        .to_owned();
    Some(Database {
        url: format!("{base}/{name}"),
        admin_url: admin,
        name,
        host_port,
    })
}

impl Database {
    /// The URL of this database reached through `host_port` instead (a proxy).
    pub fn url_via(&self, host_port: &str) -> String {
        self.url.replacen(&self.host_port, host_port, 1)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
