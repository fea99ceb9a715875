//! End-to-end tests of the `keyroll` binary: a real server process on a loopback port, the real
//! CLI, real HTTP, real nginx.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod bad_input;
mod cli_errors;
mod forward_auth;
mod harness;
mod incident;
mod nginx;
mod observe;
mod scan;
mod usage;
mod walkthrough;
