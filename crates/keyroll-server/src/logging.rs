//! Log output: one JSON object per line (`ts`, `level`, `event`, fields) for machines, or
//! tracing's human format for terminals, and the `auth.decision` line of SPEC §5.
//!
//! The JSON layer is ours rather than tracing-subscriber's `json()` because SPEC §5 fixes the
//! field names (`ts`, not `timestamp`) and flattens fields into the top-level object.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use keyroll_core::DecisionCode;

use crate::decided::{CertDecisionRecord, DecisionRecord};

const LEVELS: &str = "trace, debug, info, warn, error or off";

/// Parses `log.level`: a level, or comma-separated `TARGET=LEVEL` directives with at most one
/// bare level among them (`keyroll=debug,info`).
///
/// Stricter than [`EnvFilter::try_new`], which reads a word that is not a level (`warning`)
/// as the name of a target to enable: everything else would then be off, silently.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    use std::str::FromStr;
    use tracing_subscriber::filter::LevelFilter;
    if level.trim().is_empty() {
        return Err(format!("empty; expected a level ({LEVELS})"));
    }
    for directive in level.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(format!(
                "an empty directive between commas; expected a level ({LEVELS}) or TARGET=LEVEL"
            ));
        }
        // A span filter (`target[span{field=value}]=level`) has `=` inside its brackets: the
        // level is what follows the last one.
        let (target, lvl) = match directive.rsplit_once('=') {
            Some((target, lvl)) => (Some(target), lvl),
            None => (None, directive),
        };
        if LevelFilter::from_str(lvl.trim()).is_err() {
            return Err(match target {
                Some(target) => format!(
                    "{lvl:?} (for {target:?}) is not a level; expected {LEVELS}, as in keyroll=debug"
                ),
                None => format!(
                    "{lvl:?} is not a level; expected {LEVELS}, or TARGET=LEVEL directives like keyroll=debug,info"
                ),
            });
        }
    }
    EnvFilter::try_new(level)
        .map_err(|e| format!("{e}; expected a level ({LEVELS}) or TARGET=LEVEL directives"))
}

/// Log output format (the `log.format` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// Installs the global subscriber. Safe to call once; a second call is ignored. `level` was
/// checked by [`parse_filter`] when the configuration was loaded.
pub fn init(format: LogFormat, level: &str) {
    let filter = parse_filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(JsonLines).try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
    };
}

/// Writes each event as one JSON line on stdout.
#[derive(Debug)]
pub struct JsonLines;

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(Map::new());
        fields.0.insert(
            "ts".into(),
            Value::String(keyroll_core::rfc3339(crate::clock::system_now())),
        );
        fields.0.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        event.record(&mut fields);
        if !fields.0.contains_key("event") {
            fields.0.insert("event".into(), Value::String("log".into()));
            fields.0.insert(
                "target".into(),
                Value::String(event.metadata().target().into()),
            );
        }
        let mut line = serde_json::to_vec(&Value::Object(fields.0)).unwrap_or_default();
        line.push(b'\n');
        // One write per line so concurrent lines never interleave; a closed stdout is not a
        // reason to fail a request.
        let _ = std::io::stdout().lock().write_all(&line);
    }
}

/// Masks the secret of anything in `text` shaped like a keyroll key (the core's
/// [`keyroll_core::key_shaped_runs`]), so a key pasted into a URL never reaches a log line.
pub fn redact_keys(text: &str) -> std::borrow::Cow<'_, str> {
    let mut runs = keyroll_core::key_shaped_runs(text).peekable();
    if runs.peek().is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for run in runs {
        out.push_str(&text[copied..run.secret_start]);
        out.push_str("[redacted]");
        copied = run.secret_end;
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

fn decision_level(code: DecisionCode, allowed_at_info: bool) -> Level {
    match (code.allowed(), allowed_at_info) {
        (false, _) => Level::WARN,
        (true, true) => Level::INFO,
        (true, false) => Level::DEBUG,
    }
}

/// Whether the decision line for `code` would be written. Building the line (and the request
/// facts it needs) costs more than the verification, so callers ask first.
pub fn decision_enabled(code: DecisionCode, allowed_at_info: bool) -> bool {
    match decision_level(code, allowed_at_info) {
        Level::WARN => tracing::enabled!(target: "keyroll::decision", Level::WARN),
        Level::INFO => tracing::enabled!(target: "keyroll::decision", Level::INFO),
        _ => tracing::enabled!(target: "keyroll::decision", Level::DEBUG),
    }
}

/// Emits the `auth.decision` line: rejections at WARN, allowed at DEBUG (or INFO). Callers ask
/// [`decision_enabled`] first (they build `detail` only then) and pass the detail they already
/// built for the history, so no sentence is formatted twice.
pub fn decision(record: &DecisionRecord<'_>, detail: &str, allowed_at_info: bool) {
    let (v, req) = (record.verification, record.facts);
    let latency_us = req.latency_us;
    let allowed = v.code.allowed();
    let level = decision_level(v.code, allowed_at_info);
    let consumer = v.consumer();
    let kid = v.kid.map(|k| k.to_string());
    let fingerprint = v.fingerprint.map(|f| f.to_string());
    let consumer_ref = consumer.map(|c| c.reference());
    let environment = v.environment();
    let version = v.version().map(|n| n.to_string());
    let state = v.state().map(|s| s.as_str());
    let remote = req.client.map(|a| a.to_string());
    let peer = req.peer.map(|a| a.to_string());
    let (method, uri) = match req.request_line() {
        Some((m, u)) => (Some(m), Some(redact_keys(u))),
        None => (None, None),
    };
    let user_agent: String = req.user_agent.chars().take(256).collect();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "keyroll::decision",
                $lvl,
                event = "auth.decision",
                decision = if allowed { "allowed" } else { "rejected" },
                code = v.code.as_str(),
                detail = detail,
                kid = kid.as_deref(),
                fingerprint = fingerprint.as_deref(),
                consumer = consumer_ref,
                environment = environment,
                version = version.as_deref(),
                state = state,
                request_id = req.request_id,
                remote_addr = remote.as_deref(),
                peer_addr = peer.as_deref(),
                method = method,
                uri = uri.as_deref(),
                user_agent = user_agent.as_str(),
                latency_us = latency_us,
            )
        };
    }
    match level {
        Level::WARN => emit!(Level::WARN),
        Level::INFO => emit!(Level::INFO),
        _ => emit!(Level::DEBUG),
    }
}

/// Writes the `cert.decision` line of one certificate decision (SPEC §9, with §5's field names
/// where they apply): rejections at WARN, accepted ones at DEBUG (INFO with `log.allowed`).
pub fn cert_decision(record: &CertDecisionRecord<'_>, allowed_at_info: bool) {
    let d = record.decision;
    let allowed = d.code.allowed();
    let serial = d.serial.as_ref().map(|s| s.to_string());
    let anchor = d.anchor.as_ref().map(|a| a.to_string());
    let fingerprint = d.fingerprint.as_ref().map(|f| f.to_string());
    let not_before = d.not_before.map(keyroll_core::rfc3339);
    let not_after = d.not_after.map(keyroll_core::rfc3339);
    let peer = record.peer.map(|p| p.to_string());
    let remote = record.client.map(|c| c.to_string());
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "keyroll::decision",
                $lvl,
                event = "cert.decision",
                decision = if allowed { "allowed" } else { "rejected" },
                code = d.code.as_str(),
                detail = d.detail.as_str(),
                edge = record.edge.as_str(),
                serial = serial.as_deref(),
                identity = d.identity.as_deref(),
                issuer = d.issuer.as_deref(),
                not_before = not_before.as_deref(),
                not_after = not_after.as_deref(),
                anchor = anchor.as_deref(),
                fingerprint = fingerprint.as_deref(),
                peer = peer.as_deref(),
                remote_addr = remote.as_deref().or(peer.as_deref()),
                request_id = record.request_id,
                "{}", d.detail
            )
        };
    }
    match (allowed, allowed_at_info) {
        (false, _) => emit!(Level::WARN),
        (true, true) => emit!(Level::INFO),
        (true, false) => emit!(Level::DEBUG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_key_secrets_in_text() {
        let text = "/x?k=kr_prod_ABCDEFGHIJKL_SECRETSECRETSECRETSECRETSECRET123456&y=1";
        let r = redact_keys(text);
        assert_eq!(r, "/x?k=kr_prod_ABCDEFGHIJKL_[redacted]&y=1");
        assert_eq!(redact_keys("/plain/path"), "/plain/path");
        assert_eq!(redact_keys("kr_ kr_x"), "kr_ kr_x");
    }
}
