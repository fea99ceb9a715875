//! Signed webhooks end to end: a real server sends to a Python receiver that verifies every
//! request with the independent `standardwebhooks` package (PyPI), not keyroll's code. Each
//! expected event arrives once after deduplication by `webhook-id`, a 500 is retried, a secret
//! rotation signs with both secrets, 410 disables an endpoint, `Retry-After` moves the next
//! attempt, no body carries a key, and loopback targets need `webhooks.allow_loopback`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, Server};

/// The pinned receiver library (as `.ci/schemathesis.sh` pins schemathesis).
const STANDARDWEBHOOKS_VERSION: &str = "1.1.0";

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips outside CI (with a visible line), fails in CI.
fn unavailable(why: &str) -> Option<PathBuf> {
    assert!(!in_ci(), "the webhook receiver is required in CI: {why}");
    println!("SKIPPED: {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The virtualenv's python with `standardwebhooks` installed, under the target dir.
pub(crate) fn receiver_python() -> Option<PathBuf> {
    let target = Path::new(harness::BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary is in the target dir")
        .to_owned();
    let venv = target
        .join("webhook-receiver")
        .join(format!("venv-{STANDARDWEBHOOKS_VERSION}"));
    let python = venv.join("bin").join("python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import standardwebhooks.webhooks"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Some(python);
    }
    if !harness::require_program("python3", "apt-get install python3 python3-venv") {
        return None;
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return unavailable("python3 -m venv failed (apt-get install python3-venv)");
    }
    let installed = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("standardwebhooks=={STANDARDWEBHOOKS_VERSION}"))
        .status()
        .is_ok_and(|s| s.success());
    if !installed || !ready(&python) {
        return unavailable(&format!(
            "could not install standardwebhooks=={STANDARDWEBHOOKS_VERSION} from PyPI"
        ));
    }
    Some(python)
}

pub(crate) struct Receiver {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    scheme: &'static str,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    pub(crate) fn start(python: &Path) -> Receiver {
        Receiver::start_with(python, None)
    }

    /// A receiver serving HTTPS with the PEM certificate chain and key `tls`.
    pub(crate) fn start_tls(python: &Path, cert: &Path, key: &Path) -> Receiver {
        Receiver::start_with(python, Some((cert, key)))
    }

    fn start_with(python: &Path, tls: Option<(&Path, &Path)>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg(dir.path().join("config.json"))
            .arg(dir.path().join("results.json"))
            .arg(dir.path().join("port"));
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let child = command.stdout(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        Receiver {
            child,
            dir,
            port,
            scheme,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    pub(crate) fn configure(&self, config: &Value) {
        let tmp = self.dir.path().join("config.json.tmp");
        std::fs::write(&tmp, config.to_string()).unwrap();
        std::fs::rename(tmp, self.dir.path().join("config.json")).unwrap();
    }

    fn results(&self) -> Value {
        std::fs::read_to_string(self.dir.path().join("results.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}))
    }

    pub(crate) fn requests(&self, path: &str) -> Vec<Value> {
        self.results()[path].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `done` holds for the requests received on `path`.
    pub(crate) fn wait(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.requests(path);
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{what}: {r:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn json_of(run: &harness::Run) -> Value {
    assert_eq!(run.code, 0, "stdout {} stderr {}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// Registers an endpoint with the CLI: its id and secret.
pub(crate) fn add(s: &Server, url: &str, events: &str) -> (String, String) {
    let v = json_of(&s.cli(&[
        "webhook", "add", url, "--events", events, "--output", "json",
    ]));
    (
        v["webhook"]["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// Distinct messages (deduplicated by webhook-id) that were answered 2xx.
pub(crate) fn delivered(requests: &[Value]) -> Vec<(String, String, Option<u64>)> {
    let mut out: Vec<(String, String, Option<u64>)> = Vec::new();
    for r in requests {
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let ok = r["answered"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        if ok && !out.iter().any(|(i, ..)| *i == id) {
            out.push((
                id,
                r["type"].as_str().unwrap_or_default().to_owned(),
                r["version"].as_u64(),
            ));
        }
    }
    out
}

#[test]
fn signed_webhooks_verify_with_an_independent_library_and_are_delivered_once() {
    let Some(python) = receiver_python() else {
        return;
    };
    let receiver = Receiver::start(&python);
    let s = harness::start_with_env(&[("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true")]);
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing", &[]);

    let (main, secret) = add(
        &s,
        &receiver.url("/main"),
        "rotation.started,version.retired,version.revoked",
    );
    let (gone, gone_secret) = add(&s, &receiver.url("/gone"), "*");
    let (busy, busy_secret) = add(&s, &receiver.url("/busy"), "rotation.started");
    let human = s.cli(&["webhook", "list"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human.stdout.contains(&main) && !human.stdout.contains(&secret[6..]),
        "{}",
        human.stdout
    );
    let mut config = json!({
        "/main": { "secrets": [secret], "mode": "fail_first" },
        "/gone": { "secrets": [gone_secret], "mode": "gone" },
        "/busy": { "secrets": [busy_secret], "mode": "busy" },
    });
    receiver.configure(&config);

    s.rotate("prod/billing", &[]); // v2: rotation.started
    assert_eq!(s.cli(&["retire", "prod/billing", "1"]).code, 0); // version.retired v1
    s.rotate("prod/billing", &[]); // v3: rotation.started
    assert_eq!(
        s.cli(&["revoke", "prod/billing", "2", "--reason", "leaked in a log"])
            .code,
        0
    ); // version.revoked v2

    let expected = [
        ("rotation.started", 2),
        ("version.retired", 1),
        ("rotation.started", 3),
        ("version.revoked", 2),
    ];
    let requests = receiver.wait("/main", "the four events, the first one retried", |r| {
        delivered(r).len() >= expected.len()
    });
    let got = delivered(&requests);
    let mut pairs: Vec<(String, u64)> = got
        .iter()
        .map(|(_, t, v)| (t.clone(), v.unwrap_or(0)))
        .collect();
    pairs.sort();
    let mut want: Vec<(String, u64)> = expected
        .iter()
        .map(|(t, v)| ((*t).to_owned(), *v))
        .collect();
    want.sort();
    assert_eq!(pairs, want, "each expected event once after deduplication");
    // Every request, retries included, verified with the independent implementation.
    for r in &requests {
        assert_eq!(r["verified_with"], json!([0]), "{r}");
    }
    // The injected 500 was retried with the same webhook-id.
    let first = &requests[0];
    assert_eq!(first["answered"], 500);
    let first_id = first["id"].as_str().unwrap();
    assert_eq!(
        requests.iter().filter(|r| r["id"] == first_id).count(),
        2,
        "one retry after the 500"
    );
    let deliveries = json_of(&s.cli(&[
        "webhook",
        "deliveries",
        "--endpoint",
        &main,
        "--output",
        "json",
    ]));
    let retried = deliveries["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["msg_id"] == first_id)
        .cloned()
        .unwrap();
    assert_eq!(retried["attempts"], 2, "{retried}");
    assert_eq!(retried["state"], "delivered");
    let one = harness::http()
        .get(format!(
            "{}/v1/webhook-deliveries/{}",
            s.url(),
            retried["id"].as_str().unwrap()
        ))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    let statuses: Vec<&Value> = one["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(500), &json!(204)]);
    let table = s.cli(&["webhook", "deliveries", "--endpoint", &main]);
    assert!(
        table.stdout.contains("ATTEMPTS") && table.stdout.contains(first_id),
        "{}",
        table.stdout
    );

    // 410 disabled the catch-all endpoint, and that was recorded as an event.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = json_of(&s.cli(&["webhook", "show", &gone, "--output", "json"]));
        if v["state"] == "disabled" {
            assert!(
                v["disabled_reason"].as_str().unwrap().contains("410"),
                "{v}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 410 endpoint was not disabled: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        receiver.requests("/gone").len(),
        1,
        "nothing more after the 410"
    );
    let events: Value = harness::http()
        .get(format!("{}/v1/events?limit=1000", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "webhook.disabled"),
        "{events}"
    );

    // Retry-After: 3600 moved the next attempt an hour out.
    let busy_deliveries = json_of(&s.cli(&[
        "webhook",
        "deliveries",
        "--endpoint",
        &busy,
        "--state",
        "pending",
        "--output",
        "json",
    ]));
    let pending = busy_deliveries["items"].as_array().unwrap();
    assert!(!pending.is_empty(), "{busy_deliveries}");
    for d in pending {
        assert_eq!(d["last_status"], 503, "{d}");
        let next = d["next_attempt_at"].as_str().unwrap();
        let created = d["created_at"].as_str().unwrap();
        let secs = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp()
        };
        assert!(secs(next) - secs(created) >= 3500, "{d}");
    }

    // A secret rotation: during the overlap every delivery verifies with either secret.
    let rotated = json_of(&s.cli(&[
        "webhook",
        "rotate-secret",
        &main,
        "--overlap",
        "1h",
        "--output",
        "json",
    ]));
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["webhook"]["previous_secret_until"].is_string());
    config["/main"]["secrets"] = json!([secret, new_secret]);
    receiver.configure(&config);
    s.rotate("prod/billing", &[]); // v4
    let requests = receiver.wait("/main", "the rotation after the secret rotation", |r| {
        delivered(r)
            .iter()
            .any(|(_, t, v)| t == "rotation.started" && *v == Some(4))
    });
    let last = requests.iter().rev().find(|r| r["version"] == 4).unwrap();
    assert_eq!(
        last["verified_with"],
        json!([0, 1]),
        "both secrets verify: {last}"
    );

    // A replay sends the same message again, with the same webhook-id.
    let replayed = json_of(&s.cli(&[
        "webhook",
        "replay",
        retried["id"].as_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(replayed["msg_id"], first_id);
    receiver.wait("/main", "the replay", |r| {
        r.iter().filter(|x| x["id"] == first_id).count() == 3
    });

    // No body carries a key; the database holds no webhook secret.
    let all = receiver.results().to_string();
    let db = s.database_text();
    for secret in [&secret, &new_secret] {
        assert!(
            !db.contains(&secret[6..]),
            "a webhook secret is in the database"
        );
    }
    s.assert_no_secret_leaked(&[all]);
}

#[test]
fn loopback_and_private_targets_are_refused_unless_allowed() {
    let s = harness::start();
    for (url, setting) in [
        ("http://127.0.0.1:9/hook", "webhooks.allow_loopback"),
        ("http://localhost:9/hook", "webhooks.allow_loopback"),
        ("http://[::1]:9/hook", "webhooks.allow_loopback"),
        ("http://10.0.0.7/hook", "webhooks.allow_private"),
        (
            "http://169.254.169.254/latest/meta-data",
            "webhooks.allow_private",
        ),
    ] {
        let r = s.cli(&["webhook", "add", url, "--events", "rotation.started"]);
        assert_ne!(r.code, 0, "{url}: {}", r.stdout);
        assert!(r.stderr.contains(setting), "{url}: {}", r.stderr);
    }
    let listed = json_of(&s.cli(&["webhook", "list", "--output", "json"]));
    assert_eq!(listed["items"], json!([]));
    let r = s.cli(&["webhook", "add", "ftp://hooks.example/x"]);
    assert_ne!(r.code, 0);
}
