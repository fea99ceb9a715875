//! Changes to environments: creation and settings (protection, the `rotate_after` ordering
//! rule), each audited in the same transaction as the change.
//!
//! An ordering rule names an existing environment and never forms a cycle (`prod` after
//! `staging` after `prod` would block both forever); both are refused here with the chain in
//! words, before anything is written.

use keyroll_core::Environment;
use keyroll_store::EnvironmentRecord;
use serde_json::json;

use super::{Actor, ServiceError};
use crate::state::AppState;

/// What an environment update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChange {
    /// Rotations need explicit confirmation.
    pub protected: Option<bool>,
    /// The ordering rule (`Some(None)` removes it).
    pub rotate_after: Option<Option<Environment>>,
}

/// Creates an environment (audited).
pub async fn create_environment(
    state: &AppState,
    actor: &Actor,
    name: Environment,
    protected: bool,
    rotate_after: Option<Environment>,
) -> Result<EnvironmentRecord, ServiceError> {
    let at = state.clock.now();
    let record = EnvironmentRecord {
        name: name.clone(),
        protected,
        rotate_after,
        created_at: at,
    };
    check_ordering(state, &record).await?;
    let audit = actor.audit(
        at,
        "environment.created",
        format!("environment {name}"),
        &json!({ "protected": protected, "rotate_after": record.rotate_after.as_ref().map(Environment::as_str) }),
    );
    state.store.create_environment(&record, &audit).await?;
    tracing::info!(event = "environment.created", environment = %name, actor = actor.id.as_str(), "environment {name} created");
    Ok(record)
}

/// Changes an environment's protection or ordering rule (audited with before and after).
/// Nothing changed: nothing is written.
pub async fn update_environment(
    state: &AppState,
    actor: &Actor,
    name: &Environment,
    change: EnvironmentChange,
) -> Result<EnvironmentRecord, ServiceError> {
    let before = state.store.get_environment(name).await?.ok_or_else(|| {
        ServiceError::NotFound(format!(
            "environment {name} does not exist; create it with keyroll env create {name}"
        ))
    })?;
    let after = EnvironmentRecord {
        protected: change.protected.unwrap_or(before.protected),
        rotate_after: change
            .rotate_after
            .clone()
            .unwrap_or_else(|| before.rotate_after.clone()),
        ..before.clone()
    };
    if after == before {
        return Ok(after);
    }
    check_ordering(state, &after).await?;
    let settings = |e: &EnvironmentRecord| json!({ "protected": e.protected, "rotate_after": e.rotate_after.as_ref().map(Environment::as_str) });
    let audit = actor.audit(
        state.clock.now(),
        "environment.updated",
        format!("environment {name}"),
        &json!({ "before": settings(&before), "after": settings(&after) }),
    );
    state.store.update_environment(&after, &audit).await?;
    tracing::info!(event = "environment.updated", environment = %name, actor = actor.id.as_str(), "environment {name} updated");
    Ok(after)
}

/// Refuses an ordering rule that names an unknown environment, the environment itself, or
/// closes a cycle through the rules already stored.
async fn check_ordering(state: &AppState, record: &EnvironmentRecord) -> Result<(), ServiceError> {
    let Some(first) = &record.rotate_after else {
        return Ok(());
    };
    let all = state.store.list_environments().await?;
    let rule_of = |e: &Environment| {
        if *e == record.name {
            record.rotate_after.clone()
        } else {
            all.iter()
                .find(|r| r.name == *e)
                .and_then(|r| r.rotate_after.clone())
        }
    };
    if !all.iter().any(|r| r.name == *first) {
        return Err(ServiceError::Invalid(format!(
            "rotate_after: environment {first} does not exist; create it first"
        )));
    }
    let mut chain = vec![record.name.clone()];
    let mut next = Some(first.clone());
    while let Some(e) = next {
        chain.push(e.clone());
        if e == record.name {
            let words: Vec<&str> = chain.iter().map(Environment::as_str).collect();
            return Err(ServiceError::Invalid(format!(
                "rotate_after: {} is a cycle; no environment could ever rotate",
                words.join(" -> ")
            )));
        }
        if chain.len() > all.len() + 1 {
            break;
        }
        next = rule_of(&e);
    }
    Ok(())
}
