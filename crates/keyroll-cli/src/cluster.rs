//! `keyroll cluster status`: the nodes sharing the server's database, what each has applied of
//! the change log, which one leads. `--json` (or `--output json`) prints the API's JSON.

use clap::Subcommand;
use keyroll_client::Client;
use keyroll_proto as proto;

use crate::output::{Output, Printed, say, table};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The nodes, their applied change seq and heartbeat, the leader and the log's head.
    Status {
        /// Print the API's JSON (the same as `--output json`).
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ClusterCmd, client: &Client, out: Output) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status { json } => {
            let a = client.cluster().await?;
            let out = Output {
                json: out.json || json,
            };
            out.json_or(&a.json, || print_status(&a.body))?;
        }
    }
    Ok(())
}

fn print_status(s: &proto::ClusterStatus) -> Printed {
    let leader = match &s.lease {
        Some(l) if l.live => format!(
            "{} (term {}, lease until {})",
            l.holder, l.term, l.expires_at
        ),
        Some(l) => format!(
            "none (the lease of {} expired at {})",
            l.holder, l.expires_at
        ),
        None => "none yet".to_owned(),
    };
    say!("Leader: {leader}")?;
    say!("Change log head: {}", s.change_head)?;
    say!("")?;
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let mut id = n.node_id.clone();
            if n.node_id == s.this_node {
                id.push_str(" (this)");
            }
            vec![
                id,
                n.address.clone().unwrap_or_else(|| "-".into()),
                if n.leader { "leader" } else { "follower" }.into(),
                if n.live { "live" } else { "silent" }.into(),
                n.applied_seq.to_string(),
                n.lag.to_string(),
                n.heartbeat_at.clone(),
                n.version.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ADDRESS",
            "ROLE",
            "STATE",
            "APPLIED",
            "LAG",
            "HEARTBEAT",
            "VERSION",
        ],
        &rows,
    )
}
