//! `[tls] issue = { identity, dns, ip }`: the listener's own certificate issued by keyroll's CA
//! (through the service layer's one write path, so it is audited and listed like any other),
//! and renewed at half its life, or at once when signing moves to another intermediate (a CA
//! rotation: the old root must not wait for this certificate to expire): the new config is published through the listener's `watch`,
//! so new handshakes get the new certificate while open connections keep theirs.
//!
//! When to renew is [`due`] and [`issuer_replaced`], pure functions of the certificate, `now`
//! and the CA's authorities; the loop only runs
//! it, re-checking every `tls.watch_interval` so that a clock that jumps (or a test's manual
//! clock) is followed without a long sleep.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keyroll_core::{ConsumerRef, Timestamp};
use keyroll_store::{AuthorityKind, AuthorityRecord, AuthorityState, IssuedCertRecord};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::config::TlsSource;
use crate::service::audit::Actor;
use crate::service::ca::{IssueRequest, issue, renew_after};
use crate::state::AppState;
use crate::tls::{TlsError, server_config};

/// What `tls.issue` asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSpec {
    /// `ENV/SERVICE`.
    pub identity: ConsumerRef,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ip: Vec<IpAddr>,
}

impl IssueSpec {
    /// The spec of a `tls.issue` source (`None` for certificate files).
    pub fn of(source: &TlsSource) -> Result<Option<IssueSpec>, TlsError> {
        let TlsSource::Issue { identity, dns, ip } = source else {
            return Ok(None);
        };
        let identity = ConsumerRef::parse(identity)
            .map_err(|e| TlsError::Config(format!("tls.issue.identity = {identity:?}: {e}")))?;
        Ok(Some(IssueSpec {
            identity,
            dns: dns.clone(),
            ip: ip.clone(),
        }))
    }
}

/// Whether the listener's certificate is due for renewal at `now`: from its half life on.
pub fn due(cert: &IssuedCertRecord, now: Timestamp) -> bool {
    now >= renew_after(cert.not_before, cert.not_after)
}

/// Whether the certificate's issuer no longer signs: signing moved to another intermediate
/// (a rotation), so the certificate keeps its old root needed until it expires. The listener
/// then renews at once, onto the CA that signs now, instead of at half its life.
pub fn issuer_replaced(cert: &IssuedCertRecord, authorities: &[AuthorityRecord]) -> bool {
    authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::Intermediate && a.state == AuthorityState::Active)
        .is_some_and(|signing| signing.id != cert.issuer_id)
}

/// Issues the listener's certificate and makes it a config: one audited write
/// (`requested_by` `system`), superseding `supersedes` on renewal.
pub async fn issue_config(
    state: &AppState,
    spec: &IssueSpec,
    supersedes: Option<&str>,
) -> Result<(Arc<ServerConfig>, IssuedCertRecord), TlsError> {
    let actor = Actor::system(crate::request_id::new_request_id());
    let issued = issue(
        state,
        &actor,
        IssueRequest {
            identity: spec.identity.clone(),
            ttl: None,
            server_auth: true,
            dns: spec.dns.clone(),
            ip: spec.ip.clone(),
            csr: None,
        },
        supersedes,
    )
    .await
    .map_err(|e| TlsError::Config(format!("tls.issue ({}): {e}", spec.identity)))?;
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("the issued certificate does not parse: {e}")))?;
    let key_pem = issued
        .key_pem
        .as_ref()
        .ok_or_else(|| TlsError::Config("the CA returned no key for the listener".into()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes())
        .map_err(|e| TlsError::Config(format!("the issued key does not parse: {e}")))?;
    let config = server_config(chain, key)?;
    Ok((config, issued.record))
}

/// Renews the listener's certificate at half its life until `stop`, publishing each new config
/// on `tx`. A failed renewal (the store down, the CA unable to sign) keeps the current
/// certificate, is logged, and is tried again at the next check.
pub async fn renew(
    state: Arc<AppState>,
    spec: IssueSpec,
    mut current: IssuedCertRecord,
    check_every: Duration,
    tx: watch::Sender<Arc<ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether signing moved away from this certificate's issuer is read from the store when
    // the bundle version moves and every 30 checks otherwise (switching signing changes no
    // bundle, so no version): one small read per 30 s at the default interval.
    let recheck = check_every.saturating_mul(30);
    let mut seen_bundle = state.ca.bundle_version();
    let mut last_read = std::time::Instant::now();
    let mut moved = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let bundle = state.ca.bundle_version();
        if (bundle != seen_bundle || last_read.elapsed() >= recheck)
            && let Ok(ca) = state.store.ca_state().await
        {
            seen_bundle = bundle;
            last_read = std::time::Instant::now();
            moved = moved || issuer_replaced(&current, &ca.authorities);
        }
        if !moved && !due(&current, state.clock.now()) {
            continue;
        }
        match issue_config(&state, &spec, Some(&current.serial)).await {
            Ok((config, record)) => {
                tx.send_replace(config);
                tracing::info!(
                    event = "tls.renewed",
                    identity = %spec.identity,
                    serial = record.serial.as_str(),
                    previous = current.serial.as_str(),
                    not_after = %keyroll_core::rfc3339(record.not_after),
                    "new TLS certificate {} for {} from keyroll's CA in use for new connections (replaces {})",
                    record.serial,
                    spec.identity,
                    current.serial
                );
                current = record;
                moved = false;
            }
            Err(e) => {
                tracing::error!(
                    event = "tls.renew_failed",
                    identity = %spec.identity,
                    serial = current.serial.as_str(),
                    error = %e,
                    "the listener's certificate {} was not renewed, it stays in use until {}: {e}",
                    current.serial,
                    keyroll_core::rfc3339(current.not_after)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_from_half_life_on() {
        let t = Timestamp::from_unix_millis;
        let cert = IssuedCertRecord {
            serial: "01".into(),
            identity: ConsumerRef::parse("ops/keyroll").unwrap(),
            issuer_id: "ca_1".into(),
            not_before: t(1_000),
            not_after: t(3_000),
            issued_at: t(1_000),
            fingerprint: String::new(),
            server_auth: true,
            requested_by: "system".into(),
            superseded_by: None,
            revoked_at: None,
            revocation_reason: None,
        };
        assert!(!due(&cert, t(1_999)));
        assert!(due(&cert, t(2_000)));
        assert!(due(&cert, t(5_000)));
    }
}
