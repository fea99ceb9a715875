//! TLS on keyroll's own listener (`[tls]`): the certificate from PEM files (watched and
//! reloaded without a restart), one `Arc<rustls::ServerConfig>` published through a
//! `tokio::sync::watch`, and the per-connection handshake the accept loop runs.
//!
//! Each accepted connection takes the config current at its accept: new handshakes use a new
//! certificate the moment it is published, open connections keep the one they started with.
//! A replacement that does not load (unreadable, not PEM, key not matching the certificate)
//! keeps the old config and is logged once; at start the same problem refuses to start.
//!
//! The files are *polled* (their modification time, size and inode, every
//! `tls.watch_interval`), not watched with inotify: polling is portable, needs no new
//! dependency, and survives what certificate tooling does — replacing a file by rename, or
//! Kubernetes swapping a symlinked directory — where a watch on the old inode goes quiet. A
//! change is loaded once it has held still for one interval, so a certificate and key written
//! one after the other are read as a pair rather than logged as a mismatch in between.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{ClientAuth, TlsSettings, TlsSource};

/// Why a certificate and key could not become a TLS config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("{}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no usable PEM private key.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (typically: the key is not the certificate's).
    #[error("{} and {}: {reason}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// Building the config failed for a reason of the chain and key given in memory.
    #[error("{0}")]
    Config(String),
}

/// Reads a PEM chain (leaf first) and private key into a listener config, with the leaf's
/// serial (lowercase hex, as `openssl x509 -serial` prints it) for the log.
pub fn load_files(cert: &Path, key: &Path) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            reason: "no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        // pki-types' messages name the PEM problem, never the key's bytes.
        reason: format!(
            "no usable private key (expected PEM: PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY): {e}"
        ),
    })?;
    let serial = keyroll_ca::inspect(&chain[0])
        .map(|i| i.serial_hex.to_ascii_lowercase())
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: format!("the first certificate does not parse: {e}"),
        })?;
    let config = server_config(chain, private).map_err(|e| match e {
        TlsError::Config(reason) => TlsError::Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        },
        other => other,
    })?;
    Ok((config, serial))
}

/// The listener config for a chain and key: keyroll's provider, TLS 1.2 and 1.3, HTTP/1.1,
/// no client authentication (connections that ask for client certificates get a config of
/// their own built from this one's certificate, see [`Acceptor`]).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(keyroll_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The config the listener starts with: a problem here refuses start, with one line naming
/// the file and what is wrong.
pub fn initial_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    match &settings.source {
        TlsSource::Files { cert, key } => {
            let (config, serial) = load_files(cert, key)?;
            tracing::info!(event = "tls.loaded", cert_file = %cert.display(), serial = serial.as_str(), "serving TLS with the certificate in {} (serial {serial})", cert.display());
            Ok(config)
        }
        // Issued once the store is loaded (`tls_issue`), not from files.
        TlsSource::Issue { identity, .. } => Err(TlsError::Config(format!(
            "tls.issue ({identity}) is issued by keyroll's CA at start, not read from files"
        ))),
    }
}

/// The client-certificate verification of `settings` (`None` with `client_auth = "off"`): the
/// trust store read from `tls.client_ca_file` with `tls.trust_domain`, or — without a file —
/// keyroll's own CA's (`ca`), followed as it changes ([`follow_ca_trust`]). Every decision is
/// handed to `sink` (log line, metrics, handshake uses) and the valid ones kept for their
/// connection. Neither a file nor a CA refuses start.
pub fn client_verification(
    settings: &TlsSettings,
    ca: &crate::ca::CaRuntime,
    sink: keyroll_ca::DecisionSink,
    now: Arc<dyn Fn() -> keyroll_core::Timestamp + Send + Sync>,
) -> Result<Option<ClientVerification>, TlsError> {
    if settings.client_auth == ClientAuth::Off {
        return Ok(None);
    }
    let (trust, td, ca_trust) = match &settings.client_ca_file {
        Some(path) => {
            let Some(td) = &settings.trust_domain else {
                return Err(TlsError::Config(
                    "tls.client_ca_file needs tls.trust_domain".into(),
                ));
            };
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })?;
            let mut trust = keyroll_ca::TrustStore::from_bundle_pem(&pem).map_err(|e| {
                TlsError::Certificate {
                    path: path.clone(),
                    reason: format!("not a usable trust bundle: {e}"),
                }
            })?;
            trust.prune_expired(now());
            let td = keyroll_ca::TrustDomain::parse(td)
                .map_err(|e| TlsError::Config(format!("tls.trust_domain = {td:?}: {e}")))?;
            (trust, td, None)
        }
        None => {
            // Subscribed before the current store is read: a change in between is not missed.
            let mut rx = ca.trust();
            let current = rx.borrow_and_update().clone();
            let (Some(trust), Some(td)) = (current, ca.trust_domain()) else {
                return Err(TlsError::Config(format!(
                    "tls.client_auth = \"{}\" needs a trust bundle: set tls.client_ca_file, or create keyroll's CA first (`keyroll ca init`, with client_auth = \"off\")",
                    settings.client_auth.as_str()
                )));
            };
            if let Some(named) = &settings.trust_domain
                && named != td.as_str()
            {
                return Err(TlsError::Config(format!(
                    "tls.trust_domain = {named:?} is not the trust domain of keyroll's CA ({td}); leave it out or set tls.client_ca_file"
                )));
            }
            ((*trust).clone(), td, Some(rx))
        }
    };
    let slots = Arc::new(PeerSlots::default());
    let sink_slots = Arc::clone(&slots);
    let sink: keyroll_ca::DecisionSink = Arc::new(move |d, peer| {
        sink(d, peer);
        if let Some(p) = peer {
            sink_slots.put(p, d);
        }
    });
    // The handshake only checks the trust domain; `admin_identities` is the admin API's rule.
    let verifier = keyroll_ca::ReasonedClientVerifier::new(
        Arc::new(parking_lot::RwLock::new(Arc::new(trust))),
        keyroll_ca::IdentityPolicy::any(td),
        false,
        sink,
        now,
    );
    Ok(Some(ClientVerification {
        verifier: Arc::new(verifier),
        slots,
        ca_trust,
    }))
}

/// Swaps the CA's trust store into the listener's verifier every time the CA publishes a new
/// one (a revocation's CRL, a rotation's new anchor), until `stop`: the next handshake is
/// verified against it, without a restart. Open connections keep what their handshake proved.
pub async fn follow_ca_trust(
    verifier: Arc<keyroll_ca::ReasonedClientVerifier>,
    mut trust: watch::Receiver<Option<Arc<keyroll_ca::TrustStore>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = trust.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
        // A CA is never removed once made: `None` (not expected) keeps the last store.
        let Some(next) = trust.borrow_and_update().clone() else {
            continue;
        };
        let anchors = next.anchors().count();
        let crls = next.crl_ders().count();
        verifier.replace_trust((*next).clone());
        tracing::info!(
            event = "tls.client_trust_updated",
            anchors,
            crls,
            "the listener verifies client certificates against the CA's new trust bundle ({anchors} anchors, {crls} CRLs) from the next handshake on"
        );
    }
}

/// Keeps the published config current until `stop`: the files polled, or (with `tls.issue`)
/// the certificate renewed.
pub async fn refresh(
    settings: TlsSettings,
    tx: watch::Sender<Arc<ServerConfig>>,
    stop: watch::Receiver<bool>,
) {
    match settings.source {
        TlsSource::Files { cert, key } => {
            watch_files(cert, key, settings.watch_interval, tx, stop).await;
        }
        TlsSource::Issue { .. } => {}
    }
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: a swapped link target is a change.
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The polling state of a certificate and key file pair (pure but for the stamps it is given).
#[derive(Debug)]
struct FileWatch {
    loaded: (Option<Stamp>, Option<Stamp>),
    seen: (Option<Stamp>, Option<Stamp>),
    failed: Option<(Option<Stamp>, Option<Stamp>)>,
}

/// What a poll found.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    /// Nothing new (or a change still settling, or one that already failed).
    Nothing,
    /// A change that held still for one interval: load it.
    Load,
}

impl FileWatch {
    fn new(now: (Option<Stamp>, Option<Stamp>)) -> FileWatch {
        FileWatch {
            loaded: now,
            seen: now,
            failed: None,
        }
    }

    fn poll(&mut self, now: (Option<Stamp>, Option<Stamp>)) -> Poll {
        let settled = now == self.seen;
        self.seen = now;
        if !settled || now == self.loaded || self.failed == Some(now) {
            return Poll::Nothing;
        }
        Poll::Load
    }

    fn loaded(&mut self) {
        self.loaded = self.seen;
        self.failed = None;
    }

    fn failed(&mut self) {
        self.failed = Some(self.seen);
    }
}

/// Polls `cert` and `key` every `interval` until `stop`, publishing a new config on `tx` for
/// every change that loads, and logging one error line for every change that does not.
pub async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    tx: watch::Sender<Arc<ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let pair = |c: &Path, k: &Path| (stamp(c), stamp(k));
    let mut state = FileWatch::new(pair(&cert, &key));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if state.poll(pair(&cert, &key)) == Poll::Nothing {
            continue;
        }
        match load_files(&cert, &key) {
            Ok((config, serial)) => {
                state.loaded();
                tx.send_replace(config);
                tracing::info!(
                    event = "tls.reloaded",
                    cert_file = %cert.display(),
                    key_file = %key.display(),
                    serial = serial.as_str(),
                    "new TLS certificate (serial {serial}) in use for new connections (from {})",
                    cert.display()
                );
            }
            Err(e) => {
                state.failed();
                tracing::error!(
                    event = "tls.reload_failed",
                    cert_file = %cert.display(),
                    key_file = %key.display(),
                    error = %e,
                    "the changed TLS certificate was not loaded, the previous one stays in use: {e}"
                );
            }
        }
    }
}

/// What a valid client certificate proved on one connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The SPIFFE id of the leaf's URI SAN.
    pub identity: String,
    /// The leaf's serial.
    pub serial: keyroll_ca::Serial,
    /// The trust anchor the chain ended at.
    pub anchor: Option<keyroll_ca::AnchorId>,
    /// The leaf's notAfter.
    pub not_after: Option<keyroll_core::Timestamp>,
}

/// The valid decisions of handshakes in flight, by peer address (unique among a listener's
/// open connections): the verifier's sink puts, the connection takes right after its handshake.
/// rustls gives a verifier no per-connection context to write into, hence this small map.
#[derive(Debug, Default)]
pub struct PeerSlots(parking_lot::Mutex<std::collections::HashMap<SocketAddr, PeerCertificate>>);

impl PeerSlots {
    /// Notes a decision of the handshake with `peer` (only valid ones are kept).
    pub fn put(&self, peer: SocketAddr, decision: &keyroll_ca::CertDecision) {
        if !decision.allowed() {
            return;
        }
        let (Some(identity), Some(serial)) = (&decision.identity, decision.serial) else {
            return;
        };
        self.0.lock().insert(
            peer,
            PeerCertificate {
                identity: identity.clone(),
                serial,
                anchor: decision.anchor,
                not_after: decision.not_after,
            },
        );
    }

    /// Takes what the handshake with `peer` proved, if anything.
    pub fn take(&self, peer: SocketAddr) -> Option<PeerCertificate> {
        self.0.lock().remove(&peer)
    }
}

/// Client certificates on the listener: keyroll-ca's verifier, and where its sink leaves each
/// connection's valid decision.
#[derive(Debug, Clone)]
pub struct ClientVerification {
    /// The verifier (its trust store swapped in place on CA rotation and CRL refresh).
    pub verifier: Arc<keyroll_ca::ReasonedClientVerifier>,
    /// Filled by the verifier's sink with [`PeerSlots::put`].
    pub slots: Arc<PeerSlots>,
    /// With keyroll's own CA as the trust source: its published trust store, which
    /// [`follow_ca_trust`] swaps into the verifier on every change.
    pub ca_trust: Option<watch::Receiver<Option<Arc<keyroll_ca::TrustStore>>>>,
}

/// The verifier without CA-name hints in the CertificateRequest. An empty list is valid TLS and
/// means "send whatever certificate you have": a client whose certificate chains to an anchor
/// the hints do not name yet (mid-rotation, or a foreign CA) still sends it, and the verifier
/// then logs the exact reason instead of the client silently sending none (`cert_missing`).
/// (keyroll-ca's hints were once malformed for OpenSSL clients; they are fixed, but the reason
/// above stands.)
#[derive(Debug)]
struct NoHints(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for NoHints {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What the request path knows of a connection's TLS (a request extension; absent on plain
/// HTTP).
#[derive(Debug, Clone)]
pub struct ConnectionTls {
    /// The listener's client-certificate setting.
    pub client_auth: ClientAuth,
    /// What a valid client certificate proved (none presented, or `client_auth = "off"`: none).
    pub peer_certificate: Option<PeerCertificate>,
}

/// Runs the server side of each connection's handshake with the config current at its accept.
#[derive(Debug, Clone)]
pub struct Acceptor {
    current: watch::Receiver<Arc<ServerConfig>>,
    client_auth: ClientAuth,
    handshake_timeout: Duration,
    client: Option<ClientVerification>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not done within the listener's header-read timeout.
    #[error("TLS handshake not completed within {0:?}")]
    Timeout(Duration),
    /// The peer or the TLS layer failed it.
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
    /// The per-connection config could not be built.
    #[error("TLS config for the connection: {0}")]
    Config(rustls::Error),
}

impl Acceptor {
    /// An acceptor over a published config. A handshake gets `handshake_timeout` (the
    /// listener's header-read timeout: the handshake comes before the request head).
    pub fn new(
        current: watch::Receiver<Arc<ServerConfig>>,
        client_auth: ClientAuth,
        handshake_timeout: Duration,
    ) -> Acceptor {
        Acceptor {
            current,
            client_auth,
            handshake_timeout,
            client: None,
            provider: keyroll_ca::tls::provider(),
        }
    }

    /// Asks every connection for a client certificate, verified by `client` (not mandatory:
    /// a client without one completes the handshake, and the admin API answers `cert_missing`).
    pub fn with_client_verification(mut self, client: ClientVerification) -> Acceptor {
        self.client = Some(client);
        self
    }

    /// The config for one connection: the published one, or with client certificates a copy
    /// carrying the verifier made for this peer (its sink then knows whom it decided for).
    fn config_for(&self, peer: SocketAddr) -> Result<Arc<ServerConfig>, rustls::Error> {
        let base = Arc::clone(&self.current.borrow());
        let Some(client) = &self.client else {
            return Ok(base);
        };
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(NoHints(client.verifier.for_peer(peer))))
            .with_cert_resolver(Arc::clone(&base.cert_resolver));
        config.alpn_protocols = base.alpn_protocols.clone();
        // Every handshake is verified, logged and counted (the CA's adoption gate): a resumed
        // session would skip the verifier and carry a certificate revoked since.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The handshake of one connection.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, ConnectionTls), HandshakeError> {
        let config = self.config_for(peer).map_err(HandshakeError::Config)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await;
        // Taken whatever the outcome, so a failed handshake leaves nothing behind.
        let peer_certificate = self.client.as_ref().and_then(|c| c.slots.take(peer));
        let tls = handshake
            .map_err(|_| HandshakeError::Timeout(self.handshake_timeout))?
            .map_err(HandshakeError::Failed)?;
        Ok((
            tls,
            ConnectionTls {
                client_auth: self.client_auth,
                peer_certificate,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real TCP, keyroll-ca's certificates and verifier, the listener's `Acceptor`: a valid client
    /// certificate reaches the connection's `ConnectionTls`, none completes the handshake with
    /// nothing, an expired one fails it after the sink saw `cert_expired`.
    #[tokio::test]
    async fn client_certificates_reach_the_connection_or_fail_the_handshake() {
        use keyroll_ca::{
            CertCode, IdentityPolicy, KeySource, LeafRequest, Serial, Signer, SpiffeId,
            TrustDomain, TrustStore, crl, issue_leaf, new_intermediate, new_root,
        };
        use keyroll_core::Timestamp;
        use std::sync::atomic::{AtomicI64, Ordering};
        const DAY: Duration = Duration::from_secs(86_400);
        #[allow(clippy::disallowed_methods)]
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let now = Timestamp::from_unix_millis(wall);
        let td = TrustDomain::parse("example.org").unwrap();
        let root = new_root(&td, 1, now, 365 * DAY, Serial::from_random([1; 16])).unwrap();
        let root_s = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
        let inter =
            new_intermediate(&root_s, &td, 1, now, 90 * DAY, Serial::from_random([2; 16])).unwrap();
        let inter_s = Signer::from_parts(&inter.cert_der, &inter.key_pkcs8_der).unwrap();
        let crls = vec![
            crl(&root_s, 1, now, now.saturating_add(7 * DAY), &[]).unwrap(),
            crl(&inter_s, 1, now, now.saturating_add(7 * DAY), &[]).unwrap(),
        ];
        let trust = TrustStore::new(vec![root.cert_der.clone()], vec![], crls).unwrap();
        let issue = |env: &str, svc: &str, server_auth: bool, n: u8| {
            let req = LeafRequest {
                identity: SpiffeId::from_parts(&td, env, svc).unwrap(),
                lifetime: DAY,
                server_auth,
                dns_names: if server_auth {
                    vec!["localhost".into()]
                } else {
                    vec![]
                },
                ip_addresses: vec![],
                serial: Serial::from_random([n; 16]),
            };
            issue_leaf(&inter_s, &req, KeySource::Generate, now).unwrap()
        };
        let server_leaf = issue("ops", "keyroll", true, 3);
        let alice = issue("ops", "alice", false, 4);
        let base = server_config(
            vec![
                CertificateDer::from(server_leaf.cert_der.clone()),
                CertificateDer::from(inter.cert_der.clone()),
            ],
            PrivateKeyDer::Pkcs8(
                server_leaf
                    .key_pkcs8_der
                    .as_ref()
                    .unwrap()
                    .as_bytes()
                    .to_vec()
                    .into(),
            ),
        )
        .unwrap();
        let slots = Arc::new(PeerSlots::default());
        let codes: Arc<parking_lot::Mutex<Vec<CertCode>>> = Arc::default();
        let (sink_slots, sink_codes) = (Arc::clone(&slots), Arc::clone(&codes));
        let sink: keyroll_ca::DecisionSink = Arc::new(move |d, peer| {
            sink_codes.lock().push(d.code);
            if let Some(p) = peer {
                sink_slots.put(p, d);
            }
        });
        let clock = Arc::new(AtomicI64::new(wall));
        let c = Arc::clone(&clock);
        let verifier = keyroll_ca::ReasonedClientVerifier::new(
            Arc::new(parking_lot::RwLock::new(Arc::new(trust.clone()))),
            IdentityPolicy::new(td.clone(), &["*/*"]).unwrap(),
            false,
            sink,
            Arc::new(move || Timestamp::from_unix_millis(c.load(Ordering::Relaxed))),
        );
        let (_tx, rx) = watch::channel(base);
        let acceptor = Acceptor::new(rx, ClientAuth::RequireAdmin, Duration::from_secs(5))
            .with_client_verification(ClientVerification {
                verifier: Arc::new(verifier),
                slots,
                ca_trust: None,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let outcome = match acceptor.accept(stream, peer).await {
                    Ok((mut tls, info)) => {
                        // Answer one byte so the client's read completes (TLS 1.3 reports a
                        // refused certificate only on the client's first read).
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, b"x").await;
                        Ok(info.peer_certificate.map(|p| p.identity))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = results_tx.send(outcome);
            }
        });
        let connect = |identity: Option<&keyroll_ca::IssuedLeaf>| {
            let config = keyroll_ca::client_config(
                &trust,
                identity.map(|l| {
                    (
                        vec![l.cert_der.clone(), inter.cert_der.clone()],
                        l.key_pkcs8_der.as_ref().unwrap(),
                    )
                }),
            )
            .unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                if let Ok(mut tls) = connector.connect(name, tcp).await {
                    let mut b = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut b).await;
                }
            }
        };
        connect(Some(&alice)).await;
        assert_eq!(
            results.recv().await.unwrap(),
            Ok(Some("spiffe://example.org/ops/alice".to_owned()))
        );
        connect(None).await;
        assert_eq!(results.recv().await.unwrap(), Ok(None));
        // Two days later, alice's one-day certificate has expired.
        clock.fetch_add(2 * 86_400_000, Ordering::Relaxed);
        connect(Some(&alice)).await;
        assert!(results.recv().await.unwrap().is_err());
        assert_eq!(
            *codes.lock(),
            vec![CertCode::Valid, CertCode::CertExpired],
            "no certificate: the verifier is not asked"
        );
    }

    fn s(n: u64) -> Option<Stamp> {
        Some(Stamp {
            modified: None,
            len: n,
            inode: 1,
        })
    }

    #[test]
    fn only_valid_decisions_reach_the_connection_and_each_once() {
        let slots = PeerSlots::default();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut d = keyroll_ca::CertDecision {
            code: keyroll_ca::CertCode::CertRevoked,
            detail: "revoked".into(),
            serial: Some(keyroll_ca::Serial::from_random([9; 16])),
            identity: Some("spiffe://example.org/ops/alice".into()),
            issuer: None,
            not_before: None,
            not_after: None,
            anchor: None,
            fingerprint: None,
        };
        slots.put(peer, &d);
        assert!(slots.take(peer).is_none());
        d.code = keyroll_ca::CertCode::Valid;
        slots.put(peer, &d);
        let got = slots.take(peer).unwrap();
        assert_eq!(got.identity, "spiffe://example.org/ops/alice");
        assert_eq!(got.serial, keyroll_ca::Serial::from_random([9; 16]));
        assert!(slots.take(peer).is_none(), "taken once");
    }

    #[test]
    fn a_change_loads_once_it_held_still_and_a_failure_is_not_retried() {
        let mut w = FileWatch::new((s(1), s(1)));
        assert_eq!(w.poll((s(1), s(1))), Poll::Nothing);
        // The certificate changed; the key not yet: wait.
        assert_eq!(w.poll((s(2), s(1))), Poll::Nothing);
        // Now the key: still moving.
        assert_eq!(w.poll((s(2), s(2))), Poll::Nothing);
        // Held still for one interval: load.
        assert_eq!(w.poll((s(2), s(2))), Poll::Load);
        w.failed();
        // A failed pair is not loaded (or logged) again until it changes.
        assert_eq!(w.poll((s(2), s(2))), Poll::Nothing);
        assert_eq!(w.poll((s(3), s(2))), Poll::Nothing);
        assert_eq!(w.poll((s(3), s(2))), Poll::Load);
        w.loaded();
        assert_eq!(w.poll((s(3), s(2))), Poll::Nothing);
    }
}
