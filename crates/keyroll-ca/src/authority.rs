//! Certificate authorities: making a root and an intermediate (ECDSA P-256, SPEC §9), and the
//! [`Signer`] an authority signs with once its certificate and key are loaded back.

use std::fmt;
use std::time::Duration;

use keyroll_core::Timestamp;

use crate::{CaError, Fingerprint, Serial, TrustDomain};

/// Private key bytes (PKCS#8 DER). Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDer(Vec<u8>);

impl SecretDer {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretDer(bytes)
    }

    /// The key bytes, for encryption at rest or a key file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A freshly made authority: its certificate, its key, and what the store keeps about it.
#[derive(Debug, Clone)]
pub struct NewAuthority {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER (to be encrypted at rest by the caller).
    pub key_pkcs8_der: SecretDer,
    /// The certificate's serial.
    pub serial: Serial,
    /// notBefore as written in the certificate (whole seconds).
    pub not_before: Timestamp,
    /// notAfter as written in the certificate (whole seconds).
    pub not_after: Timestamp,
    /// The subject CN, e.g. `keyroll root CA g3 (example.org)`.
    pub subject: String,
}

/// An authority that can sign: a CA certificate with its private key.
pub struct Signer {
    pub(crate) cert_der: Vec<u8>,
    pub(crate) key: rcgen::KeyPair,
    pub(crate) issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) not_before: Timestamp,
    pub(crate) not_after: Timestamp,
    pub(crate) subject: String,
    pub(crate) fingerprint: Fingerprint,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// Loads an authority: its certificate (must be a CA allowed to sign certificates) and its
    /// PKCS#8 key (must match the certificate's public key).
    pub fn from_parts(cert_der: &[u8], key_pkcs8_der: &SecretDer) -> Result<Signer, CaError> {
        let _ = (cert_der, key_pkcs8_der);
        todo!()
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// notBefore.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// notAfter.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// The subject CN.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// SHA-256 of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A self-signed root CA for `td`, generation `generation` (shown in its name so that rotated
/// roots are told apart), valid from `now` for `lifetime`.
pub fn new_root(
    td: &TrustDomain,
    generation: u32,
    now: Timestamp,
    lifetime: Duration,
    serial: Serial,
) -> Result<NewAuthority, CaError> {
    let _ = (td, generation, now, lifetime, serial);
    todo!()
}

/// An intermediate CA signed by `root` (pathlen 0), valid from `now` for `lifetime` but never past
/// the root's notAfter.
pub fn new_intermediate(
    root: &Signer,
    td: &TrustDomain,
    generation: u32,
    now: Timestamp,
    lifetime: Duration,
    serial: Serial,
) -> Result<NewAuthority, CaError> {
    let _ = (root, td, generation, now, lifetime, serial);
    todo!()
}
