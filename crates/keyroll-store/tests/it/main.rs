//! keyroll-store's integration tests: one conformance suite that every backend must pass, and
//! each backend's own edge cases (opening bad paths, damaged rows, scale).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod sqlite;
