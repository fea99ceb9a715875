//! Admin tokens end to end: `keyroll token create|list|revoke|rotate` against a real server —
//! scopes do exactly what they say, expiry, revocation, rotation with an overlap, the first
//! token's own lifecycle, no escalation, precise rejections with their log lines, audit
//! entries, and no token secret anywhere but the once-shown line.

use std::time::Duration;

use crate::harness::{self, Server};

/// A test's view of the server: the CLI with a given token, and every token secret seen.
struct Tokens<'a> {
    s: &'a Server,
    secrets: Vec<String>,
    /// CLI output except the once-shown token lines.
    transcript: Vec<String>,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a Server) -> Tokens<'a> {
        let first = s.token();
        Tokens {
            s,
            secrets: vec![secret_of(&first)],
            transcript: Vec::new(),
        }
    }

    /// Runs the CLI with `token` (`None`: the data dir's admin-token file).
    fn cli(&mut self, token: Option<&str>, args: &[&str]) -> harness::Run {
        let mut all: Vec<&str> = Vec::new();
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend_from_slice(args);
        let run = self.s.cli(&all);
        for line in run.stdout.lines().chain(run.stderr.lines()) {
            let t = line.trim();
            if t.starts_with("kra_") && !t.contains(' ') {
                self.secrets.push(secret_of(t));
            } else if let Some(rest) = t.strip_prefix("\"token\": \"kra_") {
                self.secrets.push(secret_of(&format!(
                    "kra_{}",
                    rest.trim_end_matches([',', '"'])
                )));
            } else {
                self.transcript.push(line.to_owned());
            }
        }
        run
    }

    /// `token create` (or `rotate`) in JSON mode; returns (plaintext, id, answer).
    fn issue(&mut self, token: Option<&str>, args: &[&str]) -> (String, String, serde_json::Value) {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let run = self.cli(token, &all);
        assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let plain = v["token"].as_str().unwrap().to_owned();
        let id = v["info"]["id"].as_str().unwrap().to_owned();
        assert!(plain.starts_with(&format!("kra_{id}_")), "{plain} / {id}");
        (plain, id, v)
    }
}

fn secret_of(token: &str) -> String {
    token.rsplit('_').next().unwrap().to_owned()
}

/// A direct API call with a raw `Authorization` header value; returns (status, request id,
/// body).
fn call(s: &Server, method: &str, path: &str, auth: &str) -> (u16, String, serde_json::Value) {
    call_with(s, method, path, auth, "{}")
}

fn call_with(
    s: &Server,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> (u16, String, serde_json::Value) {
    let request_id = format!("rq_test_{:x}", fastish_id());
    let r = harness::http()
        .request(method.parse().unwrap(), format!("{}{path}", s.url()))
        .header("authorization", auth)
        .header("x-request-id", &request_id)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json().unwrap_or(serde_json::Value::Null);
    (status, request_id, body)
}

#[allow(clippy::disallowed_methods)] // a unique name, not a time anything decides on
fn fastish_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The `admin.auth` line of a request, waiting for it to be written.
fn auth_line(s: &Server, request_id: &str) -> serde_json::Value {
    s.event_line("admin.auth", request_id)
}

/// Asserts a rejection: status, code, and a log line with the request's facts.
fn assert_rejected(
    s: &Server,
    (status, request_id, body): &(u16, String, serde_json::Value),
    want_status: u16,
    code: &str,
    token_id: Option<&str>,
    uri: &str,
) {
    assert_eq!(*status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    let line = auth_line(s, request_id);
    assert_eq!(line["code"], code, "{line}");
    assert_eq!(line["remote_addr"], "127.0.0.1", "{line}");
    assert!(
        line["peer_addr"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert!(line["method"].is_string(), "{line}");
    assert_eq!(line["uri"], uri, "{line}");
    assert_eq!(line["detail"], body["detail"], "{line}");
    if let Some(id) = token_id {
        assert_eq!(line["token_id"], id, "{line}");
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn scoped_tokens_do_exactly_their_scope_and_nothing_more() {
    let s = harness::start();
    let mut t = Tokens::new(&s);
    assert_eq!(t.cli(None, &["env", "create", "prod"]).code, 0);
    let key = s.consumer("prod/app", &[]);
    let kid = key.split('_').nth(2).unwrap().to_owned();

    // The least scope for `keyroll scan` in CI is keys:read, as the README says.
    let (scan, scan_id, created) = t.issue(
        None,
        &[
            "token",
            "create",
            "--scope",
            "keys:read",
            "--name",
            "ci-scan",
        ],
    );
    assert_eq!(created["info"]["scopes"], serde_json::json!(["keys:read"]));
    assert_eq!(created["info"]["state"], "valid");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), format!("API_KEY={key}\n")).unwrap();
    let scanned = t.cli(
        Some(&scan),
        &["scan", dir.path().to_str().unwrap(), "--output", "json"],
    );
    assert_eq!(scanned.code, 0, "{}{}", scanned.stdout, scanned.stderr);
    assert!(scanned.stdout.contains(&kid), "{}", scanned.stdout);
    let (status, _, info) = call(&s, "GET", &format!("/v1/keys/{kid}"), &bearer(&scan));
    assert_eq!((status, info["consumer"].as_str()), (200, Some("prod/app")));
    // … and nothing else: listing consumers is 403 with a precise line.
    let denied = t.cli(Some(&scan), &["consumer", "list"]);
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains("insufficient_scope"),
        "{}",
        denied.stderr
    );
    let r = call(&s, "GET", "/v1/consumers", &bearer(&scan));
    assert_rejected(
        &s,
        &r,
        403,
        "insufficient_scope",
        Some(&scan_id),
        "/v1/consumers",
    );
    assert!(
        r.2["detail"].as_str().unwrap().contains("consumers:read"),
        "{}",
        r.2
    );
    // A token without tokens:write cannot make tokens.
    let r = call_with(
        &s,
        "POST",
        "/v1/tokens",
        &bearer(&scan),
        r#"{"name": "more", "scopes": ["keys:read"]}"#,
    );
    assert_rejected(
        &s,
        &r,
        403,
        "insufficient_scope",
        Some(&scan_id),
        "/v1/tokens",
    );

    // verify-only and read-only tokens.
    let (verifier, _, _) = t.issue(None, &["token", "create", "--scope", "verify"]);
    let ok = t.cli(Some(&verifier), &["verify", &key]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert_ne!(t.cli(Some(&verifier), &["status"]).code, 0);
    let (reader, _, _) = t.issue(None, &["token", "create", "--scope", "consumers:read"]);
    assert_eq!(t.cli(Some(&reader), &["status"]).code, 0);
    // consumers:read includes what keys:read shows.
    assert_eq!(
        call(&s, "GET", &format!("/v1/keys/{kid}"), &bearer(&reader)).0,
        200
    );
    assert_ne!(t.cli(Some(&reader), &["rotate", "prod/app"]).code, 0);

    // No escalation: a token manager can give only what it holds.
    let (manager, manager_id, _) = t.issue(
        None,
        &[
            "token",
            "create",
            "--scope",
            "tokens:write",
            "--scope",
            "keys:read",
        ],
    );
    let refused = t.cli(
        Some(&manager),
        &["token", "create", "--scope", "consumers:write"],
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("scope_escalation"),
        "{}",
        refused.stderr
    );
    let refused = t.cli(Some(&manager), &["token", "create", "--scope", "admin"]);
    assert!(
        refused.stderr.contains("scope_escalation"),
        "{}",
        refused.stderr
    );
    let (_, minted_id, _) = t.issue(Some(&manager), &["token", "create", "--scope", "keys:read"]);
    // Nor rotate or revoke a stronger token (rotating would hand out its scopes).
    let first_id = s.token().split('_').nth(1).unwrap().to_owned();
    let refused = t.cli(Some(&manager), &["token", "rotate", &first_id]);
    assert!(
        refused.stderr.contains("scope_escalation"),
        "{}",
        refused.stderr
    );
    let refused = t.cli(Some(&manager), &["token", "revoke", &first_id, "--force"]);
    assert!(
        refused.stderr.contains("scope_escalation"),
        "{}",
        refused.stderr
    );
    // The manager lists tokens (tokens:write includes tokens:read); never a secret.
    let listed = t.cli(Some(&manager), &["token", "list", "--output", "json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let list: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{list}");
    let minted = items
        .iter()
        .find(|i| i["id"] == minted_id.as_str())
        .unwrap();
    assert_eq!(minted["created_by"], manager_id.as_str());
    let table = t.cli(None, &["token", "list"]);
    assert!(
        table.stdout.contains("ci-scan") && table.stdout.contains("SCOPES"),
        "{}",
        table.stdout
    );

    // Bad input is a precise 4xx.
    let bad = t.cli(None, &["token", "create", "--scope", "everything"]);
    assert!(bad.stderr.contains("invalid_scope"), "{}", bad.stderr);
    let bad = t.cli(
        None,
        &["token", "create", "--scope", "verify", "--expires-in", "0"],
    );
    assert!(bad.stderr.contains("invalid_duration"), "{}", bad.stderr);
    let pasted = format!("leaked {}", s.token());
    let bad = t.cli(None, &["token", "revoke", &minted_id, "--reason", &pasted]);
    assert!(bad.stderr.contains("secret_in_text"), "{}", bad.stderr);

    // Audit: one entry per creation, actor = the calling token, request id and address,
    // and no secret.
    let entries = audit(&s);
    let created: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "admin_token.created" && e.actor != "system")
        .collect();
    assert_eq!(created.len(), 5, "{entries:#?}");
    let by_manager = created
        .iter()
        .find(|e| e.target == format!("admin token {minted_id}"))
        .unwrap();
    assert_eq!(by_manager.actor, manager_id);
    assert!(
        by_manager
            .request_id
            .as_deref()
            .is_some_and(|r| r.starts_with("rq_"))
    );
    assert_eq!(by_manager.remote_addr.as_deref(), Some("127.0.0.1"));
    t.assert_no_secret_leaked(&entries);
}

#[test]
fn expiry_revocation_and_rotation_with_overlap() {
    let s = harness::start();
    let mut t = Tokens::new(&s);
    let first = s.token();
    let first_id = first.split('_').nth(1).unwrap().to_owned();

    // Expiry.
    let (short, short_id, v) = t.issue(
        None,
        &[
            "token",
            "create",
            "--scope",
            "consumers:read",
            "--expires-in",
            "2s",
        ],
    );
    assert!(v["info"]["expires_at"].is_string(), "{v}");
    assert_eq!(call(&s, "GET", "/v1/status", &bearer(&short)).0, 200);
    std::thread::sleep(Duration::from_millis(2_300));
    let r = call(&s, "GET", "/v1/status", &bearer(&short));
    assert_rejected(&s, &r, 401, "token_expired", Some(&short_id), "/v1/status");
    assert!(
        r.2["detail"].as_str().unwrap().contains("expired at"),
        "{}",
        r.2
    );
    assert!(
        t.cli(Some(&short), &["status"])
            .stderr
            .contains("token_expired")
    );

    // Revocation: the next request is refused, with the reason.
    let (doomed, doomed_id, _) = t.issue(None, &["token", "create", "--scope", "consumers:read"]);
    assert_eq!(call(&s, "GET", "/v1/status", &bearer(&doomed)).0, 200);
    let revoked = t.cli(
        None,
        &["token", "revoke", &doomed_id, "--reason", "laptop stolen"],
    );
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let r = call(&s, "GET", "/v1/status", &bearer(&doomed));
    assert_rejected(&s, &r, 401, "token_revoked", Some(&doomed_id), "/v1/status");
    assert!(
        r.2["detail"].as_str().unwrap().contains("laptop stolen"),
        "{}",
        r.2
    );
    let again = t.cli(None, &["token", "revoke", &doomed_id]);
    assert!(again.stderr.contains("already_revoked"), "{}", again.stderr);
    // A reason with quotes and non-ASCII text still gives a well-formed challenge.
    let (odd, odd_id, _) = t.issue(None, &["token", "create", "--scope", "verify"]);
    let revoked = t.cli(
        None,
        &[
            "token",
            "revoke",
            &odd_id,
            "--reason",
            "he said \"oops\" – é",
        ],
    );
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let r = harness::http()
        .get(format!("{}/v1/tokens", s.url()))
        .bearer_auth(&odd)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"keyroll-admin\", error=\"invalid_token\"")
            && challenge.contains("he said 'oops'"),
        "{challenge}"
    );
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("he said \"oops\" – é"),
        "{body}"
    );

    // Rotation with an overlap: both work inside the window, only the new one after it.
    let (old, old_id, _) = t.issue(
        None,
        &[
            "token",
            "create",
            "--scope",
            "consumers:read",
            "--name",
            "dash",
        ],
    );
    let (new, new_id, v) = t.issue(None, &["token", "rotate", &old_id, "--overlap", "3s"]);
    assert_eq!(v["info"]["name"], "dash");
    assert_eq!(v["info"]["scopes"], serde_json::json!(["consumers:read"]));
    assert_eq!(v["replaces"]["state"], "overlap");
    assert_eq!(v["replaces"]["replaced_by"], new_id.as_str());
    assert_eq!(call(&s, "GET", "/v1/status", &bearer(&old)).0, 200);
    assert_eq!(call(&s, "GET", "/v1/status", &bearer(&new)).0, 200);
    let twice = t.cli(None, &["token", "rotate", &old_id]);
    assert!(
        twice.stderr.contains("token_not_rotatable"),
        "{}",
        twice.stderr
    );
    std::thread::sleep(Duration::from_millis(3_300));
    let r = call(&s, "GET", "/v1/status", &bearer(&old));
    assert_rejected(&s, &r, 401, "token_replaced", Some(&old_id), "/v1/status");
    assert!(r.2["detail"].as_str().unwrap().contains(&new_id), "{}", r.2);
    assert_eq!(call(&s, "GET", "/v1/status", &bearer(&new)).0, 200);

    // The first token: revoking the last admin token is refused unless forced …
    let refused = t.cli(None, &["token", "revoke", &first_id]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("last_admin_token"),
        "{}",
        refused.stderr
    );
    assert_eq!(call(&s, "GET", "/v1/tokens", &bearer(&first)).0, 200);
    // … it can be rotated (overlap 0: at once) …
    let (admin2, admin2_id, _) = t.issue(None, &["token", "rotate", &first_id, "--overlap", "0"]);
    let r = call(&s, "GET", "/v1/tokens", &bearer(&first));
    assert_rejected(&s, &r, 401, "token_replaced", Some(&first_id), "/v1/tokens");
    // … and its successor revoked once another admin token exists.
    let (admin3, _, _) = t.issue(Some(&admin2), &["token", "create", "--scope", "admin"]);
    let done = t.cli(
        Some(&admin3),
        &["token", "revoke", &admin2_id, "--reason", "handover"],
    );
    assert_eq!(done.code, 0, "{}", done.stderr);
    let r = call(&s, "GET", "/v1/tokens", &bearer(&admin2));
    assert_rejected(&s, &r, 401, "token_revoked", Some(&admin2_id), "/v1/tokens");
    // The table shows each token's state.
    let table = t.cli(Some(&admin3), &["token", "list"]);
    for word in ["expired", "revoked: laptop stolen", "replaced by", "valid"] {
        assert!(table.stdout.contains(word), "{word}: {}", table.stdout);
    }

    // Audit entries for each revoke and rotate, by the calling token.
    let entries = audit(&s);
    let revokes: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "admin_token.revoked")
        .collect();
    assert_eq!(revokes.len(), 3, "{entries:#?}");
    assert!(
        revokes.iter().any(
            |e| e.target == format!("admin token {admin2_id}") && e.detail.contains("handover")
        )
    );
    let rotations: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "admin_token.rotated")
        .collect();
    assert_eq!(rotations.len(), 2, "{entries:#?}");
    let first_rotation = rotations
        .iter()
        .find(|e| e.target == format!("admin token {first_id}"))
        .unwrap();
    assert_eq!(first_rotation.actor, first_id);
    assert!(first_rotation.detail.contains(&admin2_id));
    t.assert_no_secret_leaked(&entries);
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let s = harness::start();
    let token = s.token();
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let (status, _, body) = call(&s, "GET", "/v1/tokens", &format!("{scheme} {token}"));
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _, _) = call(&s, "GET", "/v1/tokens", &format!("  bearer \t {token}  "));
    assert_eq!(status, 200);
    for (auth, detail) in [
        ("Basic dXNlcjpwYXNz", "not Bearer"),
        ("Bearer", "carries no token"),
        ("Bearer a b", "exactly one token"),
    ] {
        let r = call(&s, "GET", "/v1/tokens", auth);
        assert_rejected(&s, &r, 401, "malformed_credential", None, "/v1/tokens");
        assert!(r.2["detail"].as_str().unwrap().contains(detail), "{}", r.2);
    }
    // Behind a trusted proxy (loopback is trusted by default) the line names the forwarded
    // client, and the peer separately.
    let r = harness::http()
        .get(format!("{}/v1/tokens", s.url()))
        .header("authorization", "Basic eA==")
        .header("x-request-id", "rq_test_forwarded")
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let line = auth_line(&s, "rq_test_forwarded");
    assert_eq!(line["remote_addr"], "203.0.113.7", "{line}");
    assert!(
        line["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["method"], "GET", "{line}");
    let wrong = format!("Bearer {}", &token[..token.len() - 1]);
    let wrong = format!("{wrong}{}", if token.ends_with('A') { 'B' } else { 'A' });
    let id = token.split('_').nth(1).unwrap();
    let r = call(&s, "GET", "/v1/tokens", &wrong);
    assert_rejected(&s, &r, 401, "invalid_token", Some(id), "/v1/tokens");
}

/// The audit log, read from the database behind the server's back.
fn audit(s: &Server) -> Vec<keyroll_store::AuditRecord> {
    let path = s.data_dir().join("keyroll.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use keyroll_store::Store;
            let store = keyroll_store::SqliteStore::open(&path).await.unwrap();
            store.list_audit(1_000).await.unwrap()
        })
}

impl Tokens<'_> {
    /// No token secret in the server log, the CLI output (outside the once-shown line), the
    /// audit entries or the database files.
    fn assert_no_secret_leaked(&self, audit: &[keyroll_store::AuditRecord]) {
        assert!(
            self.secrets.len() > 3,
            "the test saw too few tokens: {:?}",
            self.secrets.len()
        );
        let logs = self.s.logs.lock().unwrap().join("\n");
        let transcript = self.transcript.join("\n");
        let audit = format!("{audit:?}");
        let db = self.s.database_text();
        for secret in &self.secrets {
            assert_eq!(secret.len(), 32, "{secret:?} is not a token secret");
            assert!(
                !logs.contains(secret.as_str()),
                "a token secret is in the server log"
            );
            assert!(
                !transcript.contains(secret.as_str()),
                "a token secret is in CLI output"
            );
            assert!(
                !audit.contains(secret.as_str()),
                "a token secret is in the audit log"
            );
            assert!(
                !db.contains(secret.as_str()),
                "a token secret is in the database"
            );
        }
    }
}
