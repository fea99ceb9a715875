//! Several `keyroll serve` processes on one PostgreSQL database (SPEC §11): a revocation is
//! confirmed by every live node, one node leads the background work and another takes over
//! when it is killed, adoption is judged from every node's traffic, and a database outage
//! leaves verification running from memory with nothing lost.
//!
//! Each test makes its own database (`pg::database`), so they run in parallel beside the rest
//! of the suite; under `CI=true` a missing PostgreSQL fails them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{self, Server};
use crate::pg;
use crate::proxy::Proxy;
use crate::webhooks;

/// 32 bytes, base64: every node of a cluster must share the master key that seals webhook
/// secrets (the leader, whichever node it is, signs with them).
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Fast cluster timings, so that a test sees failover and heartbeats in seconds.
const FAST: &[(&str, &str)] = &[
    ("KEYROLL_MASTER_KEY", MASTER_KEY),
    ("KEYROLL_CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
    ("KEYROLL_CLUSTER__LEASE_TTL", "2s"),
    ("KEYROLL_USAGE__FLUSH_INTERVAL", "200ms"),
    ("KEYROLL_USAGE__SWEEP_INTERVAL", "200ms"),
    ("KEYROLL_SCHEDULE__INTERVAL", "200ms"),
    ("KEYROLL_WEBHOOKS__INTERVAL", "200ms"),
    ("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true"),
];

/// Starts a node on `database_url`. The first node of a database creates the admin token; a
/// later one gets a copy of `token_from`'s file in its own data dir, as an operator would hand
/// the token to it.
fn node(database_url: &str, token_from: Option<&Server>, extra: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap().keep();
    let data = dir.join("data");
    if let Some(first) = token_from {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(
            first.data_dir().join(keyroll_server::ADMIN_TOKEN_FILE),
            data.join(keyroll_server::ADMIN_TOKEN_FILE),
        )
        .unwrap();
    }
    let mut env: Vec<(&str, &str)> = vec![("KEYROLL_DATABASE_URL", database_url)];
    env.extend_from_slice(FAST);
    env.extend_from_slice(extra);
    harness::start_in_with_env(&data, &env)
}

/// `n` nodes on one database, the first started (and so leading) before the others.
fn nodes(database_url: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Server> {
    let first = node(database_url, None, extra);
    wait_for("the first node leads", Duration::from_secs(10), || {
        cluster(&first)["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["leader"] == true))
    });
    let mut all = vec![first];
    for _ in 1..n {
        let next = node(database_url, Some(&all[0]), extra);
        all.push(next);
    }
    let want = all.len();
    wait_for("every node is live", Duration::from_secs(10), || {
        live_nodes(&all[0]) == want
    });
    all
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(s: &Server, path: &str) -> Value {
    let r = harness::http()
        .get(format!("{}{path}", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = harness::http()
        .post(format!("{}{path}", s.url()))
        .bearer_auth(s.token())
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v = r.json().unwrap_or(Value::Null);
    (status, v, started.elapsed())
}

/// `GET /v1/cluster` on `s`.
fn cluster(s: &Server) -> Value {
    get(s, "/v1/cluster")
}

fn live_nodes(s: &Server) -> usize {
    cluster(s)["nodes"]
        .as_array()
        .map_or(0, |ns| ns.iter().filter(|n| n["live"] == true).count())
}

/// The node id `s` reports for itself.
fn node_id(s: &Server) -> String {
    cluster(s)["self"].as_str().unwrap().to_owned()
}

/// The index of the node that holds the lease, as the nodes see it.
fn leader_of(all: &[&Server]) -> Option<usize> {
    let v = cluster(all[0]);
    let holder = v["lease"]["holder"].as_str()?.to_owned();
    all.iter().position(|s| node_id(s) == holder)
}

/// One forward-auth call: the status and the reason code.
fn check(s: &Server, key: &str) -> (u16, String) {
    let r = harness::http()
        .get(format!("{}/v1/forward-auth", s.url()))
        .header("x-api-key", key)
        .send()
        .unwrap();
    let code = r
        .headers()
        .get("x-keyroll-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (r.status().as_u16(), code)
}

#[test]
fn a_revocation_is_confirmed_by_every_live_node_and_names_the_ones_that_lag() {
    let Some(db) = pg::database("a_revocation_is_confirmed_by_every_live_node") else {
        return;
    };
    let all = nodes(&db.url, 3, &[]);
    let (a, b, c) = (&all[0], &all[1], &all[2]);
    assert_eq!(a.cli(&["env", "create", "prod"]).code, 0);
    let key = a.consumer("prod/app", &[]);
    // A consumer made on A verifies on B and C without a restart: the change reached them.
    wait_for("B and C know the new key", Duration::from_secs(5), || {
        check(b, &key).0 == 200 && check(c, &key).0 == 200
    });

    // Every node lists every node, with one leader.
    let v = cluster(c);
    let listed = v["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{v}");
    assert_eq!(
        listed.iter().filter(|n| n["leader"] == true).count(),
        1,
        "{v}"
    );
    let status = c.cli(&["cluster", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    for s in [a, b, c] {
        assert!(status.stdout.contains(&node_id(s)), "{}", status.stdout);
    }

    // Revoke on A and wait for every node: the answer says all three have it, and B and C
    // reject the key at once (no polling: confirmed means applied).
    let (code, v, took) = post(
        a,
        "/v1/consumers/prod/app/versions/1/revoke?wait=5s",
        &json!({"reason": "leaked in a build log"}),
    );
    assert_eq!(code, 200, "{v}");
    let p = &v["propagation"];
    assert_eq!(p["nodes"], 3, "{v}");
    assert_eq!(p["confirmed"], 3, "{v}");
    let within = p["within_ms"].as_u64().unwrap();
    assert!(
        within < 2000 && u128::from(within) <= took.as_millis(),
        "{v}"
    );
    for s in [b, c] {
        assert_eq!(check(s, &key), (401, "key_revoked".to_owned()));
    }
    // The head and every node's applied sequence agree (the writer's own row catches up at its
    // next heartbeat; its confirmation above did not wait for that).
    wait_for(
        "every node reports the head",
        Duration::from_secs(3),
        || {
            let v = cluster(b);
            let head = v["change_head"].as_i64().unwrap();
            head >= 2
                && v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["applied_seq"].as_i64() == Some(head))
        },
    );

    // C dies (kill -9): until its heartbeat goes stale, a revoke names it as lagging.
    let c_id = node_id(c);
    let key2 = a.consumer("prod/other", &[]);
    wait_for("B knows prod/other", Duration::from_secs(5), || {
        check(b, &key2).0 == 200
    });
    let mut all = all;
    let c = all.pop().unwrap();
    kill9(c);
    let (code, v, _) = post(
        &all[0],
        "/v1/consumers/prod/other/versions/1/revoke?wait=300ms",
        &json!({"reason": "rotated out"}),
    );
    assert_eq!(code, 200, "{v}");
    let p = &v["propagation"];
    assert_eq!(p["nodes"], 3, "{v}");
    assert_eq!(p["confirmed"], 2, "{v}");
    let lagging = p["lagging"].as_array().unwrap();
    assert_eq!(lagging.len(), 1, "{v}");
    assert_eq!(lagging[0]["node_id"], c_id.as_str(), "{v}");
    assert_eq!(check(&all[1], &key2), (401, "key_revoked".to_owned()));
    // Once C's heartbeat is stale it no longer counts as live.
    wait_for("C is no longer live", Duration::from_secs(10), || {
        live_nodes(&all[0]) == 2
    });
    let key3 = all[0].consumer("prod/third", &[]);
    wait_for("B knows prod/third", Duration::from_secs(5), || {
        check(&all[1], &key3).0 == 200
    });
    // The CLI says it: `keyroll revoke --wait`.
    let r = all[0].cli(&[
        "revoke",
        "prod/third",
        "1",
        "--reason",
        "test",
        "--wait",
        "5s",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("Confirmed by 2 of 2 live nodes within"),
        "{}",
        r.stdout
    );
    assert_eq!(check(&all[1], &key3), (401, "key_revoked".to_owned()));
    // A bad wait is a 400 that changes nothing.
    let (code, v, _) = post(
        &all[0],
        "/v1/consumers/prod/app/versions/1/revoke?wait=soon",
        &json!({"reason": "test"}),
    );
    assert_eq!(code, 400, "{v}");
}

fn kill9(s: Server) {
    let pid = s.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The harness reaps it when dropped.
    drop(s);
}

#[test]
fn when_the_leader_is_killed_another_takes_over_and_every_due_rotation_is_raised_once() {
    let Some(db) = pg::database("when_the_leader_is_killed_another_takes_over") else {
        return;
    };
    let Some(python) = webhooks::receiver_python() else {
        return;
    };
    let receiver = webhooks::Receiver::start(&python);
    let all = nodes(&db.url, 3, &[]);
    assert_eq!(all[0].cli(&["env", "create", "prod"]).code, 0);
    let (_, secret) = webhooks::add(&all[0], &receiver.url("/hook"), "rotation.due");
    // The first attempt of every message fails: some retries fall to the next leader.
    receiver.configure(&json!({"/hook": {"secrets": [secret], "mode": "fail_first"}}));
    // Six consumers fall due one after another over ~3 s; the leader dies in the middle.
    const N: usize = 6;
    let created = Instant::now();
    for i in 0..N {
        all[0].consumer(
            &format!("prod/app{i}"),
            &["--rotate-every", "4s", "--grace", "1s"],
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let refs: Vec<&Server> = all.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    std::thread::sleep(
        (created + Duration::from_millis(5_500)).saturating_duration_since(Instant::now()),
    );
    let mut all: Vec<Option<Server>> = all.into_iter().map(Some).collect();
    let old_leader_id = node_id(all[leader].as_ref().unwrap());
    kill9(all[leader].take().unwrap());
    let killed = Instant::now();
    let a = all[survivors[0]].as_ref().unwrap();
    let b = all[survivors[1]].as_ref().unwrap();
    // The leader died in the middle of the schedule: some rotations fell due after it.
    let raised_by_the_dead_leader = due_events(a).len();
    println!("rotation.due raised before the kill: {raised_by_the_dead_leader} of {N}");
    assert!(
        raised_by_the_dead_leader < N,
        "the kill came too late to test failover"
    );

    // Another node takes the lease within seconds (its ttl is 2 s here).
    wait_for("a survivor leads", Duration::from_secs(10), || {
        let v = cluster(a);
        v["lease"]["holder"]
            .as_str()
            .is_some_and(|h| h != old_leader_id && v["lease"]["term"].as_i64() > Some(1))
    });
    let took = killed.elapsed();
    println!("failover took {took:?}");
    assert!(took < Duration::from_secs(6), "failover took {took:?}");

    // Every consumer's due rotation is raised exactly once in the outbox, and delivered.
    wait_for("every rotation.due", Duration::from_secs(30), || {
        due_events(a).len() >= N
    });
    std::thread::sleep(Duration::from_secs(1));
    let due = due_events(b);
    let mut consumers: Vec<String> = due
        .iter()
        .map(|e| e["consumer"].as_str().unwrap().to_owned())
        .collect();
    consumers.sort();
    let mut unique = consumers.clone();
    unique.dedup();
    assert_eq!(
        consumers.len(),
        N,
        "one rotation.due per consumer: {due:#?}"
    );
    assert_eq!(unique.len(), N, "{due:#?}");
    let delivered = receiver.wait("/hook", "every rotation.due delivered", |r| {
        webhooks::delivered(r).len() >= N
    });
    // Every request, from whichever node sent it, verifies with the independent implementation
    // under the one secret: the leaders share the master key that seals it.
    for r in &delivered {
        assert_eq!(r["verified_with"], json!([0]), "{r}");
    }
    let delivered = webhooks::delivered(&delivered);
    assert_eq!(delivered.len(), N, "{delivered:?}");
    assert!(delivered.iter().all(|(_, t, _)| t == "rotation.due"));
}

/// `rotation.due` events in the outbox, as a node serves them.
fn due_events(s: &Server) -> Vec<Value> {
    get(s, "/v1/events?limit=500")["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rotation.due" || e["type"] == "rotation.due")
        .cloned()
        .collect()
}

#[test]
fn a_version_used_only_through_another_node_is_not_retired_as_idle_by_the_leader() {
    let Some(db) = pg::database("a_version_used_only_through_another_node") else {
        return;
    };
    let all = nodes(&db.url, 2, &[]);
    let refs: Vec<&Server> = all.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let (lead, other) = (&all[leader], &all[1 - leader]);
    assert_eq!(lead.cli(&["env", "create", "prod"]).code, 0);
    // idle 2 s: on the leader's own traffic alone, v1 would retire 2 s after the switch.
    let v1 = lead.consumer("prod/app", &["--retire", "when-idle", "--idle", "2s"]);
    // stalls: deadline 4 s after the rotation, extended once to 8 s, as v1 is still used through
    // the other node at its deadline.
    let s1 = lead.consumer("prod/slow", &["--on-stall", "extend"]);
    wait_for(
        "the other node knows both keys",
        Duration::from_secs(5),
        || check(other, &v1).0 == 200 && check(other, &s1).0 == 200,
    );
    let v2 = lead.rotate("prod/app", &["--grace", "60s"]);
    let s2 = lead.rotate("prod/slow", &["--grace", "4s"]);
    // The new versions are seen (through the leader), the old ones only through the other node.
    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, rejected) = (Arc::clone(&stop), Arc::clone(&rejected));
        let other_url = other.url();
        let old = [v1.clone(), s1.clone()];
        std::thread::spawn(move || {
            let http = harness::http();
            while !stop.load(Ordering::Relaxed) {
                for k in &old {
                    let status = http
                        .get(format!("{other_url}/v1/forward-auth"))
                        .header("x-api-key", k)
                        .send()
                        .map_or(0, |r| r.status().as_u16());
                    if status != 200 {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    for _ in 0..5 {
        assert_eq!(check(lead, &v2).0, 200);
        assert_eq!(check(lead, &s2).0, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    // About 5.5 s after the rotations: past the idle window and past prod/slow's deadline,
    // before its extension ends.
    std::thread::sleep(Duration::from_millis(4_500));
    assert_eq!(
        rejected.load(Ordering::Relaxed),
        0,
        "no old-key request was refused"
    );
    let app = version_states(lead, "prod/app");
    assert_eq!(
        app[0], "retiring",
        "v1 is in use through the other node: {app:?}"
    );
    let slow = status_of(lead, "prod/slow");
    assert_eq!(slow["verdict_code"], "stalled", "{slow}");
    // Once the traffic through the other node stops, the idle rule retires v1.
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    wait_for("v1 retires as idle", Duration::from_secs(15), || {
        version_states(lead, "prod/app")[0] == "retired"
    });
}

fn status_of(s: &Server, consumer: &str) -> Value {
    let out = s.cli(&["status", consumer, "--output", "json"]);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|_| panic!("{} {}", out.stdout, out.stderr));
    v["items"][0].clone()
}

fn version_states(s: &Server, consumer: &str) -> Vec<String> {
    let out = s.cli(&["--output", "json", "consumer", "show", consumer]);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|_| panic!("{} {}", out.stdout, out.stderr));
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect()
}

/// What a load thread saw: (when sent, which key, status).
type Sample = (Instant, usize, u16);

#[test]
fn with_the_database_gone_nodes_verify_from_memory_and_catch_up_when_it_returns() {
    let Some(db) = pg::database("with_the_database_gone_nodes_verify_from_memory") else {
        return;
    };
    // A and B reach PostgreSQL through a proxy the test cuts; C reaches it directly (the
    // database is down for A and B only: C goes on writing, and A and B must catch up).
    let proxy = Proxy::start(&db.host_port);
    let via_proxy = db.url_via(&proxy.addr);
    let a = node(&via_proxy, None, &[]);
    wait_for("A leads", Duration::from_secs(10), || {
        cluster(&a)["lease"]["holder"].is_string()
    });
    let b = node(&via_proxy, Some(&a), &[]);
    let c = node(&db.url, Some(&a), &[]);
    assert_eq!(a.cli(&["env", "create", "prod"]).code, 0);
    let steady = a.consumer("prod/steady", &[]);
    let old = a.consumer("prod/rotating", &[]);
    let doomed = a.consumer("prod/doomed", &[]);
    // prod/rotating's v1 stops working at its deadline, which falls inside the outage.
    // Enforced: the deadline retires it whatever traffic says (no stall extension).
    let rotated_at = Instant::now();
    let (code, rotated, _) = post(
        &a,
        "/v1/consumers/prod/rotating/rotate",
        &json!({"grace": "3s", "enforce": true}),
    );
    assert_eq!(code, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    let deadline_at = rotated["retiring"][0]["deadline"].clone();
    for s in [&b, &c] {
        wait_for(
            "every node has the rotation",
            Duration::from_secs(5),
            || check(s, &new).0 == 200 && check(s, &doomed).0 == 200,
        );
    }
    let keys = [steady.clone(), old.clone(), new.clone()];

    // Load on A and B the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(usize, Sample)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (n, url) in [a.url(), b.url()].into_iter().enumerate() {
        let (stop, samples, keys) = (Arc::clone(&stop), Arc::clone(&samples), keys.clone());
        threads.push(std::thread::spawn(move || {
            let http = harness::http();
            while !stop.load(Ordering::Relaxed) {
                for (i, k) in keys.iter().enumerate() {
                    let sent = Instant::now();
                    let status = http
                        .get(format!("{url}/v1/forward-auth"))
                        .header("x-api-key", k)
                        .send()
                        .map_or(0, |r| r.status().as_u16());
                    samples.lock().unwrap().push((n, (sent, i, status)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    proxy.cut();
    let cut_at = Instant::now();

    // Admin writes fail fast, with a problem that says the store is unavailable.
    let (code, v, took) = post(&a, "/v1/consumers/prod/steady/rotate", &json!({}));
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["code"], "storage_unavailable", "{v}");
    assert!(took < Duration::from_secs(5), "a write hung for {took:?}");
    // Readiness says degraded with the reason: 503 for writes, 200 for verification.
    for (path, want) in [("/readyz", 503), ("/readyz?for=verify", 200)] {
        let r = harness::http()
            .get(format!("{}{path}", b.url()))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
        let ready: Value = r.json().unwrap();
        assert_eq!(ready["status"], "degraded", "{ready}");
        assert!(
            ready["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{ready}"
        );
    }
    // C still writes: a revocation A and B cannot hear of until the database is back.
    let (code, v, _) = post(
        &c,
        "/v1/consumers/prod/doomed/versions/1/revoke",
        &json!({"reason": "leaked while A and B were cut off"}),
    );
    assert_eq!(code, 200, "{v}");

    // Stay cut past prod/rotating's deadline.
    std::thread::sleep(
        (rotated_at + Duration::from_millis(4_500)).saturating_duration_since(Instant::now()),
    );
    let outage = cut_at.elapsed();
    proxy.restore();
    let restored_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    // Zero wrong decisions: the steady key and the new key always allowed; the old key allowed
    // before its deadline and refused after it (a margin of 300 ms around the deadline for
    // the request's own flight).
    // The deadline is 3 s after the server handled the rotation, which was after `rotated_at`.
    let deadline = rotated_at + Duration::from_secs(3);
    let samples = samples.lock().unwrap().clone();
    let mut during = 0;
    for (node, (sent, key, status)) in &samples {
        if *sent > cut_at && *sent < restored_at {
            during += 1;
        }
        let want_ok = match key {
            0 | 2 => Some(true),
            _ if *sent + Duration::from_millis(300) < deadline => Some(true),
            _ if *sent > deadline + Duration::from_millis(300) => Some(false),
            _ => None,
        };
        match want_ok {
            Some(true) => assert_eq!(*status, 200, "node {node} key {key} at {sent:?}"),
            Some(false) => assert_eq!(*status, 401, "node {node} key {key} at {sent:?}"),
            None => {}
        }
    }
    assert!(
        during > 20,
        "only {during} requests during a {outage:?} outage"
    );
    println!(
        "{} decisions, {during} during the outage, deadline {deadline_at}",
        samples.len()
    );

    // Recovery is automatic: readiness, writes, the revocation made on C, the retirement.
    wait_for("A and B are ok again", Duration::from_secs(20), || {
        [&a, &b].iter().all(|s| {
            harness::http()
                .get(format!("{}/readyz", s.url()))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["status"] == "ok")
        })
    });
    wait_for(
        "A and B learn of C's revocation",
        Duration::from_secs(20),
        || check(&a, &doomed).1 == "key_revoked" && check(&b, &doomed).1 == "key_revoked",
    );
    let (code, v, _) = post(&a, "/v1/consumers/prod/steady/rotate", &json!({}));
    assert_eq!(code, 201, "a write after recovery: {v}");
    wait_for(
        "the sweeper writes down the retirement",
        Duration::from_secs(20),
        || version_states(&c, "prod/rotating")[0] == "retired",
    );
    // The outage's traffic was counted: every allowed request of the steady key is in the store.
    let allowed_steady = samples
        .iter()
        .filter(|(_, (_, k, s))| *k == 0 && *s == 200)
        .count() as u64;
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = status_of(&c, "prod/steady");
        // v1: the rotation after recovery made a v2.
        seen = v["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|x| x["version"] == 1))
            .and_then(|x| x["requests_last_hour"].as_u64())
            .or(seen);
        if seen.is_some_and(|n| n >= allowed_steady) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage's usage was not flushed: {seen:?} of {allowed_steady} requests counted: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
