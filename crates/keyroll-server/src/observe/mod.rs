//! Observability of decisions: the `auth.decision` log line (with flood collapsing), Prometheus
//! metrics, and the in-memory decision history.
//!
//! [`Observer::decision`] runs once for every decision, on the hot path. What it costs for an
//! allowed key: a few atomic operations for the metrics, one shard lock and no allocation for
//! the history, and nothing for the log unless allowed decisions are logged.

pub mod flood;
pub mod history;
pub mod metrics;
pub mod process;
pub mod striped;

use std::time::Duration;

use keyroll_core::Timestamp;

use crate::config::Config;
use crate::decided::{CertDecisionRecord, DecisionRecord};
use crate::logging;
use keyroll_verify::index::Index;

use self::flood::{Admit, FloodGate, FloodKey, Subject, Summary};
use self::history::History;
use self::metrics::{Metrics, Trust};

/// The environment label when nothing names one.
const UNKNOWN_ENVIRONMENT: &str = "unknown";

/// How often the observer's periodic work ([`Observer::tick`]) is due.
pub const TICK_EVERY: Duration = Duration::from_secs(1);

/// How often it drains histogram samples and wants the store pinged (in ticks).
const UPKEEP_EVERY_TICKS: u64 = 5;

/// How long a store ping may take before the store counts as down.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What a tick leaves to its driver (the observer does no IO itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Ping the store and report with [`Observer::set_store_up`].
    pub ping_store: bool,
}

/// What the observer is configured with.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    /// Decisions kept in memory.
    pub history_size: usize,
    /// Identical rejections logged per window before collapsing (0: never collapse).
    pub flood_limit: u32,
    /// The collapsing window.
    pub flood_window: Duration,
    /// The server's default verification environment (a metrics label of last resort).
    pub default_environment: Option<String>,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            history_size: 10_000,
            flood_limit: 10,
            flood_window: Duration::from_secs(10),
            default_environment: None,
        }
    }
}

impl ObserverConfig {
    /// The observer's part of the server configuration.
    pub fn from_config(c: &Config) -> ObserverConfig {
        ObserverConfig {
            history_size: c.history_size,
            flood_limit: c.log_flood_limit,
            flood_window: c.log_flood_window,
            default_environment: c.verify_environment.as_ref().map(|e| e.as_str().to_owned()),
        }
    }
}

/// Watches every decision.
#[derive(Debug)]
pub struct Observer {
    metrics: Metrics,
    history: History,
    flood: FloodGate,
    window_s: u64,
    default_environment: Option<Box<str>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    /// An observer with the default settings.
    pub fn new() -> Observer {
        Observer::with_config(ObserverConfig::default())
    }

    /// An observer configured from the server's configuration.
    pub fn from_config(c: &Config) -> Observer {
        Observer::with_config(ObserverConfig::from_config(c))
    }

    /// An observer with these settings.
    pub fn with_config(c: ObserverConfig) -> Observer {
        let window_ms = i64::try_from(c.flood_window.as_millis()).unwrap_or(i64::MAX);
        Observer {
            metrics: Metrics::new(),
            history: History::new(c.history_size),
            flood: FloodGate::new(c.flood_limit, window_ms),
            window_s: c.flood_window.as_secs(),
            default_environment: c.default_environment.map(String::into_boxed_str),
        }
    }

    /// The decision history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Counts a rotation outcome (`rotated`, `retired_idle`, `retired_deadline`, `stalled`,
    /// `revoked`).
    pub fn rotation(&self, environment: &str, outcome: &str) {
        self.metrics.rotation(environment, outcome);
    }

    /// Sets how many retiring versions of `environment` are still seen in traffic.
    pub fn set_retiring_in_use(&self, environment: &str, n: u64) {
        self.metrics.set_retiring_in_use(environment, n);
    }

    /// Records a successful usage flush of `versions` key versions.
    pub fn usage_flushed(&self, duration: Duration, versions: usize, at: Timestamp) {
        let at = at.unix_millis() as f64 / 1000.0;
        self.metrics.usage_flushed(duration, versions, at);
    }

    /// Records a failed usage flush.
    pub fn usage_flush_failed(&self) {
        self.metrics.usage_flush_failed();
    }

    /// Records this node's progress through the change log and its leadership.
    pub fn set_cluster(&self, applied: i64, lag: i64, leader: bool) {
        self.metrics.set_cluster(applied, lag, leader);
    }

    /// Records whether the store answered a ping.
    pub fn set_store_up(&self, up: bool) {
        self.metrics.set_store_up(up);
    }

    /// Records one decision: metrics, history, log line (collapsed in floods).
    pub fn decision(&self, record: &DecisionRecord<'_>, allowed_at_info: bool) {
        let (v, ctx) = (record.verification, record.facts);
        let (environment, trust) = self.label_environment(record);
        self.metrics
            .decision(environment, trust, v.code, ctx.latency_us);
        let entry = history::Record {
            ts_ms: ctx.now.unix_millis(),
            code: v.code,
            kid: v.kid,
            fingerprint: v.fingerprint,
            consumer: v.consumer(),
            key_environment: v.key_environment,
            version: v.version(),
            state: v.state(),
            request_id: ctx.request_id,
            remote_addr: ctx.client,
        };
        if v.code.allowed() {
            self.history.allowed(&entry);
            if logging::decision_enabled(v.code, allowed_at_info) {
                logging::decision(record, &v.detail(), allowed_at_info);
            }
            return;
        }
        let logged = logging::decision_enabled(v.code, allowed_at_info);
        if !logged && !self.history.keeps_rejections() {
            return;
        }
        // One explanation for both the log line and the history.
        let detail = v.detail();
        let admit = if !logged {
            Admit::Suppress
        } else if self.flood.enabled() {
            let key = FloodKey {
                code: v.code,
                subject: match (v.kid, v.fingerprint) {
                    (Some(k), _) => Subject::Kid(k),
                    (None, Some(f)) => Subject::Fingerprint(f),
                    (None, None) => Subject::Nothing,
                },
                source: ctx.client.map(|c| c.ip()),
            };
            let (admit, ended) = self.flood.check(key, ctx.request_id, ctx.now.unix_millis());
            if let Some(s) = ended {
                self.emit_summary(&s);
            }
            admit
        } else {
            Admit::Log
        };
        match admit {
            Admit::Log => logging::decision(record, &detail, allowed_at_info),
            Admit::Suppress if logged => self.metrics.suppressed(1),
            Admit::Suppress => {}
        }
        if self.history.keeps_rejections() {
            self.history.rejected(&entry, detail.into_boxed_str());
        }
    }

    /// Counts a workload certificate issued through `edge` (`keyroll_certs_issued_total`).
    pub fn cert_issued(&self, edge: &'static str) {
        self.metrics.cert_issued(edge);
    }

    /// Records one certificate decision (a handshake or a forwarded certificate): its metric
    /// and its `cert.decision` log line.
    pub fn cert_decision(&self, record: &CertDecisionRecord<'_>, allowed_at_info: bool) {
        self.metrics
            .cert_decision(record.decision.code.as_str(), record.edge.as_str());
        logging::cert_decision(record, allowed_at_info);
    }

    /// The periodic work due at `now`, tick number `n` (one every [`TICK_EVERY`]): the
    /// summaries of flood windows that ended, and every few ticks the histogram upkeep; says
    /// whether a store ping is due (the driver does it: the observer does no IO).
    pub fn tick(&self, n: u64, now: Timestamp) -> Tick {
        self.sweep(now.unix_millis());
        let upkeep = n.is_multiple_of(UPKEEP_EVERY_TICKS);
        if upkeep {
            self.upkeep();
        }
        Tick { ping_store: upkeep }
    }

    /// At shutdown: the summaries still pending.
    pub fn finish(&self) {
        self.sweep(i64::MAX);
    }

    /// Writes the summaries of flood windows that ended by `now`; `i64::MAX` writes them all.
    pub fn sweep(&self, now_ms: i64) {
        for s in self.flood.sweep(now_ms) {
            self.emit_summary(&s);
        }
    }

    fn emit_summary(&self, s: &Summary) {
        let kid = match s.key.subject {
            Subject::Kid(k) => Some(k.to_string()),
            _ => None,
        };
        let fingerprint = match s.key.subject {
            Subject::Fingerprint(f) => Some(f.to_string()),
            _ => None,
        };
        let remote = s.key.source.map(|ip| ip.to_string());
        let start = keyroll_core::rfc3339(Timestamp::from_unix_millis(s.window_start_ms));
        tracing::warn!(
            target: "keyroll::decision",
            event = "auth.decision.suppressed",
            decision = "rejected",
            code = s.key.code.as_str(),
            kid = kid.as_deref(),
            fingerprint = fingerprint.as_deref(),
            remote_addr = remote.as_deref(),
            count = s.suppressed,
            window_s = self.window_s,
            window_start = start.as_str(),
            last_request_id = &*s.last_request_id,
            overflow = s.overflow,
            "{} identical {} rejections were not logged one by one",
            s.suppressed,
            s.key.code.as_str(),
        );
    }

    /// The metrics label: the key's environment when known, else the one the request had to
    /// belong to, else `unknown`. Names that come from the request are checked against the
    /// environment grammar and capped by [`Metrics`].
    fn label_environment<'a>(&'a self, record: &DecisionRecord<'a>) -> (&'a str, Trust) {
        let v = record.verification;
        if let Some(c) = v.consumer() {
            return (c.environment(), Trust::Known);
        }
        if let Some(e) = v.key_environment.as_ref() {
            return (e.as_str(), Trust::Caller);
        }
        // Checked against the core's grammar where the edge read it.
        match record.facts.required_environment {
            Some(e) => (e.as_str(), Trust::Caller),
            None => match self.default_environment.as_deref() {
                Some(e) => (e, Trust::Known),
                None => (UNKNOWN_ENVIRONMENT, Trust::Known),
            },
        }
    }

    /// The exposition text: every series of the recorder, with the scrape-time gauges of the
    /// index brought up to date, then the process metrics.
    pub fn render(&self, index: &Index, now: Timestamp) -> String {
        self.metrics
            .set_index(index.len(), &index.count_by_environment_and_state(now));
        let mut text = self.metrics.render();
        process::ProcessStats::read().render(&mut text);
        text
    }

    /// Drains pending histogram samples (see [`Metrics::upkeep`]).
    pub fn upkeep(&self) {
        self.metrics.upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_decisions_are_counted_by_code_and_edge() {
        let o = Observer::new();
        let decision = keyroll_ca::CertDecision {
            code: keyroll_ca::CertCode::CertExpired,
            detail: "the certificate expired".into(),
            serial: Some(keyroll_ca::Serial::from_random([7; 16])),
            identity: Some("spiffe://example.org/prod/billing".into()),
            issuer: Some("CN=keyroll intermediate".into()),
            not_before: None,
            not_after: None,
            anchor: None,
            fingerprint: None,
        };
        let record = CertDecisionRecord {
            decision: &decision,
            edge: crate::decided::CertEdge::TlsHandshake,
            peer: None,
            request_id: None,
            now: Timestamp::EPOCH,
        };
        o.cert_decision(&record, false);
        o.cert_decision(&record, false);
        let text = o.metrics.render();
        assert!(
            text.contains(
                "keyroll_cert_decisions_total{code=\"cert_expired\",edge=\"tls_handshake\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn environment_names() {
        // The metrics labels taken from requests use the core's grammar.
        let is_environment_name = keyroll_core::Environment::is_valid;
        assert!(is_environment_name("prod"));
        assert!(is_environment_name("s1"));
        assert!(!is_environment_name(""));
        assert!(!is_environment_name("Prod"));
        assert!(!is_environment_name("1prod"));
        assert!(!is_environment_name("prod-eu"));
        assert!(!is_environment_name("abcdefghijklmnopq"));
    }
}
