//! `keyroll audit list` and `keyroll audit verify`: read the audit log, and prove its hash chain
//! intact by recomputing every link here with keyroll-core (the server's word is not taken: its
//! head is only what it stored).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use keyroll_client::{AuditFilter, Client};
use keyroll_core::audit_chain::{
    ChainBreak, ChainEntry, ChainHash, ExpectError, Head, StoredLink, verify, verify_expecting,
};
use keyroll_core::{ConsumerRef, Timestamp, parse_duration, parse_rfc3339};
use keyroll_proto as proto;
use serde_json::json;

use crate::exit::{Exit, OrUsage};
use crate::output::{Output, Printed, say, table};

/// The largest page the server gives.
const PAGE: u32 = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The newest audit entries (oldest of them first): who changed what, when, from where.
    List {
        /// Only entries within this duration (1h, 7d) or since this RFC 3339 time.
        #[arg(long, value_name = "DURATION_OR_RFC3339")]
        since: Option<String>,
        /// Only entries on this consumer and its versions.
        #[arg(long, value_name = "ENV/NAME")]
        target: Option<String>,
        /// Only entries by this actor: an admin token id, sweeper, scheduler, system.
        #[arg(long)]
        actor: Option<String>,
        /// Show at most this many of the newest matching entries.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Recompute the audit log's hash chain: exits 0 and prints the head hash if every link
    /// holds, 3 naming the first broken link otherwise. Keep the head somewhere else (CI, a
    /// ticket): only --expect-head detects removed entries at the end or a rewritten chain.
    Verify {
        /// A head printed by an earlier verify: it must still be in the chain.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
}

/// Runs one `keyroll audit` command.
pub async fn run(cmd: AuditCmd, client: &Client, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::List {
            since,
            target,
            actor,
            limit,
        } => {
            if let Some(s) = &since
                && parse_rfc3339(s).is_none()
            {
                parse_duration(s)
                    .with_context(|| {
                        format!("--since {s:?}: expected a duration (1h, 7d) or an RFC 3339 time")
                    })
                    .or_usage()?;
            }
            if let Some(t) = &target {
                ConsumerRef::parse(t)
                    .with_context(|| format!("--target {t:?}"))
                    .or_usage()?;
            }
            let filter = AuditFilter {
                since,
                target,
                actor,
                ..AuditFilter::default()
            };
            let (mut items, head, head_seq) = fetch_all(client, filter).await?;
            let skip = items.len().saturating_sub(limit as usize);
            items.drain(..skip);
            let json = json!({ "items": items, "head": head, "head_seq": head_seq });
            out.json_or(&json, || print_entries(&items))?;
        }
        AuditCmd::Verify { expect_head } => {
            let expected = expect_head
                .as_deref()
                .map(|h| h.parse::<ChainHash>().context("--expect-head").or_usage())
                .transpose()?;
            let (items, _, _) = fetch_all(client, AuditFilter::default()).await?;
            let links = items.iter().map(link).collect::<Vec<_>>();
            let verdict = match &expected {
                None => verify(&links).map(|h| (h, None)).map_err(ExpectError::from),
                Some(e) => verify_expecting(&links, e).map(|(h, at)| (h, Some(at))),
            };
            return match verdict {
                Ok((head, found_at)) => {
                    print_intact(out, &head, expected.as_ref().zip(found_at))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    print_broken(out, &e)?;
                    Ok(Exit::Rejected.into())
                }
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every entry matching `filter`, page by page, with the head of the last page.
async fn fetch_all(
    client: &Client,
    mut filter: AuditFilter,
) -> anyhow::Result<(Vec<proto::AuditEntry>, String, Option<i64>)> {
    filter.limit = Some(PAGE);
    let mut items = Vec::new();
    loop {
        let page = client.audit(&filter).await?.body;
        let full = page.items.len() >= PAGE as usize;
        filter.after = page.items.last().map(|e| e.seq).or(filter.after);
        items.extend(page.items);
        if !full {
            return Ok((items, page.head, page.head_seq));
        }
    }
}

/// An entry as the chain sees it. A hash that is not 64 hex digits never matches.
fn link(e: &proto::AuditEntry) -> StoredLink<'_> {
    let hash = |h: &Option<String>| h.as_deref().and_then(|h| h.parse().ok());
    StoredLink {
        entry: ChainEntry {
            seq: e.seq,
            at: Timestamp::from_unix_millis(e.at_unix_ms),
            actor: &e.actor,
            action: &e.action,
            target: &e.target,
            detail: &e.detail,
            request_id: e.request_id.as_deref(),
            remote_addr: e.remote_addr.as_deref(),
        },
        prev_hash: hash(&e.prev_hash),
        hash: hash(&e.hash),
    }
}

fn print_entries(items: &[proto::AuditEntry]) -> Printed {
    if items.is_empty() {
        return say!("No audit entries.");
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                dash(&e.request_id),
                dash(&e.remote_addr),
            ]
        })
        .collect();
    table(
        &["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "REQUEST", "FROM"],
        &rows,
    )
}

fn print_intact(out: Output, head: &Head, expected_at: Option<(&ChainHash, u64)>) -> Printed {
    let json = json!({
        "intact": true,
        "entries": head.entries,
        "head": head.hash.to_string(),
        "head_seq": head.seq,
        "expected_head_position": expected_at.map(|(_, at)| at),
    });
    out.json_or(&json, || {
        say!("Audit chain intact: {} entries checked.", head.entries)?;
        if let Some((h, at)) = expected_at {
            say!("The expected head {h} is entry {at}.")?;
        }
        say!("head {}", head.hash)
    })
}

fn print_broken(out: Output, e: &ExpectError) -> Printed {
    let json = match e {
        ExpectError::Broken(ChainBreak {
            position,
            seq,
            kind,
        }) => json!({
            "intact": false,
            "position": position,
            "seq": seq,
            "kind": kind.as_str(),
            "detail": e.to_string(),
        }),
        ExpectError::HeadMissing { expected, head } => json!({
            "intact": false,
            "kind": "head_missing",
            "expected_head": expected.to_string(),
            "head": head.to_string(),
            "detail": e.to_string(),
        }),
    };
    out.json_or(&json, || say!("{e}."))
}
