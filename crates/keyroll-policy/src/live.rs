//! The live state a plan is computed against, as the caller read it from the server. Serde
//! types, so the CLI builds them from the API's JSON and a saved plan can hold them.

use serde::{Deserialize, Serialize};

use crate::settings::Settings;

/// Everything a plan compares the file with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// Every environment.
    pub environments: Vec<LiveEnvironment>,
    /// Every consumer.
    pub consumers: Vec<LiveConsumer>,
    /// The server's schedule (what is due, what is blocked); informational.
    #[serde(default)]
    pub schedule: Vec<ScheduleEntry>,
    /// Every webhook endpoint (`GET /v1/webhooks`), in the server's order.
    #[serde(default)]
    pub webhooks: Vec<LiveWebhook>,
}

/// A webhook endpoint as it is (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveWebhook {
    /// `wh_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// A label for people.
    #[serde(default)]
    pub description: Option<String>,
    /// `enabled` or `disabled` (it answered 410 Gone).
    #[serde(default)]
    pub state: String,
}

/// An environment as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEnvironment {
    /// Its name.
    pub name: String,
    /// Rotations and disabling need confirmation.
    pub protected: bool,
    /// The environment whose rotation must complete first.
    #[serde(default)]
    pub rotate_after: Option<String>,
}

/// A consumer as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConsumer {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// Its settings now.
    #[serde(flatten)]
    pub settings: Settings,
    /// Switched off.
    #[serde(default)]
    pub disabled: bool,
    /// The settings as the last apply left them; none = never applied by a policy.
    #[serde(default)]
    pub managed: Option<Settings>,
}

impl LiveConsumer {
    /// `ENV/NAME`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.environment, self.name)
    }
}

/// One consumer in the server's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    /// `ENV/NAME`.
    pub consumer: String,
    /// `unscheduled`, `scheduled`, `due` or `blocked`.
    pub state: String,
    /// How its new key reaches it.
    #[serde(default)]
    pub delivery: Option<String>,
    /// When the next rotation falls due (RFC 3339).
    #[serde(default)]
    pub next_due: Option<String>,
    /// Why a due rotation cannot run.
    #[serde(default)]
    pub blockers: Vec<Blocker>,
}

/// Why a rotation is blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// A stable code (`ordering`, `stalled`, `in_use`, …).
    pub code: String,
    /// In words.
    pub message: String,
}
