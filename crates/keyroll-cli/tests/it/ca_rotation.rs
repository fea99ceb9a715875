//! A root rotation under continuous handshakes, with the real binary, real agents and real TLS:
//! `keyroll serve` verifies client certificates against its own CA (`client_auth = "optional"`,
//! no `client_ca_file`) and counts every handshake as a use of the root it chained to; two
//! agents (prod/api, prod/web) keep 5-minute certificates renewed at a tenth of their life and
//! run a reload command; client threads copy the set on each reload (as an app rereads its
//! files) and make a mutual-TLS request every 100 ms with it. `keyroll ca rotate --root` brings a
//! new root and intermediate into the bundle, switches signing, the agents renew onto the new
//! intermediate, and the old root leaves the bundle only once the last certificate it signed has
//! expired and no handshake chained to it for `idle`. Not one handshake with a valid certificate
//! fails along the way.
//!
//! A second instance of each app (the "stale" threads) keeps the last certificate the old root
//! signed until a few seconds before it expires, so the old root's last use is late and the
//! `idle` part of the gate is what holds it at the end, not only the certificates' lifetimes.
//!
//! The listener's own server certificate comes from a fixed test CA made with openssl, not from
//! keyroll's CA: the agents' connection to the server trusts a `--ca-file` read once at start,
//! so a listener certificate moving to the new root would cut them off (a limitation of the
//! agent today, not of the rotation measured here).
//!
//! This test takes about 6 minutes of wall time (the CA's minimum leaf lifetime of 5 minutes
//! bounds it); it waits on conditions with deadlines, never on fixed sleeps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyroll_core::Timestamp;
use serde_json::Value;

use crate::agent::{Agent, write_key};
use crate::harness::{self, Run};

/// The old root's removal gate: no handshake chained to it for this long.
const IDLE_SECS: u64 = 30;
/// The stale threads stop this long before their certificate's notAfter (a certificate that is
/// about to expire is no longer one every handshake must succeed with).
const STALE_MARGIN: Duration = Duration::from_secs(5);

/// The wall clock, which is the server's clock here.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Timestamp::from_unix_millis(i64::try_from(now.as_millis()).unwrap())
}

fn ts(v: &Value) -> Timestamp {
    keyroll_core::parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// Polls `f` every `every` until it returns `Some`, failing after `within`.
fn wait_for<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// A self-signed server certificate for 127.0.0.1 (the listener's, outside keyroll's CA).
fn listener_cert(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=keyroll listener",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI against the HTTPS listener.
struct Https {
    base: String,
    ca_file: PathBuf,
    token: String,
    client: reqwest::blocking::Client,
}

impl Https {
    fn new(base: String, ca_file: PathBuf, token: String) -> Https {
        keyroll_ca::tls::install_provider();
        let trust =
            keyroll_ca::TrustStore::from_bundle_pem(&std::fs::read(&ca_file).unwrap()).unwrap();
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(keyroll_ca::client_config(&trust, None).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Https {
            base,
            ca_file,
            token,
            client,
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        let out = Command::new(harness::BIN)
            .args(["--server", &self.base])
            .arg("--ca-file")
            .arg(&self.ca_file)
            .args(["--token", &self.token])
            .args(args)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `keyroll ca status --output json`.
    fn status(&self) -> Value {
        let r = ok(self.cli(&["ca", "status", "--output", "json"]));
        serde_json::from_str(&r.stdout).unwrap()
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }

    /// The serials (lowercase hex) of the roots `GET /v1/ca/bundle` serves.
    fn bundle_root_serials(&self) -> Vec<String> {
        let b = self.get("/v1/ca/bundle?format=json");
        keyroll_ca::parse_pem_certs(b["roots_pem"].as_str().unwrap().as_bytes())
            .unwrap()
            .iter()
            .map(|der| norm(&keyroll_ca::inspect(der).unwrap().serial_hex))
            .collect()
    }

    /// The bundle version each agent of `consumer` reports.
    fn agent_versions(&self, consumer: &str) -> Vec<u64> {
        let v = self.get("/v1/agents");
        v["items"]
            .as_array()
            .or_else(|| v["agents"].as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["consumer"] == consumer)
            .filter_map(|a| a["bundle_version"].as_u64())
            .collect()
    }
}

/// The serial of the intermediate in DIR/cert.pem.
fn intermediate_serial(dir: &Path) -> Option<String> {
    let chain = keyroll_ca::parse_pem_certs(&std::fs::read(dir.join("cert.pem")).ok()?).ok()?;
    Some(norm(&keyroll_ca::inspect(chain.get(1)?).ok()?.serial_hex))
}

fn norm(serial: &str) -> String {
    serial.replace(':', "").to_ascii_lowercase()
}

fn authority<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no authority {id} in {status}"))
}

/// The id of the authority of `kind` in `state`, if there is one.
fn find(status: &Value, kind: &str, state: &str) -> Option<String> {
    status["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == kind && a["state"] == state)
        .map(|a| a["id"].as_str().unwrap().to_owned())
}

/// What the client threads saw.
#[derive(Default)]
struct Stats {
    /// Successful requests whose certificate chained to the first intermediate / to another.
    old_ok: AtomicU64,
    new_ok: AtomicU64,
    /// Every failed request with a valid certificate: thread, time, serial, error.
    failures: Mutex<Vec<String>>,
    /// When a stale thread last succeeded with a certificate of the old intermediate.
    stale_last_ok: Mutex<Option<Timestamp>>,
    /// The stale threads that stopped (their certificate about to expire).
    stale_done: AtomicU64,
}

/// One app instance: its copy of the set, taken on a reload signal.
struct Held {
    client: reqwest::blocking::Client,
    serial: String,
    intermediate: Vec<u8>,
    not_after: Timestamp,
}

/// The reload lines the agent's command wrote (`KIND SERIAL VERSION`, `-` for no serial):
/// (count, the last one's serial).
fn reloads(file: &Path) -> (usize, Option<String>) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let last = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        // A bundle-only reload names no certificate.
        .filter(|serial| *serial != "-")
        .map(norm);
    (text.lines().count(), last)
}

/// Copies the set in `dir` (as an app rereads its files on reload); `None` when cert.pem is not
/// the certificate the last reload announced (a newer set is being put in place: the next reload
/// signal will say so).
fn copy_set(
    dir: &Path,
    announced: Option<&str>,
    server_trust: &keyroll_ca::TrustStore,
) -> Option<Held> {
    let cert_pem = std::fs::read(dir.join("cert.pem")).ok()?;
    let key_pem = std::fs::read(dir.join("key.pem")).ok()?;
    let chain = keyroll_ca::parse_pem_certs(&cert_pem).ok()?;
    let leaf = keyroll_ca::inspect(chain.first()?).ok()?;
    let serial = norm(&leaf.serial_hex);
    if announced.is_some_and(|a| a != serial) {
        return None;
    }
    let key = keyroll_ca::parse_pem_private_key(&key_pem).ok()?;
    let intermediate = chain.get(1)?.clone();
    let config = keyroll_ca::client_config(server_trust, Some((chain, &key))).ok()?;
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(config)
        // A new connection, so a new handshake, for every request.
        .pool_max_idle_per_host(0)
        // Generous: a slow answer on a busy machine is not a lost handshake.
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    Some(Held {
        client,
        serial,
        intermediate,
        not_after: leaf.not_after,
    })
}

/// A client thread of `name`. A current one takes every new set; a stale one only sets signed by
/// `old_intermediate` (the first one it saw), and stops shortly before that certificate expires.
#[allow(clippy::too_many_arguments)]
fn client(
    name: String,
    dir: PathBuf,
    reload_file: PathBuf,
    url: String,
    server_trust: Arc<keyroll_ca::TrustStore>,
    stale: bool,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    old_intermediate: Arc<Mutex<Option<Vec<u8>>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seen = 0;
        let mut copy: Option<Held> = None;
        while !stop.load(Ordering::Relaxed) {
            let (count, announced) = reloads(&reload_file);
            if count != seen
                && let Some(c) = copy_set(&dir, announced.as_deref(), &server_trust)
            {
                seen = count;
                let old = old_intermediate
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| c.intermediate.clone())
                    .clone();
                if !stale || c.intermediate == old {
                    copy = Some(c);
                }
            }
            let Some(c) = &copy else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let is_old = old_intermediate.lock().unwrap().as_deref() == Some(&c.intermediate[..]);
            if stale && wall_now().saturating_add(STALE_MARGIN) >= c.not_after {
                stats.stale_done.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let result = c.client.get(&url).send().and_then(|r| {
                let status = r.status();
                r.text().map(|body| (status, body))
            });
            match result {
                Ok((status, body)) if status.is_success() && body.contains("ok") => {
                    if is_old {
                        stats.old_ok.fetch_add(1, Ordering::Relaxed);
                        if stale {
                            *stats.stale_last_ok.lock().unwrap() = Some(wall_now());
                        }
                    } else {
                        stats.new_ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                other => {
                    let what = match other {
                        Ok((status, body)) => format!("{status}: {body}"),
                        Err(e) => format!("{e:?}"),
                    };
                    stats.failures.lock().unwrap().push(format!(
                        "{name} at {} with {}: {what}",
                        keyroll_core::rfc3339(wall_now()),
                        c.serial
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(if stale { 200 } else { 100 }));
        }
    })
}

#[test]
fn a_root_rotation_under_continuous_handshakes_loses_none_and_retires_the_old_root_after_its_last_use()
 {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let s = harness::start_in(&data);
    // Lifetimes long enough that no rotation starts by itself within the test (half life).
    ok(s.cli(&[
        "ca",
        "init",
        "--trust-domain",
        "example.test",
        "--root-ttl",
        "4h",
        "--intermediate-ttl",
        "2h",
    ]));
    ok(s.cli(&["env", "create", "prod"]));
    let keys: Vec<String> = ["api", "web"]
        .iter()
        .map(|n| s.consumer(&format!("prod/{n}"), &["--delivery", "agent"]))
        .collect();
    let token = s.token();
    assert_eq!(s.terminate(), Some(0));

    let listener = d.join("listener");
    std::fs::create_dir(&listener).unwrap();
    listener_cert(&listener);
    let config = d.join("keyroll.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_auth = \"optional\"\n\n[usage]\nflush_interval = \"1s\"\nsweep_interval = \"500ms\"\n",
            listener.join("cert.pem"),
            listener.join("key.pem"),
        ),
    )
    .unwrap();
    let s = harness::start_in_with(&data, &["-c", config.to_str().unwrap()]);
    let port = s.addr.rsplit(':').next().unwrap().to_owned();
    let base = format!("https://127.0.0.1:{port}");
    let listener_ca = listener.join("cert.pem");
    let h = Https::new(base.clone(), listener_ca.clone(), token);
    let first = h.status();
    let r1 = find(&first, "root", "active").expect("an active root");
    let i1 = find(&first, "intermediate", "active").expect("an active intermediate");
    let r1_serial = norm(authority(&first, &r1)["serial"].as_str().unwrap());
    let r1_fingerprint = authority(&first, &r1)["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two agents, 5-minute certificates renewed at a tenth of their life (30 s ± 3 s).
    let mut agents = Vec::new();
    for (name, key) in ["api", "web"].iter().zip(&keys) {
        let key_file = d.join(format!("{name}.key"));
        write_key(&key_file, key);
        let reload = d.join(format!("{name}.reloads"));
        let on_change = format!(
            "echo \"$KEYROLL_CHANGED ${{KEYROLL_CERT_SERIAL:--}} $KEYROLL_BUNDLE_VERSION\" >> {}",
            reload.display()
        );
        let consumer = format!("prod/{name}");
        let cert_dir = d.join(name);
        let args = [
            "--ca-file",
            listener_ca.to_str().unwrap(),
            "agent",
            "--consumer",
            &consumer,
            "--key-file",
            key_file.to_str().unwrap(),
            "--cert-dir",
            cert_dir.to_str().unwrap(),
            "--cert-ttl",
            "5m",
            "--cert-renew-at",
            "0.1",
            "--on-change",
            &on_change,
            "--poll-wait",
            "5s",
            "--heartbeat",
            "2s",
        ];
        agents.push(Agent::spawn(&base, &args));
    }
    for a in &agents {
        a.wait_for("agent.cert_reload", 1, Duration::from_secs(30));
    }

    // Continuous handshakes: per consumer a current app and a stale one.
    keyroll_ca::tls::install_provider();
    let server_trust = Arc::new(
        keyroll_ca::TrustStore::from_bundle_pem(&std::fs::read(&listener_ca).unwrap()).unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let url = format!("{base}/healthz");
    let mut threads = Vec::new();
    for name in ["api", "web"] {
        let old_intermediate = Arc::new(Mutex::new(None));
        for stale in [false, true] {
            threads.push(client(
                format!("{name}{}", if stale { "-stale" } else { "" }),
                d.join(name),
                d.join(format!("{name}.reloads")),
                url.clone(),
                Arc::clone(&server_trust),
                stale,
                Arc::clone(&stop),
                Arc::clone(&stats),
                Arc::clone(&old_intermediate),
            ));
        }
    }
    let fail_fast = |stats: &Stats| {
        let f = stats.failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "handshakes with valid certificates failed: {f:#?}"
        );
    };
    wait_for(
        "handshakes with the first certificates",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (stats.old_ok.load(Ordering::Relaxed) >= 20).then_some(()),
    );
    // Each agent renews once under the old root (30 s in), and its app takes the new set.
    for (name, a) in ["api", "web"].iter().zip(&agents) {
        let issued = a.wait_for("agent.cert_issued", 2, Duration::from_secs(60));
        let serial = norm(issued[1]["serial"].as_str().unwrap());
        wait_for(
            &format!("{name}'s reload with {serial}"),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                (reloads(&d.join(format!("{name}.reloads"))).1 == Some(serial.clone()))
                    .then_some(())
            },
        );
    }
    fail_fast(&stats);
    // The handshakes count as uses of the old root.
    wait_for(
        "the old root's recorded handshakes",
        Duration::from_secs(15),
        Duration::from_millis(500),
        || {
            let st = h.status();
            let hs = authority(&st, &r1)["depends"]["recent_handshakes"].clone();
            let ids: Vec<&str> = hs
                .as_array()?
                .iter()
                .filter_map(|x| x["identity"].as_str())
                .collect();
            (ids.contains(&"prod/api") && ids.contains(&"prod/web")).then_some(())
        },
    );

    // The rotation: the new root and intermediate enter the bundle now, sign 10 s later.
    let enters = wall_now();
    let signs = enters.saturating_add(Duration::from_secs(10));
    ok(h.cli(&[
        "ca",
        "rotate",
        "--root",
        "--enters-bundle-at",
        &keyroll_core::rfc3339(enters),
        "--signs-from",
        &keyroll_core::rfc3339(signs),
        "--idle",
        &format!("{IDLE_SECS}s"),
    ]));
    let rotated_at = Instant::now();
    let st = wait_for(
        "the new root and intermediate in the bundle",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            let st = h.status();
            let both = find(&st, "root", "bundled").is_some()
                && find(&st, "intermediate", "bundled").is_some();
            // Signing may already have switched by the time we look.
            let switched = find(&st, "root", "retiring").is_some();
            (both || switched).then_some(st)
        },
    );
    let r2 = st["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "root" && a["id"] != r1.as_str())
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .unwrap();
    let r2_serial = norm(authority(&st, &r2)["serial"].as_str().unwrap());
    // Both agents refresh ca.pem and report the bundle with the new root in it.
    let v = st["bundle_version"].as_u64().unwrap();
    for consumer in ["prod/api", "prod/web"] {
        wait_for(
            &format!("{consumer} on bundle {v}"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                h.agent_versions(consumer)
                    .iter()
                    .any(|x| *x >= v)
                    .then_some(())
            },
        );
    }
    for name in ["api", "web"] {
        let ca = std::fs::read_to_string(d.join(name).join("ca.pem")).unwrap();
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 2, "{name}: {ca}");
    }
    let roots = h.bundle_root_serials();
    assert!(
        roots.contains(&r1_serial) && roots.contains(&r2_serial),
        "{roots:?}"
    );

    // Signing switches: the old root retires, held by the certificates it signed and by the
    // handshakes that chain to it.
    let st = wait_for(
        "the signing switch",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let st = h.status();
            (authority(&st, &r1)["state"] == "retiring").then_some(st)
        },
    );
    let i2 = find(&st, "intermediate", "active").expect("the new intermediate signs");
    assert_ne!(i2, i1);
    assert_eq!(authority(&st, &i1)["state"], "retiring", "{st}");
    let held = &authority(&st, &r1)["depends"];
    let idents: Vec<&str> = held["live_certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    assert!(
        idents.contains(&"prod/api") && idents.contains(&"prod/web"),
        "{held}"
    );
    assert!(
        !held["recent_handshakes"].as_array().unwrap().is_empty(),
        "{held}"
    );
    assert!(h.bundle_root_serials().contains(&r1_serial));
    fail_fast(&stats);

    // The agents renew onto the new intermediate; the current apps use the new certificates.
    let i2_serial = norm(authority(&st, &i2)["serial"].as_str().unwrap());
    for name in ["api", "web"] {
        wait_for(
            &format!("{name}'s certificate from the new intermediate"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || (intermediate_serial(&d.join(name)) == Some(i2_serial.clone())).then_some(()),
        );
    }
    wait_for(
        "handshakes with the new certificates",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || (stats.new_ok.load(Ordering::Relaxed) >= 20).then_some(()),
    );
    fail_fast(&stats);

    // Every certificate of the old intermediate: the last one expires at most 5 minutes after
    // the switch.
    let old_certs = |h: &Https| -> Vec<Value> {
        let mut all = Vec::new();
        for identity in ["prod/api", "prod/web"] {
            let r = ok(h.cli(&["cert", "list", "--identity", identity, "--output", "json"]));
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            let list = v["certificates"]
                .as_array()
                .or_else(|| v["items"].as_array())
                .unwrap()
                .clone();
            all.extend(list.into_iter().filter(|c| c["issuer_id"] == i1.as_str()));
        }
        all
    };
    let last_old_expiry = old_certs(&h)
        .iter()
        .map(|c| ts(&c["not_after"]))
        .max()
        .expect("certificates of the old intermediate");

    // Once every certificate it signed has expired, the old root is still in the bundle: the
    // stale apps' handshakes are recent.
    let st = wait_for(
        "the old root's last certificate to expire",
        Duration::from_secs(360),
        Duration::from_millis(1000),
        || {
            fail_fast(&stats);
            let st = h.status();
            authority(&st, &r1)["depends"]["live_certificates"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(st)
        },
    );
    assert!(wall_now() >= last_old_expiry);
    let a = authority(&st, &r1);
    assert_eq!(
        a["state"], "retiring",
        "the old root left before its idle: {st}"
    );
    assert!(
        !a["depends"]["recent_handshakes"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{st}"
    );
    assert!(h.bundle_root_serials().contains(&r1_serial));

    // Then it leaves, and no sooner than `idle` after its last handshake.
    let st = wait_for(
        "the old root's removal",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            fail_fast(&stats);
            let st = h.status();
            (authority(&st, &r1)["state"] == "removed").then_some(st)
        },
    );
    let removed_after = rotated_at.elapsed();
    let removed_at = ts(&authority(&st, &r1)["removed_at"]);
    assert_eq!(
        authority(&st, &i1)["state"],
        "removed",
        "the old intermediate left with its root: {st}"
    );
    assert_eq!(
        stats.stale_done.load(Ordering::Relaxed),
        2,
        "both stale apps used their last old certificate to the end"
    );
    assert!(!h.bundle_root_serials().contains(&r1_serial));
    assert!(h.bundle_root_serials().contains(&r2_serial));
    assert!(
        removed_at >= last_old_expiry,
        "removed {removed_at:?}, last expiry {last_old_expiry:?}"
    );
    let stale_last = stats
        .stale_last_ok
        .lock()
        .unwrap()
        .expect("stale handshakes");
    // The server's own record of the last handshake chained to the old root.
    let server_last = s
        .events("cert.decision")
        .iter()
        .filter(|e| e["code"] == "valid" && e["anchor"] == r1_fingerprint.as_str())
        .map(|e| ts(&e["ts"]))
        .max()
        .expect("handshakes chained to the old root in the server's log");
    assert!(server_last <= stale_last.saturating_add(Duration::from_secs(1)));
    assert!(
        removed_at >= server_last.saturating_add(Duration::from_secs(IDLE_SECS)),
        "removed {} but the last handshake with it was {}",
        keyroll_core::rfc3339(removed_at),
        keyroll_core::rfc3339(server_last)
    );
    assert!(removed_at > stale_last);

    // The agents take the one-root bundle, and the handshakes go on.
    let v = h.status()["bundle_version"].as_u64().unwrap();
    for consumer in ["prod/api", "prod/web"] {
        wait_for(
            &format!("{consumer} on bundle {v}"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                h.agent_versions(consumer)
                    .iter()
                    .any(|x| *x >= v)
                    .then_some(())
            },
        );
    }
    for name in ["api", "web"] {
        let ca = std::fs::read_to_string(d.join(name).join("ca.pem")).unwrap();
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1, "{name}: {ca}");
    }
    let after = stats.new_ok.load(Ordering::Relaxed);
    wait_for(
        "handshakes after the removal",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (stats.new_ok.load(Ordering::Relaxed) >= after + 20).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    fail_fast(&stats);
    let (old_ok, new_ok) = (
        stats.old_ok.load(Ordering::Relaxed),
        stats.new_ok.load(Ordering::Relaxed),
    );
    println!(
        "rotation: {old_ok} handshakes on the old root, {new_ok} on the new one, none failed; old root removed {:?} after the rotation started, {:?} in all",
        removed_after,
        started.elapsed()
    );
    // Every agent renewed several times and reloaded its app each time.
    for a in &agents {
        assert!(a.events("agent.cert_issued").len() >= 3, "{}", a.text());
    }
}
