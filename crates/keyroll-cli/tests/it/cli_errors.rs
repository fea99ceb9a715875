//! How the CLI fails: a closed or full stdout, one exit code per kind of failure, errors as JSON
//! under `--output json`, the token-file message, flags that apply, and no database password in
//! any message.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, BIN, Run};

/// The CLI against `s`, from `cwd`, with only the environment given here.
fn cli_in(s: &harness::Server, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(cwd)
        .env("KEYROLL_SERVER", s.url())
        .env_remove("KEYROLL_TOKEN")
        .env_remove("KEYROLL_DATA_DIR");
    c
}

fn run(mut c: Command) -> Run {
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn wait(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "the CLI did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// The one JSON object on stderr under `--output json`.
fn json_error(r: &Run) -> serde_json::Value {
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stderr.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stderr));
    assert_eq!(v["error"]["exit_code"], r.code, "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");
    assert!(v["error"]["detail"].is_string(), "{v}");
    v
}

fn server_with_consumers() -> harness::Server {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    for name in ["a", "b", "c"] {
        s.consumer(&format!("prod/{name}"), &[]);
    }
    s
}

#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let s = server_with_consumers();
    let dir = tempfile::tempdir().unwrap();
    let data = s.data_dir();
    let data = data.to_str().unwrap();

    // `keyroll status --watch | head -1`: the reader goes away after a line.
    let mut child = cli_in(
        &s,
        dir.path(),
        &["status", "--watch", "0.05s", "--data-dir", data],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let code = wait(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, 141, "{stderr}");
    assert_no_panic(&stderr);
    assert!(
        stderr.is_empty(),
        "nothing to say when the reader stops: {stderr}"
    );

    // Closed before the first write, for each kind of output.
    for args in [
        &["status"][..],
        &["status", "--output", "json"],
        &["consumer", "list"],
        &["consumer", "show", "prod/a"],
        &["decisions"],
        &["events"],
    ] {
        let mut child = cli_in(&s, dir.path(), &[args, &["--data-dir", data]].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let code = wait(&mut child);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(code, 141, "{args:?}: {stderr}");
        assert_no_panic(&stderr);
    }
}

#[test]
fn a_full_stdout_is_one_line_and_exit_1() {
    let s = server_with_consumers();
    let dir = tempfile::tempdir().unwrap();
    let data = s.data_dir();
    let data = data.to_str().unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut c = cli_in(&s, dir.path(), &["status", "--data-dir", data]);
    c.stdout(full());
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_no_panic(&r.stderr);
    assert_eq!(
        r.stderr.trim(),
        "error: cannot write to stdout: No space left on device (os error 28)"
    );

    let mut c = cli_in(
        &s,
        dir.path(),
        &["status", "--data-dir", data, "--output", "json"],
    );
    c.stdout(full());
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = json_error(&r);
    assert_eq!(v["error"]["code"], "write_failed");
}

#[test]
fn each_kind_of_failure_has_its_exit_code_and_json() {
    let s = harness::start();
    let dir = tempfile::tempdir().unwrap();
    s.cli(&["env", "create", "prod"]);
    let v1 = s.consumer("prod/app", &[]);
    s.rotate("prod/app", &["--grace", "0"]);

    // 3: the key is rejected (the answer is on stdout; nothing on stderr).
    let r = s.cli(&["verify", &v1]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stdout.contains("key_retired"), "{}", r.stdout);
    let r = s.cli(&["verify", &v1, "--output", "json"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let answer: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(answer["allowed"], false);

    // 4: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let r = harness::cli_offline(
        &["env", "list", "--server", &nowhere, "--token", "kra_x"],
        dir.path(),
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("error: cannot reach the keyroll server"),
        "{}",
        r.stderr
    );
    let r = harness::cli_offline(
        &[
            "env", "list", "--server", &nowhere, "--token", "kra_x", "--output", "json",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 4);
    assert_eq!(json_error(&r)["error"]["code"], "connection_refused");
    // …or the name does not resolve (.invalid never does).
    let r = harness::cli_offline(
        &[
            "status",
            "--server",
            "http://keyroll.invalid:7878",
            "--token",
            "kra_x",
            "--output",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(json_error(&r)["error"]["code"], "dns_failed");

    // 5: the server refuses the token.
    let bad = "kra_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let r = run(cli_in(&s, dir.path(), &["status", "--token", bad]));
    assert_eq!(r.code, 5, "{}", r.stderr);
    let r = run(cli_in(
        &s,
        dir.path(),
        &["status", "--token", bad, "--output", "json"],
    ));
    assert_eq!(r.code, 5);
    let v = json_error(&r);
    assert_eq!(v["error"]["code"], "invalid_token");
    assert!(
        v["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("rq_"),
        "{v}"
    );

    // 6: what was named does not exist.
    for args in [
        &["status", "nope"][..],
        &["status", "prod/nope"],
        &["consumer", "show", "prod/nope"],
        &["consumer", "list", "--env", "nope"],
        &["decisions", "--consumer", "prod/nope"],
        &["rotate", "prod/nope"],
    ] {
        let r = s.cli(args);
        assert_eq!(r.code, 6, "{args:?}: {} {}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr.contains("nope") && r.stderr.contains("does not exist"),
            "{args:?}: {}",
            r.stderr
        );
        let r = s.cli(&[args, &["--output", "json"]].concat());
        assert_eq!(r.code, 6);
        assert_eq!(json_error(&r)["error"]["code"], "not_found");
    }
    let r = s.cli(&["status", "nope"]);
    assert!(
        r.stderr.contains("environment nope does not exist"),
        "{}",
        r.stderr
    );

    // 7: conflicts with the state (the active version cannot be retired).
    let r = s.cli(&["retire", "prod/app", "v2", "--output", "json"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(json_error(&r)["error"]["code"], "conflict");

    // 2: invalid arguments, checked locally or by clap.
    let r = s.cli(&["rotate", "prod/app", "--grace", "soon", "--output", "json"]);
    assert_eq!(r.code, 2);
    assert!(
        json_error(&r)["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("soon")
    );
    let r = s.cli(&["rotate", "--output", "json"]);
    assert_eq!(r.code, 2);
    assert_eq!(json_error(&r)["error"]["code"], "usage");
    // An argument that is not UTF-8 is a usage error, in JSON too.
    {
        use std::os::unix::ffi::OsStrExt;
        let mut c = cli_in(&s, dir.path(), &["status"]);
        c.arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
            .args(["--output", "json"]);
        let r = run(c);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_no_panic(&r.stderr);
        assert_eq!(json_error(&r)["error"]["code"], "usage");
    }
    let r = s.cli(&["events", "--limit", "0"]);
    assert_eq!(r.code, 2);
    let r = s.cli(&["status", "--watch", "0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--watch"), "{}", r.stderr);
    let data = s.data_dir();
    let mut c = cli_in(
        &s,
        dir.path(),
        &["verify", "-", "--data-dir", data.to_str().unwrap()],
    );
    c.stdin(Stdio::null());
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no key on stdin"), "{}", r.stderr);
    let r = s.cli(&["status", "--server", "ftp://127.0.0.1:1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("expected http://HOST:PORT or https://HOST:PORT"),
        "{}",
        r.stderr
    );
    // HTTPS is spoken: nothing listening there is "unreachable", not a usage error.
    let r = s.cli(&["status", "--server", "https://127.0.0.1:1"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let r = s.cli(&["status", "--ca-file", "/nonexistent/ca.pem"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/ca.pem"), "{}", r.stderr);

    // No failure is a panic.
    for line in s.transcript.lock().unwrap().iter() {
        assert_no_panic(line);
    }
}

#[test]
fn empty_answers_are_not_errors() {
    let s = harness::start();
    let r = s.cli(&["status"]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "No consumers."),
        "{}",
        r.stderr
    );
    s.cli(&["env", "create", "prod"]);
    let r = s.cli(&["status", "prod"]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "No consumers in prod."),
        "{}",
        r.stderr
    );
    let r = s.cli(&["consumer", "list", "--env", "prod"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = s.cli(&["events", "--after", "100000"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "No events."), "{}", r.stderr);
}

#[test]
fn without_a_token_file_the_cli_says_which_path_it_tried_before_sending() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let cwd = elsewhere.path().canonicalize().unwrap();
    let r = run(cli_in(&s, &cwd, &["env", "list"]));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim(),
        format!(
            "error: no token file at ./keyroll-data/admin-token (in {}); use --token, KEYROLL_TOKEN or --data-dir",
            cwd.display()
        )
    );
    let r = run(cli_in(&s, &cwd, &["env", "list", "--output", "json"]));
    assert_eq!(json_error(&r)["error"]["code"], "no_token");
    // Nothing was sent: the server saw no unauthenticated admin request.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.events("admin.auth").is_empty(),
        "{:?}",
        s.events("admin.auth")
    );

    // --data-dir (before or after the subcommand) and KEYROLL_DATA_DIR are honoured.
    let data = s.data_dir();
    let data = data.to_str().unwrap();
    for args in [
        &["env", "list", "--data-dir", data][..],
        &["--data-dir", data, "env", "list"],
    ] {
        let r = run(cli_in(&s, &cwd, args));
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(r.stdout.contains("prod"), "{}", r.stdout);
    }
    let mut c = cli_in(&s, &cwd, &["env", "list"]);
    c.env("KEYROLL_DATA_DIR", data);
    assert_eq!(run(c).code, 0);

    // A data dir without the file names that path.
    let r = run(cli_in(
        &s,
        &cwd,
        &["status", "--data-dir", "/nonexistent/kr"],
    ));
    assert_eq!(r.code, 5);
    assert!(
        r.stderr
            .contains("no token file at /nonexistent/kr/admin-token;"),
        "{}",
        r.stderr
    );
}

#[test]
fn serve_and_init_list_only_their_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    let help = harness::cli_offline(&["serve", "--help"], dir.path());
    assert_eq!(help.code, 0);
    for flag in ["--token", "--server", "--output"] {
        assert!(
            !help.stdout.contains(flag),
            "serve --help lists {flag}:\n{}",
            help.stdout
        );
    }
    assert!(help.stdout.contains("--listen") && help.stdout.contains("--data-dir"));
    let help = harness::cli_offline(&["init", "--help"], dir.path());
    for flag in ["--token", "--server"] {
        assert!(
            !help.stdout.contains(flag),
            "init --help lists {flag}:\n{}",
            help.stdout
        );
    }
    assert!(help.stdout.contains("--output"), "init prints JSON too");
    // Given anyway, they are usage errors rather than silently ignored.
    let r = harness::cli_offline(&["serve", "--token", "kra_x"], dir.path());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--token does not apply to `keyroll serve`"),
        "{}",
        r.stderr
    );
    // The top-level help documents the exit codes.
    let help = harness::cli_offline(&["--help"], dir.path());
    assert!(help.stdout.contains("Exit codes"), "{}", help.stdout);
    assert!(help.stdout.contains("141"), "{}", help.stdout);

    // Client flags still work before and after a client subcommand.
    let s = harness::start();
    let token = s.token();
    for args in [
        &["--server", &s.url(), "--token", &token, "status"][..],
        &["status", "--server", &s.url(), "--token", &token],
    ] {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(dir.path())
            .env("KEYROLL_SERVER", "http://127.0.0.1:9")
            .env_remove("KEYROLL_TOKEN")
            .env_remove("KEYROLL_DATA_DIR");
        let r = run(c);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout.trim(), "No consumers.");
    }
}

#[test]
fn a_database_password_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let urls = [
        "postgres://bob:hunter2@db.internal:5432/keyroll",
        "postgresql://bob:hunter2@db.internal/keyroll?sslmode=require",
        "mysql://bob:hunter2@db.internal/keyroll",
        "bob:hunter2@db.internal/keyroll",
        "sqlite://bob:hunter2@nowhere/keyroll.db",
        "sqlite://nowhere/keyroll.db?mode=ro&password=hunter2",
    ];
    for url in urls {
        for cmd in ["serve", "init"] {
            let r = harness::cli_offline(
                &[
                    cmd,
                    "--database-url",
                    url,
                    "--data-dir",
                    data,
                    "--listen",
                    "127.0.0.1:0",
                ][..],
                dir.path(),
            );
            assert_ne!(r.code, 0, "{cmd} {url}: {}", r.stdout);
            assert!(r.stderr.starts_with("error: "), "{cmd} {url}: {}", r.stderr);
            assert!(
                !r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"),
                "{cmd} {url}: {}",
                r.stderr
            );
            assert_no_panic(&r.stderr);
        }
        // Same from the environment and from a config file.
        let mut c = Command::new(BIN);
        c.args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("KEYROLL_DATABASE_URL", url);
        let r = run(c);
        assert_ne!(r.code, 0);
        assert!(!r.stderr.contains("hunter2"), "{url}: {}", r.stderr);
        let file = dir.path().join("keyroll.toml");
        std::fs::write(&file, format!("database_url = {url:?}\n")).unwrap();
        let r = harness::cli_offline(
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            dir.path(),
        );
        assert_ne!(r.code, 0);
        assert!(!r.stderr.contains("hunter2"), "{url}: {}", r.stderr);
    }
    // The client's server URL too.
    let r = harness::cli_offline(
        &[
            "status",
            "--server",
            "http://bob:hunter2@127.0.0.1:9",
            "--token",
            "kra_x",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
}
