//! End-to-end tests of the `keyroll` binary: a real server process on a loopback port, the real
//! CLI, real HTTP, real nginx.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod bad_input;
mod forward_auth;
mod harness;
mod incident;
mod nginx;
mod observe;
mod scan;
mod store_faults;
mod usage;
mod walkthrough;
