//! Identifiers of the CA: trust domains, SPIFFE ids, certificate serials, fingerprints and the
//! trust anchor a chain ended at. Parsed once at the edge, trusted after.

use std::fmt;
use std::str::FromStr;

use keyroll_core::{ConsumerName, Environment};
use sha2::{Digest, Sha256};

use crate::CaError;

/// Keeps error messages short and printable whatever was sent.
fn shown(input: &str) -> String {
    input.chars().take(80).collect()
}

/// A SPIFFE trust domain (`example.org`): 1 to 255 characters of `[a-z0-9.-]`, no leading,
/// trailing or double dot. Lowercase only, so that two spellings never name two domains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain.
    pub fn parse(input: &str) -> Result<Self, CaError> {
        let b = input.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 255
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
            && !input.starts_with('.')
            && !input.ends_with('.')
            && !input.contains("..");
        if ok {
            Ok(TrustDomain(input.to_owned()))
        } else {
            Err(CaError::InvalidTrustDomain(shown(input)))
        }
    }

    /// The domain.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        TrustDomain::parse(s)
    }
}

/// A workload identity `spiffe://TRUST_DOMAIN/ENV/SERVICE` (SPEC §9): the environment follows
/// keyroll's environment grammar and the service its consumer-name grammar, so that a
/// certificate's identity is always a consumer reference `ENV/SERVICE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    environment: String,
    service: String,
}

impl SpiffeId {
    /// Parses `spiffe://example.org/prod/billing`.
    pub fn parse(input: &str) -> Result<Self, CaError> {
        let bad = |reason: &str| CaError::InvalidSpiffeId {
            input: shown(input),
            reason: reason.to_owned(),
        };
        let rest = input
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no path ENV/SERVICE"))?;
        let trust_domain = TrustDomain::parse(td).map_err(|e| bad(&e.to_string()))?;
        let (env, svc) = path
            .split_once('/')
            .ok_or_else(|| bad("its path is not ENV/SERVICE"))?;
        SpiffeId::from_parts(&trust_domain, env, svc).map_err(|e| bad(&e.to_string()))
    }

    /// The id of service `svc` in environment `env` of trust domain `td`.
    pub fn from_parts(td: &TrustDomain, env: &str, svc: &str) -> Result<Self, CaError> {
        let environment = Environment::parse(env)?;
        let service = ConsumerName::parse(svc)?;
        Ok(SpiffeId {
            trust_domain: td.clone(),
            environment: environment.as_str().to_owned(),
            service: service.as_str().to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The environment (`prod`).
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The service (`billing`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// `ENV/SERVICE`: the consumer reference this identity stands for.
    pub fn path(&self) -> String {
        format!("{}/{}", self.environment, self.service)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain, self.environment, self.service
        )
    }
}

impl FromStr for SpiffeId {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        SpiffeId::parse(s)
    }
}

/// A certificate serial: 16 bytes, a positive DER INTEGER, never zero. Shown as 32 lowercase hex
/// characters (what `openssl x509 -serial` prints, lowercased).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// A serial from 16 random bytes (the caller's CSPRNG). The top bit is cleared so the INTEGER
    /// is positive without a leading zero byte, and the next bit is set so it is never zero and
    /// always encodes as exactly 16 bytes (126 random bits remain, above CA/B's 64).
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[0] = (bytes[0] & 0x7f) | 0x40;
        Serial(bytes)
    }

    /// The serial of a certificate or CRL entry, from the INTEGER's big-endian bytes; `None`
    /// when it is zero, negative-looking or longer than 16 significant bytes (not one keyroll made).
    pub fn from_der_integer(bytes: &[u8]) -> Option<Self> {
        let start = bytes.iter().position(|b| *b != 0)?;
        let significant = &bytes[start..];
        if significant.len() > 16 {
            return None;
        }
        let mut out = [0u8; 16];
        out[16 - significant.len()..].copy_from_slice(significant);
        Some(Serial(out))
    }

    /// The 16 bytes, big-endian.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses 32 hex characters (either case).
    pub fn parse(input: &str) -> Result<Self, CaError> {
        let mut out = [0u8; 16];
        if input.len() != 32 || hex::decode_to_slice(input, &mut out).is_err() || out == [0; 16] {
            return Err(CaError::InvalidSerial(shown(input)));
        }
        Ok(Serial(out))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        Serial::parse(s)
    }
}

/// SHA-256 of a certificate's DER: shown `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of DER bytes.
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:<64 hex>`.
    pub fn parse(input: &str) -> Result<Self, CaError> {
        let mut out = [0u8; 32];
        match input.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && hex::decode_to_slice(h, &mut out).is_ok() => {
                Ok(Fingerprint(out))
            }
            _ => Err(CaError::InvalidFingerprint(shown(input))),
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        Fingerprint::parse(s)
    }
}

/// Which trust anchor (root certificate) a chain ended at: the root's fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnchorId(pub Fingerprint);

impl AnchorId {
    /// The anchor of a root certificate's DER.
    pub fn of(root_der: &[u8]) -> Self {
        AnchorId(Fingerprint::of(root_der))
    }

    /// The root's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0
    }
}

impl fmt::Display for AnchorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for AnchorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AnchorId({})", self.0)
    }
}

#[cfg(test)]
mod tests;
