//! The rustls integration: a client-certificate verifier that gives every handshake a
//! [`CertDecision`] (rustls's own neither says why it rejected a peer nor checks the identity,
//! HOUSE.md), and the server/client config helpers built on the one crypto provider.
//!
//! With `mandatory = false` a client without a certificate completes the handshake; the server
//! application must then answer `cert_missing` itself (the verifier is never called for it).

use std::net::SocketAddr;
use std::sync::Arc;

use keyroll_core::Timestamp;
use parking_lot::RwLock;
use rustls::server::danger::ClientCertVerifier;

use crate::{CaError, CertDecision, IdentityPolicy, SecretDer, TrustStore};

/// Where every decision goes (log, metrics, handshake-adoption tracking), with the peer address
/// when the verifier was made for one connection ([`ReasonedClientVerifier::for_peer`]).
pub type DecisionSink = Arc<dyn Fn(&CertDecision, Option<SocketAddr>) + Send + Sync>;

/// A trust store that can be swapped while connections use it (CA rotation, CRL refresh): readers
/// clone the inner `Arc` and never hold the lock during a verification.
pub type SharedTrust = Arc<RwLock<Arc<TrustStore>>>;

/// A rustls [`ClientCertVerifier`] that verifies with [`crate::verify`] and reports every decision.
#[derive(Clone)]
pub struct ReasonedClientVerifier {
    pub(crate) trust: SharedTrust,
    pub(crate) policy: Arc<IdentityPolicy>,
    pub(crate) mandatory: bool,
    pub(crate) sink: DecisionSink,
    pub(crate) now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    pub(crate) peer: Option<SocketAddr>,
}

impl std::fmt::Debug for ReasonedClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReasonedClientVerifier")
            .field("policy", &self.policy)
            .field("mandatory", &self.mandatory)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ReasonedClientVerifier {
    /// A verifier over `trust` accepting identities allowed by `policy`; `now` is the clock
    /// (injected so tests can move it).
    pub fn new(
        trust: SharedTrust,
        policy: IdentityPolicy,
        mandatory: bool,
        sink: DecisionSink,
        now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    ) -> Self {
        ReasonedClientVerifier {
            trust,
            policy: Arc::new(policy),
            mandatory,
            sink,
            now,
            peer: None,
        }
    }

    /// A cheap per-connection copy that reports `peer` with its decisions.
    pub fn for_peer(&self, peer: SocketAddr) -> Arc<dyn ClientCertVerifier> {
        let _ = peer;
        todo!()
    }

    /// Swaps the trust store for every connection verified from now on.
    pub fn replace_trust(&self, trust: TrustStore) {
        *self.trust.write() = Arc::new(trust);
    }

    /// The current trust store.
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.read().clone()
    }
}

/// A rustls server config on the one provider, serving `cert_chain_der` (leaf first) with `key`
/// (PKCS#8), asking for client certificates through `verifier` when one is given.
pub fn server_config(
    cert_chain_der: Vec<Vec<u8>>,
    key: &SecretDer,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, CaError> {
    let _ = (cert_chain_der, key, verifier);
    todo!()
}

/// A rustls client config on the one provider that trusts the store's anchors for the server's
/// certificate (DNS name / IP checked by rustls), and presents `client_identity` (chain, key)
/// when given.
pub fn client_config(
    trust: &TrustStore,
    client_identity: Option<(Vec<Vec<u8>>, &SecretDer)>,
) -> Result<rustls::ClientConfig, CaError> {
    let _ = (trust, client_identity);
    todo!()
}
