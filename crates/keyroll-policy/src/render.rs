//! A plan in words, grouped as a reviewer reads it: intended changes first, then drift apart
//! from them, then what the file no longer names, then the schedule.

use std::fmt::Write;

use crate::plan::{Plan, Unnamed};
use crate::settings::{FIELDS, Settings};

/// The plan as text for people; `file` names the policy.
pub fn render(plan: &Plan, file: &str) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_plan(&mut s, plan, file);
    s
}

fn settings_line(st: &Settings) -> String {
    FIELDS
        .iter()
        .map(|f| format!("{f} {}", st.shown(f)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_plan(s: &mut String, p: &Plan, file: &str) -> std::fmt::Result {
    if !p.environments_to_create.is_empty() {
        writeln!(s, "Environments to create:")?;
        for e in &p.environments_to_create {
            let mut notes = Vec::new();
            if e.protected {
                notes.push("protected".to_owned());
            }
            if let Some(a) = &e.rotate_after {
                notes.push(format!("rotates after {a}"));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            writeln!(s, "  + {}{notes}", e.name)?;
        }
        writeln!(s)?;
    }
    if !p.environments_to_update.is_empty() {
        writeln!(s, "Environments to change:")?;
        for e in &p.environments_to_update {
            writeln!(s, "  ~ {}", e.name)?;
            for c in &e.changes {
                writeln!(s, "      {}: {} -> {}", c.field, c.from, c.to)?;
            }
        }
        writeln!(s)?;
    }
    if !p.consumers_to_create.is_empty() {
        writeln!(s, "Consumers to create (each gets its first key):")?;
        for c in &p.consumers_to_create {
            writeln!(s, "  + {}/{}", c.environment, c.name)?;
            writeln!(s, "      {}", settings_line(&c.settings))?;
        }
        writeln!(s)?;
    }
    let intended: Vec<_> = p
        .consumers_to_update
        .iter()
        .filter(|c| !c.changes.is_empty() || c.enable || c.adopt || c.reverts.is_empty())
        .collect();
    if !intended.is_empty() {
        writeln!(s, "Consumers to change (scopes, owners, policy):")?;
        for c in intended {
            writeln!(s, "  ~ {}/{}", c.environment, c.name)?;
            for f in &c.changes {
                writeln!(s, "      {}: {} -> {}", f.field, f.from, f.to)?;
            }
            if c.enable {
                writeln!(
                    s,
                    "      disabled: yes -> no (the file names it, so it is enabled)"
                )?;
            }
            if c.adopt {
                writeln!(
                    s,
                    "      not yet managed by a policy: apply takes it over (later changes outside the file show as drift)"
                )?;
            } else if c.only_records() {
                writeln!(
                    s,
                    "      the live settings already match; apply records them as applied"
                )?;
            }
        }
        writeln!(s)?;
    }
    if !p.webhooks_to_create.is_empty() {
        writeln!(
            s,
            "Webhook endpoints to register (each gets a new whsec_ signing secret, shown once):"
        )?;
        for w in &p.webhooks_to_create {
            writeln!(s, "  + {}", w.url)?;
            let description = w
                .description
                .as_ref()
                .map(|d| format!("; description {d:?}"))
                .unwrap_or_default();
            writeln!(s, "      events {}{description}", w.events.join(", "))?;
        }
        writeln!(s)?;
    }
    if !p.webhooks_differ.is_empty() {
        writeln!(
            s,
            "Webhook endpoints that differ from {file} (NOT changed by apply: the API cannot change an endpoint, and replacing it would give it a new secret and drop its deliveries):"
        )?;
        for w in &p.webhooks_differ {
            writeln!(s, "  ! {} {}", w.id, w.url)?;
            for f in &w.changes {
                writeln!(s, "      {}: {} (live) -> {} (file)", f.field, f.from, f.to)?;
            }
            writeln!(
                s,
                "      to take the file's values: `keyroll webhook remove {}`, then apply again (a NEW secret for the receiver; pending deliveries are dropped)",
                w.id
            )?;
        }
        writeln!(s)?;
    }
    if !p.drift.is_empty() {
        writeln!(
            s,
            "Drift (changed outside {file} since the last apply; apply puts the file's values back):"
        )?;
        for d in &p.drift {
            writeln!(s, "  ! {}", d.consumer)?;
            let back = p
                .consumers_to_update
                .iter()
                .find(|c| format!("{}/{}", c.environment, c.name) == d.consumer);
            for f in &d.changes {
                let to = back
                    .and_then(|c| c.reverts.iter().find(|r| r.field == f.field))
                    .map(|r| r.to.clone())
                    .unwrap_or_default();
                writeln!(
                    s,
                    "      {}: {} (applied) -> {} (live); apply sets {}",
                    f.field, f.from, f.to, to
                )?;
            }
        }
        writeln!(s)?;
    }
    if !p.not_in_file.is_empty()
        || !p.environments_not_in_file.is_empty()
        || !p.webhooks_not_in_file.is_empty()
    {
        writeln!(s, "Not in {file} (keyroll never deletes):")?;
        for e in &p.environments_not_in_file {
            writeln!(s, "  - environment {e}: left as it is")?;
        }
        for n in &p.not_in_file {
            let what = match (n.action, n.disabled) {
                (Unnamed::Disable, _) if n.protected => {
                    "managed by the policy: disabled by apply (--prune; protected environment, confirmed by approving the plan)"
                }
                (Unnamed::Disable, _) => "managed by the policy: disabled by apply (--prune)",
                (Unnamed::Keep, _) => {
                    "managed by the policy: kept (apply --prune would disable it)"
                }
                (Unnamed::Ignore, true) => "disabled: left as it is",
                (Unnamed::Ignore, false) => "not managed by a policy: left as it is",
            };
            let mark = if n.action == Unnamed::Disable {
                "-"
            } else {
                " "
            };
            writeln!(s, "  {mark} {}/{}: {what}", n.environment, n.name)?;
        }
        for w in &p.webhooks_not_in_file {
            writeln!(
                s,
                "    webhook endpoint {} {} (events {}): not managed by the policy: left as it is",
                w.id,
                w.url,
                w.events.join(", ")
            )?;
        }
        writeln!(s)?;
    }
    if !p.rotations_due.is_empty() {
        writeln!(
            s,
            "Rotations due now (apply does not rotate: the server's schedule and `keyroll rotate --due` do):"
        )?;
        for d in &p.rotations_due {
            let delivery = d.delivery.as_deref().unwrap_or("manual");
            let since =
                d.at.as_deref()
                    .map(|a| format!(", due since {a}"))
                    .unwrap_or_default();
            writeln!(s, "  {} (delivery {delivery}{since})", d.consumer)?;
        }
        writeln!(s)?;
    }
    if !p.blocked.is_empty() {
        writeln!(s, "Rotations blocked:")?;
        for b in &p.blocked {
            let why: Vec<String> = b
                .reasons
                .iter()
                .map(|r| format!("{} ({})", r.message, r.code))
                .collect();
            writeln!(s, "  {}: {}", b.consumer, why.join("; "))?;
        }
        writeln!(s)?;
    }
    if !p.next_due.is_empty() {
        writeln!(s, "Next rotations:")?;
        for d in &p.next_due {
            writeln!(s, "  {}  {}", d.at.as_deref().unwrap_or("-"), d.consumer)?;
        }
        writeln!(s)?;
    }
    if p.has_changes() {
        let disable = p
            .not_in_file
            .iter()
            .filter(|n| n.action == Unnamed::Disable)
            .count();
        writeln!(
            s,
            "Plan: {} environment(s) to create, {} to change; {} consumer(s) to create, {} to change ({} with drift), {} to disable.",
            p.environments_to_create.len(),
            p.environments_to_update.len(),
            p.consumers_to_create.len(),
            p.consumers_to_update.len(),
            p.drift.len(),
            disable
        )?;
        if !p.webhooks_to_create.is_empty() {
            writeln!(
                s,
                "      {} webhook endpoint(s) to register.",
                p.webhooks_to_create.len()
            )?;
        }
    } else if !p.webhooks_differ.is_empty() {
        writeln!(
            s,
            "No changes apply can make, but {} webhook endpoint(s) differ from {file} (above).",
            p.webhooks_differ.len()
        )?;
    } else {
        writeln!(s, "No changes: the live state matches {file}.")?;
    }
    Ok(())
}
