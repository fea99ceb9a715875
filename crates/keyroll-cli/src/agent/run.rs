//! `keyroll run -- CMD ARGS…`: the agent loop (the key file is kept current as by `keyroll
//! agent`) plus a child process with the key in its environment. A new key restarts the child
//! gracefully (stop signal, wait, SIGKILL) at a random moment inside a window that ends well
//! before the old key stops working, so replicas do not all restart at once. Signals sent to
//! `keyroll run` are passed to the child; when the child exits by itself, `keyroll run` exits
//! with its code (128 + the signal when a signal killed it).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::Args;
use keyroll_core::parse_duration;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::decide::restart_delay;
use super::log::Log;
use super::reload::parse_signal;
use super::worker::{KeyUpdate, Worker};
use super::{ConsumerFlags, TimingFlags};
use crate::exit::usage;

/// `keyroll run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub one: ConsumerFlags,
    /// The environment variable that carries the key to the child.
    #[arg(long, value_name = "NAME", default_value = "KEYROLL_KEY")]
    pub env_var: String,
    /// The signal that asks the child to stop before a restart.
    #[arg(long, value_name = "SIG", default_value = "TERM")]
    pub stop_signal: String,
    /// How long the child may take to stop before it is killed (SIGKILL).
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub stop_timeout: String,
    /// Restart within this long of a new key (a random moment, at most half of the old key's
    /// remaining grace).
    #[arg(long, value_name = "DUR", default_value = "5m")]
    pub restart_within: String,
    #[command(flatten)]
    pub timing: TimingFlags,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The signals passed on to the child.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

/// What a child's end becomes: its code, or 128 + the signal that killed it.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        _ => 1,
    }
}

struct Child {
    child: tokio::process::Child,
    pid: Option<Pid>,
    version: Option<u32>,
}

fn spawn(cmd: &[String], env_var: &str, key: &str, version: Option<u32>) -> anyhow::Result<Child> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| usage("no command after --"))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .env(env_var, key)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {program:?}: {e}"))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    Ok(Child {
        child,
        pid,
        version,
    })
}

fn send(c: &Child, sig: Signal) {
    if let Some(pid) = c.pid {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

/// Stops the child: `stop`, then SIGKILL after `timeout`.
async fn stop(c: &mut Child, stop: Signal, timeout: Duration) -> Option<ExitStatus> {
    send(c, stop);
    match tokio::time::timeout(timeout, c.child.wait()).await {
        Ok(r) => r.ok(),
        Err(_) => {
            let _ = c.child.start_kill();
            c.child.wait().await.ok()
        }
    }
}

/// `keyroll run`: returns the child's exit code.
pub async fn run(
    args: RunArgs,
    server: &str,
    tls: keyroll_client::Tls,
) -> anyhow::Result<ExitCode> {
    let spec = args.one.resolve("run")?;
    let timing = args.timing.resolve()?;
    let stop_signal =
        parse_signal(&args.stop_signal).map_err(|e| usage(format!("--stop-signal: {e}")))?;
    let stop_timeout =
        parse_duration(&args.stop_timeout).map_err(|e| usage(format!("--stop-timeout: {e}")))?;
    let restart_within = parse_duration(&args.restart_within)
        .map_err(|e| usage(format!("--restart-within: {e}")))?;
    if args.env_var.is_empty() || args.env_var.contains('=') || args.env_var.contains('\0') {
        return Err(usage(format!(
            "--env-var {:?} is not a variable name",
            args.env_var
        )));
    }
    let log = Log::new(&spec.consumer.to_string());
    let (tx, mut rx) = watch::channel::<Option<KeyUpdate>>(None);
    let worker = Worker::start(spec, server, &tls, "exec", timing, Some(tx))?;
    let mut key = worker.key().to_owned();
    // Signal handlers first: a signal that arrives while the child starts is passed on, not
    // lost (or fatal to us).
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<Signal>();
    for (kind, sig) in FORWARDED {
        let mut stream = signal(kind)?;
        let tx = sig_tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    tokio::spawn(worker.run());
    let mut child = spawn(&args.command, &args.env_var, &key, None)?;
    log.info(
        "run.started",
        None,
        &format!(
            "started {:?} with the key in {}",
            args.command[0], args.env_var
        ),
        json!({"pid": child.pid.map(Pid::as_raw)}),
    );
    let mut restart_at: Option<Instant> = None;
    let mut next: Option<KeyUpdate> = None;
    let mut updates_open = true;
    loop {
        let restart = async {
            match restart_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.child.wait() => {
                let status = status.map_err(|e| anyhow::anyhow!("cannot wait for the child: {e}"))?;
                let code = exit_code_of(status);
                log.info(
                    "run.exited",
                    child.version,
                    &format!("the child exited ({status}); exiting with {code}"),
                    json!({"exit_code": code}),
                );
                return Ok(ExitCode::from(code));
            }
            Some(sig) = sig_rx.recv() => {
                log.info(
                    "run.signal",
                    child.version,
                    &format!("passing {} to the child", sig.as_str()),
                    json!({"signal": sig.as_str()}),
                );
                send(&child, sig);
            }
            changed = rx.changed(), if updates_open => {
                if changed.is_err() {
                    // The agent loop ended; the child keeps the key it has.
                    updates_open = false;
                    continue;
                }
                let update = rx.borrow_and_update().clone();
                if let Some(u) = update.filter(|u| u.key != key) {
                    let delay = restart_delay(restart_within, u.old_key_left, fastrand::f64());
                    let at = Instant::now() + delay;
                    // A restart already scheduled for an earlier key stays as early as it was.
                    restart_at = Some(restart_at.map_or(at, |t| t.min(at)));
                    log.info(
                        "run.restart_scheduled",
                        Some(u.version),
                        &format!(
                            "a new key: the child restarts in {}",
                            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                        ),
                        json!({
                            "in_ms": delay.as_millis() as u64,
                            "old_key_left_ms": u.old_key_left.map(|d| d.as_millis() as u64),
                        }),
                    );
                    next = Some(u);
                }
            }
            () = restart => {
                restart_at = None;
                let Some(u) = next.take() else { continue };
                let old = child.pid.map(Pid::as_raw);
                let status = stop(&mut child, stop_signal, stop_timeout).await;
                key = u.key;
                child = spawn(&args.command, &args.env_var, &key, Some(u.version))?;
                log.info(
                    "run.restarted",
                    Some(u.version),
                    "the child was restarted with the new key",
                    json!({
                        "old_pid": old,
                        "old_exit": status.map(|s| s.to_string()),
                        "pid": child.pid.map(Pid::as_raw),
                    }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_pass_through_and_signals_become_128_plus() {
        assert_eq!(exit_code_of(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code_of(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code_of(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code_of(ExitStatus::from_raw(9)), 137);
    }
}
