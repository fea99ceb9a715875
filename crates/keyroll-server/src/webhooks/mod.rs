//! Signed webhooks (SPEC §10): what an event of the outbox becomes on the wire, which
//! endpoints get it, and the sender that delivers it at least once.
//!
//! - [`ssrf`]: which addresses the sender may connect to.
//! - [`sender`]: one tick of the sender (enqueue new events, send what is due), run by
//!   `jobs::webhooks`.
//! - This module: the pure rules — event kind → webhook type, subscriptions, the body (never a
//!   key), and which deliveries a batch of events makes ([`plan_enqueue`]).

pub mod sender;
pub mod ssrf;

use keyroll_core::{Timestamp, rfc3339};
use keyroll_store::{DeliveryState, EventRecord, WebhookDelivery, WebhookEndpoint};
use serde_json::{Value, json};

pub use keyroll_webhooks::DEFAULT_EVENTS;

/// The webhook type of an outbox event: a new version after the first is a rotation that
/// started; every other kind keeps its name.
pub fn webhook_type(kind: &str, version: Option<u32>) -> &str {
    match (kind, version) {
        ("version.issued", Some(v)) if v > 1 => "rotation.started",
        _ => kind,
    }
}

/// Whether an endpoint subscribed to `events` receives type `ty`.
pub fn subscribed(events: &[String], ty: &str) -> bool {
    events.iter().any(|e| e == "*" || e == ty)
}

/// Checks the event types of a registration: `*` alone, or names like `rotation.started`
/// (lowercase words joined by dots); sorted and deduplicated.
pub fn check_events(events: &[String]) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Err(format!(
            "events is empty; name the types to receive, or [\"*\"] for all (the default is {})",
            DEFAULT_EVENTS.join(", ")
        ));
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let ok = e == "*"
            || (e.len() <= 64
                && e.split('.').count() >= 2
                && e.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }));
        if !ok {
            return Err(format!(
                "events: {e:?} is not an event type (like rotation.started) or *"
            ));
        }
        out.push(e.clone());
    }
    out.sort();
    out.dedup();
    if out.len() > 1 && out.iter().any(|e| e == "*") {
        return Err("events: * already means every type; give it alone".into());
    }
    Ok(out)
}

/// `webhook-id` of an event: the same for every attempt, replay and endpoint.
pub fn msg_id(event_seq: i64) -> String {
    format!("msg_{event_seq}")
}

/// The JSON body of an event, as bytes (the bytes signed are the bytes sent). Never a key: an
/// event's detail holds kids and times only, and any key-shaped text is redacted all the same.
pub fn body(event: &EventRecord) -> Vec<u8> {
    let (environment, name) = match event.consumer.split_once('/') {
        Some((e, n)) => (Value::from(e), Value::from(n)),
        None => (Value::Null, Value::Null),
    };
    let detail: Value = serde_json::from_str(&event.detail).unwrap_or(Value::Null);
    let consumer = if event.consumer.is_empty() {
        Value::Null
    } else {
        Value::from(event.consumer.as_str())
    };
    let doc = json!({
        "type": webhook_type(&event.kind, event.version),
        "timestamp": rfc3339(event.at),
        "data": {
            "consumer": consumer,
            "environment": environment,
            "name": name,
            "version": event.version,
            "detail": detail,
            "event_seq": event.seq,
        },
    });
    let text = doc.to_string();
    crate::logging::redact_keys(&text).into_owned().into_bytes()
}

/// The deliveries `events` make: one per event and enabled endpoint subscribed to its type and
/// registered by the event's time, pending and due at `now`. `new_id` names each.
pub fn plan_enqueue(
    events: &[EventRecord],
    endpoints: &[WebhookEndpoint],
    now: Timestamp,
    mut new_id: impl FnMut() -> Option<String>,
) -> Option<Vec<WebhookDelivery>> {
    let mut out = Vec::new();
    for event in events {
        let ty = webhook_type(&event.kind, event.version);
        for endpoint in endpoints {
            if endpoint.disabled.is_some()
                || endpoint.created_at > event.at
                || !subscribed(&endpoint.events, ty)
            {
                continue;
            }
            out.push(WebhookDelivery {
                id: new_id()?,
                endpoint_id: endpoint.id.clone(),
                event_seq: event.seq,
                msg_id: msg_id(event.seq),
                state: DeliveryState::Pending,
                attempts: 0,
                next_attempt_at: Some(now),
                last_status: None,
                last_error: None,
                created_at: now,
                delivered_at: None,
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: i64, kind: &str, version: Option<u32>, at: i64) -> EventRecord {
        EventRecord {
            seq,
            at: Timestamp::from_unix_millis(at),
            kind: kind.into(),
            consumer: "prod/billing".into(),
            version,
            detail: r#"{"kid":"AbCdEfGhIjKl"}"#.into(),
        }
    }

    fn endpoint(id: &str, events: &[&str], created: i64) -> WebhookEndpoint {
        WebhookEndpoint {
            id: id.into(),
            url: "http://hooks.example/".into(),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            description: None,
            sealed_secret: vec![1],
            previous_secret: None,
            created_at: Timestamp::from_unix_millis(created),
            disabled: None,
        }
    }

    #[test]
    fn event_kinds_map_to_webhook_types() {
        assert_eq!(webhook_type("version.issued", Some(2)), "rotation.started");
        assert_eq!(webhook_type("version.issued", Some(1)), "version.issued");
        for kind in DEFAULT_EVENTS {
            if kind != "rotation.started" {
                assert_eq!(webhook_type(kind, Some(3)), kind);
            }
        }
        assert_eq!(webhook_type("consumer.created", None), "consumer.created");
    }

    #[test]
    fn enqueue_follows_subscriptions_registration_and_disabling() {
        let events = [
            event(10, "version.issued", Some(2), 1_000),
            event(11, "version.retiring", Some(1), 1_000),
            event(12, "version.retired", Some(1), 3_000),
            event(13, "consumer.created", None, 3_000),
        ];
        let mut off = endpoint("wh_off", &["*"], 0);
        off.disabled = Some((Timestamp::from_unix_millis(1), "410".into()));
        let endpoints = [
            endpoint("wh_default", &DEFAULT_EVENTS, 0),
            endpoint("wh_all", &["*"], 0),
            endpoint("wh_late", &["*"], 2_000),
            off,
        ];
        let mut n = 0;
        let planned = plan_enqueue(
            &events,
            &endpoints,
            Timestamp::from_unix_millis(5_000),
            || {
                n += 1;
                Some(format!("whd_{n}"))
            },
        )
        .unwrap();
        let got: Vec<(i64, &str)> = planned
            .iter()
            .map(|d| (d.event_seq, d.endpoint_id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (10, "wh_default"),
                (10, "wh_all"),
                (11, "wh_all"),
                (12, "wh_default"),
                (12, "wh_all"),
                (12, "wh_late"),
                (13, "wh_all"),
                (13, "wh_late"),
            ]
        );
        assert!(planned.iter().all(|d| d.state == DeliveryState::Pending
            && d.next_attempt_at == Some(Timestamp::from_unix_millis(5_000))
            && d.msg_id == format!("msg_{}", d.event_seq)));
        assert!(
            plan_enqueue(&events, &endpoints, Timestamp::from_unix_millis(0), || None).is_none()
        );
    }

    #[test]
    fn the_body_names_the_type_and_consumer_and_never_a_key() {
        let mut e = event(7, "version.issued", Some(2), 1_614_265_330_000);
        let b: Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(b["type"], "rotation.started");
        assert_eq!(b["timestamp"], "2021-02-25T15:02:10Z");
        assert_eq!(b["data"]["consumer"], "prod/billing");
        assert_eq!(b["data"]["environment"], "prod");
        assert_eq!(b["data"]["name"], "billing");
        assert_eq!(b["data"]["version"], 2);
        assert_eq!(b["data"]["event_seq"], 7);
        assert_eq!(b["data"]["detail"]["kid"], "AbCdEfGhIjKl");
        assert_eq!(body(&e), body(&e), "the same bytes on every attempt");
        let key = keyroll_core::issue_key(
            &keyroll_core::Environment::parse("prod").unwrap(),
            &mut crate::clock::Randomness::os().entropy(),
        )
        .unwrap();
        e.detail = json!({ "oops": key.reveal() }).to_string();
        let text = String::from_utf8(body(&e)).unwrap();
        assert!(!text.contains(key.reveal()), "{text}");
    }

    #[test]
    fn event_lists_are_checked() {
        assert_eq!(
            check_events(&[
                "version.retired".into(),
                "rotation.started".into(),
                "version.retired".into()
            ])
            .unwrap(),
            ["rotation.started", "version.retired"]
        );
        assert_eq!(check_events(&["*".into()]).unwrap(), ["*"]);
        for bad in [
            vec![],
            vec!["Rotation".to_owned()],
            vec!["*".into(), "a.b".into()],
            vec!["a..b".into()],
        ] {
            assert!(check_events(&bad).is_err(), "{bad:?}");
        }
    }
}
