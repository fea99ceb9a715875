//! `keyroll rotate --due` and `keyroll rotate ENV/NAME --plan` against a real server whose
//! schedule runs every second: only due `ci` consumers rotate, ordering and protection hold,
//! keys reach files (0600) or a command's stdin and nowhere else, and a dry run or a plan
//! changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{self, Server};

/// A server whose schedule and sweeper run every second or faster.
fn server() -> Server {
    harness::start_with_env(&[
        ("KEYROLL_SCHEDULE__INTERVAL", "1s"),
        ("KEYROLL_USAGE__SWEEP_INTERVAL", "200ms"),
    ])
}

const CI: [&str; 6] = ["--delivery", "ci", "--rotate-every", "2s", "--grace", "1s"];

fn json(run: &harness::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {} stderr {}", run.stdout, run.stderr))
}

/// Polls the schedule until `consumer` is in `state`.
fn wait_for_state(s: &Server, consumer: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = harness::http()
            .get(format!("{}/v1/schedule", s.url()))
            .bearer_auth(s.token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let entry = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["consumer"] == consumer)
            .cloned()
            .unwrap_or_default();
        if entry["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{consumer} never reached {state}: {entry}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn versions(s: &Server, consumer: &str) -> Vec<serde_json::Value> {
    let v = json(&s.cli(&["consumer", "show", consumer, "--output", "json"]));
    v["versions"].as_array().unwrap().clone()
}

fn result<'a>(doc: &'a serde_json::Value, consumer: &str) -> &'a serde_json::Value {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["consumer"] == consumer)
        .unwrap_or_else(|| panic!("no result for {consumer}: {doc}"))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn verify(s: &Server, key: &str) -> harness::Run {
    s.cli(&["verify", key])
}

#[test]
fn due_ci_consumers_rotate_in_order_and_protected_ones_need_yes() {
    let s = server();
    assert_eq!(s.cli(&["env", "create", "staging"]).code, 0);
    let r = s.cli(&[
        "env",
        "create",
        "prod",
        "--protected",
        "--rotate-after",
        "staging",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    s.consumer("staging/app", &CI);
    s.consumer("prod/app", &CI);
    let mut manual = vec!["--rotate-every", "2s", "--grace", "1s"];
    manual.extend(["--delivery", "manual"]);
    s.consumer("staging/manual", &manual);
    wait_for_state(&s, "staging/app", "due");
    wait_for_state(&s, "prod/app", "blocked");

    // A dry run lists what would rotate and changes nothing.
    let dry = s.cli(&["rotate", "--due", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains("Would rotate staging/app"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("Nothing was changed"), "{}", dry.stdout);
    let dry = json(&s.cli(&["rotate", "--due", "--dry-run", "--output", "json"]));
    assert_eq!(
        result(&dry, "staging/app")["outcome"],
        "would_rotate",
        "{dry}"
    );
    assert_eq!(versions(&s, "staging/app").len(), 1);

    // The preflight of prod shows the unmet ordering rule and changes nothing.
    let plan = s.cli(&["rotate", "prod/app", "--plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for needle in [
        "rotates after staging",
        "not satisfied",
        "waiting for staging/app",
        "Warnings:",
        "prod is protected",
        "delivery: ci",
        "If rotated now:",
    ] {
        assert!(plan.stdout.contains(needle), "{needle}: {}", plan.stdout);
    }
    let p = json(&s.cli(&["rotate", "prod/app", "--plan", "--output", "json"]));
    assert_eq!(p["ordering"]["rotate_after"], "staging", "{p}");
    assert_eq!(p["ordering"]["satisfied"], false, "{p}");
    assert_eq!(p["protected"], true, "{p}");
    assert!(!p["warnings"].as_array().unwrap().is_empty(), "{p}");
    assert!(!p["timeline"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(versions(&s, "prod/app").len(), 1, "--plan rotated");

    // The first run rotates staging's ci consumer only.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("keys");
    let d = dir.to_str().unwrap();
    let run = s.cli(&["rotate", "--due", "--out-dir", d, "--output", "json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let doc = json(&run);
    let staging = result(&doc, "staging/app");
    assert_eq!(staging["outcome"], "rotated", "{doc}");
    assert_eq!(staging["rotated"]["version"], 2, "{doc}");
    assert!(staging["rotated"]["key"].is_null(), "a key in JSON: {doc}");
    let prod = result(&doc, "prod/app");
    assert_eq!(prod["outcome"], "skipped", "{doc}");
    assert_eq!(prod["blockers"][0]["code"], "ordering", "{doc}");
    let skipped = result(&doc, "staging/manual");
    assert_eq!(skipped["outcome"], "skipped", "{doc}");
    assert!(
        skipped["reason"].as_str().unwrap().contains("manual"),
        "{doc}"
    );
    assert_eq!(doc["summary"]["rotated"], 1, "{doc}");
    assert_eq!(versions(&s, "prod/app").len(), 1);
    assert_eq!(versions(&s, "staging/manual").len(), 1);
    let file = dir.join("staging").join("app.key");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir.join("staging")), 0o700);
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(verify(&s, &key).code, 0, "the written key verifies");
    s.secrets
        .lock()
        .unwrap()
        .push(key.rsplit('_').next().unwrap().to_owned());
    // The schedule told the manual consumer's owner instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = json(&s.cli(&["events", "--output", "json"]));
        let raised = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rotation.due" && e["consumer"] == "staging/manual");
        if raised {
            break;
        }
        assert!(Instant::now() < deadline, "no rotation.due: {ev}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Keep staging out of the way: its next period starts only after this test.
    let set = s.cli(&["consumer", "set", "staging/app", "--rotate-every", "1h"]);
    assert_eq!(set.code, 0, "{}", set.stderr);

    // Once staging's old version retired, prod may rotate, but only with --yes.
    wait_for_state(&s, "prod/app", "due");
    let refused = s.cli(&["rotate", "--due", "--out-dir", d]);
    assert_eq!(refused.code, 7, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("Refused prod/app") && refused.stdout.contains("--yes"),
        "{}",
        refused.stdout
    );
    assert_eq!(versions(&s, "prod/app").len(), 1);
    let run = s.cli(&["rotate", "--due", "--out-dir", d, "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("Rotated prod/app: v2"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 rotated"), "{}", run.stdout);
    let file = dir.join("prod").join("app.key");
    assert_eq!(mode(&file), 0o600);
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(verify(&s, &key).code, 0);
    s.secrets
        .lock()
        .unwrap()
        .push(key.rsplit('_').next().unwrap().to_owned());
    // Staging before prod.
    let created = |c: &str| {
        versions(&s, c)[1]["created_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (st, pr) = (created("staging/app"), created("prod/app"));
    assert!(
        keyroll_core::parse_rfc3339(&st).unwrap() < keyroll_core::parse_rfc3339(&pr).unwrap(),
        "{st} {pr}"
    );
    s.assert_no_secret_leaked(&[]);
}

#[test]
fn exec_gets_the_key_on_stdin_and_the_consumer_in_its_environment() {
    let s = server();
    assert_eq!(s.cli(&["env", "create", "staging"]).code, 0);
    s.consumer("staging/a", &CI);
    s.consumer("staging/b", &CI);
    wait_for_state(&s, "staging/a", "due");
    wait_for_state(&s, "staging/b", "due");
    let out = tempfile::tempdir().unwrap();
    let o = out.path().display().to_string();
    // b's push fails; a's records what the command was given.
    let cmd = format!(
        "if [ \"$KEYROLL_NAME\" = b ]; then exit 3; fi; cat > {o}/$KEYROLL_NAME.stdin; \
         env > {o}/$KEYROLL_NAME.env; echo pushed $KEYROLL_CONSUMER; echo \"$@\" > {o}/args"
    );
    let run = s.cli(&["rotate", "--due", "--exec", &cmd, "--output", "json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let doc = json(&run);
    assert!(!run.stdout.contains("kr_"), "a key in JSON: {}", run.stdout);
    // The command's own output goes to stderr, leaving stdout one JSON document.
    assert!(run.stderr.contains("pushed staging/a"), "{}", run.stderr);
    let a = result(&doc, "staging/a");
    assert_eq!(a["outcome"], "rotated", "{doc}");
    let b = result(&doc, "staging/b");
    assert_eq!(b["outcome"], "handoff_failed", "{doc}");
    let detail = b["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("exit status: 3"), "{doc}");
    let recovery = b["recovery"].as_str().unwrap();
    assert!(
        recovery.contains("was issued")
            && recovery.contains("v1 still works until")
            && recovery.contains("keyroll rotate staging/b"),
        "{doc}"
    );
    assert_eq!(versions(&s, "staging/b").len(), 2, "b's key was issued");

    let key = std::fs::read_to_string(out.path().join("a.stdin")).unwrap();
    let key = key.trim().to_owned();
    assert!(key.starts_with("kr_"), "{key}");
    assert_eq!(verify(&s, &key).code, 0);
    let secret = key.rsplit('_').next().unwrap().to_owned();
    s.secrets.lock().unwrap().push(secret.clone());
    let env = std::fs::read_to_string(out.path().join("a.env")).unwrap();
    let kid = a["rotated"]["kid"].as_str().unwrap();
    for line in [
        "KEYROLL_CONSUMER=staging/a".to_owned(),
        "KEYROLL_ENVIRONMENT=staging".to_owned(),
        "KEYROLL_NAME=a".to_owned(),
        "KEYROLL_VERSION=2".to_owned(),
        format!("KEYROLL_KID={kid}"),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in {env}");
    }
    assert!(
        !env.contains(&secret),
        "the key is in the command's environment"
    );
    assert!(!env.contains("KEYROLL_TOKEN="), "{env}");
    let args = std::fs::read_to_string(out.path().join("args")).unwrap();
    assert_eq!(args.trim(), "", "the command got arguments");
    // Nothing was due any more for a: a second run rotates nothing.
    let again = s.cli(&["rotate", "--due", "--exec", "true", "--env", "staging"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("0 rotated"), "{}", again.stdout);
    s.assert_no_secret_leaked(&[run.stdout.clone(), run.stderr.clone()]);
}

#[test]
fn an_existing_key_file_stops_the_run_before_any_rotation() {
    let s = server();
    assert_eq!(s.cli(&["env", "create", "staging"]).code, 0);
    s.consumer("staging/app", &CI);
    wait_for_state(&s, "staging/app", "due");
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("staging")).unwrap();
    std::fs::write(out.path().join("staging").join("app.key"), "old\n").unwrap();
    let run = s.cli(&["rotate", "--due", "--out-dir", out.path().to_str().unwrap()]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("app.key"), "{}", run.stderr);
    assert_eq!(versions(&s, "staging/app").len(), 1, "rotated anyway");
    // With neither --out-dir nor --exec the key is printed, once.
    let run = s.cli(&["rotate", "--due"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let keys = harness::issued_keys(&run.stdout);
    assert_eq!(keys.len(), 1, "{}", run.stdout);
    assert!(run.stdout.contains("shown once"), "{}", run.stdout);
    assert_eq!(verify(&s, &keys[0]).code, 0);
    // An unknown environment is named as such.
    let run = s.cli(&["rotate", "--due", "--env", "nope"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
}

#[test]
fn an_unreachable_server_is_retried_then_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "kra_x_y\n").unwrap();
    let out = std::process::Command::new(harness::BIN)
        .args(["rotate", "--due", "--data-dir"])
        .arg(dir.path())
        .env("KEYROLL_SERVER", "http://127.0.0.1:9")
        .env_remove("KEYROLL_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.matches("trying again").count(), 3, "{stderr}");
}
