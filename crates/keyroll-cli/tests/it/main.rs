//! End-to-end tests of the `keyroll` binary: a real server process on a loopback port, the real
//! CLI, real HTTP, real nginx.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod admin_semantics;
mod agent;
mod agent_certs;
mod agent_chaos;
mod audit;
mod bad_input;
mod ca;
mod ca_rotation;
mod ci_examples;
mod cli_errors;
mod cluster;
mod dashboard;
mod dashboard_browser;
mod delivery_e2e;
mod environment_and_reasons;
mod forward_auth;
mod harness;
mod incident;
mod mtls;
mod mtls_ca;
mod nginx;
mod nginx_mtls;
mod nodes;
mod observe;
mod pg;
mod policy;
mod policy_webhooks;
mod proxy;
mod rotate_due;
mod run;
mod scan;
mod self_service;
mod slow_clients;
mod stalled_plan;
mod store_faults;
mod tokens;
mod usage;
mod walkthrough;
mod webhooks;
mod webhooks_tls;
