//! keyroll's persistent state: the [`Store`] trait and its backends.
//!
//! Architecture invariants:
//! - The store is never on the verification hot path. The server reads everything once at start
//!   ([`Store::load_all`]) and afterwards only writes through it.
//! - Every lifecycle change is one transaction that writes the consumer's new state, its audit
//!   entries and the idempotency record together, guarded by the consumer's `revision`
//!   (optimistic concurrency: a concurrent writer gets [`StoreError::Conflict`] and retries).
//! - No column holds a secret: only SHA-256 digests of key and admin-token secrets.
//! - The audit log is a hash chain (`keyroll_core::audit_chain`): the store links each entry to
//!   the previous one inside the transaction that appends it, so concurrent writers keep one
//!   chain and an entry exists, linked, exactly when its change committed.
//! - Every consumer change (`create_consumer`, `write_consumer`) takes the next seq of one
//!   counter in its own transaction and appends it to the change log, so seqs commit in order
//!   and without gaps: other nodes apply the log from what they applied last
//!   ([`Store::changes_since`]), and a gap or a pruned log tells them to catch up or reload.
//! - Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`); one
//!   conformance suite (`tests/it/conformance.rs`) runs against every backend.

mod ca;
mod postgres;
mod rows;
mod sqlite;
mod usage;

use std::time::Duration;

use async_trait::async_trait;
use keyroll_core::{Consumer, ConsumerRef, Environment, Kid, SecretHash, Timestamp};

pub use ca::{
    AuthorityKind, AuthorityRecord, AuthorityState, CaCommit, CaState, CaWrite, CertFilter,
    CertQuery, CertRevocation, CrlRecord, HandshakeUse, IssuedCertRecord, RevokedIdentityRecord,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A referenced thing does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The consumer changed since it was read (another request or node wrote it first).
    #[error("{0} was changed concurrently; retry")]
    Conflict(String),
    /// A new kid collided with an existing one (astronomically rare; issue another key).
    #[error("kid collision")]
    KidCollision,
    /// The `Idempotency-Key` was already used (by a request that may differ).
    #[error("idempotency key already used")]
    IdempotencyKeyUsed,
    /// The database cannot be opened, reached or written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database holds something this version cannot read (manual edits, newer schema).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// An environment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    /// Its name.
    pub name: Environment,
    /// Rotations need explicit confirmation.
    pub protected: bool,
    /// A rotation here waits for the same consumer's completed rotation in this environment.
    pub rotate_after: Option<Environment>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A consumer with the store's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConsumer {
    /// Row id, stable for the consumer's life.
    pub id: i64,
    /// Incremented by every write; the optimistic-concurrency token.
    pub revision: i64,
    /// The seq of the consumer's last committed change (0 for rows from before the change log).
    pub change_seq: i64,
    /// The consumer and its versions, oldest first.
    pub consumer: Consumer,
}

/// One audit-log entry (SPEC §8). `detail` is JSON text made by the caller, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log; ignored on append (the store assigns it, since the chain covers it).
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// Who: the admin token id, or `system`.
    pub actor: String,
    /// What: `consumer.created`, `version.issued`, …
    pub action: String,
    /// On what: `prod/billing-app`, `prod/billing-app v2`, `environment prod`.
    pub target: String,
    /// Before/after and parameters, as JSON text.
    pub detail: String,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// From where.
    pub remote_addr: Option<String>,
}

/// An audit entry as stored, with its links in the hash chain (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedAudit {
    /// The entry.
    pub entry: AuditRecord,
    /// The previous entry's hash as stored (32 zero bytes for the first); `None` only for a row
    /// written outside keyroll.
    pub prev_hash: Option<keyroll_core::audit_chain::ChainHash>,
    /// This entry's hash as stored; `None` only for a row written outside keyroll.
    pub hash: Option<keyroll_core::audit_chain::ChainHash>,
}

/// Which audit entries [`Store::query_audit`] returns, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries on this target, or on a part of it (`prod/app` also matches `prod/app v2`).
    pub target: Option<String>,
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Only entries after this position (paging).
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// A response remembered under an `Idempotency-Key`, to be replayed on retry. The caller strips
/// plaintext keys from `response` before storing it, and stores neither the header value nor a
/// plaintext key: `key` is a hash of the header value, `sealed_key` a ciphertext whose key is
/// derived from the header value (the store alone can open neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The lookup hash of the header value (the caller derives it; never the value itself).
    pub key: String,
    /// Hex SHA-256 of method, path and body: a retry must be the same request.
    pub request_hash: String,
    /// The HTTP status of the first answer.
    pub status: u16,
    /// The first answer's body (JSON text, without secrets).
    pub response: String,
    /// When.
    pub created_at: Timestamp,
    /// The key the first answer showed, sealed by the caller (nonce + AEAD ciphertext), so that
    /// a replay within [`IDEMPOTENT_KEY_WINDOW`] can show it again. Cleared by later writes once
    /// older than the window.
    pub sealed_key: Option<Vec<u8>>,
}

/// How long a sealed key is kept for idempotent replays; older ones are cleared on write and
/// must be ignored by readers.
pub const IDEMPOTENT_KEY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// An admin API token as stored: the id is public, only the secret's SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// Public id (appears in the audit log as the actor).
    pub id: String,
    /// SHA-256 of the secret part.
    pub secret_hash: SecretHash,
    /// A label for people.
    pub name: String,
    /// Granted admin scopes.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// An admin token with its lifecycle: expiry, revocation, rotation. The secret is only ever its
/// SHA-256 (in `token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenEntry {
    /// Id, secret hash, name, scopes, creation time.
    pub token: AdminTokenRecord,
    /// The token that created it (`system` for the first one); `None` for tokens from before
    /// tokens had a lifecycle.
    pub created_by: Option<String>,
    /// When it stops working by itself.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Why (free text from the operator, never a secret).
    pub revoke_reason: Option<String>,
    /// The token that replaced it in a rotation.
    pub replaced_by: Option<String>,
    /// The end of the rotation's overlap: from then on only the replacement works.
    pub retires_at: Option<Timestamp>,
}

/// Whether revoking an admin token may leave the installation without a working `admin` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminGuard {
    /// Refuse to revoke the last valid, unreplaced `admin`-scoped token.
    KeepOne,
    /// Revoke it anyway (the operator said so explicitly).
    Override,
}

/// What [`Store::revoke_admin_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRevocation {
    /// Revoked now; the entry as stored.
    Revoked(AdminTokenEntry),
    /// It was revoked before; nothing changed.
    AlreadyRevoked(AdminTokenEntry),
    /// Refused by [`AdminGuard::KeepOne`]: no other valid `admin` token would remain.
    LastAdmin,
}

/// Which installation a database belongs to, and whether anything was made in it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The installation's id, also kept in the data directory's `installation` file.
    pub id: String,
    /// When the id was recorded.
    pub created_at: Timestamp,
    /// No admin token, environment, consumer or audit entry exists: nothing an operator made.
    pub empty: bool,
}

/// What one lifecycle write carries: all of it commits, or none.
#[derive(Debug)]
pub struct ConsumerWrite<'a> {
    /// The revision read before computing `consumer`; the write fails with `Conflict` otherwise.
    pub expected_revision: i64,
    /// Row id.
    pub id: i64,
    /// The new state (from `Consumer::apply`).
    pub consumer: &'a Consumer,
    /// What to append to the audit log.
    pub audit: &'a [AuditRecord],
    /// The answer to remember, when the request had an `Idempotency-Key`.
    pub idempotency: Option<&'a IdempotencyRecord>,
    /// Events to append to the outbox (rotations, retirements, stalls, revocations, …).
    pub events: &'a [EventRecord],
    /// A new version sealed for the other holders of the version that asked for it (an agent's
    /// self-rotation), written in the same transaction.
    pub handover: Option<&'a HandoverRecord>,
}

/// One event in the outbox (SPEC §10: delivered as webhooks by the leader). Appended in the
/// same transaction as the change it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Position in the outbox; ignored on append.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// `version.issued`, `version.retired`, `rotation.stalled`, `version.revoked`, `version.unused`, …
    pub kind: String,
    /// `ENV/NAME`.
    pub consumer: String,
    /// The version concerned.
    pub version: Option<u32>,
    /// Details as JSON text (never a secret).
    pub detail: String,
}

/// One source seen presenting a key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSeen {
    /// The client's address (the peer, or the address a trusted proxy forwarded).
    pub address: String,
    /// Its `User-Agent` (may be empty).
    pub user_agent: String,
    /// Its `X-Client-Id`, when sent.
    pub client_id: Option<String>,
    /// First time seen (in this batch, or ever when read back).
    pub first_seen: Timestamp,
    /// Last time seen.
    pub last_seen: Timestamp,
    /// Requests from it.
    pub count: u64,
}

/// Usage of one key version gathered in memory since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The version.
    pub kid: Kid,
    /// Last allowed request in the batch.
    pub last_used_at: Timestamp,
    /// Requests per hour: (start of the hour, count) to add.
    pub hourly: Vec<(Timestamp, u64)>,
    /// Sources seen in the batch, with counts to add.
    pub sources: Vec<SourceSeen>,
}

/// Usage of one key version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUsage {
    /// The version.
    pub kid: Kid,
    /// Last allowed request.
    pub last_used_at: Option<Timestamp>,
    /// Requests per hour since the asked-for time, oldest first.
    pub hourly: Vec<(Timestamp, u64)>,
    /// The most recently seen sources, most recent first.
    pub sources: Vec<SourceSeen>,
}

/// A registered webhook endpoint. Its secrets are only ever sealed (by the server, under its
/// master key); the store never sees them in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `wh_…`.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types it receives, or `["*"]` for all.
    pub events: Vec<String>,
    /// A label for people.
    pub description: Option<String>,
    /// The signing secret, sealed.
    pub sealed_secret: Vec<u8>,
    /// The secret before the last rotation, sealed, with the end of the overlap during which it
    /// still signs.
    pub previous_secret: Option<(Vec<u8>, Timestamp)>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When it was disabled (a 410 answer), and why.
    pub disabled: Option<(Timestamp, String)>,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt was answered 2xx.
    Delivered,
    /// The retry schedule is exhausted.
    Failed,
    /// The endpoint was disabled (it answered 410) before the delivery succeeded.
    Disabled,
}

impl DeliveryState {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Disabled => "disabled",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<DeliveryState> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            "disabled" => DeliveryState::Disabled,
            _ => return None,
        })
    }
}

/// One event to be delivered to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `whd_…`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's position in the outbox.
    pub event_seq: i64,
    /// `webhook-id`: `msg_<event seq>`, stable across retries and replays.
    pub msg_id: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// The last attempt's failure, in words.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When an attempt succeeded.
    pub delivered_at: Option<Timestamp>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// The delivery.
    pub delivery_id: String,
    /// 1 for the first attempt.
    pub n: u32,
    /// When it was made.
    pub at: Timestamp,
    /// The HTTP status, or `None` without an answer.
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: u64,
    /// What went wrong, in words.
    pub error: Option<String>,
    /// The `Retry-After` the endpoint sent, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

/// Which deliveries [`Store::list_webhook_deliveries`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only to this endpoint.
    pub endpoint_id: Option<String>,
    /// Only in this state.
    pub state: Option<DeliveryState>,
    /// At most this many.
    pub limit: u32,
}

/// What a logged change changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A consumer (named by [`ChangeRecord::consumer_id`]).
    Consumer,
    /// The CA's trust bundle (authorities, CRLs): every node rebuilds its trust store.
    Ca,
}

impl ChangeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Consumer => "consumer",
            ChangeKind::Ca => "ca",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "consumer" => Some(ChangeKind::Consumer),
            "ca" => Some(ChangeKind::Ca),
            _ => None,
        }
    }
}

/// One committed change, in commit order (seqs are gapless: 1, 2, 3, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Its position in the log.
    pub seq: i64,
    /// What it changed.
    pub kind: ChangeKind,
    /// The consumer it changed (its row id); 0 for a [`ChangeKind::Ca`] change.
    pub consumer_id: i64,
    /// When (the time of the change's latest audit entry or event, else the consumer's last
    /// update); what [`Store::prune_changes`] compares.
    pub at: Timestamp,
}

/// A node of the cluster as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// `node_…`, chosen at process start (or fixed by configuration).
    pub node_id: String,
    /// Where it listens (or what it advertises).
    pub address: Option<String>,
    /// The keyroll version it runs.
    pub version: String,
    /// When the process started.
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// The last change seq its index has applied.
    pub applied_seq: i64,
    /// When it last flushed usage to the store.
    pub usage_flushed_at: Option<Timestamp>,
    /// Whether it held the leader lease at its last heartbeat.
    pub leader: bool,
}

/// Who holds a named lease (the leader lock) until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease's name (`leader`).
    pub name: String,
    /// The node holding it.
    pub holder: String,
    /// Grows by one with every new tenure: when another holder takes it, or the same holder
    /// takes it again after it lapsed or was released (a fencing number for logs). A renewal of
    /// an unexpired lease keeps it.
    pub term: i64,
    /// When this tenure began.
    pub acquired_at: Timestamp,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// Notifications of committed changes (PostgreSQL `LISTEN`).
#[async_trait]
pub trait ChangeListener: Send + std::fmt::Debug {
    /// The seq of the next committed change notified. An `Err` means the connection was lost:
    /// the caller catches up with [`Store::changes_since`] and listens again.
    async fn next(&mut self) -> Result<i64, StoreError>;
}

/// A version sealed (AEAD) under a key derived from the secret of an older version of the same
/// consumer, so any holder of that older key can fetch it (SPEC §10: several agents of one
/// consumer, or one agent after a crash). The database holds only the older secret's hash, from
/// which the sealing key cannot be derived. Deleted when the older version stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverRecord {
    /// The sealed version.
    pub version: u32,
    /// The version whose secret seals it.
    pub from_version: u32,
    /// Nonce and ciphertext.
    pub sealed: Vec<u8>,
    /// When it was sealed.
    pub created_at: Timestamp,
}

/// An agent's last report (`POST /v1/self/report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Its consumer.
    pub consumer: ConsumerRef,
    /// The id the agent chose (`agt_…`).
    pub agent_id: String,
    /// The host it runs on, as it says.
    pub host: Option<String>,
    /// `file` or `exec`.
    pub mode: Option<String>,
    /// The version of the key it reported with.
    pub version: u32,
    /// `ok` or `degraded`.
    pub health: Option<String>,
    /// In words.
    pub detail: Option<String>,
    /// Its first report.
    pub first_seen: Timestamp,
    /// Its last report.
    pub last_contact: Timestamp,
    /// The CA trust bundle version it has loaded, when it says (older agents and agents
    /// without certificates do not).
    pub bundle_version: Option<u64>,
}

/// The first report of a version by an agent: the moment the agent had written it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The consumer.
    pub consumer: ConsumerRef,
    /// The version.
    pub version: u32,
    /// The agent.
    pub agent_id: String,
    /// When.
    pub delivered_at: Timestamp,
}

/// A dashboard session as the store keeps it: hashes only (SHA-256 of the random session id the
/// browser holds in its cookie, and of the session's CSRF token), the admin token it acts as, and
/// its times. Whether it is still valid is decided by the server from these times and the
/// token's own state; the store only keeps them.
#[derive(Clone, PartialEq, Eq)]
pub struct UiSession {
    /// SHA-256 of the session id.
    pub id_hash: [u8; 32],
    /// The admin token the session acts as.
    pub token_id: String,
    /// SHA-256 of the CSRF token.
    pub csrf_hash: [u8; 32],
    /// When it was made (the login).
    pub created_at: Timestamp,
    /// The absolute end.
    pub expires_at: Timestamp,
    /// The last request seen (for the idle limit).
    pub last_seen_at: Timestamp,
}

impl std::fmt::Debug for UiSession {
    // The hashes open nothing, but they identify a live session: not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiSession")
            .field("token_id", &self.token_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("last_seen_at", &self.last_seen_at)
            .finish_non_exhaustive()
    }
}

/// Persistent state of a keyroll installation. Implemented by [`SqliteStore`] and, for several
/// nodes sharing state, [`PostgresStore`], with the same conformance suite.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`, for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// Whether the database answers and can be written: after a write failed with
    /// `Unavailable` (a full disk, say), a ping writes a probe row until one succeeds, so it
    /// reports the outage while it lasts. Also `Unavailable` when the database file was deleted
    /// or replaced since it was opened.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every consumer with every version: what the verification index is built from at start.
    async fn load_all(&self) -> Result<Vec<StoredConsumer>, StoreError>;

    /// Creates an environment. `AlreadyExists` if the name is taken.
    async fn create_environment(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// Changes an environment's settings (the record's `created_at` is ignored) with its audit
    /// entry, in one transaction. `NotFound` if it does not exist.
    async fn update_environment(
        &self,
        env: &EnvironmentRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// All environments, by name.
    async fn list_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError>;

    /// One environment.
    async fn get_environment(
        &self,
        name: &Environment,
    ) -> Result<Option<EnvironmentRecord>, StoreError>;

    /// Creates a consumer with its first version. `NotFound` if the environment does not exist,
    /// `AlreadyExists` if the consumer does, `KidCollision`, `IdempotencyKeyUsed`. Its audit
    /// entries, its events and the idempotency record commit with it.
    async fn create_consumer(
        &self,
        consumer: &Consumer,
        audit: &[AuditRecord],
        events: &[EventRecord],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<StoredConsumer, StoreError>;

    /// One consumer.
    async fn get_consumer(&self, r: &ConsumerRef) -> Result<Option<StoredConsumer>, StoreError>;

    /// Consumers, optionally of one environment, by environment then name.
    async fn list_consumers(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<StoredConsumer>, StoreError>;

    /// The consumers the schedule's runner must look at, with their versions: every consumer
    /// with a rotation period, every consumer with a valid version whose hard expiry was not yet
    /// announced, and the same-named consumers of an environment another environment rotates
    /// after. Every other consumer's schedule state is `unscheduled` with nothing to announce.
    async fn list_schedule_candidates(&self) -> Result<Vec<StoredConsumer>, StoreError>;

    /// Writes a consumer's new state, its audit entries and idempotency record in one
    /// transaction. `Conflict` if the revision moved, `KidCollision`, `IdempotencyKeyUsed`.
    /// Returns the consumer as stored (with its new revision). Durations (`policy.idle`, a
    /// version's `grace`) are stored as whole milliseconds; one with a finer part is refused as
    /// `Corrupt` rather than stored rounded (also by `create_consumer`).
    async fn write_consumer(&self, write: ConsumerWrite<'_>) -> Result<StoredConsumer, StoreError>;

    /// The remembered answer for an `Idempotency-Key` (its lookup hash), if any.
    async fn find_idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Adds an admin token.
    async fn create_admin_token(
        &self,
        token: &AdminTokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// An admin token by id.
    async fn find_admin_token(&self, id: &str) -> Result<Option<AdminTokenRecord>, StoreError>;

    /// How many admin tokens exist (zero means a fresh installation).
    async fn count_admin_tokens(&self) -> Result<u64, StoreError>;

    /// The newest audit entries, newest first.
    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;

    /// Audit entries matching `query` with their chain links, oldest first (in `seq` order).
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<ChainedAudit>, StoreError>;

    /// Adds a batch of usage in one transaction: `last_used_at` becomes the later of stored and
    /// given, hourly counts and source counts are added, and each version keeps only its
    /// `max_sources` most recently seen sources. Kids that no longer exist are ignored.
    async fn record_usage(&self, batch: &[UsageDelta], max_sources: u32) -> Result<(), StoreError>;

    /// Every version's last use, to seed the in-memory index at start.
    async fn last_used_all(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError>;

    /// Usage of these versions: hourly counts from `since` on, and their recent sources.
    async fn usage(&self, kids: &[Kid], since: Timestamp) -> Result<Vec<VersionUsage>, StoreError>;

    /// Outbox events after `after_seq`, oldest first, at most `limit`.
    async fn list_events(&self, after_seq: i64, limit: u32)
    -> Result<Vec<EventRecord>, StoreError>;

    /// Adds an admin token with its lifecycle fields. `AlreadyExists` if the id is taken.
    async fn create_admin_token_entry(
        &self,
        token: &AdminTokenEntry,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// An admin token with its lifecycle, by id.
    async fn get_admin_token(&self, id: &str) -> Result<Option<AdminTokenEntry>, StoreError>;

    /// Every admin token, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenEntry>, StoreError>;

    /// Revokes an admin token at `at` with its audit entry, in one transaction. `NotFound` if
    /// it does not exist. With [`AdminGuard::KeepOne`], refuses when no other `admin`-scoped
    /// token would remain valid at `at` (not revoked, not expired, not replaced).
    async fn revoke_admin_token(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
        guard: AdminGuard,
        audit: &AuditRecord,
    ) -> Result<TokenRevocation, StoreError>;

    /// Replaces `old_id` by `new` in one transaction: `new` is added, the old one records its
    /// replacement and stops working at `retires_at` (or at its own expiry, if earlier). Returns
    /// the old entry as stored. `NotFound` if it does not exist, `Conflict` if it was revoked or
    /// replaced meanwhile.
    async fn rotate_admin_token(
        &self,
        old_id: &str,
        retires_at: Timestamp,
        new: &AdminTokenEntry,
        audit: &[AuditRecord],
    ) -> Result<AdminTokenEntry, StoreError>;

    /// The installation this database belongs to. A database without an id yet (new, or made
    /// before ids existed) records `new_id`.
    async fn installation(&self, new_id: &str) -> Result<Installation, StoreError>;

    /// Registers a webhook endpoint with its audit entry, in one transaction. `AlreadyExists`
    /// if the id is taken.
    async fn create_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// One webhook endpoint.
    async fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError>;

    /// Every webhook endpoint, oldest first.
    async fn list_webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError>;

    /// Writes an endpoint's secrets and disabled state (url, events, description and creation
    /// time are kept) with its audit entries and events, in one transaction. `NotFound` if it
    /// does not exist.
    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<(), StoreError>;

    /// Removes an endpoint, its deliveries and their attempts, with its audit entry. `NotFound`
    /// if it does not exist.
    async fn delete_webhook_endpoint(
        &self,
        id: &str,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// The last event seq the webhook sender enqueued deliveries for.
    async fn webhook_cursor(&self) -> Result<i64, StoreError>;

    /// Adds `deliveries` and moves the cursor from `from` to `to`, in one transaction:
    /// `Conflict` if the cursor is no longer at `from` (another sender enqueued them), so each
    /// event is enqueued once.
    async fn enqueue_webhook_deliveries(
        &self,
        from: i64,
        to: i64,
        deliveries: &[WebhookDelivery],
    ) -> Result<(), StoreError>;

    /// Pending deliveries due at `now` (next attempt at or before it), soonest first, at most
    /// `limit`.
    async fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Records an attempt (if any) and the delivery's new state, in one transaction.
    /// `NotFound` if the delivery does not exist (its endpoint was deleted meanwhile).
    async fn record_webhook_attempt(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), StoreError>;

    /// Deliveries matching `query`, newest first.
    async fn list_webhook_deliveries(
        &self,
        query: &DeliveryQuery,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// One delivery with its attempts, oldest first.
    async fn get_webhook_delivery(
        &self,
        id: &str,
    ) -> Result<Option<(WebhookDelivery, Vec<WebhookAttempt>)>, StoreError>;

    /// The newest version of consumer `consumer_id` sealed from `from_version`, if any.
    async fn find_handover(
        &self,
        consumer_id: i64,
        from_version: u32,
    ) -> Result<Option<HandoverRecord>, StoreError>;

    /// Records an agent's report of consumer `consumer_id` (its row is inserted or replaced,
    /// `first_seen` kept). When this is the agent's first report of `agent.version`, also records
    /// the delivery and appends `audit` and `events` in the same transaction; returns whether it
    /// was (a repeated report appends nothing).
    async fn record_agent(
        &self,
        consumer_id: i64,
        agent: &AgentRecord,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<bool, StoreError>;

    /// Agents, by consumer then agent id; only `environment`'s when given.
    async fn list_agents(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<AgentRecord>, StoreError>;

    /// Deliveries, by consumer, version and agent; only `environment`'s when given.
    async fn list_deliveries(
        &self,
        environment: Option<&Environment>,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// The seq of the last committed consumer change (0 before the first).
    async fn change_head(&self) -> Result<i64, StoreError>;

    /// Committed changes with a seq above `after`, in seq order, at most `limit`.
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<ChangeRecord>, StoreError>;

    /// These consumers with their versions, in any order; ids that do not exist are omitted.
    async fn consumers_by_id(&self, ids: &[i64]) -> Result<Vec<StoredConsumer>, StoreError>;

    /// Notifications of committed changes, where the backend has them (PostgreSQL); `None`
    /// (SQLite) means the caller polls [`Store::changes_since`].
    async fn listen_changes(&self) -> Result<Option<Box<dyn ChangeListener>>, StoreError>;

    /// Deletes the changes logged before `before`; returns how many. The head stays.
    async fn prune_changes(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Records a node's heartbeat (inserted, or replacing its earlier one).
    async fn heartbeat_node(&self, node: &NodeRecord) -> Result<(), StoreError>;

    /// Every node that heartbeated and was not removed, by node id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Forgets a node (its clean shutdown). Removing an unknown node is not an error.
    async fn remove_node(&self, node_id: &str) -> Result<(), StoreError>;

    /// Takes the lease `name` for `holder` when it is free, expired at `now`, or already held by
    /// `holder` (then renews it): `Some(lease)` with `expires_at = now + ttl`; `None` when
    /// another holder's lease is unexpired at `now`. Atomic (one conditional upsert), so two
    /// holders never both get it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// The lease `name` as stored (possibly expired), if it was ever taken.
    async fn get_lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// Lets the lease `name` lapse now, only if `holder` holds it (another holder's lease is
    /// left alone). Its term is kept, so the next tenure gets a higher one.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Versions whose stored last use is at or after `since` (the cluster-wide adoption merge).
    async fn last_used_since(&self, since: Timestamp) -> Result<Vec<(Kid, Timestamp)>, StoreError>;

    /// The check value of the master key the database's sealed secrets are made under,
    /// recording `check` when none is recorded yet (the first start with a master key). The
    /// caller compares it with its own: nodes sharing a database must share one master key.
    /// The value is a one-way derivation of the key, never the key. `NotFound` when the
    /// installation was not recorded yet ([`Store::installation`] comes first at start).
    async fn master_key_check(&self, check: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Records a new dashboard session. `AlreadyExists` when its id hash is taken (a random
    /// 256-bit id never is), `NotFound` when its token does not exist.
    async fn create_ui_session(&self, session: &UiSession) -> Result<(), StoreError>;

    /// The session whose id hashes to `id_hash`, if any (expired ones included until pruned).
    async fn get_ui_session(&self, id_hash: &[u8; 32]) -> Result<Option<UiSession>, StoreError>;

    /// Moves a session's `last_seen_at` forward to `at` (never back). No error when the session
    /// is gone: a request racing a logout changes nothing.
    async fn touch_ui_session(&self, id_hash: &[u8; 32], at: Timestamp) -> Result<(), StoreError>;

    /// Ends a session (logout). Whether it existed.
    async fn delete_ui_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Deletes sessions past their absolute end at `now` or not seen since `idle_before`.
    /// How many.
    async fn prune_ui_sessions(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// The CA as stored: every authority (removed ones too, oldest first), each issuer's
    /// current CRL and the bundle version.
    async fn ca_state(&self) -> Result<CaState, StoreError>;

    /// Commits one CA change (authorities, a new certificate, revocations, a revoked identity,
    /// CRLs, audit entries and events) in one transaction. `Conflict` when
    /// `expected_bundle_version` is set and the version moved; `AlreadyExists` when the new
    /// certificate's serial (or an authority's serial) is taken; `NotFound` when a revoked or
    /// superseded serial does not exist. With `bump_bundle` the bundle version grows by one and a
    /// `ca` change is logged.
    async fn write_ca(&self, write: CaWrite<'_>) -> Result<CaCommit, StoreError>;

    /// Issued certificates matching `query`, by serial.
    async fn list_certificates(
        &self,
        query: &CertQuery,
    ) -> Result<Vec<IssuedCertRecord>, StoreError>;

    /// One issued certificate by serial.
    async fn get_certificate(&self, serial: &str) -> Result<Option<IssuedCertRecord>, StoreError>;

    /// The revocation of an identity's self-renewal, if any.
    async fn identity_revocation(
        &self,
        identity: &ConsumerRef,
    ) -> Result<Option<RevokedIdentityRecord>, StoreError>;

    /// Adds handshake uses in one transaction: per (anchor, identity, peer) the count is added,
    /// `last_at` becomes the later of stored and given, `serial` that of the later one.
    async fn record_handshakes(&self, uses: &[HandshakeUse]) -> Result<(), StoreError>;

    /// Handshake uses whose last handshake is at or after `since`, newest first.
    async fn list_handshakes(&self, since: Timestamp) -> Result<Vec<HandshakeUse>, StoreError>;
}
