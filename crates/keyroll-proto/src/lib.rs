//! The JSON types of keyroll's HTTP API (`/v1`) and their OpenAPI schemas.
//!
//! Architecture invariant: this is the only crate with wire types. The core carries no serde;
//! the server converts core values into these at the edge, and the client and CLI read them.
//! Times are RFC 3339 UTC strings, durations humantime strings (`48h`), versions integers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
}

/// An environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Rotations need explicit confirmation.
    pub protected: bool,
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
    /// While retiring: when it stops working; once retired: when it did.
    pub deadline: Option<String>,
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
    /// Its versions.
    pub versions: Vec<KeyVersion>,
}

/// A new consumer and its first key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsumerCreated {
    /// The consumer.
    pub consumer: Consumer,
    /// The plaintext key. Only in the first answer; absent from an idempotent replay.
    pub key: Option<String>,
    /// Its key id.
    pub kid: String,
    /// Its version number (1).
    pub version: u32,
    /// True when this answer replays an earlier request with the same `Idempotency-Key`.
    #[serde(default)]
    pub replayed: bool,
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
    /// The new plaintext key. Only in the first answer; absent from an idempotent replay.
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
}

/// `POST /v1/consumers/{env}/{name}/versions/{n}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why: recorded in the audit log and told to callers of the revoked key.
    pub reason: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
    /// The storage backend.
    pub store: Option<String>,
    /// Key versions loaded in memory.
    pub key_versions: Option<u64>,
}

/// A list wrapper, so lists can grow fields (paging) without breaking clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
}
