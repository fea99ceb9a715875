//! Bad input of every kind gets a precise 4xx or one line and a non-zero exit: never a panic,
//! never a 500.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness;

fn admin(
    s: &harness::Server,
    method: reqwest::Method,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value, String) {
    let r = harness::http()
        .request(method, format!("{}{path}", s.url()))
        .bearer_auth(s.token())
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ct,
    )
}

#[test]
fn admin_api_rejects_bad_input_with_problem_json() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let post = reqwest::Method::POST;
    let cases: Vec<(reqwest::Method, &str, &[u8], u16, &str)> = vec![
        (
            post.clone(),
            "/v1/environments",
            b"{not json",
            400,
            "invalid JSON",
        ),
        (
            post.clone(),
            "/v1/environments",
            b"{\"name\":\"Prod_1\"}",
            400,
            "invalid environment name",
        ),
        (
            post.clone(),
            "/v1/environments",
            b"{\"name\":\"prod\"}",
            409,
            "already exists",
        ),
        (
            post.clone(),
            "/v1/environments",
            b"{\"name\":\"x\",\"bogus\":1}",
            400,
            "unknown field",
        ),
        (
            post.clone(),
            "/v1/consumers",
            b"{\"environment\":\"nope\",\"name\":\"a\"}",
            404,
            "keyroll env create nope",
        ),
        (
            post.clone(),
            "/v1/consumers",
            b"{\"environment\":\"prod\",\"name\":\"-bad\"}",
            400,
            "invalid consumer name",
        ),
        (
            post.clone(),
            "/v1/consumers",
            b"{\"environment\":\"prod\",\"name\":\"app\"}",
            409,
            "already exists",
        ),
        (
            post.clone(),
            "/v1/consumers",
            b"{\"environment\":\"prod\",\"name\":\"b\",\"scopes\":[\"a b\"]}",
            400,
            "invalid scope",
        ),
        (
            post.clone(),
            "/v1/consumers/prod/app/rotate",
            b"{\"grace\":\"two days\"}",
            400,
            "grace: invalid duration",
        ),
        (
            post.clone(),
            "/v1/consumers/prod/ghost/rotate",
            b"{}",
            404,
            "prod/ghost does not exist",
        ),
        (
            post.clone(),
            "/v1/consumers/prod/app/versions/vx/retire",
            b"",
            400,
            "invalid version",
        ),
        (
            post.clone(),
            "/v1/consumers/prod/app/versions/9/retire",
            b"",
            404,
            "no version v9",
        ),
        (
            post.clone(),
            "/v1/consumers/prod/app/versions/1/revoke",
            b"{\"reason\":\" \"}",
            400,
            "needs a reason",
        ),
        (
            reqwest::Method::GET,
            "/v1/consumers?environment=BAD",
            b"",
            400,
            "invalid environment",
        ),
        (
            reqwest::Method::GET,
            "/v1/nothing-here",
            b"",
            404,
            "no such endpoint",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/environments",
            b"",
            405,
            "not allowed",
        ),
        (
            post.clone(),
            "/v1/verify",
            &[0xff, 0xfe, 0x00],
            400,
            "invalid JSON",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let (st, problem, ct) = admin(&s, method.clone(), path, body);
        assert_eq!(st, status, "{method} {path}: {problem}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(needle),
            "{method} {path}: {detail:?} lacks {needle:?}"
        );
        assert!(problem["request_id"].is_string());
    }
    // A huge body.
    let huge = vec![b'a'; 1024 * 1024];
    let (st, problem, _) = admin(&s, post, "/v1/environments", &huge);
    assert_eq!(st, 413, "{problem}");
}

#[test]
fn admin_auth_failures_are_explained() {
    let s = harness::start();
    let url = format!("{}/v1/environments", s.url());
    let cases = [
        (None, 401, "missing_credential"),
        (Some("Basic abc"), 401, "malformed_credential"),
        (Some("Bearer kra_nope"), 401, "malformed_credential"),
        (
            Some("Bearer kra_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
            401,
            "invalid_token",
        ),
    ];
    for (auth, status, code) in cases {
        let mut req = harness::http().get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), status, "{auth:?}");
        assert!(r.headers().get("www-authenticate").is_some(), "{auth:?}");
        let p: serde_json::Value = r.json().unwrap();
        assert_eq!(p["code"], code, "{auth:?}");
    }
    // The CLI says the same in one line.
    let out = std::process::Command::new(harness::BIN)
        .args([
            "env",
            "list",
            "--server",
            &s.url(),
            "--token",
            "kra_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        ])
        .output()
        .unwrap();
    // A token the server refuses is an authentication failure (exit 5).
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: admin token AAAAAAAAAAAA is not valid"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn forward_auth_survives_garbage_headers() {
    let s = harness::start();
    let addr = s.addr.clone();
    let send = |raw: &[u8]| -> String {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // A non-UTF-8 key.
    let r = send(b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: kr_prod_\xff\xfe\xfd\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(r.contains("x-keyroll-code: malformed_credential"), "{r}");
    // A huge header: refused by the HTTP layer with a 4xx, the server keeps running.
    let mut big =
        b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: ".to_vec();
    big.extend(std::iter::repeat_n(b'k', 200_000));
    big.extend(b"\r\n\r\n");
    let r = send(&big);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
    // A long but acceptable key-shaped value.
    let long = format!(
        "GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: kr_prod_{}\r\n\r\n",
        "a".repeat(5000)
    );
    assert!(send(long.as_bytes()).contains("malformed_credential"));
    let health = harness::http()
        .get(format!("{}/healthz", s.url()))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Exit codes: 4 server unreachable, 2 invalid arguments or configuration.
    let cases: [(&[&str], &str, i32); 6] = [
        (
            &["env", "list", "--token", "kra_x"],
            "cannot reach the keyroll server",
            4,
        ),
        (
            &["rotate", "prod/app", "--grace", "soon"],
            "invalid duration \"soon\"",
            2,
        ),
        (&["consumer", "create", "prod"], "expected ENV/NAME", 2),
        (
            &["revoke", "prod/app", "vX", "--reason", "r"],
            "invalid version",
            2,
        ),
        (
            &["verify", "x", "--env", "Prod"],
            "invalid environment name",
            2,
        ),
        (&["serve", "--listen", "nonsense"], "listen", 2),
    ];
    for (args, needle, code) in cases {
        let r = harness::cli_offline(args, dir.path());
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(needle),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            r.stderr
        );
    }
    // Offline fingerprint works without a server and says why a key is malformed.
    let r = harness::cli_offline(&["fingerprint", "kr_prod_oops"], dir.path());
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.starts_with("fp_") && r.stderr.contains("bad length"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn serve_fails_clearly_on_bad_data_dir_busy_port_and_corrupt_db() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let serve = |args: &[&str]| {
        harness::cli_offline(
            &[&["serve", "--log-format", "json"], args].concat(),
            dir.path(),
        )
    };

    let r = serve(&[
        "--data-dir",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("keyroll.db"), vec![0x42; 8192]).unwrap();
    let r = serve(&[
        "--data-dir",
        corrupt.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("keyroll.db"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(corrupt.join("keyroll.db")).unwrap(),
        vec![0x42; 8192],
        "the file is left as it was"
    );

    let s = harness::start();
    let r = serve(&[
        "--data-dir",
        dir.path().join("d2").to_str().unwrap(),
        "--listen",
        &s.addr,
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot listen on") && r.stderr.contains("--listen"),
        "{}",
        r.stderr
    );
}

/// `log.level = "warning"` used to be read as "log only the target named warning", which
/// turned all logging off without a word.
#[test]
fn serve_refuses_a_log_level_that_is_not_a_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyroll.toml");
    std::fs::write(&config, "[log]\nlevel = \"keyroll=loud\"\n").unwrap();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case<'_>; 3] = [
        (&[("KEYROLL_LOG__LEVEL", "warning")], &[], "\"warning\""),
        (
            &[("KEYROLL_LOG__LEVEL", "info,,debug")],
            &[],
            "empty directive",
        ),
        (&[], &["--config", config.to_str().unwrap()], "\"loud\""),
    ];
    for (env, args, needle) in cases {
        let mut child = std::process::Command::new(harness::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started with a bad log.level ({env:?} {args:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success(), "{env:?} {args:?}: {err}");
        assert!(
            err.contains("log.level")
                && err.contains(needle)
                && err.contains("trace, debug, info, warn, error or off"),
            "{env:?} {args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before the configuration was checked"
    );
}

#[test]
fn a_body_that_is_not_a_json_object_is_refused_by_every_endpoint_and_changes_nothing() {
    let s = harness::start();
    s.cli(&["env", "create", "staging"]);
    s.cli(&["env", "create", "prod", "--rotate-after", "staging"]);
    s.consumer("prod/app", &["--owner", "team"]);
    let state = || {
        let audit = s.cli(&["audit", "list", "--output", "json"]).stdout;
        let consumer = s
            .cli(&["consumer", "show", "prod/app", "--output", "json"])
            .stdout;
        let tokens = s.cli(&["token", "list", "--output", "json"]).stdout;
        (audit, consumer, tokens)
    };
    let before = state();
    let post = reqwest::Method::POST;
    let patch = reqwest::Method::PATCH;
    let writes = [
        (post.clone(), "/v1/environments"),
        (patch.clone(), "/v1/environments/prod"),
        (post.clone(), "/v1/consumers"),
        (patch, "/v1/consumers/prod/app"),
        (post.clone(), "/v1/consumers/prod/app/rotate"),
        (post.clone(), "/v1/consumers/prod/app/disable"),
        (post.clone(), "/v1/consumers/prod/app/versions/1/revoke"),
        (post.clone(), "/v1/consumers/prod/app/versions/1/retire"),
        (post.clone(), "/v1/tokens"),
        (post, "/v1/verify"),
    ];
    // serde would fill a struct from an array by position: `[null, null]` would mean "clear the
    // ordering rule" to PATCH /v1/environments.
    for body in ["[null, null]", "[]", "\"x\"", "7", "null", "true"] {
        for (method, path) in &writes {
            let (status, problem, ct) = admin(&s, method.clone(), path, body.as_bytes());
            assert_eq!(status, 400, "{method} {path} {body}: {problem}");
            assert_eq!(ct, "application/problem+json", "{method} {path}");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("expected an object"),
                "{method} {path} {body}: {problem}"
            );
        }
    }
    assert_eq!(state(), before, "nothing was written");
    let envs = s.cli(&["env", "list", "--output", "json"]);
    assert!(
        envs.stdout.contains("\"rotate_after\": \"staging\""),
        "{}",
        envs.stdout
    );
}
