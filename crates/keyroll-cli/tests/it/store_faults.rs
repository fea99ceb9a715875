//! The store failing under a running server, and a data dir that lost its database: a full disk
//! (a real small tmpfs), a database file deleted while the server runs, a database emptied,
//! replaced or deleted between runs, and `keyroll init --force`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness;

/// An admin API call: status and problem/answer body.
fn call(s: &harness::Server, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = harness::http()
        .post(format!("{}{path}", s.url()))
        .bearer_auth(s.token())
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

/// `/readyz`: its status code and `status` field, with the `reason` after it when there is one.
fn readyz(s: &harness::Server) -> (u16, String) {
    readyz_at(s, "/readyz")
}

/// `/readyz?for=verify`, as a load balancer in front of forward-auth asks it.
fn readyz_for_verify(s: &harness::Server) -> (u16, String) {
    readyz_at(s, "/readyz?for=verify")
}

fn readyz_at(s: &harness::Server, path: &str) -> (u16, String) {
    let r = harness::http()
        .get(format!("{}{path}", s.url()))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().unwrap();
    let mut said = body["status"].as_str().unwrap_or_default().to_owned();
    if let Some(reason) = body["reason"].as_str() {
        said = format!("{said}: {reason}");
    }
    (status, said)
}

/// A sample's value in `/metrics`.
fn metric(s: &harness::Server, name: &str) -> f64 {
    let text = harness::http()
        .get(format!("{}/metrics", s.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_storage_unavailable(what: &str, (status, body): (u16, serde_json::Value), says: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(body["code"], "storage_unavailable", "{what}: {body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{what}: {detail}");
}

/// A tmpfs of `size` mounted for one test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let line = format!(
                    "SKIPPED: cannot mount a small tmpfs ({why}); a full disk is tested as root \
                     (install: run the tests as root, e.g. `sudo -E cargo test`)"
                );
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                    "{line}"
                );
                println!("{line}");
                eprintln!("{line}");
                None
            }
        }
    }

    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn after_a_full_disk_writes_work_again_without_a_restart() {
    let Some(fs) = SmallFs::mount("6m") else {
        return;
    };
    let data = fs.dir.path().join("data");
    let env = [
        ("KEYROLL_USAGE__FLUSH_INTERVAL", "200ms"),
        ("KEYROLL_USAGE__SWEEP_INTERVAL", "250ms"),
    ];
    let s = harness::start_in_with_env(&data, &env);
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let v1 = s.consumer("prod/app", &["--scope", "read"]);
    assert_eq!(s.cli(&["consumer", "create", "prod/other"]).code, 0);
    assert_eq!(readyz(&s), (200, "ok".to_owned()));

    let filler = fs.fill();
    // The SQLite log may hold a commit or two more; the disk is full once a rotation fails.
    let mut acknowledged = 1;
    let mut refused = None;
    for _ in 0..50 {
        let r = call(&s, "/v1/consumers/prod/app/rotate", "{}");
        if r.0 == 200 || r.0 == 201 {
            acknowledged += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    assert_storage_unavailable("rotate", refused.expect("a refused rotation"), "full");
    let revoke = r#"{"reason": "leaked"}"#;
    for _ in 0..3 {
        assert_storage_unavailable(
            "rotate",
            call(&s, "/v1/consumers/prod/app/rotate", "{}"),
            "full",
        );
        assert_storage_unavailable(
            "revoke",
            call(&s, "/v1/consumers/prod/app/versions/1/revoke", revoke),
            "full",
        );
        assert_storage_unavailable(
            "disable",
            call(&s, "/v1/consumers/prod/other/disable", "{}"),
            "full",
        );
    }
    // Still ready: verification goes on from memory; the store's state is the reason.
    let (status, why) = readyz(&s);
    assert_eq!(status, 503, "{why}");
    assert_eq!(
        readyz_for_verify(&s).0,
        200,
        "verification goes on from memory"
    );
    assert!(
        why.starts_with("degraded: ") && why.contains("full"),
        "{why}"
    );
    wait_for("keyroll_store_up 0", || {
        metric(&s, "keyroll_store_up") == 0.0
    });
    // Traffic: its usage cannot be flushed while the disk is full.
    let failures = metric(&s, "keyroll_usage_flush_failures_total");
    assert_eq!(
        s.cli(&["verify", &v1, "--count-as-use"]).code,
        0,
        "verification works from memory"
    );
    wait_for("a failed usage flush", || {
        metric(&s, "keyroll_usage_flush_failures_total") > failures
    });

    // The batch of that traffic stays in memory while flushes fail.
    let flushed = metric(&s, "keyroll_usage_flushed_versions_total");
    std::fs::remove_file(&filler).unwrap();
    // No restart: readiness, the gauge and every write come back as soon as there is room.
    wait_for("/readyz ok", || readyz(&s) == (200, "ok".to_owned()));
    wait_for("keyroll_store_up 1", || {
        metric(&s, "keyroll_store_up") == 1.0
    });
    let r = call(&s, "/v1/consumers/prod/app/rotate", "{}");
    assert!(
        r.0 == 200 || r.0 == 201,
        "rotate after the disk has room: {}",
        r.1
    );
    acknowledged += 1;
    let r = call(&s, "/v1/consumers/prod/app/versions/1/revoke", revoke);
    assert_eq!(r.0, 200, "revoke after the disk has room: {}", r.1);
    let r = call(&s, "/v1/consumers/prod/other/disable", "{}");
    assert_eq!(r.0, 200, "disable after the disk has room: {}", r.1);
    wait_for("a usage flush", || {
        metric(&s, "keyroll_usage_flushed_versions_total") > flushed
    });

    // Nothing acknowledged was lost: a restart reads every version and the revocation back.
    assert_eq!(s.terminate(), Some(0));
    let s = harness::start_in_with_env(&data, &env);
    let show = s.cli(&["--output", "json", "consumer", "show", "prod/app"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let versions = shown["versions"].as_array().unwrap();
    assert_eq!(versions.len(), acknowledged, "{shown}");
    assert_eq!(versions[0]["state"], "revoked", "{shown}");
    assert_ne!(s.cli(&["verify", &v1]).code, 0, "v1 stays revoked");
    let other = s.cli(&["--output", "json", "consumer", "show", "prod/other"]);
    assert!(
        other.stdout.contains("\"disabled\": true") || other.stdout.contains("\"disabled\":true"),
        "{}",
        other.stdout
    );
}

#[test]
fn a_database_deleted_while_running_fails_readiness_and_refuses_writes() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/app", &[]);
    let db = s.data_dir().join("keyroll.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let (status, why) = readyz(&s);
    assert_eq!(status, 503, "{why}");
    assert_eq!(
        readyz_for_verify(&s).0,
        200,
        "verification goes on from memory"
    );
    assert!(
        why.starts_with("degraded: ")
            && why.contains(&db.display().to_string())
            && why.contains("deleted"),
        "{why}"
    );
    let r = call(&s, "/v1/consumers/prod/app/rotate", "{}");
    assert_storage_unavailable("rotate", r.clone(), &db.display().to_string());
    assert_storage_unavailable("rotate", r, "deleted");
    let cli = s.cli(&["rotate", "prod/app"]);
    assert_ne!(cli.code, 0);
    assert!(
        !std::fs::exists(&db).unwrap(),
        "no new file appears in its place"
    );
}

/// The data dir of a stopped server that made `prod/app`, and its admin token file's bytes.
fn stopped_installation() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = harness::start_in(&data);
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/app", &[]);
    assert_eq!(s.terminate(), Some(0));
    let token = std::fs::read(data.join("admin-token")).unwrap();
    (dir, data, token)
}

fn serve(data: &Path, cwd: &Path) -> harness::Run {
    harness::cli_offline(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        cwd,
    )
}

#[test]
fn an_emptied_or_deleted_database_does_not_start_a_new_installation() {
    for damage in ["truncate", "delete"] {
        let (dir, data, token) = stopped_installation();
        let db = data.join("keyroll.db");
        match damage {
            "truncate" => std::fs::File::create(&db).map(drop).unwrap(),
            _ => std::fs::remove_file(&db).unwrap(),
        }
        let r = serve(&data, dir.path());
        assert_ne!(r.code, 0, "{damage}: {}", r.stdout);
        let expected = if damage == "truncate" {
            "is empty"
        } else {
            "does not exist"
        };
        for words in [
            "refusing to start a new installation",
            &db.display().to_string(),
            expected,
            "admin-token",
            "keyroll init --force",
        ] {
            assert!(
                r.stderr.contains(words),
                "{damage}: no {words:?} in {}",
                r.stderr
            );
        }
        assert!(!r.stdout.contains("first start"), "{damage}: {}", r.stdout);
        assert_eq!(
            std::fs::read(data.join("admin-token")).unwrap(),
            token,
            "{damage}: the admin token file is untouched"
        );
        if damage == "delete" {
            assert!(!db.exists(), "no new database is created");
        }
    }
}

#[test]
fn init_force_starts_a_new_installation_and_says_what_it_moved_aside() {
    let (dir, data, token) = stopped_installation();
    std::fs::File::create(data.join("keyroll.db")).unwrap();
    let plain = harness::cli_offline(&["init", "--data-dir", data.to_str().unwrap()], dir.path());
    assert_ne!(plain.code, 0);
    assert!(plain.stderr.contains("init --force"), "{}", plain.stderr);

    let forced = harness::cli_offline(
        &["init", "--force", "--data-dir", data.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(
        forced.stderr.contains("admin-token to ") && forced.stderr.contains(".replaced-"),
        "{}",
        forced.stderr
    );
    let new_token = std::fs::read(data.join("admin-token")).unwrap();
    assert_ne!(new_token, token);
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("admin-token.replaced-")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(
        kept,
        [token],
        "the old token is kept aside, not overwritten"
    );

    let s = harness::start_in(&data);
    assert_eq!(s.cli(&["env", "list"]).code, 0, "the new token works");
    assert!(
        s.events("admin_token.created").is_empty(),
        "init made the token"
    );
}

#[test]
fn another_installations_database_is_refused() {
    let (dir, data, token) = stopped_installation();
    let (_other_dir, other, _) = stopped_installation();
    // The database with its log, if it has one; this dir's own log would be replayed into it.
    for suffix in ["", "-wal", "-shm"] {
        let from = other.join(format!("keyroll.db{suffix}"));
        let to = data.join(format!("keyroll.db{suffix}"));
        let _ = std::fs::remove_file(&to);
        if suffix != "-shm" && from.exists() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let r = serve(&data, dir.path());
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("belongs to installation") && r.stderr.contains("installation"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(data.join("admin-token")).unwrap(), token);
}

#[test]
fn a_master_key_other_than_the_databases_is_refused_at_start() {
    let (dir, data, _) = stopped_installation();
    let key = data.join("master.key");
    let first = std::fs::read(&key).unwrap();
    // Another 32 bytes, as a node given the wrong KEYROLL_MASTER_KEY would have.
    let other: Vec<u8> = first.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&key, &other).unwrap();
    let r = serve(&data, dir.path());
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("master key differs") && r.stderr.contains("KEYROLL_MASTER_KEY"),
        "{}",
        r.stderr
    );
    // The key itself appears nowhere in the message.
    assert!(!r.stderr.contains("AAEC"), "{}", r.stderr);
    // The right key starts again.
    std::fs::write(&key, &first).unwrap();
    let s = harness::start_in(&data);
    assert_eq!(s.cli(&["consumer", "show", "prod/app"]).code, 0);
}

#[test]
fn a_missing_ca_master_key_file_refuses_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("nowhere").join("master.key");
    let config = dir.path().join("keyroll.toml");
    std::fs::write(
        &config,
        format!("[ca]\nmaster_key_file = {:?}\n", missing.to_str().unwrap()),
    )
    .unwrap();
    let run = |config: &Path| {
        harness::cli_offline(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            dir.path(),
        )
    };
    let r = run(&config);
    assert_ne!(r.code, 0);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let refusal: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(missing.to_str().unwrap()))
        .collect();
    assert_eq!(refusal.len(), 1, "{}", r.stderr);
    assert!(refusal[0].contains("KEYROLL_MASTER_KEY"), "{}", r.stderr);
    assert!(!missing.exists(), "the file is never created");
    // A file of the wrong size is refused the same way.
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::write(&missing, [1u8; 16]).unwrap();
    std::fs::set_permissions(
        &missing,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let r = run(&config);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("holds 16 bytes"), "{}", r.stderr);
}

#[test]
fn a_fresh_data_dir_starts_with_no_setup_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = harness::start_in(&data);
    assert_eq!(s.events("admin_token.created").len(), 1);
    let marker = std::fs::read_to_string(data.join("installation")).unwrap();
    assert!(marker.contains("id="), "{marker}");
    let token = s.token();
    assert_eq!(s.terminate(), Some(0));
    let s = harness::start_in(&data);
    assert!(s.events("admin_token.created").is_empty());
    assert_eq!(s.token(), token);
    assert_eq!(
        std::fs::read_to_string(data.join("installation")).unwrap(),
        marker
    );
    assert_eq!(s.cli(&["env", "list"]).code, 0);
}
