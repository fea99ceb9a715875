//! What admin answers mean: idempotent replays that can show a lost key again, one deadline
//! everywhere after a rotation, expiries in the future only, secrets refused in free text, and
//! honest revocations.

use crate::harness;

const STRONG: &str = "3f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f";

fn json(run: &harness::Run) -> serde_json::Value {
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn post(
    s: &harness::Server,
    path: &str,
    idempotency_key: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = harness::http()
        .post(format!("{}{path}", s.url()))
        .header("authorization", format!("Bearer {}", s.token()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

fn verify(s: &harness::Server, key: &str) -> serde_json::Value {
    let r = s.cli(&["verify", key, "--output", "json"]);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn a_lost_rotate_response_is_replayed_with_the_same_working_key() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let args = [
        "rotate",
        "prod/app",
        "--idempotency-key",
        STRONG,
        "--output",
        "json",
    ];
    let first = json(&s.cli(&args));
    // The first answer is lost; the retry must give the same key back.
    let again = json(&s.cli(&args));
    assert_eq!(first["version"], 2);
    assert_eq!(again["version"], 2, "not rotated twice");
    assert_eq!(again["replayed"], true);
    let key = first["key"].as_str().unwrap();
    assert_eq!(again["key"].as_str(), Some(key), "the same key again");
    assert!(again.get("key_unavailable").is_none());
    let v = verify(&s, key);
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["version"], 2, "{v}");

    // The same for consumer create, over the API.
    let body = r#"{"environment":"prod","name":"other"}"#;
    let (st, created) = post(&s, "/v1/consumers", Some(&STRONG.to_uppercase()), body);
    assert_eq!(st, 201, "{created}");
    let (st, replayed) = post(&s, "/v1/consumers", Some(&STRONG.to_uppercase()), body);
    assert_eq!(st, 201, "{replayed}");
    assert_eq!(replayed["replayed"], true);
    assert_eq!(replayed["key"], created["key"]);

    // Neither the key nor the Idempotency-Key is in the database (nor logs, nor output).
    s.assert_no_secret_leaked(&[]);
    let db = s.database_text();
    assert!(
        !db.contains(STRONG),
        "the Idempotency-Key is in the database"
    );
    assert!(!db.contains(&STRONG.to_uppercase()));
    assert!(!db.contains(key), "the key is in the database");
}

#[test]
fn a_guessable_idempotency_key_replays_without_the_key_and_says_why() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let args = [
        "rotate",
        "prod/app",
        "--idempotency-key",
        "deploy-42",
        "--output",
        "json",
    ];
    let first = json(&s.cli(&args));
    assert!(first["key"].is_string(), "the first answer shows the key");
    let again = json(&s.cli(&args));
    assert_eq!(again["replayed"], true);
    assert!(again["key"].is_null());
    let why = again["key_unavailable"].as_str().unwrap();
    assert!(why.contains("too guessable"), "{why}");
    assert!(why.contains("UUIDv4"), "{why}");
    assert!(
        !why.contains("deploy-42"),
        "the header is not echoed: {why}"
    );
    // The human output says it too.
    let text = s.cli(&["rotate", "prod/app", "--idempotency-key", "deploy-42"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("too guessable"), "{}", text.stdout);
}

#[test]
fn a_replay_compares_canonical_json_and_refuses_a_different_request() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let path = "/v1/consumers/prod/app/rotate";
    let (st, first) = post(&s, path, Some(STRONG), r#"{"grace":"1h","enforce":false}"#);
    assert_eq!(st, 201, "{first}");
    let (st, again) = post(
        &s,
        path,
        Some(STRONG),
        "{ \"enforce\" : false,\n  \"grace\": \"1h\" }",
    );
    assert_eq!(st, 201, "{again}");
    assert_eq!(
        again["replayed"], true,
        "whitespace and order are the same request"
    );
    assert_eq!(again["kid"], first["kid"]);
    assert_eq!(again["key"], first["key"]);
    let (st, other) = post(&s, path, Some(STRONG), r#"{"grace": "2h"}"#);
    assert_eq!(st, 422, "{other}");
    assert_eq!(other["code"], "idempotency_key_reused");
    assert!(!other["detail"].as_str().unwrap().contains(STRONG));
    s.assert_no_secret_leaked(&[other.to_string()]);
}

#[test]
fn bad_idempotency_keys_are_a_precise_400() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let path = "/v1/consumers/prod/app/rotate";
    for (header, expect) in [
        ("", "empty"),
        ("   ", "empty"),
        (&*"x".repeat(256), "at most 255"),
        ("two words", "not visible ASCII"),
    ] {
        let (st, body) = post(&s, path, Some(header), "{}");
        assert_eq!(st, 400, "{header:?}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expect), "{header:?}: {detail}");
    }
    // Nothing was rotated by any of them.
    let show = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    assert_eq!(show["versions"].as_array().unwrap().len(), 1);
    // The CLI refuses an empty one too (the server answers 400).
    let r = s.cli(&["rotate", "prod/app", "--idempotency-key", ""]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
}

#[test]
fn deadlines_agree_everywhere_after_rotate_with_grace() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let old = s.consumer("prod/app", &[]);
    // In use before the rotation, so the stall rule would extend it at its deadline.
    let (st, _) = {
        let r = harness::http()
            .get(format!("{}/v1/forward-auth", s.url()))
            .header("x-api-key", &old)
            .send()
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 200);
    let rotated = json(&s.cli(&["rotate", "prod/app", "--grace", "1h", "--output", "json"]));
    let deadline = rotated["retiring"][0]["deadline"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = harness::http()
        .get(format!("{}/v1/forward-auth", s.url()))
        .header("x-api-key", &old)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sunset = r.headers()["sunset"].to_str().unwrap().to_owned();

    let show = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    let v1 = &show["versions"][0];
    assert_eq!(v1["deadline"], deadline.as_str(), "consumer show: {v1}");
    assert_eq!(v1["extended"], false);
    let predicted = v1["extension_if_stalled"].as_str().unwrap().to_owned();
    assert_ne!(predicted, deadline);

    let table = s.cli(&["consumer", "show", "prod/app"]);
    assert!(
        table.stdout.contains(&format!(
            "will be extended once to {predicted} if still in use at {deadline}"
        )),
        "{}",
        table.stdout
    );

    let status = json(&s.cli(&["status", "prod/app", "--output", "json"]));
    let text = status.to_string();
    let st1 = status["consumers"]
        .as_array()
        .or_else(|| status["items"].as_array())
        .map(|c| c[0]["versions"].clone())
        .unwrap_or_default();
    let st1 = st1
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap()
        .clone();
    assert_eq!(st1["deadline"], deadline.as_str(), "status: {st1}");
    assert_eq!(st1["stalled"], false);
    assert!(
        text.contains(&format!(
            "will be extended once to {predicted} if still in use at {deadline}"
        )),
        "status says the prediction in words: {text}"
    );
    assert!(!text.contains("stalled:"), "{text}");

    let v = verify(&s, &old);
    assert_eq!(v["sunset"], deadline.as_str(), "verify: {v}");
    assert!(!v.to_string().contains(&predicted), "verify: {v}");

    let events = s.cli(&["events", "--output", "json"]);
    assert!(events.stdout.contains(&deadline), "{}", events.stdout);
    assert!(!events.stdout.contains(&predicted), "{}", events.stdout);

    // The Sunset header names the same second.
    let parsed =
        time::OffsetDateTime::parse(&deadline, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let http_date = parsed
        .format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    assert_eq!(sunset, http_date);
}

#[test]
fn an_expiry_must_be_in_the_future_and_outlive_the_grace() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let r = s.cli(&["consumer", "create", "prod/app", "--expires-in", "0"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("must be longer than 0"), "{}", r.stderr);
    s.consumer("prod/app", &[]);
    let r = s.cli(&["rotate", "prod/app", "--expires-in", "0"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("must be longer than 0"), "{}", r.stderr);
    let r = s.cli(&["rotate", "prod/app", "--grace", "2h", "--expires-in", "1h"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("before the old one retires"),
        "{}",
        r.stderr
    );
    let show = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    assert_eq!(
        show["versions"].as_array().unwrap().len(),
        1,
        "nothing rotated"
    );
    s.rotate("prod/app", &["--grace", "1h", "--expires-in", "2h"]);
}

#[test]
fn key_shaped_free_text_is_refused_without_echo() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    let token = s.token();
    for (args, field) in [
        (
            vec![
                "revoke",
                "prod/app",
                "v1",
                "--reason",
                &*format!("leaked {key} in chat"),
            ],
            "reason",
        ),
        (
            vec!["consumer", "create", "prod/other", "--owner", &*key],
            "owner",
        ),
        (
            vec!["consumer", "set", "prod/app", "--owner", &*token],
            "owner",
        ),
    ] {
        let r = s.cli(&args);
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(field), "{}", r.stderr);
        assert!(
            r.stderr.contains("secrets are never stored"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains(&key) && !r.stderr.contains(&token));
    }
    // Nothing was changed: v1 still works, no consumer was created.
    assert_eq!(verify(&s, &key)["allowed"], true);
    let other = s.cli(&["consumer", "show", "prod/other"]);
    assert_ne!(other.code, 0);
    // Text that only looks a bit like a key is fine.
    let r = s.cli(&[
        "consumer",
        "set",
        "prod/app",
        "--owner",
        "kr_team (payments)",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    s.assert_no_secret_leaked(&[]);
}

#[test]
fn revoking_twice_is_honest_and_the_last_valid_version_warns() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    s.rotate("prod/app", &["--grace", "1h"]);
    // v1 is retiring, v2 active: revoking v1 leaves a working key, no warning.
    let r = s.cli(&[
        "revoke", "prod/app", "v1", "--reason", "leak", "--output", "json",
    ]);
    let b = json(&r);
    assert!(b.get("warning").is_none(), "{b}");
    assert!(b.get("already_revoked").is_none(), "{b}");
    let audit_before = s.events_at_least("version.revoked", 1).len();
    let again = s.cli(&["revoke", "prod/app", "v1", "--reason", "leak again"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);
    let again = json(&s.cli(&[
        "revoke", "prod/app", "v1", "--reason", "x", "--output", "json",
    ]));
    assert_eq!(again["already_revoked"], true);
    assert_eq!(again["revoke_reason"], "leak", "the first reason stays");
    assert_eq!(
        s.events("version.revoked").len(),
        audit_before,
        "nothing new logged"
    );
    // Retire of a retired version answers the same way.
    s.rotate("prod/app", &["--grace", "1h"]);
    assert_eq!(s.cli(&["retire", "prod/app", "v2"]).code, 0);
    let retired_events = s.events_at_least("version.retired", 1).len();
    let again = json(&s.cli(&["retire", "prod/app", "v2", "--output", "json"]));
    assert_eq!(again["already_retired"], true, "{again}");
    let text = s.cli(&["retire", "prod/app", "v2"]);
    assert!(text.stdout.contains("already retired"), "{}", text.stdout);
    assert_eq!(s.events("version.retired").len(), retired_events);
    // Revoking v3, the last valid version: done, with a warning.
    let last = s.cli(&["revoke", "prod/app", "v3", "--reason", "leak"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert!(last.stderr.contains("no working key"), "{}", last.stderr);
}

#[test]
fn a_protected_environment_needs_explicit_confirmation() {
    let s = harness::start();
    s.cli(&["env", "create", "prod", "--protected"]);
    s.cli(&["env", "create", "staging"]);
    s.consumer("prod/app", &[]);
    s.consumer("staging/app", &[]);
    let refused = |args: &[&str], action: &str| {
        let r = s.cli(args);
        assert_ne!(r.code, 0, "{args:?} must need --yes");
        assert!(
            r.stderr.contains("environment prod is protected")
                && r.stderr.contains(&format!("{action} of prod/app"))
                && r.stderr.contains("--yes"),
            "{}",
            r.stderr
        );
        r
    };
    refused(&["rotate", "prod/app"], "rotate");
    let show = json(&s.cli(&["consumer", "show", "prod/app", "--output", "json"]));
    assert_eq!(show["versions"].as_array().unwrap().len(), 1, "not rotated");
    s.rotate("prod/app", &["--grace", "1h", "--yes"]);
    refused(&["retire", "prod/app", "v1"], "retire");
    assert_eq!(s.cli(&["retire", "prod/app", "v1", "--yes"]).code, 0);
    refused(&["consumer", "disable", "prod/app"], "disable");
    assert_eq!(s.cli(&["consumer", "disable", "prod/app", "--yes"]).code, 0);
    assert_eq!(
        s.cli(&["consumer", "enable", "prod/app"]).code,
        0,
        "undoing is not gated"
    );
    let r = refused(&["revoke", "prod/app", "v2", "--reason", "leak"], "revoke");
    assert!(
        r.stderr.contains("run the same command again with --yes"),
        "{}",
        r.stderr
    );
    assert_eq!(
        s.cli(&["revoke", "prod/app", "v2", "--reason", "leak", "--yes"])
            .code,
        0
    );
    // The API answers 428 with the same detail, and accepts the body field.
    let (st, body) = post(&s, "/v1/consumers/prod/app/rotate", None, "{}");
    assert_eq!(st, 428, "{body}");
    assert_eq!(body["code"], "confirmation_required");
    let (st, body) = post(
        &s,
        "/v1/consumers/prod/app/rotate",
        None,
        r#"{"confirm":true}"#,
    );
    assert_eq!(st, 201, "{body}");
    // An unprotected environment needs nothing.
    s.rotate("staging/app", &[]);
}

#[test]
fn two_active_versions_at_load_are_logged_and_the_newest_keeps_working() {
    if !harness::require_program("sqlite3", "apt-get install sqlite3") {
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let s = harness::start_in(&data);
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    let v2 = s.rotate("prod/app", &["--grace", "1h"]);
    drop(s);
    // What a manual edit or an old backup can leave behind (the schema forbids it, so the
    // guard goes first).
    let db = data.join("keyroll.db");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "DROP INDEX key_versions_one_active; \
             UPDATE key_versions SET state = 'active', deadline = NULL, replaced_by = NULL \
             WHERE version = 1;",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s2 = harness::start_in(&data);
    let broken = s2.events("store.invariant_broken");
    assert_eq!(broken.len(), 1, "one ERROR line for the one consumer");
    assert_eq!(broken[0]["level"], "error");
    assert_eq!(broken[0]["consumer"], "prod/app");
    let message = broken[0].to_string();
    assert!(
        message.contains("v1") && message.contains("v2"),
        "{message}"
    );
    assert_eq!(s2.cli(&["verify", &v2]).code, 0, "the newest keeps working");
}

#[test]
fn status_never_calls_the_only_working_key_ready_to_retire() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/app", &[]);
    s.rotate("prod/app", &["--grace", "1h"]);
    // v2 revoked: v1 (retiring) is the only working key, so nothing is ready to retire.
    let r = json(&s.cli(&[
        "revoke", "prod/app", "v2", "--reason", "leak", "--output", "json",
    ]));
    assert!(r.get("warning").is_none(), "v1 still works: {r}");
    let status = json(&s.cli(&["status", "prod/app", "--output", "json"]));
    let text = status.to_string();
    assert!(
        text.contains("\"verdict_code\":\"no_active_key\""),
        "{text}"
    );
    assert!(!text.contains("ready to retire"), "{text}");
}

#[test]
fn every_location_a_creation_answers_names_a_resource_that_exists() {
    let s = harness::start();
    let bearer = format!("Bearer {}", s.token());
    let created = |path: &str, body: &str| {
        let r = harness::http()
            .post(format!("{}{path}", s.url()))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{path}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let body: serde_json::Value = r.json().unwrap();
        (location, body)
    };
    let get = |location: &str| {
        let r = harness::http()
            .get(format!("{}{location}", s.url()))
            .header("authorization", &bearer)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    let (env_at, env) = created("/v1/environments", r#"{"name":"prod","protected":true}"#);
    assert_eq!(env_at, "/v1/environments/prod");
    assert_eq!(get(&env_at), (200, env));
    let (consumer_at, made) = created("/v1/consumers", r#"{"environment":"prod","name":"app"}"#);
    let (status, shown) = get(&consumer_at);
    assert_eq!(status, 200);
    assert_eq!(shown, made["consumer"]);
    let (token_at, token) = created("/v1/tokens", r#"{"name":"ci","scopes":["keys:read"]}"#);
    let (status, shown) = get(&token_at);
    assert_eq!(status, 200);
    assert_eq!(shown, token["info"]);
    assert!(
        !shown.to_string().contains(token["token"].as_str().unwrap()),
        "never the secret"
    );
    // The neighbours: what does not exist is a 404 problem, not a 405 or an empty 200.
    assert_eq!(get("/v1/environments/staging").0, 404);
    assert_eq!(get("/v1/tokens/kra0000000000000").0, 404);
    assert_eq!(get("/v1/environments/Not_A_Name").0, 400);
}
