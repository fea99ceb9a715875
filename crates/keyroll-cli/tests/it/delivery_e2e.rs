//! The delivery issue's end-to-end run: two apps call a keyroll-protected endpoint
//! continuously — one reads its key from the file `keyroll agent` keeps current, the other gets
//! it in its environment from `keyroll run` — while both consumers are rotated through their
//! agents with a short grace. No request is rejected, each app's traffic moves to the new
//! version, the old versions retire by the idle rule, and a webhook receiver that verifies with
//! the independent `standardwebhooks` package gets `rotation.started`, `version.delivered` and
//! `version.retired` for each consumer once after deduplication, the first after an injected 500.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::Agent;
use crate::harness::{self, Server};
use crate::webhooks::{Receiver, add, delivered, receiver_python};

struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn app_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/delivery_app.py")
}

/// The answers an app recorded, in order.
fn answers(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A field of version `version` of `consumer`, as the API shows it ("" when absent).
fn version_field(s: &Server, consumer: &str, version: u64, field: &str) -> String {
    let c: Value = harness::http()
        .get(format!("{}/v1/consumers/{consumer}", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    c["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .and_then(|v| v[field].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn kid_of(s: &Server, consumer: &str, version: u64) -> String {
    version_field(s, consumer, version, "kid")
}

fn state_of(s: &Server, consumer: &str, version: u64) -> String {
    version_field(s, consumer, version, "state")
}

fn until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_apps_move_to_new_keys_through_their_agents_without_a_rejected_request() {
    let Some(python) = receiver_python() else {
        return;
    };
    let s = harness::start_with_env(&[
        ("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true"),
        ("KEYROLL_WEBHOOKS__INTERVAL", "1s"),
        ("KEYROLL_USAGE__SWEEP_INTERVAL", "200ms"),
        ("KEYROLL_USAGE__FLUSH_INTERVAL", "1s"),
    ]);
    let receiver = Receiver::start(&python);
    let (_, secret) = add(
        &s,
        &receiver.url("/hooks"),
        "rotation.started,version.delivered,version.retired",
    );
    receiver.configure(&json!({ "/hooks": { "secrets": [secret], "mode": "fail_first" } }));

    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let dir = tempfile::tempdir().unwrap();
    let policy = [
        "--delivery",
        "agent",
        "--grace",
        "2m",
        "--retire",
        "when-idle",
        "--idle",
        "3s",
    ];
    let mut files = Vec::new();
    for name in ["web", "worker"] {
        let mut args = vec![];
        args.extend_from_slice(&policy);
        let key = s.consumer(&format!("prod/{name}"), &args);
        let file = dir.path().join(format!("{name}.key"));
        std::fs::write(&file, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        files.push(file);
    }
    let endpoint = format!("{}/v1/forward-auth", s.url());
    let (web_key, worker_key) = (files[0].to_str().unwrap(), files[1].to_str().unwrap());
    let web_out = dir.path().join("web.jsonl");
    let worker_out = dir.path().join("worker.jsonl");

    // App 1 reads the file its agent keeps current.
    let web_agent = Agent::spawn(
        &s.url(),
        &["agent", "--consumer", "prod/web", "--key-file", web_key],
    );
    let _web = App(Command::new("python3")
        .arg(app_script())
        .args([
            "--url",
            &endpoint,
            "--key-file",
            web_key,
            "--client-id",
            "web",
        ])
        .arg("--out")
        .arg(&web_out)
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    // App 2 gets its key in its environment from `keyroll run`, which restarts it on a new key.
    let worker_run = Agent::spawn(
        &s.url(),
        &[
            "run",
            "--consumer",
            "prod/worker",
            "--key-file",
            worker_key,
            "--restart-within",
            "2s",
            "--stop-timeout",
            "5s",
            "--",
            "python3",
            app_script().to_str().unwrap(),
            "--url",
            &endpoint,
            "--env-var",
            "KEYROLL_KEY",
            "--client-id",
            "worker",
            "--out",
            worker_out.to_str().unwrap(),
        ],
    );
    let old = [kid_of(&s, "prod/web", 1), kid_of(&s, "prod/worker", 1)];
    until(
        "traffic on v1 from both apps",
        Duration::from_secs(20),
        || {
            [&web_out, &worker_out]
                .iter()
                .zip(&old)
                .all(|(out, kid)| answers(out).iter().any(|a| a["kid"] == kid.as_str()))
        },
    );

    // Rotate both through their agents.
    for c in ["prod/web", "prod/worker"] {
        let r = s.cli(&["rotate", c, "--via-agent"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    until("v2 of both consumers", Duration::from_secs(20), || {
        !kid_of(&s, "prod/web", 2).is_empty() && !kid_of(&s, "prod/worker", 2).is_empty()
    });
    let new = [kid_of(&s, "prod/web", 2), kid_of(&s, "prod/worker", 2)];
    until("both apps' traffic on v2", Duration::from_secs(30), || {
        [&web_out, &worker_out].iter().zip(&new).all(|(out, kid)| {
            answers(out)
                .last()
                .is_some_and(|a| a["kid"] == kid.as_str())
        })
    });
    // The old versions go quiet and retire by the idle rule, long before the 2 m grace ends.
    until("v1 of both retired", Duration::from_secs(30), || {
        state_of(&s, "prod/web", 1) == "retired" && state_of(&s, "prod/worker", 1) == "retired"
    });
    let retired = s.events_at_least("version.retired", 2);
    for c in ["prod/web", "prod/worker"] {
        let line = retired
            .iter()
            .find(|l| l["consumer"] == c)
            .unwrap_or_else(|| panic!("no version.retired line for {c}: {retired:?}"));
        assert!(
            line["detail"].as_str().unwrap_or_default().contains("idle"),
            "{c} retired by the idle rule: {line}"
        );
    }
    // A little more traffic after the retirement, then the apps stop.
    std::thread::sleep(Duration::from_millis(500));
    drop(worker_run);
    drop(web_agent);

    for (out, (old, new)) in [&web_out, &worker_out].iter().zip(old.iter().zip(&new)) {
        let all = answers(out);
        assert!(
            all.len() > 50,
            "the app kept calling: {} answers",
            all.len()
        );
        let rejected: Vec<_> = all.iter().filter(|a| a["status"] != 200).collect();
        assert!(rejected.is_empty(), "rejected requests: {rejected:?}");
        // Traffic moved once, from v1 to v2, and never went back.
        let first_new = all.iter().position(|a| a["kid"] == new.as_str()).unwrap();
        assert!(all[..first_new].iter().all(|a| a["kid"] == old.as_str()));
        assert!(all[first_new..].iter().all(|a| a["kid"] == new.as_str()));
    }

    // The webhook receiver, checking signatures with the independent implementation.
    let expected = [
        ("rotation.started", "prod/web", 2),
        ("rotation.started", "prod/worker", 2),
        ("version.delivered", "prod/web", 2),
        ("version.delivered", "prod/worker", 2),
        ("version.retired", "prod/web", 1),
        ("version.retired", "prod/worker", 1),
    ];
    let requests = receiver.wait("/hooks", "the rotation's events and the retry", |r| {
        let got = delivered(r);
        // The first message was answered 500 (the injected failure); its retry comes 5 s later.
        let retried = r
            .first()
            .is_some_and(|first| r.iter().filter(|x| x["id"] == first["id"]).count() >= 2);
        retried
            && expected.iter().all(|(t, _, v)| {
                got.iter()
                    .filter(|(_, ty, ver)| ty == t && *ver == Some(*v))
                    .count()
                    >= 2
            })
    });
    assert_eq!(requests[0]["answered"], 500, "the injected failure");
    let retried = requests
        .iter()
        .filter(|r| r["id"] == requests[0]["id"])
        .count();
    assert!(retried >= 2, "the first message was retried: {requests:#?}");
    for r in &requests {
        assert_eq!(r["verified_with"], json!([0]), "verified: {r}");
    }
    let got = delivered(&requests);
    for (t, c, v) in expected {
        let n = requests
            .iter()
            .filter(|r| (200..300).contains(&r["answered"].as_u64().unwrap_or(0)))
            .filter(|r| {
                let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                body["type"] == t && body["data"]["consumer"] == c && body["data"]["version"] == v
            })
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(n, 1, "{t} of {c} v{v} once after dedup: {got:?}");
    }
    let bodies: String = requests
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .collect();
    assert!(!bodies.contains("kr_prod_"), "no key in a webhook body");
}
