//! Certificate revocation lists: one per issuer, signed by it, listing revoked serials with a
//! reason (SPEC §9).

use std::fmt;
use std::str::FromStr;

use keyroll_core::{Timestamp, rfc3339};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use crate::time_conv::{to_datetime, truncate};
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
    let (this_update, next_update) = (truncate(this_update), truncate(next_update));
    if next_update <= this_update {
        return Err(CaError::CrlWindow {
            this_update: rfc3339(this_update),
            next_update: rfc3339(next_update),
        });
    }
    let revoked_certs = revoked
        .iter()
        .map(|e| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(e.serial.as_bytes()),
                revocation_time: to_datetime(e.revoked_at)?,
                reason_code: Some(e.reason.rcgen()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let params = CertificateRevocationListParams {
        this_update: to_datetime(this_update)?,
        next_update: to_datetime(next_update)?,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let list = params
        .signed_by(&issuer.issuer)
        .map_err(|e| CaError::Generate {
            what: "CRL",
            reason: e.to_string(),
        })?;
    Ok(list.der().to_vec())
}

impl RevocationReason {
    fn rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}
