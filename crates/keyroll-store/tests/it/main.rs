//! keyroll-store's integration tests: one conformance suite that every backend must pass, and
//! each backend's own edge cases (opening bad paths or URLs, damaged rows, scale, several
//! nodes on one PostgreSQL database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod postgres;
mod sqlite;
mod test_postgres;
