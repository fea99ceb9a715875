//! `keyroll status` and `keyroll events`: who uses which version, with a verdict per consumer,
//! and the lifecycle event outbox. Colour on terminals unless `NO_COLOR` is set.

use std::io::IsTerminal;
use std::time::Duration;

use keyroll_client::Client;
use keyroll_proto as proto;

use crate::output::{Printed, say, write_stdout};

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set (https://no-color.org).
    pub fn detect() -> Paint {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Paint {
            on: std::io::stdout().is_terminal() && !no_color,
        }
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn verdict(&self, code: &str, text: &str) -> String {
        match code {
            "stalled" | "no_valid_key" | "disabled" => self.wrap("1;31", text),
            "rotating" | "never_used" | "idle" => self.wrap("33", text),
            "ready" | "ok" => self.wrap("32", text),
            _ => text.to_owned(),
        }
    }
}

/// Prints one status answer.
/// One line on the consumer's schedule and delivery; none when it has neither.
fn schedule_line(s: &proto::ScheduleEntry) -> Option<String> {
    let delivery = format!("delivery {}", s.delivery);
    let when = |t: &Option<String>| t.clone().unwrap_or_else(|| "?".into());
    Some(match s.state.as_str() {
        "unscheduled" if s.delivery == "manual" => return None,
        "unscheduled" => format!("no schedule; {delivery}"),
        "scheduled" => format!(
            "next rotation due {} (every {}); {delivery}",
            when(&s.next_due),
            s.rotate_every.as_deref().unwrap_or("?")
        ),
        "due" => format!("rotation due since {}; {delivery}", when(&s.next_due)),
        _ => {
            let why: Vec<&str> = s.blockers.iter().map(|b| b.message.as_str()).collect();
            format!("rotation blocked: {}; {delivery}", why.join("; "))
        }
    })
}

pub fn print_status(items: &[proto::ConsumerStatus], paint: Paint) -> Printed {
    for c in items {
        let owner = c
            .owner
            .as_deref()
            .map(|o| format!("  (owner {o})"))
            .unwrap_or_default();
        say!("{}{owner}", paint.wrap("1", &c.consumer))?;
        say!("  {}", paint.verdict(&c.verdict_code, &c.verdict))?;
        if let Some(line) = c.schedule.as_ref().and_then(schedule_line) {
            say!("  {line}")?;
        }
        if let Some(d) = &c.delivery {
            say!(
                "  delivery: {}{}",
                d.mode,
                d.summary
                    .as_deref()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default()
            )?;
            for a in &d.agents {
                say!(
                    "    agent {} on {} ({}) holds v{}, last contact {}{}",
                    a.agent,
                    a.host.as_deref().unwrap_or("?"),
                    a.mode.as_deref().unwrap_or("file"),
                    a.version,
                    a.last_contact,
                    match a.health.as_deref() {
                        Some("degraded") => " — degraded",
                        _ => "",
                    }
                )?;
            }
            if d.agents.is_empty() {
                say!("    no agent has reported yet")?;
            }
            for w in &d.warnings {
                say!("  {}", paint.verdict("stalled", &format!("warning: {w}")))?;
            }
        }
        for v in &c.versions {
            let deadline = v
                .deadline
                .as_deref()
                .map(|d| format!("  until {d}"))
                .unwrap_or_default();
            let stalled = if v.stalled {
                "  STALLED (extended once)"
            } else {
                ""
            };
            say!(
                "  v{:<4} {:<12} {:<9} last used {:<24} {:>6} req/h {:>8} req/24h{deadline}{stalled}",
                v.version,
                v.kid,
                v.state,
                v.last_used_at.as_deref().unwrap_or("never"),
                v.requests_last_hour,
                v.requests_last_day,
            )?;
            for s in v.sources.iter().take(5) {
                let label = s
                    .client_id
                    .as_deref()
                    .map(|c| format!(" client {c}"))
                    .unwrap_or_default();
                let ua = if s.user_agent.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.user_agent)
                };
                say!(
                    "         from {}{ua}{label}: {} requests, last {}",
                    s.address,
                    s.count,
                    s.last_seen
                )?;
            }
            if v.sources.len() > 5 {
                say!("         … and {} more sources", v.sources.len() - 5)?;
            }
        }
        say!()?;
    }
    Ok(())
}

/// An empty answer for an environment means nothing to show, or a name that does not exist
/// (the API answers an empty list for both): ask which, so a typo is not "No consumers.".
pub async fn check_environment(client: &Client, environment: &str) -> anyhow::Result<()> {
    let known = client.list_environments().await?;
    if known.body.items.iter().any(|e| e.name == environment) {
        return Ok(());
    }
    Err(crate::exit::not_found(format!(
        "environment {environment} does not exist (`keyroll env list` shows them; a consumer is ENV/NAME)"
    )))
}

/// Runs `keyroll status`, once or every `watch`.
pub async fn run(
    client: &Client,
    target: Option<&str>,
    json: bool,
    watch: Option<Duration>,
) -> anyhow::Result<()> {
    let (environment, consumer) = match target {
        Some(t) if t.contains('/') => {
            keyroll_core::ConsumerRef::parse(t)?;
            (None, Some(t))
        }
        Some(t) => {
            keyroll_core::Environment::parse(t)?;
            (Some(t), None)
        }
        None => (None, None),
    };
    let paint = Paint::detect();
    loop {
        let a = client.status(environment, consumer).await?;
        if a.body.items.is_empty()
            && let Some(e) = environment
        {
            check_environment(client, e).await?;
        }
        if watch.is_some() && paint.on {
            // Clear the screen so the view refreshes in place.
            write_stdout(format_args!("\x1b[2J\x1b[H"))?;
        }
        if json {
            say!(
                "{}",
                serde_json::to_string_pretty(&a.json).unwrap_or_default()
            )?;
        } else if a.body.items.is_empty() {
            match environment {
                Some(e) => say!("No consumers in {e}.")?,
                None => say!("No consumers.")?,
            }
        } else {
            print_status(&a.body.items, paint)?;
        }
        match watch {
            Some(every) => tokio::time::sleep(every).await,
            None => return Ok(()),
        }
    }
}

/// Prints events, oldest first.
pub fn print_events(items: &[proto::Event]) -> Printed {
    if items.is_empty() {
        say!("No events.")?;
    }
    for e in items {
        let version = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
        say!(
            "{:>6}  {}  {:<18} {}{version}  {}",
            e.seq,
            e.at,
            e.kind,
            e.consumer,
            e.detail
        )?;
    }
    Ok(())
}
