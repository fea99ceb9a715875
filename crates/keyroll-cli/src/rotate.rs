//! `keyroll rotate --due` (the pipeline's half of the schedule: rotate every `ci` consumer whose
//! rotation fell due and hand each new key on) and `keyroll rotate ENV/NAME --plan` (the
//! preflight checklist; changes nothing).
//!
//! The server's scheduler only says a rotation is due; it never issues a key, because a key that
//! reaches nobody is the incident rotation is meant to prevent. So this command issues a key
//! only where it can hand it on in the same breath: to a new 0600 file (`--out-dir`), to a
//! command on its stdin (`--exec`), or printed once. Every target file is checked before the
//! first rotation, each rotation carries its own random `Idempotency-Key` (a retry after a lost
//! answer replays the same key instead of rotating twice), and a failure to hand a key on is
//! reported with what still works and how to recover.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use keyroll_client::{Answer, Client, ClientError};
use keyroll_core::{ConsumerRef, Environment};
use keyroll_proto as proto;
use serde_json::{Value, json};

use crate::exit::{Exit, OrUsage, classify};
use crate::output::{Output, Printed, print_new_key, say, table};

/// The flags of `keyroll rotate` for pipelines and for the preflight.
#[derive(Debug, Args)]
pub struct CiFlags {
    /// Rotate every `ci`-delivered consumer whose scheduled rotation is due, and hand each new
    /// key on (--out-dir, --exec, or printed once).
    #[arg(long, conflicts_with_all = ["consumer", "plan", "grace", "idempotency_key"])]
    pub due: bool,
    /// Print the preflight checklist of ENV/NAME (versions in use and their sources, delivery,
    /// ordering, timeline, warnings) and change nothing.
    #[arg(long, conflicts_with_all = ["grace", "enforce", "expires_in", "yes", "idempotency_key"])]
    pub plan: bool,
    // The flags below need --due: without it a consumer is required, and they conflict with
    // one. (`requires = "due"` would be waived by clap, which excuses a missing requirement that
    // conflicts with a present argument, as --due does with the consumer.)
    /// With --due: only this environment.
    #[arg(long = "env", value_name = "ENV", conflicts_with = "consumer")]
    pub environment: Option<String>,
    /// With --due: write each new key to DIR/ENV/NAME.key (mode 0600, never overwriting).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["consumer", "exec"])]
    pub out_dir: Option<PathBuf>,
    /// With --due: run `sh -c CMD` once per new key, with the key on stdin and KEYROLL_CONSUMER,
    /// KEYROLL_ENVIRONMENT, KEYROLL_NAME, KEYROLL_VERSION, KEYROLL_KID in its environment.
    #[arg(long, value_name = "CMD", conflicts_with = "consumer")]
    pub exec: Option<String>,
    /// With --due: list what would rotate and change nothing.
    #[arg(long, conflicts_with = "consumer")]
    pub dry_run: bool,
    /// Ask the consumer's agents to rotate it now (`keyroll agent` / `keyroll run` beside the
    /// app): the agent rotates within a second and writes the new key where the app reads it,
    /// and this command never sees the key.
    #[arg(long, conflicts_with_all = ["due", "plan", "grace", "enforce", "expires_in", "idempotency_key"])]
    pub via_agent: bool,
}

/// `keyroll rotate ENV/NAME --via-agent`: asks the consumer's agents to rotate.
pub async fn via_agent(
    client: &Client,
    r: &ConsumerRef,
    yes: bool,
    out: Output,
) -> anyhow::Result<()> {
    let req = proto::RequestRotation { confirm: yes };
    let a = client
        .request_rotation(r.environment.as_str(), r.name.as_str(), &req)
        .await?;
    let agents = client.list_agents(Some(r.environment.as_str())).await?;
    let mine: Vec<_> = agents
        .body
        .items
        .iter()
        .filter(|x| x.consumer == r.to_string())
        .collect();
    out.json_or(&a.json, || {
        let active = a
            .body
            .versions
            .iter()
            .find(|v| v.state == "active")
            .map_or(0, |v| v.version);
        say!("Asked the agents of {r} to rotate v{active}.")?;
        if mine.is_empty() {
            say!(
                "No agent of {r} has reported yet: start `keyroll agent --consumer {r} --key-file PATH` beside the app, or the request waits for one."
            )?;
        } else {
            for x in &mine {
                say!(
                    "  agent {} on {} holds v{} (last contact {})",
                    x.agent,
                    x.host.as_deref().unwrap_or("?"),
                    x.version,
                    x.last_contact
                )?;
            }
        }
        say!("Watch it: keyroll status {r}")?;
        Ok(())
    })?;
    Ok(())
}

/// What `--due` passes on to each rotation.
#[derive(Debug)]
pub struct DueOptions {
    /// Retire exactly at the deadline.
    pub enforce: bool,
    /// Hard expiry of each new key.
    pub expires_in: Option<String>,
    /// Confirmed for protected environments.
    pub yes: bool,
}

/// Where new keys go.
#[derive(Debug)]
enum Handoff {
    Files(PathBuf),
    Exec(String),
    Print,
}

/// How often a transient failure (unreachable, 5xx) is tried again, and the first pause.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(300);

/// Whether a failure may pass by itself: the server was not reached, or failed.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } | ClientError::Decode { status, .. } => *status >= 500,
        ClientError::Request(_) => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or the retries are used up (with doubling
/// pauses). Safe for a rotation only because each carries its own Idempotency-Key.
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut pause = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if attempt < RETRIES && transient(&e) => {
                attempt += 1;
                crate::output::note(format_args!(
                    "{what}: {e}; trying again in {} ms ({attempt} of {RETRIES})",
                    pause.as_millis()
                ));
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// A fresh random `Idempotency-Key` (128 bits as 32 hex digits): strong enough for the server
/// to keep the new key sealed for a replay, so a retry after a lost answer still gets it.
fn idempotency_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for an Idempotency-Key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What happened to one consumer.
#[derive(Debug)]
enum Outcome {
    /// Rotated and handed on (`to` says where; `key` only when printed).
    Rotated { rotated: proto::Rotated, to: String },
    /// `--dry-run`: would be rotated.
    WouldRotate,
    /// Not this command's to rotate, or not yet.
    Skipped { reason: String },
    /// Protected, and no --yes.
    Refused { reason: String },
    /// The rotation failed; nothing was issued (or nothing is known to have been).
    Failed { error: crate::exit::Failure },
    /// The key was issued but could not be handed on.
    HandoffFailed {
        rotated: proto::Rotated,
        detail: String,
    },
}

impl Outcome {
    fn code(&self) -> &'static str {
        match self {
            Outcome::Rotated { .. } => "rotated",
            Outcome::WouldRotate => "would_rotate",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Refused { .. } => "refused",
            Outcome::Failed { .. } => "failed",
            Outcome::HandoffFailed { .. } => "handoff_failed",
        }
    }

    /// The exit code this outcome asks for, if it is a failure.
    fn failure(&self) -> Option<Exit> {
        match self {
            Outcome::Rotated { .. } | Outcome::WouldRotate | Outcome::Skipped { .. } => None,
            // The same code the server's own refusal of an unconfirmed change gets (HTTP 428).
            Outcome::Refused { .. } => Some(Exit::Conflict),
            Outcome::Failed { error } => Some(error.exit),
            Outcome::HandoffFailed { .. } => Some(Exit::Error),
        }
    }
}

/// One consumer's line in the report.
#[derive(Debug)]
struct Row {
    entry: proto::ScheduleEntry,
    outcome: Outcome,
}

/// Why `--due` leaves an entry alone, or `None` if it is this command's to rotate.
fn skip_reason(e: &proto::ScheduleEntry) -> Option<String> {
    match (e.state.as_str(), e.delivery.as_str()) {
        ("due", "ci") => None,
        ("blocked", _) => {
            let why: Vec<&str> = e.blockers.iter().map(|b| b.message.as_str()).collect();
            Some(format!("blocked: {}", why.join("; ")))
        }
        (_, "manual") => Some(format!(
            "delivery manual: a person rotates it and hands the key over (keyroll rotate {})",
            e.consumer
        )),
        (_, "agent") => Some("delivery agent: its agent rotates it".into()),
        (_, other) => Some(format!("delivery {other}: not rotated by `rotate --due`")),
    }
}

fn key_path(dir: &Path, e: &proto::ScheduleEntry) -> PathBuf {
    dir.join(&e.environment).join(format!("{}.key", e.name))
}

/// `keyroll rotate --due`.
pub async fn due(
    client: &Client,
    flags: &CiFlags,
    options: &DueOptions,
    out: Output,
) -> anyhow::Result<ExitCode> {
    if let Some(e) = &flags.environment {
        Environment::parse(e).context("--env").or_usage()?;
    }
    if let Some(d) = &options.expires_in {
        keyroll_core::parse_duration(d)
            .context("--expires-in")
            .or_usage()?;
    }
    let handoff = match (&flags.out_dir, &flags.exec) {
        (Some(d), _) => Handoff::Files(d.clone()),
        (None, Some(c)) if c.trim().is_empty() => {
            return Err(crate::exit::usage("--exec needs a command"));
        }
        (None, Some(c)) => Handoff::Exec(c.clone()),
        (None, None) => Handoff::Print,
    };
    let env = flags.environment.as_deref();
    let schedule = with_retries("reading the schedule", || client.schedule(env)).await?;
    if schedule.body.entries.is_empty()
        && let Some(e) = env
    {
        crate::status::check_environment(client, e).await?;
    }
    // Only entries that fell due are reported; the rest are just counted.
    let (fell_due, waiting): (Vec<_>, Vec<_>) = schedule
        .body
        .entries
        .into_iter()
        .partition(|e| matches!(e.state.as_str(), "due" | "blocked"));
    let mut rows: Vec<Row> = Vec::new();
    let mut todo = Vec::new();
    // Reported in the schedule's order (environment, name), whatever happened to each.
    let order: Vec<String> = fell_due.iter().map(|e| e.consumer.clone()).collect();
    for entry in fell_due {
        match skip_reason(&entry) {
            Some(reason) => rows.push(Row {
                entry,
                outcome: Outcome::Skipped { reason },
            }),
            None if entry.protected && !options.yes => {
                let reason = format!(
                    "environment {} is protected: rotating {} from the CLI needs --yes",
                    entry.environment, entry.consumer
                );
                rows.push(Row {
                    entry,
                    outcome: Outcome::Refused { reason },
                });
            }
            None => todo.push(entry),
        }
    }
    // Every file is checked before the first key is issued: a refusal then costs nothing.
    if let Handoff::Files(dir) = &handoff
        && !flags.dry_run
    {
        let paths: Vec<PathBuf> = todo.iter().map(|e| key_path(dir, e)).collect();
        crate::keyfiles::refuse_existing(&paths)?;
    }
    for entry in todo {
        let outcome = if flags.dry_run {
            Outcome::WouldRotate
        } else {
            rotate_one(client, &entry, options, &handoff).await?
        };
        rows.push(Row { entry, outcome });
    }
    rows.sort_by_key(|r| order.iter().position(|c| *c == r.entry.consumer));
    report(&rows, waiting.len(), flags.dry_run, &handoff, out)?;
    let failed = rows
        .iter()
        .filter(|r| r.outcome.failure().is_some())
        .count();
    let Some(exit) = rows.iter().find_map(|r| r.outcome.failure()) else {
        return Ok(ExitCode::SUCCESS);
    };
    if !out.json {
        // The report is on stdout; a CI log scanning stderr still sees that the run failed.
        crate::output::note(format_args!(
            "error: {failed} of the rotations due did not complete (see above)"
        ));
    }
    Ok(exit.into())
}

/// Rotates one consumer and hands its key on.
async fn rotate_one(
    client: &Client,
    entry: &proto::ScheduleEntry,
    options: &DueOptions,
    handoff: &Handoff,
) -> anyhow::Result<Outcome> {
    let r = ConsumerRef::parse(&entry.consumer).context("the schedule named a consumer")?;
    let req = proto::RotateRequest {
        // The consumer's own scheduled grace.
        grace: None,
        enforce: options.enforce,
        expires_in: options.expires_in.clone(),
        confirm: options.yes && entry.protected,
    };
    let key = idempotency_key()?;
    let answer: Result<Answer<proto::Rotated>, ClientError> =
        with_retries(&format!("rotating {r}"), || {
            client.rotate(r.environment.as_str(), r.name.as_str(), &req, Some(&key))
        })
        .await;
    let rotated = match answer {
        Ok(a) => a.body,
        Err(e) => {
            return Ok(Outcome::Failed {
                error: classify(&anyhow::Error::from(e)),
            });
        }
    };
    let Some(new_key) = rotated.key.clone() else {
        let why = rotated
            .key_unavailable
            .clone()
            .unwrap_or_else(|| "the server did not return the new key".into());
        return Ok(Outcome::HandoffFailed {
            rotated,
            detail: why,
        });
    };
    let handed = match handoff {
        Handoff::Print => Ok("printed".to_owned()),
        Handoff::Files(dir) => {
            let path = key_path(dir, entry);
            crate::keyfiles::write_new(&path, &new_key)
                .map(|()| path.display().to_string())
                .map_err(|e| format!("{e:#}"))
        }
        Handoff::Exec(cmd) => exec(cmd, entry, &rotated, &new_key)
            .await
            .map(|()| "exec".to_owned()),
    };
    Ok(match handed {
        Ok(to) => Outcome::Rotated { rotated, to },
        Err(detail) => Outcome::HandoffFailed { rotated, detail },
    })
}

/// Runs `sh -c cmd` with the key on stdin (never in its arguments or environment). Its stdout
/// goes to stderr, so that stdout stays this command's report (one JSON document under
/// `--output json`). The admin token is not passed on: pushing a key needs none.
async fn exec(
    cmd: &str,
    entry: &proto::ScheduleEntry,
    rotated: &proto::Rotated,
    key: &str,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let stdout = stderr_as_stdio();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env_remove("KEYROLL_TOKEN")
        .env("KEYROLL_CONSUMER", &entry.consumer)
        .env("KEYROLL_ENVIRONMENT", &entry.environment)
        .env("KEYROLL_NAME", &entry.name)
        .env("KEYROLL_VERSION", rotated.version.to_string())
        .env("KEYROLL_KID", &rotated.kid)
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `sh -c {cmd}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that exits without reading is judged by its exit status, not by the pipe.
        let _ = stdin.write_all(key.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
        drop(stdin);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for `sh -c {cmd}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("--exec command failed ({status})"))
    }
}

/// This process's stderr, as the stdout of a child.
fn stderr_as_stdio() -> std::process::Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            return std::process::Stdio::from(fd);
        }
    }
    std::process::Stdio::inherit()
}

/// What to do after a key was issued but not handed on.
fn recovery(e: &proto::ScheduleEntry, rotated: &proto::Rotated) -> String {
    let old = match rotated.retiring.first() {
        Some(v) => format!(
            "v{} still works until {} (its grace window)",
            v.version, v.deadline
        ),
        None => "no older version is still working".into(),
    };
    format!(
        "v{} (kid {}) was issued but did not reach its consumer; {old}. To recover, rotate \
         again before then (`keyroll rotate {}`) and hand that key on",
        rotated.version, rotated.kid, e.consumer
    )
}

fn rotated_json(r: &proto::Rotated, with_key: bool) -> Value {
    json!({
        "version": r.version,
        "kid": r.kid,
        "retiring": r.retiring.iter().map(|v| json!({"version": v.version, "deadline": v.deadline})).collect::<Vec<_>>(),
        "retired": r.retired,
        "replayed": r.replayed,
        "key": if with_key { r.key.clone() } else { None },
    })
}

fn row_json(row: &Row, handoff: &Handoff) -> Value {
    let e = &row.entry;
    let mut v = json!({
        "consumer": e.consumer,
        "environment": e.environment,
        "name": e.name,
        "delivery": e.delivery,
        "protected": e.protected,
        "state": e.state,
        "next_due": e.next_due,
        "outcome": row.outcome.code(),
    });
    let extra = match &row.outcome {
        Outcome::Rotated { rotated, to } => json!({
            "rotated": rotated_json(rotated, matches!(handoff, Handoff::Print)),
            "handed_to": to,
        }),
        Outcome::WouldRotate => json!({}),
        Outcome::Skipped { reason } => json!({
            "reason": reason,
            "blockers": e.blockers.iter().map(|b| json!({"code": b.code, "message": b.message})).collect::<Vec<_>>(),
        }),
        Outcome::Refused { reason } => json!({ "reason": reason }),
        Outcome::Failed { error } => json!({
            "error": {
                "code": error.code,
                "detail": error.detail,
                "request_id": error.request_id,
                "exit_code": error.exit.code(),
            }
        }),
        Outcome::HandoffFailed { rotated, detail } => json!({
            "rotated": rotated_json(rotated, false),
            "error": { "code": "handoff_failed", "detail": detail, "exit_code": Exit::Error.code() },
            "recovery": recovery(e, rotated),
        }),
    };
    if let (Some(o), Value::Object(x)) = (v.as_object_mut(), extra) {
        o.extend(x);
    }
    v
}

fn count(rows: &[Row], code: &str) -> usize {
    rows.iter().filter(|r| r.outcome.code() == code).count()
}

fn report(rows: &[Row], not_due: usize, dry_run: bool, handoff: &Handoff, out: Output) -> Printed {
    let summary = json!({
        "rotated": count(rows, "rotated"),
        "would_rotate": count(rows, "would_rotate"),
        "skipped": count(rows, "skipped"),
        "refused": count(rows, "refused"),
        "failed": count(rows, "failed") + count(rows, "handoff_failed"),
        "not_due": not_due,
    });
    if out.json {
        let doc = json!({
            "dry_run": dry_run,
            "results": rows.iter().map(|r| row_json(r, handoff)).collect::<Vec<_>>(),
            "summary": summary,
        });
        return say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    for row in rows {
        let c = &row.entry.consumer;
        match &row.outcome {
            Outcome::Rotated { rotated, to } => {
                let what = format!(
                    "Rotated {c}: v{} is active (kid {})",
                    rotated.version, rotated.kid
                );
                match handoff {
                    Handoff::Print => print_new_key(&what, rotated.key.as_deref())?,
                    Handoff::Files(_) => say!("{what}; key written to {to} (mode 0600).")?,
                    Handoff::Exec(_) => say!("{what}; key handed to the --exec command.")?,
                }
                for v in &rotated.retiring {
                    say!(
                        "  v{} keeps working until {} (grace window), then retires.",
                        v.version,
                        v.deadline
                    )?;
                }
            }
            Outcome::WouldRotate => say!(
                "Would rotate {c} (due since {}).",
                row.entry.next_due.as_deref().unwrap_or("-")
            )?,
            Outcome::Skipped { reason } => say!("Skipped {c}: {reason}.")?,
            Outcome::Refused { reason } => say!("Refused {c}: {reason}.")?,
            Outcome::Failed { error } => say!("Failed {c}: {}.", error.detail)?,
            Outcome::HandoffFailed { rotated, detail } => {
                say!("Failed {c}: {detail}. {}.", recovery(&row.entry, rotated))?
            }
        }
    }
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    let head = if dry_run {
        format!("{} would rotate", n("would_rotate"))
    } else {
        format!("{} rotated", n("rotated"))
    };
    say!(
        "{head}, {} skipped, {} refused, {} failed; {} not due.{}",
        n("skipped"),
        n("refused"),
        n("failed"),
        n("not_due"),
        if dry_run { " Nothing was changed." } else { "" }
    )
}

/// `keyroll rotate ENV/NAME --plan`: the preflight, as a checklist. Changes nothing.
pub async fn plan(client: &Client, r: &ConsumerRef, out: Output) -> anyhow::Result<()> {
    let a = client
        .preflight(r.environment.as_str(), r.name.as_str())
        .await?;
    out.json_or(&a.json, || print_preflight(&a.body))?;
    Ok(())
}

fn requests(n: u64) -> String {
    format!("{n} request{}", if n == 1 { "" } else { "s" })
}

fn mark(ok: bool) -> &'static str {
    if ok { "[ok]" } else { "[!!]" }
}

fn print_preflight(p: &proto::Preflight) -> Printed {
    say!(
        "Preflight for rotating {} (at {}; nothing was changed)",
        p.consumer,
        p.now
    )?;
    say!()?;
    say!("Versions in use (last 24 h):")?;
    if p.versions.is_empty() {
        say!("  none valid")?;
    }
    for v in &p.versions {
        say!(
            "  v{} {}: {} in 24 h, {} in the last hour ({:.0}% of it), last used {}",
            v.version,
            v.state,
            requests(v.requests_24h),
            requests(v.requests_1h),
            v.share_1h * 100.0,
            v.last_used_at.as_deref().unwrap_or("never")
        )?;
        let rows: Vec<Vec<String>> = v
            .sources
            .iter()
            .map(|s| {
                vec![
                    format!("    {}", s.address),
                    s.user_agent.clone(),
                    s.client_id.clone().unwrap_or_else(|| "-".into()),
                    s.count.to_string(),
                    s.last_seen.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(
                &[
                    "    SOURCE",
                    "USER-AGENT",
                    "CLIENT-ID",
                    "REQUESTS",
                    "LAST SEEN",
                ],
                &rows,
            )?;
        }
    }
    say!()?;
    say!("Checklist:")?;
    say!(
        "  {} delivery: {}",
        mark(p.delivery != "manual"),
        match p.delivery.as_str() {
            "ci" => "ci (the pipeline running `keyroll rotate --due` hands the key on)",
            "agent" => "agent (the consumer's agent fetches its new key)",
            _ => "manual (no delivery path: the new key must be handed over by hand)",
        }
    )?;
    say!(
        "  {} ordering: {}{}",
        mark(p.ordering.satisfied),
        match &p.ordering.rotate_after {
            Some(e) => format!("rotates after {e}: "),
            None => String::new(),
        },
        if p.ordering.satisfied {
            format!("satisfied ({})", p.ordering.detail)
        } else {
            format!("not satisfied ({})", p.ordering.detail)
        }
    )?;
    say!(
        "  {} protected: {}",
        mark(!p.protected),
        if p.protected {
            "yes (the rotation needs --yes)"
        } else {
            "no"
        }
    )?;
    let s = &p.schedule;
    say!(
        "  {} schedule: {}{}",
        mark(s.state != "blocked"),
        s.state,
        match (&s.next_due, &s.rotate_every) {
            (Some(d), Some(e)) => format!(" (every {e}; due {d})"),
            (None, Some(e)) => format!(" (every {e})"),
            _ => String::new(),
        }
    )?;
    for b in &s.blockers {
        say!("       blocked ({}): {}", b.code, b.message)?;
    }
    say!("  grace: {}", p.grace)?;
    say!()?;
    say!("If rotated now:")?;
    let rows: Vec<Vec<String>> = p
        .timeline
        .iter()
        .map(|t| vec![format!("  {}", t.at), t.what.clone()])
        .collect();
    table(&["  AT", "WHAT HAPPENS"], &rows)?;
    if !p.warnings.is_empty() {
        say!()?;
        say!("Warnings:")?;
        for w in &p.warnings {
            say!("  - {w}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: &str, delivery: &str) -> proto::ScheduleEntry {
        proto::ScheduleEntry {
            consumer: "prod/app".into(),
            environment: "prod".into(),
            name: "app".into(),
            delivery: delivery.into(),
            protected: false,
            state: state.into(),
            rotate_every: Some("7d".into()),
            active_version: Some(1),
            active_since: None,
            next_due: None,
            blockers: vec![proto::Blocker {
                code: "ordering".into(),
                message: "waiting for staging/app to rotate first".into(),
            }],
        }
    }

    #[test]
    fn only_due_ci_consumers_are_rotated_and_the_others_say_why() {
        assert_eq!(skip_reason(&entry("due", "ci")), None);
        let blocked = skip_reason(&entry("blocked", "ci")).unwrap_or_default();
        assert!(
            blocked.contains("blocked: waiting for staging/app"),
            "{blocked}"
        );
        let manual = skip_reason(&entry("due", "manual")).unwrap_or_default();
        assert!(manual.contains("keyroll rotate prod/app"), "{manual}");
        let agent = skip_reason(&entry("due", "agent")).unwrap_or_default();
        assert!(agent.contains("agent"), "{agent}");
        assert_eq!(
            key_path(Path::new("out"), &entry("due", "ci")),
            Path::new("out/prod/app.key")
        );
    }

    #[test]
    fn unreachable_and_server_failures_are_retried_and_answers_are_not() {
        let api = |status| ClientError::Api {
            status,
            problem: Box::new(proto::Problem {
                type_uri: String::new(),
                title: String::new(),
                status,
                detail: String::new(),
                code: String::new(),
                kid: None,
                fingerprint: None,
                consumer: None,
                version: None,
                request_id: String::new(),
            }),
        };
        assert!(transient(&api(503)));
        assert!(!transient(&api(409)));
        assert!(!transient(&api(428)));
        assert!(transient(&ClientError::Unreachable {
            url: String::new(),
            reason: String::new(),
            kind: keyroll_client::Transport::Refused,
        }));
        let (a, b) = (
            idempotency_key().unwrap_or_default(),
            idempotency_key().unwrap_or_default(),
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()) && a != b);
    }
}
