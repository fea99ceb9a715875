//! keyroll's verifier: the in-memory index of every key version ([`index`]) and the hot path
//! that parses a presented key, looks it up and explains the decision ([`verify`]).
//!
//! Invariant: no async runtime, no database, no HTTP in this crate's dependencies. The server's
//! forward-auth and `/v1/verify`, and later the mTLS verifier and an embedded verifier inside a
//! Rust service, all decide through this one crate, so they cannot disagree.

pub mod index;
pub mod verify;

pub use index::{ConsumerEntry, Index, Lookup, Query, Recording, Secret};
pub use verify::{Verification, verify};
