//! `keyroll agent` (keep a consumer's key current in a file, reload the app) and `keyroll
//! agent status`; `keyroll run` (the same loop, the key in a child's environment) is in
//! `run.rs`. The agent authenticates with the consumer's own key: no admin token on the host.
//!
//! The pieces: `decide.rs` (pure: what to do after a poll, backoff, restart jitter),
//! `keyfile.rs` (atomic 0600 writes), `state.rs` (`agent.json`), `reload.rs` (command and
//! signal), `certfiles.rs` (the certificate set, replaced as one), `certs.rs` (keeping that set
//! current: CSR, renewal, the trust bundle), `config.rs` (several consumers), `log.rs` (JSON
//! lines), `worker.rs` (the loop).

pub mod certfiles;
pub mod certs;
pub mod config;
pub mod decide;
pub mod keyfile;
pub mod log;
pub mod reload;
pub mod run;
pub mod state;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use keyroll_core::{ConsumerRef, Timestamp, parse_duration};

use self::config::{AgentConfig, ConsumerSpec};
use self::reload::{Reloader, parse_signal};
use self::state::AgentState;
use self::worker::{Timing, Worker};
use crate::exit::{Exit, Failure, OrUsage, usage};
use crate::output::{Output, say};

/// The wall clock. The CLI is its own edge: the agent's timestamps (log lines, state) and the
/// remaining grace of a key are read here and nowhere else in the agent.
pub fn now() -> Timestamp {
    #[allow(clippy::disallowed_methods)]
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// [`now`] in RFC 3339.
pub fn now_rfc3339() -> String {
    keyroll_core::rfc3339(now())
}

/// The flags that name one consumer and how its app is told of a new key.
#[derive(Debug, Args)]
pub struct ConsumerFlags {
    /// The consumer: ENV/NAME.
    #[arg(long, value_name = "ENV/NAME")]
    pub consumer: Option<String>,
    /// The file the app reads its key from; it holds the bootstrap key at the first start.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Run `sh -c CMD` after every new key (e.g. `systemctl reload app`).
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
    /// Send this signal (HUP, USR1, …) to the pid in --pid-file after every new key.
    #[arg(long, value_name = "SIG", requires = "pid_file")]
    pub signal: Option<String>,
    /// The file holding the pid that --signal is sent to.
    #[arg(long, value_name = "FILE", requires = "signal")]
    pub pid_file: Option<PathBuf>,
    /// Keep the replaced key in PATH.previous (0600).
    #[arg(long)]
    pub keep_previous: bool,
    /// The agent's state directory [default: PATH.keyroll/ beside the key file].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long the reload command may run before it is killed.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    pub reload_timeout: String,
}

/// How often the agent asks and reports (hidden: for tests).
#[derive(Debug, Args)]
pub struct TimingFlags {
    /// The long-poll's wait.
    #[arg(long, hide = true, default_value = "25s")]
    pub poll_wait: String,
    /// The report interval.
    #[arg(long, hide = true, default_value = "30s")]
    pub heartbeat: String,
}

impl TimingFlags {
    fn resolve(&self) -> anyhow::Result<Timing> {
        let d = |flag: &str, v: &str| -> anyhow::Result<Duration> {
            let d = parse_duration(v).with_context_flag(flag)?;
            if d.is_zero() {
                return Err(usage(format!("--{flag} must be longer than 0")));
            }
            Ok(d)
        };
        Ok(Timing {
            wait: d("poll-wait", &self.poll_wait)?,
            heartbeat: d("heartbeat", &self.heartbeat)?,
        })
    }
}

trait WithFlag<T> {
    fn with_context_flag(self, flag: &str) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> WithFlag<T> for Result<T, E> {
    fn with_context_flag(self, flag: &str) -> anyhow::Result<T> {
        self.map_err(|e| usage(format!("--{flag}: {:#}", e.into())))
    }
}

impl ConsumerFlags {
    /// The one consumer these flags name; `what` is the command, for the error.
    pub fn resolve(&self, what: &str) -> anyhow::Result<ConsumerSpec> {
        let (Some(consumer), Some(key_file)) = (&self.consumer, &self.key_file) else {
            return Err(usage(format!(
                "`keyroll {what}` needs --consumer ENV/NAME and --key-file PATH{}",
                if what == "agent" {
                    " (or --config FILE)"
                } else {
                    ""
                }
            )));
        };
        let consumer = ConsumerRef::parse(consumer).or_usage()?;
        let signal = match (&self.signal, &self.pid_file) {
            (Some(s), Some(p)) => Some((parse_signal(s).map_err(usage)?, p.clone())),
            _ => None,
        };
        let timeout = parse_duration(&self.reload_timeout).with_context_flag("reload-timeout")?;
        if timeout.is_zero() {
            return Err(usage("--reload-timeout must be longer than 0"));
        }
        Ok(ConsumerSpec {
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| state::default_dir(key_file)),
            consumer,
            key_file: key_file.clone(),
            reloader: Reloader {
                command: self.on_change.clone().filter(|c| !c.trim().is_empty()),
                signal,
                timeout,
            },
            keep_previous: self.keep_previous,
            certs: None,
        })
    }
}

/// The flags of the certificate set `keyroll agent` keeps beside the key (SPEC §9).
#[derive(Debug, Args)]
pub struct CertFlags {
    /// Also keep a certificate for the consumer's identity in DIR: cert.pem (leaf, then
    /// intermediate), key.pem (0600, made here: the key never leaves the host) and ca.pem
    /// (the trust bundle), renewed at half the lifetime and replaced as one set.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// The certificate lifetime asked for (at least 5m) [default: the server's, 24h].
    #[arg(long, value_name = "DUR", requires = "cert_dir")]
    pub cert_ttl: Option<String>,
    /// Ask for serverAuth as well as clientAuth (a certificate the service can listen with).
    #[arg(long, requires = "cert_dir")]
    pub cert_server_auth: bool,
    /// When to renew, as a fraction of the lifetime, 0.1 to 0.9 (±10 % jitter around it).
    #[arg(long, value_name = "FRACTION", requires = "cert_dir", default_value_t = decide::DEFAULT_RENEW_AT)]
    pub cert_renew_at: f64,
}

impl CertFlags {
    fn resolve(&self) -> anyhow::Result<Option<config::CertSpec>> {
        let Some(dir) = &self.cert_dir else {
            return Ok(None);
        };
        config::CertSpec::new(
            dir.clone(),
            self.cert_ttl.as_deref(),
            self.cert_server_auth,
            Some(self.cert_renew_at),
            |f| format!("--cert-{}", f.replace('_', "-")),
        )
        .map(Some)
        .map_err(usage)
    }
}

/// `keyroll agent …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub cmd: Option<AgentCmd>,
    #[command(flatten)]
    pub one: ConsumerFlags,
    /// Several consumers from a TOML file ([[consumer]] consumer, key_file, on_change, …).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["consumer", "key_file", "on_change", "signal", "pid_file", "keep_previous", "state_dir", "cert_dir"])]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub certs: CertFlags,
    #[command(flatten)]
    pub timing: TimingFlags,
}

/// `keyroll agent status`.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// The agent's state: server reachable, key accepted, last reload. Exits 3 when unhealthy.
    Status {
        /// The key file the agent keeps (its state is in PATH.keyroll/).
        #[arg(long, value_name = "PATH", conflicts_with_all = ["state_dir", "config"])]
        key_file: Option<PathBuf>,
        /// The agent's state directory.
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        /// Every consumer of an agent config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Reads and checks `--config FILE`.
pub fn load_config(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            Exit::Usage,
            "invalid_config",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    config::parse(path, &text).map_err(|e| Failure::new(Exit::Usage, "invalid_config", e.0).into())
}

/// `keyroll agent`: runs until killed.
pub async fn agent(
    args: AgentArgs,
    server: &str,
    tls: keyroll_client::Tls,
    out: Output,
) -> anyhow::Result<ExitCode> {
    if let Some(AgentCmd::Status {
        key_file,
        state_dir,
        config,
    }) = args.cmd
    {
        return status(key_file, state_dir, config, out);
    }
    let timing = args.timing.resolve()?;
    let (server, specs, tls) = match &args.config {
        Some(path) => {
            let c = load_config(path)?;
            // The file's `ca_file` wins over the flag, like its `server`.
            let tls = match &c.ca_file {
                Some(ca) => keyroll_client::Tls::from_files(Some(ca), None, None)
                    .map_err(|e| Failure::new(Exit::Usage, "invalid_tls_file", e.to_string()))?,
                None => tls,
            };
            (
                c.server.unwrap_or_else(|| server.to_owned()),
                c.consumers,
                tls,
            )
        }
        None => {
            let mut spec = args.one.resolve("agent")?;
            spec.certs = args.certs.resolve()?;
            (server.to_owned(), vec![spec], tls)
        }
    };
    // Every consumer is checked (key file, state) before any of them runs.
    let workers = specs
        .into_iter()
        .map(|spec| Worker::start(spec, &server, &tls, "file", timing, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    for w in workers {
        tasks.spawn(w.run());
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| anyhow::anyhow!("an agent task failed: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `agent status` finds wrong with an agent's certificate set at `now`.
fn cert_problems(c: &certs::CertState, now: Timestamp) -> Vec<String> {
    let mut p = Vec::new();
    let dir = c.cert_dir.display();
    if c.identity_revoked {
        p.push(format!(
            "the server refuses to renew the certificate in {dir} (identity_revoked)"
        ));
    }
    match c.not_after.as_deref().and_then(keyroll_core::parse_rfc3339) {
        Some(t) if t <= now => p.push(format!(
            "the certificate in {dir} expired at {}{}",
            keyroll_core::rfc3339(t),
            c.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        None => p.push(format!(
            "no certificate in {dir} yet{}",
            c.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        Some(_) => {}
    }
    p
}

/// What `agent status` finds wrong with one agent (empty: healthy).
fn problems(s: &AgentState, alive: bool) -> Vec<String> {
    let h = &s.health;
    let mut p = Vec::new();
    if !alive {
        p.push(format!("the agent (pid {}) is not running", s.pid));
    }
    if let Some(code) = &h.key_rejected {
        p.push(format!(
            "the server rejects the key ({code}): bootstrap a new key into {}",
            s.key_file.display()
        ));
    }
    match h.server_reachable {
        Some(false) => p.push(format!(
            "the server is unreachable since {}: {}",
            h.since.as_deref().unwrap_or("?"),
            h.last_error.as_deref().unwrap_or("?")
        )),
        None => p.push("the agent has not reached the server yet".to_owned()),
        Some(true) => {}
    }
    if let Some(r) = h.last_reload.as_ref().filter(|r| !r.ok) {
        p.push(format!("the last reload failed ({}): {}", r.at, r.detail));
    }
    p
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// The state as `agent status --output json` shows it: `agent.json` without the intent's
/// Idempotency-Key, with the verdict.
fn status_json(s: &AgentState, problems: &[String]) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(intent) = v.get_mut("intent").and_then(|i| i.as_object_mut()) {
        intent.remove("idempotency_key");
    }
    v["healthy"] = problems.is_empty().into();
    v["problems"] = problems.into();
    v
}

fn print_cert(c: &certs::CertState) -> crate::output::Printed {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    match &c.serial {
        Some(serial) => say!(
            "certificate   {}: serial {serial}, valid until {}, renewal at {}",
            c.cert_dir.display(),
            dash(&c.not_after),
            dash(&c.renew_at)
        )?,
        None => say!("certificate   {}: none yet", c.cert_dir.display())?,
    }
    say!(
        "trust bundle  {}",
        c.bundle_version
            .map_or("not known".to_owned(), |v| format!("version {v} in ca.pem"))
    )?;
    if let Some(e) = &c.last_error {
        say!("cert error    {e}")?;
    }
    Ok(())
}

fn print_status(s: &AgentState, problems: &[String]) -> crate::output::Printed {
    let h = &s.health;
    let held = match (s.version, &s.kid) {
        (Some(v), Some(k)) => format!("v{v} (kid {k})"),
        _ => "not yet confirmed by the server".to_owned(),
    };
    say!("consumer      {}", s.consumer)?;
    say!("agent         {} (pid {})", s.agent, s.pid)?;
    say!("key file      {}: {held}", s.key_file.display())?;
    let server = match h.server_reachable {
        Some(true) => format!("reachable since {}", h.since.as_deref().unwrap_or("?")),
        Some(false) => format!(
            "UNREACHABLE since {}: {}",
            h.since.as_deref().unwrap_or("?"),
            h.last_error.as_deref().unwrap_or("?")
        ),
        None => "not reached yet".to_owned(),
    };
    say!("server        {server}")?;
    say!(
        "last contact  {}",
        h.last_contact.as_deref().unwrap_or("never")
    )?;
    match &h.key_rejected {
        Some(code) => say!("key           REJECTED ({code})")?,
        None => say!("key           accepted")?,
    }
    match &h.last_reload {
        Some(r) => say!(
            "last reload   {} at {}: {}",
            if r.ok { "ok" } else { "FAILED" },
            r.at,
            r.detail
        )?,
        None => say!("last reload   none")?,
    }
    if let Some(i) = &s.intent {
        say!(
            "rotation      pending since {} ({}): retried with the same Idempotency-Key",
            i.since,
            i.reason
        )?;
    }
    say!("updated       {}", s.updated_at)?;
    if problems.is_empty() {
        say!("healthy")
    } else {
        for p in problems {
            say!("UNHEALTHY: {p}")?;
        }
        Ok(())
    }
}

fn status(
    key_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let dirs: Vec<PathBuf> = match (key_file, state_dir, config) {
        (Some(k), _, _) => vec![state::default_dir(&k)],
        (_, Some(d), _) => vec![d],
        (_, _, Some(c)) => load_config(&c)?
            .consumers
            .into_iter()
            .map(|c| c.state_dir)
            .collect(),
        _ => {
            return Err(usage(
                "`keyroll agent status` needs --key-file PATH, --state-dir DIR or --config FILE",
            ));
        }
    };
    let mut healthy = true;
    let mut docs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let Some(s) = state::load(dir)? else {
            return Err(Failure::new(
                Exit::NotFound,
                "no_agent_state",
                format!(
                    "no agent state in {}: has `keyroll agent` run with this key file (or --state-dir)?",
                    dir.display()
                ),
            )
            .into());
        };
        let cert = certs::load(dir)?;
        let mut p = problems(&s, process_alive(s.pid));
        if let Some(c) = &cert {
            p.extend(cert_problems(c, now()));
        }
        healthy &= p.is_empty();
        if out.json {
            let mut doc = status_json(&s, &p);
            if let Some(c) = &cert {
                doc["certificate"] = serde_json::to_value(c).unwrap_or_default();
            }
            docs.push(doc);
        } else {
            if i > 0 {
                say!()?;
            }
            print_status(&s, &p)?;
            if let Some(c) = &cert {
                print_cert(c)?;
            }
        }
    }
    if out.json {
        let v = if docs.len() == 1 {
            docs.pop().unwrap_or_default()
        } else {
            serde_json::Value::from(docs)
        };
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        Exit::Rejected.into()
    })
}

#[cfg(test)]
mod tests {
    use super::state::{Health, Intent, Reload};
    use super::*;

    fn state() -> AgentState {
        AgentState {
            agent: "agt_0123456789abcdef".into(),
            consumer: "prod/billing".into(),
            key_file: "/k".into(),
            version: Some(2),
            kid: Some("kid".into()),
            intent: None,
            reload_pending: None,
            pid: 1,
            updated_at: "t".into(),
            health: Health {
                server_reachable: Some(true),
                since: Some("t0".into()),
                ..Health::default()
            },
        }
    }

    #[test]
    fn unhealthy_when_unreachable_rejected_reload_failing_or_not_running() {
        assert!(problems(&state(), true).is_empty());
        let mut s = state();
        s.health.server_reachable = Some(false);
        s.health.last_error = Some("connection refused".into());
        let p = problems(&s, true);
        assert!(
            p[0].contains("unreachable since t0: connection refused"),
            "{p:?}"
        );
        let mut s = state();
        s.health.key_rejected = Some("key_revoked".into());
        assert!(problems(&s, true)[0].contains("key_revoked"));
        let mut s = state();
        s.health.last_reload = Some(Reload {
            ok: false,
            exit_code: Some(1),
            detail: "exited with 1".into(),
            at: "t".into(),
        });
        assert!(problems(&s, true)[0].contains("reload failed"));
        assert!(problems(&state(), false)[0].contains("not running"));
    }

    #[test]
    fn a_certificate_is_a_problem_when_expired_missing_or_refused() {
        let now = keyroll_core::parse_rfc3339("2026-12-06T12:00:00Z").unwrap();
        let good = certs::CertState {
            cert_dir: "/tls".into(),
            serial: Some("ab".into()),
            not_after: Some("2026-12-07T00:00:00Z".into()),
            bundle_version: Some(2),
            ..certs::CertState::default()
        };
        assert!(cert_problems(&good, now).is_empty());
        let expired = certs::CertState {
            not_after: Some("2026-12-06T11:00:00Z".into()),
            last_error: Some("connection refused".into()),
            ..good.clone()
        };
        let p = cert_problems(&expired, now);
        assert_eq!(
            p,
            ["the certificate in /tls expired at 2026-12-06T11:00:00Z: connection refused"]
        );
        let none = certs::CertState {
            cert_dir: "/tls".into(),
            ..certs::CertState::default()
        };
        assert!(cert_problems(&none, now)[0].starts_with("no certificate in /tls yet"));
        let revoked = certs::CertState {
            identity_revoked: true,
            ..good
        };
        assert!(cert_problems(&revoked, now)[0].contains("identity_revoked"));
    }

    #[test]
    fn status_json_hides_the_idempotency_key() {
        let mut s = state();
        s.intent = Some(Intent {
            idempotency_key: "secret-idem".into(),
            expect_active: Some(2),
            reason: "due".into(),
            since: "t".into(),
        });
        let v = status_json(&s, &[]);
        assert!(!v.to_string().contains("secret-idem"));
        assert_eq!(v["intent"]["reason"], "due");
        assert_eq!(v["healthy"], true);
    }
}
