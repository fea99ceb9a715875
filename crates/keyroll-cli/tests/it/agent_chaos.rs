//! `kill -9` the agent at random moments while rotations keep being asked for, and restart it
//! each time: after every kill the key file holds a key the server accepts, and at the end the
//! agent converges on the active version. The seed is printed (`AGENT_CHAOS_SEED` replays it).
//! The reload command takes 200 ms, so that many kills land between writing a key and telling
//! the app, which the next start must make up for.

use std::time::{Duration, Instant};

use crate::agent::{Agent, read_key, request_rotation, verify, wait_until, write_key};
use crate::harness;

const KILLS: usize = 32;

#[test]
fn kill_9_at_random_moments_never_leaves_the_app_without_a_valid_key() {
    let seed = std::env::var("AGENT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b65_7972_6f6c_6c21_u64);
    println!("agent chaos seed {seed} (set AGENT_CHAOS_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let first = s.consumer("prod/chaos", &["--delivery", "agent", "--grace", "20s"]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("chaos.key");
    write_key(&key_file, &first);
    let kf = key_file.to_str().unwrap().to_owned();
    let args = [
        "agent",
        "--consumer",
        "prod/chaos",
        "--key-file",
        &kf,
        "--poll-wait",
        "2s",
        "--heartbeat",
        "1s",
        "--on-change",
        "sleep 0.2",
    ];
    let mut recovered = 0;
    let mut pending = 0;
    let mut highest = 1;
    for i in 0..KILLS {
        let agent = Agent::spawn(&s.url(), &args);
        let requested = rng.u8(0..3) > 0;
        if requested {
            request_rotation(&s, "prod/chaos");
        }
        // A third of the kills at a random moment; the others just after the agent logged a
        // step of a rotation, when the interesting writes are in flight.
        let after = ["", "agent.rotated", "agent.key_written"][rng.usize(0..3)];
        if requested && !after.is_empty() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while agent.events(after).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.u64(0..60)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.u64(0..700)));
        }
        recovered += agent.events("agent.recovered").len();
        let events: Vec<String> = agent
            .events_all()
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("?").to_owned())
            .collect();
        agent.kill9();
        println!("kill {i}: {after:?} after {events:?}");
        let st = crate::agent::state(&key_file);
        pending += usize::from(!st["intent"].is_null() || !st["reload_pending"].is_null());
        let key = read_key(&key_file);
        let v = verify(&s, &key);
        assert_eq!(
            v["allowed"], true,
            "kill {i}: the key file holds a rejected key: {v}"
        );
        let version = v["version"].as_u64().unwrap();
        assert!(
            version >= highest,
            "kill {i}: went back from v{highest} to v{version}"
        );
        highest = version;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "kill {i}");
    }
    println!(
        "{KILLS} kills, up to v{highest}, {pending} with an intent or reload pending, {recovered} recoveries seen"
    );
    assert!(
        highest >= 4,
        "the rotations went on between kills (v{highest})"
    );

    // Left alone, the agent settles on the active version.
    let agent = Agent::spawn(&s.url(), &args);
    let active = || {
        let c: serde_json::Value = serde_json::from_str(
            &s.cli(&["consumer", "show", "prod/chaos", "--output", "json"])
                .stdout,
        )
        .unwrap();
        c["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "active")
            .map(|v| v["version"].as_u64().unwrap())
            .max()
            .unwrap()
    };
    let started = Instant::now();
    wait_until(
        "the agent holds the active version",
        Duration::from_secs(30),
        || {
            let v = verify(&s, &read_key(&key_file));
            v["version"].as_u64() == Some(active()) && v["state"] == "active"
        },
    );
    println!("converged in {:?}", started.elapsed());
    // Nothing pending is left behind.
    wait_until("no pending intent", Duration::from_secs(10), || {
        let st = crate::agent::state(&key_file);
        st["intent"].is_null() && st["reload_pending"].is_null()
    });
    agent.kill9();
}
