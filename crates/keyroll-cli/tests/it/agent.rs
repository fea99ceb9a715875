//! `keyroll agent` against a real server, as real processes: it starts from the bootstrap key
//! file, rotates within seconds of an operator's request, writes the key atomically (0600) and
//! reloads the app once, never rewrites an unchanged key, shares a rotation between two agents
//! of one consumer (one rotates, the other takes the handover), keeps the last key while the
//! server is down and recovers when it is back, manages several consumers from one config, and
//! refuses a bad config with FILE:LINE.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, BIN, Server};

/// A running `keyroll agent` (or `keyroll run`) and its log lines.
pub struct Agent {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Agent {
    /// SIGTERM first, so that `keyroll run` stops its child as it would in production (a SIGKILL
    /// would leave the child running after the test); SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts `keyroll ARGS` against `server`, collecting its stderr lines.
    pub fn spawn(server: &str, args: &[&str]) -> Agent {
        let mut child = Command::new(BIN)
            .args(args)
            .env("KEYROLL_SERVER", server)
            .env_remove("KEYROLL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, lines }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Log lines of event `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// Every log line, parsed.
    pub fn events_all(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// Waits until at least `n` lines of `name` have arrived.
    pub fn wait_for(&self, name: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.events(name);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} {name} lines within {within:?}; log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "still running; log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes a bootstrap key file, mode 0600.
pub fn write_key(path: &Path, key: &str) {
    std::fs::write(path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn read_key(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// The agent's `agent.json` (beside the key file).
pub fn state(key_file: &Path) -> Value {
    let mut dir = key_file.as_os_str().to_owned();
    dir.push(".keyroll/agent.json");
    std::fs::read_to_string(PathBuf::from(dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Polls `f` until it holds.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the agent of `key_file` has talked to the server.
pub fn wait_reachable(key_file: &Path) {
    wait_until("the agent's first contact", Duration::from_secs(20), || {
        state(key_file)["health"]["server_reachable"] == true
    });
}

/// Asks the consumer's agents to rotate (what `keyroll rotate ENV/NAME --via-agent` sends).
pub fn request_rotation(s: &Server, consumer: &str) {
    let r = harness::http()
        .post(format!(
            "{}/v1/consumers/{consumer}/request-rotation",
            s.url()
        ))
        .bearer_auth(s.token())
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
}

/// `POST /v1/verify` as an operator check.
pub fn verify(s: &Server, key: &str) -> Value {
    harness::http()
        .post(format!("{}/v1/verify", s.url()))
        .bearer_auth(s.token())
        .json(&json!({ "key": key, "operator_check": true }))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn ok(r: harness::Run) {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// A server with `prod/NAME` for each name, delivered by agent with a short grace.
fn setup(s: &Server, names: &[&str]) -> Vec<String> {
    ok(s.cli(&["env", "create", "prod"]));
    names
        .iter()
        .map(|n| {
            s.consumer(
                &format!("prod/{n}"),
                &["--delivery", "agent", "--grace", "20s"],
            )
        })
        .collect()
}

const FAST: [&str; 4] = ["--poll-wait", "5s", "--heartbeat", "2s"];

fn agent_args<'a>(consumer: &'a str, key_file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["agent", "--consumer", consumer, "--key-file", key_file];
    a.extend_from_slice(&FAST);
    a.extend_from_slice(extra);
    a
}

fn status(key_file: &Path, json: bool) -> harness::Run {
    let mut args = vec!["agent", "status", "--key-file", key_file.to_str().unwrap()];
    if json {
        args.extend(["--output", "json"]);
    }
    harness::cli_offline(&args, Path::new("/"))
}

#[test]
fn the_agent_rotates_on_request_writes_0600_and_reloads_once() {
    let s = harness::start();
    let old = setup(&s, &["billing"]).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("billing.key");
    let reloads = dir.path().join("reloads");
    write_key(&key_file, &old);
    let on_change = format!("echo \"$KEYROLL_VERSION\" >> {}", reloads.display());
    let kf = key_file.to_str().unwrap();
    let agent = Agent::spawn(
        &s.url(),
        &agent_args("prod/billing", kf, &["--on-change", &on_change]),
    );
    agent.wait_for("agent.started", 1, Duration::from_secs(20));
    wait_reachable(&key_file);
    assert_eq!(
        read_key(&key_file),
        old,
        "nothing to do: the file is untouched"
    );
    assert!(!reloads.exists(), "no reload without a change");

    let asked = Instant::now();
    ok(s.cli(&["rotate", "prod/billing", "--via-agent"]));
    let written = agent.wait_for("agent.key_written", 1, Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "rotated {took:?} after the request"
    );
    assert_eq!(written[0]["version"], 2);
    let rotated = agent.events("agent.rotated");
    assert_eq!(rotated.len(), 1, "{}", agent.text());
    assert_eq!(rotated[0]["reason"], "requested");
    let new = read_key(&key_file);
    assert_ne!(new, old);
    assert_eq!(verify(&s, &new)["allowed"], true);
    assert_eq!(verify(&s, &new)["version"], 2);
    assert_eq!(
        verify(&s, &old)["allowed"],
        true,
        "the old key is in its grace"
    );
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let reload = agent.wait_for("agent.reload", 1, Duration::from_secs(10));
    assert_eq!(reload[0]["exit_code"], 0);
    assert!(reload[0]["duration_ms"].is_u64());
    assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "2\n");
    assert!(!PathBuf::from(format!("{kf}.previous")).exists());
    s.events_at_least("version.delivered", 1);

    // Heartbeats and polls go on; the unchanged key is neither rewritten nor reloaded.
    let inode = meta.ino();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(std::fs::metadata(&key_file).unwrap().ino(), inode);
    assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "2\n");
    assert_eq!(agent.events("agent.key_written").len(), 1);
    assert_eq!(agent.events("agent.reload").len(), 1);

    let st = status(&key_file, false);
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.contains("healthy") && st.stdout.contains("v2"),
        "{}",
        st.stdout
    );
    let st = status(&key_file, true);
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["health"]["last_reload"]["exit_code"], 0);
    assert!(v["agent"].as_str().unwrap().starts_with("agt_"));

    // Every line is one JSON object with the common fields; no key is in any of them.
    let text = agent.text();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["ts"].is_string() && v["level"].is_string() && v["event"].is_string());
        assert_eq!(v["consumer"], "prod/billing");
    }
    for k in [&old, &new] {
        let secret = k.rsplit('_').next().unwrap();
        assert!(!text.contains(secret), "a key is in the agent's log");
        assert!(!st.stdout.contains(secret));
    }
    agent.kill9();
}

#[test]
fn two_agents_of_one_consumer_end_on_the_same_new_version() {
    let s = harness::start();
    let old = setup(&s, &["web"]).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["a.key", "b.key"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let agents: Vec<Agent> = files
        .iter()
        .map(|f| {
            write_key(f, &old);
            Agent::spawn(&s.url(), &agent_args("prod/web", f.to_str().unwrap(), &[]))
        })
        .collect();
    for f in &files {
        wait_reachable(f);
    }
    request_rotation(&s, "prod/web");
    wait_until("both files hold a new key", Duration::from_secs(15), || {
        files.iter().all(|f| read_key(f) != old)
    });
    let (a, b) = (read_key(&files[0]), read_key(&files[1]));
    assert_eq!(a, b, "both agents hold the same key");
    assert_eq!(verify(&s, &a)["version"], 2);
    let rotated: usize = agents.iter().map(|g| g.events("agent.rotated").len()).sum();
    let handed: usize = agents
        .iter()
        .map(|g| g.events("agent.handover").len())
        .sum();
    assert_eq!(
        (rotated, handed),
        (1, 1),
        "one rotates, the other takes the handover"
    );
    let c: Value = serde_json::from_str(
        &s.cli(&["consumer", "show", "prod/web", "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        c["versions"].as_array().unwrap().len(),
        2,
        "no extra version: {c}"
    );
    assert_ne!(state(&files[0])["agent"], state(&files[1])["agent"]);
}

#[test]
fn with_the_server_down_the_agent_keeps_its_key_and_recovers_when_it_is_back() {
    let data = tempfile::tempdir().unwrap();
    let addr = harness::free_addr();
    let s = harness::start_at(&data.path().join("data"), &addr);
    let key = setup(&s, &["api"]).pop().unwrap();
    let token = s.token();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api.key");
    write_key(&key_file, &key);
    let url = s.url();
    let agent = Agent::spawn(
        &url,
        &agent_args("prod/api", key_file.to_str().unwrap(), &[]),
    );
    wait_reachable(&key_file);
    assert_eq!(s.terminate(), Some(0));

    let failed = agent.wait_for("agent.poll_failed", 1, Duration::from_secs(20));
    assert!(failed[0]["retry_in_ms"].is_u64(), "{}", failed[0]);
    assert_eq!(failed[0]["level"], "warn");
    let st = status(&key_file, false);
    assert_eq!(st.code, 3, "unhealthy: {}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("UNREACHABLE"), "{}", st.stdout);
    assert_eq!(read_key(&key_file), key, "the last good key stays");

    // Starting while the server is unreachable is fine too.
    let late_file = dir.path().join("late.key");
    write_key(&late_file, &key);
    let late = Agent::spawn(
        &url,
        &agent_args("prod/api", late_file.to_str().unwrap(), &[]),
    );
    late.wait_for("agent.poll_failed", 1, Duration::from_secs(20));
    let v: Value = serde_json::from_str(&status(&late_file, true).stdout).unwrap();
    assert_eq!(v["health"]["server_reachable"], false, "{v}");
    assert_eq!(v["healthy"], false);

    let s = harness::start_at(&data.path().join("data"), &addr);
    assert_eq!(s.token(), token);
    agent.wait_for("agent.server_back", 1, Duration::from_secs(70));
    wait_reachable(&late_file);
    // The log line comes just before the state file is written.
    wait_reachable(&key_file);
    let st = status(&key_file, false);
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    // And it works: a rotation reaches both.
    request_rotation(&s, "prod/api");
    wait_until("both rotated", Duration::from_secs(15), || {
        read_key(&key_file) != key && read_key(&late_file) == read_key(&key_file)
    });
}

#[test]
fn a_rejected_key_is_an_error_and_the_file_is_kept() {
    let s = harness::start();
    let key = setup(&s, &["old"]).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("old.key");
    write_key(&key_file, &key);
    let agent = Agent::spawn(
        &s.url(),
        &agent_args("prod/old", key_file.to_str().unwrap(), &[]),
    );
    wait_reachable(&key_file);
    ok(s.cli(&["revoke", "prod/old", "v1", "--reason", "leaked", "--yes"]));
    let e = agent.wait_for("agent.key_rejected", 1, Duration::from_secs(15));
    assert_eq!(e[0]["level"], "error");
    assert_eq!(e[0]["code"], "key_revoked");
    assert!(
        e[0]["message"]
            .as_str()
            .unwrap()
            .contains("Bootstrap a new key"),
        "{}",
        e[0]
    );
    assert_eq!(read_key(&key_file), key, "never deleted or blanked");
    let st = status(&key_file, false);
    assert_eq!(st.code, 3);
    assert!(
        st.stdout.contains("REJECTED (key_revoked)"),
        "{}",
        st.stdout
    );
}

#[test]
fn one_agent_keeps_several_consumers_from_a_config_file() {
    let s = harness::start();
    let keys = setup(&s, &["billing", "search"]);
    let dir = tempfile::tempdir().unwrap();
    write_key(&dir.path().join("billing.key"), &keys[0]);
    write_key(&dir.path().join("search.key"), &keys[1]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nstate_dir = \"state\"\n\n[[consumer]]\nconsumer = \"prod/billing\"\nkey_file = \"billing.key\"\non_change = \"echo billing >> {}\"\n\n[[consumer]]\nconsumer = \"prod/search\"\nkey_file = \"search.key\"\nkeep_previous = true\nsignal = \"HUP\"\npid_file = \"search.pid\"\n",
            s.url(),
            dir.path().join("reloads").display()
        ),
    )
    .unwrap();
    // The search app reloads on SIGHUP.
    let hups = dir.path().join("hups");
    let mut app = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; while true; do sleep 0.05; done",
            hups.display()
        ))
        .spawn()
        .unwrap();
    std::fs::write(dir.path().join("search.pid"), app.id().to_string()).unwrap();
    let cfg = config.to_str().unwrap();
    // The file's server is used: the flag's default points nowhere.
    let agent = Agent::spawn(
        "http://127.0.0.1:9",
        &[
            "agent",
            "--config",
            cfg,
            "--poll-wait",
            "5s",
            "--heartbeat",
            "2s",
        ],
    );
    agent.wait_for("agent.started", 2, Duration::from_secs(20));
    let st_path = |n: &str| dir.path().join("state/prod").join(n).join("agent.json");
    wait_until("both contacts", Duration::from_secs(20), || {
        ["billing", "search"].iter().all(|n| {
            std::fs::read_to_string(st_path(n))
                .is_ok_and(|t| t.contains("\"server_reachable\": true"))
        })
    });
    request_rotation(&s, "prod/billing");
    request_rotation(&s, "prod/search");
    let billing = dir.path().join("billing.key");
    let search = dir.path().join("search.key");
    wait_until("both rotated", Duration::from_secs(15), || {
        read_key(&billing) != keys[0] && read_key(&search) != keys[1]
    });
    assert_eq!(verify(&s, &read_key(&billing))["consumer"], "prod/billing");
    assert_eq!(verify(&s, &read_key(&search))["consumer"], "prod/search");
    // keep_previous only where asked.
    assert_eq!(read_key(&dir.path().join("search.key.previous")), keys[1]);
    assert!(!dir.path().join("billing.key.previous").exists());
    wait_until("the billing reload", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("reloads")).is_ok_and(|t| t == "billing\n")
    });
    wait_until("the search app's SIGHUP", Duration::from_secs(10), || {
        std::fs::read_to_string(&hups).is_ok_and(|t| t == "hup\n")
    });
    let _ = app.kill();
    let _ = app.wait();
    let st = harness::cli_offline(&["agent", "status", "--config", cfg], dir.path());
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("prod/billing") && st.stdout.contains("prod/search"));
}

#[test]
fn a_bad_config_or_a_missing_key_is_one_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[[consumer]]\nconsumer = \"prod/billing\"\nkeyfile = \"k\"\n",
    )
    .unwrap();
    let r = harness::cli_offline(&["agent", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = r.stderr.trim();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with(&format!(
            "error: {}:3: unknown field `keyfile`",
            config.display()
        )),
        "{line}"
    );
    std::fs::write(
        &config,
        "[[consumer]]\nconsumer = \"prod\"\nkey_file = \"k\"\n",
    )
    .unwrap();
    let r = harness::cli_offline(
        &[
            "agent",
            "--config",
            config.to_str().unwrap(),
            "--output",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 2);
    let v: Value = serde_json::from_str(r.stderr.trim()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_config");
    assert!(
        v["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("agent.toml:2:"),
        "{v}"
    );

    // No bootstrap key: the agent does not start.
    let missing = dir.path().join("none.key");
    let r = harness::cli_offline(
        &[
            "agent",
            "--consumer",
            "prod/x",
            "--key-file",
            missing.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no key in") && r.stderr.contains("none.key"),
        "{}",
        r.stderr
    );
    // Flags are checked: no consumer, a bad signal.
    let r = harness::cli_offline(&["agent", "--key-file", "k"], dir.path());
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = harness::cli_offline(
        &[
            "agent",
            "--consumer",
            "prod/x",
            "--key-file",
            "k",
            "--signal",
            "NOPE",
            "--pid-file",
            "p",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown signal"), "{}", r.stderr);
    let r = harness::cli_offline(&["agent", "status", "--key-file", "nope.key"], dir.path());
    assert_eq!(r.code, 6, "{}", r.stderr);
}

#[test]
fn a_rotation_whose_answer_was_lost_is_recovered_with_the_same_idempotency_key() {
    let s = harness::start();
    let old = setup(&s, &["lost"]).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("lost.key");
    write_key(&key_file, &old);
    // An agent persisted its intent, asked, and was killed before it read the answer.
    let agent_id = "agt_0123456789abcdef";
    let idem: String = (0..32)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
        .collect();
    let r = harness::http()
        .post(format!("{}/v1/self/rotate", s.url()))
        .bearer_auth(&old)
        .header("Idempotency-Key", &idem)
        .json(&json!({ "agent": agent_id, "expect_active": 1 }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let issued: Value = r.json().unwrap();
    let state_dir = dir.path().join("lost.key.keyroll");
    std::fs::create_dir(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("agent.json"),
        json!({
            "agent": agent_id, "consumer": "prod/lost", "key_file": key_file, "version": 1,
            "kid": null, "pid": 1, "updated_at": "2026-01-01T00:00:00Z",
            "intent": {"idempotency_key": idem, "expect_active": 1, "reason": "requested",
                       "since": "2026-01-01T00:00:00Z"},
        })
        .to_string(),
    )
    .unwrap();
    let agent = Agent::spawn(
        &s.url(),
        &agent_args("prod/lost", key_file.to_str().unwrap(), &[]),
    );
    let rec = agent.wait_for("agent.recovered", 1, Duration::from_secs(15));
    assert_eq!(rec[0]["version"], 2, "{}", agent.text());
    assert_eq!(rec[0]["replayed"], true);
    agent.wait_for("agent.key_written", 1, Duration::from_secs(10));
    assert_eq!(read_key(&key_file), issued["key"].as_str().unwrap());
    wait_until("the intent is cleared", Duration::from_secs(10), || {
        state(&key_file)["intent"].is_null()
    });
    assert_eq!(
        state(&key_file)["agent"],
        agent_id,
        "the agent keeps its id"
    );
    let c: Value = serde_json::from_str(
        &s.cli(&["consumer", "show", "prod/lost", "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        c["versions"].as_array().unwrap().len(),
        2,
        "no second rotation: {c}"
    );
}

#[test]
fn a_second_agent_on_the_same_key_file_is_refused_while_the_first_runs() {
    let s = harness::start();
    let key = setup(&s, &["billing"]).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("billing.key");
    write_key(&key_file, &key);
    let kf = key_file.to_str().unwrap();
    let first = Agent::spawn(&s.url(), &agent_args("prod/billing", kf, &[]));
    first.wait_for("agent.started", 1, Duration::from_secs(20));
    let mut second = Agent::spawn(&s.url(), &agent_args("prod/billing", kf, &[]));
    let code = second.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{}", second.text());
    assert!(
        second.text().contains("another agent"),
        "names the holder: {}",
        second.text()
    );
    assert!(
        second.text().contains(&format!("pid {}", first.pid())),
        "{}",
        second.text()
    );
    // kill -9 releases the lock: a new agent starts at once.
    first.kill9();
    let third = Agent::spawn(&s.url(), &agent_args("prod/billing", kf, &[]));
    third.wait_for("agent.started", 1, Duration::from_secs(20));
}
