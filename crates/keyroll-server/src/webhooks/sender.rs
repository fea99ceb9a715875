//! One tick of the webhook sender: (1) enqueue — the outbox's events after the cursor become one
//! delivery per subscribed, enabled endpoint, and the cursor moves, in one store transaction;
//! (2) send — every due pending delivery gets an attempt (at most `concurrency` at once), whose
//! answer decides the next step (`keyroll_webhooks::next_step`: delivered, retry later with
//! jitter or after `Retry-After`, give up, or disable the endpoint on 410), recorded with the
//! attempt. Time comes only from the state's clock; a retry is due at a stored time, so nothing
//! is lost across restarts and each event is enqueued once (at-least-once delivery, deduplicated
//! by receivers through the stable `webhook-id`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyroll_core::Timestamp;
use keyroll_store::{DeliveryState, StoreError, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use keyroll_webhooks::{ATTEMPT_TIMEOUT, Answer, Next, Secret, next_step, signature_header};

use super::ssrf::{AddressPolicy, check_literal, resolver};
use crate::state::AppState;

/// Events read per enqueue step.
const EVENTS_PER_STEP: u32 = 500;
/// Due deliveries sent per tick (the rest wait for the next tick, which comes at once when the
/// tick was full).
const DUE_PER_TICK: u32 = 200;

/// The sender's HTTP client: redirects off (a redirect could lead past the address filter),
/// no proxy from the environment, the address filter as its resolver (for `http://` and
/// `https://` alike), a 15 s limit per attempt. `https://` peers are always verified, against
/// the built-in webpki roots and `webhooks.ca_file`'s.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: AddressPolicy,
}

impl Sender {
    /// A sender for the `[webhooks]` settings.
    pub fn new(settings: &crate::config::WebhookSettings) -> Result<Sender, String> {
        let policy = AddressPolicy {
            allow_loopback: settings.allow_loopback,
            allow_private: settings.allow_private,
        };
        // reqwest's TLS takes the process provider (aws-lc-rs); make sure there is one.
        keyroll_ca::tls::install_provider();
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &settings.ca {
            for c in ca.certificates()? {
                client = client.add_root_certificate(c);
            }
        }
        let client = client
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .dns_resolver(resolver(policy))
            .user_agent(concat!("keyroll-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Sender { client, policy })
    }

    /// One tick: enqueue what is new, then send what is due. Returns how many attempts were made.
    pub async fn tick(&self, state: &Arc<AppState>) -> usize {
        if let Err(e) = enqueue(state).await {
            tracing::warn!(event = "webhook.enqueue_failed", error = %e, "could not enqueue webhook deliveries: {e}");
        }
        let now = state.clock.now();
        let due = match state.store.due_webhook_deliveries(now, DUE_PER_TICK).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(event = "webhook.read_failed", error = %e, "could not read due webhook deliveries: {e}");
                return 0;
            }
        };
        if due.is_empty() {
            return 0;
        }
        let endpoints = match state.store.list_webhook_endpoints().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(event = "webhook.read_failed", error = %e, "could not read webhook endpoints: {e}");
                return 0;
            }
        };
        // One task per endpoint, sending its deliveries in order, one at a time (so a 410 stops
        // the rest, and a receiver sees its messages in outbox order); at most `concurrency`
        // endpoints at once.
        let mut by_endpoint: Vec<(Option<WebhookEndpoint>, Vec<WebhookDelivery>)> = Vec::new();
        for d in due {
            match by_endpoint
                .iter_mut()
                .find(|(_, ds)| ds.first().is_some_and(|f| f.endpoint_id == d.endpoint_id))
            {
                Some((_, ds)) => ds.push(d),
                None => {
                    let endpoint = endpoints.iter().find(|e| e.id == d.endpoint_id).cloned();
                    by_endpoint.push((endpoint, vec![d]));
                }
            }
        }
        let limit = Arc::new(tokio::sync::Semaphore::new(
            state.config.webhooks.concurrency.max(1),
        ));
        let mut set = tokio::task::JoinSet::new();
        for (endpoint, deliveries) in by_endpoint {
            let (state, sender, limit) = (Arc::clone(state), self.clone(), Arc::clone(&limit));
            set.spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return 0;
                };
                let mut endpoint = endpoint;
                let mut made = 0;
                for d in deliveries {
                    let (attempted, next) = sender.attempt(&state, d, endpoint.clone()).await;
                    made += usize::from(attempted);
                    if next == Some(Next::DisableEndpoint)
                        && let Some(e) = endpoint.as_mut()
                    {
                        e.disabled = Some((state.clock.now(), "410".into()));
                    }
                }
                made
            });
        }
        let mut made = 0;
        while let Some(done) = set.join_next().await {
            made += done.unwrap_or(0);
        }
        made
    }

    /// One attempt of `d` (or none, when its endpoint is gone or disabled): whether one was
    /// made, and what follows it.
    async fn attempt(
        &self,
        state: &AppState,
        mut d: WebhookDelivery,
        endpoint: Option<WebhookEndpoint>,
    ) -> (bool, Option<Next>) {
        let Some(endpoint) = endpoint else {
            return (false, None);
        };
        let at = state.clock.now();
        if endpoint.disabled.is_some() {
            d.state = DeliveryState::Disabled;
            d.next_attempt_at = None;
            record(state, &d, None).await;
            return (false, None);
        }
        let n = d.attempts.saturating_add(1);
        let started = Instant::now();
        let (answer, error) = match self.send(state, &d, &endpoint, at).await {
            Ok(answer) => {
                let error = match answer {
                    Answer::Status { status, .. } if !(200..300).contains(&status) => {
                        Some(format!("answered HTTP {status}"))
                    }
                    _ => None,
                };
                (answer, error)
            }
            Err(why) => (Answer::NoAnswer, Some(why)),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, retry_after) = match answer {
            Answer::Status {
                status,
                retry_after,
            } => (Some(status), retry_after),
            Answer::NoAnswer => (None, None),
        };
        let next = next_step(n, answer, fastrand::f64());
        d.attempts = n;
        d.last_status = status;
        d.last_error = error.clone();
        match next {
            Next::Delivered => {
                d.state = DeliveryState::Delivered;
                d.next_attempt_at = None;
                d.delivered_at = Some(at);
            }
            Next::RetryAfter(delay) => {
                d.state = DeliveryState::Pending;
                d.next_attempt_at = Some(at.saturating_add(delay));
            }
            Next::GiveUp => {
                d.state = DeliveryState::Failed;
                d.next_attempt_at = None;
            }
            Next::DisableEndpoint => {
                d.state = DeliveryState::Disabled;
                d.next_attempt_at = None;
            }
        }
        let attempt = WebhookAttempt {
            delivery_id: d.id.clone(),
            n,
            at,
            status,
            duration_ms,
            error,
            retry_after_ms: retry_after.map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
        };
        tracing::info!(
            event = "webhook.attempt",
            delivery = d.id.as_str(),
            endpoint = endpoint.id.as_str(),
            msg_id = d.msg_id.as_str(),
            attempt = n,
            status = status,
            outcome = d.state.as_str(),
            error = attempt.error.as_deref(),
            next_attempt_at = d.next_attempt_at.map(keyroll_core::rfc3339),
            "webhook {} attempt {n} to {}: {}",
            d.msg_id,
            endpoint.id,
            d.state.as_str()
        );
        record(state, &d, Some(&attempt)).await;
        if next == Next::DisableEndpoint
            && let Err(e) = crate::service::webhooks::disable_for_gone(state, &endpoint, at).await
        {
            tracing::warn!(event = "webhook.disable_failed", endpoint = endpoint.id.as_str(), error = %e, "could not disable webhook endpoint {}: {e}", endpoint.id);
        }
        (true, Some(next))
    }

    /// Signs and POSTs the delivery's event; the answer, or why there was none.
    async fn send(
        &self,
        state: &AppState,
        d: &WebhookDelivery,
        endpoint: &WebhookEndpoint,
        at: Timestamp,
    ) -> Result<Answer, String> {
        let url = reqwest::Url::parse(&endpoint.url).map_err(|e| format!("bad URL: {e}"))?;
        check_literal(&self.policy, &url).map_err(|why| format!("refused: {why}"))?;
        let event = state
            .store
            .list_events(d.event_seq.saturating_sub(1), 1)
            .await
            .map_err(|e| format!("cannot read event {}: {e}", d.event_seq))?
            .into_iter()
            .find(|e| e.seq == d.event_seq)
            .ok_or_else(|| format!("event {} is no longer in the outbox", d.event_seq))?;
        let secrets = signing_secrets(state, endpoint, at)?;
        let body = super::body(&event);
        let timestamp = u64::try_from(at.unix_millis() / 1000).unwrap_or(0);
        let refs: Vec<&Secret> = secrets.iter().collect();
        let signature = signature_header(&refs, &d.msg_id, timestamp, &body);
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", d.msg_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(Answer::Status {
            status: response.status().as_u16(),
            retry_after,
        })
    }
}

/// The secrets that sign a message to `endpoint` at `at`: the current one, and the previous one
/// while its overlap lasts.
pub fn signing_secrets(
    state: &AppState,
    endpoint: &WebhookEndpoint,
    at: Timestamp,
) -> Result<Vec<Secret>, String> {
    let open = |sealed: &[u8]| -> Result<Secret, String> {
        let bytes = state
            .master_key
            .open(endpoint.id.as_bytes(), sealed)
            .map_err(|e| e.to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a sealed webhook secret has the wrong length".to_owned())?;
        Ok(Secret::from_bytes(bytes))
    };
    let mut secrets = vec![open(&endpoint.sealed_secret)?];
    if let Some((sealed, until)) = &endpoint.previous_secret
        && *until > at
    {
        secrets.push(open(sealed)?);
    }
    Ok(secrets)
}

/// The error of a request in words, with its cause (reqwest's own text hides it).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn record(state: &AppState, d: &WebhookDelivery, attempt: Option<&WebhookAttempt>) {
    match state.store.record_webhook_attempt(d, attempt).await {
        Ok(()) | Err(StoreError::NotFound(_)) => {}
        Err(e) => {
            tracing::warn!(event = "webhook.record_failed", delivery = d.id.as_str(), error = %e, "could not record webhook attempt of {}: {e}", d.id);
        }
    }
}

/// Step (1): every event after the cursor becomes its deliveries and the cursor moves, a page
/// at a time, until the outbox is caught up. Another sender having moved the cursor first is
/// not an error: its deliveries are the same.
pub async fn enqueue(state: &AppState) -> Result<usize, StoreError> {
    let mut made = 0;
    loop {
        let from = state.store.webhook_cursor().await?;
        let events = state.store.list_events(from, EVENTS_PER_STEP).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(made);
        };
        let endpoints = state.store.list_webhook_endpoints().await?;
        let now = state.clock.now();
        let deliveries = super::plan_enqueue(&events, &endpoints, now, || {
            crate::service::webhooks::new_id(state, "whd_").ok()
        })
        .ok_or_else(|| StoreError::Unavailable("no randomness for delivery ids".into()))?;
        match state
            .store
            .enqueue_webhook_deliveries(from, last, &deliveries)
            .await
        {
            Ok(()) => made += deliveries.len(),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
        if events.len() < EVENTS_PER_STEP as usize {
            return Ok(made);
        }
    }
}
