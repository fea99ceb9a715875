//! Core values as the API shows them at `now`: versions and consumers, with what this node
//! knows of their use.

use keyroll_core::{
    Consumer, KeyVersion, ManagedSpec, Policy, Timestamp, extension_if_stalled, format_duration,
    is_extended_at, rfc3339,
};
use keyroll_proto as proto;
use keyroll_store::EnvironmentRecord;
use keyroll_verify::index::Index;

/// A version as the API shows it at `now`.
pub fn version_json(
    v: &KeyVersion,
    policy: &Policy,
    last_used: Option<Timestamp>,
    now: Timestamp,
) -> proto::KeyVersion {
    let deadline = v.deadline_with(policy, last_used, now);
    proto::KeyVersion {
        version: v.number.0,
        kid: v.kid.to_string(),
        fingerprint: v.fingerprint.to_string(),
        state: v.state_with(policy, last_used, now).as_str().into(),
        created_at: rfc3339(v.created_at),
        deadline: deadline.map(rfc3339),
        extended: is_extended_at(&v.view(last_used), policy, now),
        expires_at: v.expires_at.map(rfc3339),
        revoked_at: v.revoked_at.map(rfc3339),
        revoke_reason: v.revoke_reason.clone(),
        replaced_by: v.replaced_by.map(|n| n.0),
        last_used_at: last_used.map(rfc3339),
        extension_if_stalled: extension_if_stalled(&v.view(last_used), policy, now).map(rfc3339),
        already_revoked: false,
        already_retired: false,
        warning: None,
        propagation: None,
    }
}

/// A consumer as the API shows it at `now`, with what this node knows of its use.
pub fn consumer_json(c: &Consumer, index: &Index, now: Timestamp) -> proto::Consumer {
    proto::Consumer {
        environment: c.environment.to_string(),
        name: c.name.to_string(),
        scopes: c.scopes.iter().map(ToString::to_string).collect(),
        owner: c.owner.clone(),
        disabled: c.disabled,
        created_at: rfc3339(c.created_at),
        retire: c.policy.retire.as_str().into(),
        idle: format_duration(c.policy.idle),
        on_stall: c.policy.on_stall.as_str().into(),
        rotate_every: c.schedule.rotate_every.map(format_duration),
        grace: c.schedule.grace.map(format_duration),
        delivery: c.schedule.delivery.as_str().into(),
        managed: c.managed.as_ref().map(managed_json),
        versions: c
            .versions
            .iter()
            .map(|v| version_json(v, &c.policy, index.last_used(&v.kid), now))
            .collect(),
        propagation: None,
    }
}

/// The settings a policy `apply` left a consumer with.
pub fn managed_json(m: &ManagedSpec) -> proto::ManagedSettings {
    proto::ManagedSettings {
        scopes: m.scopes.iter().map(ToString::to_string).collect(),
        owner: m.owner.clone(),
        retire: m.policy.retire.as_str().into(),
        idle: format_duration(m.policy.idle),
        on_stall: m.policy.on_stall.as_str().into(),
        rotate_every: m.schedule.rotate_every.map(format_duration),
        grace: m.schedule.grace.map(format_duration),
        delivery: m.schedule.delivery.as_str().into(),
    }
}

/// An environment as the API shows it.
pub fn environment_json(e: &EnvironmentRecord) -> proto::Environment {
    proto::Environment {
        name: e.name.to_string(),
        protected: e.protected,
        rotate_after: e.rotate_after.as_ref().map(ToString::to_string),
        created_at: rfc3339(e.created_at),
    }
}
