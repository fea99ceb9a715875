//! keyroll's policy as code (SPEC §7): a policy file is parsed and checked into the desired
//! state ([`parse`]), compared with the live state into a [`Plan`] ([`plan()`]), rendered for a
//! reviewer ([`render`]), and saved pinned to the live state it was computed from
//! ([`SavedPlan`], [`check_pin`]).
//!
//! Architecture invariant: pure. No IO (the caller passes the file's text and name, and the
//! live state it read), no clock, no HTTP. Applying a plan is the CLI's job.

mod live;
mod plan;
mod policy;
mod render;
mod saved;
mod settings;
mod tree;
mod webhook;

pub use live::{Blocker, LiveConsumer, LiveEnvironment, LiveState, LiveWebhook, ScheduleEntry};
pub use plan::{
    Blocked, ConsumerChange, ConsumerCreate, Drift, Due, EnvironmentChange, EnvironmentSpec,
    FieldChange, NotInFile, Plan, Unnamed, WebhookCreate, WebhookDiffers, WebhookNotInFile, plan,
};
pub use policy::{
    DEFAULT_GRACE, DEFAULT_IDLE, DesiredConsumer, DesiredEnvironment, DesiredWebhook, Policy,
    PolicyError, PolicyErrors, parse, sha256_hex,
};
pub use render::render;
pub use saved::{
    FORMAT, Pin, PinnedConsumer, PinnedEnvironment, PinnedWebhook, SavedPlan, SavedPlanError,
    check_pin,
};
pub use settings::{Delivery, FIELDS, Settings, show_duration};
pub use webhook::{DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS};

#[cfg(test)]
mod tests;
