//! Starts `keyroll serve` in a temporary data dir, collects its log lines, runs CLI commands
//! against it, and remembers every plaintext key issued so tests can check none leaks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keyroll");

/// A running server.
pub struct Server {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub addr: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    child: Child,
    /// Every secret (the part after the kid) issued during the test.
    pub secrets: Mutex<Vec<String>>,
    /// Everything the CLI printed, except the once-shown key lines.
    pub transcript: Mutex<Vec<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> Server {
    start_with(&[])
}

pub fn start_with(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    spawn(dir, data, extra, &[])
}

/// A server with extra `KEYROLL_*` settings.
pub fn start_with_env(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    spawn(dir, data, &[], env)
}

/// A server on an existing data dir with extra `KEYROLL_*` settings.
pub fn start_in_with_env(data: &Path, env: &[(&str, &str)]) -> Server {
    spawn(tempfile::tempdir().unwrap(), data.to_owned(), &[], env)
}

/// A server on an existing data dir with extra `serve` arguments (a restart with a config).
pub fn start_in_with(data: &Path, extra: &[&str]) -> Server {
    spawn(tempfile::tempdir().unwrap(), data.to_owned(), extra, &[])
}

/// A server on an existing data dir (restarts).
pub fn start_in(data: &Path) -> Server {
    spawn(tempfile::tempdir().unwrap(), data.to_owned(), &[], &[])
}

/// A server on `data` listening on `listen` (a fixed address, so that a restart is found where
/// its clients look).
pub fn start_at(data: &Path, listen: &str) -> Server {
    spawn_on(
        tempfile::tempdir().unwrap(),
        data.to_owned(),
        listen,
        &[],
        &[],
    )
}

/// A server on `data` listening on `listen` with extra `serve` arguments (a restart with a
/// config where its clients look).
pub fn start_at_with(data: &Path, listen: &str, extra: &[&str]) -> Server {
    spawn_on(
        tempfile::tempdir().unwrap(),
        data.to_owned(),
        listen,
        extra,
        &[],
    )
}

/// A free loopback address (bound and released; good enough for one test's restarts).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn spawn(dir: tempfile::TempDir, data: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Server {
    spawn_on(dir, data, "127.0.0.1:0", extra, env)
}

fn spawn_on(
    dir: tempfile::TempDir,
    data: PathBuf,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .args([
            "serve",
            "--listen",
            listen,
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .args(extra)
        .env("KEYROLL_LOG__LEVEL", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"server.listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("server did not start: {err}");
        });
    Server {
        _dir: dir,
        data,
        addr,
        logs,
        child,
        secrets: Mutex::new(Vec::new()),
        transcript: Mutex::new(Vec::new()),
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Server {
    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .env("KEYROLL_SERVER", self.url())
            .env("KEYROLL_DATA_DIR", self.data_dir())
            .env_remove("KEYROLL_TOKEN")
            .output()
            .unwrap();
        let run = to_run(out);
        for key in issued_keys(&run.stdout) {
            let secret = key.rsplit('_').next().unwrap().to_owned();
            self.secrets.lock().unwrap().push(secret);
        }
        let mut t = self.transcript.lock().unwrap();
        for line in run.stdout.lines().chain(run.stderr.lines()) {
            // The once-shown key line (and the JSON field carrying it) is the one place a secret may be.
            if !line.trim_start().starts_with("kr_") && !line.contains("\"key\": \"kr_") {
                t.push(line.to_owned());
            }
        }
        run
    }

    /// Creates `ENV/NAME` and returns its first key.
    pub fn consumer(&self, reference: &str, extra: &[&str]) -> String {
        let mut args = vec!["consumer", "create", reference];
        args.extend_from_slice(extra);
        let r = self.cli(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        issued_keys(&r.stdout).pop().expect("a key in the output")
    }

    /// Rotates and returns the new key.
    pub fn rotate(&self, reference: &str, extra: &[&str]) -> String {
        let mut args = vec!["rotate", reference];
        args.extend_from_slice(extra);
        let r = self.cli(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        issued_keys(&r.stdout).pop().expect("a key in the output")
    }

    /// Log lines with `event == name`.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// Log lines of event `name`, once at least `n` have arrived (the server's output is read by
    /// another thread, so a line can land just after the command that caused it returned).
    pub fn events_at_least(&self, name: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.events(name);
            if found.len() >= n || Instant::now() > deadline {
                assert!(found.len() >= n, "fewer than {n} {name} lines: {found:?}");
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a decision log line with this request id appears.
    pub fn decision(&self, request_id: &str) -> serde_json::Value {
        self.event_line("auth.decision", request_id)
    }

    /// Waits until a log line of event `name` with this request id appears.
    pub fn event_line(&self, name: &str, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self
                .events(name)
                .into_iter()
                .find(|v| v["request_id"] == request_id)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {name} log line for {request_id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The raw bytes of the database files (`keyroll.db`, its `-wal` and `-shm`), as text, to
    /// search for what must never be stored.
    pub fn database_text(&self) -> String {
        let mut db = Vec::new();
        for entry in std::fs::read_dir(self.data_dir()).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("keyroll.db")
            {
                db.extend(std::fs::read(&p).unwrap());
            }
        }
        String::from_utf8_lossy(&db).into_owned()
    }

    /// Every server log line so far, as one text.
    pub fn logs_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Asserts that no issued secret appears in the server's log, the CLI transcript (outside
    /// the once-shown key), or the database files.
    pub fn assert_no_secret_leaked(&self, extra_text: &[String]) {
        let secrets = self.secrets.lock().unwrap().clone();
        assert!(!secrets.is_empty(), "the test issued no key");
        let logs = self.logs.lock().unwrap().join("\n");
        let transcript = self.transcript.lock().unwrap().join("\n");
        let db = self.database_text();
        for s in &secrets {
            assert!(!logs.contains(s.as_str()), "a secret is in the server log");
            assert!(
                !transcript.contains(s.as_str()),
                "a secret is in CLI output"
            );
            assert!(!db.contains(s.as_str()), "a secret is in the database");
            for t in extra_text {
                assert!(!t.contains(s.as_str()), "a secret is in a response: {t}");
            }
        }
    }
}

fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Keys printed on their own line.
pub fn issued_keys(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kr_") && !l.contains(' '))
        .map(str::to_owned)
        .collect()
}

/// Runs the CLI without a server (offline commands, connection errors).
pub fn cli_offline(args: &[&str], cwd: &Path) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("KEYROLL_SERVER", "http://127.0.0.1:9")
        .env_remove("KEYROLL_TOKEN")
        .output()
        .unwrap();
    to_run(out)
}

/// A blocking HTTP client for direct API calls.
pub fn http() -> reqwest::blocking::Client {
    // reqwest's rustls (unified in from keyroll-server) takes the process's crypto provider.
    keyroll_ca::tls::install_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether a program is installed; outside CI a missing one skips the test with a visible line,
/// in CI (`CI=true`) it fails.
pub fn require_program(name: &str, install: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{name} is required in CI but not installed ({install})");
    }
    println!("SKIPPED: {name} is not installed; install it with `{install}` to run this test");
    eprintln!("SKIPPED: {name} is not installed; install it with `{install}` to run this test");
    false
}
