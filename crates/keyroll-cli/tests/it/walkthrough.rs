//! The README walkthrough, through the real CLI: create, verify, rotate with grace, retire,
//! revoke, disable — and no secret anywhere but the once-shown key.

use crate::harness;

#[test]
fn readme_walkthrough_end_to_end() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    assert_eq!(s.cli(&["env", "create", "staging"]).code, 0);
    let v1 = s.consumer(
        "prod/billing-app",
        &["--scope", "invoices:read", "--owner", "payments-team"],
    );

    let ok = s.cli(&["verify", &v1]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.starts_with("allowed: valid"), "{}", ok.stdout);

    // Rotate with a grace window: old and new both work.
    let v2 = s.rotate("prod/billing-app", &["--grace", "1h"]);
    let old = s.cli(&["verify", &v1]);
    assert_eq!(old.code, 0);
    assert!(
        old.stdout.contains("valid_deprecated") && old.stdout.contains("switch to v2"),
        "{}",
        old.stdout
    );
    assert_eq!(s.cli(&["verify", &v2]).code, 0);

    // The table shows both versions.
    let show = s.cli(&["consumer", "show", "prod/billing-app"]);
    assert!(
        show.stdout.contains("retiring") && show.stdout.contains("active"),
        "{}",
        show.stdout
    );

    // End the grace window: the old key is rejected, naming its replacement.
    assert_eq!(s.cli(&["retire", "prod/billing-app", "v1"]).code, 0);
    let retired = s.cli(&["verify", &v1]);
    // Exit 3: rejected (not 1, so a script tells it from a failure to ask).
    assert_eq!(retired.code, 3);
    assert!(
        retired.stdout.contains("key_retired") && retired.stdout.contains("v2 replaces it"),
        "{}",
        retired.stdout
    );

    // The active version cannot be retired: that would leave no valid key.
    let refused = s.cli(&["retire", "prod/billing-app", "v2"]);
    // Exit 7: conflicts with the current state.
    assert_eq!(refused.code, 7);
    assert!(
        refused.stderr.contains("rotate first"),
        "{}",
        refused.stderr
    );

    // Scopes.
    let scoped = s.cli(&["verify", &v2, "--scope", "invoices:write"]);
    assert_eq!(scoped.code, 3);
    assert!(
        scoped.stdout.contains("insufficient_scope"),
        "{}",
        scoped.stdout
    );

    // Disable / enable.
    assert_eq!(s.cli(&["consumer", "disable", "prod/billing-app"]).code, 0);
    assert!(s.cli(&["verify", &v2]).stdout.contains("consumer_disabled"));
    assert_eq!(s.cli(&["consumer", "enable", "prod/billing-app"]).code, 0);
    assert_eq!(s.cli(&["verify", &v2]).code, 0);

    // Revoke: immediate, with the reason.
    assert_eq!(
        s.cli(&[
            "revoke",
            "prod/billing-app",
            "v2",
            "--reason",
            "leaked in a CI log"
        ])
        .code,
        0
    );
    let revoked = s.cli(&["verify", &v2]);
    assert!(
        revoked.stdout.contains("key_revoked") && revoked.stdout.contains("leaked in a CI log"),
        "{}",
        revoked.stdout
    );

    // A key for another environment.
    let staging = s.consumer("staging/billing-app", &[]);
    let wrong = s.cli(&["verify", &staging, "--env", "prod"]);
    assert!(
        wrong.stdout.contains("wrong_environment"),
        "{}",
        wrong.stdout
    );

    // JSON output is the API's JSON.
    let json = s.cli(&["consumer", "show", "prod/billing-app", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["versions"][1]["state"], "revoked");
    let list = s.cli(&["consumer", "list", "--env", "prod"]);
    assert!(
        list.stdout.contains("prod/billing-app") && !list.stdout.contains("staging/"),
        "{}",
        list.stdout
    );

    // The fingerprint computed client-side matches the one in the server's decision log.
    let fp = s.cli(&["fingerprint", &v1]);
    let fp = fp.stdout.trim().to_owned();
    assert!(fp.starts_with("fp_"));
    assert!(
        s.events("auth.decision")
            .iter()
            .any(|d| d["fingerprint"] == fp.as_str() && d["code"] == "key_retired"),
        "fingerprint {fp} not in the decision log"
    );

    s.assert_no_secret_leaked(&[]);
}

#[test]
fn idempotent_rotation_does_not_rotate_twice() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let first = s.cli(&[
        "rotate",
        "prod/app",
        "--idempotency-key",
        "deploy-42",
        "--output",
        "json",
    ]);
    let again = s.cli(&[
        "rotate",
        "prod/app",
        "--idempotency-key",
        "deploy-42",
        "--output",
        "json",
    ]);
    let a: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(a["version"], 2);
    assert_eq!(b["version"], 2);
    assert_eq!(a["kid"], b["kid"]);
    assert!(a["key"].is_string());
    assert!(b["key"].is_null(), "a replay must not show the key again");
    assert_eq!(b["replayed"], true);
    let show: serde_json::Value = serde_json::from_str(
        &s.cli(&["consumer", "show", "prod/app", "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(show["versions"].as_array().unwrap().len(), 2);
    // The same key with a different request is refused.
    let other = s.cli(&[
        "rotate",
        "prod/app",
        "--grace",
        "0",
        "--idempotency-key",
        "deploy-42",
    ]);
    assert_eq!(other.code, 7);
    assert!(
        other.stderr.contains("different request"),
        "{}",
        other.stderr
    );
}

#[test]
fn restart_keeps_keys_and_deadlines_pass_while_down() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let s = harness::start_in(&data);
    s.cli(&["env", "create", "prod"]);
    let v1 = s.consumer("prod/app", &[]);
    let v2 = s.rotate("prod/app", &["--grace", "2s"]);
    assert_eq!(s.cli(&["verify", &v1]).code, 0);
    drop(s);
    // The deadline passes while no server runs; the next start must apply it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s2 = harness::start_in(&data);
    let r = s2.cli(&["verify", &v1]);
    assert!(
        r.stdout.contains("key_retired"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(s2.cli(&["verify", &v2]).code, 0);
    let loaded = s2.events("index.loaded");
    assert_eq!(loaded[0]["key_versions"], 2);
}

#[test]
fn init_prints_the_first_token_once_and_refuses_a_second_time() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = harness::cli_offline(&["init", "--data-dir", data.to_str().unwrap()], dir.path());
    assert_eq!(first.code, 0, "{}", first.stderr);
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    assert!(token.trim().starts_with("kra_"));
    assert!(
        first.stdout.contains(token.trim()),
        "init prints the token once"
    );
    let mode = std::fs::metadata(data.join("admin-token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = harness::cli_offline(&["init", "--data-dir", data.to_str().unwrap()], dir.path());
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("already initialised") && !again.stderr.contains(token.trim()),
        "{}",
        again.stderr
    );
    // The server started on that data dir accepts the token and never logs it.
    let s = harness::start_in(&data);
    assert_eq!(s.cli(&["env", "list"]).code, 0);
    assert!(!s.logs.lock().unwrap().join("\n").contains(token.trim()));
}
