//! A real rustls handshake (client and server connections pumping bytes in memory) through the
//! `ReasonedClientVerifier`: the sink sees every decision with the anchor and the peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use keyroll_ca::{
    AnchorId, CertCode, CertDecision, DecisionSink, IdentityPolicy, KeySource, LeafRequest,
    ReasonedClientVerifier, Serial, Signer, SpiffeId, TrustDomain, TrustStore, client_config, crl,
    issue_leaf, new_intermediate, new_root, server_config,
};
use keyroll_core::Timestamp;
use parking_lot::{Mutex, RwLock};
use rustls::{ClientConnection, ServerConnection};

/// What the sink got.
type Seen = (CertDecision, Option<SocketAddr>);

const DAY: Duration = Duration::from_secs(86_400);

fn now_ms() -> i64 {
    // Real wall time: rustls checks the server certificate against its own clock.
    #[allow(clippy::disallowed_methods)]
    let t = std::time::SystemTime::now();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Moves bytes between the two sides until both finish or one fails.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            client
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !server.wants_write()
            && !client.wants_write()
        {
            return Ok(());
        }
    }
    Err("handshake did not finish".to_owned())
}

#[test]
fn a_valid_client_certificate_passes_and_an_expired_one_is_reported() {
    let now = Timestamp::from_unix_millis(now_ms());
    let td = TrustDomain::parse("example.org").unwrap();
    let root = new_root(&td, 1, now, 365 * DAY, Serial::from_random([1; 16])).unwrap();
    let root_s = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
    let inter =
        new_intermediate(&root_s, &td, 1, now, 90 * DAY, Serial::from_random([2; 16])).unwrap();
    let inter_s = Signer::from_parts(&inter.cert_der, &inter.key_pkcs8_der).unwrap();
    let crls = vec![
        crl(&root_s, 1, now, now.saturating_add(7 * DAY), &[]).unwrap(),
        crl(&inter_s, 1, now, now.saturating_add(7 * DAY), &[]).unwrap(),
    ];
    let trust = TrustStore::new(vec![root.cert_der.clone()], vec![], crls).unwrap();

    let issue = |svc: &str, server_auth: bool, n: u8| {
        let mut req = LeafRequest {
            identity: SpiffeId::from_parts(&td, "prod", svc).unwrap(),
            lifetime: DAY,
            server_auth,
            dns_names: vec![],
            ip_addresses: vec![],
            serial: Serial::from_random([n; 16]),
        };
        if server_auth {
            req.dns_names.push("keyroll.internal".to_owned());
        }
        issue_leaf(&inter_s, &req, KeySource::Generate, now).unwrap()
    };
    let server_leaf = issue("keyroll", true, 3);
    let client_leaf = issue("billing", false, 4);

    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink_seen = seen.clone();
    let sink: DecisionSink = Arc::new(move |d, peer| sink_seen.lock().push((d.clone(), peer)));
    let clock = Arc::new(AtomicI64::new(now.unix_millis()));
    let c = clock.clone();
    let verifier = ReasonedClientVerifier::new(
        Arc::new(RwLock::new(Arc::new(trust.clone()))),
        IdentityPolicy::new(td.clone(), &["prod/*"]).unwrap(),
        true,
        sink,
        Arc::new(move || Timestamp::from_unix_millis(c.load(Ordering::Relaxed))),
    );
    let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();

    let connect = || {
        let server = server_config(
            vec![server_leaf.cert_der.clone(), inter.cert_der.clone()],
            server_leaf.key_pkcs8_der.as_ref().unwrap(),
            Some(verifier.for_peer(peer)),
        )
        .unwrap();
        let client = client_config(
            &trust,
            Some((
                vec![client_leaf.cert_der.clone(), inter.cert_der.clone()],
                client_leaf.key_pkcs8_der.as_ref().unwrap(),
            )),
        )
        .unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        let mut cl =
            ClientConnection::new(Arc::new(client), "keyroll.internal".try_into().unwrap())
                .unwrap();
        pump(&mut cl, &mut s)
    };

    connect().unwrap();
    {
        let seen = seen.lock();
        assert_eq!(seen.len(), 1);
        let (d, p) = &seen[0];
        assert_eq!(d.code, CertCode::Valid, "{}", d.detail);
        assert_eq!(d.anchor, Some(AnchorId::of(&root.cert_der)));
        assert_eq!(*p, Some(peer));
        assert_eq!(d.serial, Some(client_leaf.serial));
    }

    // Two days later (the verifier's clock only: the server certificate is checked by the client
    // against real time), the client certificate has expired.
    clock.store(now.saturating_add(2 * DAY).unix_millis(), Ordering::Relaxed);
    let err = connect().unwrap_err();
    assert!(err.contains("server"), "{err}");
    let seen = seen.lock();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].0.code,
        CertCode::CertExpired,
        "{}",
        seen[1].0.detail
    );
    assert_eq!(seen[1].1, Some(peer));
}
