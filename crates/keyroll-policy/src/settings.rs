//! A consumer's settings as a policy sees them, in one canonical form so that the file, the live
//! state and the last applied state compare field by field (`48h` and `2days` are the same).

use serde::{Deserialize, Serialize};

use std::time::Duration;

use keyroll_core::parse_duration;

/// How a new key reaches a consumer (SPEC §7): the core's, so the file, the wire and the
/// lifecycle name the same three paths.
pub use keyroll_core::Delivery;

/// The settings a policy manages for one consumer. Durations are humantime strings; after
/// [`Settings::canonical`] two equal settings are equal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Granted scopes, sorted, without repeats.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Who to call about it.
    #[serde(default)]
    pub owner: Option<String>,
    /// `when-idle` or `at-deadline`.
    pub retire: String,
    /// Idle window.
    pub idle: String,
    /// `extend` or `retire`.
    pub on_stall: String,
    /// The schedule; none = not scheduled.
    #[serde(default)]
    pub rotate_every: Option<String>,
    /// The grace window of a scheduled rotation.
    #[serde(default)]
    pub grace: Option<String>,
    /// `agent`, `ci` or `manual`.
    #[serde(default = "manual")]
    pub delivery: String,
}

fn manual() -> String {
    Delivery::Manual.as_str().to_owned()
}

/// The names of [`Settings`]' fields, in the order a plan shows them.
pub const FIELDS: [&str; 8] = [
    "scopes",
    "owner",
    "delivery",
    "rotate_every",
    "grace",
    "retire",
    "idle",
    "on_stall",
];

fn duration(s: &str) -> String {
    // A value the server sent that keyroll cannot read is compared as written.
    parse_duration(s).map_or_else(|_| s.to_owned(), show_duration)
}

/// A duration in the largest unit that holds it exactly (`30d`, `36h`, `90m`, `0s`): one
/// spelling per value, which `parse_duration` reads back, and shorter than humantime's
/// (`1month 13h 26m 24s` for 31 days).
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m")] {
        if secs != 0 && secs.is_multiple_of(unit) {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

impl Settings {
    /// The same settings in the one form they are compared in.
    pub fn canonical(&self) -> Settings {
        let mut scopes = self.scopes.clone();
        scopes.sort();
        scopes.dedup();
        Settings {
            scopes,
            owner: self.owner.clone().filter(|o| !o.is_empty()),
            retire: self.retire.clone(),
            idle: duration(&self.idle),
            on_stall: self.on_stall.clone(),
            rotate_every: self.rotate_every.as_deref().map(duration),
            grace: self.grace.as_deref().map(duration),
            delivery: self.delivery.clone(),
        }
    }

    /// One field, as a plan shows it (`[a, b]`, `none`, `30days`, `not scheduled`).
    pub fn shown(&self, field: &str) -> String {
        let opt = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_owned());
        match field {
            "scopes" => format!("[{}]", self.scopes.join(", ")),
            "owner" => opt(&self.owner, "none"),
            "delivery" => self.delivery.clone(),
            "rotate_every" => opt(&self.rotate_every, "not scheduled"),
            "grace" => opt(&self.grace, "unset"),
            "retire" => self.retire.clone(),
            "idle" => self.idle.clone(),
            "on_stall" => self.on_stall.clone(),
            _ => String::new(),
        }
    }

    /// The fields in which `self` and `other` differ (both canonical), in [`FIELDS`] order.
    pub fn differences(&self, other: &Settings) -> Vec<&'static str> {
        let (a, b) = (self.canonical(), other.canonical());
        FIELDS
            .iter()
            .copied()
            .filter(|f| a.shown(f) != b.shown(f) || (*f == "owner" && a.owner != b.owner))
            .collect()
    }
}
