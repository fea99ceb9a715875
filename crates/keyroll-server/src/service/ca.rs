//! The CA's changes on the one write path: crypto from `keyroll-ca`, state in the store, the
//! private keys sealed under the master key (associated data: the authority's id, so a sealed
//! key moved to another row does not open), audit entries and events in the same transaction,
//! and the trust store rebuilt before the answer. Serials and ids come from the server's
//! `Randomness`, time from its clock.
//!
//! Every change has the same shape: read the CA state → compute with `keyroll-ca` (and
//! `keyroll_core::ca_timeline`) → one `Store::write_ca` (guarded by the bundle version when the
//! change depends on it) → `CaRuntime::install` when the bundle changed. A leaf's private key
//! (generated here when no CSR was given) is only ever in the answer to its caller: never in a
//! log line, an audit detail, an event or the store.

use std::time::Duration;

use keyroll_ca::{NewAuthority, SecretDer, Serial, Signer, TrustDomain};
use keyroll_core::Timestamp;
use keyroll_store::{
    AuthorityKind, AuthorityRecord, AuthorityState, CaWrite, CrlRecord, EventRecord,
};
use serde_json::json;

use super::ServiceError;
use super::audit::Actor;
use crate::state::AppState;

/// A root's lifetime unless `ca init` says otherwise.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// An intermediate's lifetime unless `ca init` says otherwise.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a CRL is valid; it is refreshed at half of it.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The removal gate's quiet period unless a rotation says otherwise.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(24 * 3600);

/// `ca init`.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// The root's lifetime (default [`DEFAULT_ROOT_TTL`]).
    pub root_ttl: Option<Duration>,
    /// The intermediate's lifetime (default [`DEFAULT_INTERMEDIATE_TTL`]).
    pub intermediate_ttl: Option<Duration>,
}

/// What `ca init` made.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The root's id.
    pub root: String,
    /// The intermediate's id.
    pub intermediate: String,
    /// The bundle version after it.
    pub bundle_version: u64,
    /// The root's serial and notAfter.
    pub root_cert: (Serial, Timestamp),
    /// The intermediate's serial and notAfter.
    pub intermediate_cert: (Serial, Timestamp),
}

fn ca_error(e: keyroll_ca::CaError) -> ServiceError {
    ServiceError::Invalid(e.to_string())
}

fn new_serial(state: &AppState) -> Result<Serial, ServiceError> {
    let mut bytes = [0u8; 16];
    state
        .randomness
        .fill(&mut bytes)
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    Ok(Serial::from_random(bytes))
}

/// The stored form of a new authority: its key sealed under the master key with the id as
/// associated data.
fn record(
    state: &AppState,
    id: &str,
    kind: AuthorityKind,
    parent: Option<&str>,
    td: &TrustDomain,
    made: &NewAuthority,
    now: Timestamp,
) -> Result<AuthorityRecord, ServiceError> {
    let sealed_key = state
        .master_key
        .seal(id.as_bytes(), made.key_pkcs8_der.as_bytes())
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))?;
    Ok(AuthorityRecord {
        id: id.to_owned(),
        kind,
        generation: 1,
        parent_id: parent.map(str::to_owned),
        trust_domain: td.to_string(),
        subject: made.subject.clone(),
        cert_der: made.cert_der.clone(),
        sealed_key,
        serial: made.serial.to_string(),
        fingerprint: keyroll_ca::Fingerprint::of(&made.cert_der).to_string(),
        not_before: made.not_before,
        not_after: made.not_after,
        enters_bundle_at: now,
        signs_from: now,
        idle: DEFAULT_IDLE,
        entered_version: Some(1),
        removed_at: None,
        state: AuthorityState::Active,
        created_at: now,
    })
}

/// The signer of a stored authority (its sealed key opened under the master key).
pub fn signer(state: &AppState, a: &AuthorityRecord) -> Result<Signer, ServiceError> {
    let key = state
        .master_key
        .open(a.id.as_bytes(), &a.sealed_key)
        .map_err(|e| ServiceError::Invalid(format!("authority {}: {e}", a.id)))?;
    Signer::from_parts(&a.cert_der, &SecretDer::new(key)).map_err(ca_error)
}

/// Refuses a master key that does not open the stored CA's private keys (every authority still
/// in use): a server with a CA must be able to sign, and finding out at the first issue would
/// be too late. One line naming the authority and where the key comes from.
pub async fn check_sealed_keys(state: &AppState) -> Result<(), ServiceError> {
    let ca = state.store.ca_state().await?;
    for a in ca
        .authorities
        .iter()
        .filter(|a| a.state != AuthorityState::Removed)
    {
        if state
            .master_key
            .open(a.id.as_bytes(), &a.sealed_key)
            .is_err()
        {
            return Err(ServiceError::Invalid(format!(
                "the private key of CA {} ({}) does not open under this server's master key: start with the key the CA was made under (KEYROLL_MASTER_KEY, ca.master_key_file or DATA_DIR/master.key)",
                a.id, a.subject
            )));
        }
    }
    Ok(())
}

/// `ca init`: a root and an intermediate (ECDSA P-256, random 16-byte serials), an empty CRL
/// for each, in one transaction guarded on the empty bundle (`AlreadyExists` when a CA
/// exists, also when two inits race).
pub async fn init(
    state: &AppState,
    actor: &Actor,
    req: InitRequest,
) -> Result<Initialized, ServiceError> {
    let current = state.store.ca_state().await?;
    if !current.authorities.is_empty() {
        return Err(ServiceError::AlreadyExists("a CA".to_owned()));
    }
    let now = state.clock.now();
    let td = &req.trust_domain;
    let root_ttl = req.root_ttl.unwrap_or(DEFAULT_ROOT_TTL);
    let int_ttl = req.intermediate_ttl.unwrap_or(DEFAULT_INTERMEDIATE_TTL);
    let root = keyroll_ca::new_root(td, 1, now, root_ttl, new_serial(state)?).map_err(ca_error)?;
    let root_signer = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).map_err(ca_error)?;
    let int = keyroll_ca::new_intermediate(&root_signer, td, 1, now, int_ttl, new_serial(state)?)
        .map_err(ca_error)?;
    let int_signer = Signer::from_parts(&int.cert_der, &int.key_pkcs8_der).map_err(ca_error)?;
    let root_id = super::webhooks::new_id(state, "ca_")?;
    let int_id = super::webhooks::new_id(state, "ca_")?;
    let authorities = [
        record(state, &root_id, AuthorityKind::Root, None, td, &root, now)?,
        record(
            state,
            &int_id,
            AuthorityKind::Intermediate,
            Some(&root_id),
            td,
            &int,
            now,
        )?,
    ];
    let next_update = now.saturating_add(CRL_VALIDITY);
    let crls = [
        CrlRecord {
            issuer_id: root_id.clone(),
            number: 1,
            this_update: now,
            next_update,
            der: keyroll_ca::crl(&root_signer, 1, now, next_update, &[]).map_err(ca_error)?,
        },
        CrlRecord {
            issuer_id: int_id.clone(),
            number: 1,
            this_update: now,
            next_update,
            der: keyroll_ca::crl(&int_signer, 1, now, next_update, &[]).map_err(ca_error)?,
        },
    ];
    let detail = json!({
        "trust_domain": td.to_string(),
        "root": { "id": root_id, "serial": root.serial.to_string(), "not_after": keyroll_core::rfc3339(root.not_after) },
        "intermediate": { "id": int_id, "serial": int.serial.to_string(), "not_after": keyroll_core::rfc3339(int.not_after) },
    });
    let audit = [actor.audit(now, "ca.initialized", format!("ca {td}"), &detail)];
    let events = [EventRecord {
        seq: 0,
        at: now,
        kind: "ca.initialized".to_owned(),
        consumer: String::new(),
        version: None,
        detail: detail.to_string(),
    }];
    let commit = state
        .store
        .write_ca(CaWrite {
            expected_bundle_version: Some(current.bundle_version),
            bump_bundle: true,
            authorities: &authorities,
            crls: &crls,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await
        .map_err(|e| match e {
            keyroll_store::StoreError::Conflict(_) => {
                ServiceError::AlreadyExists("a CA".to_owned())
            }
            e => ServiceError::Store(e),
        })?;
    if let Some(seq) = commit.change_seq {
        state.cluster.note_local(seq);
    }
    state.reload_ca().await?;
    state.webhook_wake.notify_one();
    tracing::info!(event = "ca.initialized", trust_domain = %td, root = %root_id, intermediate = %int_id, "CA initialized for {td}: root {root_id}, intermediate {int_id}");
    Ok(Initialized {
        root: root_id,
        intermediate: int_id,
        bundle_version: commit.bundle_version,
        root_cert: (root.serial, root.not_after),
        intermediate_cert: (int.serial, int.not_after),
    })
}

/// Why a CA request was refused, beyond the service's common errors.
#[derive(Debug, thiserror::Error)]
pub enum CaServiceError {
    /// There is no CA yet.
    #[error("there is no CA yet: run `keyroll ca init --trust-domain DOMAIN` first")]
    NoCa,
    /// A field of the request is wrong; the message names it.
    #[error("{field}: {message}")]
    BadInput {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// What the request names does not exist (an environment, a certificate, an issuer).
    #[error("{0}")]
    NotFound(String),
    /// The identity was revoked (`keyroll cert revoke ENV/SERVICE`): it may not renew itself.
    #[error("{0}")]
    IdentityRevoked(String),
    /// A client certificate that this CA did not issue, or one no longer live.
    #[error("{0}")]
    CertificateRefused(String),
    /// A common service error.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<keyroll_store::StoreError> for CaServiceError {
    fn from(e: keyroll_store::StoreError) -> Self {
        CaServiceError::Service(ServiceError::Store(e))
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> CaServiceError {
    CaServiceError::BadInput {
        field,
        message: message.into(),
    }
}

/// A PEM private key. `Debug` does not print it; it is only ever in the 201 body.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    /// The PEM text, for the answer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What to issue (`POST /v1/certs`; `POST /v1/self/certificate` through [`issue_self`]).
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// `ENV/SERVICE`; the environment must exist.
    pub identity: keyroll_core::ConsumerRef,
    /// Lifetime (default [`keyroll_ca::DEFAULT_LEAF_LIFETIME`]).
    pub ttl: Option<Duration>,
    /// Add the serverAuth EKU.
    pub server_auth: bool,
    /// Extra DNS SANs (only with `server_auth`).
    pub dns: Vec<String>,
    /// Extra IP SANs (only with `server_auth`).
    pub ip: Vec<std::net::IpAddr>,
    /// A PKCS#10 request (PEM or DER); `None`: a key is generated and returned once.
    pub csr: Option<Vec<u8>>,
}

/// An issued certificate with what its holder needs.
#[derive(Debug, Clone)]
pub struct Issued {
    /// As stored.
    pub record: keyroll_store::IssuedCertRecord,
    /// `spiffe://TD/ENV/SERVICE`.
    pub spiffe_id: String,
    /// The leaf then the intermediate.
    pub cert_pem: String,
    /// The generated key (PKCS#8 PEM), only without a CSR.
    pub key_pem: Option<SecretPem>,
    /// The roots in the bundle.
    pub ca_pem: String,
    /// The bundle version of `ca_pem`.
    pub bundle_version: u64,
}

/// The authority that signs new certificates at `now`: the newest active intermediate whose
/// `signs_from` has come and that is still valid.
pub fn signing_intermediate(
    ca: &keyroll_store::CaState,
    now: Timestamp,
) -> Option<&AuthorityRecord> {
    ca.authorities
        .iter()
        .filter(|a| {
            a.kind == AuthorityKind::Intermediate
                && a.state == AuthorityState::Active
                && a.removed_at.is_none()
                && a.signs_from <= now
                && a.not_after > now
        })
        .max_by_key(|a| (a.generation, a.signs_from))
}

/// The PEM of every root in the bundle at `now`, oldest first.
fn roots_pem(ca: &keyroll_store::CaState, now: Timestamp) -> String {
    ca.authorities
        .iter()
        .filter(|a| a.kind == AuthorityKind::Root && crate::ca::in_bundle(a, now))
        .map(|a| keyroll_ca::pem("CERTIFICATE", &a.cert_der))
        .collect()
}

fn leaf_error(e: keyroll_ca::CaError) -> CaServiceError {
    use keyroll_ca::CaError as E;
    match e {
        E::LifetimeTooShort { .. } | E::InvalidLifetime(..) => bad("ttl", e.to_string()),
        E::CsrMalformed(_) | E::CsrBadSignature | E::CsrUnsupportedKey(_) => {
            bad("csr", e.to_string())
        }
        E::SansWithoutServerAuth | E::InvalidDnsName(_) => bad("dns", e.to_string()),
        e => CaServiceError::Service(ca_error(e)),
    }
}

/// Issues a workload certificate for `req.identity`, asked for by `actor` (its id is the
/// certificate's `requested_by`); `supersedes` is the certificate a renewal authenticated with.
/// One write: the certificate's record, its audit entry and its `cert.issued` event.
pub async fn issue(
    state: &AppState,
    actor: &Actor,
    req: IssueRequest,
    supersedes: Option<&str>,
) -> Result<Issued, CaServiceError> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    if ca.authorities.is_empty() {
        return Err(CaServiceError::NoCa);
    }
    let env = &req.identity.environment;
    if state.store.get_environment(env).await?.is_none() {
        return Err(CaServiceError::NotFound(format!(
            "environment {env} does not exist; create it with `keyroll env create {env}`"
        )));
    }
    let int = signing_intermediate(&ca, now).ok_or_else(|| {
        CaServiceError::Service(ServiceError::Invalid(
            "no intermediate CA can sign now (all expired or not yet signing); see `keyroll ca status`"
                .to_owned(),
        ))
    })?;
    let td = TrustDomain::parse(&int.trust_domain).map_err(ca_error)?;
    let identity = keyroll_ca::SpiffeId::from_parts(
        &td,
        req.identity.environment.as_str(),
        req.identity.name.as_str(),
    )
    .map_err(|e| bad("identity", e.to_string()))?;
    let issuer = signer(state, int)?;
    let leaf_req = keyroll_ca::LeafRequest {
        identity: identity.clone(),
        lifetime: req.ttl.unwrap_or(keyroll_ca::DEFAULT_LEAF_LIFETIME),
        server_auth: req.server_auth,
        dns_names: req.dns.clone(),
        ip_addresses: req.ip.clone(),
        serial: new_serial(state)?,
    };
    let key = match &req.csr {
        Some(csr) => keyroll_ca::KeySource::Csr(csr),
        None => keyroll_ca::KeySource::Generate,
    };
    let leaf = keyroll_ca::issue_leaf(&issuer, &leaf_req, key, now).map_err(leaf_error)?;
    let record = keyroll_store::IssuedCertRecord {
        serial: leaf.serial.to_string(),
        identity: req.identity.clone(),
        issuer_id: int.id.clone(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        issued_at: now,
        fingerprint: leaf.fingerprint.to_string(),
        server_auth: req.server_auth,
        requested_by: actor.id.clone(),
        superseded_by: None,
        revoked_at: None,
        revocation_reason: None,
    };
    // What is audited: never the key, nor the CSR's bytes.
    let detail = json!({
        "serial": record.serial,
        "identity": record.identity.to_string(),
        "spiffe_id": identity.to_string(),
        "issuer_id": record.issuer_id,
        "not_before": keyroll_core::rfc3339(record.not_before),
        "not_after": keyroll_core::rfc3339(record.not_after),
        "fingerprint": record.fingerprint,
        "server_auth": record.server_auth,
        "dns": req.dns,
        "ip": req.ip.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "key": if req.csr.is_some() { "csr" } else { "generated" },
        "supersedes": supersedes,
        "requested_by": record.requested_by,
    });
    let audit = [actor.audit(
        now,
        "cert.issued",
        format!("cert {}", record.serial),
        &detail,
    )];
    let events = [EventRecord {
        seq: 0,
        at: now,
        kind: "cert.issued".to_owned(),
        consumer: record.identity.to_string(),
        version: None,
        detail: detail.to_string(),
    }];
    state
        .store
        .write_ca(CaWrite {
            certificate: Some(&record),
            supersedes,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await?;
    state.webhook_wake.notify_one();
    tracing::info!(
        event = "cert.issued",
        serial = record.serial.as_str(),
        identity = %record.identity,
        issuer = record.issuer_id.as_str(),
        not_after = %keyroll_core::rfc3339(record.not_after),
        server_auth = record.server_auth,
        requested_by = record.requested_by.as_str(),
        request_id = actor.request_id.as_str(),
        "issued certificate {} for {}",
        record.serial,
        identity
    );
    let mut cert_pem = keyroll_ca::pem("CERTIFICATE", &leaf.cert_der);
    cert_pem.push_str(&keyroll_ca::pem("CERTIFICATE", &int.cert_der));
    let key_pem = leaf
        .key_pkcs8_der
        .as_ref()
        .map(|k| SecretPem(keyroll_ca::pem("PRIVATE KEY", k.as_bytes())));
    Ok(Issued {
        spiffe_id: identity.to_string(),
        cert_pem,
        key_pem,
        ca_pem: roots_pem(&ca, now),
        bundle_version: ca.bundle_version,
        record,
    })
}

/// How a workload proved who it is to `POST /v1/self/certificate`.
#[derive(Debug, Clone)]
pub enum SelfAuth {
    /// One of the consumer's own keys: the identity is the consumer.
    ConsumerKey(keyroll_core::ConsumerRef),
    /// A client certificate the listener verified: its SPIFFE id and serial.
    Certificate {
        /// The URI SAN.
        spiffe_id: String,
        /// The serial.
        serial: Serial,
    },
}

/// The half-life instant of a certificate: when its holder should renew it.
pub fn renew_after(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let half = not_after.duration_since(not_before) / 2;
    not_before.saturating_add(half)
}

/// `POST /v1/self/certificate`: a workload renews its own certificate from a CSR. Refused
/// (`IdentityRevoked`) once its identity was revoked; a client certificate must be one this CA
/// issued to that identity and still live (its renewal supersedes it).
pub async fn issue_self(
    state: &AppState,
    auth: &SelfAuth,
    request_id: String,
    remote_addr: Option<String>,
    csr: Vec<u8>,
    ttl: Option<Duration>,
    server_auth: bool,
) -> Result<Issued, CaServiceError> {
    let now = state.clock.now();
    let (identity, actor_id, supersedes) = match auth {
        SelfAuth::ConsumerKey(c) => (c.clone(), format!("agent:{c}"), None),
        SelfAuth::Certificate { spiffe_id, serial } => {
            let id = keyroll_ca::SpiffeId::parse(spiffe_id).map_err(|e| {
                CaServiceError::CertificateRefused(format!("the client certificate: {e}"))
            })?;
            match state.ca.trust_domain() {
                None => return Err(CaServiceError::NoCa),
                Some(td) if &td != id.trust_domain() => {
                    return Err(CaServiceError::CertificateRefused(format!(
                        "the client certificate's identity {spiffe_id} is not of this CA's trust domain {td}"
                    )));
                }
                Some(_) => {}
            }
            let serial = serial.to_string();
            let held = state.store.get_certificate(&serial).await?;
            let r = keyroll_core::ConsumerRef::parse(&id.path()).map_err(|e| {
                CaServiceError::CertificateRefused(format!("the client certificate: {e}"))
            })?;
            match held {
                Some(c) if c.identity == r && c.revoked_at.is_none() && c.not_after > now => {}
                Some(c) if c.revoked_at.is_some() => {
                    return Err(CaServiceError::CertificateRefused(format!(
                        "the client certificate {serial} was revoked; ask an operator for a new one (`keyroll cert issue {r}`)"
                    )));
                }
                _ => {
                    return Err(CaServiceError::CertificateRefused(format!(
                        "the client certificate {serial} ({spiffe_id}) was not issued by this CA to that identity, or expired"
                    )));
                }
            }
            (r, format!("cert:{serial}"), Some(serial))
        }
    };
    if let Some(rev) = state.store.identity_revocation(&identity).await? {
        return Err(CaServiceError::IdentityRevoked(format!(
            "the identity {identity} was revoked at {} ({}): it may no longer renew its certificate; an operator can issue one with `keyroll cert issue {identity}`",
            keyroll_core::rfc3339(rev.revoked_at),
            rev.reason
        )));
    }
    let actor = Actor {
        id: actor_id,
        request_id,
        remote_addr,
    };
    let req = IssueRequest {
        identity,
        ttl,
        server_auth,
        dns: Vec::new(),
        ip: Vec::new(),
        csr: Some(csr),
    };
    issue(state, &actor, req, supersedes.as_deref()).await
}

/// The trust bundle as served at `GET /v1/ca/bundle`.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its version.
    pub bundle_version: u64,
    /// The trust domain.
    pub trust_domain: String,
    /// Every root in the bundle (expired ones left out), PEM, oldest first.
    pub roots_pem: String,
    /// Every intermediate in the bundle, PEM.
    pub intermediates_pem: String,
    /// The current CRL of each issuer in the bundle: (issuer id, PEM).
    pub crls: Vec<(String, String)>,
}

/// The bundle at `now` from the store (`NoCa` before `ca init`).
pub async fn bundle(state: &AppState) -> Result<Bundle, CaServiceError> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    let in_bundle: Vec<&AuthorityRecord> = ca
        .authorities
        .iter()
        .filter(|a| crate::ca::in_bundle(a, now))
        .collect();
    let Some(newest) = in_bundle.last() else {
        return Err(CaServiceError::NoCa);
    };
    let pem_of = |kind: AuthorityKind| -> String {
        in_bundle
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| keyroll_ca::pem("CERTIFICATE", &a.cert_der))
            .collect()
    };
    let crls = ca
        .crls
        .iter()
        .filter(|c| in_bundle.iter().any(|a| a.id == c.issuer_id))
        .map(|c| (c.issuer_id.clone(), keyroll_ca::pem("X509 CRL", &c.der)))
        .collect();
    Ok(Bundle {
        bundle_version: ca.bundle_version,
        trust_domain: newest.trust_domain.clone(),
        roots_pem: pem_of(AuthorityKind::Root),
        intermediates_pem: pem_of(AuthorityKind::Intermediate),
        crls,
    })
}
