//! Why a change was refused, in the service's own terms. The HTTP layer maps each variant to a
//! status and a stable code (`http::admin`); a background job logs it.

use keyroll_core::{LifecycleError, Timestamp};
use keyroll_store::StoreError;

/// A change that did not happen, and why.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The consumer (or environment) does not exist; the text names it and what to do.
    #[error("{0}")]
    NotFound(String),
    /// It exists already; the text says what to do instead.
    #[error("{0}")]
    AlreadyExists(String),
    /// A lifecycle rule refused the command.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The consumer kept changing under concurrent writers; nothing was written.
    #[error("{0} is being changed by other requests; retry")]
    Busy(String),
    /// The `Idempotency-Key` was first used for another request, at `first_used`.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused {
        /// When its first request was answered.
        first_used: Timestamp,
    },
    /// The request is well-formed but cannot be applied as it is (a schedule whose grace
    /// outlasts its period, an ordering rule that would form a cycle); the text says why.
    #[error("{0}")]
    Invalid(String),
    /// A protected environment's change was not confirmed (the text says how to confirm).
    #[error("{0}")]
    ConfirmationRequired(String),
    /// No randomness: no key is issued (a weak key is worse than none).
    #[error("{0}")]
    EntropyUnavailable(String),
    /// Every attempt at a fresh key id collided (practically impossible with 128-bit kids).
    #[error("could not allocate a unique key id; retry")]
    KidsExhausted,
    /// An agent's rotation lost the race to another agent of the same consumer: the active
    /// version is no longer the one it saw (the text says what to do).
    #[error("{0}")]
    Raced(String),
    /// No newer version was left for holders of the caller's key.
    #[error("{0}")]
    NoHandover(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}
