//! Printing for people (tables, the once-shown key) and for scripts (`--output json`).
//!
//! Everything printed to stdout goes through [`say!`] (never `println!`, which panics when stdout
//! is closed or full; the `print_stdout` lint keeps it out of this crate), so a failed write is
//! an error that `main` turns into an exit code.

use std::io::Write;

use keyroll_proto as proto;

use crate::exit::StdoutError;

/// `println!` that returns a [`StdoutError`] instead of panicking: `say!(…)?`.
macro_rules! say {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)+) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)+)))
    };
}
pub(crate) use say;

/// Writes to stdout (line-buffered, so a closed pipe shows at the next line).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(StdoutError)
}

/// Flushes stdout, so that a failure of the last write is reported too.
pub fn flush_stdout() -> Result<(), StdoutError> {
    std::io::stdout().lock().flush().map_err(StdoutError)
}

/// A diagnostic on stderr. Best effort: losing a note must not fail the command.
pub fn note(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// The result of printing.
pub type Printed = Result<(), StdoutError>;

/// Where answers go.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print the API's JSON instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints `json` in JSON mode, else runs `human`.
    pub fn json_or(&self, json: &serde_json::Value, human: impl FnOnce() -> Printed) -> Printed {
        if self.json {
            say!("{}", serde_json::to_string_pretty(json).unwrap_or_default())
        } else {
            human()
        }
    }

    /// Prints the first admin token once.
    pub fn init(&self, token: &str, path: Option<&std::path::Path>) -> Printed {
        if self.json {
            let v = serde_json::json!({ "token": token, "path": path.map(|p| p.display().to_string()) });
            return say!("{v}");
        }
        say!("Created the first admin token (scope admin):\n\n  {token}\n")?;
        if let Some(p) = path {
            say!(
                "It is also in {} (mode 0600); the CLI reads it from there by default.",
                p.display()
            )?;
        }
        say!("This is the only time it is printed.")
    }
}

/// Prints a newly issued key, once, unmistakably.
pub fn print_new_key(what: &str, key: Option<&str>) -> Printed {
    say!("{what}.")?;
    match key {
        Some(k) => {
            say!("\n  {k}\n")?;
            say!(
                "This key is shown once. Store it in your secret manager now; keyroll keeps only its hash."
            )
        }
        None => {
            say!("(This answer replays an earlier request: the key was shown the first time only.)")
        }
    }
}

pub fn table(header: &[&str], rows: &[Vec<String>]) -> Printed {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        say!("{}", s.trim_end())
    };
    line(header.iter().map(|h| (*h).to_owned()).collect())?;
    for r in rows {
        line(r.clone())?;
    }
    Ok(())
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Environments as a table.
pub fn print_environments(items: &[proto::Environment]) -> Printed {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                if e.protected {
                    "yes".into()
                } else {
                    "no".into()
                },
                e.created_at.clone(),
            ]
        })
        .collect();
    table(&["ENVIRONMENT", "PROTECTED", "CREATED"], &rows)
}

/// Consumers as a table.
pub fn print_consumers(items: &[proto::Consumer]) -> Printed {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            let active = c.versions.iter().rev().find(|v| v.state == "active");
            let retiring = c.versions.iter().filter(|v| v.state == "retiring").count();
            vec![
                format!("{}/{}", c.environment, c.name),
                active
                    .map(|v| format!("v{}", v.version))
                    .unwrap_or_else(|| "-".into()),
                retiring.to_string(),
                if c.disabled {
                    "yes".into()
                } else {
                    "no".into()
                },
                dash(&c.owner),
                c.scopes.join(","),
            ]
        })
        .collect();
    table(
        &[
            "CONSUMER", "ACTIVE", "RETIRING", "DISABLED", "OWNER", "SCOPES",
        ],
        &rows,
    )
}

/// One consumer with its versions.
pub fn print_consumer(c: &proto::Consumer) -> Printed {
    say!(
        "{}/{}{}",
        c.environment,
        c.name,
        if c.disabled { "  (DISABLED)" } else { "" }
    )?;
    say!("  owner:  {}", dash(&c.owner))?;
    say!(
        "  scopes: {}",
        if c.scopes.is_empty() {
            "-".into()
        } else {
            c.scopes.join(", ")
        }
    )?;
    say!(
        "  retire: {} (idle {}, on stall: {})",
        c.retire,
        c.idle,
        c.on_stall
    )?;
    say!()?;
    let rows: Vec<Vec<String>> = c
        .versions
        .iter()
        .map(|v| {
            let mut note = match (v.state.as_str(), &v.revoke_reason, v.replaced_by) {
                ("revoked", Some(r), _) => format!("revoked: {r}"),
                (_, _, Some(n)) => format!("replaced by v{n}"),
                _ => String::new(),
            };
            // The deadline column is the stored deadline; a stall's extension is a prediction
            // until it happens.
            if v.extended {
                note.push_str("; stalled: deadline extended once");
            } else if let (Some(to), Some(at)) = (&v.extension_if_stalled, &v.deadline) {
                note.push_str(&format!(
                    "; will be extended once to {to} if still in use at {at}"
                ));
            }
            vec![
                format!("v{}", v.version),
                v.kid.clone(),
                v.state.clone(),
                v.created_at.clone(),
                dash(&v.deadline),
                dash(&v.expires_at),
                dash(&v.last_used_at),
                v.fingerprint.clone(),
                note,
            ]
        })
        .collect();
    table(
        &[
            "VERSION",
            "KID",
            "STATE",
            "CREATED",
            "DEADLINE",
            "EXPIRES",
            "LAST USED",
            "FINGERPRINT",
            "NOTE",
        ],
        &rows,
    )
}
