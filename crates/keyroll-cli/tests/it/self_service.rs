//! The agent's protocol against a real server, over HTTP, without the agent: a consumer key
//! reaches only `/v1/self*` and only its own consumer; a long-poll answers as soon as an
//! operator asks for a rotation; a self-rotation hands the new key once and leaves it sealed for
//! the other holders of the old key (another replica, or the same agent after a crash); reports
//! record deliveries; the agent's own calls do not count as traffic.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, Server};

const AGENT_A: &str = "agt_aaaaaaaaaaaaaaaa";
const AGENT_B: &str = "agt_bbbbbbbbbbbbbbbb";

fn ok(r: harness::Run) {
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn get_self(s: &Server, key: &str, query: &str) -> (u16, Value) {
    let r = harness::http()
        .get(format!("{}/v1/self{query}", s.url()))
        .bearer_auth(key)
        .timeout(Duration::from_secs(90))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn post(s: &Server, bearer: &str, path: &str, body: Value) -> (u16, Value) {
    let r = harness::http()
        .post(format!("{}{path}", s.url()))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn verify(s: &Server, key: &str) -> Value {
    harness::http()
        .post(format!("{}/v1/verify", s.url()))
        .bearer_auth(s.token())
        .json(&json!({ "key": key, "operator_check": true }))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn a_consumer_key_reaches_only_its_own_self_service() {
    let s = harness::start();
    ok(s.cli(&["env", "create", "prod"]));
    let key = s.consumer("prod/billing", &[]);
    let other = s.consumer("prod/orders", &[]);
    // Admin paths refuse a consumer key as an admin credential, reading or writing.
    for (method, path) in [
        ("GET", "/v1/consumers"),
        ("GET", "/v1/consumers/prod/orders"),
        ("POST", "/v1/consumers/prod/orders/rotate"),
        ("POST", "/v1/consumers/prod/orders/versions/1/revoke"),
        ("POST", "/v1/consumers/prod/billing/request-rotation"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/tokens"),
    ] {
        let r = harness::http()
            .request(method.parse().unwrap(), format!("{}{path}", s.url()))
            .bearer_auth(&key)
            .json(&json!({ "reason": "x", "name": "x", "scopes": ["admin"] }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
    }
    // /v1/self answers for the key's own consumer; there is no way to name another.
    let (status, me) = get_self(&s, &key, "");
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["consumer"], "prod/billing");
    assert_eq!(me["version"], 1);
    assert_eq!(me["state"], "active");
    assert!(me["rotate"].is_null() && me["handover"].is_null(), "{me}");
    let (_, them) = get_self(&s, &other, "");
    assert_eq!(them["consumer"], "prod/orders");
    // An admin token is not a consumer key; neither is garbage.
    let (status, problem) = get_self(&s, &s.token(), "");
    assert_eq!(status, 401, "{problem}");
    let (status, problem) = get_self(&s, "kr_prod_nonsense", "");
    assert_eq!(status, 401);
    assert_eq!(problem["code"], "malformed_credential", "{problem}");
    // Bad query parameters and bodies are 400 / 422, never 500.
    assert_eq!(get_self(&s, &key, "?wait=forever").0, 400);
    assert_eq!(get_self(&s, &key, "?known=x").0, 400);
    assert_eq!(get_self(&s, &key, "?other=1").0, 400);
    let (status, _) = post(&s, &key, "/v1/self/rotate", json!({ "agent": "nope" }));
    assert_eq!(status, 422);
    let (status, _) = post(
        &s,
        &key,
        "/v1/self/report",
        json!({ "agent": AGENT_A, "detail": key }),
    );
    assert_eq!(status, 422, "a key pasted into the detail is refused");
    // The self calls were operator checks: nothing counts as the app's traffic.
    let c: Value = harness::http()
        .get(format!("{}/v1/consumers/prod/billing", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(c["versions"][0]["last_used_at"].is_null(), "{c}");
}

#[test]
fn a_requested_rotation_wakes_the_long_poll_and_the_new_key_is_handed_over_once_per_holder() {
    let s = harness::start();
    ok(s.cli(&["env", "create", "prod"]));
    let old = s.consumer("prod/billing", &["--delivery", "agent"]);
    let (_, first) = get_self(&s, &old, "");
    let revision = first["revision"].as_i64().unwrap();

    // A long-poll is held while nothing changes, and answered once an operator asks.
    let url = s.url();
    let token = s.token();
    let asker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let r = harness::http()
            .post(format!("{url}/v1/consumers/prod/billing/request-rotation"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
    let started = Instant::now();
    let (status, woke) = get_self(&s, &old, &format!("?wait=30s&known={revision}"));
    let waited = started.elapsed();
    asker.join().unwrap();
    assert_eq!(status, 200, "{woke}");
    assert!(waited >= Duration::from_millis(600), "held: {waited:?}");
    assert!(
        waited < Duration::from_secs(5),
        "answered at once: {waited:?}"
    );
    assert_eq!(woke["rotate"]["reason"], "requested", "{woke}");
    assert_ne!(woke["revision"].as_i64().unwrap(), revision);

    // Agent A rotates; an agent that saw an older active version loses the race.
    let (status, raced) = post(
        &s,
        &old,
        "/v1/self/rotate",
        json!({ "agent": AGENT_A, "expect_active": 7 }),
    );
    assert_eq!(status, 409, "{raced}");
    assert_eq!(raced["code"], "rotation_raced");
    let (status, rotated) = post(
        &s,
        &old,
        "/v1/self/rotate",
        json!({ "agent": AGENT_A, "expect_active": 1 }),
    );
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["version"], 2);
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&s, &new)["allowed"], true);
    assert_eq!(
        verify(&s, &old)["allowed"],
        true,
        "the old key is still in its grace"
    );

    // The new holder holds; the old holder is told to take the handover, which is the same key.
    let (_, holder) = get_self(&s, &new, "");
    assert!(
        holder["rotate"].is_null(),
        "the request was answered: {holder}"
    );
    assert_eq!(holder["version"], 2);
    let (_, replica) = get_self(&s, &old, "");
    assert_eq!(replica["handover"], 2, "{replica}");
    assert!(replica["rotate"].is_null(), "{replica}");
    assert_eq!(replica["state"], "retiring");
    let (status, handed) = post(&s, &old, "/v1/self/handover", json!({ "agent": AGENT_B }));
    assert_eq!(status, 200, "{handed}");
    assert_eq!(handed["key"].as_str(), Some(new.as_str()));
    assert_eq!(handed["version"], 2);
    // The new key has nothing to take.
    let (status, none) = post(&s, &new, "/v1/self/handover", json!({ "agent": AGENT_A }));
    assert_eq!(status, 404, "{none}");
    assert_eq!(none["code"], "no_handover");

    // Reports record each agent and, once per agent and version, the delivery.
    for agent in [AGENT_A, AGENT_B, AGENT_A] {
        let (status, info) = post(
            &s,
            &new,
            "/v1/self/report",
            json!({ "agent": agent, "host": "web-1", "mode": "file" }),
        );
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["version"], 2);
    }
    let delivered = s.events_at_least("version.delivered", 2);
    assert_eq!(delivered.len(), 2, "once per agent: {delivered:?}");
    let agents: Value = harness::http()
        .get(format!("{}/v1/agents", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let items = agents["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{agents}");
    assert!(
        items
            .iter()
            .all(|a| a["version"] == 2 && a["consumer"] == "prod/billing")
    );

    // Retiring the old version deletes its handover: the old key, now invalid, opens nothing.
    ok(s.cli(&["retire", "prod/billing", "v1", "--yes"]));
    let (status, gone) = post(&s, &old, "/v1/self/handover", json!({ "agent": AGENT_B }));
    assert_eq!(status, 401, "{gone}");
    assert_eq!(gone["code"], "key_retired");
    s.assert_no_secret_leaked(&[]);
    let db = s.database_text();
    assert!(
        !db.contains(&new),
        "the self-rotated key is not in the database"
    );
    assert!(!s.logs_text().contains(&new), "nor in the log");
}

#[test]
fn a_superseded_holder_without_a_handover_is_told_to_rotate_again() {
    let s = harness::start();
    ok(s.cli(&["env", "create", "prod"]));
    let old = s.consumer("prod/billing", &["--delivery", "agent"]);
    // An operator's plain rotation leaves nothing for the old key's holders.
    let _operator_key = s.rotate("prod/billing", &[]);
    let (_, me) = get_self(&s, &old, "");
    assert_eq!(me["rotate"]["reason"], "superseded", "{me}");
    assert!(me["handover"].is_null());
    let (status, again) = post(
        &s,
        &old,
        "/v1/self/rotate",
        json!({ "agent": AGENT_A, "expect_active": 2 }),
    );
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["version"], 3);
}

fn status_of(s: &Server, consumer: &str) -> Value {
    let v: Value = harness::http()
        .get(format!("{}/v1/status?consumer={consumer}", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["items"][0].clone()
}

#[test]
fn status_shows_deliveries_and_a_delivered_version_nobody_uses_is_reported() {
    let s = harness::start_with_env(&[
        ("KEYROLL_SCHEDULE__INTERVAL", "1s"),
        ("KEYROLL_SCHEDULE__UNSEEN_AFTER", "1s"),
        ("KEYROLL_USAGE__FLUSH_INTERVAL", "1s"),
    ]);
    ok(s.cli(&["env", "create", "prod"]));
    let old = s.consumer("prod/billing", &["--delivery", "agent"]);
    let before = status_of(&s, "prod/billing");
    assert_eq!(before["delivery"]["mode"], "agent", "{before}");
    assert!(before["delivery"]["agents"].as_array().unwrap().is_empty());

    ok(s.cli(&["rotate", "prod/billing", "--via-agent"]));
    let (status, rotated) = post(&s, &old, "/v1/self/rotate", json!({ "agent": AGENT_A }));
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    for agent in [AGENT_A, AGENT_B] {
        let (status, _) = post(
            &s,
            &new,
            "/v1/self/report",
            json!({ "agent": agent, "host": "web" }),
        );
        assert_eq!(status, 200);
    }
    let d = &status_of(&s, "prod/billing")["delivery"];
    assert_eq!(d["delivered_version"], 2, "{d}");
    assert_eq!(d["delivered_to"], 2);
    assert_eq!(d["seen_sources"], 0);
    assert_eq!(
        d["summary"], "delivered v2 to 2 agents; v2 seen from 0 sources",
        "{d}"
    );

    // Nobody uses v2: after `unseen_after` the schedule reports it, once, and status warns.
    let unused = s.events_at_least("version.unused", 1);
    assert_eq!(unused[0]["version"], 2, "{unused:?}");
    let d = &status_of(&s, "prod/billing")["delivery"];
    let warnings = d["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("has not been seen in traffic")),
        "{d}"
    );
    let text = s.cli(&["status", "prod/billing"]);
    assert!(
        text.stdout.contains("delivered v2 to 2 agents"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("agent agt_aaaaaaaaaaaaaaaa on web"),
        "{}",
        text.stdout
    );

    // Once the app uses v2 the warning goes; the event is not raised again.
    let r = harness::http()
        .get(format!("{}/v1/forward-auth", s.url()))
        .bearer_auth(&new)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::thread::sleep(Duration::from_millis(2500));
    let d = &status_of(&s, "prod/billing")["delivery"];
    assert_eq!(d["seen_sources"], 1, "{d}");
    assert!(
        !d["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("has not been seen")),
        "{d}"
    );
    assert_eq!(s.events("version.unused").len(), 1);
}

#[test]
fn consumer_create_writes_the_bootstrap_key_to_a_new_0600_file_and_never_over_one() {
    use std::os::unix::fs::PermissionsExt;
    let s = harness::start();
    ok(s.cli(&["env", "create", "prod"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app/keyroll.key");
    let path = file.to_str().unwrap();
    let r = s.cli(&["consumer", "create", "prod/billing", "--key-file", path]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains("kr_prod_"),
        "the key is not printed: {}",
        r.stdout
    );
    assert!(r.stdout.contains(path), "{}", r.stdout);
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(verify(&s, &key)["allowed"], true);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // JSON output names the file and carries no key.
    let other = dir.path().join("other.key");
    let r = s.cli(&[
        "consumer",
        "create",
        "prod/orders",
        "--key-file",
        other.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["key"].is_null(), "{v}");
    assert_eq!(v["key_file"], other.to_str().unwrap());
    // An existing file is refused before anything is created.
    let r = s.cli(&["consumer", "create", "prod/search", "--key-file", path]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key);
    let shown = s.cli(&["consumer", "show", "prod/search"]);
    assert_ne!(shown.code, 0, "prod/search was not created");
}
