//! A saved plan (`keyroll plan --out plan.json`): the plan, the text it came from, and a pin of
//! the live state it was computed against, so that `keyroll apply plan.json` applies exactly
//! what was reviewed or refuses, saying what changed.
//!
//! The pin holds settings, not store revisions: a revision also moves when the sweeper retires
//! a version or a key is used, and neither changes what the plan would do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::live::LiveState;
use crate::plan::Plan;
use crate::settings::{FIELDS, Settings};

/// The `format` of a saved plan; another value is refused.
pub const FORMAT: &str = "keyroll-plan/1";

/// An environment as the plan saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedEnvironment {
    /// Protected.
    pub protected: bool,
    /// Rotates after.
    pub rotate_after: Option<String>,
}

/// A consumer as the plan saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedConsumer {
    /// Its settings.
    pub settings: Settings,
    /// Disabled.
    pub disabled: bool,
    /// The settings the last apply left.
    pub managed: Option<Settings>,
}

/// A webhook endpoint as the plan saw it (not its state: the sender disabling an endpoint
/// changes nothing the plan does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedWebhook {
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives, sorted.
    pub events: Vec<String>,
    /// A label for people.
    pub description: Option<String>,
}

/// The live state a plan was computed from, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Environments by name.
    pub environments: BTreeMap<String, PinnedEnvironment>,
    /// Consumers by `ENV/NAME`.
    pub consumers: BTreeMap<String, PinnedConsumer>,
    /// Webhook endpoints by id.
    #[serde(default)]
    pub webhooks: BTreeMap<String, PinnedWebhook>,
}

impl Pin {
    /// The pin of a live state.
    pub fn of(live: &LiveState) -> Pin {
        Pin {
            environments: live
                .environments
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        PinnedEnvironment {
                            protected: e.protected,
                            rotate_after: e.rotate_after.clone(),
                        },
                    )
                })
                .collect(),
            consumers: live
                .consumers
                .iter()
                .map(|c| {
                    (
                        c.reference(),
                        PinnedConsumer {
                            settings: c.settings.canonical(),
                            disabled: c.disabled,
                            managed: c.managed.as_ref().map(Settings::canonical),
                        },
                    )
                })
                .collect(),
            webhooks: live
                .webhooks
                .iter()
                .map(|w| {
                    let mut events = w.events.clone();
                    events.sort();
                    (
                        w.id.clone(),
                        PinnedWebhook {
                            url: w.url.clone(),
                            events,
                            description: w.description.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// A plan as saved to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPlan {
    /// [`FORMAT`].
    pub format: String,
    /// The policy file's name, for messages.
    pub policy_file: String,
    /// SHA-256 of the policy text the plan was made from.
    pub policy_sha256: String,
    /// Made with `--prune`.
    pub prune: bool,
    /// The plan.
    pub plan: Plan,
    /// The live state it was computed from.
    pub pin: Pin,
}

/// A saved plan that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    /// Not JSON of the right shape.
    #[error("not a keyroll plan: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Another format or version.
    #[error(
        "unsupported plan format {0:?}: expected {FORMAT:?} (made by another keyroll version?)"
    )]
    Format(String),
}

impl SavedPlan {
    /// Saves `plan`, computed from `live` for the policy `policy_file` with text hash
    /// `policy_sha256`.
    pub fn new(
        policy_file: &str,
        policy_sha256: &str,
        prune: bool,
        plan: Plan,
        live: &LiveState,
    ) -> SavedPlan {
        SavedPlan {
            format: FORMAT.to_owned(),
            policy_file: policy_file.to_owned(),
            policy_sha256: policy_sha256.to_owned(),
            prune,
            plan,
            pin: Pin::of(live),
        }
    }

    /// Reads a saved plan.
    pub fn from_json(text: &str) -> Result<SavedPlan, SavedPlanError> {
        // The format first, so an old or foreign file is named as such rather than as a
        // missing field.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
        }
        let head: Head = serde_json::from_str(text)?;
        match head.format.as_deref() {
            Some(FORMAT) => Ok(serde_json::from_str(text)?),
            other => Err(SavedPlanError::Format(other.unwrap_or("none").to_owned())),
        }
    }

    /// The plan as JSON (pretty, stable field order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What changed in the live state since `saved` was computed, in words; empty = still current.
pub fn check_pin(saved: &SavedPlan, live: &LiveState) -> Vec<String> {
    let now = Pin::of(live);
    let was = &saved.pin;
    let mut out = Vec::new();
    for (name, e) in &now.environments {
        match was.environments.get(name) {
            None => out.push(format!("environment {name}: created since the plan")),
            Some(w) => {
                if w.protected != e.protected {
                    out.push(format!(
                        "environment {name}: protected changed since the plan ({} -> {})",
                        w.protected, e.protected
                    ));
                }
                if w.rotate_after != e.rotate_after {
                    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                    out.push(format!(
                        "environment {name}: rotate_after changed since the plan ({} -> {})",
                        shown(&w.rotate_after),
                        shown(&e.rotate_after)
                    ));
                }
            }
        }
    }
    for name in was.environments.keys() {
        if !now.environments.contains_key(name) {
            out.push(format!("environment {name}: gone since the plan"));
        }
    }
    for (name, c) in &now.consumers {
        let Some(w) = was.consumers.get(name) else {
            out.push(format!("{name}: created since the plan"));
            continue;
        };
        for field in FIELDS {
            let (from, to) = (w.settings.shown(field), c.settings.shown(field));
            if from != to || (field == "owner" && w.settings.owner != c.settings.owner) {
                out.push(format!(
                    "{name}: {field} changed since the plan ({from} -> {to})"
                ));
            }
        }
        if w.disabled != c.disabled {
            let now = if c.disabled { "disabled" } else { "enabled" };
            out.push(format!("{name}: {now} since the plan"));
        }
        if w.managed != c.managed && w.settings == c.settings {
            // Only the record of the last apply moved: another apply ran in between.
            out.push(format!(
                "{name}: another apply ran since the plan (its last applied settings changed)"
            ));
        }
    }
    for name in was.consumers.keys() {
        if !now.consumers.contains_key(name) {
            out.push(format!("{name}: gone since the plan"));
        }
    }
    for (id, w) in &now.webhooks {
        match was.webhooks.get(id) {
            None => out.push(format!(
                "webhook endpoint {id} ({}): registered since the plan",
                w.url
            )),
            Some(p) if p != w => out.push(format!(
                "webhook endpoint {id} ({}): changed since the plan",
                w.url
            )),
            Some(_) => {}
        }
    }
    for (id, w) in &was.webhooks {
        if !now.webhooks.contains_key(id) {
            out.push(format!(
                "webhook endpoint {id} ({}): removed since the plan",
                w.url
            ));
        }
    }
    out
}
