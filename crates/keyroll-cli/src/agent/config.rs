//! `keyroll agent --config agent.toml`: several consumers on one host, one task each. The file
//! is checked whole before anything runs, and a mistake is one line naming `FILE:LINE`.
//!
//! ```toml
//! server = "http://keyroll.internal:7878"
//! ca_file = "/etc/keyroll/ca.pem"           # optional; trusted for an https:// server
//! state_dir = "/var/lib/keyroll-agent"     # optional; else KEY_FILE.keyroll/ per consumer
//!
//! [[consumer]]
//! consumer = "prod/billing"
//! key_file = "/etc/billing/keyroll.key"
//! on_change = "systemctl reload billing"  # or signal = "HUP" with pid_file = "…"
//! keep_previous = false
//! reload_timeout = "30s"
//! cert_dir = "/etc/billing/tls"           # optional: also keep cert.pem, key.pem, ca.pem there
//! cert_ttl = "24h"                        # optional: the lifetime asked for (at least 5m)
//! cert_server_auth = true                 # optional: serverAuth as well as clientAuth
//! cert_renew_at = 0.5                     # optional: renewal point, fraction of the lifetime
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyroll_core::{ConsumerRef, parse_duration};
use serde::Deserialize;
use toml::Spanned;

use super::reload::{Reloader, parse_signal};

/// One consumer the agent keeps current, with everything resolved.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// `ENV/NAME`.
    pub consumer: ConsumerRef,
    /// The key file.
    pub key_file: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// How the app is told of a new key.
    pub reloader: Reloader,
    /// Keep the replaced key in `KEY_FILE.previous`.
    pub keep_previous: bool,
    /// The certificate set this consumer's agent keeps, if any.
    pub certs: Option<CertSpec>,
}

/// The certificate set the agent keeps for a consumer (`--cert-dir`, `cert_dir = …`).
#[derive(Debug, Clone, PartialEq)]
pub struct CertSpec {
    /// Where `cert.pem`, `key.pem` and `ca.pem` are kept.
    pub dir: PathBuf,
    /// The lifetime asked for (`None`: the server's default, 24h).
    pub ttl: Option<Duration>,
    /// Ask for serverAuth as well as clientAuth.
    pub server_auth: bool,
    /// The renewal point, as a fraction of the lifetime (±10 % jitter around it).
    pub renew_at: f64,
}

impl CertSpec {
    /// Checks the settings; `what` names them in an error (`--cert-ttl` or `cert_ttl`).
    pub fn new(
        dir: PathBuf,
        ttl: Option<&str>,
        server_auth: bool,
        renew_at: Option<f64>,
        name: impl Fn(&str) -> String,
    ) -> Result<CertSpec, String> {
        if dir.as_os_str().is_empty() {
            return Err(format!("{} is empty", name("dir")));
        }
        let ttl = match ttl {
            None => None,
            Some(t) => {
                let d = parse_duration(t).map_err(|e| format!("{}: {e}", name("ttl")))?;
                if d < keyroll_ca::MIN_LEAF_LIFETIME {
                    return Err(format!(
                        "{} {} is below the CA's minimum lifetime of 5m",
                        name("ttl"),
                        t.trim()
                    ));
                }
                Some(d)
            }
        };
        let renew_at = renew_at.unwrap_or(super::decide::DEFAULT_RENEW_AT);
        if !(super::decide::RENEW_AT_MIN..=super::decide::RENEW_AT_MAX).contains(&renew_at) {
            return Err(format!(
                "{} {renew_at} is outside 0.1..0.9 (the fraction of the certificate's lifetime after which it is renewed; default 0.5)",
                name("renew_at")
            ));
        }
        Ok(CertSpec {
            dir,
            ttl,
            server_auth,
            renew_at,
        })
    }
}

/// The whole file, resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `server`, when the file names one.
    pub server: Option<String>,
    /// `ca_file`: the PEM bundle an https:// server is trusted with.
    pub ca_file: Option<PathBuf>,
    /// The consumers, in file order.
    pub consumers: Vec<ConsumerSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    consumer: Vec<Spanned<RawConsumer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    consumer: Spanned<String>,
    key_file: Spanned<String>,
    on_change: Option<String>,
    signal: Option<Spanned<String>>,
    pid_file: Option<Spanned<String>>,
    #[serde(default)]
    keep_previous: bool,
    reload_timeout: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    cert_dir: Option<Spanned<String>>,
    cert_ttl: Option<Spanned<String>>,
    #[serde(default)]
    cert_server_auth: bool,
    cert_renew_at: Option<Spanned<f64>>,
}

/// The default `--reload-timeout`.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A mistake in the file: `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Parses `text`, read from `file` (relative paths in it are relative to the file's directory).
pub fn parse(file: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
    let at = |span: Option<Range<usize>>, msg: &str| -> ConfigError {
        let line = span.map_or(1, |s| line_of(text, s.start));
        ConfigError(format!("{}:{line}: {msg}", file.display()))
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let msg: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        at(e.span(), &msg.join("; "))
    })?;
    let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    if let Some(s) = &raw.server
        && let Err(e) = keyroll_client::Client::new(s.get_ref(), None)
    {
        return Err(at(Some(s.span()), &format!("server: {e}")));
    }
    if raw.consumer.is_empty() {
        return Err(at(
            None,
            "no [[consumer]]: name at least one (consumer = \"ENV/NAME\", key_file = \"PATH\")",
        ));
    }
    let top_state = raw.state_dir.as_ref().map(|s| resolve(s.get_ref()));
    let mut consumers: Vec<(ConsumerSpec, usize)> = Vec::new();
    for entry in &raw.consumer {
        let c = entry.get_ref();
        let consumer = ConsumerRef::parse(c.consumer.get_ref()).map_err(|e| {
            at(
                Some(c.consumer.span()),
                &format!("consumer {:?}: {e}", c.consumer.get_ref()),
            )
        })?;
        if c.key_file.get_ref().trim().is_empty() {
            return Err(at(Some(c.key_file.span()), "key_file is empty"));
        }
        let key_file = resolve(c.key_file.get_ref());
        let signal = match (&c.signal, &c.pid_file) {
            (Some(s), Some(p)) => Some((
                parse_signal(s.get_ref())
                    .map_err(|e| at(Some(s.span()), &format!("signal: {e}")))?,
                resolve(p.get_ref()),
            )),
            (Some(s), None) => {
                return Err(at(
                    Some(s.span()),
                    "signal needs pid_file (the process to send it to)",
                ));
            }
            (None, Some(p)) => {
                return Err(at(
                    Some(p.span()),
                    "pid_file needs signal (e.g. signal = \"HUP\")",
                ));
            }
            (None, None) => None,
        };
        let timeout = match &c.reload_timeout {
            Some(t) => match parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => return Err(at(Some(t.span()), "reload_timeout must be longer than 0")),
                Err(e) => return Err(at(Some(t.span()), &format!("reload_timeout: {e}"))),
            },
            None => DEFAULT_RELOAD_TIMEOUT,
        };
        let state_dir = match (&c.state_dir, &top_state) {
            (Some(d), _) => resolve(d.get_ref()),
            (None, Some(top)) => top
                .join(consumer.environment.as_str())
                .join(consumer.name.as_str()),
            (None, None) => super::state::default_dir(&key_file),
        };
        let certs = match &c.cert_dir {
            Some(d) => {
                let spec = CertSpec::new(
                    resolve(d.get_ref()),
                    c.cert_ttl.as_ref().map(|t| t.get_ref().as_str()),
                    c.cert_server_auth,
                    c.cert_renew_at.as_ref().map(|r| *r.get_ref()),
                    |f| format!("cert_{f}"),
                );
                let span = |msg: &str| {
                    if msg.starts_with("cert_ttl") {
                        c.cert_ttl.as_ref().map(Spanned::span)
                    } else if msg.starts_with("cert_renew_at") {
                        c.cert_renew_at.as_ref().map(Spanned::span)
                    } else {
                        Some(d.span())
                    }
                };
                Some(spec.map_err(|e| at(span(&e), &e))?)
            }
            None => {
                let stray = [
                    ("cert_ttl", c.cert_ttl.as_ref().map(Spanned::span)),
                    ("cert_renew_at", c.cert_renew_at.as_ref().map(Spanned::span)),
                ];
                if let Some((name, span)) = stray.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(at(
                        span,
                        &format!("{name} needs cert_dir (where the certificate set is kept)"),
                    ));
                }
                if c.cert_server_auth {
                    return Err(at(
                        Some(entry.span()),
                        "cert_server_auth needs cert_dir (where the certificate set is kept)",
                    ));
                }
                None
            }
        };
        let line = line_of(text, entry.span().start);
        for (other, other_line) in &consumers {
            if other.key_file == key_file {
                return Err(at(
                    Some(c.key_file.span()),
                    &format!(
                        "key_file {} is also the key file of the consumer at line {other_line}",
                        key_file.display()
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (&other.certs, &certs)
                && a.dir == b.dir
            {
                return Err(at(
                    c.cert_dir.as_ref().map(Spanned::span),
                    &format!(
                        "cert_dir {} is also the cert_dir of the consumer at line {other_line}",
                        b.dir.display()
                    ),
                ));
            }
            if other.state_dir == state_dir {
                return Err(at(
                    Some(c.consumer.span()),
                    &format!(
                        "{consumer} would share the state directory {} with the consumer at line {other_line}: give one of them its own state_dir",
                        state_dir.display()
                    ),
                ));
            }
        }
        consumers.push((
            ConsumerSpec {
                consumer,
                key_file,
                state_dir,
                reloader: Reloader {
                    command: c.on_change.clone().filter(|s| !s.trim().is_empty()),
                    signal,
                    timeout,
                },
                keep_previous: c.keep_previous,
                certs,
            },
            line,
        ));
    }
    Ok(AgentConfig {
        server: raw.server.map(Spanned::into_inner),
        ca_file: raw.ca_file.map(|c| resolve(c.get_ref())),
        consumers: consumers.into_iter().map(|(c, _)| c).collect(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("/etc/agent.toml"), text).unwrap_err().0
    }

    #[test]
    fn a_good_file_resolves_paths_and_state_dirs() {
        let text = r#"
server = "http://127.0.0.1:7878"
state_dir = "state"

[[consumer]]
consumer = "prod/billing"
key_file = "billing.key"
on_change = "systemctl reload billing"

[[consumer]]
consumer = "prod/search"
key_file = "/srv/search/key"
signal = "HUP"
pid_file = "/run/search.pid"
keep_previous = true
reload_timeout = "5s"
cert_dir = "tls/search"
cert_ttl = "1h"
cert_server_auth = true
cert_renew_at = 0.25
"#;
        let c = parse(Path::new("/etc/keyroll/agent.toml"), text).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://127.0.0.1:7878"));
        let [a, b] = &c.consumers[..] else { panic!() };
        assert_eq!(a.consumer.to_string(), "prod/billing");
        assert_eq!(a.key_file, Path::new("/etc/keyroll/billing.key"));
        assert_eq!(a.state_dir, Path::new("/etc/keyroll/state/prod/billing"));
        assert_eq!(
            a.reloader.command.as_deref(),
            Some("systemctl reload billing")
        );
        assert_eq!(a.reloader.timeout, DEFAULT_RELOAD_TIMEOUT);
        assert!(!a.keep_previous);
        assert_eq!(
            b.reloader.signal.as_ref().unwrap().1,
            Path::new("/run/search.pid")
        );
        assert_eq!(b.reloader.timeout, Duration::from_secs(5));
        assert!(b.keep_previous);
        assert_eq!(a.certs, None);
        assert_eq!(
            b.certs,
            Some(CertSpec {
                dir: "/etc/keyroll/tls/search".into(),
                ttl: Some(Duration::from_secs(3600)),
                server_auth: true,
                renew_at: 0.25,
            })
        );
        // Without a top-level state_dir each key file has its own.
        let c = parse(
            Path::new("/a/agent.toml"),
            "[[consumer]]\nconsumer = \"dev/x\"\nkey_file = \"/k/x.key\"\n",
        )
        .unwrap();
        assert_eq!(c.consumers[0].state_dir, Path::new("/k/x.key.keyroll"));
        assert_eq!(c.server, None);
    }

    #[test]
    fn every_mistake_is_one_line_with_file_and_line() {
        let cases = [
            (
                "[[consumer]]\nconsumer = \"prod/x\"\nkeyfile = \"k\"\n",
                "/etc/agent.toml:3: unknown field `keyfile`",
            ),
            (
                "[[consumer]]\nconsumer = \"prod/x\"\n",
                "/etc/agent.toml:1: missing field `key_file`",
            ),
            (
                "[[consumer]]\nkey_file = \"k\"\nconsumer = \"prod\"\n",
                "/etc/agent.toml:3: consumer \"prod\":",
            ),
            (
                "server = \"ftp://x\"\n[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\n",
                "/etc/agent.toml:1: server:",
            ),
            ("# nothing\n", "/etc/agent.toml:1: no [[consumer]]"),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\nsignal = \"HUP\"\n",
                "/etc/agent.toml:4: signal needs pid_file",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\nsignal = \"NOPE\"\npid_file = \"p\"\n",
                "/etc/agent.toml:4: signal: unknown signal",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\nreload_timeout = \"soon\"\n",
                "/etc/agent.toml:4: reload_timeout:",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\n\n[[consumer]]\nconsumer = \"a/c\"\nkey_file = \"k\"\n",
                "/etc/agent.toml:7: key_file /etc/k is also the key file of the consumer at line 1",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = [1]\n",
                "/etc/agent.toml:3: invalid type",
            ),
            ("[[consumer]\n", "/etc/agent.toml:1:"),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\ncert_dir = \"t\"\ncert_ttl = \"1m\"\n",
                "/etc/agent.toml:5: cert_ttl 1m is below the CA's minimum lifetime of 5m",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\ncert_dir = \"t\"\ncert_renew_at = 0.95\n",
                "/etc/agent.toml:5: cert_renew_at 0.95 is outside 0.1..0.9",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\ncert_ttl = \"1h\"\n",
                "/etc/agent.toml:4: cert_ttl needs cert_dir",
            ),
            (
                "[[consumer]]\nconsumer = \"a/b\"\nkey_file = \"k\"\ncert_dir = \"t\"\n\n[[consumer]]\nconsumer = \"a/c\"\nkey_file = \"k2\"\ncert_dir = \"t\"\n",
                "/etc/agent.toml:9: cert_dir /etc/t is also the cert_dir of the consumer at line 1",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "{text:?}\n  got:  {got}\n  want: {want}"
            );
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }
}
