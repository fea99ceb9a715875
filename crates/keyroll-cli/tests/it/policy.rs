//! Policy as code end to end: `keyroll policy check`, `keyroll plan` (exit 0 / 2 / 1) and
//! `keyroll apply` (from a file or a saved plan) against a real server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness;

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy.toml");
    std::fs::read_to_string(path).unwrap()
}

/// The example's consumers, one per environment.
const CONSUMERS: [&str; 5] = [
    "staging/billing-app",
    "prod/billing-app",
    "staging/deploy-bot",
    "prod/deploy-bot",
    "prod/partner-feed",
];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_example_policy_is_valid_and_a_bad_one_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "policy.toml", &example());
    let r = harness::cli_offline(&["policy", "check", "-f", s(&good)], dir.path());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("valid (2 environments, 5 consumers)"),
        "{}",
        r.stdout
    );
    let bad = example()
        .replace("rotate_every = \"30d\"", "rotate_every = \"3 dayz\"")
        .replace("rotate_after = \"staging\"", "rotate_after = \"qa\"");
    let bad = write(dir.path(), "bad.toml", &bad);
    let r = harness::cli_offline(&["policy", "check", "-f", "bad.toml"], dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(
        lines[0].starts_with(
            "bad.toml:7:16: bad duration \"3 dayz\" for rotate_every: expected a number and a unit"
        ),
        "{}",
        r.stderr
    );
    assert!(
        lines[1].starts_with("bad.toml:19:16: rotate_after \"qa\": no environment \"qa\""),
        "{}",
        r.stderr
    );
    assert!(bad.exists());
    // plan maps a bad file to 1 as well, before asking the server anything.
    let r = harness::cli_offline(&["plan", "-f", "bad.toml"], dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("bad.toml:7:16:"), "{}", r.stderr);
}

#[test]
fn check_plan_apply_and_plan_again() {
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let keys = dir.path().join("keys");

    let r = s_.cli(&["policy", "check", "-f", s(&policy)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    let r = s_.cli(&["plan", "-f", s(&policy)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "Environments to create:\n  + staging\n  + prod (protected, rotates after staging)\n"
        ),
        "{}",
        r.stdout
    );
    for c in CONSUMERS {
        assert!(
            r.stdout.contains(&format!("  + {c}\n")),
            "{c}:\n{}",
            r.stdout
        );
    }
    let r = s_.cli(&["plan", "-f", s(&policy), "--output", "json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["changes"], true);
    assert_eq!(
        v["plan"]["consumers_to_create"].as_array().unwrap().len(),
        5
    );

    // Not on a terminal and without --yes: refused, nothing applied.
    let r = s_.cli(&["apply", "-f", s(&policy)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("stdin is not a terminal"), "{}", r.stderr);
    assert_eq!(s_.cli(&["plan", "-f", s(&policy)]).code, 2);

    let r = s_.cli(&["apply", "-f", s(&policy), "--yes", "--out-dir", s(&keys)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Created environment prod."),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("kr_"), "a key on stdout:\n{}", r.stdout);
    for c in CONSUMERS {
        let (env, name) = c.split_once('/').unwrap();
        let path = keys.join(env).join(format!("{name}.key"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let key = std::fs::read_to_string(&path).unwrap();
        let key = key.trim();
        assert!(key.starts_with(&format!("kr_{env}_")), "{key}");
        let v = s_.cli(&["verify", key, "--env", env]);
        assert_eq!(v.code, 0, "{c}: {}{}", v.stdout, v.stderr);
    }
    let mode = std::fs::metadata(keys.join("prod"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let shown = s_.cli(&["consumer", "show", "prod/billing-app"]);
    assert!(
        shown.stdout.contains("invoices:read, invoices:write"),
        "{}",
        shown.stdout
    );

    let r = s_.cli(&["plan", "-f", s(&policy)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "No changes: the live state matches {}.",
            s(&policy)
        )),
        "{}",
        r.stdout
    );
    let r = s_.cli(&["apply", "-f", s(&policy), "--yes", "--out-dir", s(&keys)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!("No changes: the live state matches {}.", s(&policy))
    );
}

#[test]
fn a_saved_plan_goes_stale_and_drift_shows_apart() {
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let keys = dir.path().join("keys");
    let r = s_.cli(&["apply", "-f", s(&policy), "--yes", "--out-dir", s(&keys)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // A reviewed change: one more scope for deploy-bot.
    let changed = example().replace("[\"deploy:write\"]", "[\"deploy:write\", \"deploy:read\"]");
    std::fs::write(&policy, changed).unwrap();
    let plan_json = dir.path().join("plan.json");
    let r = s_.cli(&["plan", "-f", s(&policy), "--out", s(&plan_json)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "  ~ prod/deploy-bot\n      scopes: [deploy:write] -> [deploy:read, deploy:write]\n"
        ),
        "{}",
        r.stdout
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_json).unwrap()).unwrap();
    assert_eq!(saved["format"], "keyroll-plan/1");

    // Someone changes prod by hand in between.
    let r = s_.cli(&[
        "consumer",
        "set",
        "prod/billing-app",
        "--owner",
        "someone-else",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = s_.cli(&["apply", s(&plan_json), "--yes"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("is stale"), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "prod/billing-app: owner changed since the plan (payments-team -> someone-else)"
        ),
        "{}",
        r.stderr
    );
    let show = s_.cli(&["consumer", "show", "prod/deploy-bot"]);
    assert!(
        !show.stdout.contains("deploy:read"),
        "applied anyway:\n{}",
        show.stdout
    );

    // A fresh plan shows the hand change as drift, apart from the intended change.
    let r = s_.cli(&["plan", "-f", s(&policy)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let drift = r.stdout.find("Drift (changed outside").expect(&r.stdout);
    let intended = r.stdout.find("Consumers to change").expect(&r.stdout);
    assert!(intended < drift, "{}", r.stdout);
    assert!(
        r.stdout[drift..].contains(
            "  ! prod/billing-app\n      owner: payments-team (applied) -> someone-else (live); apply sets payments-team\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout[intended..drift].contains("billing-app"),
        "{}",
        r.stdout
    );

    // A new plan of the new state applies, and puts the owner back.
    let r = s_.cli(&["plan", "-f", s(&policy), "--out", s(&plan_json)]);
    assert_eq!(r.code, 2);
    let r = s_.cli(&["apply", s(&plan_json), "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let show = s_.cli(&["consumer", "show", "prod/billing-app"]);
    assert!(
        show.stdout.contains("owner:  payments-team"),
        "{}",
        show.stdout
    );
    assert_eq!(s_.cli(&["plan", "-f", s(&policy)]).code, 0);
}

#[test]
fn an_existing_key_file_refuses_the_whole_apply() {
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(keys.join("prod")).unwrap();
    let existing = keys.join("prod").join("partner-feed.key");
    std::fs::write(&existing, "kr_prod_old_key\n").unwrap();
    let r = s_.cli(&["apply", "-f", s(&policy), "--yes", "--out-dir", s(&keys)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&existing.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Nothing was changed"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "kr_prod_old_key\n"
    );
    let envs = s_.cli(&["env", "list"]);
    assert!(!envs.stdout.contains("staging"), "{}", envs.stdout);
    assert!(!keys.join("staging").exists());
}

#[test]
fn prune_disables_only_managed_consumers_the_file_no_longer_names() {
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let keys = dir.path().join("keys");
    let r = s_.cli(&["apply", "-f", s(&policy), "--yes", "--out-dir", s(&keys)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    s_.consumer("prod/hand-made", &[]);
    // partner-feed leaves the file.
    let text = example();
    let cut = text.find("[[consumer]]\nname = \"partner-feed\"").unwrap();
    std::fs::write(&policy, &text[..cut]).unwrap();
    let r = s_.cli(&["plan", "-f", s(&policy)]);
    assert_eq!(r.code, 0, "without --prune nothing changes:\n{}", r.stdout);
    assert!(
        r.stdout
            .contains("prod/partner-feed: managed by the policy: kept"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("prod/hand-made: not managed by a policy"),
        "{}",
        r.stdout
    );
    let r = s_.cli(&["apply", "-f", s(&policy), "--prune", "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Disabled prod/partner-feed"),
        "{}",
        r.stdout
    );
    let show = s_.cli(&["consumer", "show", "prod/partner-feed"]);
    assert!(show.stdout.contains("(DISABLED)"), "{}", show.stdout);
    let show = s_.cli(&["consumer", "show", "prod/hand-made"]);
    assert!(!show.stdout.contains("(DISABLED)"), "{}", show.stdout);
    assert_eq!(s_.cli(&["plan", "-f", s(&policy), "--prune"]).code, 0);
}

/// Runs `keyroll ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_a_terminal(s_: &harness::Server, args: &[&str], answer: &str) -> harness::Run {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let line: Vec<String> = std::iter::once(harness::BIN.to_owned())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect();
    let mut child = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("KEYROLL_SERVER", s_.url())
        .env("KEYROLL_DATA_DIR", s_.data_dir())
        .env_remove("KEYROLL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    harness::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn on_a_terminal_apply_asks_and_only_yes_approves() {
    if !harness::require_program("script", "apt-get install util-linux") {
        return;
    }
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let keys = dir.path().join("keys");
    let args = ["apply", "-f", s(&policy), "--out-dir", s(&keys)];
    let r = on_a_terminal(&s_, &args, "no\n");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Only 'yes' approves"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("the plan was not approved; nothing was changed"),
        "{}",
        r.stdout
    );
    assert_eq!(s_.cli(&["plan", "-f", s(&policy)]).code, 2);
    let r = on_a_terminal(&s_, &args, "yes\n");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Applied 7 changes."), "{}", r.stdout);
    assert_eq!(s_.cli(&["plan", "-f", s(&policy)]).code, 0);
}

#[test]
fn a_failure_midway_says_what_was_done_and_what_was_not() {
    let s_ = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", &example());
    let plan_json = dir.path().join("plan.json");
    let r = s_.cli(&["plan", "-f", s(&policy), "--out", s(&plan_json)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    // A plan edited by hand after review: its third consumer names an environment that will
    // not exist. The pin still matches, so apply starts, and stops there.
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_json).unwrap()).unwrap();
    saved["plan"]["consumers_to_create"][2]["environment"] = "qa".into();
    std::fs::write(&plan_json, saved.to_string()).unwrap();
    let r = s_.cli(&["apply", s(&plan_json), "--yes"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Created prod/billing-app"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("apply stopped at step 5 of 7 (create qa/deploy-bot); the 4 before it were made (listed above); not done: create prod/deploy-bot, create prod/partner-feed"),
        "{}",
        r.stderr
    );
}
