//! Telling the app that its key changed: a command (`sh -c CMD`, killed after a timeout) and/or
//! a signal to the pid in a pid file. Each outcome is a [`Reload`] with the exit code, for the
//! log and `keyroll agent status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::state::Reload;

/// How the app is told.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// `--on-change CMD`.
    pub command: Option<String>,
    /// `--signal SIG --pid-file F`.
    pub signal: Option<(Signal, PathBuf)>,
    /// `--reload-timeout`.
    pub timeout: Duration,
}

/// One reload's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// For the state file.
    pub reload: Reload,
    /// How long it took.
    pub duration: Duration,
}

/// Parses `HUP`, `SIGHUP` or `hup`.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {text:?} (e.g. HUP, TERM, USR1)"))
}

impl Reloader {
    /// Whether there is anything to run.
    pub fn is_some(&self) -> bool {
        self.command.is_some() || self.signal.is_some()
    }

    /// Runs the command and sends the signal; `env` is added to the command's environment.
    pub async fn run(&self, env: &[(&str, String)]) -> Outcome {
        let start = Instant::now();
        let mut ok = true;
        let mut exit_code = None;
        let mut words = Vec::new();
        if let Some((sig, pid_file)) = &self.signal {
            match send_signal(*sig, pid_file) {
                Ok(pid) => words.push(format!("sent {} to pid {pid}", sig.as_str())),
                Err(e) => {
                    ok = false;
                    words.push(e);
                }
            }
        }
        if let Some(cmd) = &self.command {
            let (code, what) = run_command(cmd, env, self.timeout).await;
            exit_code = code;
            ok &= code == Some(0);
            words.push(what);
        }
        Outcome {
            reload: Reload {
                ok,
                exit_code,
                detail: words.join("; "),
                at: super::now_rfc3339(),
            },
            duration: start.elapsed(),
        }
    }
}

fn send_signal(sig: Signal, pid_file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read the pid file {}: {e}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("the pid file {} holds no pid", pid_file.display()))?;
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .map_err(|e| format!("cannot send {} to pid {pid}: {e}", sig.as_str()))?;
    Ok(pid)
}

async fn run_command(
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        // Its own process group, so a timeout kills what it started too, not only `sh`.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return (None, format!("cannot run `sh -c`: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => match status.code() {
            Some(code) => (Some(code), format!("the reload command exited with {code}")),
            None => (None, format!("the reload command was killed ({status})")),
        },
        Ok(Err(e)) => (None, format!("cannot wait for the reload command: {e}")),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill().await;
            (
                None,
                format!(
                    "the reload command did not finish within {} and was killed",
                    humantime::format_duration(timeout)
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloader(cmd: &str, timeout_ms: u64) -> Reloader {
        Reloader {
            command: Some(cmd.to_owned()),
            signal: None,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn runs_the_command_with_its_environment_and_reports_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let cmd = format!("echo \"$KEYROLL_VERSION\" > {}; exit 3", out.display());
        let o = reloader(&cmd, 5000)
            .run(&[("KEYROLL_VERSION", "7".into())])
            .await;
        assert_eq!(o.reload.exit_code, Some(3));
        assert!(!o.reload.ok);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "7\n");
        let o = reloader("true", 5000).run(&[]).await;
        assert!(
            o.reload.ok && o.reload.exit_code == Some(0),
            "{:?}",
            o.reload
        );
    }

    #[tokio::test]
    async fn a_slow_command_is_killed_at_the_timeout() {
        let o = reloader("sleep 5", 200).run(&[]).await;
        assert!(!o.reload.ok);
        assert_eq!(o.reload.exit_code, None);
        assert!(
            o.reload.detail.contains("did not finish"),
            "{}",
            o.reload.detail
        );
        assert!(o.duration < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_missing_pid_file_is_a_failed_reload() {
        let r = Reloader {
            command: None,
            signal: Some((Signal::SIGHUP, PathBuf::from("/nonexistent/app.pid"))),
            timeout: Duration::from_secs(1),
        };
        let o = r.run(&[]).await;
        assert!(!o.reload.ok);
        assert!(o.reload.detail.contains("app.pid"), "{}", o.reload.detail);
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("HUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("sigusr1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert!(parse_signal("NOPE").is_err());
    }
}
