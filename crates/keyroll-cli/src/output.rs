//! Printing for people (tables, the once-shown key) and for scripts (`--output json`).

use keyroll_proto as proto;

/// Where answers go.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print the API's JSON instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints `json` in JSON mode, else runs `human`.
    pub fn json_or(&self, json: &serde_json::Value, human: impl FnOnce()) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(json).unwrap_or_default());
        } else {
            human();
        }
    }

    /// Prints the first admin token once.
    pub fn init(&self, token: &str, path: Option<&std::path::Path>) {
        if self.json {
            let v = serde_json::json!({ "token": token, "path": path.map(|p| p.display().to_string()) });
            println!("{v}");
            return;
        }
        println!("Created the first admin token (scope admin):\n\n  {token}\n");
        if let Some(p) = path {
            println!(
                "It is also in {} (mode 0600); the CLI reads it from there by default.",
                p.display()
            );
        }
        println!("This is the only time it is printed.");
    }
}

/// Prints a newly issued key, once, unmistakably.
pub fn print_new_key(what: &str, key: Option<&str>) {
    println!("{what}.");
    match key {
        Some(k) => {
            println!("\n  {k}\n");
            println!(
                "This key is shown once. Store it in your secret manager now; keyroll keeps only its hash."
            );
        }
        None => println!(
            "(This answer replays an earlier request: the key was shown the first time only.)"
        ),
    }
}

pub fn table(header: &[&str], rows: &[Vec<String>]) {
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
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Environments as a table.
pub fn print_environments(items: &[proto::Environment]) {
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
    table(&["ENVIRONMENT", "PROTECTED", "CREATED"], &rows);
}

/// Consumers as a table.
pub fn print_consumers(items: &[proto::Consumer]) {
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
    );
}

/// One consumer with its versions.
pub fn print_consumer(c: &proto::Consumer) {
    println!(
        "{}/{}{}",
        c.environment,
        c.name,
        if c.disabled { "  (DISABLED)" } else { "" }
    );
    println!("  owner:  {}", dash(&c.owner));
    println!(
        "  scopes: {}",
        if c.scopes.is_empty() {
            "-".into()
        } else {
            c.scopes.join(", ")
        }
    );
    println!(
        "  retire: {} (idle {}, on stall: {})",
        c.retire, c.idle, c.on_stall
    );
    println!();
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
    );
}
