//! The shipped nginx config (`examples/nginx/keyroll.conf`) run by real nginx in front of a small
//! upstream, with keyroll as the `auth_request` backend.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness;

/// An upstream that answers 200 and remembers the headers of every request it got.
fn upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve_one(stream, &sink));
        }
    });
    (addr, seen)
}

fn serve_one(stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        seen.lock().unwrap().push(head.to_ascii_lowercase());
        let body = "hello from upstream";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(prefix: &Path, keyroll: &str, upstream: &str) -> (Nginx, String) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    let listen = format!("127.0.0.1:{}", free_port());
    let conf = std::fs::read_to_string(examples.join("keyroll.conf"))
        .unwrap()
        .replace("@KEYROLL_ADDR@", keyroll)
        .replace("@UPSTREAM_ADDR@", upstream)
        .replace("@LISTEN@", &listen)
        .replace("@ENVIRONMENT@", "prod");
    let include = prefix.join("keyroll.conf");
    std::fs::write(&include, conf).unwrap();
    let wrapper = std::fs::read_to_string(examples.join("test-wrapper.conf"))
        .unwrap()
        .replace("@PREFIX@", prefix.to_str().unwrap())
        .replace("@INCLUDE@", include.to_str().unwrap());
    let main = prefix.join("nginx.conf");
    std::fs::write(&main, wrapper).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&main)
        .arg("-p")
        .arg(prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, listen)
}

#[test]
fn nginx_auth_request_passes_valid_keys_and_explains_rejections() {
    if !harness::require_program("nginx", "apt-get install -y nginx") {
        return;
    }
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let v1 = s.consumer("prod/billing-app", &[]);
    let v2 = s.rotate("prod/billing-app", &["--grace", "1h"]);
    let v3 = s.rotate("prod/billing-app", &["--grace", "1h"]);
    assert_eq!(s.cli(&["retire", "prod/billing-app", "v1"]).code, 0);
    assert_eq!(
        s.cli(&["revoke", "prod/billing-app", "v2", "--reason", "leaked"])
            .code,
        0
    );
    let (up, seen) = upstream();
    let prefix = tempfile::tempdir().unwrap();
    let (_nginx, listen) = start_nginx(prefix.path(), &s.addr, &up);
    let client = harness::http();
    let url = format!("http://{listen}/invoices/7");

    let ok = client
        .get(&url)
        .header("authorization", format!("Bearer {v3}"))
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().unwrap(), "hello from upstream");
    let heads = seen.lock().unwrap().clone();
    let last = heads.last().expect("the upstream got the request");
    assert!(
        last.contains("x-keyroll-consumer: prod/billing-app"),
        "{last}"
    );
    assert!(last.contains("x-keyroll-version: v3"), "{last}");
    assert!(
        !last.contains(&v3.to_ascii_lowercase()),
        "the key is not forwarded to the app"
    );

    let cases = [
        ("retired", Some(v1.clone()), "key_retired", "v3 replaces it"),
        ("revoked", Some(v2.clone()), "key_revoked", "leaked"),
        (
            "malformed",
            Some(format!("{v3}x")),
            "malformed_credential",
            "bad length",
        ),
        ("missing", None, "missing_credential", "no API key"),
    ];
    let before = seen.lock().unwrap().len();
    for (name, key, code, words) in cases {
        let mut req = client.get(&url);
        if let Some(k) = &key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{name}");
        assert_eq!(r.headers()["x-keyroll-code"], code, "{name}");
        assert!(r.headers().get("www-authenticate").is_some(), "{name}");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["code"], code, "{name}");
        assert!(
            body["detail"].as_str().unwrap().contains(words),
            "{name}: {body}"
        );
        // The same request id is in the keyroll log line, with the same code.
        let line = s.decision(&rid);
        assert_eq!(line["code"], code, "{name}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "rejected requests never reach the app"
    );
    let mut err = String::new();
    let _ = std::fs::File::open(prefix.path().join("error.log"))
        .and_then(|mut f| f.read_to_string(&mut err));
    assert!(!err.contains("[emerg]"), "{err}");
}
