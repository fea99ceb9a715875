//! `keyroll token`: create, list, revoke and rotate admin tokens. A new token is printed once,
//! on a line of its own, like a new key.

use anyhow::Context;
use clap::Subcommand;
use keyroll_client::Client;
use keyroll_core::parse_duration;
use keyroll_proto as proto;

use crate::exit::StdoutError;
use crate::output::{Output, say, table};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an admin token with the given scopes and print it once.
    Create {
        /// Granted scope (repeatable): admin, environments:write, consumers:read,
        /// consumers:write, keys:read, keys:write, verify, tokens:read, tokens:write,
        /// audit:read. The calling token must hold each one.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Hard expiry, from now (humantime: 1h, 90d).
        #[arg(long)]
        expires_in: Option<String>,
        /// A label for people (default: the scopes).
        #[arg(long)]
        name: Option<String>,
    },
    /// List admin tokens (never their secrets).
    List,
    /// Revoke a token at once.
    Revoke {
        /// The token id (the 12 characters after kra_, not the token).
        id: String,
        /// Why; recorded and told to callers of the token.
        #[arg(long)]
        reason: Option<String>,
        /// Revoke even the last working admin token (nothing can replace it afterwards).
        #[arg(long)]
        force: bool,
    },
    /// Replace a token by a new one with the same name and scopes, printed once; the old one
    /// keeps working for the overlap.
    Rotate {
        /// The token id.
        id: String,
        /// How long the old token keeps working (humantime; 0 stops it now).
        #[arg(long, default_value = "1h")]
        overlap: String,
    },
}

/// A token id as given: the id, or a whole pasted token reduced to its id (the secret is
/// never sent).
fn token_id(text: &str) -> anyhow::Result<String> {
    let id = match text.strip_prefix("kra_") {
        Some(rest) => rest.split('_').next().unwrap_or_default(),
        None => text,
    };
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        anyhow::bail!(
            "invalid token id: expected the 12 characters after kra_ (see keyroll token list)"
        );
    }
    Ok(id.to_owned())
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

fn print_tokens(tokens: &[proto::AdminToken]) -> Result<(), StdoutError> {
    if tokens.is_empty() {
        return say!("No admin tokens.");
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = match (&t.state[..], &t.replaced_by, &t.retires_at) {
                ("overlap", Some(by), Some(until)) => {
                    format!("overlap until {until} ({by} replaces it)")
                }
                ("replaced", Some(by), _) => format!("replaced by {by}"),
                ("revoked", _, _) => match t.revoke_reason.as_deref().filter(|r| !r.is_empty()) {
                    Some(r) => format!("revoked: {r}"),
                    None => "revoked".to_owned(),
                },
                (s, _, _) => s.to_owned(),
            };
            vec![
                t.id.clone(),
                t.name.clone(),
                t.scopes.join(" "),
                t.created_at.clone(),
                or_dash(t.expires_at.as_deref()),
                state,
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "STATE"],
        &rows,
    )
}

fn print_issued(what: &str, issued: &proto::TokenIssued) -> Result<(), StdoutError> {
    say!(
        "{what} admin token {} ({}).",
        issued.info.id,
        issued.info.scopes.join(" ")
    )?;
    say!("\n  {}\n", issued.token)?;
    if let Some(e) = &issued.info.expires_at {
        say!("It expires at {e}.")?;
    }
    if let Some(old) = &issued.replaces {
        match (&old.state[..], &old.retires_at) {
            ("overlap", Some(until)) => {
                say!("The old token {} keeps working until {until}.", old.id)?
            }
            _ => say!("The old token {} no longer works.", old.id)?,
        }
    }
    say!(
        "This token is shown once. Store it in your secret manager now; keyroll keeps only its hash."
    )?;
    Ok(())
}

/// Runs one `keyroll token` command.
pub async fn run(cmd: TokenCmd, client: &Client, out: Output) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            scopes,
            expires_in,
            name,
        } => {
            if let Some(e) = &expires_in {
                parse_duration(e).context("--expires-in")?;
            }
            let name = name.unwrap_or_else(|| scopes.join(" "));
            let req = proto::CreateToken {
                name,
                scopes,
                expires_in,
            };
            let a = client.create_token(&req).await?;
            out.json_or(&a.json, || print_issued("Created", &a.body))?;
        }
        TokenCmd::List => {
            let a = client.list_tokens().await?;
            out.json_or(&a.json, || print_tokens(&a.body.items))?;
        }
        TokenCmd::Revoke { id, reason, force } => {
            let id = token_id(&id)?;
            let a = client
                .revoke_token(&id, &proto::RevokeToken { reason, force })
                .await?;
            out.json_or(&a.json, || say!("Revoked admin token {}.", a.body.id))?;
        }
        TokenCmd::Rotate { id, overlap } => {
            let id = token_id(&id)?;
            parse_duration(&overlap).context("--overlap")?;
            let a = client
                .rotate_token(
                    &id,
                    &proto::RotateToken {
                        overlap: Some(overlap),
                    },
                )
                .await?;
            out.json_or(&a.json, || print_issued("Rotated: new", &a.body))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids() {
        assert_eq!(token_id("AbCdEf012345").unwrap(), "AbCdEf012345");
        assert_eq!(
            token_id("kra_AbCdEf012345_0123456789abcdefghijABCDEFGHIJ0123").unwrap(),
            "AbCdEf012345"
        );
        assert!(token_id("short").is_err());
        assert!(token_id("AbCdEf01234!").is_err());
    }
}
