//! The CA as the running server holds it: the current trust store (what relying parties in
//! this process — the TLS listener's verifier, certificate forward-auth — check against), the
//! bundle version, the trust domain, and the handshake uses counted in memory until a job
//! flushes them to the store (the removal gate's "no handshake chained to it for `idle`").
//!
//! The trust store is rebuilt from the store's CA state ([`CaRuntime::install`]) at start,
//! after every CA write on this node, and when another node's `ca` change arrives through the
//! change log; it is published through a `watch` so a holder of a receiver sees every new one
//! without a restart. Expired anchors are never in it (webpki would still accept chains to an
//! expired root).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyroll_ca::{AnchorId, Serial, SpiffeId, TrustDomain, TrustStore};
use keyroll_core::Timestamp;
use keyroll_store::{AuthorityKind, AuthorityRecord, AuthorityState, CaState, HandshakeUse};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

/// Why the stored CA could not be made into a trust store.
#[derive(Debug, thiserror::Error)]
pub enum CaRuntimeError {
    /// A stored certificate or CRL does not parse, or the trust domain is invalid.
    #[error("the stored CA is unusable: {0}")]
    Unusable(String),
}

/// Handshakes counted since the last flush, by (anchor, identity, peer address).
type Uses = HashMap<(String, String, String), (String, Timestamp, u64)>;

/// The server's CA state in memory (`AppState::ca`).
#[derive(Debug)]
pub struct CaRuntime {
    trust: watch::Sender<Option<Arc<TrustStore>>>,
    bundle_version: AtomicU64,
    trust_domain: RwLock<Option<TrustDomain>>,
    uses: Mutex<Uses>,
}

impl Default for CaRuntime {
    fn default() -> Self {
        CaRuntime::new()
    }
}

impl CaRuntime {
    /// No CA yet (before `ca init`, or before the store's state is installed).
    pub fn new() -> CaRuntime {
        CaRuntime {
            trust: watch::Sender::new(None),
            bundle_version: AtomicU64::new(0),
            trust_domain: RwLock::new(None),
            uses: Mutex::new(HashMap::new()),
        }
    }

    /// The current trust bundle (anchors in the bundle, expired ones pruned; the current
    /// intermediates; one CRL per issuer); `None` before `ca init`.
    pub fn trust(&self) -> watch::Receiver<Option<Arc<TrustStore>>> {
        self.trust.subscribe()
    }

    /// The trust store installed now (`None` before `ca init`), for a single verification.
    pub fn current(&self) -> Option<Arc<TrustStore>> {
        self.trust.borrow().clone()
    }

    /// The version of the bundle installed (0 before `ca init`).
    pub fn bundle_version(&self) -> u64 {
        self.bundle_version.load(Ordering::Acquire)
    }

    /// The CA's trust domain, once there is a CA.
    pub fn trust_domain(&self) -> Option<TrustDomain> {
        self.trust_domain.read().clone()
    }

    /// Counts one handshake that chained to `anchor` (cheap: one short lock, no IO). `identity`
    /// is `ENV/SERVICE` or the SPIFFE id; the peer is kept without its port, so one client is
    /// one row however many connections it opens.
    pub fn record_handshake(
        &self,
        anchor: &AnchorId,
        identity: &str,
        serial: &Serial,
        peer: Option<SocketAddr>,
        at: Timestamp,
    ) {
        let identity = identity_path(identity);
        let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        let mut uses = self.uses.lock();
        let entry = uses
            .entry((anchor.to_string(), identity, peer))
            .or_insert_with(|| (serial.to_string(), at, 0));
        if at >= entry.1 {
            entry.0 = serial.to_string();
            entry.1 = at;
        }
        entry.2 += 1;
    }

    /// Takes the handshake uses counted since the last call (for the flush).
    pub fn take_handshakes(&self) -> Vec<HandshakeUse> {
        let uses = std::mem::take(&mut *self.uses.lock());
        uses.into_iter()
            .map(
                |((anchor_id, identity, peer), (serial, last_at, count))| HandshakeUse {
                    anchor_id,
                    identity,
                    peer,
                    serial,
                    last_at,
                    count,
                },
            )
            .collect()
    }

    /// Puts back uses whose flush failed, so a database outage loses none.
    pub fn restore_handshakes(&self, batch: Vec<HandshakeUse>) {
        let mut uses = self.uses.lock();
        for u in batch {
            let entry = uses
                .entry((u.anchor_id, u.identity, u.peer))
                .or_insert_with(|| (u.serial.clone(), u.last_at, 0));
            if u.last_at >= entry.1 {
                entry.0 = u.serial;
                entry.1 = u.last_at;
            }
            entry.2 += u.count;
        }
    }

    /// Installs the store's CA state at `now`: the authorities in the bundle become the trust
    /// store (expired ones left out), and the bundle version and trust domain are taken over.
    pub fn install(&self, state: &CaState, now: Timestamp) -> Result<(), CaRuntimeError> {
        let in_bundle = |a: &&AuthorityRecord| in_bundle(a, now);
        let roots: Vec<Vec<u8>> = state
            .authorities
            .iter()
            .filter(in_bundle)
            .filter(|a| a.kind == AuthorityKind::Root)
            .map(|a| a.cert_der.clone())
            .collect();
        if roots.is_empty() {
            self.trust_domain.write().take();
            self.bundle_version
                .store(state.bundle_version, Ordering::Release);
            self.trust.send_replace(None);
            return Ok(());
        }
        let intermediates: Vec<Vec<u8>> = state
            .authorities
            .iter()
            .filter(in_bundle)
            .filter(|a| a.kind == AuthorityKind::Intermediate)
            .map(|a| a.cert_der.clone())
            .collect();
        let crls: Vec<Vec<u8>> = state.crls.iter().map(|c| c.der.clone()).collect();
        let domain = state
            .authorities
            .iter()
            .rev()
            .find(in_bundle)
            .map(|a| TrustDomain::parse(&a.trust_domain))
            .transpose()
            .map_err(|e| CaRuntimeError::Unusable(e.to_string()))?;
        let mut trust = TrustStore::new(roots, intermediates, crls)
            .map_err(|e| CaRuntimeError::Unusable(e.to_string()))?;
        trust.prune_expired(now);
        *self.trust_domain.write() = domain;
        self.bundle_version
            .store(state.bundle_version, Ordering::Release);
        self.trust.send_replace(Some(Arc::new(trust)));
        Ok(())
    }
}

/// Whether an authority is in the trust bundle at `now`: entered (bundled, active or
/// retiring), not removed, not expired.
pub fn in_bundle(a: &AuthorityRecord, now: Timestamp) -> bool {
    matches!(
        a.state,
        AuthorityState::Bundled | AuthorityState::Active | AuthorityState::Retiring
    ) && a.removed_at.is_none()
        && a.not_after > now
}

/// `ENV/SERVICE` of `spiffe://TD/ENV/SERVICE`, or the text as given.
fn identity_path(identity: &str) -> String {
    match SpiffeId::parse(identity) {
        Ok(id) => id.path(),
        Err(_) => identity.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn handshakes_are_counted_per_anchor_identity_and_peer_address() {
        let ca = CaRuntime::new();
        let anchor = AnchorId(keyroll_ca::Fingerprint::of(b"root"));
        let s1 = Serial::from_random([1; 16]);
        let s2 = Serial::from_random([2; 16]);
        let peer = |port| Some(SocketAddr::from(([10, 0, 0, 1], port)));
        let t = Timestamp::from_unix_millis;
        ca.record_handshake(
            &anchor,
            "spiffe://example.org/prod/billing",
            &s1,
            peer(1000),
            t(5),
        );
        ca.record_handshake(&anchor, "prod/billing", &s2, peer(2000), t(9));
        ca.record_handshake(&anchor, "prod/billing", &s1, None, t(7));
        let mut uses = ca.take_handshakes();
        uses.sort_by(|a, b| a.peer.cmp(&b.peer));
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert_eq!(uses[0].peer, "");
        assert_eq!(uses[1].peer, "10.0.0.1");
        assert_eq!(uses[1].identity, "prod/billing");
        assert_eq!(uses[1].count, 2);
        assert_eq!(uses[1].serial, s2.to_string(), "the latest certificate");
        assert_eq!(uses[1].last_at, t(9));
        assert!(ca.take_handshakes().is_empty());
        ca.restore_handshakes(uses);
        assert_eq!(
            ca.take_handshakes().len(),
            2,
            "a failed flush puts them back"
        );
    }

    #[test]
    fn no_ca_installs_no_trust_store() {
        let ca = CaRuntime::new();
        let rx = ca.trust();
        ca.install(&CaState::default(), Timestamp::from_unix_millis(1))
            .unwrap();
        assert!(rx.borrow().is_none());
        assert_eq!(ca.bundle_version(), 0);
        assert_eq!(ca.trust_domain(), None);
    }
}
