//! Server configuration: defaults, then a TOML file, then `KEYROLL_*` environment variables,
//! then command-line flags (each layer overrides the one before), validated once at start.

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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for terminals.
    Pretty,
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
    pub trusted_proxies: Vec<crate::usage::TrustedNet>,
    /// Sweeper period.
    pub sweep_interval: Duration,
    /// Decisions kept in memory.
    pub history_size: usize,
    /// Identical rejections logged per window before collapsing (0: never collapse).
    pub log_flood_limit: u32,
    /// The collapsing window.
    pub log_flood_window: Duration,
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
const ENV_KEYS: [&str; 8] = [
    "listen",
    "data_dir",
    "database_url",
    "log",
    "verify",
    "rotation",
    "history",
    "usage",
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
        tracing_subscriber::EnvFilter::try_new(&raw.log.level).map_err(|e| {
            ConfigError::Invalid {
                key: "log.level",
                value: raw.log.level.clone(),
                reason: e.to_string(),
            }
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
                crate::usage::TrustedNet::parse(t).ok_or_else(|| ConfigError::Invalid {
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
        Ok(Config {
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
