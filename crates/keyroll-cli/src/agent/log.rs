//! The agent's log: one JSON object per line on stderr (`ts`, `level`, `event`, `consumer`,
//! `version`, `message`, then the event's own fields), like the server's. Written by hand with
//! serde_json: a handful of events do not need a tracing subscriber. No key is ever a field.

use std::io::Write;

use serde_json::Value;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something happened as it should.
    Info,
    /// Something went wrong that the agent retries by itself.
    Warn,
    /// Someone must act.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The log of one consumer's agent.
#[derive(Debug, Clone)]
pub struct Log {
    consumer: String,
}

impl Log {
    /// A log whose lines name `consumer`.
    pub fn new(consumer: &str) -> Log {
        Log {
            consumer: consumer.to_owned(),
        }
    }

    /// Writes one line. `fields` (a JSON object, or null) are added after the common ones.
    pub fn emit(
        &self,
        level: Level,
        event: &str,
        version: Option<u32>,
        message: &str,
        fields: Value,
    ) {
        let line = render(
            &super::now_rfc3339(),
            level,
            event,
            &self.consumer,
            version,
            message,
            fields,
        );
        // Best effort: a closed stderr must not stop the agent from keeping the key current.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// An INFO line.
    pub fn info(&self, event: &str, version: Option<u32>, message: &str, fields: Value) {
        self.emit(Level::Info, event, version, message, fields);
    }

    /// A WARN line.
    pub fn warn(&self, event: &str, version: Option<u32>, message: &str, fields: Value) {
        self.emit(Level::Warn, event, version, message, fields);
    }

    /// An ERROR line.
    pub fn error(&self, event: &str, version: Option<u32>, message: &str, fields: Value) {
        self.emit(Level::Error, event, version, message, fields);
    }
}

fn render(
    ts: &str,
    level: Level,
    event: &str,
    consumer: &str,
    version: Option<u32>,
    message: &str,
    fields: Value,
) -> String {
    // serde_json's map sorts its keys: the line is put together by hand so the common fields
    // come first, in the server's order.
    let mut line = String::from("{");
    let mut put = |k: &str, v: &Value| {
        if line.len() > 1 {
            line.push(',');
        }
        line.push_str(&Value::from(k).to_string());
        line.push(':');
        line.push_str(&v.to_string());
    };
    put("ts", &Value::from(ts));
    put("level", &Value::from(level.as_str()));
    put("event", &Value::from(event));
    put("consumer", &Value::from(consumer));
    if let Some(v) = version {
        put("version", &Value::from(v));
    }
    put("message", &Value::from(message));
    if let Value::Object(extra) = fields {
        const COMMON: [&str; 6] = ["ts", "level", "event", "consumer", "version", "message"];
        for (k, v) in extra.iter().filter(|(k, _)| !COMMON.contains(&k.as_str())) {
            put(k, v);
        }
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flat_object_with_the_common_fields_first() {
        let line = render(
            "2026-01-01T00:00:00.000Z",
            Level::Warn,
            "agent.poll_failed",
            "prod/billing",
            Some(3),
            "cannot reach the server",
            serde_json::json!({"retry_in_ms": 1500, "event": "ignored"}),
        );
        assert_eq!(
            line,
            r#"{"ts":"2026-01-01T00:00:00.000Z","level":"warn","event":"agent.poll_failed","consumer":"prod/billing","version":3,"message":"cannot reach the server","retry_in_ms":1500}"#
        );
        let line = render(
            "t",
            Level::Info,
            "agent.started",
            "a/b",
            None,
            "m",
            Value::Null,
        );
        assert!(!line.contains("version"), "{line}");
    }
}
