//! keyroll's certificate authority (SPEC §9): workload certificates issued by keyroll's own CA and
//! checked with reasons. Pure: keys, serials and `now` are given by the caller; no IO, no clock.
//! (Generating a leaf's key pair with [`KeySource::Generate`] is the one place that draws from the
//! operating system's RNG, inside aws-lc-rs; a CSR keeps the key with the workload.)
//!
//! Modules, in the order data flows: [`ids`] (trust domains, SPIFFE ids, serials, fingerprints),
//! [`authority`] (roots and intermediates, the [`Signer`]), [`issue`] (workload certificates),
//! [`crl`] (revocation lists), [`csr`] (a workload's key pair and request), [`pem`], [`inspect`] (what a certificate says), [`trust`]
//! (verification with a reason code), [`verifier`] (the rustls integration), [`tls`] (the one
//! crypto provider).

pub mod authority;
pub mod crl;
pub mod csr;
pub mod error;
pub mod ids;
pub mod inspect;
pub mod issue;
pub mod pem;
pub mod tls;
pub mod trust;
pub mod verifier;

mod time_conv;

pub use authority::{NewAuthority, SecretDer, Signer, new_intermediate, new_root};
pub use crl::{RevocationReason, RevokedEntry, crl};
pub use csr::{CsrKeyPair, new_csr};
pub use error::CaError;
pub use ids::{AnchorId, Fingerprint, Serial, SpiffeId, TrustDomain};
pub use inspect::{CertInfo, inspect};
pub use issue::{
    DEFAULT_LEAF_LIFETIME, IssuedLeaf, KeySource, LeafRequest, MIN_LEAF_LIFETIME, issue_leaf,
};
pub use pem::{parse_pem_certs, parse_pem_crls, parse_pem_private_key, pem};
pub use trust::{
    CertCode, CertDecision, IdentityPolicy, TrustStore, Usage, verify, verify_pem_chain,
};
pub use verifier::{
    DecisionSink, ReasonedClientVerifier, SharedTrust, client_config, server_config,
};

/// The types servers share across threads must stay `Send + Sync`.
#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Signer>();
    check::<TrustStore>();
    check::<ReasonedClientVerifier>();
}
