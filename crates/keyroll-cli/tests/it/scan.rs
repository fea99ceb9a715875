//! `keyroll scan` against a real server: keys found in a tree are judged by kid alone, the exit
//! code says whether a deploy may go ahead, and no secret is ever printed. Plus the API it uses,
//! `GET /v1/keys/{kid}`.

use std::path::Path;

use keyroll_core::{assemble_key, fingerprint};

use crate::harness;

fn kid_of(key: &str) -> &str {
    key.split('_').nth(2).unwrap()
}

/// The secret and checksum: everything after the kid.
fn secret_of(key: &str) -> &str {
    key.rsplit('_').next().unwrap()
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn location(root: &Path, rel: &str, line: usize) -> String {
    format!("{}:{line}", root.join(rel).display())
}

/// The output line about the key found at `rel:line`.
fn line_for<'a>(stdout: &'a str, root: &Path, rel: &str, line: usize) -> &'a str {
    let loc = format!("{} ", location(root, rel, line));
    stdout
        .lines()
        .find(|l| l.starts_with(&loc))
        .unwrap_or_else(|| panic!("no finding at {loc} in:\n{stdout}"))
}

fn assert_no_secret(run: &harness::Run, keys: &[&str]) {
    for k in keys {
        let s = secret_of(k);
        assert!(
            !run.stdout.contains(s),
            "a secret in stdout:\n{}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(s),
            "a secret in stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn scan_finds_keys_and_fails_on_those_that_stop_working() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let active = s.consumer("prod/web", &[]);
    let retired = s.consumer("prod/old", &[]);
    s.rotate("prod/old", &["--grace", "0"]);
    let revoked = s.consumer("prod/leaky", &[]);
    s.rotate("prod/leaky", &["--grace", "1h"]);
    let r = s.cli(&[
        "revoke",
        "prod/leaky",
        "v1",
        "--reason",
        "leaked in a CI log",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let retiring = s.consumer("prod/batch", &[]);
    s.rotate("prod/batch", &["--grace", "1h"]);
    let unknown = assemble_key("prod", "ZZZZZZZZZZZZ", "0123456789abcdefghijABCDEFGHIJkl");
    // The kid of a live key with another secret: well-formed, but not the issued key.
    let forged = assemble_key("prod", kid_of(&active), "0123456789abcdefghijABCDEFGHIJkl");
    let mut typo = active.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let random = format!("kr_prod_Ab3xYz7Qw9Lm_{}", "Q7".repeat(19));
    let all = [
        active.as_str(),
        retired.as_str(),
        revoked.as_str(),
        retiring.as_str(),
        unknown.as_str(),
        forged.as_str(),
        typo.as_str(),
        random.as_str(),
    ];

    // A clean tree: one active key, plus everything the scan must not report.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "app/.env",
        format!("# app\nDATABASE_URL=postgres://db/app\nKEYROLL_KEY={active}\n").as_bytes(),
    );
    write(
        root,
        "app/notes.md",
        format!("typo: {typo}\nrandom: {random}\nprefix only: kr_prod_ kr_\n").as_bytes(),
    );
    let mut blob = b"\x7fELF\x00\x01\x02".to_vec();
    blob.extend_from_slice(format!("\n{retired}\n").as_bytes());
    write(root, "app/bin/tool", &blob);
    write(
        root,
        "app/.git/config",
        format!("[remote]\n  token = {revoked}\n").as_bytes(),
    );
    write(root, "outside/old.env", format!("K={retired}\n").as_bytes());
    std::os::unix::fs::symlink(root.join("outside/old.env"), root.join("app/linked.env")).unwrap();
    std::os::unix::fs::symlink(root.join("outside"), root.join("app/linked-dir")).unwrap();

    let app = root.join("app");
    let clean = s.cli(&["scan", app.to_str().unwrap()]);
    assert_eq!(clean.code, 0, "{}\n{}", clean.stdout, clean.stderr);
    let line = line_for(&clean.stdout, root, "app/.env", 3);
    assert!(
        line.contains("prod/web v1") && line.contains("ok active"),
        "{line}"
    );
    assert!(
        line.contains(&format!("kr_prod_{}_…", kid_of(&active))),
        "{line}"
    );
    assert!(line.contains(&fingerprint(active.as_bytes()).to_string()));
    // Exactly one finding: no typo, look-alike, binary file, .git/ or symlink target.
    assert_eq!(
        clean.stdout.matches("kr_prod_").count(),
        1,
        "{}",
        clean.stdout
    );
    assert!(
        clean.stdout.contains("1 key (1 distinct kid)")
            && clean.stdout.contains("1 binary skipped"),
        "{}",
        clean.stdout
    );
    assert_no_secret(&clean, &all);

    // The same tree with keys that stop working.
    write(
        root,
        "app/config/prod.yaml",
        format!("services:\n  old: {retired}\n  other: x\n\n  leaky: \"{revoked}\"\n").as_bytes(),
    );
    write(
        root,
        "app/scripts/deploy.sh",
        format!("#!/bin/sh\nexport A={unknown}\nexport B={forged}\n").as_bytes(),
    );
    write(
        root,
        "app/batch.env",
        format!("BATCH_KEY={retiring}\n# again: {active}\n").as_bytes(),
    );
    let bad = s.cli(&["scan", app.to_str().unwrap(), "--min-remaining", "2h"]);
    // A key failing the check is exit 3, like a rejected `keyroll verify`.
    assert_eq!(bad.code, 3, "{}\n{}", bad.stdout, bad.stderr);
    let out = &bad.stdout;
    let l = line_for(out, root, "app/config/prod.yaml", 2);
    assert!(l.contains("FAIL retired: v2 replaces it"), "{l}");
    let l = line_for(out, root, "app/config/prod.yaml", 5);
    assert!(l.contains("FAIL revoked: leaked in a CI log"), "{l}");
    let l = line_for(out, root, "app/scripts/deploy.sh", 2);
    assert!(l.contains("FAIL unknown to the server"), "{l}");
    let l = line_for(out, root, "app/scripts/deploy.sh", 3);
    assert!(l.contains("FAIL not the key issued as prod/web v1"), "{l}");
    let l = line_for(out, root, "app/batch.env", 1);
    assert!(
        l.contains("FAIL retires in") && l.contains("(< 2h); v2 replaces it"),
        "{l}"
    );
    let l = line_for(out, root, "app/batch.env", 2);
    assert!(l.contains("ok active"), "{l}");
    assert!(line_for(out, root, "app/.env", 3).contains("ok active"));
    assert!(
        out.contains("7 keys (5 distinct kids)") && out.contains("5 fail the check"),
        "{out}"
    );
    assert_no_secret(&bad, &all);

    // The retiring key alone passes with a window shorter than what it has left.
    let batch = root.join("app/batch.env");
    let short = s.cli(&["scan", batch.to_str().unwrap(), "--min-remaining", "30m"]);
    assert_eq!(short.code, 0, "{}\n{}", short.stdout, short.stderr);
    assert!(
        short.stdout.contains("ok retiring: works until"),
        "{}",
        short.stdout
    );
    // …and fails with the default window.
    let default = s.cli(&["scan", batch.to_str().unwrap()]);
    assert_eq!(default.code, 3);
    assert!(default.stdout.contains("(< 24h)"), "{}", default.stdout);

    // JSON: one object per finding, with the server's answer and no secret.
    let j = s.cli(&[
        "scan",
        app.to_str().unwrap(),
        "--min-remaining",
        "2h",
        "--output",
        "json",
    ]);
    assert_eq!(j.code, 3, "{}", j.stderr);
    assert_no_secret(&j, &all);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["min_remaining"], "2h");
    assert_eq!(v["keys_found"], 7);
    assert_eq!(v["distinct_kids"], 5);
    assert_eq!(v["failed"], 5);
    assert_eq!(v["binary_files_skipped"], 1);
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 7);
    let find = |rel: &str, line: u64| {
        let path = root.join(rel).display().to_string();
        findings
            .iter()
            .find(|f| f["path"] == path.as_str() && f["line"] == line)
            .unwrap_or_else(|| panic!("no finding at {rel}:{line}: {v:#}"))
    };
    let f = find("app/config/prod.yaml", 2);
    assert_eq!(f["ok"], false);
    assert_eq!(f["state"], "retired");
    assert_eq!(f["reason"], "retired: v2 replaces it");
    assert_eq!(f["column"], 8);
    assert_eq!(f["kid"], kid_of(&retired));
    assert_eq!(f["environment"], "prod");
    assert_eq!(f["key"], format!("kr_prod_{}_…", kid_of(&retired)));
    assert_eq!(
        f["fingerprint"],
        fingerprint(retired.as_bytes()).to_string()
    );
    assert_eq!(f["server"]["consumer"], "prod/old");
    assert_eq!(f["server"]["version"], 1);
    assert_eq!(f["server"]["replaced_by"], 2);
    let f = find("app/scripts/deploy.sh", 2);
    assert_eq!(f["state"], "unknown");
    assert_eq!(f["reason"], "unknown to the server");
    assert!(f["server"].is_null());
    let f = find("app/config/prod.yaml", 5);
    assert_eq!(f["state"], "revoked");
    assert_eq!(f["server"]["revoke_reason"], "leaked in a CI log");
    assert!(f["server"]["revoked_at"].is_string());
    let f = find("app/batch.env", 1);
    assert_eq!(f["state"], "retiring");
    assert!(f["server"]["deadline"].is_string());
    let f = find("app/.env", 3);
    assert_eq!(f["ok"], true);
    assert_eq!(f["state"], "active");

    s.assert_no_secret_leaked(&[]);
}

#[test]
fn scan_never_reports_all_clear_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = assemble_key("prod", "AAAAAAAAAAAA", "0123456789abcdefghijABCDEFGHIJkl");
    write(dir.path(), "x/.env", format!("K={key}\n").as_bytes());
    let r = harness::cli_offline(&["scan", "x", "--token", "kra_x"], dir.path());
    assert_eq!(r.code, 4, "{}", r.stdout);
    assert!(
        r.stderr.contains("cannot reach the keyroll server"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!r.stdout.contains(secret_of(&key)) && !r.stderr.contains(secret_of(&key)));

    // A path that does not exist is an error, not "no keys".
    let r = harness::cli_offline(&["scan", "missing"], dir.path());
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot scan missing"), "{}", r.stderr);

    // A tree without keys needs no server.
    write(dir.path(), "clean/a.txt", b"nothing here\n");
    let r = harness::cli_offline(&["scan", "clean"], dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("No keyroll keys found in 1 file "),
        "{}",
        r.stdout
    );

    // Bad flags are usage errors.
    let r = harness::cli_offline(&["scan", "clean", "--min-remaining", "soon"], dir.path());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--min-remaining"), "{}", r.stderr);
}

#[test]
fn unreadable_files_are_warnings() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let key = s.consumer("prod/web", &[]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok.env", format!("K={key}\n").as_bytes());
    // A file that cannot be read even by root (tests run as root in CI, where permission bits
    // do not stop reads): the scanning process's own memory file fails with EIO at offset 0.
    let unreadable = "/proc/self/mem";
    let r = s.cli(&["scan", dir.path().to_str().unwrap(), unreadable]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("warning: cannot read {unreadable}")),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("ok.env:1"), "{}", r.stdout);
}

fn get(s: &harness::Server, path: &str, token: bool) -> (u16, serde_json::Value, String) {
    let mut req = harness::http().get(format!("{}{path}", s.url()));
    if token {
        req = req.bearer_auth(s.token());
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default(), ct)
}

#[test]
fn keys_api_answers_by_kid() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let v1 = s.consumer("prod/web", &[]);
    let v2 = s.rotate("prod/web", &["--grace", "1h"]);

    let (status, body, ct) = get(&s, &format!("/v1/keys/{}", kid_of(&v1)), true);
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(body["kid"], kid_of(&v1));
    assert_eq!(body["fingerprint"], fingerprint(v1.as_bytes()).to_string());
    assert_eq!(body["consumer"], "prod/web");
    assert_eq!(body["environment"], "prod");
    assert_eq!(body["version"], 1);
    assert_eq!(body["state"], "retiring");
    assert!(body["deadline"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(body["replaced_by"], 2);
    assert!(body["revoked_at"].is_null() && body["revoke_reason"].is_null());
    assert!(body["expires_at"].is_null());

    let (status, body, _) = get(&s, &format!("/v1/keys/{}", kid_of(&v2)), true);
    assert_eq!(status, 200);
    assert_eq!(body["state"], "active");
    assert_eq!(body["version"], 2);
    assert!(body["deadline"].is_null() && body["replaced_by"].is_null());

    let (status, body, ct) = get(&s, "/v1/keys/ZZZZZZZZZZZZ", true);
    assert_eq!(status, 404, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["kid"], "ZZZZZZZZZZZZ");
    assert_eq!(body["detail"], "no key version has kid ZZZZZZZZZZZZ");
    assert!(body["request_id"].as_str().unwrap().starts_with("rq_"));

    for bad in ["short", "ZZZZZZZZZZZ!", v2.as_str()] {
        let (status, body, ct) = get(&s, &format!("/v1/keys/{bad}"), true);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(body["code"], "invalid_request");
        assert!(!body.to_string().contains(secret_of(&v2)), "{body}");
    }
    let (_, body, _) = get(&s, &format!("/v1/keys/{v2}"), true);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("send only its kid"),
        "{body}"
    );

    let (status, body, _) = get(&s, &format!("/v1/keys/{}", kid_of(&v1)), false);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "missing_credential");

    // The endpoint is documented.
    let (_, doc, _) = get(&s, "/openapi.json", false);
    assert!(doc["paths"]["/v1/keys/{kid}"]["get"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["KeyInfo"].is_object());
}
