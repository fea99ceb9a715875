//! Keeping a consumer's certificate set current in its `--cert-dir` (SPEC §9/§10): a fresh
//! P-256 key pair and CSR made here (the key never leaves the host), `POST /v1/self/certificate`
//! with the consumer's own key, the set written through [`certfiles`] (cert.pem, key.pem 0600,
//! ca.pem: the old set or the new one, never a mix), renewal at the instant
//! [`decide::renewal_instant`] draws, and `ca.pem` refreshed from `GET /v1/ca/bundle` when the
//! server's bundle version (in every `GET /v1/self` answer) is not the one held.
//!
//! What the agent knows of the set is `cert.json` in the state directory (serial, window,
//! renewal instant, the bundle version `ca.pem` holds, a pending reload). It is a cache of the
//! files, not their authority: at start the files are read, and `cert.json` is believed only
//! for the certificate it names (same serial). The durable order mirrors the key file's:
//! `reload_pending` is synced before the set is replaced, so a `kill -9` between the write and
//! the reload still reloads the app at the next start.
//!
//! A failure never touches the files: the old set stays in place and the attempt is retried
//! with backoff (full jitter); a revoked identity (403 `identity_revoked`) is logged as such
//! and retried only every few minutes.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyroll_ca::{SpiffeId, TrustDomain};
use keyroll_client::{Client, ClientError};
use keyroll_core::{ConsumerRef, Timestamp, parse_rfc3339, rfc3339};
use keyroll_proto::ca::SelfCertRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::certfiles::{self, CertSet};
use super::config::CertSpec;
use super::decide::{self, CertStep, HeldCert};
use super::keyfile;
use super::log::Log;

/// The certificate state's file name inside the state directory.
pub const FILE: &str = "cert.json";

/// The pause between attempts while the server refuses the identity (`identity_revoked`):
/// nothing changes until an operator acts, so asking often helps no one.
pub const REVOKED_RETRY: Duration = Duration::from_secs(300);

/// `cert.json`: what the agent last wrote to its certificate directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertState {
    /// The directory the set is kept in.
    pub cert_dir: PathBuf,
    /// The certificate's serial (hex), as read from `cert.pem`.
    #[serde(default)]
    pub serial: Option<String>,
    /// Its SPIFFE id.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// notBefore.
    #[serde(default)]
    pub not_before: Option<String>,
    /// notAfter.
    #[serde(default)]
    pub not_after: Option<String>,
    /// When the agent received it (the renewal window counts from here).
    #[serde(default)]
    pub received_at: Option<String>,
    /// When it is renewed.
    #[serde(default)]
    pub renew_at: Option<String>,
    /// The bundle version `ca.pem` holds.
    #[serde(default)]
    pub bundle_version: Option<u64>,
    /// The set changed but the app was not told yet.
    #[serde(default)]
    pub reload_pending: bool,
    /// The last failure, in words (cleared by the next success).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The server refuses to renew this identity.
    #[serde(default)]
    pub identity_revoked: bool,
    /// When this file was written.
    #[serde(default)]
    pub updated_at: String,
}

/// Reads `DIR/cert.json`; `None` when there is none.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<CertState>> {
    let path = state_dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            anyhow::anyhow!("{} is not a valid certificate state: {e}", path.display())
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn save(state_dir: &Path, state: &CertState) -> io::Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(io::Error::other)?;
    keyfile::write_atomically(&state_dir.join(FILE), &text, None)
}

/// What changed on disk (the app must reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// A new certificate set (serial of the new certificate).
    Set(String),
    /// Only `ca.pem` (the bundle version it now holds).
    Bundle(u64),
    /// A set finished or written before a restart whose reload had not run.
    Recovered,
}

/// Why an attempt failed.
#[derive(Debug)]
enum Trouble {
    /// 403 `identity_revoked`.
    Revoked(String),
    /// 404 `no_ca` (the CA went away between the poll and the request).
    NoCa,
    /// Anything else from the server or the network, or an answer that cannot be used.
    Failed(String),
    /// A local file could not be written.
    Local(String),
}

impl Trouble {
    fn message(&self) -> String {
        match self {
            Trouble::Revoked(m) => format!("the server refuses to renew this identity: {m}"),
            Trouble::NoCa => "the server has no CA (keyroll ca init)".to_owned(),
            Trouble::Failed(m) | Trouble::Local(m) => m.clone(),
        }
    }
}

fn from_client(e: &ClientError) -> Trouble {
    match e.problem().map(|p| p.code.as_str()) {
        Some("identity_revoked") => Trouble::Revoked(e.to_string()),
        Some("no_ca") => Trouble::NoCa,
        _ => Trouble::Failed(e.to_string()),
    }
}

/// One consumer's certificate set.
#[derive(Debug)]
pub struct CertKeeper {
    spec: CertSpec,
    consumer: ConsumerRef,
    state_dir: PathBuf,
    log: Log,
    state: CertState,
    held: Option<HeldCert>,
    trust_domain: Option<String>,
    failures: u32,
    retry_at: Option<Timestamp>,
    no_ca_logged: bool,
}

/// What `cert.pem` says, when it holds a certificate of `consumer`.
struct OnDisk {
    serial: String,
    spiffe_id: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

fn read_leaf(dir: &Path, consumer: &ConsumerRef) -> Result<Option<OnDisk>, String> {
    let path = dir.join("cert.pem");
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !dir.join("key.pem").exists() {
        return Err(format!("{} has no key.pem beside it", path.display()));
    }
    let chain =
        keyroll_ca::parse_pem_certs(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let info = chain
        .first()
        .map(|der| keyroll_ca::inspect(der))
        .transpose()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no certificate", path.display()))?;
    let spiffe_id = info.uri_sans.first().cloned().unwrap_or_default();
    match SpiffeId::parse(&spiffe_id) {
        Ok(id) if id.path() == consumer.to_string() => {}
        _ => {
            return Err(format!(
                "{} is not a certificate of {consumer} (its identity is {spiffe_id:?})",
                path.display()
            ));
        }
    }
    Ok(Some(OnDisk {
        serial: info.serial.map_or(info.serial_hex, |s| s.to_string()),
        spiffe_id,
        not_before: info.not_before,
        not_after: info.not_after,
    }))
}

impl CertKeeper {
    /// Opens the certificate directory (made when missing): finishes or discards a set a
    /// killed agent left half-written, and reads what is held. Fails only when the directory
    /// cannot be made or repaired; an unusable `cert.pem` is logged and renewed.
    pub fn open(
        spec: CertSpec,
        consumer: ConsumerRef,
        state_dir: &Path,
        log: Log,
    ) -> anyhow::Result<CertKeeper> {
        let dir = spec.dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the certificate directory {}: {e}",
                    dir.display()
                )
            })?;
        let finished = certfiles::recover(&dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot repair the certificate set in {}: {e}",
                dir.display()
            )
        })?;
        if finished {
            log.info(
                "agent.cert_recovered",
                None,
                "finished replacing the certificate set the agent was writing when it stopped",
                json!({"cert_dir": dir.display().to_string()}),
            );
        }
        let saved = load(state_dir)?.filter(|s| s.cert_dir == dir);
        let mut state = CertState {
            cert_dir: dir.clone(),
            reload_pending: finished || saved.as_ref().is_some_and(|s| s.reload_pending),
            ..CertState::default()
        };
        let mut keeper = CertKeeper {
            spec,
            consumer,
            state_dir: state_dir.to_owned(),
            log,
            state: CertState::default(),
            held: None,
            trust_domain: None,
            failures: 0,
            retry_at: None,
            no_ca_logged: false,
        };
        match read_leaf(&dir, &keeper.consumer) {
            Ok(Some(disk)) => {
                let same = saved
                    .as_ref()
                    .filter(|s| s.serial.as_deref() == Some(disk.serial.as_str()));
                let received = same
                    .and_then(|s| s.received_at.as_deref())
                    .and_then(parse_rfc3339);
                let renew_at = same
                    .and_then(|s| s.renew_at.as_deref())
                    .and_then(parse_rfc3339)
                    .unwrap_or_else(|| {
                        decide::renewal_instant(
                            disk.not_before,
                            disk.not_after,
                            received,
                            keeper.spec.renew_at,
                            fastrand::f64(),
                        )
                    });
                let bundle_version = same.and_then(|s| s.bundle_version);
                keeper.trust_domain = SpiffeId::parse(&disk.spiffe_id)
                    .ok()
                    .map(|id| id.trust_domain().to_string());
                keeper.held = Some(HeldCert {
                    not_after: disk.not_after,
                    renew_at,
                    bundle_version,
                });
                state.serial = Some(disk.serial);
                state.spiffe_id = Some(disk.spiffe_id);
                state.not_before = Some(rfc3339(disk.not_before));
                state.not_after = Some(rfc3339(disk.not_after));
                state.received_at = received.map(rfc3339);
                state.renew_at = Some(rfc3339(renew_at));
                state.bundle_version = bundle_version;
                if let Some(s) = same {
                    state.identity_revoked = s.identity_revoked;
                    state.last_error = s.last_error.clone();
                }
            }
            Ok(None) => {}
            Err(why) => keeper.log.warn(
                "agent.cert_unusable",
                None,
                &format!("{why}: a new certificate will replace it"),
                json!({"cert_dir": dir.display().to_string()}),
            ),
        }
        keeper.state = state;
        keeper
            .save()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", state_dir.join(FILE).display()))?;
        Ok(keeper)
    }

    fn save(&mut self) -> io::Result<()> {
        self.state.updated_at = super::now_rfc3339();
        save(&self.state_dir, &self.state)
    }

    fn save_or_log(&mut self) {
        if let Err(e) = self.save() {
            self.log.error(
                "agent.state_failed",
                None,
                &format!("cannot write {}: {e}", self.state_dir.join(FILE).display()),
                json!({}),
            );
        }
    }

    /// The directory the set is kept in.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Whether the app still has to be told of a set written before (a restart).
    pub fn reload_pending(&self) -> bool {
        self.state.reload_pending
    }

    /// The app was told.
    pub fn reloaded(&mut self) {
        self.state.reload_pending = false;
        self.save_or_log();
    }

    /// The bundle version `ca.pem` holds, for the report.
    pub fn bundle_version(&self) -> Option<u64> {
        self.held.and_then(|h| h.bundle_version)
    }

    /// What to pass as `known_bundle` on the long-poll: the version held (0 with none, so that
    /// `ca init` wakes the poll), or nothing while backing off (a bundle the agent cannot fetch
    /// yet must not turn the long-poll into a busy loop).
    pub fn known_bundle(&self) -> Option<u64> {
        if self.retry_at.is_some() {
            return None;
        }
        Some(self.bundle_version().unwrap_or(0))
    }

    /// When the agent must look again by itself: the retry after a failure, else the renewal.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.retry_at.or(self.held.map(|h| h.renew_at))
    }

    /// Does what [`decide::cert_step`] says at `now` given the server's bundle version;
    /// `Some` when the files changed and the app must reload.
    pub async fn step(
        &mut self,
        client: &Client,
        server_bundle: u64,
        now: Timestamp,
    ) -> Option<Changed> {
        match self.retry_at {
            Some(r) if now < r => return None,
            // Due: cleared whatever the step turns out to be, so that a retry that finds
            // nothing to do does not leave the long-poll cut short and deaf to the bundle.
            Some(_) => self.retry_at = None,
            None => {}
        }
        let result = match decide::cert_step(self.held.as_ref(), server_bundle, now) {
            CertStep::Wait(_) => return None,
            CertStep::NoCa => {
                if !self.no_ca_logged {
                    self.no_ca_logged = true;
                    self.log.info(
                        "agent.no_ca",
                        None,
                        "the server has no CA yet (`keyroll ca init`): the certificate follows as soon as it does",
                        json!({"cert_dir": self.spec.dir.display().to_string()}),
                    );
                }
                return None;
            }
            CertStep::Renew(reason) => self.renew(client, reason, now).await,
            CertStep::RefreshBundle => self.refresh(client).await,
        };
        match result {
            Ok(changed) => {
                self.failures = 0;
                self.retry_at = None;
                self.no_ca_logged = false;
                self.state.last_error = None;
                self.state.identity_revoked = false;
                self.save_or_log();
                changed
            }
            Err(t) => {
                self.failed(t, now);
                None
            }
        }
    }

    fn failed(&mut self, t: Trouble, now: Timestamp) {
        self.failures = self.failures.saturating_add(1);
        let pause = match &t {
            Trouble::Revoked(_) => REVOKED_RETRY.mul_f64(0.75 + fastrand::f64() / 4.0),
            _ => decide::backoff(self.failures, fastrand::f64()),
        };
        self.retry_at = Some(now.saturating_add(pause));
        let msg = t.message();
        let fields = json!({
            "cert_dir": self.spec.dir.display().to_string(),
            "serial": self.state.serial,
            "not_after": self.state.not_after,
            "failures": self.failures,
            "retry_in_ms": pause.as_millis() as u64,
        });
        // The state first, then the line: `agent status` run on seeing the line agrees with it.
        if matches!(t, Trouble::Revoked(_)) {
            self.state.identity_revoked = true;
        }
        self.state.last_error = Some(msg.clone());
        self.save_or_log();
        match &t {
            Trouble::Revoked(_) => self.log.error(
                "agent.identity_revoked",
                None,
                &format!(
                    "{msg}; the files keep the last certificate (until it expires); an operator must lift the revocation or give the service a new identity"
                ),
                fields,
            ),
            _ => self.log.warn(
                "agent.cert_failed",
                None,
                &format!("{msg}; the files keep the last good set; retrying"),
                fields,
            ),
        }
    }

    async fn renew(
        &mut self,
        client: &Client,
        reason: &'static str,
        now: Timestamp,
    ) -> Result<Option<Changed>, Trouble> {
        let td = match &self.trust_domain {
            Some(td) => td.clone(),
            None => {
                client
                    .ca_bundle()
                    .await
                    .map_err(|e| from_client(&e))?
                    .body
                    .trust_domain
            }
        };
        let td = TrustDomain::parse(&td)
            .map_err(|e| Trouble::Failed(format!("the server's trust domain: {e}")))?;
        let id = SpiffeId::from_parts(
            &td,
            self.consumer.environment.as_str(),
            self.consumer.name.as_str(),
        )
        .map_err(|e| Trouble::Failed(e.to_string()))?;
        let pair = keyroll_ca::new_csr(&id)
            .map_err(|e| Trouble::Local(format!("cannot make a key pair and CSR: {e}")))?;
        let req = SelfCertRequest {
            csr: pair.csr_pem(),
            ttl: self.spec.ttl.map(keyroll_core::format_duration),
            server_auth: self.spec.server_auth.then_some(true),
        };
        let issued = client
            .self_certificate(&req)
            .await
            .map_err(|e| from_client(&e))?
            .body;
        // Nothing is written that does not fit together: the leaf must certify the key made
        // here and name this consumer, and ca.pem must hold certificates.
        let unusable =
            |why: String| Trouble::Failed(format!("the server's certificate is unusable: {why}"));
        let chain = keyroll_ca::parse_pem_certs(issued.cert_pem.as_bytes())
            .map_err(|e| unusable(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| unusable("no certificate".into()))?;
        if !pair.certifies(leaf) {
            return Err(unusable("it is not for the key this agent made".into()));
        }
        let info = keyroll_ca::inspect(leaf).map_err(|e| unusable(e.to_string()))?;
        let spiffe_id = info.uri_sans.first().cloned().unwrap_or_default();
        let named = SpiffeId::parse(&spiffe_id)
            .ok()
            .filter(|i| i.path() == self.consumer.to_string())
            .ok_or_else(|| {
                unusable(format!(
                    "its identity is {spiffe_id:?}, not {}",
                    self.consumer
                ))
            })?;
        keyroll_ca::parse_pem_certs(issued.ca_pem.as_bytes())
            .map_err(|e| unusable(format!("ca_pem: {e}")))?;
        let serial = info
            .serial
            .map_or(info.serial_hex.clone(), |s| s.to_string());
        let dir = self.spec.dir.clone();
        let local = |e: io::Error| {
            Trouble::Local(format!(
                "cannot write the certificate set in {}: {e}",
                dir.display()
            ))
        };
        // Durable before the files change: a crash after the write still reloads the app.
        self.state.reload_pending = true;
        self.save().map_err(local)?;
        let key_pem = pair.key_pem();
        certfiles::write_set(
            &dir,
            &CertSet {
                cert: &issued.cert_pem,
                key: &key_pem,
                ca: &issued.ca_pem,
            },
        )
        .map_err(local)?;
        let renew_at = decide::renewal_instant(
            info.not_before,
            info.not_after,
            Some(now),
            self.spec.renew_at,
            fastrand::f64(),
        );
        let previous = self.state.serial.take();
        self.trust_domain = Some(named.trust_domain().to_string());
        self.held = Some(HeldCert {
            not_after: info.not_after,
            renew_at,
            bundle_version: Some(issued.bundle_version),
        });
        self.state.serial = Some(serial.clone());
        self.state.spiffe_id = Some(spiffe_id.clone());
        self.state.not_before = Some(rfc3339(info.not_before));
        self.state.not_after = Some(rfc3339(info.not_after));
        self.state.received_at = Some(rfc3339(now));
        self.state.renew_at = Some(rfc3339(renew_at));
        self.state.bundle_version = Some(issued.bundle_version);
        self.save_or_log();
        self.log.info(
            "agent.cert_issued",
            None,
            &format!(
                "wrote a new certificate ({reason}) for {spiffe_id} to {}; renewal at {}",
                dir.display(),
                rfc3339(renew_at)
            ),
            json!({
                "reason": reason,
                "serial": serial,
                "previous_serial": previous,
                "spiffe_id": spiffe_id,
                "not_before": rfc3339(info.not_before),
                "not_after": rfc3339(info.not_after),
                "renew_at": rfc3339(renew_at),
                "bundle_version": issued.bundle_version,
                "server_auth": info.server_auth,
                "cert_dir": dir.display().to_string(),
            }),
        );
        Ok(Some(Changed::Set(serial)))
    }

    async fn refresh(&mut self, client: &Client) -> Result<Option<Changed>, Trouble> {
        let b = client.ca_bundle().await.map_err(|e| from_client(&e))?.body;
        keyroll_ca::parse_pem_certs(b.roots_pem.as_bytes())
            .map_err(|e| Trouble::Failed(format!("the server's bundle is unusable: {e}")))?;
        let dir = self.spec.dir.clone();
        let path = dir.join("ca.pem");
        let changed = fs::read_to_string(&path).ok().as_deref() != Some(b.roots_pem.as_str());
        let local = |e: io::Error| Trouble::Local(format!("cannot write {}: {e}", path.display()));
        if changed {
            self.state.reload_pending = true;
            self.save().map_err(local)?;
            certfiles::write_ca(&dir, &b.roots_pem).map_err(local)?;
        }
        let from = self.bundle_version();
        if let Some(h) = self.held.as_mut() {
            h.bundle_version = Some(b.bundle_version);
        }
        self.trust_domain = Some(b.trust_domain.clone());
        self.state.bundle_version = Some(b.bundle_version);
        self.save_or_log();
        self.log.info(
            "agent.bundle_refreshed",
            None,
            &if changed {
                format!("ca.pem now holds bundle version {}", b.bundle_version)
            } else {
                format!(
                    "bundle version {} has the same roots as ca.pem: not rewritten, no reload",
                    b.bundle_version
                )
            },
            json!({
                "from_version": from,
                "bundle_version": b.bundle_version,
                "rewritten": changed,
                "cert_dir": dir.display().to_string(),
            }),
        );
        Ok(changed.then_some(Changed::Bundle(b.bundle_version)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keyroll_ca::{KeySource, LeafRequest, Serial, Signer, new_intermediate, new_root, pem};

    use super::*;

    /// A set for `identity` issued by a throwaway CA, valid from about now for a day.
    fn set_for(identity: &str, serial_byte: u8) -> (String, String, String) {
        let now = super::super::now();
        let td = TrustDomain::parse("example.test").unwrap();
        let root = new_root(
            &td,
            1,
            now,
            Duration::from_secs(864_000),
            Serial::from_random([1; 16]),
        )
        .unwrap();
        let rs = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
        let int = new_intermediate(
            &rs,
            &td,
            1,
            now,
            Duration::from_secs(86_400 * 5),
            Serial::from_random([2; 16]),
        )
        .unwrap();
        let is = Signer::from_parts(&int.cert_der, &int.key_pkcs8_der).unwrap();
        let id = SpiffeId::parse(&format!("spiffe://example.test/{identity}")).unwrap();
        let pair = keyroll_ca::new_csr(&id).unwrap();
        let leaf = keyroll_ca::issue_leaf(
            &is,
            &LeafRequest {
                identity: id,
                lifetime: Duration::from_secs(86_400),
                server_auth: false,
                dns_names: vec![],
                ip_addresses: vec![],
                serial: Serial::from_random([serial_byte; 16]),
            },
            KeySource::Csr(&pair.csr_der),
            now,
        )
        .unwrap();
        let cert = pem("CERTIFICATE", &leaf.cert_der) + &pem("CERTIFICATE", &int.cert_der);
        (cert, pair.key_pem(), pem("CERTIFICATE", &root.cert_der))
    }

    fn spec(dir: &Path) -> CertSpec {
        CertSpec {
            dir: dir.to_owned(),
            ttl: None,
            server_auth: false,
            renew_at: 0.5,
        }
    }

    fn consumer() -> ConsumerRef {
        ConsumerRef::parse("prod/api").unwrap()
    }

    fn write(dir: &Path, set: &(String, String, String)) {
        certfiles::write_set(
            dir,
            &CertSet {
                cert: &set.0,
                key: &set.1,
                ca: &set.2,
            },
        )
        .unwrap();
    }

    #[test]
    fn an_empty_directory_holds_nothing_and_waits_for_the_ca() {
        let t = tempfile::tempdir().unwrap();
        let cd = t.path().join("tls/api");
        let k = CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        assert!(cd.is_dir(), "made when missing");
        assert_eq!(k.held, None);
        assert_eq!(k.known_bundle(), Some(0), "ca init wakes the long-poll");
        assert_eq!(k.next_wake(), None);
        assert_eq!(k.bundle_version(), None);
        assert!(!k.reload_pending());
        let saved = load(t.path()).unwrap().unwrap();
        assert_eq!(saved.cert_dir, cd);
        assert_eq!(saved.serial, None);
    }

    #[test]
    fn a_held_certificate_is_read_back_and_its_state_believed_only_for_its_serial() {
        let t = tempfile::tempdir().unwrap();
        let cd = t.path().join("tls");
        fs::create_dir(&cd).unwrap();
        write(&cd, &set_for("prod/api", 7));
        // No cert.json: the window is read from the file, the bundle version is unknown.
        let k = CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        let held = k.held.unwrap();
        assert_eq!(held.bundle_version, None);
        let state = load(t.path()).unwrap().unwrap();
        let nb = parse_rfc3339(state.not_before.as_deref().unwrap()).unwrap();
        let na = parse_rfc3339(state.not_after.as_deref().unwrap()).unwrap();
        let life = na.duration_since(nb).as_millis() as i64;
        let offset = held.renew_at.unix_millis() - nb.unix_millis();
        assert!(
            (life * 45 / 100..=life * 55 / 100).contains(&offset),
            "{offset} of {life}"
        );
        assert_eq!(k.trust_domain.as_deref(), Some("example.test"));
        assert_eq!(
            decide::cert_step(k.held.as_ref(), 3, super::super::now()),
            CertStep::RefreshBundle,
            "an unknown bundle is fetched"
        );
        drop(k);
        // The state names this serial: its renewal point and bundle version are kept.
        let mut s = load(t.path()).unwrap().unwrap();
        s.renew_at = Some("2030-01-01T00:00:00Z".into());
        s.bundle_version = Some(4);
        save(t.path(), &s).unwrap();
        let k = CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        let held = k.held.unwrap();
        assert_eq!(
            held.renew_at,
            parse_rfc3339("2030-01-01T00:00:00Z").unwrap()
        );
        assert_eq!(held.bundle_version, Some(4));
        assert_eq!(k.known_bundle(), Some(4));
        drop(k);
        // Another certificate in the files: the state is not believed.
        write(&cd, &set_for("prod/api", 8));
        let k = CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        assert_eq!(k.held.unwrap().bundle_version, None);
        assert_ne!(
            k.held.unwrap().renew_at,
            parse_rfc3339("2030-01-01T00:00:00Z").unwrap()
        );
    }

    #[tokio::test]
    async fn a_due_retry_that_finds_nothing_to_do_is_cleared() {
        let t = tempfile::tempdir().unwrap();
        let cd = t.path().join("tls");
        fs::create_dir(&cd).unwrap();
        write(&cd, &set_for("prod/api", 11));
        let mut k =
            CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        let now = super::super::now();
        if let Some(h) = k.held.as_mut() {
            h.bundle_version = Some(4);
        }
        // Backing off: the long-poll is not woken by the bundle, and no request is made.
        k.retry_at = Some(now.saturating_add(Duration::from_secs(60)));
        assert_eq!(k.known_bundle(), None);
        // Nothing listens there: any request would fail and set a new retry.
        let client = Client::new("http://127.0.0.1:9", Some("kr_x".into())).unwrap();
        assert_eq!(k.step(&client, 5, now).await, None);
        assert_eq!(
            k.retry_at,
            Some(now.saturating_add(Duration::from_secs(60)))
        );
        // Due, with nothing to do (the server's bundle is the one held): cleared.
        let later = now.saturating_add(Duration::from_secs(61));
        assert_eq!(k.step(&client, 4, later).await, None);
        assert_eq!(k.retry_at, None);
        assert_eq!(k.known_bundle(), Some(4));
        assert_eq!(k.next_wake(), k.held.map(|h| h.renew_at));
        // Due, with a refresh to make against a server that is not there: a new retry.
        assert_eq!(k.step(&client, 5, later).await, None);
        assert!(k.retry_at.is_some_and(|r| r > later));
        assert!(load(t.path()).unwrap().unwrap().last_error.is_some());
    }

    #[test]
    fn another_identitys_certificate_is_not_held() {
        let t = tempfile::tempdir().unwrap();
        let cd = t.path().join("tls");
        fs::create_dir(&cd).unwrap();
        write(&cd, &set_for("prod/web", 9));
        let k = CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        assert_eq!(k.held, None, "renewed at the first step");
        assert_eq!(
            decide::cert_step(k.held.as_ref(), 1, super::super::now()),
            CertStep::Renew("missing")
        );
    }

    #[test]
    fn a_committed_set_is_finished_at_start_and_the_reload_is_pending() {
        let t = tempfile::tempdir().unwrap();
        let cd = t.path().join("tls");
        fs::create_dir(&cd).unwrap();
        let set = set_for("prod/api", 10);
        // What a kill after the commit point leaves: the .next files and the marker.
        for (name, text) in [
            ("cert.pem", &set.0),
            ("key.pem", &set.1),
            ("ca.pem", &set.2),
        ] {
            fs::write(cd.join(format!("{name}.next")), text).unwrap();
        }
        fs::write(cd.join(".set-pending"), "").unwrap();
        let mut k =
            CertKeeper::open(spec(&cd), consumer(), t.path(), Log::new("prod/api")).unwrap();
        assert!(k.reload_pending());
        assert!(k.held.is_some());
        assert_eq!(fs::read_to_string(cd.join("cert.pem")).unwrap(), set.0);
        assert!(!cd.join(".set-pending").exists());
        k.reloaded();
        assert!(!load(t.path()).unwrap().unwrap().reload_pending);
    }
}
