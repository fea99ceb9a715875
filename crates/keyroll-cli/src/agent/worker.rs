//! One consumer's agent loop: long-poll the consumer's state with its own key, and carry out
//! what [`next_step`] says — fetch a handover, or rotate under an intent persisted first — then
//! write the key, reload the app, and report with the new key. Failures back off (full jitter)
//! and never touch the key file: the last good key stays until a newer one is in hand.
//!
//! The order of durable writes is what makes `kill -9` harmless at any point:
//! 1. `agent.json` records the intent (a fresh Idempotency-Key) before `POST /v1/self/rotate`;
//! 2. it records `reload_pending` before the key file is replaced;
//! 3. the key file is replaced atomically; then `agent.json` records the version and drops the
//!    intent; then the reload runs and `reload_pending` is dropped.
//!
//! Restarted after any step, the agent retries the intent with the same Idempotency-Key (the
//! server replays the key, or the file already holds it: unchanged), runs a pending reload, and
//! otherwise follows the server's `handover` / `rotate: superseded`.
//!
//! With a certificate directory, each answer of the poll is also handed to the
//! [`CertKeeper`] (renewal, bundle refresh); the poll is cut short for the certificate's
//! renewal instant, passes the bundle version held as `known_bundle` so that a new CA bundle
//! ends the wait, and every report names the bundle version `ca.pem` holds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyroll_client::{Client, ClientError};
use keyroll_core::{parse_key, parse_rfc3339};
use keyroll_proto as proto;
use serde_json::json;
use tokio::sync::watch;

use super::certs::{CertKeeper, Changed};
use super::config::ConsumerSpec;
use super::decide::{REJECTED_RETRY, Step, backoff, next_step, poll_wait};
use super::keyfile::{self, Written};
use super::log::{Level, Log};
use super::state::{self, AgentState, Health, Intent};
use crate::exit::{Exit, Failure};

/// How often the agent polls and reports.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The long-poll's `wait` (the server holds the answer at most this long).
    pub wait: Duration,
    /// The report interval.
    pub heartbeat: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            wait: Duration::from_secs(25),
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// A new key for `keyroll run`'s child.
#[derive(Clone)]
pub struct KeyUpdate {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u32,
    /// How long the key it replaces keeps working, when known.
    pub old_key_left: Option<Duration>,
}

impl std::fmt::Debug for KeyUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyUpdate")
            .field("key", &"<redacted>")
            .field("version", &self.version)
            .field("old_key_left", &self.old_key_left)
            .finish()
    }
}

/// Why a step did not complete.
#[derive(Debug)]
enum Trouble {
    /// No working server: transport failure or 5xx. Retried with backoff.
    Unreachable(String),
    /// The server refuses the key. Retried slowly; someone must bootstrap a new key.
    Rejected { code: String, detail: String },
    /// Another answer the agent cannot act on. Retried with backoff.
    Other(String),
    /// A local file could not be written. Retried with backoff.
    Local(String),
}

fn classify(e: &ClientError) -> Trouble {
    match e {
        ClientError::Api {
            status: 401 | 403,
            problem,
        } => Trouble::Rejected {
            code: problem.code.clone(),
            detail: problem.detail.clone(),
        },
        ClientError::Unreachable { .. } => Trouble::Unreachable(e.to_string()),
        ClientError::Api { status, .. } | ClientError::Decode { status, .. } if *status >= 500 => {
            Trouble::Unreachable(e.to_string())
        }
        _ => Trouble::Other(e.to_string()),
    }
}

fn api_code(e: &ClientError) -> Option<&str> {
    e.problem().map(|p| p.code.as_str())
}

/// How a key came to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Rotated,
    Recovered,
}

/// How the server's HTTPS is trusted: `--ca-file`, plus the `ca.pem` this agent keeps when it
/// keeps certificates. A server whose own certificate comes from keyroll's CA moves to the new
/// root in a root rotation; the kept bundle holds that root before the server switches (the
/// rotation waits for every agent to report it), so the agent is never cut off. A kept bundle
/// that cannot be read or parsed is left out (the `--ca-file` still applies).
fn server_trust(tls: &keyroll_client::Tls, certs: Option<&CertKeeper>) -> keyroll_client::Tls {
    let Some(keeper) = certs else {
        return tls.clone();
    };
    match std::fs::read(keeper.dir().join("ca.pem")) {
        Ok(pem) => tls.also_trusting_pem(&pem).unwrap_or_else(|_| tls.clone()),
        Err(_) => tls.clone(),
    }
}

/// One consumer's agent.
#[derive(Debug)]
pub struct Worker {
    /// The state directory's lock, held for the agent's life (released by the kernel on any
    /// exit, kill -9 included).
    _lock: state::DirLock,
    spec: ConsumerSpec,
    server: String,
    /// How the server's HTTPS is trusted (`--ca-file`).
    tls: keyroll_client::Tls,
    mode: &'static str,
    timing: Timing,
    log: Log,
    state: AgentState,
    key: String,
    client: Client,
    known: Option<i64>,
    failures: u32,
    last_report: Option<Instant>,
    /// Whether the pending intent was found at start (a retry after a crash).
    recovering: bool,
    /// The held key's deadline, from the last state the server sent (for `keyroll run`).
    deadline: Option<String>,
    /// The grace a rotation gives the old key, from the last state.
    grace: Option<Duration>,
    host: Option<String>,
    updates: Option<watch::Sender<Option<KeyUpdate>>>,
    /// The certificate set, with `--cert-dir`.
    certs: Option<CertKeeper>,
}

fn local(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Trouble {
    Trouble::Local(format!("cannot {what} {}: {e}", path.display()))
}

impl Worker {
    /// Reads the bootstrap key and the state (made at the first start). Fails, before anything
    /// runs, when there is no usable key in the file.
    pub fn start(
        spec: ConsumerSpec,
        server: &str,
        tls: &keyroll_client::Tls,
        mode: &'static str,
        timing: Timing,
        updates: Option<watch::Sender<Option<KeyUpdate>>>,
    ) -> anyhow::Result<Worker> {
        let consumer = spec.consumer.to_string();
        let path = &spec.key_file;
        let no_key = |why: String| -> anyhow::Error {
            Failure::new(
                Exit::Error,
                "no_key",
                format!(
                    "{why}: the agent starts from the consumer's current key (from `keyroll consumer create {consumer}` or `keyroll apply --out-dir`), mode 0600, in that file"
                ),
            )
            .into()
        };
        let key = match keyfile::read(path) {
            Ok(Some(k)) => k,
            Ok(None) => return Err(no_key(format!("no key in {}", path.display()))),
            Err(e) => return Err(no_key(format!("cannot read {}: {e}", path.display()))),
        };
        check_key(&key, &spec).map_err(|e| {
            no_key(format!(
                "{} does not hold a key of {consumer} ({e})",
                path.display()
            ))
        })?;
        keyfile::remove_leftovers(path);
        state::ensure_dir(&spec.state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state directory {}: {e}",
                spec.state_dir.display()
            )
        })?;
        let lock = state::lock(&spec.state_dir)?;
        let loaded = state::load(&spec.state_dir)?;
        let recovering = loaded.as_ref().is_some_and(|s| s.intent.is_some());
        let mut state = match loaded {
            Some(s) if s.consumer == consumer => s,
            Some(s) => {
                return Err(crate::exit::usage(format!(
                    "the state directory {} belongs to {}, not {consumer}: give this consumer its own --state-dir",
                    spec.state_dir.display(),
                    s.consumer
                )));
            }
            None => AgentState {
                agent: state::new_agent_id()?,
                consumer: consumer.clone(),
                key_file: path.clone(),
                version: None,
                kid: None,
                intent: None,
                reload_pending: None,
                pid: 0,
                updated_at: String::new(),
                health: Health::default(),
            },
        };
        state.key_file = path.clone();
        state.pid = std::process::id();
        let certs = match &spec.certs {
            Some(c) => Some(CertKeeper::open(
                c.clone(),
                spec.consumer.clone(),
                &spec.state_dir,
                Log::new(&consumer),
            )?),
            None => None,
        };
        let client = Client::with_tls(
            server,
            Some(key.clone()),
            &server_trust(tls, certs.as_ref()),
        )?;
        let host = nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned());
        let mut w = Worker {
            _lock: lock,
            log: Log::new(&consumer),
            spec,
            server: server.to_owned(),
            tls: tls.clone(),
            mode,
            timing,
            state,
            key,
            client,
            known: None,
            failures: 0,
            last_report: None,
            recovering,
            deadline: None,
            grace: None,
            host,
            updates,
            certs,
        };
        w.save().map_err(|t| anyhow::anyhow!("{}", describe(&t)))?;
        Ok(w)
    }

    /// The key the agent holds.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        self.log.info(
            "agent.started",
            self.state.version,
            &format!(
                "keeping {} current in {}",
                self.spec.consumer,
                self.spec.key_file.display()
            ),
            json!({
                "agent": self.state.agent,
                "key_file": self.spec.key_file.display().to_string(),
                "state_dir": self.spec.state_dir.display().to_string(),
                "server": keyroll_core::redact_url(&self.server),
                "mode": self.mode,
                "pending_intent": self.recovering,
                "cert_dir": self.certs.as_ref().map(|c| c.dir().display().to_string()),
            }),
        );
        if let Some(v) = self.state.reload_pending {
            self.log.info(
                "agent.recovered",
                Some(v),
                "the key was written before the agent stopped, but the app was not told: reloading now",
                json!({"step": "reload"}),
            );
            self.reload(v).await;
        }
        if self.certs.as_ref().is_some_and(CertKeeper::reload_pending) {
            self.reload_certs(Changed::Recovered).await;
        }
        loop {
            self.pick_up_file_key();
            match self.step().await {
                Ok(()) => self.failures = 0,
                Err(t) => {
                    let pause = self.on_trouble(t);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn save(&mut self) -> Result<(), Trouble> {
        self.state.updated_at = super::now_rfc3339();
        state::save(&self.spec.state_dir, &self.state)
            .map_err(|e| local("write", &self.spec.state_dir.join(state::FILE), e))
    }

    /// Saves, logging a failure (the state file is for status and recovery; the loop goes on).
    fn save_or_log(&mut self) {
        if let Err(t) = self.save() {
            self.log.error(
                "agent.state_failed",
                self.state.version,
                &describe(&t),
                json!({}),
            );
        }
    }

    /// The trust for the server right now (see [`server_trust`]).
    fn server_trust(&self) -> keyroll_client::Tls {
        server_trust(&self.tls, self.certs.as_ref())
    }

    /// Adopts a key someone else wrote into the file (a new bootstrap after a rejection).
    fn pick_up_file_key(&mut self) {
        let Ok(Some(k)) = keyfile::read(&self.spec.key_file) else {
            return;
        };
        if k == self.key || check_key(&k, &self.spec).is_err() {
            return;
        }
        match Client::with_tls(&self.server, Some(k.clone()), &self.server_trust()) {
            Ok(c) => self.client = c,
            Err(_) => return,
        }
        self.key = k;
        self.known = None;
        self.state.version = None;
        self.state.kid = None;
        self.log.info(
            "agent.key_file_changed",
            None,
            "the key file holds a key the agent did not write: using it from now on",
            json!({"key_file": self.spec.key_file.display().to_string()}),
        );
    }

    async fn step(&mut self) -> Result<(), Trouble> {
        if let Some(intent) = self.state.intent.clone() {
            self.settle_intent(intent).await?;
        }
        let mut until = self.last_report.map_or(Duration::ZERO, |t| {
            self.timing.heartbeat.saturating_sub(t.elapsed())
        });
        if let Some(at) = self.certs.as_ref().and_then(CertKeeper::next_wake) {
            until = until.min(at.duration_since(super::now()));
        }
        let wait = poll_wait(self.timing.wait, until);
        let known_bundle = self.certs.as_ref().and_then(CertKeeper::known_bundle);
        let s = self
            .client
            .self_state(Some(wait), self.known, known_bundle)
            .await
            .map_err(|e| classify(&e))?
            .body;
        self.on_contact(&s);
        match next_step(&s) {
            Step::Handover(n) => self.take_handover(n).await?,
            Step::Rotate {
                expect_active,
                reason,
            } => self.rotate(expect_active, reason).await?,
            Step::Wait => self.known = Some(s.revision),
        }
        let held_bundle = self.certs.as_ref().and_then(CertKeeper::bundle_version);
        let changed = match self.certs.as_mut() {
            Some(k) => k.step(&self.client, s.bundle_version, super::now()).await,
            None => None,
        };
        if let Some(c) = changed {
            self.reload_certs(c).await;
            // ca.pem may hold a new root: the server's own certificate may move to it.
            if let Ok(client) =
                Client::with_tls(&self.server, Some(self.key.clone()), &self.server_trust())
            {
                self.client = client;
            }
        }
        if self.certs.as_ref().and_then(CertKeeper::bundle_version) != held_bundle {
            // At once (not at the next heartbeat): a CA rotation waits for every agent to
            // report the bundle with the new CA before the old one may leave it.
            self.report().await;
            return Ok(());
        }
        let due = self
            .last_report
            .is_none_or(|t| t.elapsed() >= self.timing.heartbeat);
        if due {
            self.report().await;
        }
        Ok(())
    }

    fn on_contact(&mut self, s: &proto::SelfState) {
        let h = &mut self.state.health;
        let now = super::now_rfc3339();
        if h.server_reachable != Some(true) {
            if h.server_reachable == Some(false) {
                self.log.info(
                    "agent.server_back",
                    Some(s.version),
                    "the server answers again",
                    json!({"down_since": h.since, "last_error": h.last_error}),
                );
            }
            h.server_reachable = Some(true);
            h.since = Some(now.clone());
        }
        if let Some(code) = h.key_rejected.take() {
            self.log.info(
                "agent.key_accepted",
                Some(s.version),
                &format!("the server accepts the key again (it was rejected as {code})"),
                json!({}),
            );
        }
        h.last_error = None;
        h.last_contact = Some(now);
        self.failures = 0;
        self.state.version = Some(s.version);
        self.state.kid = Some(s.kid.clone());
        self.deadline = s.deadline.clone();
        self.grace = keyroll_core::parse_duration(&s.grace).ok();
        self.save_or_log();
    }

    /// Logs and records a failure; returns how long to wait before the next attempt.
    fn on_trouble(&mut self, t: Trouble) -> Duration {
        let now = super::now_rfc3339();
        let version = self.state.version;
        let h = &mut self.state.health;
        // The line is written after the state: whoever reads the line (a person, a test) and
        // then runs `agent status` sees the state that goes with it.
        let (pause, level, event, message, fields) = match &t {
            Trouble::Rejected { code, detail } => {
                h.server_reachable = Some(true);
                h.key_rejected = Some(code.clone());
                h.last_error = Some(format!("{detail} ({code})"));
                let pause = REJECTED_RETRY.mul_f64(0.5 + fastrand::f64() / 2.0);
                (
                    pause,
                    Level::Error,
                    "agent.key_rejected",
                    format!(
                        "the server rejects the key in {} ({code}: {detail}); the agent cannot rotate with it. Bootstrap a new key: `keyroll rotate {}` (or `keyroll consumer create`) and write it to that file; the agent picks it up by itself and keeps retrying meanwhile",
                        self.spec.key_file.display(),
                        self.spec.consumer
                    ),
                    json!({"code": code, "retry_in_ms": pause.as_millis() as u64}),
                )
            }
            Trouble::Unreachable(msg) | Trouble::Other(msg) | Trouble::Local(msg) => {
                self.failures = self.failures.saturating_add(1);
                let pause = backoff(self.failures, fastrand::f64());
                if !matches!(t, Trouble::Local(_)) && h.server_reachable != Some(false) {
                    h.server_reachable = Some(false);
                    h.since = Some(now);
                }
                h.last_error = Some(msg.clone());
                let (event, what) = match t {
                    Trouble::Local(_) => ("agent.local_error", "a local file could not be written"),
                    _ => ("agent.poll_failed", "no usable answer from the server"),
                };
                (
                    pause,
                    Level::Warn,
                    event,
                    format!("{what}: {msg}; the key file keeps the last good key; retrying"),
                    json!({
                        "error": msg,
                        "failures": self.failures,
                        "retry_in_ms": pause.as_millis() as u64,
                    }),
                )
            }
        };
        self.save_or_log();
        self.log.emit(level, event, version, &message, fields);
        pause
    }

    async fn rotate(&mut self, expect_active: u32, reason: String) -> Result<(), Trouble> {
        let intent = Intent {
            idempotency_key: crate::rotate::idempotency_key()
                .map_err(|e| Trouble::Local(format!("{e:#}")))?,
            expect_active: Some(expect_active),
            reason,
            since: super::now_rfc3339(),
        };
        // Durable before the request: a crash after the server issued the key must find the
        // Idempotency-Key that makes it replay the key.
        self.state.intent = Some(intent.clone());
        if let Err(t) = self.save() {
            self.state.intent = None;
            return Err(t);
        }
        self.recovering = false;
        self.settle_intent(intent).await
    }

    async fn settle_intent(&mut self, intent: Intent) -> Result<(), Trouble> {
        let req = proto::SelfRotateRequest {
            agent: self.state.agent.clone(),
            expect_active: intent.expect_active,
        };
        let answer = self
            .client
            .self_rotate(&req, Some(&intent.idempotency_key))
            .await;
        let recovering = std::mem::take(&mut self.recovering);
        match answer {
            Ok(a) => {
                let b = a.body;
                let Some(key) = b.key else {
                    self.log.warn(
                        "agent.rotate_unavailable",
                        Some(b.version),
                        &format!(
                            "the rotation happened but its key cannot be shown again ({}); the server will say what to do next",
                            b.key_unavailable.as_deref().unwrap_or("no reason given")
                        ),
                        json!({"kid": b.kid}),
                    );
                    self.state.intent = None;
                    self.known = None;
                    self.save()?;
                    return Ok(());
                };
                let old_deadline = b
                    .retiring
                    .iter()
                    .find(|r| Some(r.version) == self.state.version)
                    .or_else(|| b.retiring.iter().max_by_key(|r| r.version))
                    .map(|r| r.deadline.clone());
                let how = if recovering || b.replayed {
                    How::Recovered
                } else {
                    How::Rotated
                };
                let (event, msg) = match how {
                    How::Recovered => (
                        "agent.recovered",
                        "the rotation asked for before a restart was replayed with the same Idempotency-Key",
                    ),
                    _ => (
                        "agent.rotated",
                        "rotated: the server issued a new version to this agent",
                    ),
                };
                self.log.info(
                    event,
                    Some(b.version),
                    msg,
                    json!({
                        "kid": b.kid,
                        "reason": intent.reason,
                        "replayed": b.replayed,
                        "from_version": self.state.version,
                    }),
                );
                // The intent is dropped by `install`, once the key is in the file.
                self.install(key, b.version, b.kid, old_deadline).await
            }
            Err(e) if api_code(&e) == Some("rotation_raced") || e.status() == Some(409) => {
                self.log.info(
                    "agent.rotation_raced",
                    self.state.version,
                    "another agent rotated first: taking its key by handover",
                    json!({"code": api_code(&e)}),
                );
                self.state.intent = None;
                self.known = None;
                self.save()
            }
            Err(e) => match classify(&e) {
                // Kept: the same Idempotency-Key is retried once the server can answer.
                t @ (Trouble::Unreachable(_) | Trouble::Rejected { .. }) => {
                    self.recovering = recovering;
                    Err(t)
                }
                t => {
                    self.state.intent = None;
                    self.known = None;
                    self.save()?;
                    Err(t)
                }
            },
        }
    }

    async fn take_handover(&mut self, n: u32) -> Result<(), Trouble> {
        let req = proto::HandoverRequest {
            agent: self.state.agent.clone(),
        };
        let h = self
            .client
            .self_handover(&req)
            .await
            .map_err(|e| classify(&e))?
            .body;
        self.log.info(
            "agent.handover",
            Some(h.version),
            "took over the newer version another agent (or this one before a restart) was issued",
            json!({"kid": h.kid, "from_version": self.state.version, "offered": n}),
        );
        let deadline = self.deadline.clone();
        self.install(h.key, h.version, h.kid, deadline).await
    }

    /// Writes `key` (unless the file holds it), reloads the app, tells `keyroll run`, reports.
    async fn install(
        &mut self,
        key: String,
        version: u32,
        kid: String,
        old_deadline: Option<String>,
    ) -> Result<(), Trouble> {
        check_key(&key, &self.spec).map_err(|e| {
            Trouble::Other(format!(
                "the server sent a key that is not {}'s ({e})",
                self.spec.consumer
            ))
        })?;
        let path: PathBuf = self.spec.key_file.clone();
        self.state.reload_pending = Some(version);
        self.save()?;
        let written = keyfile::replace(&path, &key, self.spec.keep_previous)
            .map_err(|e| local("write the key file", &path, e))?;
        match written {
            Written::Replaced => self.log.info(
                "agent.key_written",
                Some(version),
                &format!("wrote v{version} to {}", path.display()),
                json!({
                    "kid": kid,
                    "key_file": path.display().to_string(),
                    "previous_kept": self.spec.keep_previous,
                }),
            ),
            Written::Unchanged => self.log.info(
                "agent.unchanged",
                Some(version),
                &format!(
                    "{} already holds v{version}: not rewritten, no reload",
                    path.display()
                ),
                json!({"kid": kid}),
            ),
        }
        let client = Client::with_tls(&self.server, Some(key.clone()), &self.server_trust())
            .map_err(|e| Trouble::Other(e.to_string()))?;
        self.client = client;
        self.key = key.clone();
        self.known = None;
        self.state.intent = None;
        self.state.version = Some(version);
        self.state.kid = Some(kid);
        self.save()?;
        if written == Written::Replaced {
            self.reload(version).await;
        } else {
            self.state.reload_pending = None;
            self.save_or_log();
        }
        if let Some(tx) = &self.updates {
            let left = old_deadline
                .as_deref()
                .and_then(parse_rfc3339)
                .map(|d| {
                    let now = super::now();
                    if d > now {
                        d.duration_since(now)
                    } else {
                        Duration::ZERO
                    }
                })
                .or(self.grace);
            let _ = tx.send(Some(KeyUpdate {
                key,
                version,
                old_key_left: left,
            }));
        }
        self.report().await;
        Ok(())
    }

    async fn reload(&mut self, version: u32) {
        let r = &self.spec.reloader;
        if r.is_some() {
            let env = [
                ("KEYROLL_KEY_FILE", self.spec.key_file.display().to_string()),
                ("KEYROLL_CONSUMER", self.spec.consumer.to_string()),
                ("KEYROLL_VERSION", version.to_string()),
                ("KEYROLL_CHANGED", "key".to_owned()),
            ];
            let o = r.run(&env).await;
            let fields = json!({
                "exit_code": o.reload.exit_code,
                "ok": o.reload.ok,
                "duration_ms": o.duration.as_millis() as u64,
                "detail": o.reload.detail,
            });
            if o.reload.ok {
                self.log.info(
                    "agent.reload",
                    Some(version),
                    "the app was told of the new key",
                    fields,
                );
            } else {
                self.log.error(
                    "agent.reload",
                    Some(version),
                    &format!("reloading the app failed: {}", o.reload.detail),
                    fields,
                );
            }
            self.state.health.last_reload = Some(o.reload);
        }
        self.state.reload_pending = None;
        self.save_or_log();
    }

    /// Tells the app that the certificate set (or only `ca.pem`) changed: the same reload
    /// command or signal as for a new key, with `KEYROLL_CHANGED=cert` or `ca`.
    async fn reload_certs(&mut self, changed: Changed) {
        let Some(dir) = self.certs.as_ref().map(|c| c.dir().display().to_string()) else {
            return;
        };
        let r = &self.spec.reloader;
        if r.is_some() {
            let (what, detail) = match &changed {
                Changed::Set(serial) => ("cert", format!("a new certificate ({serial})")),
                Changed::Bundle(v) => ("ca", format!("a new trust bundle (version {v})")),
                Changed::Recovered => (
                    "cert",
                    "the certificate set written before the agent stopped".to_owned(),
                ),
            };
            let mut env = vec![
                ("KEYROLL_CERT_DIR", dir.clone()),
                ("KEYROLL_CONSUMER", self.spec.consumer.to_string()),
                ("KEYROLL_CHANGED", what.to_owned()),
            ];
            if let Changed::Set(serial) = &changed {
                env.push(("KEYROLL_CERT_SERIAL", serial.clone()));
            }
            if let Some(v) = self.certs.as_ref().and_then(CertKeeper::bundle_version) {
                env.push(("KEYROLL_BUNDLE_VERSION", v.to_string()));
            }
            let o = r.run(&env).await;
            let fields = json!({
                "changed": what,
                "cert_dir": dir,
                "exit_code": o.reload.exit_code,
                "ok": o.reload.ok,
                "duration_ms": o.duration.as_millis() as u64,
                "detail": o.reload.detail,
            });
            if o.reload.ok {
                self.log.info(
                    "agent.cert_reload",
                    None,
                    &format!("the app was told of {detail}"),
                    fields,
                );
            } else {
                self.log.error(
                    "agent.cert_reload",
                    None,
                    &format!("reloading the app for {detail} failed: {}", o.reload.detail),
                    fields,
                );
            }
            self.state.health.last_reload = Some(o.reload);
            self.save_or_log();
        }
        if let Some(k) = self.certs.as_mut() {
            k.reloaded();
        }
    }

    async fn report(&mut self) {
        self.last_report = Some(Instant::now());
        let degraded = self.state.health.last_reload.as_ref().filter(|r| !r.ok);
        let req = proto::AgentReport {
            agent: self.state.agent.clone(),
            host: self.host.clone(),
            mode: Some(self.mode.to_owned()),
            health: Some(if degraded.is_some() { "degraded" } else { "ok" }.to_owned()),
            detail: degraded.map(|r| r.detail.clone()),
            // The bundle ca.pem holds (none without --cert-dir).
            bundle_version: self.certs.as_ref().and_then(CertKeeper::bundle_version),
        };
        if let Err(e) = self.client.self_report(&req).await {
            self.log.warn(
                "agent.report_failed",
                self.state.version,
                &format!("the heartbeat report failed: {e}"),
                json!({}),
            );
        }
    }
}

fn describe(t: &Trouble) -> String {
    match t {
        Trouble::Unreachable(m) | Trouble::Other(m) | Trouble::Local(m) => m.clone(),
        Trouble::Rejected { code, detail } => format!("{detail} ({code})"),
    }
}

/// A key of the consumer's environment (the secret is checked by the server).
fn check_key(key: &str, spec: &ConsumerSpec) -> Result<(), String> {
    let parsed = parse_key(key.as_bytes()).map_err(|e| e.to_string())?;
    if parsed.environment() != spec.consumer.environment.as_str() {
        return Err(format!(
            "it is a key of environment {}, not {}",
            parsed.environment(),
            spec.consumer.environment
        ));
    }
    Ok(())
}
