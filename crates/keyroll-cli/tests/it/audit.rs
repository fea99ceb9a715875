//! `keyroll audit list` and `keyroll audit verify` against a real server, with the SQLite file
//! edited behind its back by the `sqlite3` program: an edited, removed or reordered entry is
//! named, a cut-off tail is found with `--expect-head`, and a change whose entry cannot be
//! written is not made.

use std::process::Command;

use serde_json::Value;

use crate::harness::{self, Run, Server};

/// Runs SQL on the server's database file with the `sqlite3` program; `false` when it is not
/// installed (the test then skips, visibly).
fn sql(s: &Server, statements: &str) -> bool {
    if !harness::require_program("sqlite3", "apt-get install sqlite3") {
        return false;
    }
    let out = Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 5000"])
        .arg(s.data_dir().join("keyroll.db"))
        .arg(statements)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// What an operator with write access to the file does first: the schema's append-only triggers
/// are no obstacle to them.
const DROP_GUARDS: &str = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";

/// A server with changes of several kinds in its log.
fn with_changes() -> Server {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/app", &["--scope", "read"]);
    s.consumer("prod/other", &[]);
    s.rotate("prod/app", &["--grace", "1h"]);
    let set = s.cli(&[
        "consumer", "set", "prod/app", "--scope", "read", "--scope", "write",
    ]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    s
}

fn json(run: &Run) -> Value {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn entries(s: &Server, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "list", "--output", "json", "--limit", "1000"];
    args.extend_from_slice(filters);
    json(&s.cli(&args))["items"].as_array().unwrap().clone()
}

fn verify(s: &Server, extra: &[&str]) -> Run {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    s.cli(&args)
}

/// The head hash a successful `audit verify` printed.
fn head_of(run: &Run) -> String {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head "))
        .unwrap_or_else(|| panic!("no head line in {}", run.stdout));
    assert_eq!(line.len(), 64, "{line}");
    line.to_owned()
}

fn seq(e: &Value) -> i64 {
    e["seq"].as_i64().unwrap()
}

#[test]
fn verify_passes_after_changes_of_every_kind_and_prints_the_head() {
    let s = with_changes();
    let all = entries(&s, &[]);
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "admin_token.created",
        "environment.created",
        "consumer.created",
        "version.issued",
        "version.retiring",
        "consumer.updated",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    for pair in all.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }

    let run = verify(&s, &[]);
    let head = head_of(&run);
    assert!(
        run.stdout.contains(&format!(
            "Audit chain intact: {} entries checked.",
            all.len()
        )),
        "{}",
        run.stdout
    );
    assert_eq!(all.last().unwrap()["hash"], head.as_str());
    let listed = json(&s.cli(&["audit", "list", "--output", "json"]));
    assert_eq!(listed["head"], head.as_str(), "the server's head agrees");
    let as_json = json(&verify(&s, &["--output", "json"]));
    assert_eq!(as_json["intact"], true);
    assert_eq!(as_json["head"], head.as_str());
    // Entries appended after a head was taken do not fail --expect-head.
    s.rotate("prod/other", &[]);
    let later = verify(&s, &["--expect-head", &head]);
    assert_ne!(head_of(&later), head);

    // consumer.updated records before and after; admin changes name the token as the actor.
    let token_id = s.token().split('_').nth(1).unwrap().to_owned();
    let updated = all
        .iter()
        .find(|e| e["action"] == "consumer.updated")
        .unwrap();
    assert_eq!(updated["actor"], token_id.as_str());
    assert!(updated["request_id"].as_str().is_some());
    assert!(updated["remote_addr"].as_str().is_some());
    let detail: Value = serde_json::from_str(updated["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["before"]["scopes"], serde_json::json!(["read"]));
    assert_eq!(
        detail["after"]["scopes"],
        serde_json::json!(["read", "write"])
    );

    let table = s.cli(&["audit", "list"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("SEQ"), "{}", table.stdout);
    assert!(
        table.stdout.contains("consumer.updated"),
        "{}",
        table.stdout
    );
    s.assert_no_secret_leaked(&[listed.to_string(), table.stdout]);
}

#[test]
fn an_edited_entry_is_named() {
    let s = with_changes();
    let all = entries(&s, &[]);
    let target = seq(&all[2]);
    if !sql(
        &s,
        &format!(
            "{DROP_GUARDS} UPDATE audit_log SET detail = '{{\"command\":\"nothing\"}}' \
             WHERE seq = {target};"
        ),
    ) {
        return;
    }
    let run = verify(&s, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "broken at entry 3 (seq {target}): the entry was edited"
        )),
        "{}",
        run.stdout
    );
    let as_json: Value = serde_json::from_str(&verify(&s, &["--output", "json"]).stdout).unwrap();
    assert_eq!(as_json["kind"], "edited");
    assert_eq!(as_json["position"], 3);
    assert_eq!(as_json["seq"], target);
}

#[test]
fn a_removed_entry_is_named_by_the_entry_after_it() {
    let s = with_changes();
    let all = entries(&s, &[]);
    if !sql(
        &s,
        &format!(
            "{DROP_GUARDS} DELETE FROM audit_log WHERE seq = {};",
            seq(&all[2])
        ),
    ) {
        return;
    }
    let run = verify(&s, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "broken at entry 3 (seq {}): the entry before it was removed",
            seq(&all[3])
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn reordered_entries_are_found() {
    let s = with_changes();
    let all = entries(&s, &[]);
    let (a, b) = (seq(&all[2]), seq(&all[3]));
    if !sql(
        &s,
        &format!(
            "{DROP_GUARDS} UPDATE audit_log SET seq = -1 WHERE seq = {a}; \
             UPDATE audit_log SET seq = {a} WHERE seq = {b}; \
             UPDATE audit_log SET seq = {b} WHERE seq = -1;"
        ),
    ) {
        return;
    }
    let run = verify(&s, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "broken at entry 3 (seq {a}): entries were reordered"
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn a_removed_tail_is_found_only_with_the_expected_head() {
    let s = with_changes();
    let old_head = head_of(&verify(&s, &[]));
    let last = seq(entries(&s, &[]).last().unwrap());
    if !sql(
        &s,
        &format!("{DROP_GUARDS} DELETE FROM audit_log WHERE seq = {last};"),
    ) {
        return;
    }
    let plain = verify(&s, &[]);
    assert_ne!(head_of(&plain), old_head, "what remains is a valid chain");
    let expecting = verify(&s, &["--expect-head", &old_head]);
    assert_eq!(
        expecting.code, 3,
        "{}\n{}",
        expecting.stdout, expecting.stderr
    );
    assert!(
        expecting.stdout.contains(&format!(
            "no entry of the audit chain has the expected head {old_head}"
        )),
        "{}",
        expecting.stdout
    );
    let bad = verify(&s, &["--expect-head", "not-a-hash"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("64 hex digits"), "{}", bad.stderr);
}

#[test]
fn list_filters_by_target_actor_and_time() {
    let s = with_changes();
    let on_app = entries(&s, &["--target", "prod/app"]);
    assert!(on_app.len() >= 5, "{on_app:?}");
    for e in &on_app {
        let t = e["target"].as_str().unwrap();
        assert!(t == "prod/app" || t.starts_with("prod/app v"), "{t}");
    }
    let token_id = s.token().split('_').nth(1).unwrap().to_owned();
    let mine = entries(&s, &["--actor", &token_id]);
    let all = entries(&s, &[]);
    assert!(mine.iter().all(|e| e["actor"] == token_id.as_str()));
    assert_eq!(
        mine.len(),
        all.iter()
            .filter(|e| e["actor"] == token_id.as_str())
            .count()
    );
    assert!(mine.len() < all.len(), "start-up's entry is by system");
    assert!(entries(&s, &["--actor", "sweeper"]).is_empty());
    assert_eq!(entries(&s, &["--since", "1h"]).len(), all.len());
    assert!(entries(&s, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let two = json(&s.cli(&["audit", "list", "--output", "json", "--limit", "2"]));
    assert_eq!(two["items"].as_array().unwrap()[..], all[all.len() - 2..]);

    let bad = s.cli(&["audit", "list", "--target", "prod"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = s.cli(&["audit", "list", "--since", "yesterday"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--since"), "{}", bad.stderr);
}

#[test]
fn a_token_without_audit_read_is_refused() {
    let s = harness::start();
    let created = json(&s.cli(&[
        "token",
        "create",
        "--scope",
        "consumers:read",
        "--output",
        "json",
    ]));
    let reader = created["token"].as_str().unwrap();
    let run = s.cli(&["--token", reader, "audit", "verify"]);
    assert_eq!(run.code, 5, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("audit:read"), "{}", run.stderr);
    let auditor = json(&s.cli(&[
        "token",
        "create",
        "--scope",
        "audit:read",
        "--output",
        "json",
    ]));
    let run = s.cli(&[
        "--token",
        auditor["token"].as_str().unwrap(),
        "audit",
        "verify",
    ]);
    head_of(&run);
}

#[test]
fn a_change_whose_entry_cannot_be_written_is_not_made() {
    let s = with_changes();
    let before = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    if !sql(
        &s,
        "CREATE TRIGGER audit_log_refused BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
    ) {
        return;
    }
    let set = s.cli(&["consumer", "set", "prod/app", "--owner", "someone-else"]);
    assert_ne!(set.code, 0, "{}", set.stdout);
    let rotate = s.cli(&["rotate", "prod/app"]);
    assert_ne!(rotate.code, 0, "{}", rotate.stdout);
    let after = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    assert_eq!(after, before, "neither change was applied");
    head_of(&verify(&s, &[]));
}
