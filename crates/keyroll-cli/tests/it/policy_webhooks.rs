//! Webhook endpoints in a policy file, end to end against a real server that allows loopback
//! targets: the plan registers what the server lacks, apply writes each new signing secret to
//! a 0600 file (never to stdout, JSON or the logs), a saved plan goes stale when an endpoint is
//! registered by hand, the second plan is empty, an endpoint that differs is shown and left as
//! it is, and an endpoint the file does not name is listed and never touched.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::harness::{self, Run, Server};

const POLICY: &str = r#"[[environment]]
name = "prod"

[[webhook]]
url = "http://127.0.0.1:9/keyroll"
events = ["version.retired", "rotation.started"]
description = "pager"

[[webhook]]
url = "http://127.0.0.1:9/all"
"#;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(r: &Run, code: i32) {
    assert_eq!(r.code, code, "{}{}", r.stdout, r.stderr);
}

fn endpoints(server: &Server) -> Vec<Value> {
    let r = server.cli(&["webhook", "list", "--output", "json"]);
    ok(&r, 0);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn add(server: &Server, url: &str, events: &str) -> String {
    let r = server.cli(&[
        "webhook", "add", url, "--events", events, "--output", "json",
    ]);
    ok(&r, 0);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v["webhook"]["id"].as_str().unwrap().to_owned()
}

#[test]
fn webhooks_in_a_policy_plan_apply_and_plan_again() {
    let server = harness::start_with_env(&[("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true")]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let saved = dir.path().join("plan.json");
    let keys = dir.path().join("keys");
    let mut outputs: Vec<String> = Vec::new();
    let mut keep = |r: &Run| outputs.push(format!("{}{}", r.stdout, r.stderr));

    let r = server.cli(&["policy", "check", "-f", s(&policy)]);
    ok(&r, 0);
    assert!(
        r.stdout
            .contains("valid (1 environments, 0 consumers, 2 webhook endpoints)"),
        "{}",
        r.stdout
    );

    // Registered by hand, not in the file.
    let unmanaged = add(&server, "http://127.0.0.1:9/by-hand", "version.revoked");

    let r = server.cli(&["plan", "-f", s(&policy), "--out", s(&saved)]);
    ok(&r, 2);
    keep(&r);
    assert!(
        r.stdout.contains(
            "Webhook endpoints to register (each gets a new whsec_ signing secret, shown once):\n  + http://127.0.0.1:9/keyroll\n      events rotation.started, version.retired; description \"pager\"\n  + http://127.0.0.1:9/all\n      events key.expiring, rotation.due,"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "    webhook endpoint {unmanaged} http://127.0.0.1:9/by-hand (events version.revoked): not managed by the policy: left as it is\n"
        )),
        "{}",
        r.stdout
    );
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        plan["plan"]["webhooks_to_create"].as_array().unwrap().len(),
        2
    );
    assert_eq!(plan["pin"]["webhooks"].as_object().unwrap().len(), 1);

    // An endpoint registered after the plan makes it stale; nothing is applied.
    let late = add(&server, "http://127.0.0.1:9/late", "*");
    let r = server.cli(&["apply", s(&saved), "--yes", "--out-dir", s(&keys)]);
    ok(&r, 1);
    assert!(r.stderr.contains("is stale"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "webhook endpoint {late} (http://127.0.0.1:9/late): registered since the plan"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(endpoints(&server).len(), 2);
    assert!(!keys.exists());
    ok(&server.cli(&["webhook", "remove", &late]), 0);

    // The same plan, current again: applied, secrets to files, none on stdout.
    let r = server.cli(&[
        "apply",
        s(&saved),
        "--yes",
        "--out-dir",
        s(&keys),
        "--output",
        "json",
    ]);
    ok(&r, 0);
    keep(&r);
    assert!(!r.stdout.contains("whsec_") && !r.stderr.contains("whsec_"));
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["action"], "create_environment", "{v:#}");
    let hooks: Vec<&Value> = results
        .iter()
        .filter(|r| r["action"] == "create_webhook")
        .collect();
    assert_eq!(hooks.len(), 2, "{v:#}");
    let mut secrets = Vec::new();
    for res in hooks {
        let id = res["id"].as_str().unwrap();
        let file = keys.join("webhooks").join(format!("{id}.secret"));
        assert_eq!(res["secret_file"], s(&file));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        let secret = std::fs::read_to_string(&file).unwrap().trim().to_owned();
        assert!(secret.starts_with("whsec_"), "{}", file.display());
        secrets.push(secret);
    }

    let list = endpoints(&server);
    assert_eq!(list.len(), 3);
    let pager = list
        .iter()
        .find(|w| w["url"] == "http://127.0.0.1:9/keyroll")
        .unwrap();
    assert_eq!(
        pager["events"],
        serde_json::json!(["rotation.started", "version.retired"])
    );
    assert_eq!(pager["description"], "pager");
    let by_hand = list.iter().find(|w| w["id"] == unmanaged.as_str()).unwrap();
    assert_eq!(by_hand["events"], serde_json::json!(["version.revoked"]));

    // The second plan is empty: the default set the file leaves out is the server's.
    let r = server.cli(&["plan", "-f", s(&policy)]);
    ok(&r, 0);
    keep(&r);
    assert!(
        r.stdout.ends_with(&format!(
            "No changes: the live state matches {}.\n",
            s(&policy)
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&unmanaged), "{}", r.stdout);

    // Events changed in the file: shown, not changed (no update in the API, no replace).
    std::fs::write(
        &policy,
        POLICY.replace(r#"["version.retired", "rotation.started"]"#, r#"["*"]"#),
    )
    .unwrap();
    let r = server.cli(&["plan", "-f", s(&policy)]);
    ok(&r, 0);
    keep(&r);
    let pager_id = pager["id"].as_str().unwrap();
    assert!(
        r.stdout.contains(&format!(
            "  ! {pager_id} http://127.0.0.1:9/keyroll\n      events: rotation.started, version.retired (live) -> * (file)\n      to take the file's values: `keyroll webhook remove {pager_id}`"
        )),
        "{}",
        r.stdout
    );
    let r = server.cli(&["apply", "-f", s(&policy), "--yes"]);
    ok(&r, 0);
    keep(&r);
    assert!(
        r.stdout.contains("No changes apply can make"),
        "{}",
        r.stdout
    );
    assert_eq!(endpoints(&server).len(), 3);

    // Without --out-dir the secret is printed once, in the text.
    std::fs::write(
        &policy,
        format!("{POLICY}\n[[webhook]]\nurl = \"http://127.0.0.1:9/third\"\n"),
    )
    .unwrap();
    let r = server.cli(&["apply", "-f", s(&policy), "--yes"]);
    ok(&r, 0);
    let shown: Vec<&str> = r
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("whsec_"))
        .collect();
    assert_eq!(shown.len(), 1, "{}", r.stdout);
    secrets.push(shown[0].to_owned());

    let logs = server.logs_text();
    let db = server.database_text();
    for secret in &secrets {
        let raw = secret.trim_start_matches("whsec_");
        assert!(!logs.contains(raw), "a webhook secret is in the server log");
        assert!(!db.contains(raw), "a webhook secret is in the database");
        for o in &outputs {
            assert!(!o.contains(raw), "a webhook secret is in CLI output:\n{o}");
        }
    }
}
