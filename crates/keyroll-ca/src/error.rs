//! The one error type of the CA library. Every message names what is wrong and never carries key
//! material (a private key's bytes are only ever held in [`crate::SecretDer`]).

use std::time::Duration;

use keyroll_core::{NameError, format_duration};

/// Why a CA operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// A trust domain that is not a lowercase DNS-like name.
    #[error(
        "invalid trust domain {0:?}: expected 1 to 255 characters of [a-z0-9.-], no leading, trailing or double dot"
    )]
    InvalidTrustDomain(String),
    /// A SPIFFE id that is not `spiffe://TRUST_DOMAIN/ENV/SERVICE`.
    #[error("invalid SPIFFE id {input:?}: {reason}")]
    InvalidSpiffeId {
        /// The text given (shortened).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment or service name that breaks keyroll's name grammar.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A serial that is not 32 hex characters.
    #[error("invalid serial {0:?}: expected 32 hex characters (16 bytes), not all zero")]
    InvalidSerial(String),
    /// A fingerprint that is not `sha256:` and 64 hex characters.
    #[error("invalid fingerprint {0:?}: expected sha256: followed by 64 hex characters")]
    InvalidFingerprint(String),
    /// A revocation reason that is not one of the names keyroll knows.
    #[error(
        "invalid revocation reason {0:?}: expected one of unspecified, key-compromise, ca-compromise, affiliation-changed, superseded, cessation-of-operation"
    )]
    InvalidReason(String),
    /// An identity pattern that is not `ENV/SERVICE` with `*` for any part.
    #[error("invalid identity pattern {0:?}: expected ENV/SERVICE where either part may be *")]
    InvalidPattern(String),
    /// A certificate lifetime below the minimum.
    #[error("lifetime {} is below the minimum of {}", format_duration(*.asked), format_duration(*.minimum))]
    LifetimeTooShort {
        /// The lifetime asked for.
        asked: Duration,
        /// [`crate::MIN_LEAF_LIFETIME`].
        minimum: Duration,
    },
    /// A lifetime of zero or one too long to represent.
    #[error("invalid lifetime {0}: {1}")]
    InvalidLifetime(String, &'static str),
    /// The issuing authority is not valid at `now` (expired or not yet valid).
    #[error(
        "the issuer {subject:?} is not valid at {now}: its validity is {not_before} to {not_after}"
    )]
    IssuerNotValid {
        /// The issuer's subject.
        subject: String,
        /// `now`, RFC 3339.
        now: String,
        /// The issuer's notBefore, RFC 3339.
        not_before: String,
        /// The issuer's notAfter, RFC 3339.
        not_after: String,
    },
    /// DNS names or IP addresses asked for on a certificate without serverAuth.
    #[error("DNS names and IP addresses are only allowed on a certificate with server_auth")]
    SansWithoutServerAuth,
    /// A DNS name that cannot go into a certificate.
    #[error("invalid DNS name {0:?} for a certificate")]
    InvalidDnsName(String),
    /// A CSR that does not parse (neither PEM nor DER PKCS#10).
    #[error("not a certificate signing request: {0}")]
    CsrMalformed(String),
    /// A CSR whose self-signature does not verify.
    #[error("the CSR's signature does not verify")]
    CsrBadSignature,
    /// A CSR with a key type keyroll does not sign.
    #[error("the CSR's key is not accepted: {0} (accepted: ECDSA P-256, ECDSA P-384, Ed25519)")]
    CsrUnsupportedKey(String),
    /// Text that is not the PEM asked for.
    #[error("not a PEM {label}: {reason}")]
    Pem {
        /// What was expected ("certificate", "private key", "CRL").
        label: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Bytes that are not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    CertificateMalformed(String),
    /// A certificate that cannot act as an issuer (not a CA, no keyCertSign).
    #[error("the certificate {subject:?} cannot sign: {reason}")]
    NotAnIssuer {
        /// Its subject.
        subject: String,
        /// Why not.
        reason: String,
    },
    /// A private key that does not parse, or that does not belong to its certificate.
    #[error("unusable private key: {0}")]
    Key(String),
    /// Bytes that are not a DER X.509 CRL.
    #[error("not an X.509 CRL: {0}")]
    CrlMalformed(String),
    /// A CRL whose window is inverted.
    #[error("invalid CRL window: next_update {next_update} is not after this_update {this_update}")]
    CrlWindow {
        /// RFC 3339.
        this_update: String,
        /// RFC 3339.
        next_update: String,
    },
    /// Certificate or CRL generation failed inside the encoder.
    #[error("could not generate the {what}: {reason}")]
    Generate {
        /// "certificate", "CRL", "key pair".
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// A TLS configuration that rustls refused.
    #[error("TLS configuration: {0}")]
    Tls(String),
}
