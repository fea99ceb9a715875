//! `keyroll webhook`: register endpoints (the `whsec_` secret printed once), list, show, remove,
//! rotate the secret with an overlap, re-enable; list deliveries with their attempts and replay
//! one. `--output json` prints the API's JSON.

use anyhow::Context;
use clap::Subcommand;
use keyroll_client::Client;
use keyroll_core::parse_duration;
use keyroll_proto as proto;

use crate::exit::StdoutError;
use crate::output::{Output, say, table};

#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// Register an endpoint; its signing secret (whsec_…) is printed once.
    Add {
        /// Where deliveries are POSTed (http://…).
        url: String,
        /// Event types, comma-separated (rotation.started,version.retired), or * for all.
        /// Default: the rotation events.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// A label for people.
        #[arg(long)]
        description: Option<String>,
    },
    /// List endpoints (never their secrets).
    List,
    /// Show one endpoint.
    Show {
        /// The endpoint id (wh_…).
        id: String,
    },
    /// Remove an endpoint with its deliveries.
    Remove {
        /// The endpoint id.
        id: String,
    },
    /// Give an endpoint a new secret, printed once; the old one keeps signing beside it for
    /// the overlap.
    RotateSecret {
        /// The endpoint id.
        id: String,
        /// How long the old secret keeps signing (humantime; 0 stops it now).
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
    /// Enable an endpoint that was disabled (it answered 410 Gone).
    Enable {
        /// The endpoint id.
        id: String,
    },
    /// Deliveries, newest first, with their attempts, last status and next attempt.
    Deliveries {
        /// Only to this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only in this state: pending, delivered, failed, disabled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Send a delivery again now, with the same webhook-id.
    Replay {
        /// The delivery id (whd_…).
        delivery_id: String,
    },
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

fn print_endpoints(items: &[proto::Webhook]) -> Result<(), StdoutError> {
    if items.is_empty() {
        return say!("No webhook endpoints.");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|w| {
            let state = match (&w.state[..], &w.disabled_reason) {
                ("disabled", Some(r)) => format!("disabled: {r}"),
                (s, _) => s.to_owned(),
            };
            vec![
                w.id.clone(),
                w.url.clone(),
                w.events.join(","),
                state,
                or_dash(w.description.as_deref()),
            ]
        })
        .collect();
    table(&["ID", "URL", "EVENTS", "STATE", "DESCRIPTION"], &rows)
}

fn print_secret(what: &str, s: &proto::WebhookSecret) -> Result<(), StdoutError> {
    say!(
        "{what} webhook endpoint {} for {}.",
        s.webhook.id,
        s.webhook.url
    )?;
    say!("Events: {}", s.webhook.events.join(", "))?;
    say!("\n  {}\n", s.secret)?;
    if let Some(until) = &s.webhook.previous_secret_until {
        say!("The old secret keeps signing beside the new one until {until}.")?;
    }
    say!(
        "This signing secret will not be shown again. Give it to the receiver now; it verifies \
         deliveries with any Standard Webhooks library."
    )
}

fn print_deliveries(items: &[proto::WebhookDeliveryInfo]) -> Result<(), StdoutError> {
    if items.is_empty() {
        return say!("No webhook deliveries.");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.endpoint.clone(),
                d.msg_id.clone(),
                d.state.clone(),
                d.attempts.to_string(),
                d.last_status.map_or("-".into(), |s| s.to_string()),
                or_dash(d.next_attempt_at.as_deref()),
                or_dash(d.last_error.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ENDPOINT",
            "MSG",
            "STATE",
            "ATTEMPTS",
            "LAST",
            "NEXT ATTEMPT",
            "ERROR",
        ],
        &rows,
    )
}

/// Runs one `keyroll webhook` command.
pub async fn run(cmd: WebhookCmd, client: &Client, out: Output) -> anyhow::Result<()> {
    match cmd {
        WebhookCmd::Add {
            url,
            events,
            description,
        } => {
            let req = proto::CreateWebhook {
                url,
                events: events.map(|e| e.into_iter().map(|s| s.trim().to_owned()).collect()),
                description,
            };
            let a = client.create_webhook(&req).await?;
            out.json_or(&a.json, || print_secret("Registered", &a.body))?;
        }
        WebhookCmd::List => {
            let a = client.list_webhooks().await?;
            out.json_or(&a.json, || print_endpoints(&a.body.items))?;
        }
        WebhookCmd::Show { id } => {
            let a = client.get_webhook(&id).await?;
            out.json_or(&a.json, || print_endpoints(std::slice::from_ref(&a.body)))?;
        }
        WebhookCmd::Remove { id } => {
            let a = client.delete_webhook(&id).await?;
            out.json_or(&a.json, || {
                say!("Removed webhook endpoint {} ({}).", a.body.id, a.body.url)
            })?;
        }
        WebhookCmd::RotateSecret { id, overlap } => {
            parse_duration(&overlap).context("--overlap")?;
            let req = proto::RotateWebhookSecret {
                overlap: Some(overlap),
            };
            let a = client.rotate_webhook_secret(&id, &req).await?;
            out.json_or(&a.json, || print_secret("Rotated the secret of", &a.body))?;
        }
        WebhookCmd::Enable { id } => {
            let a = client.enable_webhook(&id).await?;
            out.json_or(&a.json, || {
                say!("Webhook endpoint {} is {}.", a.body.id, a.body.state)
            })?;
        }
        WebhookCmd::Deliveries {
            endpoint,
            state,
            limit,
        } => {
            let a = client
                .webhook_deliveries(endpoint.as_deref(), state.as_deref(), limit)
                .await?;
            out.json_or(&a.json, || print_deliveries(&a.body.items))?;
        }
        WebhookCmd::Replay { delivery_id } => {
            let a = client.replay_webhook_delivery(&delivery_id).await?;
            out.json_or(&a.json, || {
                say!(
                    "Delivery {} ({}) queued again; the sender attempts it now.",
                    a.body.id,
                    a.body.msg_id
                )
            })?;
        }
    }
    Ok(())
}
