//! `keyroll ca …` (the certificate authority: init, bundle, status, rotate) and `keyroll cert …` (workload
//! certificates: issue, revoke, list, show). `cert issue --out DIR` writes `cert.pem` (leaf then intermediate),
//! `key.pem` (mode 0600 from its creation, never over an existing file; absent with `--csr`,
//! whose key stays where it was made) and `ca.pem` (the roots to trust). The private key is
//! written to its file and never printed, in JSON output neither.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use keyroll_client::Client;
use keyroll_core::{ConsumerRef, parse_duration};
use keyroll_proto::ca as wire;

use crate::exit::{Exit, Failure, OrUsage, usage};
use crate::keyfiles;
use crate::output::{Output, say};

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create the CA: a root and an intermediate for the SPIFFE trust domain.
    Init {
        /// The trust domain (`example.org`): identities are spiffe://DOMAIN/ENV/SERVICE.
        #[arg(long)]
        trust_domain: String,
        /// The root's lifetime [default: 87600h, ten years].
        #[arg(long, value_name = "DURATION")]
        root_ttl: Option<String>,
        /// The intermediate's lifetime [default: 8760h, one year].
        #[arg(long, value_name = "DURATION")]
        intermediate_ttl: Option<String>,
    },
    /// Every authority on the rotation timeline, what its removal waits for, the next step.
    Status {
        /// Print the API's JSON (the same as `--output json`).
        #[arg(long)]
        json: bool,
    },
    /// Start a rotation: a new intermediate (with --root, a new root and intermediate) that
    /// enters the bundle first and signs later; the old one leaves once nothing depends on it.
    Rotate {
        /// Rotate the root as well.
        #[arg(long)]
        root: bool,
        /// When the new CA enters the bundle (RFC 3339) [default: half the current one's life].
        #[arg(long, value_name = "RFC3339")]
        enters_bundle_at: Option<String>,
        /// When it starts signing (RFC 3339) [default: five sixths of the current one's life].
        #[arg(long, value_name = "RFC3339")]
        signs_from: Option<String>,
        /// How long no handshake may have chained to the old CA before it leaves [default: 24h].
        #[arg(long, value_name = "DURATION")]
        idle: Option<String>,
    },
    /// The trust bundle (roots, intermediates, CRLs) as PEM; public, no token needed.
    Bundle {
        /// Write it to this file (replaced atomically) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Issue a workload certificate for ENV/SERVICE into a directory.
    Issue {
        /// ENV/SERVICE (the environment must exist).
        identity: String,
        /// Directory for cert.pem, key.pem (0600) and ca.pem (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime (at least 5m) [default: 24h].
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Also allow TLS server authentication (serverAuth).
        #[arg(long)]
        server_auth: bool,
        /// Extra DNS name (repeatable; needs --server-auth).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Extra IP address (repeatable; needs --server-auth).
        #[arg(long = "ip", value_name = "ADDRESS")]
        ip: Vec<String>,
        /// A PEM certificate signing request: only its public key is used (its subject and SANs
        /// are ignored) and no key.pem is written.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
    },
    /// Revoke a certificate (SERIAL), or every live certificate of ENV/SERVICE (which may then
    /// no longer renew itself). The new CRL is in the bundle at once.
    Revoke {
        /// A serial (32 hex digits) or ENV/SERVICE.
        target: String,
        /// unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
        /// cessation-of-operation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Issued certificates (never their keys).
    List {
        /// Only ENV/SERVICE's.
        #[arg(long)]
        identity: Option<String>,
        /// live, expired or revoked.
        #[arg(long)]
        state: Option<String>,
        /// Only those this authority (ca_…) signed.
        #[arg(long)]
        issuer: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// One issued certificate.
    Show {
        /// Its serial (32 hex digits).
        serial: String,
    },
}

/// Runs `keyroll ca …`; `public` is a client whose token is optional (the bundle is public).
pub async fn run_ca(
    cmd: CaCmd,
    admin: impl FnOnce() -> anyhow::Result<Client>,
    public: impl FnOnce() -> anyhow::Result<Client>,
    out: Output,
) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init {
            trust_domain,
            root_ttl,
            intermediate_ttl,
        } => {
            keyroll_ca::TrustDomain::parse(&trust_domain)
                .context("--trust-domain")
                .or_usage()?;
            check_duration("root-ttl", root_ttl.as_deref())?;
            check_duration("intermediate-ttl", intermediate_ttl.as_deref())?;
            let a = admin()?
                .ca_init(&wire::CaInit {
                    trust_domain,
                    root_ttl,
                    intermediate_ttl,
                })
                .await?;
            out.json_or(&a.json, || {
                let b = &a.body;
                say!("Created the CA for trust domain {}.", b.trust_domain)?;
                say!(
                    "  root          {}  serial {}  until {}",
                    b.root.id,
                    b.root.serial,
                    b.root.not_after
                )?;
                say!(
                    "  intermediate  {}  serial {}  until {}",
                    b.intermediate.id,
                    b.intermediate.serial,
                    b.intermediate.not_after
                )?;
                say!("Bundle version {}.", b.bundle_version)
            })?;
        }
        CaCmd::Status { json } => {
            let a = admin()?.ca_status().await?;
            let out = Output {
                json: out.json || json,
            };
            out.json_or(&a.json, || print_status(&a.body))?;
        }
        CaCmd::Rotate {
            root,
            enters_bundle_at,
            signs_from,
            idle,
        } => {
            for (flag, v) in [
                ("enters-bundle-at", &enters_bundle_at),
                ("signs-from", &signs_from),
            ] {
                if let Some(t) = v
                    && keyroll_core::parse_rfc3339(t).is_none()
                {
                    return Err(usage(format!(
                        "--{flag} {t:?}: expected an RFC 3339 time such as 2026-12-24T00:00:00Z"
                    )));
                }
            }
            check_duration("idle", idle.as_deref())?;
            let a = admin()?
                .ca_rotate(&wire::CaRotate {
                    root: root.then_some(true),
                    enters_bundle_at,
                    signs_from,
                    idle,
                })
                .await?;
            out.json_or(&a.json, || {
                say!(
                    "Rotation started ({}).",
                    if root {
                        "root and intermediate"
                    } else {
                        "intermediate"
                    }
                )?;
                say!()?;
                print_status(&a.body)
            })?;
        }
        CaCmd::Bundle { out: file } => {
            let client = public()?;
            if out.json {
                let a = client.ca_bundle().await?;
                if let Some(f) = &file {
                    let text = format!(
                        "{}{}{}",
                        a.body.roots_pem, a.body.intermediates_pem, a.body.crls_pem
                    );
                    write_replacing(f, text.as_bytes(), 0o644)?;
                }
                say!(
                    "{}",
                    serde_json::to_string_pretty(&a.json).unwrap_or_default()
                )?;
                return Ok(());
            }
            let b = client.ca_bundle_pem().await?;
            match &file {
                Some(f) => {
                    write_replacing(f, b.pem.as_bytes(), 0o644)?;
                    say!(
                        "Wrote the CA bundle (version {}) to {}.",
                        b.bundle_version,
                        f.display()
                    )?;
                }
                None => crate::output::write_stdout(format_args!("{}", b.pem))?,
            }
        }
    }
    Ok(())
}

/// Runs `keyroll cert …`.
pub async fn run_cert(
    cmd: CertCmd,
    admin: impl FnOnce() -> anyhow::Result<Client>,
    out: Output,
) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Issue {
            identity,
            out: dir,
            ttl,
            server_auth,
            dns,
            ip,
            csr,
        } => {
            ConsumerRef::parse(&identity)
                .with_context(|| format!("identity {identity:?} (expected ENV/SERVICE)"))
                .or_usage()?;
            check_duration("ttl", ttl.as_deref())?;
            if !server_auth && (!dns.is_empty() || !ip.is_empty()) {
                return Err(usage("--dns and --ip need --server-auth"));
            }
            let csr_pem = match &csr {
                None => None,
                Some(p) => Some(
                    fs::read_to_string(p)
                        .with_context(|| format!("cannot read --csr {}", p.display()))
                        .or_usage()?,
                ),
            };
            keyfiles::refuse_non_directory(&dir)?;
            let key_path = dir.join("key.pem");
            if csr_pem.is_none() {
                // The key is shown once: check before asking for it.
                keyfiles::refuse_existing(std::slice::from_ref(&key_path))?;
            }
            let a = admin()?
                .issue_cert(&wire::IssueCert {
                    identity,
                    ttl,
                    server_auth: server_auth.then_some(true),
                    dns,
                    ip,
                    csr: csr_pem,
                })
                .await?;
            let b = &a.body;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| write_failed(&dir, &e))?;
            let mut written = Vec::new();
            if let Some(key) = &b.key_pem {
                keyfiles::write_new(&key_path, key.trim_end())?;
                written.push(key_path.clone());
            }
            let cert_path = dir.join("cert.pem");
            write_replacing(&cert_path, b.cert_pem.as_bytes(), 0o644)?;
            written.push(cert_path);
            let ca_path = dir.join("ca.pem");
            write_replacing(&ca_path, b.ca_pem.as_bytes(), 0o644)?;
            written.push(ca_path);
            let mut json = a.json.clone();
            if let Some(o) = json.as_object_mut() {
                // Never printed: it is in key.pem.
                o.remove("key_pem");
                o.insert(
                    "files".to_owned(),
                    serde_json::Value::from(
                        written
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>(),
                    ),
                );
            }
            out.json_or(&json, || {
                say!(
                    "Issued certificate {} for {} ({}), valid until {}.",
                    b.serial,
                    b.identity,
                    b.spiffe_id,
                    b.not_after
                )?;
                for p in &written {
                    say!("  {}", p.display())?;
                }
                Ok(())
            })?;
        }
        CertCmd::Revoke { target, reason } => {
            keyroll_ca::RevocationReason::parse(&reason)
                .context("--reason")
                .or_usage()?;
            let req = if target.contains('/') {
                ConsumerRef::parse(&target)
                    .with_context(|| format!("{target:?}: expected a serial or ENV/SERVICE"))
                    .or_usage()?;
                wire::RevokeCert {
                    serial: None,
                    identity: Some(target),
                    reason: Some(reason),
                }
            } else {
                keyroll_ca::Serial::parse(&target)
                    .with_context(|| format!("{target:?}: expected a serial or ENV/SERVICE"))
                    .or_usage()?;
                wire::RevokeCert {
                    serial: Some(target),
                    identity: None,
                    reason: Some(reason),
                }
            };
            let a = admin()?.revoke_certs(&req).await?;
            out.json_or(&a.json, || {
                let b = &a.body;
                if b.revoked.is_empty() {
                    say!("No live certificate to revoke.")?;
                } else {
                    say!("Revoked {} certificate(s):", b.revoked.len())?;
                    for s in &b.revoked {
                        say!("  {s}")?;
                    }
                }
                if b.identity_blocked {
                    say!("The identity may no longer renew its own certificate.")?;
                }
                say!("Bundle version {}.", b.bundle_version)
            })?;
        }
        CertCmd::List {
            identity,
            state,
            issuer,
            limit,
        } => {
            let a = admin()?
                .list_certs(&keyroll_client::CertFilter {
                    identity,
                    state,
                    issuer,
                    after: None,
                    limit: Some(limit),
                })
                .await?;
            out.json_or(&a.json, || print_certs(&a.body.certificates))?;
        }
        CertCmd::Show { serial } => {
            keyroll_ca::Serial::parse(&serial).or_usage()?;
            let a = admin()?.get_cert(&serial).await?;
            out.json_or(&a.json, || print_cert(&a.body))?;
        }
    }
    Ok(())
}

fn print_status(s: &wire::CaStatus) -> crate::output::Printed {
    say!(
        "Trust domain {}, bundle version {}.",
        s.trust_domain,
        s.bundle_version
    )?;
    say!()?;
    let rows: Vec<Vec<String>> = s
        .authorities
        .iter()
        .map(|a| {
            let d = &a.depends;
            let waits = if a.state == "removed" {
                "-".to_owned()
            } else {
                format!(
                    "{} certs, {} handshakes, {} agents",
                    d.live_certificates.len(),
                    d.recent_handshakes.len(),
                    d.agents_on_old_bundle.len()
                )
            };
            vec![
                a.id.clone(),
                format!("{} g{}", a.kind, a.generation),
                a.state.clone(),
                a.enters_bundle_at.clone(),
                a.signs_from.clone(),
                a.not_after.clone(),
                waits,
            ]
        })
        .collect();
    crate::output::table(
        &[
            "ID",
            "KIND",
            "STATE",
            "ENTERS BUNDLE",
            "SIGNS FROM",
            "NOT AFTER",
            "DEPENDS ON IT",
        ],
        &rows,
    )?;
    say!()?;
    match &s.next_step {
        Some(n) => say!(
            "Next step: {}{} at {}.",
            n.kind,
            n.authority
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default(),
            n.at
        ),
        None => say!("Next step: none foreseen (a retiring CA waits for what depends on it)."),
    }
}

fn print_certs(certs: &[wire::CertInfo]) -> crate::output::Printed {
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                c.serial.clone(),
                c.identity.clone(),
                c.state.clone(),
                c.not_after.clone(),
                if c.server_auth {
                    "client+server"
                } else {
                    "client"
                }
                .to_owned(),
                c.requested_by.clone(),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "SERIAL",
            "IDENTITY",
            "STATE",
            "NOT AFTER",
            "USAGE",
            "REQUESTED BY",
        ],
        &rows,
    )
}

fn print_cert(c: &wire::CertInfo) -> crate::output::Printed {
    say!("Certificate {}", c.serial)?;
    say!("  identity       {}", c.identity)?;
    say!("  state          {}", c.state)?;
    say!("  issuer         {}", c.issuer_id)?;
    say!("  valid          {} to {}", c.not_before, c.not_after)?;
    say!("  fingerprint    {}", c.fingerprint)?;
    say!(
        "  usage          {}",
        if c.server_auth {
            "clientAuth, serverAuth"
        } else {
            "clientAuth"
        }
    )?;
    say!("  requested by   {}", c.requested_by)?;
    if let Some(s) = &c.superseded_by {
        say!("  superseded by  {s}")?;
    }
    if let Some(at) = &c.revoked_at {
        say!(
            "  revoked        {at} ({})",
            c.revocation_reason.as_deref().unwrap_or("unspecified")
        )?;
    }
    Ok(())
}

fn check_duration(flag: &str, value: Option<&str>) -> anyhow::Result<()> {
    if let Some(v) = value {
        parse_duration(v)
            .with_context(|| format!("--{flag}"))
            .or_usage()?;
    }
    Ok(())
}

fn write_failed(path: &Path, e: &std::io::Error) -> anyhow::Error {
    Failure::new(
        Exit::Error,
        "write_failed",
        format!("cannot write {}: {e}", path.display()),
    )
    .into()
}

/// Writes `bytes` to `path` through a temporary file in the same directory (created with
/// `mode`) renamed over it, so a reader sees the old file or the new one, never half.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_failed(path, &e));
    }
    Ok(())
}
