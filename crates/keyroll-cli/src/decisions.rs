//! `keyroll decisions`: what happened to a key, a consumer or a fingerprint lately, answered from
//! the server's in-memory decision history rather than a log search.

use anyhow::Context;
use clap::Args;
use keyroll_client::Client;
use keyroll_core::{ConsumerRef, DecisionCode, Fingerprint, Kid, parse_duration};
use keyroll_proto as proto;

use crate::exit::{OrUsage, usage};
use crate::output::{Output, Printed, say, table};

/// Filters of `keyroll decisions`; every one given must match.
#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Only decisions about this key id.
    #[arg(long)]
    kid: Option<String>,
    /// Only this consumer (ENV/NAME).
    #[arg(long)]
    consumer: Option<String>,
    /// Only these codes (repeatable or comma-separated; invalid_key means unknown_key and
    /// invalid_secret).
    #[arg(long, value_delimiter = ',')]
    code: Vec<String>,
    /// Only this fingerprint (fp_…; `keyroll fingerprint KEY` computes one).
    #[arg(long)]
    fingerprint: Option<String>,
    /// Only `key` or only `cert` decisions (certificate decisions: TLS handshakes and
    /// certificate forward-auth).
    #[arg(long)]
    kind: Option<String>,
    /// Only certificates of this identity (ENV/SERVICE or spiffe://…).
    #[arg(long)]
    identity: Option<String>,
    /// Only the certificate with this serial (32 hex digits).
    #[arg(long)]
    serial: Option<String>,
    /// Only the last DURATION (humantime: 10m, 1h).
    #[arg(long)]
    since: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

impl DecisionsArgs {
    /// Checks every filter with the core's parsers before anything is sent.
    fn query(self) -> anyhow::Result<proto::DecisionQuery> {
        if let Some(k) = &self.kid {
            Kid::parse(k)
                .with_context(|| format!("--kid {k:?}: a key id is 12 base62 characters"))
                .or_usage()?;
        }
        if let Some(c) = &self.consumer {
            ConsumerRef::parse(c)
                .with_context(|| format!("--consumer {c:?}"))
                .or_usage()?;
        }
        if let Some(k) = &self.kind
            && k != "key"
            && k != "cert"
        {
            return Err(usage(format!("--kind {k:?}: expected key or cert")));
        }
        for c in &self.code {
            if c != "invalid_key"
                && DecisionCode::parse(c).is_none()
                && keyroll_ca::CertCode::parse(c).is_none()
            {
                let known: Vec<&str> = DecisionCode::ALL
                    .iter()
                    .map(DecisionCode::as_str)
                    .chain(keyroll_ca::CertCode::ALL.iter().skip(1).map(|c| c.as_str()))
                    .collect();
                return Err(usage(format!(
                    "--code {c:?}: expected one of {}, or invalid_key",
                    known.join(", ")
                )));
            }
        }
        if let Some(f) = &self.fingerprint {
            Fingerprint::parse(f)
                .with_context(|| format!("--fingerprint {f:?}: expected fp_ and 16 hex digits"))
                .or_usage()?;
        }
        if let Some(s) = &self.since {
            parse_duration(s)
                .with_context(|| format!("--since {s:?}"))
                .or_usage()?;
        }
        if self.limit == 0 {
            return Err(usage("--limit must be at least 1"));
        }
        Ok(proto::DecisionQuery {
            kid: self.kid,
            consumer: self.consumer,
            code: (!self.code.is_empty()).then(|| self.code.join(",")),
            fingerprint: self.fingerprint,
            since: self.since,
            kind: self.kind,
            identity: self.identity,
            serial: self.serial,
            limit: Some(self.limit),
        })
    }
}

/// Asks the server and prints the answer.
pub async fn run(args: DecisionsArgs, client: &Client, out: Output) -> anyhow::Result<()> {
    let q = args.query()?;
    let a = client.decisions(&q).await?;
    // No match for a consumer may be a typo: the server answers 404 if it does not exist.
    if a.body.items.is_empty()
        && let Some(c) = &q.consumer
        && let Ok(r) = ConsumerRef::parse(c)
    {
        client
            .get_consumer(r.environment.as_str(), r.name.as_str())
            .await?;
    }
    out.json_or(&a.json, || print_decisions(&a.body))?;
    Ok(())
}

fn dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// The decisions as a table, then how many matched and how much the server keeps.
pub fn print_decisions(list: &proto::DecisionList) -> Printed {
    if list.items.is_empty() {
        say!("No decision matches.")?;
    } else {
        let rows: Vec<Vec<String>> = list
            .items
            .iter()
            .map(|d| {
                vec![
                    d.ts.clone(),
                    d.code.clone(),
                    dash(d.kid.as_deref()),
                    // A certificate decision names its identity where a key names its consumer.
                    dash(d.consumer.as_deref().or(d.identity.as_deref())),
                    d.version.map_or_else(|| "-".into(), |n| format!("v{n}")),
                    dash(d.fingerprint.as_deref()),
                    dash(d.remote_addr.as_deref()),
                    d.request_id.clone(),
                    dash(d.detail.as_deref()),
                ]
            })
            .collect();
        table(
            &[
                "TIME",
                "CODE",
                "KID",
                "CONSUMER",
                "VERSION",
                "FINGERPRINT",
                "REMOTE",
                "REQUEST",
                "DETAIL",
            ],
            &rows,
        )?;
    }
    say!(
        "\n{} of {} matching decision(s); the server keeps the last {} rejections and {} allowed decisions.",
        list.items.len(),
        list.matched,
        list.capacity_rejected,
        list.capacity_allowed
    )
}
