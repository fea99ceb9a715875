//! Certificate revocation lists: one per issuer, signed by it, listing revoked serials with a
//! reason (SPEC §9).

use std::fmt;
use std::str::FromStr;

use keyroll_core::Timestamp;

use crate::{CaError, Serial, Signer};

/// Why a certificate was revoked (RFC 5280 CRLReason, the subset keyroll offers). Text form is
/// kebab-case (`key-compromise`), the form the CLI and HTTP API use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The private key leaked or may have.
    KeyCompromise,
    /// The issuing CA's key leaked or may have.
    CaCompromise,
    /// The workload's identity or owner changed.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// The workload is gone.
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, in RFC 5280 order.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    /// Parses the kebab-case name.
    pub fn parse(input: &str) -> Result<Self, CaError> {
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == input)
            .ok_or_else(|| CaError::InvalidReason(input.chars().take(80).collect()))
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        RevocationReason::parse(s)
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial.
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: Timestamp,
    /// Why.
    pub reason: RevocationReason,
}

/// A CRL (DER) signed by `issuer`, CRL number `number`, valid from `this_update` to `next_update`.
pub fn crl(
    issuer: &Signer,
    number: u64,
    this_update: Timestamp,
    next_update: Timestamp,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>, CaError> {
    let _ = (issuer, number, this_update, next_update, revoked);
    todo!()
}
