//! `keyroll run -- CMD`: the child gets the key in its environment, is restarted gracefully
//! with the new key inside the jitter window after a rotation, receives the signals sent to
//! `keyroll run`, and its exit code (or 128 + its signal) is `keyroll run`'s.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::agent::{Agent, read_key, request_rotation, wait_until, write_key};
use crate::harness::{self, Server};

fn setup(s: &Server, name: &str) -> String {
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer(
        &format!("prod/{name}"),
        &["--delivery", "agent", "--grace", "20s"],
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn kid(key: &str) -> String {
    key.split('_').nth(2).unwrap().to_owned()
}

#[test]
fn the_child_is_restarted_with_the_new_key_and_gets_our_signals_and_its_exit_code_is_ours() {
    let s = harness::start();
    let old = setup(&s, "app");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    write_key(&key_file, &old);
    let out = dir.path().join("out");
    let script = format!(
        "o={}; echo \"start $(printf %s \"$KEYROLL_KEY\" | cut -d_ -f3)\" >> $o; \
         trap 'echo term >> $o; exit 42' TERM; trap 'echo usr1 >> $o' USR1; \
         while true; do sleep 0.05; done",
        out.display()
    );
    let kf = key_file.to_str().unwrap();
    let mut run = Agent::spawn(
        &s.url(),
        &[
            "run",
            "--consumer",
            "prod/app",
            "--key-file",
            kf,
            "--restart-within",
            "2s",
            "--stop-timeout",
            "5s",
            "--poll-wait",
            "5s",
            "--heartbeat",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_until("the child started", Duration::from_secs(20), || {
        lines(&out) == [format!("start {}", kid(&old))]
    });
    crate::agent::wait_reachable(&key_file);

    let asked = Instant::now();
    request_rotation(&s, "prod/app");
    wait_until("the restart", Duration::from_secs(15), || {
        lines(&out).len() >= 3
    });
    let took = asked.elapsed();
    let new = read_key(&key_file);
    assert_ne!(new, old, "the key file is kept current too");
    assert_eq!(
        lines(&out),
        [
            format!("start {}", kid(&old)),
            "term".to_owned(),
            format!("start {}", kid(&new)),
        ]
    );
    // Inside the window: at most restart-within (2 s) after the new key, plus the poll.
    assert!(
        took < Duration::from_secs(6),
        "restarted {took:?} after the request"
    );
    let scheduled = run.wait_for("run.restart_scheduled", 1, Duration::from_secs(1));
    let in_ms = scheduled[0]["in_ms"].as_u64().unwrap();
    assert!(in_ms <= 2000, "{in_ms} ms is outside the window");
    run.wait_for("run.restarted", 1, Duration::from_secs(5));

    // Signals reach the child; its own exit is ours.
    let pid = Pid::from_raw(run.pid());
    kill(pid, Signal::SIGUSR1).unwrap();
    wait_until("USR1 reached the child", Duration::from_secs(5), || {
        lines(&out).last().is_some_and(|l| l == "usr1")
    });
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(run.wait_exit(Duration::from_secs(10)), Some(42));
    assert_eq!(lines(&out).last().map(String::as_str), Some("term"));
    let secret = new.rsplit('_').next().unwrap();
    assert!(!run.text().contains(secret), "no key in the log");
}

#[test]
fn exit_codes_pass_through_and_a_killed_child_is_128_plus_its_signal() {
    let s = harness::start();
    let key = setup(&s, "job");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("job.key");
    write_key(&key_file, &key);
    let kf = key_file.to_str().unwrap();
    for (script, code) in [
        ("exit 7", 7),
        ("kill -KILL $$", 137),
        (
            "test \"$MY_KEY\" = \"$(cat \"$F\")\" && exit 0 || exit 9",
            0,
        ),
    ] {
        let mut run = Agent::spawn(
            &s.url(),
            &[
                "run",
                "--consumer",
                "prod/job",
                "--key-file",
                kf,
                "--env-var",
                "MY_KEY",
                "--",
                "env",
                &format!("F={kf}"),
                "sh",
                "-c",
                script,
            ],
        );
        assert_eq!(
            run.wait_exit(Duration::from_secs(20)),
            Some(code),
            "{script}"
        );
    }
    // No command: a usage error.
    let r = harness::cli_offline(
        &["run", "--consumer", "prod/job", "--key-file", kf],
        dir.path(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}
