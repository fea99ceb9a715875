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
        E::InvalidDnsName(_) => bad("dns", e.to_string()),
        // Two fields together (dns or ip without server_auth): 422, like the service's other
        // rules across fields.
        E::SansWithoutServerAuth => {
            CaServiceError::Service(ServiceError::Invalid(format!("dns, ip: {e}")))
        }
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
    let edge = if actor.id.starts_with("agent:") {
        "self_key"
    } else if actor.id.starts_with("cert:") {
        "self_cert"
    } else {
        "admin"
    };
    state.observer.cert_issued(edge);
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

/// How many times a bundle-guarded change is recomputed after losing a race.
const CA_ATTEMPTS: usize = 5;

/// Every certificate matching `query` (all pages).
async fn all_certificates(
    state: &AppState,
    mut query: keyroll_store::CertQuery,
) -> Result<Vec<keyroll_store::IssuedCertRecord>, CaServiceError> {
    query.limit = 1000;
    let mut out = Vec::new();
    loop {
        let page = state.store.list_certificates(&query).await?;
        let full = page.len() == query.limit as usize;
        query.after = page.last().map(|c| c.serial.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The next CRL of `issuer` at `now`: every certificate it issued that is revoked (those in
/// the store, and `adding`), number one above its current CRL's.
async fn next_crl(
    state: &AppState,
    ca: &keyroll_store::CaState,
    issuer: &AuthorityRecord,
    adding: &[(String, Timestamp, keyroll_ca::RevocationReason)],
    now: Timestamp,
) -> Result<CrlRecord, CaServiceError> {
    let revoked = all_certificates(
        state,
        keyroll_store::CertQuery {
            identity: None,
            issuer: Some(issuer.id.clone()),
            state: Some(keyroll_store::CertFilter::Revoked),
            at: now,
            after: None,
            limit: 1000,
        },
    )
    .await?;
    let mut entries: Vec<keyroll_ca::RevokedEntry> = Vec::new();
    for c in &revoked {
        let (Ok(serial), Some(at)) = (Serial::parse(&c.serial), c.revoked_at) else {
            continue;
        };
        let reason = c
            .revocation_reason
            .as_deref()
            .and_then(|r| keyroll_ca::RevocationReason::parse(r).ok())
            .unwrap_or(keyroll_ca::RevocationReason::Unspecified);
        entries.push(keyroll_ca::RevokedEntry {
            serial,
            revoked_at: at,
            reason,
        });
    }
    for (serial, at, reason) in adding {
        let serial = Serial::parse(serial).map_err(ca_error)?;
        if !entries.iter().any(|e| e.serial == serial) {
            entries.push(keyroll_ca::RevokedEntry {
                serial,
                revoked_at: *at,
                reason: *reason,
            });
        }
    }
    let number = ca
        .crls
        .iter()
        .find(|c| c.issuer_id == issuer.id)
        .map_or(1, |c| c.number + 1);
    let next_update = now.saturating_add(CRL_VALIDITY);
    let der = keyroll_ca::crl(&signer(state, issuer)?, number, now, next_update, &entries)
        .map_err(ca_error)?;
    Ok(CrlRecord {
        issuer_id: issuer.id.clone(),
        number,
        this_update: now,
        next_update,
        der,
    })
}

/// What `POST /v1/certs/revoke` revokes.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate.
    Serial(Serial),
    /// Every live certificate of the identity, and its self-renewal.
    Identity(keyroll_core::ConsumerRef),
}

/// What a revocation did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The serials revoked now (already revoked ones are not repeated).
    pub revoked: Vec<String>,
    /// The identity may no longer renew itself.
    pub identity_blocked: bool,
    /// The bundle version after it.
    pub bundle_version: u64,
}

/// Revokes a certificate, or every live certificate of an identity (which may then no longer
/// renew itself). One write guarded by the bundle version: the revocations, each issuer's new
/// CRL, the blocked identity, the audit entry and the events; then the trust store is rebuilt,
/// so the listener refuses the certificates at once.
pub async fn revoke(
    state: &AppState,
    actor: &Actor,
    target: RevokeTarget,
    reason: keyroll_ca::RevocationReason,
) -> Result<Revoked, CaServiceError> {
    for _ in 0..CA_ATTEMPTS {
        match revoke_once(state, actor, &target, reason).await {
            Err(CaServiceError::Service(ServiceError::Store(
                keyroll_store::StoreError::Conflict(_),
            ))) => continue,
            other => return other,
        }
    }
    Err(CaServiceError::Service(ServiceError::Busy(
        "the CA".to_owned(),
    )))
}

async fn revoke_once(
    state: &AppState,
    actor: &Actor,
    target: &RevokeTarget,
    reason: keyroll_ca::RevocationReason,
) -> Result<Revoked, CaServiceError> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    if ca.authorities.is_empty() {
        return Err(CaServiceError::NoCa);
    }
    let (certs, identity) = match target {
        RevokeTarget::Serial(s) => {
            let serial = s.to_string();
            let Some(c) = state.store.get_certificate(&serial).await? else {
                return Err(CaServiceError::NotFound(format!(
                    "no certificate with serial {serial}; see `keyroll cert list`"
                )));
            };
            (vec![c], None)
        }
        RevokeTarget::Identity(r) => {
            let live = all_certificates(
                state,
                keyroll_store::CertQuery {
                    identity: Some(r.clone()),
                    issuer: None,
                    state: Some(keyroll_store::CertFilter::Live),
                    at: now,
                    after: None,
                    limit: 1000,
                },
            )
            .await?;
            (live, Some(r.clone()))
        }
    };
    let fresh: Vec<&keyroll_store::IssuedCertRecord> =
        certs.iter().filter(|c| c.revoked_at.is_none()).collect();
    let revocations: Vec<keyroll_store::CertRevocation> = fresh
        .iter()
        .map(|c| keyroll_store::CertRevocation {
            serial: c.serial.clone(),
            at: now,
            reason: reason.as_str().to_owned(),
        })
        .collect();
    let mut crls = Vec::new();
    for issuer_id in fresh
        .iter()
        .map(|c| c.issuer_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let Some(issuer) = ca.authorities.iter().find(|a| a.id == issuer_id) else {
            continue;
        };
        // An issuer out of the bundle no longer publishes a CRL: nothing chains to it.
        if !crate::ca::in_bundle(issuer, now) {
            continue;
        }
        let adding: Vec<_> = fresh
            .iter()
            .filter(|c| c.issuer_id == issuer_id)
            .map(|c| (c.serial.clone(), now, reason))
            .collect();
        crls.push(next_crl(state, &ca, issuer, &adding, now).await?);
    }
    let blocked = identity
        .as_ref()
        .map(|r| keyroll_store::RevokedIdentityRecord {
            identity: r.clone(),
            revoked_at: now,
            reason: reason.as_str().to_owned(),
            revoked_by: actor.id.clone(),
        });
    let serials: Vec<String> = fresh.iter().map(|c| c.serial.clone()).collect();
    let target_text = match target {
        RevokeTarget::Serial(s) => format!("cert {s}"),
        RevokeTarget::Identity(r) => format!("identity {r}"),
    };
    let detail = json!({
        "revoked": serials,
        "identity": identity.as_ref().map(ToString::to_string),
        "reason": reason.as_str(),
        "crls": crls.iter().map(|c| json!({"issuer_id": c.issuer_id, "number": c.number})).collect::<Vec<_>>(),
    });
    let audit = [actor.audit(now, "cert.revoked", target_text, &detail)];
    let mut events: Vec<EventRecord> = fresh
        .iter()
        .map(|c| EventRecord {
            seq: 0,
            at: now,
            kind: "cert.revoked".to_owned(),
            consumer: c.identity.to_string(),
            version: None,
            detail: json!({"serial": c.serial, "identity": c.identity.to_string(), "issuer_id": c.issuer_id, "reason": reason.as_str()}).to_string(),
        })
        .collect();
    if let Some(r) = &identity {
        events.push(EventRecord {
            seq: 0,
            at: now,
            kind: "cert.identity_revoked".to_owned(),
            consumer: r.to_string(),
            version: None,
            detail:
                json!({"identity": r.to_string(), "reason": reason.as_str(), "revoked": serials})
                    .to_string(),
        });
    }
    if revocations.is_empty() && blocked.is_none() {
        return Ok(Revoked {
            revoked: Vec::new(),
            identity_blocked: false,
            bundle_version: ca.bundle_version,
        });
    }
    let commit = state
        .store
        .write_ca(CaWrite {
            expected_bundle_version: Some(ca.bundle_version),
            bump_bundle: !crls.is_empty(),
            revocations: &revocations,
            revoke_identity: blocked.as_ref(),
            crls: &crls,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await?;
    if let Some(seq) = commit.change_seq {
        state.cluster.note_local(seq);
    }
    state.reload_ca().await?;
    state.webhook_wake.notify_one();
    tracing::info!(
        event = "cert.revoked",
        revoked = ?serials,
        identity = identity.as_ref().map(ToString::to_string),
        reason = reason.as_str(),
        bundle_version = commit.bundle_version,
        request_id = actor.request_id.as_str(),
        "revoked {} certificate(s){}",
        serials.len(),
        identity.as_ref().map(|r| format!(" of {r}; it may no longer renew itself")).unwrap_or_default()
    );
    Ok(Revoked {
        revoked: serials,
        identity_blocked: identity.is_some(),
        bundle_version: commit.bundle_version,
    })
}

/// The CRL refresh (leader-only job): every issuer in the bundle whose CRL is past half of
/// [`CRL_VALIDITY`] gets a new one (same entries, number + 1), all in one write guarded by the
/// bundle version (another node's concurrent refresh makes this one a no-op). Returns how many
/// CRLs were renewed.
pub async fn refresh_crls(state: &AppState) -> Result<usize, CaServiceError> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    let mut crls = Vec::new();
    for issuer in ca
        .authorities
        .iter()
        .filter(|a| crate::ca::in_bundle(a, now))
    {
        let due = match ca.crls.iter().find(|c| c.issuer_id == issuer.id) {
            None => true,
            Some(c) => now >= c.this_update.saturating_add(CRL_VALIDITY / 2),
        };
        if due {
            crls.push(next_crl(state, &ca, issuer, &[], now).await?);
        }
    }
    if crls.is_empty() {
        return Ok(0);
    }
    let detail = json!({
        "crls": crls.iter().map(|c| json!({"issuer_id": c.issuer_id, "number": c.number, "next_update": keyroll_core::rfc3339(c.next_update)})).collect::<Vec<_>>(),
    });
    let actor = Actor::system(crate::request_id::new_request_id());
    let audit = [actor.audit(now, "ca.crl_refreshed", "ca crl".to_owned(), &detail)];
    let events = [EventRecord {
        seq: 0,
        at: now,
        kind: "ca.crl_refreshed".to_owned(),
        consumer: String::new(),
        version: None,
        detail: detail.to_string(),
    }];
    let commit = match state
        .store
        .write_ca(CaWrite {
            expected_bundle_version: Some(ca.bundle_version),
            bump_bundle: true,
            crls: &crls,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await
    {
        Ok(c) => c,
        // Someone else changed the bundle meanwhile (a revocation, another node's refresh):
        // the next tick looks again.
        Err(keyroll_store::StoreError::Conflict(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if let Some(seq) = commit.change_seq {
        state.cluster.note_local(seq);
    }
    state.reload_ca().await?;
    tracing::info!(
        event = "ca.crl_refreshed",
        count = crls.len(),
        bundle_version = commit.bundle_version,
        "refreshed {} CRL(s)",
        crls.len()
    );
    Ok(crls.len())
}

/// `POST /v1/ca/rotate`.
#[derive(Debug, Clone, Default)]
pub struct RotateRequest {
    /// A new root too (and a new intermediate under it).
    pub root: bool,
    /// When the new CA enters the bundle (default: half the current one's life).
    pub enters_bundle_at: Option<Timestamp>,
    /// When it starts signing (default: five sixths of the current one's life).
    pub signs_from: Option<Timestamp>,
    /// The old CA's quiet period before it may leave (default [`DEFAULT_IDLE`]).
    pub idle: Option<Duration>,
}

fn facts(a: &AuthorityRecord) -> keyroll_core::ca_timeline::AuthorityFacts {
    use keyroll_core::ca_timeline::{AuthorityFacts, AuthorityRole, Phase};
    AuthorityFacts {
        id: a.id.clone(),
        role: match a.kind {
            AuthorityKind::Root => AuthorityRole::Root,
            AuthorityKind::Intermediate => AuthorityRole::Intermediate,
        },
        parent: a.parent_id.clone(),
        not_before: a.not_before,
        not_after: a.not_after,
        enters_bundle_at: a.enters_bundle_at,
        signs_from: a.signs_from,
        idle: a.idle,
        phase: match a.state {
            AuthorityState::Next => Phase::Next,
            AuthorityState::Bundled => Phase::Bundled,
            AuthorityState::Active => Phase::Active,
            AuthorityState::Retiring => Phase::Retiring,
            AuthorityState::Removed => Phase::Removed,
        },
    }
}

fn active(ca: &keyroll_store::CaState, kind: AuthorityKind) -> Option<&AuthorityRecord> {
    ca.authorities
        .iter()
        .rev()
        .find(|a| a.kind == kind && a.state == AuthorityState::Active)
}

fn conflict_is_busy(e: keyroll_store::StoreError) -> CaServiceError {
    match e {
        keyroll_store::StoreError::Conflict(_) => {
            CaServiceError::Service(ServiceError::Busy("the CA".to_owned()))
        }
        e => e.into(),
    }
}

/// Starts a rotation: a next intermediate (with `root`, a next root and an intermediate under
/// it), made now, entering the bundle and signing on the timeline. Nothing changes in the
/// bundle yet: the timeline job carries the rest out. One write guarded by the bundle version.
pub async fn rotate(
    state: &AppState,
    actor: &Actor,
    req: RotateRequest,
) -> Result<(), CaServiceError> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    if ca.authorities.is_empty() {
        return Err(CaServiceError::NoCa);
    }
    if let Some(p) = ca
        .authorities
        .iter()
        .find(|a| matches!(a.state, AuthorityState::Next | AuthorityState::Bundled))
    {
        return Err(CaServiceError::Service(ServiceError::AlreadyExists(
            format!(
                "a rotation is under way ({} {} is {}); see `keyroll ca status`",
                p.kind.as_str(),
                p.id,
                p.state.as_str()
            ),
        )));
    }
    let (Some(cur_root), Some(cur_int)) = (
        active(&ca, AuthorityKind::Root),
        active(&ca, AuthorityKind::Intermediate),
    ) else {
        return Err(CaServiceError::Service(ServiceError::Invalid(
            "no active root and intermediate to rotate; see `keyroll ca status`".to_owned(),
        )));
    };
    let basis = if req.root { cur_root } else { cur_int };
    let (def_enter, def_sign) = keyroll_core::ca_timeline::default_schedule(&facts(basis), now);
    let enters = req.enters_bundle_at.unwrap_or(def_enter).max(now);
    let signs = req.signs_from.unwrap_or(def_sign.max(enters));
    if signs < enters {
        return Err(CaServiceError::Service(ServiceError::Invalid(format!(
            "signs_from: {} is before enters_bundle_at {}: a CA must be trusted before it signs",
            keyroll_core::rfc3339(signs),
            keyroll_core::rfc3339(enters)
        ))));
    }
    let idle = req.idle.unwrap_or(DEFAULT_IDLE);
    let td = TrustDomain::parse(&cur_int.trust_domain).map_err(ca_error)?;
    let int_life = cur_int.not_after.duration_since(cur_int.not_before);
    let mut made = Vec::new();
    let (parent_signer, parent_id) = if req.root {
        let life = cur_root.not_after.duration_since(cur_root.not_before);
        let gen_ = cur_root.generation + 1;
        let root =
            keyroll_ca::new_root(&td, gen_, now, life, new_serial(state)?).map_err(ca_error)?;
        let id = super::webhooks::new_id(state, "ca_")?;
        let s = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).map_err(ca_error)?;
        let mut r = record(state, &id, AuthorityKind::Root, None, &td, &root, now)?;
        r.generation = gen_;
        made.push(r);
        (s, id)
    } else {
        (signer(state, cur_root)?, cur_root.id.clone())
    };
    let gen_ = cur_int.generation + 1;
    let int =
        keyroll_ca::new_intermediate(&parent_signer, &td, gen_, now, int_life, new_serial(state)?)
            .map_err(ca_error)?;
    let int_id = super::webhooks::new_id(state, "ca_")?;
    let mut r = record(
        state,
        &int_id,
        AuthorityKind::Intermediate,
        Some(&parent_id),
        &td,
        &int,
        now,
    )?;
    r.generation = gen_;
    made.push(r);
    for a in &mut made {
        a.state = AuthorityState::Next;
        a.enters_bundle_at = enters;
        a.signs_from = signs;
        a.idle = idle;
        a.entered_version = None;
    }
    // `idle` is the removal gate of the CAs being replaced: written on them in the same write.
    let mut replaced = vec![cur_int.clone()];
    if req.root {
        replaced.push(cur_root.clone());
    }
    for a in &mut replaced {
        a.idle = idle;
    }
    let replaced_ids: Vec<String> = replaced.iter().map(|a| a.id.clone()).collect();
    let detail = json!({
        "root": req.root,
        "authorities": made.iter().map(|a| json!({"id": a.id, "kind": a.kind.as_str(), "generation": a.generation, "serial": a.serial, "not_after": keyroll_core::rfc3339(a.not_after)})).collect::<Vec<_>>(),
        "enters_bundle_at": keyroll_core::rfc3339(enters),
        "signs_from": keyroll_core::rfc3339(signs),
        "idle": keyroll_core::format_duration(idle),
        "replaces": replaced_ids,
    });
    made.extend(replaced);
    let audit = [actor.audit(now, "ca.rotation_started", format!("ca {td}"), &detail)];
    let events = [EventRecord {
        seq: 0,
        at: now,
        kind: "ca.rotation_started".to_owned(),
        consumer: String::new(),
        version: None,
        detail: detail.to_string(),
    }];
    state
        .store
        .write_ca(CaWrite {
            expected_bundle_version: Some(ca.bundle_version),
            authorities: &made,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await
        .map_err(conflict_is_busy)?;
    state.webhook_wake.notify_one();
    tracing::info!(event = "ca.rotation_started", root = req.root, enters_bundle_at = %keyroll_core::rfc3339(enters), signs_from = %keyroll_core::rfc3339(signs), request_id = actor.request_id.as_str(), "CA rotation started: the new {} enters the bundle at {}, signs from {}", if req.root { "root and intermediate" } else { "intermediate" }, keyroll_core::rfc3339(enters), keyroll_core::rfc3339(signs));
    Ok(())
}

/// What the removal gate of each retiring authority measured at `now`.
async fn gates(
    state: &AppState,
    ca: &keyroll_store::CaState,
    now: Timestamp,
) -> Result<Vec<(String, keyroll_core::ca_timeline::GateFacts)>, CaServiceError> {
    let mut out = Vec::new();
    for a in ca
        .authorities
        .iter()
        .filter(|a| a.state == AuthorityState::Retiring)
    {
        let d = depends(state, ca, a, now).await?;
        out.push((
            a.id.clone(),
            keyroll_core::ca_timeline::GateFacts {
                live_certificates: d.live_certificates.len() as u64,
                last_handshake: d.recent_handshakes.iter().map(|h| h.last_at).max(),
                agents_on_older_bundle: d.agents_on_old_bundle.len() as u64,
            },
        ));
    }
    Ok(out)
}

/// What an authority's removal waits for, measured at `now`.
#[derive(Debug, Clone, Default)]
pub struct Dependents {
    /// Live certificates it (a root: its intermediates) signed.
    pub live_certificates: Vec<keyroll_store::IssuedCertRecord>,
    /// Handshakes that chained to it (a root) within its `idle`.
    pub recent_handshakes: Vec<keyroll_store::HandshakeUse>,
    /// Agents (heard from within `idle`) whose bundle is older than its successor's entry.
    pub agents_on_old_bundle: Vec<keyroll_store::AgentRecord>,
}

/// [`Dependents`] of `a`.
pub async fn depends(
    state: &AppState,
    ca: &keyroll_store::CaState,
    a: &AuthorityRecord,
    now: Timestamp,
) -> Result<Dependents, CaServiceError> {
    let mut d = Dependents::default();
    if a.state == AuthorityState::Removed {
        return Ok(d);
    }
    let issuers: Vec<&str> = match a.kind {
        AuthorityKind::Intermediate => vec![a.id.as_str()],
        AuthorityKind::Root => ca
            .authorities
            .iter()
            .filter(|i| i.parent_id.as_deref() == Some(a.id.as_str()))
            .map(|i| i.id.as_str())
            .collect(),
    };
    for issuer in issuers {
        d.live_certificates.extend(
            all_certificates(
                state,
                keyroll_store::CertQuery {
                    identity: None,
                    issuer: Some(issuer.to_owned()),
                    state: Some(keyroll_store::CertFilter::Live),
                    at: now,
                    after: None,
                    limit: 1000,
                },
            )
            .await?,
        );
    }
    let since = now.saturating_sub(a.idle);
    if a.kind == AuthorityKind::Root {
        d.recent_handshakes = state
            .store
            .list_handshakes(since)
            .await?
            .into_iter()
            .filter(|h| h.anchor_id == a.fingerprint)
            .collect();
    }
    // Its successor: the newest authority of its kind that entered the bundle after it.
    let successor = ca
        .authorities
        .iter()
        .filter(|s| s.kind == a.kind && s.generation > a.generation)
        .filter_map(|s| s.entered_version)
        .min();
    if let Some(entered) = successor {
        d.agents_on_old_bundle = state
            .store
            .list_agents(None)
            .await?
            .into_iter()
            .filter(|g| g.last_contact >= since)
            .filter(|g| g.bundle_version.is_some_and(|v| v < entered))
            .collect();
    }
    Ok(d)
}

/// Carries out the timeline's next step at `now` (one write guarded by the bundle version);
/// returns it (`Step::Nothing` when nothing is due). The leader's job calls it until nothing is
/// due, so a timeline that passed while the server was down catches up step by step.
pub async fn timeline_step(
    state: &AppState,
) -> Result<keyroll_core::ca_timeline::Step, CaServiceError> {
    use keyroll_core::ca_timeline::Step;
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    if ca.authorities.is_empty() {
        return Ok(Step::Nothing);
    }
    let all: Vec<_> = ca.authorities.iter().map(facts).collect();
    let gates = gates(state, &ca, now).await?;
    let step = keyroll_core::ca_timeline::next_step(&all, &gates, now);
    let find = |id: &str| ca.authorities.iter().find(|a| a.id == id).cloned();
    let mut changed: Vec<AuthorityRecord> = Vec::new();
    let mut crls = Vec::new();
    let mut bump = true;
    let (kind, detail) = match &step {
        Step::Nothing => return Ok(step),
        Step::StartRotation { root } => {
            let actor = Actor {
                id: "ca-timeline".to_owned(),
                request_id: crate::request_id::new_request_id(),
                remote_addr: None,
            };
            rotate(
                state,
                &actor,
                RotateRequest {
                    root: *root,
                    ..RotateRequest::default()
                },
            )
            .await?;
            return Ok(step);
        }
        Step::Prune(id) | Step::Retire(id) => {
            let Some(mut a) = find(id) else {
                return Ok(Step::Nothing);
            };
            a.state = AuthorityState::Removed;
            a.removed_at = Some(now);
            let kind = if matches!(step, Step::Prune(_)) {
                "ca.authority_pruned"
            } else {
                "ca.authority_removed"
            };
            let d = json!({"id": a.id, "kind": a.kind.as_str(), "generation": a.generation, "serial": a.serial, "not_after": keyroll_core::rfc3339(a.not_after)});
            changed.push(a);
            (kind, d)
        }
        Step::EnterBundle(id) => {
            let Some(mut a) = find(id) else {
                return Ok(Step::Nothing);
            };
            a.state = AuthorityState::Bundled;
            a.entered_version = Some(ca.bundle_version + 1);
            // Its CRL enters with it: a relying party that checks CRLs fails every
            // certificate of an issuer without one.
            let next_update = now.saturating_add(CRL_VALIDITY);
            crls.push(CrlRecord {
                issuer_id: a.id.clone(),
                number: 1,
                this_update: now,
                next_update,
                der: keyroll_ca::crl(&signer(state, &a)?, 1, now, next_update, &[])
                    .map_err(ca_error)?,
            });
            let d = json!({"id": a.id, "kind": a.kind.as_str(), "generation": a.generation, "serial": a.serial, "bundle_version": ca.bundle_version + 1});
            changed.push(a);
            ("ca.authority_bundled", d)
        }
        Step::SwitchSigning { from, to } => {
            let Some(mut new) = find(to) else {
                return Ok(Step::Nothing);
            };
            new.state = AuthorityState::Active;
            let old = from.as_deref().and_then(find);
            let new_parent = new.parent_id.clone();
            if let Some(mut o) = old.clone() {
                o.state = AuthorityState::Retiring;
                // A new root above the new intermediate: the old root retires, the new one is
                // the active root.
                if o.parent_id != new_parent {
                    if let Some(mut r) = o.parent_id.as_deref().and_then(find) {
                        r.state = AuthorityState::Retiring;
                        changed.push(r);
                    }
                    if let Some(mut r) = new_parent.as_deref().and_then(find) {
                        r.state = AuthorityState::Active;
                        changed.push(r);
                    }
                }
                changed.push(o);
            }
            let d = json!({"from": from, "to": new.id, "generation": new.generation});
            changed.push(new);
            // The bundle's content is the same: who signs is read from the store.
            bump = false;
            ("ca.signing_switched", d)
        }
    };
    let actor = Actor {
        id: "ca-timeline".to_owned(),
        request_id: crate::request_id::new_request_id(),
        remote_addr: None,
    };
    let audit = [actor.audit(
        now,
        kind,
        format!("ca {}", changed.last().map(|a| a.id.as_str()).unwrap_or("")),
        &detail,
    )];
    let events = [EventRecord {
        seq: 0,
        at: now,
        kind: kind.to_owned(),
        consumer: String::new(),
        version: None,
        detail: detail.to_string(),
    }];
    let commit = match state
        .store
        .write_ca(CaWrite {
            expected_bundle_version: Some(ca.bundle_version),
            bump_bundle: bump,
            authorities: &changed,
            crls: &crls,
            audit: &audit,
            events: &events,
            ..CaWrite::default()
        })
        .await
    {
        Ok(c) => c,
        // Another writer changed the bundle: the next round recomputes from fresh state.
        Err(keyroll_store::StoreError::Conflict(_)) => return Ok(Step::Nothing),
        Err(e) => return Err(e.into()),
    };
    if let Some(seq) = commit.change_seq {
        state.cluster.note_local(seq);
    }
    state.reload_ca().await?;
    state.webhook_wake.notify_one();
    tracing::info!(event = kind, step = ?step, bundle_version = commit.bundle_version, "CA timeline: {kind}");
    Ok(step)
}

/// The timeline's next step as `GET /v1/ca/status` shows it: what is due now, else the
/// earliest foreseeable one (a retirement waits on its gate, so it has no date).
pub fn foreseen_step(
    ca: &keyroll_store::CaState,
    gates: &[(String, keyroll_core::ca_timeline::GateFacts)],
    now: Timestamp,
) -> Option<(&'static str, Option<String>, Timestamp)> {
    use keyroll_core::ca_timeline::Step;
    let all: Vec<_> = ca.authorities.iter().map(facts).collect();
    match keyroll_core::ca_timeline::next_step(&all, gates, now) {
        Step::Prune(id) => return Some(("prune", Some(id), now)),
        Step::EnterBundle(id) => return Some(("enter_bundle", Some(id), now)),
        Step::SwitchSigning { to, .. } => return Some(("switch_signing", Some(to), now)),
        Step::Retire(id) => return Some(("retire", Some(id), now)),
        Step::StartRotation { .. } => return Some(("start_rotation", None, now)),
        Step::Nothing => {}
    }
    let mut future: Vec<(&'static str, Option<String>, Timestamp)> = Vec::new();
    for a in ca
        .authorities
        .iter()
        .filter(|a| a.state != AuthorityState::Removed)
    {
        match a.state {
            AuthorityState::Next => {
                future.push(("enter_bundle", Some(a.id.clone()), a.enters_bundle_at))
            }
            AuthorityState::Bundled if a.kind == AuthorityKind::Intermediate => {
                future.push(("switch_signing", Some(a.id.clone()), a.signs_from));
            }
            _ => {}
        }
        future.push(("prune", Some(a.id.clone()), a.not_after));
    }
    let pending = ca
        .authorities
        .iter()
        .any(|a| matches!(a.state, AuthorityState::Next | AuthorityState::Bundled));
    if !pending {
        for kind in [AuthorityKind::Root, AuthorityKind::Intermediate] {
            if let Some(a) = active(ca, kind) {
                let half = a
                    .not_before
                    .saturating_add(a.not_after.duration_since(a.not_before) / 2);
                future.push(("start_rotation", None, half));
            }
        }
    }
    future.into_iter().min_by_key(|f| f.2)
}

/// Everything `GET /v1/ca/status` shows: the stored CA, each authority's dependents, the gates.
pub async fn status(
    state: &AppState,
) -> Result<
    (
        keyroll_store::CaState,
        Vec<Dependents>,
        Option<(&'static str, Option<String>, Timestamp)>,
    ),
    CaServiceError,
> {
    let now = state.clock.now();
    let ca = state.store.ca_state().await?;
    if ca.authorities.is_empty() {
        return Err(CaServiceError::NoCa);
    }
    let mut deps = Vec::new();
    for a in &ca.authorities {
        deps.push(depends(state, &ca, a, now).await?);
    }
    let gates = gates(state, &ca, now).await?;
    let next = foreseen_step(&ca, &gates, now);
    Ok((ca, deps, next))
}
