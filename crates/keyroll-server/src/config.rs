//! Server configuration: defaults, then a TOML file, then `KEYROLL_*` environment variables,
//! then command-line flags (each layer overrides the one before), validated once at start.

pub use crate::logging::LogFormat;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The raw configuration, as layered by figment. See [`Config::resolve`] for validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Address to listen on.
    pub listen: String,
    /// Where the SQLite database and the first admin token live.
    pub data_dir: PathBuf,
    /// `sqlite:///path/keyroll.db` (default: `DATA_DIR/keyroll.db`).
    pub database_url: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Verification.
    pub verify: VerifyConfig,
    /// Rotation defaults.
    pub rotation: RotationConfig,
    /// Usage recording.
    pub usage: UsageConfig,
    /// The in-memory decision history.
    pub history: HistoryConfig,
    /// The HTTP listener's limits.
    pub http: HttpConfig,
    /// The rotation schedule.
    pub schedule: ScheduleConfig,
    /// Signed webhooks.
    pub webhooks: WebhooksConfig,
    /// Several nodes on one database.
    pub cluster: ClusterConfig,
    /// TLS on the listener (off unless a certificate is configured).
    pub tls: TlsConfig,
    /// The dashboard's sessions.
    pub ui: UiConfig,
    /// keyroll's own certificate authority.
    pub ca: CaConfig,
}

/// `[ui]`: the dashboard at `/ui/` and its login sessions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// A session without a request for this long ends (default `30m`).
    pub idle_timeout: String,
    /// A session ends this long after its login, however active (default `12h`).
    pub session_lifetime: String,
    /// Mark the session cookies `Secure` even when the request did not arrive over TLS (set it
    /// behind a TLS-terminating proxy that is not in `usage.trusted_proxies`; a trusted proxy's
    /// `X-Forwarded-Proto: https` sets it anyway). Default false.
    pub secure_cookie: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            idle_timeout: "30m".into(),
            session_lifetime: "12h".into(),
            secure_cookie: false,
        }
    }
}

/// `[tls]`: HTTPS on keyroll's own listener, optionally with client certificates (SPEC §9).
/// Plain HTTP stays the default: without `cert_file` or `issue` nothing here applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first), watched and reloaded when it changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of `cert_file`'s leaf, watched with it.
    pub key_file: Option<PathBuf>,
    /// Have keyroll's own CA issue the listener's certificate (at start, once the CA exists;
    /// renewed at half its life, checked every `watch_interval`) instead of reading files.
    pub issue: Option<TlsIssueConfig>,
    /// Client certificates: `off` (never asked for), `optional` (verified when sent) or
    /// `require_admin` (the admin API needs a verified identity in `admin_identities`).
    pub client_auth: String,
    /// Which identities (`ENV/SERVICE` patterns, `*` for any part) may use the admin API under
    /// `client_auth = "require_admin"`.
    pub admin_identities: Vec<String>,
    /// The trust bundle client certificates are verified against (PEM: keyroll's `ca.pem`,
    /// anchors, intermediates and one CRL per issuer), with its trust domain. Without it the
    /// listener verifies against keyroll's own CA, following its bundle and CRLs as they change.
    pub client_ca_file: Option<PathBuf>,
    /// The trust domain client identities must belong to (`example.org`); with keyroll's own CA
    /// it is the CA's (and must match it when given).
    pub trust_domain: Option<String>,
    /// How often the certificate files are looked at for changes (default `1s`).
    pub watch_interval: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            issue: None,
            client_auth: "off".into(),
            admin_identities: Vec::new(),
            client_ca_file: None,
            trust_domain: None,
            watch_interval: "1s".into(),
        }
    }
}

/// The validated `[ui]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiSettings {
    /// See [`UiConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`UiConfig::session_lifetime`].
    pub session_lifetime: Duration,
    /// See [`UiConfig::secure_cookie`].
    pub secure_cookie: bool,
}

/// `[tls] issue = { identity = "ENV/SERVICE", dns = [...], ip = [...] }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsIssueConfig {
    /// The listener's identity, `ENV/SERVICE`.
    pub identity: String,
    /// DNS names the certificate is valid for.
    pub dns: Vec<String>,
    /// IP addresses the certificate is valid for.
    pub ip: Vec<String>,
}

/// `[ca]`: keyroll's own certificate authority (SPEC §9).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// The master key (32 raw bytes, mode 0600) that seals the CA's private keys and the
    /// webhook secrets, read from this file (never created) instead of `DATA_DIR/master.key`;
    /// `KEYROLL_MASTER_KEY` still comes first. A missing, unreadable or wrong-size file refuses
    /// start.
    pub master_key_file: Option<PathBuf>,
}

/// `[cluster]`: this node among the others sharing its database (SPEC §11).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id (default: `node_` and random characters, new at every start).
    pub node_id: Option<String>,
    /// The address other nodes and operators reach this node at (default: the listen address).
    pub advertise: Option<String>,
    /// How often this node reports itself (and renews the leader lease when it holds it);
    /// a node is live while its last heartbeat is within 3 intervals (default `1s`).
    pub heartbeat_interval: String,
    /// How often the change log is read when the store cannot notify (SQLite), or after a
    /// lost notification connection (default `1s`).
    pub poll_interval: String,
    /// How long the leader lease lasts without renewal (default `5s`): the longest a dead
    /// leader's jobs stay without a leader. At least 3 heartbeat intervals.
    pub lease_ttl: String,
    /// Every this long the whole index is reloaded from the store, whatever the change log
    /// says: a backstop (default `10m`).
    pub full_reload: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            advertise: None,
            heartbeat_interval: "1s".into(),
            poll_interval: "1s".into(),
            lease_ttl: "5s".into(),
            full_reload: "10m".into(),
        }
    }
}

/// `[webhooks]`: the sender of signed webhooks (SPEC §10).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Send webhooks from this server (default true).
    pub enabled: bool,
    /// How often the outbox and due retries are looked at (default `1s`); a written event
    /// wakes the sender at once.
    pub interval: String,
    /// Allow endpoints on loopback addresses (127.0.0.0/8, ::1). Off by default.
    pub allow_loopback: bool,
    /// Allow endpoints on private, link-local, CGNAT and unique-local addresses. Off by default.
    pub allow_private: bool,
    /// Deliveries in flight at once (default 8).
    pub concurrency: usize,
    /// A PEM bundle of extra trust anchors (private CAs) for `https://` endpoints, added to the
    /// built-in webpki roots. Certificates are always verified.
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: true,
            interval: "1s".into(),
            allow_loopback: false,
            allow_private: false,
            concurrency: 8,
            ca_file: None,
        }
    }
}

/// `[schedule]`: the server's run of the rotation schedule (SPEC §7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Run the schedule in this server: raise `rotation.due` and `key.expiring` (default true).
    pub enabled: bool,
    /// How often the schedule is looked at (default `30s`).
    pub interval: String,
    /// A version delivered to an agent and not seen in traffic this long after is reported
    /// (`version.unused`, and a warning in status): the app did not reload (default `5m`).
    pub unseen_after: String,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            enabled: true,
            interval: "30s".into(),
            unseen_after: "5m".into(),
        }
    }
}

/// `[http]`: what one client may hold of the listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A new connection must send a complete request head within this of being accepted, a
    /// keep-alive connection within this of the first byte of its next request.
    pub header_read_timeout: String,
    /// A keep-alive connection with no request in flight is closed after this. Longer than
    /// nginx's upstream `keepalive_timeout` (60 s), so keyroll never closes a pooled connection
    /// the gateway is about to reuse.
    pub idle_timeout: String,
    /// A request body must arrive completely within this of its head (else 408).
    pub body_read_timeout: String,
    /// Open connections at most; connections beyond are answered 503 and closed at once.
    pub max_connections: usize,
    /// Header lines a request may have before the listener answers 431 (forward-auth answers
    /// `malformed_request` for fewer than this but too many).
    pub max_headers: usize,
    /// Bytes a request head (request line and headers) may have before the listener answers 431.
    pub max_header_bytes: usize,
    /// How often the counts of closed, refused and malformed connections are logged.
    pub log_interval: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: "10s".into(),
            idle_timeout: "75s".into(),
            body_read_timeout: "30s".into(),
            max_connections: 4096,
            max_headers: 200,
            max_header_bytes: 128 * 1024,
            log_interval: "10s".into(),
        }
    }
}

/// `[history]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Decisions kept in memory for `GET /v1/decisions` (most of them for rejections; 0: none).
    pub size: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { size: 10_000 }
    }
}

/// `[usage]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Record who uses which version (needed by `when-idle` and stall detection).
    pub enabled: bool,
    /// How often counts are written to the store.
    pub flush_interval: String,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` name the client (CIDR blocks).
    pub trusted_proxies: Vec<String>,
    /// How often the lifecycle sweeper writes down deadlines, stalls and idle retirements.
    pub sweep_interval: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_interval: "5s".into(),
            // A gateway on the same host (nginx auth_request) is the common set-up.
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            sweep_interval: "2s".into(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (JSON unless stdout is a terminal), `json` or `pretty`.
    pub format: String,
    /// A tracing filter: `info`, `debug`, `keyroll=debug,info`.
    pub level: String,
    /// The level of allowed decisions: `debug` (default) or `info`. Rejections are always WARN.
    pub allowed: String,
    /// Identical rejections (code, kid or fingerprint, source) logged one by one per
    /// `flood_window`; the rest are counted in one summary line. 0 logs every one.
    pub flood_limit: u32,
    /// The window of `flood_limit` (whole seconds).
    pub flood_window: String,
}

/// `[verify]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// The environment keys must belong to when the request does not say.
    pub environment: Option<String>,
    /// How much callers are told: `full` (default) or `code`.
    pub explain: String,
}

/// `[rotation]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Grace window when a rotation does not give one.
    pub default_grace: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:7878".into(),
            data_dir: PathBuf::from("./keyroll-data"),
            database_url: None,
            log: LogConfig::default(),
            verify: VerifyConfig {
                environment: None,
                explain: "full".into(),
            },
            rotation: RotationConfig::default(),
            usage: UsageConfig::default(),
            history: HistoryConfig::default(),
            http: HttpConfig::default(),
            schedule: ScheduleConfig::default(),
            webhooks: WebhooksConfig::default(),
            cluster: ClusterConfig::default(),
            ui: UiConfig::default(),
            tls: TlsConfig::default(),
            ca: CaConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "auto".into(),
            level: "info".into(),
            allowed: "debug".into(),
            flood_limit: 10,
            flood_window: "10s".into(),
        }
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            default_grace: "48h".into(),
        }
    }
}

/// How much a rejected caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// Code, detail, kid.
    Full,
    /// Code and request id only.
    Code,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL, if not the default SQLite file.
    pub database_url: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Allowed decisions at INFO instead of DEBUG.
    pub log_allowed_at_info: bool,
    /// Default environment for verification.
    pub verify_environment: Option<keyroll_core::Environment>,
    /// How much callers are told.
    pub explain: Explain,
    /// Default grace window.
    pub default_grace: Duration,
    /// Usage recording on.
    pub usage_enabled: bool,
    /// Usage flush period.
    pub usage_flush_interval: Duration,
    /// Trusted proxies.
    pub trusted_proxies: Vec<crate::client_addr::TrustedNet>,
    /// Sweeper period.
    pub sweep_interval: Duration,
    /// Decisions kept in memory.
    pub history_size: usize,
    /// Identical rejections logged per window before collapsing (0: never collapse).
    pub log_flood_limit: u32,
    /// The collapsing window.
    pub log_flood_window: Duration,
    /// The HTTP listener's limits.
    pub http: HttpLimits,
    /// The schedule runs in this server.
    pub schedule_enabled: bool,
    /// How often it is looked at.
    pub schedule_interval: Duration,
    /// The webhook sender.
    pub webhooks: WebhookSettings,
    /// See [`ScheduleConfig::unseen_after`].
    pub unseen_after: Duration,
    /// The validated `[cluster]` section.
    pub cluster: ClusterSettings,
    /// The validated `[ui]` section.
    pub ui: UiSettings,
    /// The validated `[tls]` section; `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// `ca.master_key_file`: where the master key is read from (else `DATA_DIR/master.key`).
    pub ca_master_key_file: Option<PathBuf>,
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, watched.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// Issued by keyroll's own CA.
    Issue {
        /// `ENV/SERVICE`.
        identity: String,
        /// DNS names.
        dns: Vec<String>,
        /// IP addresses.
        ip: Vec<std::net::IpAddr>,
    },
}

/// Whether and where client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never asked for.
    Off,
    /// Asked for and verified when sent; nothing requires one.
    Optional,
    /// Asked for; the admin API needs a verified identity in `admin_identities`.
    RequireAdmin,
}

impl ClientAuth {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::RequireAdmin => "require_admin",
        }
    }
}

/// The validated `[tls]` section (see [`TlsConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate's source.
    pub source: TlsSource,
    /// Client certificates.
    pub client_auth: ClientAuth,
    /// `ENV/SERVICE` patterns allowed on the admin API under `require_admin`.
    pub admin_identities: Vec<String>,
    /// See [`TlsConfig::client_ca_file`].
    pub client_ca_file: Option<PathBuf>,
    /// See [`TlsConfig::trust_domain`].
    pub trust_domain: Option<String>,
    /// See [`TlsConfig::watch_interval`].
    pub watch_interval: Duration,
}

/// The validated `[cluster]` section (see [`ClusterConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// A fixed node id, or `None` for a new random one at start.
    pub node_id: Option<String>,
    /// The advertised address, or `None` for the listen address.
    pub advertise: Option<String>,
    /// See [`ClusterConfig::heartbeat_interval`].
    pub heartbeat_interval: Duration,
    /// See [`ClusterConfig::poll_interval`].
    pub poll_interval: Duration,
    /// See [`ClusterConfig::lease_ttl`].
    pub lease_ttl: Duration,
    /// See [`ClusterConfig::full_reload`].
    pub full_reload: Duration,
}

/// The validated `[webhooks]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The sender runs in this server.
    pub enabled: bool,
    /// Its period.
    pub interval: Duration,
    /// Loopback targets allowed.
    pub allow_loopback: bool,
    /// Private targets allowed.
    pub allow_private: bool,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// `webhooks.ca_file`, read and checked at start-up.
    pub ca: Option<CaBundle>,
}

/// Extra trust anchors for the webhook sender: the file they came from and its PEM text,
/// which holds at least one certificate that a TLS client accepts as a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// Where it was read from.
    pub path: PathBuf,
    /// The PEM bundle.
    pub pem: std::sync::Arc<[u8]>,
}

impl CaBundle {
    /// Reads and checks `path`: readable, PEM, at least one certificate, each one usable as a
    /// trust anchor.
    pub fn read(path: &Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
        let bundle = CaBundle {
            path: path.to_owned(),
            pem: pem.into(),
        };
        let certificates = bundle.certificates()?;
        keyroll_ca::tls::install_provider();
        let mut client = reqwest::Client::builder();
        for c in certificates {
            client = client.add_root_certificate(c);
        }
        client.build().map_err(|e| {
            let mut text = "not a usable CA certificate".to_owned();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
        Ok(bundle)
    }

    /// The certificates of the bundle (none is an error).
    pub fn certificates(&self) -> Result<Vec<reqwest::Certificate>, String> {
        let certificates = reqwest::Certificate::from_pem_bundle(&self.pem)
            .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        if certificates.is_empty() {
            return Err(
                "no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)".to_owned(),
            );
        }
        Ok(certificates)
    }
}

/// The validated `[http]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// See [`HttpConfig::header_read_timeout`].
    pub header_read_timeout: Duration,
    /// See [`HttpConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`HttpConfig::body_read_timeout`].
    pub body_read_timeout: Duration,
    /// See [`HttpConfig::max_connections`].
    pub max_connections: usize,
    /// See [`HttpConfig::max_headers`].
    pub max_headers: usize,
    /// See [`HttpConfig::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`HttpConfig::log_interval`].
    pub log_interval: Duration,
}

/// Flags given on the command line, which override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// A configuration problem, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed, or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(String),
    /// A value is not acceptable.
    #[error("configuration: {key} = {value:?}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// The environment variables that are settings (others, like `KEYROLL_TOKEN`, belong to the
/// CLI and must not trip `deny_unknown_fields`).
const ENV_KEYS: [&str; 15] = [
    "listen",
    "data_dir",
    "database_url",
    "log",
    "verify",
    "rotation",
    "history",
    "usage",
    "http",
    "schedule",
    "webhooks",
    "cluster",
    "ui",
    "tls",
    "ca",
];

impl Config {
    /// Layers defaults, `file` (if any), `KEYROLL_*` variables and `overrides`, and validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("KEYROLL_").split("__").filter(|k| {
            // `k` keeps the variable's case (`LOG__LEVEL`); settings are lowercase.
            let k = k.as_str().to_ascii_lowercase();
            ENV_KEYS.iter().any(|known| k.starts_with(known))
        }));
        if let Some(v) = &overrides.listen {
            figment = figment.merge(("listen", v));
        }
        if let Some(v) = &overrides.data_dir {
            figment = figment.merge(("data_dir", v));
        }
        if let Some(v) = &overrides.database_url {
            figment = figment.merge(("database_url", v));
        }
        if let Some(v) = &overrides.log_format {
            figment = figment.merge(("log.format", v));
        }
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Config::resolve(raw)
    }

    /// Validates a raw configuration.
    pub fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = raw.listen.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            value: raw.listen.clone(),
            reason: format!("{e}; expected HOST:PORT like 127.0.0.1:7878"),
        })?;
        let log_format = match raw.log.format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            "auto" => {
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    LogFormat::Pretty
                } else {
                    LogFormat::Json
                }
            }
            other => {
                return Err(ConfigError::Invalid {
                    key: "log.format",
                    value: other.into(),
                    reason: "expected auto, json or pretty".into(),
                });
            }
        };
        let log_allowed_at_info = match raw.log.allowed.as_str() {
            "debug" => false,
            "info" => true,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log.allowed",
                    value: other.into(),
                    reason: "expected debug or info".into(),
                });
            }
        };
        let explain = match raw.verify.explain.as_str() {
            "full" => Explain::Full,
            "code" => Explain::Code,
            other => {
                return Err(ConfigError::Invalid {
                    key: "verify.explain",
                    value: other.into(),
                    reason: "expected full or code".into(),
                });
            }
        };
        let verify_environment = raw
            .verify
            .environment
            .as_deref()
            .map(keyroll_core::Environment::parse)
            .transpose()
            .map_err(|e| ConfigError::Invalid {
                key: "verify.environment",
                value: raw.verify.environment.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        let default_grace =
            keyroll_core::parse_duration(&raw.rotation.default_grace).map_err(|e| {
                ConfigError::Invalid {
                    key: "rotation.default_grace",
                    value: raw.rotation.default_grace.clone(),
                    reason: e.to_string(),
                }
            })?;
        crate::logging::parse_filter(&raw.log.level).map_err(|reason| ConfigError::Invalid {
            key: "log.level",
            value: raw.log.level.clone(),
            reason,
        })?;
        let positive = |key: &'static str, value: &str| -> Result<Duration, ConfigError> {
            match keyroll_core::parse_duration(value) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(ConfigError::Invalid {
                    key,
                    value: value.into(),
                    reason: "must be longer than 0".into(),
                }),
                Err(e) => Err(ConfigError::Invalid {
                    key,
                    value: value.into(),
                    reason: e.to_string(),
                }),
            }
        };
        let usage_flush_interval = positive("usage.flush_interval", &raw.usage.flush_interval)?;
        let sweep_interval = positive("usage.sweep_interval", &raw.usage.sweep_interval)?;
        let trusted_proxies = raw
            .usage
            .trusted_proxies
            .iter()
            .map(|t| {
                crate::client_addr::TrustedNet::parse(t).ok_or_else(|| ConfigError::Invalid {
                    key: "usage.trusted_proxies",
                    value: t.clone(),
                    reason: "expected an IP address or CIDR block like 10.0.0.0/8".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // At most a million entries (a few hundred MB); whole seconds for the window, so the
        // summary line's `window_s` is exact.
        if raw.history.size > 1_000_000 {
            return Err(ConfigError::Invalid {
                key: "history.size",
                value: raw.history.size.to_string(),
                reason: "at most 1000000".into(),
            });
        }
        let log_flood_window = positive("log.flood_window", &raw.log.flood_window)?;
        if log_flood_window.subsec_nanos() != 0 {
            return Err(ConfigError::Invalid {
                key: "log.flood_window",
                value: raw.log.flood_window.clone(),
                reason: "must be whole seconds, like 10s".into(),
            });
        }
        let http = resolve_http(&raw.http, positive)?;
        let schedule_interval = positive("schedule.interval", &raw.schedule.interval)?;
        let webhooks = WebhookSettings {
            enabled: raw.webhooks.enabled,
            interval: positive("webhooks.interval", &raw.webhooks.interval)?,
            allow_loopback: raw.webhooks.allow_loopback,
            allow_private: raw.webhooks.allow_private,
            concurrency: if (1..=256).contains(&raw.webhooks.concurrency) {
                raw.webhooks.concurrency
            } else {
                return Err(ConfigError::Invalid {
                    key: "webhooks.concurrency",
                    value: raw.webhooks.concurrency.to_string(),
                    reason: "expected 1 to 256".into(),
                });
            },
            ca: match &raw.webhooks.ca_file {
                None => None,
                Some(path) => {
                    Some(CaBundle::read(path).map_err(|reason| ConfigError::Invalid {
                        key: "webhooks.ca_file",
                        value: path.display().to_string(),
                        reason,
                    })?)
                }
            },
        };
        let unseen_after = positive("schedule.unseen_after", &raw.schedule.unseen_after)?;
        let cluster = resolve_cluster(&raw.cluster, positive)?;
        let ui = UiSettings {
            idle_timeout: positive("ui.idle_timeout", &raw.ui.idle_timeout)?,
            session_lifetime: positive("ui.session_lifetime", &raw.ui.session_lifetime)?,
            secure_cookie: raw.ui.secure_cookie,
        };
        if ui.idle_timeout > ui.session_lifetime {
            return Err(ConfigError::Invalid {
                key: "ui.idle_timeout",
                value: raw.ui.idle_timeout.clone(),
                reason: "longer than ui.session_lifetime".into(),
            });
        }
        let tls = resolve_tls(&raw.tls, positive)?;
        Ok(Config {
            tls,
            cluster,
            ui,
            ca_master_key_file: raw.ca.master_key_file,
            webhooks,
            unseen_after,
            schedule_enabled: raw.schedule.enabled,
            schedule_interval,
            http,
            history_size: raw.history.size,
            log_flood_limit: raw.log.flood_limit,
            log_flood_window,
            usage_enabled: raw.usage.enabled,
            usage_flush_interval,
            trusted_proxies,
            sweep_interval,
            listen,
            data_dir: raw.data_dir,
            database_url: raw.database_url,
            log_format,
            log_level: raw.log.level,
            log_allowed_at_info,
            verify_environment,
            explain,
            default_grace,
        })
    }
}

fn resolve_cluster(
    raw: &ClusterConfig,
    positive: impl Fn(&'static str, &str) -> Result<Duration, ConfigError>,
) -> Result<ClusterSettings, ConfigError> {
    let invalid = |key: &'static str, value: &str, reason: &str| ConfigError::Invalid {
        key,
        value: value.into(),
        reason: reason.into(),
    };
    if let Some(id) = &raw.node_id
        && !valid_node_id(id)
    {
        return Err(invalid(
            "cluster.node_id",
            id,
            "expected 1 to 64 characters among a-z A-Z 0-9 . _ -",
        ));
    }
    if let Some(a) = &raw.advertise
        && (a.is_empty() || a.len() > 256 || a.chars().any(|c| c.is_control() || c == ' '))
    {
        return Err(invalid(
            "cluster.advertise",
            a,
            "expected an address like 10.0.0.5:7878 or https://node-1.internal:7878",
        ));
    }
    let heartbeat_interval = positive("cluster.heartbeat_interval", &raw.heartbeat_interval)?;
    let poll_interval = positive("cluster.poll_interval", &raw.poll_interval)?;
    let lease_ttl = positive("cluster.lease_ttl", &raw.lease_ttl)?;
    let full_reload = positive("cluster.full_reload", &raw.full_reload)?;
    // A renewal every heartbeat must be able to miss one and still arrive before the lease
    // lapses; with less, a leader steps down at every slow store round trip.
    if lease_ttl < heartbeat_interval.saturating_mul(3) {
        return Err(invalid(
            "cluster.lease_ttl",
            &raw.lease_ttl,
            &format!(
                "must be at least 3 heartbeat intervals ({} with cluster.heartbeat_interval = {})",
                keyroll_core::format_duration(heartbeat_interval.saturating_mul(3)),
                raw.heartbeat_interval
            ),
        ));
    }
    Ok(ClusterSettings {
        node_id: raw.node_id.clone(),
        advertise: raw.advertise.clone(),
        heartbeat_interval,
        poll_interval,
        lease_ttl,
        full_reload,
    })
}

fn resolve_tls(
    raw: &TlsConfig,
    positive: impl Fn(&'static str, &str) -> Result<Duration, ConfigError>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let invalid = |key: &'static str, value: &str, reason: &str| ConfigError::Invalid {
        key,
        value: value.into(),
        reason: reason.into(),
    };
    let client_auth = match raw.client_auth.as_str() {
        "off" => ClientAuth::Off,
        "optional" => ClientAuth::Optional,
        "require_admin" => ClientAuth::RequireAdmin,
        other => {
            return Err(invalid(
                "tls.client_auth",
                other,
                "expected off, optional or require_admin",
            ));
        }
    };
    for pattern in &raw.admin_identities {
        if !identity_pattern_ok(pattern) {
            return Err(invalid(
                "tls.admin_identities",
                pattern,
                "expected ENV/SERVICE patterns like ops/* or prod/billing (`*` for a whole part)",
            ));
        }
    }
    let source = match (&raw.cert_file, &raw.key_file, &raw.issue) {
        (None, None, None) => {
            if client_auth != ClientAuth::Off {
                return Err(invalid(
                    "tls.client_auth",
                    &raw.client_auth,
                    "needs TLS: set tls.cert_file and tls.key_file, or tls.issue",
                ));
            }
            return Ok(None);
        }
        (Some(cert), Some(key), None) => TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (Some(cert), None, None) => {
            return Err(invalid(
                "tls.key_file",
                "",
                &format!("missing: tls.cert_file = {} needs its key", cert.display()),
            ));
        }
        (None, Some(key), None) => {
            return Err(invalid(
                "tls.cert_file",
                "",
                &format!(
                    "missing: tls.key_file = {} needs its certificate",
                    key.display()
                ),
            ));
        }
        (None, None, Some(issue)) => {
            if !identity_pattern_ok(&issue.identity) || issue.identity.contains('*') {
                return Err(invalid(
                    "tls.issue.identity",
                    &issue.identity,
                    "expected ENV/SERVICE, like ops/keyroll",
                ));
            }
            let ip = issue
                .ip
                .iter()
                .map(|a| {
                    a.parse::<std::net::IpAddr>()
                        .map_err(|_| invalid("tls.issue.ip", a, "expected an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if issue.dns.is_empty() && ip.is_empty() {
                return Err(invalid(
                    "tls.issue",
                    &issue.identity,
                    "give at least one DNS name (dns = [\"keyroll.internal\"]) or IP address",
                ));
            }
            TlsSource::Issue {
                identity: issue.identity.clone(),
                dns: issue.dns.clone(),
                ip,
            }
        }
        (_, _, Some(_)) => {
            return Err(invalid(
                "tls.issue",
                "",
                "either tls.issue or tls.cert_file and tls.key_file, not both",
            ));
        }
    };
    if client_auth == ClientAuth::RequireAdmin && raw.admin_identities.is_empty() {
        return Err(invalid(
            "tls.admin_identities",
            "[]",
            "client_auth = \"require_admin\" needs at least one allowed identity, like [\"ops/*\"]",
        ));
    }
    // Without a file the listener verifies against keyroll's own CA (checked at start, once
    // the store is open: a server without a CA and without a file refuses to start).
    if client_auth != ClientAuth::Off && raw.client_ca_file.is_some() && raw.trust_domain.is_none()
    {
        return Err(invalid(
            "tls.client_ca_file",
            &raw.client_ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "needs tls.trust_domain, the trust domain client identities must belong to",
        ));
    }
    Ok(Some(TlsSettings {
        source,
        client_auth,
        client_ca_file: raw.client_ca_file.clone(),
        trust_domain: raw.trust_domain.clone(),
        admin_identities: raw.admin_identities.clone(),
        watch_interval: positive("tls.watch_interval", &raw.watch_interval)?,
    }))
}

/// `ENV/SERVICE` where each part is `*` or a name of keyroll's grammar (lowercase letters,
/// digits and `-`, starting with a letter).
fn identity_pattern_ok(pattern: &str) -> bool {
    let part = |p: &str| {
        p == "*"
            || (!p.is_empty()
                && p.len() <= 64
                && p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    };
    matches!(pattern.split_once('/'), Some((e, s)) if part(e) && part(s))
}

fn resolve_http(
    raw: &HttpConfig,
    positive: impl Fn(&'static str, &str) -> Result<Duration, ConfigError>,
) -> Result<HttpLimits, ConfigError> {
    let within = |key: &'static str, value: usize, min: usize, max: usize| {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                reason: format!("expected {min} to {max}"),
            })
        }
    };
    Ok(HttpLimits {
        header_read_timeout: positive("http.header_read_timeout", &raw.header_read_timeout)?,
        idle_timeout: positive("http.idle_timeout", &raw.idle_timeout)?,
        body_read_timeout: positive("http.body_read_timeout", &raw.body_read_timeout)?,
        // The cap is waited for with one semaphore call at shutdown, which counts in u32.
        max_connections: within("http.max_connections", raw.max_connections, 1, 1_000_000)?,
        max_headers: within("http.max_headers", raw.max_headers, 1, 10_000)?,
        // Below 1 KiB not even an ordinary browser request fits; above 1 MiB a few thousand
        // slow connections would hold gigabytes.
        max_header_bytes: within(
            "http.max_header_bytes",
            raw.max_header_bytes,
            1024,
            1024 * 1024,
        )?,
        log_interval: positive("http.log_interval", &raw.log_interval)?,
    })
}

/// Whether `id` may name a node: 1 to 64 of `a-z A-Z 0-9 . _ -` (it is shown in logs, tables
/// and problem details).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = Config::resolve(RawConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(c.default_grace, Duration::from_secs(48 * 3600));
        assert_eq!(c.explain, Explain::Full);
    }

    #[test]
    fn tls_settings_and_their_checks() {
        let c = Config::resolve(RawConfig::default()).unwrap();
        assert!(c.tls.is_none(), "plain HTTP by default");
        let with = |f: &dyn Fn(&mut TlsConfig)| {
            let mut raw = RawConfig::default();
            f(&mut raw.tls);
            Config::resolve(raw).map(|c| c.tls)
        };
        let files = with(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.client_auth = "require_admin".into();
            t.admin_identities = vec!["ops/*".into(), "*/deploy".into()];
            t.client_ca_file = Some("ca.pem".into());
            t.trust_domain = Some("example.org".into());
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            files.source,
            TlsSource::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            }
        );
        assert_eq!(files.client_auth, ClientAuth::RequireAdmin);
        assert_eq!(files.watch_interval, Duration::from_secs(1));
        let err = |f: &dyn Fn(&mut TlsConfig)| with(f).unwrap_err().to_string();
        assert!(err(&|t| t.cert_file = Some("c.pem".into())).contains("tls.key_file"));
        assert!(err(&|t| t.client_auth = "optional".into()).contains("needs TLS"));
        let e = err(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.client_auth = "sometimes".into();
        });
        assert!(e.contains("tls.client_auth"), "{e}");
        let e = err(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.client_auth = "require_admin".into();
        });
        assert!(e.contains("tls.admin_identities"), "{e}");
        let e = err(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.client_auth = "optional".into();
            t.client_ca_file = Some("ca.pem".into());
        });
        assert!(
            e.contains("tls.client_ca_file") && e.contains("tls.trust_domain"),
            "{e}"
        );
        // Neither a file nor a trust domain: the CA's trust store (checked at start).
        let from_ca = with(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.client_auth = "optional".into();
        })
        .unwrap()
        .unwrap();
        assert_eq!(from_ca.client_ca_file, None);
        let e = err(&|t| {
            t.cert_file = Some("c.pem".into());
            t.key_file = Some("k.pem".into());
            t.admin_identities = vec!["Ops".into()];
        });
        assert!(
            e.contains("tls.admin_identities") && e.contains("Ops"),
            "{e}"
        );
        let e = err(&|t| {
            t.issue = Some(TlsIssueConfig {
                identity: "ops/keyroll".into(),
                dns: vec![],
                ip: vec!["not-an-ip".into()],
            })
        });
        assert!(e.contains("tls.issue.ip"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let raw = RawConfig {
            listen: "nope".into(),
            ..RawConfig::default()
        };
        let err = Config::resolve(raw).unwrap_err().to_string();
        assert!(err.contains("listen") && err.contains("nope"), "{err}");
        let mut raw = RawConfig::default();
        raw.verify.explain = "everything".into();
        assert!(
            Config::resolve(raw)
                .unwrap_err()
                .to_string()
                .contains("verify.explain")
        );
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyroll.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[verify]\nenvironment = \"prod\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.verify_environment.unwrap().as_str(), "prod");
        let flags = Overrides {
            listen: Some("127.0.0.1:9001".into()),
            ..Overrides::default()
        };
        assert_eq!(
            Config::load(Some(&path), &flags).unwrap().listen.port(),
            9001
        );
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn http_limits_defaults_and_bounds() {
        let c = Config::resolve(RawConfig::default()).unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.http.max_connections, 4096);
        assert_eq!(c.http.max_headers, 200);
        for bad in [
            |h: &mut HttpConfig| h.header_read_timeout = "0s".into(),
            |h: &mut HttpConfig| h.idle_timeout = "soon".into(),
            |h: &mut HttpConfig| h.max_connections = 0,
            |h: &mut HttpConfig| h.max_header_bytes = 10,
        ] {
            let mut raw = RawConfig::default();
            bad(&mut raw.http);
            let err = Config::resolve(raw).unwrap_err().to_string();
            assert!(err.contains("http."), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyroll.toml");
        std::fs::write(&path, "[http]\nmax_conections = 5\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        std::fs::write(
            &path,
            "[http]\nmax_connections = 5\nheader_read_timeout = \"250ms\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.http.max_connections, 5);
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(250));
    }

    #[test]
    fn log_level_must_be_a_level_or_directives() {
        for good in [
            "info",
            "WARN",
            "keyroll=debug,info",
            "off",
            "keyroll::decision=trace",
        ] {
            let mut raw = RawConfig::default();
            raw.log.level = good.into();
            assert!(Config::resolve(raw).is_ok(), "{good}");
        }
        for bad in ["warning", "", "keyroll=loud", "info,,debug", "verbose"] {
            let mut raw = RawConfig::default();
            raw.log.level = bad.into();
            let err = Config::resolve(raw).unwrap_err().to_string();
            assert!(
                err.contains("log.level") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
            assert!(err.contains("trace, debug, info, warn, error"), "{err}");
        }
    }

    #[test]
    fn webhook_settings_come_from_the_file_and_the_environment() {
        let c = Config::resolve(RawConfig::default()).unwrap();
        assert!(c.webhooks.enabled && !c.webhooks.allow_loopback && !c.webhooks.allow_private);
        assert_eq!(c.webhooks.interval, Duration::from_secs(1));
        assert_eq!(c.webhooks.concurrency, 8);
        // The environment's naming (`KEYROLL_WEBHOOKS__ALLOW_LOOPBACK=true`) is exercised by the
        // end-to-end tests, which start real servers with it; a file sets the same keys.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyroll.toml");
        std::fs::write(
            &path,
            "[webhooks]\nallow_loopback = true\nconcurrency = 2\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert!(c.webhooks.allow_loopback);
        assert!(!c.webhooks.allow_private);
        assert_eq!(c.webhooks.concurrency, 2);
        std::fs::write(&path, "[webhooks]\nconcurrency = 0\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("webhooks.concurrency"), "{err}");
    }

    #[test]
    fn cluster_settings_defaults_and_checks() {
        let c = Config::resolve(RawConfig::default()).unwrap().cluster;
        assert_eq!(c.node_id, None);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.full_reload, Duration::from_secs(600));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyroll.toml");
        std::fs::write(
            &path,
            "[cluster]\nnode_id = \"node-a\"\nadvertise = \"10.0.0.5:7878\"\nlease_ttl = \"10s\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default())
            .unwrap()
            .cluster;
        assert_eq!(c.node_id.as_deref(), Some("node-a"));
        assert_eq!(c.advertise.as_deref(), Some("10.0.0.5:7878"));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        for (bad, key) in [
            ("node_id = \"a b\"", "cluster.node_id"),
            ("node_id = \"\"", "cluster.node_id"),
            ("advertise = \"\"", "cluster.advertise"),
            ("poll_interval = \"0s\"", "cluster.poll_interval"),
            (
                "heartbeat_interval = \"often\"",
                "cluster.heartbeat_interval",
            ),
            ("lease_ttl = \"2s\"", "cluster.lease_ttl"),
            ("full_reload = \"0s\"", "cluster.full_reload"),
        ] {
            std::fs::write(&path, format!("[cluster]\n{bad}\n")).unwrap();
            let err = Config::load(Some(&path), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        std::fs::write(&path, "[cluster]\nnode = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("node"), "{err}");
    }

    #[test]
    fn history_and_flood_settings() {
        let c = Config::resolve(RawConfig::default()).unwrap();
        assert_eq!(c.history_size, 10_000);
        assert_eq!(c.log_flood_limit, 10);
        assert_eq!(c.log_flood_window, Duration::from_secs(10));
        for (window, size) in [("1500ms", 10), ("0s", 10), ("10s", 2_000_000)] {
            let mut raw = RawConfig::default();
            raw.log.flood_window = window.into();
            raw.history.size = size;
            assert!(Config::resolve(raw).is_err(), "{window} {size}");
        }
    }
}
