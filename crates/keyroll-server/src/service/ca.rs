//! The CA's changes on the one write path: crypto from `keyroll-ca`, state in the store, the
//! private keys sealed under the master key (associated data: the authority's id, so a sealed
//! key moved to another row does not open), audit entries and events in the same transaction,
//! and the trust store rebuilt before the answer. Serials and ids come from the server's
//! `Randomness`, time from its clock.
//!
//! Only `init` is here so far; issuing, revocation, rotation and the timeline's job follow the
//! same shape (read the CA state → compute with `keyroll-ca` and `keyroll_core::ca_timeline`
//! → one `Store::write_ca` guarded by the bundle version → `CaRuntime::install`).

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
    })
}
