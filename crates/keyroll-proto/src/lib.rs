//! The JSON types of keyroll's HTTP API (`/v1`) and their OpenAPI schemas.
//!
//! Architecture invariant: this is the only crate with wire types. The core carries no serde;
//! the server converts core values into these at the edge, and the client and CLI read them.
//! Times are RFC 3339 UTC strings, durations humantime strings (`48h`), versions integers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod ca;

/// An RFC 9457 problem: every 4xx/5xx body of the API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Problem {
    /// A URI naming the problem type (`https://keyroll.dev/problems/key_retired`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short title.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, in words.
    pub detail: String,
    /// The stable reason code (SPEC §4, or an admin error code).
    pub code: String,
    /// The key id, when one was presented and well-formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The fingerprint of what was presented (`keyroll fingerprint KEY` computes it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `ENV/NAME` of the key's consumer, once the presented secret matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The key's version (`v3`), once the presented secret matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The request id, as in `X-Request-Id` and the server's log line.
    pub request_id: String,
}

/// `POST /v1/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The presented key.
    pub key: String,
    /// Scopes the key must have been granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The environment the key must belong to (default: the server's `verify.environment`).
    #[serde(default)]
    pub environment: Option<String>,
    /// `true` for an operator's own check (`keyroll verify`, a probe): decided and logged, but
    /// not counted as the consumer using its key, so it cannot keep an old version "in use".
    /// The `X-Keyroll-Operator-Check: true` header does the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_check: Option<bool>,
}

/// The decision for one verification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VerifyResponse {
    /// Whether the key is accepted.
    pub allowed: bool,
    /// The reason code (`unknown_key` and `invalid_secret` are reported as `invalid_key`).
    pub code: String,
    /// What happened, in words.
    pub detail: String,
    /// The key id, when the key was well-formed.
    pub kid: Option<String>,
    /// `ENV/NAME` of the key's consumer, when allowed or when its state is the reason.
    pub consumer: Option<String>,
    /// The key's environment.
    pub environment: Option<String>,
    /// The key's version number.
    pub version: Option<u32>,
    /// The version's state (`active`, `retiring`, `retired`, `revoked`, `expired`).
    pub state: Option<String>,
    /// For a retiring key: when it stops working.
    pub sunset: Option<String>,
    /// The key's fingerprint (`fp_…`), to match a client's log with the server's.
    pub fingerprint: Option<String>,
    /// The request id.
    pub request_id: String,
}

/// `POST /v1/environments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// `[a-z][a-z0-9]{0,15}`.
    pub name: String,
    /// Rotations here need explicit confirmation.
    #[serde(default)]
    pub protected: bool,
    /// A rotation here waits until the same consumer's rotation in this environment has
    /// completed (its old version retired, not stalled): `staging` for `prod`.
    #[serde(default)]
    pub rotate_after: Option<String>,
}

/// `PATCH /v1/environments/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// Rotations here need explicit confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// The environment whose rotations must complete first; `null` removes the rule.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub rotate_after: Option<Option<String>>,
}

/// An environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Rotations need explicit confirmation.
    pub protected: bool,
    /// A rotation here waits for the same consumer's completed rotation in this environment.
    #[serde(default)]
    pub rotate_after: Option<String>,
    /// When it was created.
    pub created_at: String,
}

/// `POST /v1/consumers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsumer {
    /// An existing environment.
    pub environment: String,
    /// `[a-z][a-z0-9-]{0,62}`.
    pub name: String,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Who to call about it.
    #[serde(default)]
    pub owner: Option<String>,
    /// Hard expiry of the first key, as a duration from now (`90d`).
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Retire policy: `when-idle` (default) or `at-deadline`.
    #[serde(default)]
    pub retire: Option<String>,
    /// Idle window (default `1h`).
    #[serde(default)]
    pub idle: Option<String>,
    /// `extend` (default) or `retire`.
    #[serde(default)]
    pub on_stall: Option<String>,
    /// Rotate on a schedule: a new version falls due this long after the active one was issued
    /// (`30d`); absent: no schedule.
    #[serde(default)]
    pub rotate_every: Option<String>,
    /// The grace window of a scheduled rotation (`48h` when absent).
    #[serde(default)]
    pub grace: Option<String>,
    /// How a new key reaches the consumer: `agent`, `ci` or `manual` (default).
    #[serde(default)]
    pub delivery: Option<String>,
    /// Created by a policy `apply`: the settings are recorded as the policy's baseline, so a later
    /// change made outside the policy shows as drift.
    #[serde(default)]
    pub managed: bool,
}

/// `PATCH /v1/consumers/{env}/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateConsumer {
    /// Replaces the granted scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Replaces the owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Retire policy: `when-idle` or `at-deadline`.
    #[serde(default)]
    pub retire: Option<String>,
    /// Idle window.
    #[serde(default)]
    pub idle: Option<String>,
    /// `extend` or `retire`.
    #[serde(default)]
    pub on_stall: Option<String>,
    /// The rotation period; `null` removes the schedule.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub rotate_every: Option<Option<String>>,
    /// The grace window of a scheduled rotation; `null` returns to the default (`48h`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub grace: Option<Option<String>>,
    /// `agent`, `ci` or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// `true`: record the settings after this change as the policy's baseline (a policy
    /// `apply`); `false`: the consumer is no longer managed by a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// The settings a policy `apply` left a consumer with: what drift is measured against.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ManagedSettings {
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Retire policy.
    pub retire: String,
    /// Idle window.
    pub idle: String,
    /// Stall rule.
    pub on_stall: String,
    /// Rotation period.
    pub rotate_every: Option<String>,
    /// Grace window of a scheduled rotation.
    pub grace: Option<String>,
    /// Delivery path.
    pub delivery: String,
}

/// `Option<Option<T>>` in JSON: absent = leave as is, `null` = clear, a value = set.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// One key version of a consumer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyVersion {
    /// `3` for v3.
    pub version: u32,
    /// Public key id.
    pub kid: String,
    /// Fingerprint of the whole key (`fp_…`).
    pub fingerprint: String,
    /// State now: `active`, `retiring`, `retired`, `revoked`, `expired`.
    pub state: String,
    /// When it was issued.
    pub created_at: String,
    /// While retiring: when it stops working (the stored deadline, or the extended one once a
    /// stall's extension has happened); once retired: when it did.
    pub deadline: Option<String>,
    /// The deadline was extended once because the version was still in use at it.
    #[serde(default)]
    pub extended: bool,
    /// Hard expiry.
    pub expires_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// The version that replaced it.
    pub replaced_by: Option<u32>,
    /// When it was last seen in traffic (recorded from a later release on).
    pub last_used_at: Option<String>,
    /// While retiring and not yet extended: the deadline it would get if still in use at its
    /// (stored) `deadline` — a prediction, not the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_if_stalled: Option<String>,
    /// In a revoke answer: the version was revoked before; nothing was changed or audited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_revoked: bool,
    /// In a retire answer: the version was retired before; nothing was changed or audited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_retired: bool,
    /// In a change's answer: what the operator must know (the consumer has no working key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// In a revoke answer with `?wait=`: which nodes' indexes have the revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

/// How far a change has reached the nodes of the cluster (a revoke or disable with `?wait=`):
/// every live node verifies from its own index, and the change counts once that index has it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Propagation {
    /// The change's position in the change log.
    pub change_seq: i64,
    /// Live nodes, this one included.
    pub nodes: u32,
    /// Those whose index has the change (the answering node always has it).
    pub confirmed: u32,
    /// How long until every live node had it; absent when the wait ended first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_ms: Option<u64>,
    /// The live nodes still without it when the wait ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lagging: Vec<LaggingNode>,
}

/// A live node that had not applied a change when the wait ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LaggingNode {
    /// The node.
    pub node_id: String,
    /// The last change its index had, at its last heartbeat.
    pub applied_seq: i64,
    /// Its last heartbeat.
    pub heartbeat_at: String,
}

/// `GET /v1/cluster`: the nodes sharing this database, the leader lease and the change log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The id of the node that answered.
    #[serde(rename = "self")]
    pub this_node: String,
    /// The seq of the last committed change.
    pub change_head: i64,
    /// The leader lease (`null` before any node took it).
    #[serde(default)]
    pub lease: Option<ClusterLease>,
    /// Every node that heartbeated recently and did not leave, by node id.
    pub nodes: Vec<ClusterNode>,
}

/// The leader lease.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterLease {
    /// The node holding it (or that last held it, when not `live`).
    pub holder: String,
    /// Grows by one with every new tenure.
    pub term: i64,
    /// When this tenure began.
    pub acquired_at: String,
    /// When it lapses unless renewed.
    pub expires_at: String,
    /// It has not expired.
    pub live: bool,
}

/// One node as it last reported itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its id.
    pub node_id: String,
    /// Where it listens (or what it advertises).
    #[serde(default)]
    pub address: Option<String>,
    /// The keyroll version it runs.
    pub version: String,
    /// When it started.
    pub started_at: String,
    /// Its last heartbeat.
    pub heartbeat_at: String,
    /// Every change up to this seq is in its index.
    pub applied_seq: i64,
    /// `change_head - applied_seq`: changes it had not applied at its last heartbeat.
    pub lag: i64,
    /// Its last usage flush.
    #[serde(default)]
    pub usage_flushed_at: Option<String>,
    /// Its last heartbeat is within 3 heartbeat intervals.
    pub live: bool,
    /// It holds the (unexpired) leader lease.
    pub leader: bool,
}

/// A consumer and its versions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Consumer {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Who to call about it.
    pub owner: Option<String>,
    /// Switched off.
    pub disabled: bool,
    /// When it was created.
    pub created_at: String,
    /// Retire policy: `when-idle` or `at-deadline`.
    pub retire: String,
    /// How long a version must go unseen to count as idle (`1h`).
    pub idle: String,
    /// What a deadline does to a version still in use: `extend` (once) or `retire`.
    pub on_stall: String,
    /// The rotation period (`30d`); `null`: not scheduled.
    #[serde(default)]
    pub rotate_every: Option<String>,
    /// The grace window of a scheduled rotation; `null`: the default, `48h`.
    #[serde(default)]
    pub grace: Option<String>,
    /// How a new key reaches it: `agent`, `ci` or `manual`.
    #[serde(default = "manual")]
    pub delivery: String,
    /// The settings the last policy `apply` left it with; `null`: not managed by a policy.
    #[serde(default)]
    pub managed: Option<ManagedSettings>,
    /// Its versions.
    pub versions: Vec<KeyVersion>,
    /// In a disable answer with `?wait=`: which nodes' indexes have the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

fn manual() -> String {
    "manual".into()
}

/// A new consumer and its first key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsumerCreated {
    /// The consumer.
    pub consumer: Consumer,
    /// The plaintext key. In the first answer, and in a replay within 24 h under a strong
    /// `Idempotency-Key` (see `key_unavailable`).
    pub key: Option<String>,
    /// Its key id.
    pub kid: String,
    /// Its version number (1).
    pub version: u32,
    /// True when this answer replays an earlier request with the same `Idempotency-Key`.
    #[serde(default)]
    pub replayed: bool,
    /// On a replay without `key`: why the key cannot be shown again (a guessable
    /// `Idempotency-Key`, or the 24 h replay window passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_unavailable: Option<String>,
}

/// `POST /v1/consumers/{env}/{name}/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long older versions keep working (`48h` by default; `0` retires them at once).
    #[serde(default)]
    pub grace: Option<String>,
    /// Retire exactly at the deadline, whatever traffic says.
    #[serde(default)]
    pub enforce: bool,
    /// Hard expiry of the new key, as a duration from now.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Explicit confirmation, required in a protected environment.
    #[serde(default)]
    pub confirm: bool,
}

/// A version that started retiring.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Retiring {
    /// Its number.
    pub version: u32,
    /// When it stops working.
    pub deadline: String,
}

/// The answer to a rotation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// `ENV/NAME`.
    pub consumer: String,
    /// The new plaintext key. In the first answer, and in a replay within 24 h under a strong
    /// `Idempotency-Key` (see `key_unavailable`).
    pub key: Option<String>,
    /// The new key id.
    pub kid: String,
    /// The new version number.
    pub version: u32,
    /// Older versions now retiring, with their deadlines.
    pub retiring: Vec<Retiring>,
    /// Older versions retired at once (grace `0`).
    pub retired: Vec<u32>,
    /// True when this answer replays an earlier request with the same `Idempotency-Key`.
    #[serde(default)]
    pub replayed: bool,
    /// On a replay without `key`: why the key cannot be shown again (a guessable
    /// `Idempotency-Key`, or the 24 h replay window passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_unavailable: Option<String>,
}

/// `POST /v1/consumers/{env}/{name}/versions/{n}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why: recorded in the audit log and told to callers of the revoked key.
    pub reason: String,
    /// Explicit confirmation, required in a protected environment.
    #[serde(default)]
    pub confirm: bool,
}

/// The optional body of `retire` and `disable`: confirmation for a protected environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// Explicit confirmation, required in a protected environment.
    #[serde(default)]
    pub confirm: bool,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` when the index is loaded but the store is unavailable (verification goes
    /// on from memory, admin writes answer 503); `loading keys` before the index is loaded.
    pub status: String,
    /// Why it is not `ok`, in words (the store's error, naming the database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The storage backend.
    pub store: Option<String>,
    /// Key versions loaded in memory.
    pub key_versions: Option<u64>,
}

/// `GET /v1/status`: the consumers asked for, and how many matched before `offset`/`limit`
/// cut a page out of them (a `List` with one more field, so older clients read it unchanged).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusPage {
    /// The consumers of the page, by `ENV/NAME`.
    pub items: Vec<ConsumerStatus>,
    /// How many consumers matched the filters (all pages).
    pub matched: u64,
}

/// A list wrapper, so lists can grow fields (paging) without breaking clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
}

/// `GET /v1/keys/{kid}`: one key version found by its kid, for `keyroll scan` and tooling that
/// holds a key and wants to know its fate without sending it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyInfo {
    /// Public key id.
    pub kid: String,
    /// Fingerprint of the issued key (`fp_…`): a key found elsewhere with the same kid but
    /// another fingerprint is not this key (its secret would be rejected).
    pub fingerprint: String,
    /// `ENV/NAME` of its consumer.
    pub consumer: String,
    /// The consumer's environment.
    pub environment: String,
    /// `3` for v3.
    pub version: u32,
    /// State now: `active`, `retiring`, `retired`, `revoked`, `expired`.
    pub state: String,
    /// While retiring: when it stops working (a stall extension included); once retired: when.
    pub deadline: Option<String>,
    /// Hard expiry.
    pub expires_at: Option<String>,
    /// The version that replaced it.
    pub replaced_by: Option<u32>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// The consumer is switched off: every key of it is rejected whatever its state.
    #[serde(default)]
    pub consumer_disabled: bool,
    /// When this server last saw it in allowed traffic.
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// One source seen presenting a key version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct UsageSource {
    /// Client address (the peer, or what a trusted proxy forwarded).
    pub address: String,
    /// Its `User-Agent`.
    pub user_agent: String,
    /// Its `X-Client-Id`.
    pub client_id: Option<String>,
    /// Last seen.
    pub last_seen: String,
    /// Requests recorded from it.
    pub count: u64,
}

/// `GET /v1/schedule`: every consumer's place in the rotation schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Schedule {
    /// The server's time the schedule was computed at.
    pub now: String,
    /// One entry per consumer, by environment and name.
    pub entries: Vec<ScheduleEntry>,
}

/// One consumer's place in the schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ScheduleEntry {
    /// `ENV/NAME`.
    pub consumer: String,
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// `agent`, `ci` or `manual`.
    pub delivery: String,
    /// The environment is protected (a CLI rotation needs `--yes`).
    pub protected: bool,
    /// `unscheduled` (no `rotate_every`), `scheduled` (next rotation in the future), `due`
    /// (rotate now), `blocked` (due, but something must happen first: see `blockers`).
    pub state: String,
    /// The rotation period.
    pub rotate_every: Option<String>,
    /// The active version.
    pub active_version: Option<u32>,
    /// When the active version was issued.
    pub active_since: Option<String>,
    /// When the next rotation falls (or fell) due.
    pub next_due: Option<String>,
    /// Why a due rotation cannot run yet.
    pub blockers: Vec<Blocker>,
}

/// Why a due rotation waits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Blocker {
    /// Stable code: `disabled`, `no_active_version`, `rotation_in_progress`, `stalled`,
    /// `ordering`.
    pub code: String,
    /// What to do about it, in words.
    pub message: String,
}

/// `GET /v1/consumers/{env}/{name}/preflight`: the checklist before a rotation. Changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Preflight {
    /// `ENV/NAME`.
    pub consumer: String,
    /// The server's time.
    pub now: String,
    /// The environment is protected: the rotation needs confirmation.
    pub protected: bool,
    /// How the new key would reach the consumer.
    pub delivery: String,
    /// The grace window the rotation would get.
    pub grace: String,
    /// Its place in the schedule.
    pub schedule: ScheduleEntry,
    /// The ordering rule of its environment.
    pub ordering: OrderingCheck,
    /// Versions still valid, with their traffic.
    pub versions: Vec<PreflightVersion>,
    /// What would happen at which time if it were rotated now.
    pub timeline: Vec<TimelineStep>,
    /// What the operator should know first.
    pub warnings: Vec<String>,
}

/// The `rotate_after` rule of a consumer's environment, and whether it holds now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct OrderingCheck {
    /// The environment that must rotate first, if any.
    pub rotate_after: Option<String>,
    /// The rule holds (or there is none).
    pub satisfied: bool,
    /// In words.
    pub detail: String,
}

/// A valid version in a preflight, with its traffic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PreflightVersion {
    /// `3` for v3.
    pub version: u32,
    /// State now.
    pub state: String,
    /// Requests recorded in the last 24 hours.
    pub requests_24h: u64,
    /// Requests recorded in the last hour.
    pub requests_1h: u64,
    /// Its share of the consumer's requests in the last hour (0 to 1).
    pub share_1h: f64,
    /// When last seen.
    pub last_used_at: Option<String>,
    /// Sources seen in the last 24 hours.
    pub sources: Vec<UsageSource>,
}

/// One step of what a rotation would set in motion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TimelineStep {
    /// When.
    pub at: String,
    /// What happens.
    pub what: String,
}

/// A version in `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VersionStatus {
    /// `3` for v3.
    pub version: u32,
    /// Key id.
    pub kid: String,
    /// State now.
    pub state: String,
    /// When it stops (or stopped) working: the stored deadline, or the extended one once a
    /// stall's extension has happened.
    pub deadline: Option<String>,
    /// Extended once because it was still in use at its deadline (has happened).
    pub stalled: bool,
    /// Last allowed use.
    pub last_used_at: Option<String>,
    /// Requests in the last hour.
    pub requests_last_hour: u64,
    /// Requests in the last 24 hours.
    pub requests_last_day: u64,
    /// Recent sources, most recent first.
    pub sources: Vec<UsageSource>,
    /// While retiring and not yet extended: the deadline it would get if still in use at its
    /// (stored) `deadline` — a prediction, not the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_if_stalled: Option<String>,
}

/// A consumer in `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// `ENV/NAME`.
    pub consumer: String,
    /// Owner.
    pub owner: Option<String>,
    /// Switched off.
    pub disabled: bool,
    /// One line: `ready to retire v3`, `stalled: v3 still used by …`, `idle since …`, `never used`.
    pub verdict: String,
    /// A short machine-readable form of the verdict: `ok`, `rotating`, `ready`, `stalled`,
    /// `idle`, `never_used`, `disabled`, `no_valid_key`, `no_active_key` (the newest version is
    /// expired or revoked while older ones still retire).
    pub verdict_code: String,
    /// Its place in the rotation schedule (when due, what blocks it, how keys are delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleEntry>,
    /// Versions, newest first.
    pub versions: Vec<VersionStatus>,
    /// How keys reach it, its agents and what they hold (when it is delivered by agents or an
    /// agent has reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,
}

/// How a consumer's keys are delivered, as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// `agent`, `ci` or `manual`.
    pub mode: String,
    /// Its agents, by id.
    pub agents: Vec<AgentInfo>,
    /// The newest version delivered to an agent.
    #[serde(default)]
    pub delivered_version: Option<u32>,
    /// To how many agents.
    pub delivered_to: u32,
    /// From how many sources that version was seen in traffic.
    pub seen_sources: u32,
    /// One line: `delivered v4 to 3 agents; v4 seen from 3 sources`.
    #[serde(default)]
    pub summary: Option<String>,
    /// What needs a look: a version delivered but never seen (the app did not reload), an agent
    /// silent for long, an agent still on an older version.
    pub warnings: Vec<String>,
}

/// An event from the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Event {
    /// Position; page with `?after=`.
    pub seq: i64,
    /// When.
    pub at: String,
    /// `version.issued`, `version.retired`, `rotation.stalled`, `version.revoked`, `version.unused`, …
    pub kind: String,
    /// `ENV/NAME`.
    pub consumer: String,
    /// The version concerned.
    pub version: Option<u32>,
    /// Details.
    pub detail: serde_json::Value,
}

fn key_kind() -> String {
    "key".to_owned()
}

/// One decision remembered by the server (`GET /v1/decisions`). Codes are the precise internal
/// ones (`unknown_key`, `invalid_secret`): this is for operators, not for callers. A key
/// decision (`kind` `key`) fills the key fields; a certificate decision (`kind` `cert`: a TLS
/// handshake or a forwarded certificate) fills `identity`, `spiffe_id`, `serial`, `issuer`,
/// `not_after`, `anchor` and `edge`, and its `fingerprint` is the certificate's SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DecisionRecord {
    /// `key` or `cert`.
    #[serde(default = "key_kind")]
    pub kind: String,
    /// When it was made (RFC 3339, milliseconds).
    pub ts: String,
    /// `allowed` or `rejected`.
    pub decision: String,
    /// The reason code (SPEC §4).
    pub code: String,
    /// The explanation, for rejections.
    #[serde(default)]
    pub detail: Option<String>,
    /// The key id, when the key was well-formed.
    #[serde(default)]
    pub kid: Option<String>,
    /// The fingerprint of what was presented.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `ENV/NAME` of the key's consumer, when the kid is known.
    #[serde(default)]
    pub consumer: Option<String>,
    /// The key's environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// The version number, when the kid is known.
    #[serde(default)]
    pub version: Option<u32>,
    /// The version's state then, when the secret matched.
    #[serde(default)]
    pub state: Option<String>,
    /// The request id, as in the log line and `X-Request-Id` (empty for a TLS handshake).
    pub request_id: String,
    /// The TCP peer.
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// A certificate's identity, `ENV/SERVICE`, when it is a SPIFFE id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// A certificate's URI SAN as presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// A certificate's serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A certificate's issuer (RFC 4514).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// A certificate's notAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The trust anchor a certificate's chain ended at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Where a certificate was judged: `tls_handshake` or `forward_auth_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
}

/// `GET /v1/decisions`: matching decisions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DecisionList {
    /// At most `limit` of them.
    pub items: Vec<DecisionRecord>,
    /// How many matched in all (more than `items` when the limit cut the list).
    pub matched: u64,
    /// How many rejections the server keeps at most.
    pub capacity_rejected: u64,
    /// How many allowed decisions the server keeps at most.
    pub capacity_allowed: u64,
}

/// The filters of `GET /v1/decisions`, as query parameters. Every one given must match.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq, Default)]
pub struct DecisionQuery {
    /// This key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// This consumer, `ENV/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// These codes, comma-separated (`invalid_key` means `unknown_key,invalid_secret`; the
    /// `cert_…` codes are certificate decisions, `valid` both kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Only `key` or only `cert` decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// This certificate identity, `ENV/SERVICE` or `spiffe://…` (certificate decisions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// This certificate serial, hex (certificate decisions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// This fingerprint (`fp_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Only the last DURATION (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// At most this many (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `POST /v1/tokens`: a new admin token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label for people (`ci-scan`, `dashboard`): 1 to 64 printable characters.
    pub name: String,
    /// Its scopes; the calling token must hold each of them (or `admin`).
    pub scopes: Vec<String>,
    /// Hard expiry as a duration from now (`90d`); absent = never.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// An admin token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AdminToken {
    /// Public id (the audit actor; the `<id>` of `kra_<id>_<secret>`).
    pub id: String,
    /// Its label.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// `valid`, `overlap` (rotated, still working until `retires_at`), `expired`, `revoked`,
    /// `replaced` (rotated, overlap over).
    pub state: String,
    /// When it was created.
    pub created_at: String,
    /// The token that created it (`system` for the first one), when known.
    pub created_by: Option<String>,
    /// When it stops working by itself.
    pub expires_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why.
    pub revoke_reason: Option<String>,
    /// The token that replaced it.
    pub replaced_by: Option<String>,
    /// The end of the rotation's overlap.
    pub retires_at: Option<String>,
}

/// A newly made admin token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenIssued {
    /// The plaintext `kra_<id>_<secret>`. keyroll keeps only its hash.
    pub token: String,
    /// The token as listed.
    pub info: AdminToken,
    /// For a rotation: the replaced token, as listed (state `overlap` until its `retires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<AdminToken>,
}

/// `POST /v1/tokens/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    /// Why: recorded in the audit log and told to callers of the revoked token.
    #[serde(default)]
    pub reason: Option<String>,
    /// Revoke even the last working `admin` token, which no API call can replace afterwards.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/tokens/{id}/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateToken {
    /// How long the old token keeps working (`1h` by default; `0` stops it at once).
    #[serde(default)]
    pub overlap: Option<String>,
}

/// One audit-log entry (`GET /v1/audit`) with its links in the hash chain (SPEC §8). Never a
/// secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log; page with `?after=`.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// When, in unix milliseconds: what the chain covers.
    pub at_unix_ms: i64,
    /// Who: an admin token id, `sweeper`, `scheduler`, `system` (start-up).
    pub actor: String,
    /// What: `consumer.created`, `version.issued`, `admin_token.revoked`, …
    pub action: String,
    /// On what: `prod/billing-app`, `prod/billing-app v2`, `environment prod`, …
    pub target: String,
    /// The details (command, parameters, effect; before and after for updates) as the exact
    /// JSON text the chain covers: parse it to read it.
    pub detail: String,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// From where (the client's address).
    pub remote_addr: Option<String>,
    /// The previous entry's hash, hex (64 zeros for the first); null only for a row written
    /// outside keyroll.
    pub prev_hash: Option<String>,
    /// This entry's hash, hex: SHA-256 of its canonical encoding and `prev_hash`.
    pub hash: Option<String>,
}

/// `GET /v1/audit`: matching entries oldest first, and the head of the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditPage {
    /// The entries, oldest first.
    pub items: Vec<AuditEntry>,
    /// The hash of the newest entry of the whole log as stored (64 zeros when it is empty),
    /// whatever the filters: what the server says; `keyroll audit verify` recomputes it.
    pub head: String,
    /// The newest entry's position, if there is one.
    pub head_seq: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Self-service: what an agent (`keyroll agent`, `keyroll run`) asks, authenticated by its
// consumer's own key (`Authorization: Bearer CONSUMER_KEY`). A consumer key reaches only these
// paths and only its own consumer.

/// Why an agent should rotate now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SelfRotate {
    /// `due` (the schedule), `requested` (an operator: `keyroll rotate ENV/NAME --via-agent`)
    /// or `superseded` (a newer version exists that the caller cannot fetch: it was issued but
    /// never handed over, so the agent rotates again and the orphan retires unused).
    pub reason: String,
    /// Since when, when known.
    #[serde(default)]
    pub since: Option<String>,
    /// In words.
    pub detail: String,
}

/// `GET /v1/self[?wait=25s&known=REVISION]`: the caller's consumer as its agent needs it.
/// With `wait`, the answer is held until the consumer changes (its `revision` differs from
/// `known`) or `wait` passes (at most 60 s), so an agent learns of a rotation at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SelfState {
    /// `ENV/NAME`.
    pub consumer: String,
    /// The key id of the key the caller authenticated with.
    pub kid: String,
    /// Its version.
    pub version: u32,
    /// Its state: `active` or `retiring`.
    pub state: String,
    /// When it stops working, if it is retiring.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The newest active version.
    pub active_version: u32,
    /// A newer version the caller can fetch with `POST /v1/self/handover` (it was issued to
    /// another agent of the same consumer, or to this one before a crash).
    #[serde(default)]
    pub handover: Option<u32>,
    /// Set when the agent should rotate now (`POST /v1/self/rotate`).
    #[serde(default)]
    pub rotate: Option<SelfRotate>,
    /// The grace window a self-rotation gives the old key.
    pub grace: String,
    /// How this consumer's keys are delivered: `agent`, `ci` or `manual`.
    pub delivery: String,
    /// Changes with every change to the consumer: pass it back as `known` to long-poll.
    pub revision: i64,
    /// The version of the CA's trust bundle on the server (0 before `keyroll ca init`). An
    /// agent whose `ca.pem` holds another version fetches `GET /v1/ca/bundle`; pass it back as
    /// `known_bundle` so that the long-poll also answers when the bundle changes.
    #[serde(default)]
    pub bundle_version: u64,
}

/// `POST /v1/self/rotate`: issue the next version to this agent. Answered with [`Rotated`]
/// (the plaintext `key` once; an `Idempotency-Key` makes a retry after a lost answer return it
/// again). Refused with 409 `rotation_raced` when the active version is no longer
/// `expect_active` (another agent rotated first: fetch its key with `POST /v1/self/handover`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SelfRotateRequest {
    /// The agent's id (`agt_…`, chosen by the agent at its first start and kept in its state).
    pub agent: String,
    /// The active version the agent saw in [`SelfState`].
    #[serde(default)]
    pub expect_active: Option<u32>,
}

/// `POST /v1/self/handover`: the newest version, issued from the caller's version by another
/// agent (or by this one before a crash), handed over to this agent. 404 `no_handover` when
/// there is none.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct HandoverRequest {
    /// The agent's id.
    pub agent: String,
}

/// A key handed over to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Handover {
    /// `ENV/NAME`.
    pub consumer: String,
    /// The plaintext key.
    pub key: String,
    /// Its key id.
    pub kid: String,
    /// Its version.
    pub version: u32,
}

/// `POST /v1/self/report`, authenticated with the key the agent holds now (and has written
/// where the app reads it): the agent's heartbeat. The first report of a version by an agent
/// records the delivery (`version.delivered`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentReport {
    /// The agent's id.
    pub agent: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// How it delivers: `file` or `exec`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `ok`, or `degraded` with `detail` (a reload command failed, …).
    #[serde(default)]
    pub health: Option<String>,
    /// In words.
    #[serde(default)]
    pub detail: Option<String>,
    /// The CA trust bundle version (`X-Keyroll-Bundle-Version`) the agent has loaded; agents
    /// without certificates (and older agents) leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<u64>,
}

/// An agent as the server last heard of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's id.
    pub agent: String,
    /// `ENV/NAME`.
    pub consumer: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// `file` or `exec`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The version it holds (the key of its last report).
    pub version: u32,
    /// Its last report.
    pub last_contact: String,
    /// `ok` or `degraded`.
    #[serde(default)]
    pub health: Option<String>,
    /// In words.
    #[serde(default)]
    pub detail: Option<String>,
    /// The CA trust bundle version it reported to have loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<u64>,
}

/// `POST /v1/consumers/{env}/{name}/request-rotation`: ask the consumer's agents to rotate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RequestRotation {
    /// Explicit confirmation, required in a protected environment.
    #[serde(default)]
    pub confirm: bool,
}

// ---------------------------------------------------------------------------------------------
// Webhooks (SPEC §10): endpoints, their secrets (shown once), deliveries and their attempts.

/// `POST /v1/webhooks`: register an endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed (`http://…`; private and loopback addresses only when the
    /// server's `webhooks.allow_private` / `webhooks.allow_loopback` say so).
    pub url: String,
    /// Event types to receive (`rotation.started`, `version.retired`, …), or `["*"]` for every
    /// event. Absent: the rotation events (`rotation.*`, `version.retired`, `version.revoked`,
    /// `version.unused`, `version.delivered`, `key.expiring`).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// A label for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// A registered endpoint: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Webhook {
    /// `wh_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives (`*`: all).
    pub events: Vec<String>,
    /// A label for people.
    #[serde(default)]
    pub description: Option<String>,
    /// When it was registered.
    pub created_at: String,
    /// `enabled` or `disabled` (it answered 410 Gone; `POST …/enable` re-enables it).
    pub state: String,
    /// When it was disabled.
    #[serde(default)]
    pub disabled_at: Option<String>,
    /// Why.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation still signs (both signatures are sent).
    #[serde(default)]
    pub previous_secret_until: Option<String>,
}

/// `POST /v1/webhooks` (201) and `POST /v1/webhooks/{id}/rotate-secret`: the endpoint and its
/// secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookSecret {
    /// The endpoint.
    pub webhook: Webhook,
    /// `whsec_…`: verify deliveries with it (any Standard Webhooks library). Not shown again.
    pub secret: String,
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotateWebhookSecret {
    /// How long the old secret keeps signing beside the new one (`24h` by default; `0` stops
    /// it at once).
    #[serde(default)]
    pub overlap: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookAttemptInfo {
    /// 1 for the first.
    pub n: u32,
    /// When.
    pub at: String,
    /// The HTTP status, absent without an answer.
    #[serde(default)]
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: u64,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// The `Retry-After` the endpoint sent, in seconds.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// One event delivered (or to be) to one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookDeliveryInfo {
    /// `whd_…`.
    pub id: String,
    /// The endpoint's id.
    pub endpoint: String,
    /// The event's position in the outbox.
    pub event_seq: i64,
    /// `webhook-id` (`msg_<event seq>`), the same on every attempt and replay.
    pub msg_id: String,
    /// `pending`, `delivered`, `failed` or `disabled`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    /// The last attempt's HTTP status.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// The last attempt's failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: String,
    /// When it was delivered.
    #[serde(default)]
    pub delivered_at: Option<String>,
    /// Its attempts, oldest first (`GET /v1/webhook-deliveries/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<WebhookAttemptInfo>>,
}

/// `GET /v1/webhook-deliveries` query.
#[derive(Debug, Clone, Serialize, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Only to this endpoint (`wh_…`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only in this state: `pending`, `delivered`, `failed`, `disabled`.
    #[serde(default)]
    pub state: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `GET /v1/consumers/{env}/{name}/adoption`: requests per time step per version, and the
/// moments of the rotation, for the dashboard's adoption chart.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Adoption {
    /// `ENV/NAME`.
    pub consumer: String,
    /// Width of one step: 60 (this node's in-memory per-minute counts) or 3600 (the stored
    /// hourly counts of every node).
    pub step_seconds: u32,
    /// `minute` (this node, kept in memory for the last 3 hours) or `hour` (the store).
    pub resolution: String,
    /// Start of the first step asked for.
    pub from: String,
    /// The server's time of the answer.
    pub to: String,
    /// Versions, oldest first, each with its non-zero steps.
    pub versions: Vec<AdoptionVersion>,
    /// Moments to mark on the time axis, in time order.
    pub marks: Vec<AdoptionMark>,
}

/// One version's series in [`Adoption`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AdoptionVersion {
    /// `3` for v3.
    pub version: u32,
    /// Key id.
    pub kid: String,
    /// State now.
    pub state: String,
    /// Steps with requests, oldest first (steps not listed had none).
    pub points: Vec<AdoptionPoint>,
}

/// Requests in one step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AdoptionPoint {
    /// Start of the step.
    pub at: String,
    /// Allowed requests that counted as use.
    pub requests: u64,
}

/// A moment of a rotation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AdoptionMark {
    /// `issued` (a version made: the rotation, for any but the first), `deadline` (a retiring
    /// version's deadline), `stall_extension` (the extended deadline, once it happened),
    /// `extension_if_stalled` (the deadline it would get if still in use at its deadline),
    /// `retired`, `revoked`.
    pub kind: String,
    /// The version it is about.
    pub version: u32,
    /// When.
    pub at: String,
}
