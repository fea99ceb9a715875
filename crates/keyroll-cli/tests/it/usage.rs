//! Usage recording end to end: counts, sources and last use reach the store, survive a
//! SIGTERM (final flush, exit 0) and a restart, and `status` reports them.

use crate::harness;

#[test]
fn usage_is_flushed_at_shutdown_and_reported_after_restart() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    // A flush interval far longer than the test: only the shutdown flush can save the counts.
    let s = harness::start_in_with_env(&data, &[("KEYROLL_USAGE__FLUSH_INTERVAL", "1h")]);
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    let http = harness::http();
    for i in 0..7 {
        let r = http
            .get(format!("{}/v1/forward-auth", s.url()))
            .header("x-api-key", &key)
            .header("user-agent", "app-worker/3.1")
            .header("x-client-id", if i < 5 { "worker-a" } else { "worker-b" })
            // From loopback, a trusted proxy by default: the forwarded address is the client.
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(s.terminate(), Some(0), "SIGTERM ends the server cleanly");

    let s2 = harness::start_in(&data);
    let out = s2.cli(&["status", "prod/app", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|_| panic!("{} {}", out.stdout, out.stderr));
    let v1 = &v["items"][0]["versions"][0];
    assert_eq!(v1["requests_last_hour"], 7, "{v}");
    assert_eq!(v1["requests_last_day"], 7, "{v}");
    assert!(v1["last_used_at"].is_string(), "{v}");
    let sources = v1["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "{v}");
    let a = sources
        .iter()
        .find(|s| s["client_id"] == "worker-a")
        .unwrap();
    assert_eq!(
        (
            a["address"].as_str(),
            a["count"].as_u64(),
            a["user_agent"].as_str()
        ),
        (Some("203.0.113.7"), Some(5), Some("app-worker/3.1"))
    );
    assert_eq!(v["items"][0]["verdict_code"], "ok", "{v}");
    // The consumer view shows the last use too.
    let show: serde_json::Value = serde_json::from_str(
        &s2.cli(&["consumer", "show", "prod/app", "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert!(show["versions"][0]["last_used_at"].is_string(), "{show}");
}

#[test]
fn a_new_version_nobody_uses_is_reported_as_never_used() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/quiet", &[]);
    let out = s.cli(&["status", "prod", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["verdict_code"], "never_used", "{v}");
    assert!(
        v["items"][0]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("never used: v1"),
        "{v}"
    );
    // Without a terminal, or with NO_COLOR, the human output has no escape codes.
    let human = s.cli(&["status"]);
    assert!(
        human.stdout.contains("never used: v1") && !human.stdout.contains('\u{1b}'),
        "{}",
        human.stdout
    );
}
