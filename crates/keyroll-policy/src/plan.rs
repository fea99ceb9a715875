//! The difference between a policy and the live state: what `apply` would change, what changed
//! outside the file (drift), what the file no longer names, and what the schedule says.

use serde::{Deserialize, Serialize};

use crate::live::{Blocker, LiveConsumer, LiveState, LiveWebhook};
use crate::policy::{DesiredEnvironment, DesiredWebhook, Policy};
use crate::settings::Settings;

/// An environment's settings, as created or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentSpec {
    /// Its name.
    pub name: String,
    /// Rotations and disabling need confirmation.
    pub protected: bool,
    /// The environment whose rotation must complete first.
    pub rotate_after: Option<String>,
}

impl EnvironmentSpec {
    fn of(e: &DesiredEnvironment) -> EnvironmentSpec {
        EnvironmentSpec {
            name: e.name.to_string(),
            protected: e.protected,
            rotate_after: e.rotate_after.as_ref().map(ToString::to_string),
        }
    }
}

/// One field going from one value to another, both as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field (`scopes`, `protected`, …).
    pub field: String,
    /// Its value before.
    pub from: String,
    /// Its value after.
    pub to: String,
}

/// An environment whose settings the file changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentChange {
    /// Its name.
    pub name: String,
    /// What changes (live -> file).
    pub changes: Vec<FieldChange>,
    /// The settings it ends with.
    pub desired: EnvironmentSpec,
}

/// A consumer to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerCreate {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: Settings,
}

/// A consumer whose live settings the file changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerChange {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// Intended changes: the file says something else than the live state (live -> file).
    pub changes: Vec<FieldChange>,
    /// Drift put back: fields changed outside the file since the last apply (live -> file).
    pub reverts: Vec<FieldChange>,
    /// It is disabled and the file names it: apply enables it.
    pub enable: bool,
    /// Not yet managed by a policy (created by hand): apply takes it over.
    pub adopt: bool,
    /// The settings it ends with.
    pub desired: Settings,
}

impl ConsumerChange {
    /// The fields a PATCH must send.
    pub fn fields(&self) -> Vec<&str> {
        self.changes
            .iter()
            .chain(&self.reverts)
            .map(|c| c.field.as_str())
            .collect()
    }

    /// Only the record of what was applied changes (the live state already matches the file).
    pub fn only_records(&self) -> bool {
        self.changes.is_empty() && self.reverts.is_empty() && !self.enable
    }
}

/// A managed consumer whose live settings differ from what the last apply left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// `ENV/NAME`.
    pub consumer: String,
    /// Each field: last applied -> live.
    pub changes: Vec<FieldChange>,
}

/// What happens to a live consumer the file does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unnamed {
    /// Managed and `--prune`: apply disables it (keyroll never deletes a consumer).
    Disable,
    /// Managed, without `--prune`: kept as it is.
    Keep,
    /// Never managed by a policy (or already disabled): only listed.
    Ignore,
}

/// A live consumer the file does not name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotInFile {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// A policy applied it before.
    pub managed: bool,
    /// Already disabled.
    pub disabled: bool,
    /// Its environment is protected: disabling it needs confirmation.
    pub protected: bool,
    /// What apply does with it.
    pub action: Unnamed,
}

/// A rotation due now or later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    /// `ENV/NAME`.
    pub consumer: String,
    /// How its new key reaches it.
    pub delivery: Option<String>,
    /// When it falls (fell) due.
    pub at: Option<String>,
}

/// A rotation that is due but cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// `ENV/NAME`.
    pub consumer: String,
    /// Why.
    pub reasons: Vec<Blocker>,
}

/// A webhook endpoint to register: it gets a new `whsec_` signing secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCreate {
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// A label for people.
    pub description: Option<String>,
}

/// A live endpoint with a URL of the file whose events or description differ from the file.
/// The API cannot change an endpoint, and replacing it (remove, register again) would give it
/// a new secret and drop its deliveries, so apply leaves it as it is; the plan says how to
/// take the file's values by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDiffers {
    /// `wh_…`.
    pub id: String,
    /// Its URL (the file's).
    pub url: String,
    /// Each field: live -> file.
    pub changes: Vec<FieldChange>,
}

/// A live endpoint the file does not name: listed, never removed (with `--prune` too: nothing
/// records which endpoints a policy registered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookNotInFile {
    /// `wh_…`.
    pub id: String,
    /// Where its deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
}

/// What `apply` would do, and what a reviewer should know besides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Environments to create, each after the one it rotates after.
    pub environments_to_create: Vec<EnvironmentSpec>,
    /// Environments whose settings change.
    pub environments_to_update: Vec<EnvironmentChange>,
    /// Live environments the file does not name (never deleted; listed only).
    pub environments_not_in_file: Vec<String>,
    /// Consumers to create (each gets its first key).
    pub consumers_to_create: Vec<ConsumerCreate>,
    /// Consumers whose settings change.
    pub consumers_to_update: Vec<ConsumerChange>,
    /// Changes made outside the file since the last apply (apply puts the file back).
    pub drift: Vec<Drift>,
    /// Live consumers the file does not name.
    pub not_in_file: Vec<NotInFile>,
    /// Rotations due now (informational: apply does not rotate).
    pub rotations_due: Vec<Due>,
    /// The next rotations, soonest first (informational).
    pub next_due: Vec<Due>,
    /// Due rotations that cannot run, and why (informational).
    pub blocked: Vec<Blocked>,
    /// Webhook endpoints to register (each gets its secret, shown once).
    #[serde(default)]
    pub webhooks_to_create: Vec<WebhookCreate>,
    /// Endpoints of the file that differ from it on the server (apply cannot change them).
    #[serde(default)]
    pub webhooks_differ: Vec<WebhookDiffers>,
    /// Live endpoints the file does not name (never removed; listed only).
    #[serde(default)]
    pub webhooks_not_in_file: Vec<WebhookNotInFile>,
}

impl Plan {
    /// Whether apply would change anything (drives `plan`'s exit code 2). The schedule's
    /// sections never count: apply does not rotate.
    pub fn has_changes(&self) -> bool {
        !self.environments_to_create.is_empty()
            || !self.environments_to_update.is_empty()
            || !self.consumers_to_create.is_empty()
            || !self.consumers_to_update.is_empty()
            || !self.webhooks_to_create.is_empty()
            || self
                .not_in_file
                .iter()
                .any(|n| n.action == Unnamed::Disable)
    }
}

/// Computes what applying `desired` to `live` would do. `prune` disables managed consumers the
/// file no longer names.
pub fn plan(desired: &Policy, live: &LiveState, prune: bool) -> Plan {
    let mut p = Plan::default();
    environments(desired, live, &mut p);
    for d in &desired.consumers {
        let (env, name) = (d.consumer.environment.as_str(), d.consumer.name.as_str());
        match live
            .consumers
            .iter()
            .find(|c| c.environment == env && c.name == name)
        {
            None => p.consumers_to_create.push(ConsumerCreate {
                environment: env.to_owned(),
                name: name.to_owned(),
                settings: d.settings.clone(),
            }),
            Some(c) => consumer(c, &d.settings, &mut p),
        }
    }
    let mut unnamed: Vec<&LiveConsumer> = live
        .consumers
        .iter()
        .filter(|c| {
            !desired.consumers.iter().any(|d| {
                d.consumer.environment.as_str() == c.environment
                    && d.consumer.name.as_str() == c.name
            })
        })
        .collect();
    unnamed.sort_by_key(|c| (c.environment.clone(), c.name.clone()));
    for c in unnamed {
        let managed = c.managed.is_some();
        let action = match (managed && !c.disabled, prune) {
            (true, true) => Unnamed::Disable,
            (true, false) => Unnamed::Keep,
            (false, _) => Unnamed::Ignore,
        };
        p.not_in_file.push(NotInFile {
            environment: c.environment.clone(),
            name: c.name.clone(),
            managed,
            disabled: c.disabled,
            protected: live
                .environments
                .iter()
                .any(|e| e.name == c.environment && e.protected),
            action,
        });
    }
    schedule(live, &mut p);
    webhooks(&desired.webhooks, &live.webhooks, &mut p);
    p
}

/// Endpoints are matched by URL. The server allows one URL twice; then the endpoint that
/// already matches the file is the file's (else the first), and the others are not in it.
fn webhooks(desired: &[DesiredWebhook], live: &[LiveWebhook], p: &mut Plan) {
    let mut used: Vec<&str> = Vec::new();
    for d in desired {
        let same_url = || live.iter().filter(|w| w.url == d.url);
        let found = same_url()
            .find(|w| webhook_changes(w, d).is_empty())
            .or_else(|| same_url().next());
        let Some(w) = found else {
            p.webhooks_to_create.push(WebhookCreate {
                url: d.url.clone(),
                events: d.events.clone(),
                description: d.description.clone(),
            });
            continue;
        };
        used.push(&w.id);
        let changes = webhook_changes(w, d);
        if !changes.is_empty() {
            p.webhooks_differ.push(WebhookDiffers {
                id: w.id.clone(),
                url: w.url.clone(),
                changes,
            });
        }
    }
    let mut extra: Vec<&LiveWebhook> = live
        .iter()
        .filter(|w| !used.contains(&w.id.as_str()))
        .collect();
    extra.sort_by(|a, b| (&a.url, &a.id).cmp(&(&b.url, &b.id)));
    p.webhooks_not_in_file = extra
        .into_iter()
        .map(|w| WebhookNotInFile {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events.clone(),
        })
        .collect();
}

/// How a live endpoint differs from the file (live -> file).
fn webhook_changes(w: &LiveWebhook, d: &DesiredWebhook) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut events = w.events.clone();
    events.sort();
    events.dedup();
    if events != d.events {
        out.push(FieldChange {
            field: "events".into(),
            from: events.join(", "),
            to: d.events.join(", "),
        });
    }
    let live_description = w.description.clone().filter(|s| !s.is_empty());
    if live_description != d.description {
        let shown = |v: &Option<String>| {
            v.as_ref()
                .map_or_else(|| "none".into(), |s| format!("{s:?}"))
        };
        out.push(FieldChange {
            field: "description".into(),
            from: shown(&live_description),
            to: shown(&d.description),
        });
    }
    out
}

fn environments(desired: &Policy, live: &LiveState, p: &mut Plan) {
    let mut create: Vec<EnvironmentSpec> = Vec::new();
    for d in &desired.environments {
        let want = EnvironmentSpec::of(d);
        match live.environments.iter().find(|e| e.name == want.name) {
            None => create.push(want),
            Some(e) => {
                let mut changes = Vec::new();
                if e.protected != want.protected {
                    changes.push(FieldChange {
                        field: "protected".into(),
                        from: yes_no(e.protected),
                        to: yes_no(want.protected),
                    });
                }
                if e.rotate_after != want.rotate_after {
                    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                    changes.push(FieldChange {
                        field: "rotate_after".into(),
                        from: shown(&e.rotate_after),
                        to: shown(&want.rotate_after),
                    });
                }
                if !changes.is_empty() {
                    p.environments_to_update.push(EnvironmentChange {
                        name: want.name.clone(),
                        changes,
                        desired: want,
                    });
                }
            }
        }
    }
    // `rotate_after` must name an environment that exists when it is set, so one that another
    // new environment rotates after is created first. Policies have no cycles.
    while !create.is_empty() {
        let ready = create
            .iter()
            .position(|e| {
                e.rotate_after
                    .as_ref()
                    .is_none_or(|a| !create.iter().any(|o| &o.name == a))
            })
            .unwrap_or(0);
        p.environments_to_create.push(create.remove(ready));
    }
    let mut extra: Vec<String> = live
        .environments
        .iter()
        .filter(|e| {
            !desired
                .environments
                .iter()
                .any(|d| d.name.as_str() == e.name)
        })
        .map(|e| e.name.clone())
        .collect();
    extra.sort();
    p.environments_not_in_file = extra;
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// Sorts a live consumer's differences into intended changes and drift.
fn consumer(c: &LiveConsumer, desired: &Settings, p: &mut Plan) {
    let live = c.settings.canonical();
    let baseline = c.managed.as_ref().map(Settings::canonical);
    let mut changes = Vec::new();
    let mut reverts = Vec::new();
    let mut drift = Vec::new();
    for field in live.differences(desired) {
        let change = FieldChange {
            field: field.to_owned(),
            from: live.shown(field),
            to: desired.shown(field),
        };
        // A field is drift when it no longer holds what the last apply wrote: someone changed
        // it outside the file. Otherwise the file changed.
        match &baseline {
            Some(b) if b.differences(&live).contains(&field) => {
                drift.push(FieldChange {
                    field: field.to_owned(),
                    from: b.shown(field),
                    to: live.shown(field),
                });
                reverts.push(change);
            }
            _ => changes.push(change),
        }
    }
    let adopt = baseline.is_none();
    // The live state matches but the record of the last apply does not (a hand change made the
    // same edit): recorded, so that the next change is not mistaken for drift.
    let stale_record = baseline.as_ref().is_some_and(|b| b != desired);
    if !changes.is_empty() || !reverts.is_empty() || c.disabled || adopt || stale_record {
        p.consumers_to_update.push(ConsumerChange {
            environment: c.environment.clone(),
            name: c.name.clone(),
            changes,
            reverts,
            enable: c.disabled,
            adopt,
            desired: desired.clone(),
        });
    }
    if !drift.is_empty() {
        p.drift.push(Drift {
            consumer: c.reference(),
            changes: drift,
        });
    }
}

fn schedule(live: &LiveState, p: &mut Plan) {
    for e in &live.schedule {
        let due = || Due {
            consumer: e.consumer.clone(),
            delivery: e.delivery.clone(),
            at: e.next_due.clone(),
        };
        match e.state.as_str() {
            "due" => p.rotations_due.push(due()),
            "blocked" => p.blocked.push(Blocked {
                consumer: e.consumer.clone(),
                reasons: e.blockers.clone(),
            }),
            "scheduled" if e.next_due.is_some() => p.next_due.push(due()),
            _ => {}
        }
    }
    // By time, not by text: RFC 3339 strings with fractions of varying length (`.61Z`,
    // `.614Z`) do not sort as text.
    p.next_due.sort_by_cached_key(|d| {
        (
            d.at.as_deref().and_then(keyroll_core::parse_rfc3339),
            d.consumer.clone(),
        )
    });
    p.rotations_due.sort_by(|a, b| a.consumer.cmp(&b.consumer));
    p.blocked.sort_by(|a, b| a.consumer.cmp(&b.consumer));
}
