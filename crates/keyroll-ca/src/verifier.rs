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
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::{
    CaError, CertCode, CertDecision, IdentityPolicy, SecretDer, TrustStore, Usage, tls, verify,
};

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
    /// The anchors' subjects as of this instance's creation (`for_peer` takes a fresh copy, so a
    /// rotated root is hinted from the next connection on).
    pub(crate) hints: Arc<Vec<DistinguishedName>>,
    pub(crate) provider: Arc<CryptoProvider>,
}

fn hints_of(trust: &TrustStore) -> Arc<Vec<DistinguishedName>> {
    Arc::new(
        trust
            .anchors
            .iter()
            // webpki keeps a subject's contents without the Name's outer SEQUENCE; the hint
            // on the wire is the whole Name (OpenSSL clients refuse the contents alone with
            // "parse_ca_names: wrong tag").
            .map(|a| DistinguishedName::in_sequence(a.ta.subject.as_ref()))
            .collect(),
    )
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
        let hints = hints_of(&trust.read());
        ReasonedClientVerifier {
            trust,
            policy: Arc::new(policy),
            mandatory,
            sink,
            now,
            peer: None,
            hints,
            provider: tls::provider(),
        }
    }

    /// A cheap per-connection copy that reports `peer` with its decisions.
    pub fn for_peer(&self, peer: SocketAddr) -> Arc<dyn ClientCertVerifier> {
        let mut v = self.clone();
        v.peer = Some(peer);
        v.hints = hints_of(&self.trust.read());
        Arc::new(v)
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
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Tls(e.to_string()))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain(cert_chain_der), private_key(key))
        .map_err(|e| CaError::Tls(e.to_string()))
}

fn chain(ders: Vec<Vec<u8>>) -> Vec<CertificateDer<'static>> {
    ders.into_iter().map(CertificateDer::from).collect()
}

fn private_key(key: &SecretDer) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.as_bytes().to_vec()))
}

/// A rustls client config on the one provider that trusts the store's anchors for the server's
/// certificate (DNS name / IP checked by rustls), and presents `client_identity` (chain, key)
/// when given.
pub fn client_config(
    trust: &TrustStore,
    client_identity: Option<(Vec<Vec<u8>>, &SecretDer)>,
) -> Result<rustls::ClientConfig, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    for a in &trust.anchors {
        roots.roots.push(a.ta.clone());
    }
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match client_identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(chain(certs), private_key(key))
            .map_err(|e| CaError::Tls(e.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The closest rustls error for a code, so the TLS alert is as right as it can be.
fn tls_error(code: CertCode) -> rustls::Error {
    rustls::Error::InvalidCertificate(match code {
        CertCode::CertExpired => CertificateError::Expired,
        CertCode::CertNotYetValid => CertificateError::NotValidYet,
        CertCode::CertUnknownIssuer => CertificateError::UnknownIssuer,
        CertCode::CertRevoked => CertificateError::Revoked,
        CertCode::CertRevocationUnknown => CertificateError::UnknownRevocationStatus,
        CertCode::CertBadSignature => CertificateError::BadSignature,
        CertCode::CertWrongUsage => CertificateError::InvalidPurpose,
        CertCode::CertMalformed => CertificateError::BadEncoding,
        CertCode::CertWrongIdentity | CertCode::CertMissing | CertCode::Valid => {
            CertificateError::ApplicationVerificationFailure
        }
    })
}

impl ClientCertVerifier for ReasonedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _rustls_now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The injected clock, not rustls's, so that every decision is made at one testable `now`.
        let now = (self.now)();
        let trust = self.trust.read().clone();
        let ints: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        let decision = verify(
            &trust,
            &self.policy,
            end_entity.as_ref(),
            &ints,
            Usage::Client,
            now,
        );
        (self.sink)(&decision, self.peer);
        if decision.allowed() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(tls_error(decision.code))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
