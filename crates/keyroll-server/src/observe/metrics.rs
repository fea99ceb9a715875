//! Prometheus metrics of SPEC §5: a recorder owned by the observer (not the process-global one,
//! so several servers in one process never share series). The per-decision series are counted
//! in [`striped`](super::striped) counters and brought into the recorder at scrape.
//!
//! Label budget: no label holds a kid, consumer or fingerprint. The `environment` label of
//! `keyroll_decisions_total` can come from the caller (the prefix of a well-formed key for an
//! unknown kid, a gateway header), so names learned that way are capped: past
//! [`MAX_UNTRUSTED_ENVIRONMENTS`] they are counted as `other`, and a flood of made-up keys
//! cannot grow the exposition without bound.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use keyroll_core::DecisionCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::Mutex;

use super::striped::{LatencyHistogram, StripedCounts};

/// Environment names accepted from untrusted sources before they are counted as `other`.
pub const MAX_UNTRUSTED_ENVIRONMENTS: usize = 16;

/// The label for an environment beyond the budget.
pub const OTHER_ENVIRONMENT: &str = "other";

/// Environments with their own decision counters; beyond it, `other` (an installation has a
/// handful).
pub const MAX_ENVIRONMENTS: usize = 64;

const CODES: usize = DecisionCode::ALL.len();

const DECISIONS: &str = "keyroll_decisions_total";
const VERIFY_DURATION: &str = "keyroll_verify_duration_seconds";
const KEY_VERSIONS: &str = "keyroll_key_versions";
const ROTATIONS: &str = "keyroll_rotations_total";
const RETIRING_IN_USE: &str = "keyroll_retiring_versions_in_use";
const FLUSH_DURATION: &str = "keyroll_usage_flush_duration_seconds";
const FLUSH_FAILURES: &str = "keyroll_usage_flush_failures_total";
const LAST_FLUSH: &str = "keyroll_usage_last_flush_timestamp_seconds";
const FLUSHED_VERSIONS: &str = "keyroll_usage_flushed_versions_total";
const INDEX_VERSIONS: &str = "keyroll_index_key_versions";
const STORE_UP: &str = "keyroll_store_up";
const SUPPRESSED: &str = "keyroll_decision_log_suppressed_total";
const CLUSTER_APPLIED: &str = "keyroll_cluster_applied_seq";
const CLUSTER_LAG: &str = "keyroll_cluster_lag_changes";
const CLUSTER_LEADER: &str = "keyroll_cluster_leader";
const CERT_DECISIONS: &str = "keyroll_cert_decisions_total";
const CERTS_ISSUED: &str = "keyroll_certs_issued_total";

/// A usage flush is one store transaction: milliseconds, seconds when the store struggles.
const FLUSH_BUCKETS: [f64; 12] = [
    1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Where an environment label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The installation's own data (a consumer found by kid, the server's configuration).
    Known,
    /// The request (a key prefix, a gateway header or query parameter).
    Caller,
}

/// One environment's decision counters: striped on the hot path, copied into the recorder's
/// handles (registered on first use of each code) at scrape.
#[derive(Debug)]
struct EnvCounters {
    name: Box<str>,
    trust: Trust,
    counts: StripedCounts<CODES>,
    exported: [OnceLock<Counter>; CODES],
}

impl EnvCounters {
    fn new(name: &str, trust: Trust) -> EnvCounters {
        EnvCounters {
            name: name.into(),
            trust,
            counts: StripedCounts::new(),
            exported: Default::default(),
        }
    }
}

/// Rotation counters by (environment, outcome).
type RotationCounters = Vec<((Box<str>, Box<str>), Counter)>;

/// Key-version gauges by (environment, state).
type StateGauges = Vec<((Box<str>, &'static str), Gauge)>;

/// The metrics of one observer.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Append-only slots, the first `env_len` filled. Few environments: searched linearly,
    /// which beats hashing the name; and read without a lock, so the hot path writes nothing
    /// shared. Slot 0 is `other`.
    envs: Box<[OnceLock<EnvCounters>]>,
    env_len: AtomicUsize,
    /// Serializes adding an environment.
    env_insert: Mutex<()>,
    /// Set once [`MAX_UNTRUSTED_ENVIRONMENTS`] caller-named environments have counters.
    caller_budget_spent: AtomicBool,
    verify_duration: LatencyHistogram,
    rotations: Mutex<RotationCounters>,
    /// Certificate decisions by (code, edge): at most 11 codes × 2 edges.
    cert_decisions: Mutex<Vec<((&'static str, &'static str), Counter)>>,
    certs_issued: Mutex<Vec<(&'static str, Counter)>>,
    retiring_in_use: Mutex<Vec<(Box<str>, Gauge)>>,
    key_versions: Mutex<StateGauges>,
    flush_duration: Histogram,
    flush_failures: Counter,
    flushed_versions: Counter,
    last_flush: Gauge,
    index_versions: Gauge,
    store_up: Gauge,
    suppressed: Counter,
    cluster_applied: Gauge,
    cluster_lag: Gauge,
    cluster_leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> = Metadata::new(
    "keyroll::metrics",
    metrics::Level::INFO,
    Some(module_path!()),
);

fn code_index(code: DecisionCode) -> usize {
    // A fieldless enum declared in the order of `DecisionCode::ALL` (checked by a test).
    code as usize
}

impl Metrics {
    /// A recorder with keyroll's series described and its histograms bucketed.
    pub fn new() -> Metrics {
        // The bucket list is a non-empty constant, so this cannot fail; should it ever, the
        // exporter renders a summary rather than the server refusing to start.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FLUSH_DURATION.into()), &FLUSH_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let plain = |name: &'static str| Key::from_static_name(name);
        let envs: Box<[OnceLock<EnvCounters>]> =
            (0..MAX_ENVIRONMENTS).map(|_| OnceLock::new()).collect();
        if let Some(slot) = envs.first() {
            let _ = slot.set(EnvCounters::new(OTHER_ENVIRONMENT, Trust::Known));
        }
        Metrics {
            envs,
            env_len: AtomicUsize::new(1),
            env_insert: Mutex::new(()),
            caller_budget_spent: AtomicBool::new(false),
            verify_duration: LatencyHistogram::default(),
            rotations: Mutex::new(Vec::new()),
            cert_decisions: Mutex::new(Vec::new()),
            certs_issued: Mutex::new(Vec::new()),
            retiring_in_use: Mutex::new(Vec::new()),
            key_versions: Mutex::new(Vec::new()),
            flush_duration: recorder.register_histogram(&plain(FLUSH_DURATION), &METADATA),
            flush_failures: recorder.register_counter(&plain(FLUSH_FAILURES), &METADATA),
            flushed_versions: recorder.register_counter(&plain(FLUSHED_VERSIONS), &METADATA),
            last_flush: recorder.register_gauge(&plain(LAST_FLUSH), &METADATA),
            index_versions: recorder.register_gauge(&plain(INDEX_VERSIONS), &METADATA),
            store_up: recorder.register_gauge(&plain(STORE_UP), &METADATA),
            suppressed: recorder.register_counter(&plain(SUPPRESSED), &METADATA),
            cluster_applied: recorder.register_gauge(&plain(CLUSTER_APPLIED), &METADATA),
            cluster_lag: recorder.register_gauge(&plain(CLUSTER_LAG), &METADATA),
            cluster_leader: recorder.register_gauge(&plain(CLUSTER_LEADER), &METADATA),
            recorder,
            handle,
        }
    }

    /// Counts one decision and its verification time. The hot path: a lock-free scan of a few
    /// names, then two or three additions on this thread's own cache line.
    #[inline]
    pub fn decision(&self, environment: &str, trust: Trust, code: DecisionCode, latency_us: u64) {
        self.verify_duration.record(latency_us);
        let counters = match self.find(environment) {
            Some(e) => Some(e),
            // Once the budget is spent, made-up names go to `other` without taking the insert
            // lock, so a flood of them does not serialize requests on it.
            None if trust == Trust::Caller && self.caller_budget_spent.load(Ordering::Relaxed) => {
                self.other()
            }
            None => self.insert(environment, trust),
        };
        if let Some(e) = counters {
            e.counts.add(code_index(code), 1);
        }
    }

    fn filled(&self) -> impl Iterator<Item = &EnvCounters> {
        let n = self.env_len.load(Ordering::Acquire);
        self.envs.iter().take(n).filter_map(OnceLock::get)
    }

    fn find(&self, name: &str) -> Option<&EnvCounters> {
        self.filled().find(|e| &*e.name == name)
    }

    fn other(&self) -> Option<&EnvCounters> {
        self.envs.first().and_then(OnceLock::get)
    }

    /// Adds an environment's counters (or picks `other` past the budgets).
    fn insert(&self, name: &str, trust: Trust) -> Option<&EnvCounters> {
        let _guard = self.env_insert.lock();
        if let Some(e) = self.find(name) {
            return Some(e);
        }
        if trust == Trust::Caller
            && self.filled().filter(|e| e.trust == Trust::Caller).count()
                >= MAX_UNTRUSTED_ENVIRONMENTS
        {
            self.caller_budget_spent.store(true, Ordering::Relaxed);
            return self.other();
        }
        let n = self.env_len.load(Ordering::Acquire);
        let Some(slot) = self.envs.get(n) else {
            return self.other();
        };
        let _ = slot.set(EnvCounters::new(name, trust));
        // Published after the slot is filled: readers never see an empty slot below the length.
        self.env_len.store(n + 1, Ordering::Release);
        slot.get()
    }

    /// Copies the striped decision counts into the recorder's counters.
    fn export_decisions(&self) {
        for e in self.filled() {
            for (code, total) in DecisionCode::ALL.iter().zip(e.counts.totals()) {
                if total == 0 {
                    continue;
                }
                if let Some(c) = e.exported.get(code_index(*code)) {
                    c.get_or_init(|| {
                        let key = Key::from_parts(
                            DECISIONS,
                            vec![
                                Label::new("environment", e.name.to_string()),
                                Label::new("code", code.as_str()),
                            ],
                        );
                        self.recorder.register_counter(&key, &METADATA)
                    })
                    .absolute(total);
                }
            }
        }
    }

    /// Counts a rotation outcome. Rare (admin requests, the sweeper): no caching needed beyond
    /// keeping the handles.
    pub fn rotation(&self, environment: &str, outcome: &str) {
        let mut all = self.rotations.lock();
        if let Some((_, c)) = all
            .iter()
            .find(|((e, o), _)| &**e == environment && &**o == outcome)
        {
            c.increment(1);
            return;
        }
        let key = Key::from_parts(
            ROTATIONS,
            vec![
                Label::new("environment", environment.to_owned()),
                Label::new("outcome", outcome.to_owned()),
            ],
        );
        let c = self.recorder.register_counter(&key, &METADATA);
        c.increment(1);
        all.push(((environment.into(), outcome.into()), c));
    }

    /// Counts one workload certificate issued through `edge` (`admin`, `self_key`, `self_cert`).
    pub fn cert_issued(&self, edge: &'static str) {
        let mut all = self.certs_issued.lock();
        if let Some((_, c)) = all.iter().find(|(k, _)| *k == edge) {
            c.increment(1);
            return;
        }
        let key = Key::from_parts(CERTS_ISSUED, vec![Label::new("edge", edge)]);
        let c = self.recorder.register_counter(&key, &METADATA);
        c.increment(1);
        all.push((edge, c));
    }

    /// Counts a certificate decision. Labels are static strings (the code and the edge), so the
    /// series are bounded whatever a peer presents.
    pub fn cert_decision(&self, code: &'static str, edge: &'static str) {
        let mut all = self.cert_decisions.lock();
        if let Some((_, c)) = all.iter().find(|(k, _)| *k == (code, edge)) {
            c.increment(1);
            return;
        }
        let key = Key::from_parts(
            CERT_DECISIONS,
            vec![Label::new("code", code), Label::new("edge", edge)],
        );
        let c = self.recorder.register_counter(&key, &METADATA);
        c.increment(1);
        all.push(((code, edge), c));
    }

    /// Sets the number of retiring versions still seen in traffic.
    pub fn set_retiring_in_use(&self, environment: &str, n: u64) {
        let mut all = self.retiring_in_use.lock();
        if let Some((_, g)) = all.iter().find(|(e, _)| &**e == environment) {
            g.set(n as f64);
            return;
        }
        let key = Key::from_parts(
            RETIRING_IN_USE,
            vec![Label::new("environment", environment.to_owned())],
        );
        let g = self.recorder.register_gauge(&key, &METADATA);
        g.set(n as f64);
        all.push((environment.into(), g));
    }

    /// Records a usage flush that succeeded at `at_unix_s`.
    pub fn usage_flushed(&self, duration: Duration, versions: usize, at_unix_s: f64) {
        self.flush_duration.record(duration.as_secs_f64());
        self.flushed_versions.increment(versions as u64);
        self.last_flush.set(at_unix_s);
    }

    /// Records a usage flush that failed.
    pub fn usage_flush_failed(&self) {
        self.flush_failures.increment(1);
    }

    /// Whether the store answered its last ping.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(if up { 1.0 } else { 0.0 });
    }

    /// Sets what this node applied of the change log, how far behind the head it is, and
    /// whether it leads.
    pub fn set_cluster(&self, applied: i64, lag: i64, leader: bool) {
        self.cluster_applied.set(applied as f64);
        self.cluster_lag.set(lag.max(0) as f64);
        self.cluster_leader.set(if leader { 1.0 } else { 0.0 });
    }

    /// Counts decision log lines left out by flood collapsing.
    pub fn suppressed(&self, n: u64) {
        self.suppressed.increment(n);
    }

    /// Sets the scrape-time gauges of the index: the total and the count per environment and
    /// state. A pair that disappeared drops to 0 rather than keeping its last value.
    pub fn set_index(&self, total: u64, by_state: &[(String, &'static str, u64)]) {
        self.index_versions.set(total as f64);
        let mut all = self.key_versions.lock();
        for (_, g) in all.iter() {
            g.set(0.0);
        }
        for (environment, state, n) in by_state {
            if let Some((_, g)) = all
                .iter()
                .find(|((e, s), _)| &**e == environment.as_str() && s == state)
            {
                g.set(*n as f64);
                continue;
            }
            let key = Key::from_parts(
                KEY_VERSIONS,
                vec![
                    Label::new("environment", environment.clone()),
                    Label::new("state", *state),
                ],
            );
            let g = self.recorder.register_gauge(&key, &METADATA);
            g.set(*n as f64);
            all.push(((environment.as_str().into(), state), g));
        }
    }

    /// The exposition text of every series.
    pub fn render(&self) -> String {
        self.export_decisions();
        let mut text = self.handle.render();
        self.verify_duration.render(
            VERIFY_DURATION,
            "Time to verify one presented key (parse, lookup, decision).",
            &mut text,
        );
        text
    }

    /// Drains pending histogram samples. A recorder built with `build_recorder` runs no upkeep
    /// of its own, and without it samples pile up in memory until the next scrape.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn describe(r: &PrometheusRecorder) {
    let d = |name: &'static str| metrics::KeyName::from_const_str(name);
    r.describe_counter(
        d(DECISIONS),
        None,
        "Decisions by the key's environment and the precise reason code.".into(),
    );
    r.describe_gauge(
        d(KEY_VERSIONS),
        None,
        "Key versions in the index by environment and state now.".into(),
    );
    r.describe_counter(
        d(CERTS_ISSUED),
        None,
        "Workload certificates issued, by edge (admin: POST /v1/certs; self_key and self_cert: a workload's own renewal with its consumer key or its client certificate)."
            .into(),
    );
    r.describe_counter(
        d(CERT_DECISIONS),
        None,
        "Client-certificate decisions by reason code and edge (tls_handshake, forward_auth_cert)."
            .into(),
    );
    r.describe_counter(
        d(ROTATIONS),
        None,
        "Lifecycle outcomes: rotated, retired_idle, retired_deadline, stalled, revoked.".into(),
    );
    r.describe_gauge(
        d(RETIRING_IN_USE),
        None,
        "Retiring versions still seen in traffic within their consumer's idle window.".into(),
    );
    r.describe_histogram(
        d(FLUSH_DURATION),
        Some(Unit::Seconds),
        "Time to write one batch of usage counts to the store.".into(),
    );
    r.describe_counter(d(FLUSH_FAILURES), None, "Usage flushes that failed.".into());
    r.describe_counter(
        d(FLUSHED_VERSIONS),
        None,
        "Key versions whose usage was written to the store.".into(),
    );
    r.describe_gauge(
        d(LAST_FLUSH),
        Some(Unit::Seconds),
        "Unix time of the last successful usage flush.".into(),
    );
    r.describe_gauge(
        d(INDEX_VERSIONS),
        None,
        "Key versions loaded into the in-memory index.".into(),
    );
    r.describe_gauge(
        d(STORE_UP),
        None,
        "1 when the store answered its last ping (which, after a failed write, writes a probe row), else 0.".into(),
    );
    r.describe_gauge(
        d(CLUSTER_APPLIED),
        None,
        "The last change-log seq this node's index has applied.".into(),
    );
    r.describe_gauge(
        d(CLUSTER_LAG),
        None,
        "Changes committed but not yet applied by this node (head - applied), at its last heartbeat.".into(),
    );
    r.describe_gauge(
        d(CLUSTER_LEADER),
        None,
        "1 while this node holds the leader lease (runs the sweeper, schedule, webhooks), else 0."
            .into(),
    );
    r.describe_counter(
        d(SUPPRESSED),
        None,
        "auth.decision log lines collapsed into auth.decision.suppressed summaries.".into(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_index_follows_all() {
        for (i, c) in DecisionCode::ALL.iter().enumerate() {
            assert_eq!(code_index(*c), i);
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counts_and_renders_a_histogram() {
        let m = Metrics::new();
        m.decision("prod", Trust::Known, DecisionCode::Valid, 3);
        m.decision("prod", Trust::Known, DecisionCode::Valid, 40);
        m.decision("prod", Trust::Caller, DecisionCode::UnknownKey, 2);
        m.rotation("prod", "rotated");
        m.set_index(
            2,
            &[("prod".into(), "active", 1), ("prod".into(), "retiring", 1)],
        );
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "keyroll_decisions_total{environment=\"prod\",code=\"valid\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "keyroll_decisions_total{environment=\"prod\",code=\"unknown_key\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "keyroll_verify_duration_seconds_count"),
            Some(3.0)
        );
        assert_eq!(
            value(
                &text,
                "keyroll_verify_duration_seconds_bucket{le=\"0.000005\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert!(text.contains("# TYPE keyroll_verify_duration_seconds histogram"));
        assert_eq!(
            value(
                &text,
                "keyroll_key_versions{environment=\"prod\",state=\"retiring\"}"
            ),
            Some(1.0)
        );
        m.set_index(1, &[("prod".into(), "active", 1)]);
        assert_eq!(
            value(
                &m.render(),
                "keyroll_key_versions{environment=\"prod\",state=\"retiring\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn caller_named_environments_are_capped() {
        let m = Metrics::new();
        for i in 0..100 {
            m.decision(&format!("e{i}"), Trust::Caller, DecisionCode::UnknownKey, 1);
        }
        m.decision("prod", Trust::Known, DecisionCode::Valid, 1);
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("keyroll_decisions_total{"))
            .count();
        assert_eq!(series, MAX_UNTRUSTED_ENVIRONMENTS + 2, "{text}");
        assert_eq!(
            value(
                &text,
                "keyroll_decisions_total{environment=\"other\",code=\"unknown_key\"}"
            ),
            Some((100 - MAX_UNTRUSTED_ENVIRONMENTS) as f64)
        );
    }

    #[test]
    fn separate_recorders_do_not_share_series() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.decision("prod", Trust::Known, DecisionCode::Valid, 1);
        assert!(!b.render().contains("keyroll_decisions_total{"));
    }
}
