//! The incident keyroll exists to prevent, replayed: three consumers under continuous load,
//! rotated together with a short grace window; two switch to the new key at random moments,
//! one never does. No allowed request may fail during the grace window; the two quiet old
//! versions retire early; the third stalls, is extended once, shows up in `status` with its
//! source, and is then retired — and its next requests are told which version replaced it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness;

const GRACE_S: u64 = 6;
const IDLE: &str = "1500ms";

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    version: u32,
    status: u16,
    code: String,
    detail: String,
}

struct Client {
    name: &'static str,
    key: Mutex<(u32, String)>,
    samples: Mutex<Vec<Sample>>,
}

fn load(url: String, client: Arc<Client>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let http = harness::http();
        while !stop.load(Ordering::Relaxed) {
            let (version, key) = client.key.lock().unwrap().clone();
            let r = http
                .get(&url)
                .header("authorization", format!("Bearer {key}"))
                .header("user-agent", format!("{}-worker/1.2", client.name))
                .header("x-client-id", format!("client-{}", client.name))
                .send()
                .unwrap();
            let status = r.status().as_u16();
            let code = r
                .headers()
                .get("x-keyroll-code")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let detail = r
                .headers()
                .get("x-keyroll-detail")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            client.samples.lock().unwrap().push(Sample {
                at: Instant::now(),
                version,
                status,
                code,
                detail,
            });
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

/// A small PRNG for "random moments" (no dependency; seeded from the clock, printed).
fn random_unit(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % 10_000) as f64 / 10_000.0
}

#[test]
fn incident_replay_no_allowed_request_fails_and_the_straggler_stalls_then_retires() {
    let s = harness::start_with_env(&[
        ("KEYROLL_USAGE__FLUSH_INTERVAL", "500ms"),
        ("KEYROLL_USAGE__SWEEP_INTERVAL", "250ms"),
    ]);
    s.cli(&["env", "create", "prod"]);
    let url = format!("{}/v1/forward-auth/api/invoices", s.url());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut threads = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let key = s.consumer(&format!("prod/{name}"), &["--idle", IDLE]);
        let c = Arc::new(Client {
            name,
            key: Mutex::new((1, key)),
            samples: Mutex::new(Vec::new()),
        });
        threads.push(load(url.clone(), Arc::clone(&c), Arc::clone(&stop)));
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(800));

    // Rotate all three with a short grace window.
    let rotated_at = Instant::now();
    let mut new_keys = Vec::new();
    for c in &clients {
        new_keys.push(s.rotate(
            &format!("prod/{}", c.name),
            &["--grace", &format!("{GRACE_S}s")],
        ));
    }
    // alpha and beta switch at random moments within the first 1.5 s; gamma never does.
    #[allow(clippy::disallowed_methods)] // a random seed, not a time anything decides on
    let mut seed = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64)
        | 1;
    let mut switch_at: Vec<Duration> = (0..2)
        .map(|_| Duration::from_millis(200 + (random_unit(&mut seed) * 1300.0) as u64))
        .collect();
    println!("switch moments after rotation: {switch_at:?}");
    switch_at.sort();
    let order = if random_unit(&mut seed) < 0.5 {
        [0, 1]
    } else {
        [1, 0]
    };
    for (i, wait) in order.iter().zip(switch_at) {
        let elapsed = rotated_at.elapsed();
        if wait > elapsed {
            std::thread::sleep(wait - elapsed);
        }
        *clients[*i].key.lock().unwrap() = (2, new_keys[*i].clone());
    }

    // During gamma's extension (after the deadline, before deadline + grace) status reports it.
    let deadline = rotated_at + Duration::from_secs(GRACE_S);
    std::thread::sleep(
        (deadline + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    );
    let status = s.cli(&["status", "prod/gamma", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|_| panic!("{} {}", status.stdout, status.stderr));
    let gamma = &v["items"][0];
    assert_eq!(gamma["verdict_code"], "stalled", "{gamma}");
    let verdict = gamma["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("v1")
            && verdict.contains("127.0.0.1")
            && verdict.contains("client-gamma")
            && verdict.contains("req/h"),
        "{verdict}"
    );
    let human = s.cli(&["status", "prod"]);
    assert!(
        human
            .stdout
            .contains("stalled: v1 still used by 127.0.0.1 (client-gamma)"),
        "{}",
        human.stdout
    );
    for other in ["alpha", "beta"] {
        assert!(
            human.stdout.contains(&format!("prod/{other}")),
            "{}",
            human.stdout
        );
    }

    // Past the extension, gamma's old key is retired regardless.
    let final_deadline = deadline + Duration::from_secs(GRACE_S);
    std::thread::sleep(
        (final_deadline + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    // 1. No allowed request was rejected while its key was in its (possibly extended) grace window.
    let margin = Duration::from_millis(300);
    for c in &clients {
        let samples = c.samples.lock().unwrap();
        assert!(samples.len() > 50, "{} sent too few requests", c.name);
        for smp in samples.iter() {
            let before_end = smp.at + margin
                < if c.name == "gamma" {
                    final_deadline
                } else {
                    deadline
                };
            if smp.version == 2 || before_end {
                assert_eq!(
                    smp.status,
                    200,
                    "{}: a request with v{} was rejected at +{:?}: {} {}",
                    c.name,
                    smp.version,
                    smp.at - rotated_at,
                    smp.code,
                    smp.detail
                );
            }
        }
    }
    // 2. gamma's later requests are rejected as key_retired, naming the replacement.
    let gamma_samples = clients[2].samples.lock().unwrap();
    let late: Vec<&Sample> = gamma_samples
        .iter()
        .filter(|x| x.at > final_deadline + margin)
        .collect();
    assert!(
        !late.is_empty(),
        "gamma made no request after its final deadline"
    );
    for smp in &late {
        assert_eq!(
            (smp.status, smp.code.as_str()),
            (401, "key_retired"),
            "{smp:?}"
        );
        assert!(smp.detail.contains("v2 replaces it"), "{}", smp.detail);
    }
    let log = s
        .events("auth.decision")
        .into_iter()
        .find(|d| d["code"] == "key_retired" && d["consumer"] == "prod/gamma")
        .expect("a key_retired log line for gamma");
    assert!(
        log["detail"].as_str().unwrap().contains("v2 replaces it"),
        "{log}"
    );

    // 3. Events: alpha's and beta's v1 retired early by the idle rule; gamma stalled once, then retired.
    let events: serde_json::Value = serde_json::from_str(
        &s.cli(&["events", "--output", "json", "--limit", "1000"])
            .stdout,
    )
    .unwrap();
    let events = events["items"].as_array().unwrap().clone();
    let find = |consumer: &str, kind: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["consumer"] == consumer && e["kind"] == kind && e["version"] == 1)
            .cloned()
            .collect()
    };
    for name in ["alpha", "beta"] {
        let retired = find(&format!("prod/{name}"), "version.retired");
        assert_eq!(retired.len(), 1, "{name}: {events:?}");
        assert_eq!(
            retired[0]["detail"]["reason"], "idle",
            "{name}: {retired:?}"
        );
        assert!(
            find(&format!("prod/{name}"), "rotation.stalled").is_empty(),
            "{name} must not stall"
        );
    }
    let stalled = find("prod/gamma", "rotation.stalled");
    assert_eq!(stalled.len(), 1, "{events:?}");
    assert_eq!(
        stalled[0]["detail"]["sources"][0]["client_id"], "client-gamma",
        "{stalled:?}"
    );
    let retired = find("prod/gamma", "version.retired");
    assert_eq!(retired.len(), 1, "{events:?}");
    assert_eq!(retired[0]["detail"]["reason"], "deadline");
    assert_eq!(retired[0]["detail"]["replaced_by"], 2);
    // The stall is an ERROR line.
    let stall_log = s.events("rotation.stalled");
    assert_eq!(stall_log.len(), 1);
    assert_eq!(stall_log[0]["level"], "error");
    assert_eq!(stall_log[0]["consumer"], "prod/gamma");
}
