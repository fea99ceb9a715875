//! `keyroll policy check`, `keyroll plan` and `keyroll apply`: the glue between a policy file,
//! the server's live state and `keyroll-policy`, which decides everything. This module only
//! reads files, calls the API, asks for approval and writes keys.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use keyroll_client::{Client, ClientError};
use keyroll_policy::{
    LiveConsumer, LiveEnvironment, LiveState, LiveWebhook, Plan, Policy, SavedPlan, ScheduleEntry,
    Settings, Unnamed,
};
use keyroll_proto as proto;

use crate::exit::{Exit, Failure, usage};
use crate::keyfiles;
use crate::output::{Output, print_new_key, say};

/// `keyroll policy …`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Check a policy file offline: exit 0 if it is valid, 1 with every error (FILE:LINE:COL)
    /// on stderr otherwise.
    Check {
        /// The policy file (TOML).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
}

/// `keyroll plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The policy file (TOML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Disable (never delete) consumers a policy applied before that the file no longer names.
    #[arg(long)]
    prune: bool,
    /// Save the plan, pinned to the live state it was computed from, for `keyroll apply PLAN`.
    #[arg(long, value_name = "PLAN.json")]
    out: Option<PathBuf>,
}

/// `keyroll apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved by `keyroll plan --out` (refused if the live state changed since).
    #[arg(value_name = "PLAN.json", required_unless_present = "file")]
    plan: Option<PathBuf>,
    /// Plan this policy file and apply it.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "plan"
    )]
    file: Option<PathBuf>,
    /// With -f: disable (never delete) consumers a policy applied before that the file no
    /// longer names. A saved plan keeps the choice it was made with.
    #[arg(long, conflicts_with = "plan")]
    prune: bool,
    /// Approve without asking (required when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
    /// Write each new key to DIR/ENV/NAME.key and each new webhook signing secret to
    /// DIR/webhooks/ID.secret (mode 0600) instead of printing them; refused before any change
    /// if one of those files exists.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Exit code of `keyroll plan` when there are changes (`terraform plan -detailed-exitcode`).
const CHANGES: u8 = 2;

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses a policy file; its errors become one failure whose detail lists them all.
fn load(path: &Path) -> anyhow::Result<Policy> {
    let text = read_text(path)?;
    keyroll_policy::parse(&path.display().to_string(), &text).map_err(|errors| {
        let n = errors.0.len();
        Failure::new(
            Exit::Error,
            "invalid_policy",
            format!(
                "{} has {n} error{}:\n{errors}",
                path.display(),
                if n == 1 { "" } else { "s" }
            ),
        )
        .into()
    })
}

/// `keyroll policy check -f FILE`.
pub fn check(cmd: PolicyCmd, out: Output) -> anyhow::Result<ExitCode> {
    let PolicyCmd::Check { file } = cmd;
    let text = read_text(&file)?;
    let name = file.display().to_string();
    match keyroll_policy::parse(&name, &text) {
        Ok(p) => {
            if out.json {
                let v = serde_json::json!({
                    "valid": true,
                    "file": name,
                    "environments": p.environments.len(),
                    "consumers": p.consumers.len(),
                    "webhooks": p.webhooks.len(),
                    "sha256": p.sha256,
                });
                say!("{v}")?;
            } else {
                let webhooks = match p.webhooks.len() {
                    0 => String::new(),
                    1 => ", 1 webhook endpoint".to_owned(),
                    n => format!(", {n} webhook endpoints"),
                };
                say!(
                    "{name}: valid ({} environments, {} consumers{webhooks}).",
                    p.environments.len(),
                    p.consumers.len()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            if out.json {
                let list: Vec<_> = errors
                    .0
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "file": e.file, "line": e.line, "column": e.column, "message": e.message,
                        })
                    })
                    .collect();
                let _ = writeln!(
                    err,
                    "{}",
                    serde_json::json!({ "valid": false, "errors": list })
                );
            } else {
                let _ = writeln!(err, "{errors}");
            }
            Ok(Exit::Error.into())
        }
    }
}

/// Reads everything a plan compares the file with. The webhook endpoints need `webhooks:read`;
/// unless `webhooks` says the plan has some of its own, a token without it plans without them
/// (said on stderr), so that a policy of consumers only needs no new scope.
async fn live_state(client: &Client, webhooks: bool) -> anyhow::Result<LiveState> {
    let envs = client
        .list_environments()
        .await
        .context("reading the environments")?;
    let consumers = client
        .list_consumers(None)
        .await
        .context("reading the consumers")?;
    let schedule = client
        .schedule(None)
        .await
        .context("reading the schedule")?;
    let hooks = match client.list_webhooks().await {
        Ok(a) => a.body.items,
        Err(ClientError::Api { status: 403, .. }) if !webhooks => {
            crate::output::note(format_args!(
                "note: webhook endpoints not compared: the token lacks webhooks:read (the file declares none)"
            ));
            Vec::new()
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reading the webhook endpoints")),
    };
    Ok(LiveState {
        environments: envs
            .body
            .items
            .into_iter()
            .map(|e| LiveEnvironment {
                name: e.name,
                protected: e.protected,
                rotate_after: e.rotate_after,
            })
            .collect(),
        consumers: consumers
            .body
            .items
            .into_iter()
            .map(live_consumer)
            .collect(),
        schedule: schedule
            .body
            .entries
            .into_iter()
            .map(|e| ScheduleEntry {
                consumer: e.consumer,
                state: e.state,
                delivery: Some(e.delivery),
                next_due: e.next_due,
                blockers: e
                    .blockers
                    .into_iter()
                    .map(|b| keyroll_policy::Blocker {
                        code: b.code,
                        message: b.message,
                    })
                    .collect(),
            })
            .collect(),
        webhooks: hooks
            .into_iter()
            .map(|w| LiveWebhook {
                id: w.id,
                url: w.url,
                events: w.events,
                description: w.description,
                state: w.state,
            })
            .collect(),
    })
}

fn live_consumer(c: proto::Consumer) -> LiveConsumer {
    LiveConsumer {
        settings: Settings {
            scopes: c.scopes,
            owner: c.owner,
            retire: c.retire,
            idle: c.idle,
            on_stall: c.on_stall,
            rotate_every: c.rotate_every,
            grace: c.grace,
            delivery: c.delivery,
        },
        environment: c.environment,
        name: c.name,
        disabled: c.disabled,
        managed: c.managed.map(|m| Settings {
            scopes: m.scopes,
            owner: m.owner,
            retire: m.retire,
            idle: m.idle,
            on_stall: m.on_stall,
            rotate_every: m.rotate_every,
            grace: m.grace,
            delivery: m.delivery,
        }),
    }
}

fn print_plan(plan: &Plan, file: &str, out: Output) -> anyhow::Result<()> {
    if out.json {
        let v = serde_json::json!({ "changes": plan.has_changes(), "plan": plan });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
    } else {
        let text = keyroll_policy::render(plan, file);
        say!("{}", text.trim_end())?;
    }
    Ok(())
}

/// `keyroll plan -f FILE`: 0 no changes, 2 changes, 1 any error (terraform's
/// `-detailed-exitcode`: a plan's callers only tell these three apart, so every failure,
/// whatever its usual code, is 1 here).
pub async fn plan(
    args: PlanArgs,
    client: impl FnOnce() -> anyhow::Result<Client>,
    out: Output,
) -> ExitCode {
    match plan_inner(args, client, out).await {
        Ok(true) => ExitCode::from(CHANGES),
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = crate::exit::report(&e, out.json);
            Exit::Error.into()
        }
    }
}

async fn plan_inner(
    args: PlanArgs,
    client: impl FnOnce() -> anyhow::Result<Client>,
    out: Output,
) -> anyhow::Result<bool> {
    let policy = load(&args.file)?;
    let live = live_state(&client()?, !policy.webhooks.is_empty()).await?;
    let plan = keyroll_policy::plan(&policy, &live, args.prune);
    print_plan(&plan, &policy.file, out)?;
    if let Some(path) = &args.out {
        let saved = SavedPlan::new(
            &policy.file,
            &policy.sha256,
            args.prune,
            plan.clone(),
            &live,
        );
        write_plan_file(path, &saved.to_json())?;
        if !out.json {
            say!(
                "\nSaved to {}; `keyroll apply {}` applies exactly this plan, and refuses it if the live state changes first.",
                path.display(),
                path.display()
            )?;
        }
    }
    Ok(plan.has_changes())
}

/// Writes a saved plan through a temporary file and a rename, so a reader never sees half.
fn write_plan_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the plan to {}", path.display()))
}

/// `keyroll apply -f FILE` or `keyroll apply PLAN.json`.
pub async fn apply(args: ApplyArgs, client: &Client, out: Output) -> anyhow::Result<ExitCode> {
    // The file is read and checked before the server is asked anything.
    let (plan, file) = match (&args.plan, &args.file) {
        (Some(path), _) => {
            let saved = SavedPlan::from_json(&read_text(path)?)
                .with_context(|| format!("cannot read the plan {}", path.display()))?;
            let hooks = !saved.plan.webhooks_to_create.is_empty() || !saved.pin.webhooks.is_empty();
            let live = live_state(client, hooks).await?;
            let changed = keyroll_policy::check_pin(&saved, &live);
            if !changed.is_empty() {
                return Err(Failure::new(
                    Exit::Error,
                    "stale_plan",
                    format!(
                        "the plan {} is stale: the live state changed since it was made, so it is not applied:\n  {}\nRun `keyroll plan -f {} --out {}` again and review the new plan.",
                        path.display(),
                        changed.join("\n  "),
                        saved.policy_file,
                        path.display()
                    ),
                )
                .into());
            }
            (saved.plan, saved.policy_file)
        }
        (None, Some(file)) => {
            let policy = load(file)?;
            let live = live_state(client, !policy.webhooks.is_empty()).await?;
            (
                keyroll_policy::plan(&policy, &live, args.prune),
                policy.file,
            )
        }
        (None, None) => return Err(usage("give a saved plan (PLAN.json) or -f FILE")),
    };
    if !plan.has_changes() {
        if out.json {
            say!("{}", serde_json::json!({ "applied": 0, "results": [] }))?;
        } else {
            let text = keyroll_policy::render(&plan, &file);
            if plan.webhooks_differ.is_empty() {
                say!("{}", text.lines().last().unwrap_or_default())?;
            } else {
                // What apply leaves as it is, and why, is worth the whole plan.
                say!("{}", text.trim_end())?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let keys: Vec<PathBuf> = match &args.out_dir {
        Some(dir) => plan
            .consumers_to_create
            .iter()
            .map(|c| keyfiles::key_path(dir, &c.environment, &c.name))
            .collect(),
        None => Vec::new(),
    };
    // Before anything changes: a key that cannot be written would be lost. A secret's file is
    // named by the endpoint's id, known only once it is registered: its directory is checked.
    keyfiles::refuse_existing(&keys)?;
    if let Some(dir) = &args.out_dir
        && !plan.webhooks_to_create.is_empty()
    {
        keyfiles::refuse_non_directory(&keyfiles::webhook_dir(dir))?;
    }
    if !out.json {
        say!("{}", keyroll_policy::render(&plan, &file).trim_end())?;
        say!()?;
    }
    approve(args.yes)?;
    run(&plan, client, args.out_dir.as_deref(), out).await?;
    Ok(ExitCode::SUCCESS)
}

/// `--yes`, or "yes" typed on a terminal.
fn approve(yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "not applied: approval is needed and stdin is not a terminal; review the plan and pass --yes",
        ));
    }
    eprint!("Apply these changes? Only 'yes' approves: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Error,
            "not_approved",
            "not applied: the plan was not approved; nothing was changed",
        )
        .into())
    }
}

/// One change of a plan, in the order apply makes them.
enum Step<'a> {
    CreateEnvironment(&'a keyroll_policy::EnvironmentSpec),
    UpdateEnvironment(&'a keyroll_policy::EnvironmentChange),
    CreateConsumer(&'a keyroll_policy::ConsumerCreate),
    UpdateConsumer(&'a keyroll_policy::ConsumerChange),
    Disable(&'a keyroll_policy::NotInFile),
    CreateWebhook(&'a keyroll_policy::WebhookCreate),
}

impl Step<'_> {
    fn describe(&self) -> String {
        match self {
            Step::CreateEnvironment(e) => format!("create environment {}", e.name),
            Step::UpdateEnvironment(e) => format!("change environment {}", e.name),
            Step::CreateConsumer(c) => format!("create {}/{}", c.environment, c.name),
            Step::UpdateConsumer(c) => format!("change {}/{}", c.environment, c.name),
            Step::Disable(n) => format!("disable {}/{}", n.environment, n.name),
            Step::CreateWebhook(w) => format!("register webhook endpoint {}", w.url),
        }
    }
}

fn steps(plan: &Plan) -> Vec<Step<'_>> {
    let mut s: Vec<Step<'_>> = Vec::new();
    s.extend(
        plan.environments_to_create
            .iter()
            .map(Step::CreateEnvironment),
    );
    s.extend(
        plan.environments_to_update
            .iter()
            .map(Step::UpdateEnvironment),
    );
    s.extend(plan.consumers_to_create.iter().map(Step::CreateConsumer));
    s.extend(plan.consumers_to_update.iter().map(Step::UpdateConsumer));
    s.extend(
        plan.not_in_file
            .iter()
            .filter(|n| n.action == Unnamed::Disable)
            .map(Step::Disable),
    );
    s.extend(plan.webhooks_to_create.iter().map(Step::CreateWebhook));
    s
}

/// Makes the changes one by one, a line each; a failure says what was done and what was not.
async fn run(
    plan: &Plan,
    client: &Client,
    out_dir: Option<&Path>,
    out: Output,
) -> anyhow::Result<()> {
    let steps = steps(plan);
    let mut results = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = run_step(step, client, out_dir, out, &mut results).await {
            let not_done: Vec<String> = steps[i + 1..].iter().map(Step::describe).collect();
            let rest = if not_done.is_empty() {
                "nothing else was left".to_owned()
            } else {
                format!("not done: {}", not_done.join(", "))
            };
            return Err(e.context(format!(
                "apply stopped at step {} of {} ({}); the {i} before it were made (listed above); {rest}",
                i + 1,
                steps.len(),
                step.describe()
            )));
        }
    }
    if out.json {
        let v = serde_json::json!({ "applied": results.len(), "results": results });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
    } else {
        say!(
            "Applied {} change{}.",
            steps.len(),
            if steps.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn opt(v: &Option<String>) -> Option<String> {
    v.clone()
}

async fn run_step(
    step: &Step<'_>,
    client: &Client,
    out_dir: Option<&Path>,
    out: Output,
    results: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    // Progress goes to stderr under --output json, so stdout stays one JSON document.
    let progress = |line: String| -> anyhow::Result<()> {
        if out.json {
            crate::output::note(format_args!("{line}"));
            Ok(())
        } else {
            Ok(say!("{line}")?)
        }
    };
    match step {
        Step::CreateEnvironment(e) => {
            client
                .create_environment(&proto::CreateEnvironment {
                    name: e.name.clone(),
                    protected: e.protected,
                    rotate_after: e.rotate_after.clone(),
                })
                .await?;
            progress(format!("Created environment {}.", e.name))?;
            results
                .push(serde_json::json!({ "action": "create_environment", "environment": e.name }));
        }
        Step::UpdateEnvironment(e) => {
            let protected = e.changes.iter().any(|c| c.field == "protected");
            let after = e.changes.iter().any(|c| c.field == "rotate_after");
            client
                .update_environment(
                    &e.name,
                    &proto::UpdateEnvironment {
                        protected: protected.then_some(e.desired.protected),
                        rotate_after: after.then(|| e.desired.rotate_after.clone()),
                    },
                )
                .await?;
            progress(format!("Changed environment {}.", e.name))?;
            results
                .push(serde_json::json!({ "action": "update_environment", "environment": e.name }));
        }
        Step::CreateConsumer(c) => {
            let s = &c.settings;
            let a = client
                .create_consumer(
                    &proto::CreateConsumer {
                        environment: c.environment.clone(),
                        name: c.name.clone(),
                        scopes: s.scopes.clone(),
                        owner: opt(&s.owner),
                        expires_in: None,
                        retire: Some(s.retire.clone()),
                        idle: Some(s.idle.clone()),
                        on_stall: Some(s.on_stall.clone()),
                        rotate_every: opt(&s.rotate_every),
                        grace: opt(&s.grace),
                        delivery: Some(s.delivery.clone()),
                        managed: true,
                    },
                    None,
                )
                .await?;
            let r = format!("{}/{}", c.environment, c.name);
            let what = format!("Created {r} (v{}, kid {})", a.body.version, a.body.kid);
            let mut result = serde_json::json!({
                "action": "create_consumer", "consumer": r, "kid": a.body.kid, "version": a.body.version,
            });
            match (out_dir, a.body.key.as_deref()) {
                (Some(dir), Some(key)) => {
                    let path = keyfiles::key_path(dir, &c.environment, &c.name);
                    if let Err(e) = keyfiles::write_new(&path, key) {
                        // The key exists only in this answer: shown rather than lost.
                        print_new_key(&format!("{what}; its key could not be written"), Some(key))?;
                        return Err(e);
                    }
                    progress(format!(
                        "{what}: key written to {} (mode 0600).",
                        path.display()
                    ))?;
                    result["key_file"] = serde_json::json!(path.display().to_string());
                }
                (None, key) if out.json => {
                    result["key"] = serde_json::json!(key);
                }
                (_, key) => print_new_key(&what, key)?,
            }
            results.push(result);
        }
        Step::UpdateConsumer(c) => {
            let r = format!("{}/{}", c.environment, c.name);
            if c.enable {
                client.enable(&c.environment, &c.name).await?;
                progress(format!("Enabled {r}."))?;
            }
            let s = &c.desired;
            // Every setting the file manages is sent, with `managed`, so the server records
            // exactly them as the last applied state (drift is measured from it).
            client
                .update_consumer(
                    &c.environment,
                    &c.name,
                    &proto::UpdateConsumer {
                        scopes: Some(s.scopes.clone()),
                        owner: Some(s.owner.clone().unwrap_or_default()),
                        retire: Some(s.retire.clone()),
                        idle: Some(s.idle.clone()),
                        on_stall: Some(s.on_stall.clone()),
                        rotate_every: Some(s.rotate_every.clone()),
                        grace: Some(s.grace.clone()),
                        delivery: Some(s.delivery.clone()),
                        managed: Some(true),
                    },
                )
                .await?;
            let fields = c.fields();
            let what = if fields.is_empty() {
                "recorded as managed by the policy".to_owned()
            } else {
                format!("set {}", fields.join(", "))
            };
            progress(format!("Changed {r}: {what}."))?;
            results.push(serde_json::json!({ "action": "update_consumer", "consumer": r, "fields": fields, "enabled": c.enable }));
        }
        Step::Disable(n) => {
            // Approving the plan is the confirmation a protected environment asks for.
            client
                .disable_confirmed(&n.environment, &n.name, &proto::Confirm { confirm: true })
                .await?;
            let r = format!("{}/{}", n.environment, n.name);
            progress(format!("Disabled {r} (no longer in the file; --prune)."))?;
            results.push(serde_json::json!({ "action": "disable", "consumer": r }));
        }
        Step::CreateWebhook(w) => {
            let a = client
                .create_webhook(&proto::CreateWebhook {
                    url: w.url.clone(),
                    events: Some(w.events.clone()),
                    description: w.description.clone(),
                })
                .await?;
            let hook = &a.body.webhook;
            let what = format!("Registered webhook endpoint {} for {}", hook.id, hook.url);
            let mut result = serde_json::json!({
                "action": "create_webhook", "id": hook.id, "url": hook.url, "events": hook.events,
            });
            match out_dir {
                Some(dir) => {
                    // The secret is never printed when it goes to a file: on a failure the
                    // endpoint is named with how to get a new secret.
                    let lost = || {
                        format!(
                            "{what}, but its signing secret could not be written; get a new one with `keyroll webhook rotate-secret {} --overlap 0 --output json`",
                            hook.id
                        )
                    };
                    let path = keyfiles::webhook_secret_path(dir, &hook.id)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "the server answered a malformed endpoint id {:?}",
                                hook.id
                            )
                        })
                        .with_context(lost)?;
                    keyfiles::write_new(&path, &a.body.secret).with_context(lost)?;
                    progress(format!(
                        "{what}: signing secret written to {} (mode 0600).",
                        path.display()
                    ))?;
                    result["secret_file"] = serde_json::json!(path.display().to_string());
                }
                None if out.json => result["secret"] = serde_json::json!(a.body.secret),
                None => {
                    say!("{what}.")?;
                    say!("\n  {}\n", a.body.secret)?;
                    say!(
                        "This signing secret is shown once. Give it to the receiver now; it verifies deliveries with any Standard Webhooks library."
                    )?;
                }
            }
            results.push(result);
        }
    }
    Ok(())
}
