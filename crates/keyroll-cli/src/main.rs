//! The `keyroll` command: clap definitions and glue. Arguments are validated with the core's
//! parsers before anything is sent, and every failure ends as one line on stderr (one JSON
//! object under `--output json`) and the exit code of its kind (see `exit.rs`).

mod agent;
mod audit;
mod ca;
mod cluster;
mod decisions;
mod exit;
mod keyfiles;
mod output;
mod policy;
mod rotate;
mod scan;
mod status;
mod token;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use keyroll_client::Client;
use keyroll_core::{
    ConsumerRef, Environment, VersionNumber, fingerprint, parse_duration, parse_key,
};
use keyroll_proto as proto;

use crate::exit::{Exit, Failure, OrUsage, usage};
use crate::output::{
    Output, print_consumer, print_consumers, print_environments, print_new_key, say,
};

#[derive(Debug, Parser)]
#[command(
    name = "keyroll",
    version,
    about = "Per-consumer API keys, graceful rotation, explained rejections."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
struct Global {
    /// The keyroll server.
    #[arg(
        long,
        global = true,
        env = "KEYROLL_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// Admin token (default: the admin-token file in --data-dir).
    #[arg(long, global = true, env = "KEYROLL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory whose admin-token file is the default token [default: $KEYROLL_DATA_DIR,
    /// else ./keyroll-data].
    // No `env` here: KEYROLL_DATA_DIR is read by hand, so that for serve and init it stays a
    // setting of the configuration (below flags) rather than turning into a flag.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// PEM CA bundle to trust for an https:// server (e.g. keyroll's own `ca.pem`) [default:
    /// the public webpki roots].
    #[arg(long, global = true, env = "KEYROLL_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate (chain, leaf first) to present to an https:// server.
    #[arg(
        long,
        global = true,
        env = "KEYROLL_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "KEYROLL_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// Human-readable.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

#[derive(Debug, Args)]
struct ServerFlags {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "KEYROLL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7878].
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (SQLite database, first admin token) [default: ./keyroll-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite://PATH).
    #[arg(long)]
    database_url: Option<String>,
    /// Log format: auto (JSON unless a terminal), json, pretty.
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Debug, Args)]
struct InitFlags {
    #[command(flatten)]
    server: ServerFlags,
    /// Start a new installation even where the data dir shows an earlier one whose database is
    /// gone or empty: its files are moved aside as *.replaced-<time>, its keys stop working.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server.
    Serve(ServerFlags),
    /// Create the first admin token of a new installation and print it once.
    Init(InitFlags),
    /// Environments (prod, staging, …).
    #[command(subcommand)]
    Env(EnvCmd),
    /// Consumers: one app or service in one environment.
    #[command(subcommand)]
    Consumer(ConsumerCmd),
    /// Issue a new key version; older ones keep working for the grace window.
    Rotate {
        /// ENV/NAME (none with --due).
        #[arg(required_unless_present = "due")]
        consumer: Option<String>,
        /// How long older versions keep working (humantime: 48h, 30d; 0 retires them now).
        #[arg(long)]
        grace: Option<String>,
        /// Retire exactly at the deadline, whatever traffic says.
        #[arg(long)]
        enforce: bool,
        /// Hard expiry of the new key, from now (e.g. 90d).
        #[arg(long)]
        expires_in: Option<String>,
        /// Retrying with the same key does not rotate twice.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Confirm the change (required in a protected environment).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        ci: rotate::CiFlags,
    },
    /// Revoke a version at once (leaks). Never gated by usage; needs --yes in a protected environment.
    Revoke {
        /// ENV/NAME.
        consumer: String,
        /// The version: v3 or 3.
        version: String,
        /// Why; recorded and told to callers of the key.
        #[arg(long)]
        reason: String,
        /// Confirm the change (required in a protected environment).
        #[arg(long)]
        yes: bool,
        /// Wait up to this long (e.g. 2s, at most 30s) until every live node of the cluster
        /// rejects the key, and say which did.
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
    },
    /// End a retiring version's grace window now.
    Retire {
        /// ENV/NAME.
        consumer: String,
        /// The version: v3 or 3.
        version: String,
        /// Confirm the change (required in a protected environment).
        #[arg(long)]
        yes: bool,
    },
    /// Ask the server whether a key is accepted; exits 0 if it is, 3 if it is rejected.
    Verify {
        /// The key (or - to read it from stdin, which keeps it out of shell history).
        key: String,
        /// Required scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The environment the key must belong to.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Count this check as the consumer using its key. By default an operator's check is
        /// not counted, so it cannot keep an old version "in use" and stall its rotation.
        #[arg(long)]
        count_as_use: bool,
    },
    /// Who uses which key version, with a verdict per consumer.
    Status {
        /// ENV or ENV/NAME (default: everything).
        target: Option<String>,
        /// Refresh every interval (e.g. 2s) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "2s")]
        watch: Option<String>,
    },
    /// Lifecycle events (rotations, retirements, stalls, revocations, unused versions).
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Pre-deploy check: find keyroll keys in files and fail (exit 3) if any would stop working
    /// soon. Only key ids are sent to the server, never keys.
    Scan {
        /// Files and directories to scan (.git/, binary files and symlinks inside are skipped).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Fail when a key stops working within this window (humantime: 24h, 7d).
        #[arg(long, default_value = "24h")]
        min_remaining: String,
    },
    /// The server's last decisions (allowed and rejected), by kid, consumer, code or fingerprint.
    Decisions(decisions::DecisionsArgs),
    /// Print a key's fingerprint, computed locally (the key never leaves this machine).
    Fingerprint {
        /// The key (or - for stdin).
        key: String,
    },
    /// Admin tokens: create (shown once), list, revoke, rotate with an overlap.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Signed webhooks: endpoints (secret shown once), deliveries, replays.
    #[command(subcommand)]
    Webhook(webhook::WebhookCmd),
    /// The nodes sharing the server's database: applied changes, heartbeats, the leader.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Policy files (policy as code): `keyroll policy check -f FILE` validates one offline.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// What applying a policy file would change. Exits 0 (no changes), 2 (changes) or 1 (any
    /// error), like `terraform plan -detailed-exitcode`.
    Plan(policy::PlanArgs),
    /// Apply a policy file (-f FILE) or a plan saved by `keyroll plan --out` (PLAN.json).
    Apply(policy::ApplyArgs),
    /// The audit log: list entries, verify its hash chain (exit 3 on a broken link).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Keep a consumer's key current in a file and rotate it by itself (`keyroll agent status`:
    /// its health). Authenticates with the consumer's own key.
    Agent(agent::AgentArgs),
    /// The certificate authority: init, bundle.
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// Workload certificates (SPIFFE X.509): issue.
    #[command(subcommand)]
    Cert(ca::CertCmd),
    /// Run a command with the consumer's key in its environment (KEYROLL_KEY), restarting it
    /// gracefully on a new key; exits with the command's exit code.
    Run(agent::run::RunArgs),
}

#[derive(Debug, Subcommand)]
enum EnvCmd {
    /// Create an environment.
    Create {
        /// Name: [a-z][a-z0-9]{0,15}.
        name: String,
        /// Rotations here need confirmation.
        #[arg(long)]
        protected: bool,
        /// A rotation here waits until the same consumer's rotation in this environment has
        /// completed (e.g. `--rotate-after staging` for prod).
        #[arg(long, value_name = "ENV")]
        rotate_after: Option<String>,
    },
    /// Change an environment's protection or ordering rule.
    Set {
        /// The environment.
        name: String,
        /// Rotations here need confirmation.
        #[arg(long, conflicts_with = "unprotected")]
        protected: bool,
        /// Rotations here no longer need confirmation.
        #[arg(long)]
        unprotected: bool,
        /// Rotate only after the same consumer's completed rotation in ENV.
        #[arg(long, value_name = "ENV", conflicts_with = "no_rotate_after")]
        rotate_after: Option<String>,
        /// Remove the ordering rule.
        #[arg(long)]
        no_rotate_after: bool,
    },
    /// List environments.
    List,
}

#[derive(Debug, Subcommand)]
enum ConsumerCmd {
    /// Create a consumer and print its first key once.
    Create {
        /// ENV/NAME, e.g. prod/billing-app.
        consumer: String,
        /// Granted scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Owning team or person.
        #[arg(long)]
        owner: Option<String>,
        /// Hard expiry of the first key, from now (e.g. 90d).
        #[arg(long)]
        expires_in: Option<String>,
        /// Write the first key to this new file (mode 0600, never overwriting) instead of
        /// printing it: the bootstrap key of `keyroll agent --key-file PATH`.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        policy: PolicyFlags,
        #[command(flatten)]
        schedule: ScheduleFlags,
    },
    /// Change a consumer's scopes, owner or retirement policy.
    Set {
        /// ENV/NAME.
        consumer: String,
        /// Replace the granted scopes (repeatable; give none of them to keep them).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Remove every scope.
        #[arg(long, conflicts_with = "scopes")]
        clear_scopes: bool,
        /// New owner.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        policy: PolicyFlags,
        #[command(flatten)]
        schedule: ScheduleFlags,
        /// Remove the rotation schedule.
        #[arg(long, conflicts_with = "rotate_every")]
        no_schedule: bool,
    },
    /// List consumers.
    List {
        /// Only this environment.
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Show a consumer and its versions.
    Show {
        /// ENV/NAME.
        consumer: String,
    },
    /// Reject every key of a consumer.
    Disable {
        /// ENV/NAME.
        consumer: String,
        /// Confirm the change (required in a protected environment).
        #[arg(long)]
        yes: bool,
    },
    /// Undo disable.
    Enable {
        /// ENV/NAME.
        consumer: String,
    },
}

/// How a consumer's old versions are retired (SPEC §3).
#[derive(Debug, Args)]
struct PolicyFlags {
    /// `when-idle` (retire early once the new version is used and the old one is quiet) or
    /// `at-deadline`.
    #[arg(long)]
    retire: Option<String>,
    /// How long a version must go unseen to count as idle (default 1h).
    #[arg(long)]
    idle: Option<String>,
    /// At the deadline of a version still in use: `extend` (once, default) or `retire`.
    #[arg(long)]
    on_stall: Option<String>,
}

/// When a consumer rotates by itself and how its new keys reach it (SPEC §7).
#[derive(Debug, Args)]
struct ScheduleFlags {
    /// Rotate on a schedule: a new version falls due this long after the active one was issued
    /// (e.g. 30d).
    #[arg(long)]
    rotate_every: Option<String>,
    /// The grace window of a scheduled rotation, and of `keyroll rotate` without --grace
    /// (default 48h).
    #[arg(long)]
    grace: Option<String>,
    /// How a new key reaches the consumer: agent, ci or manual (default; the schedule then only
    /// says it is due).
    #[arg(long)]
    delivery: Option<String>,
}

impl ScheduleFlags {
    fn check(&self) -> anyhow::Result<()> {
        check_duration("rotate-every", self.rotate_every.as_ref())?;
        check_duration("grace", self.grace.as_ref())?;
        if let Some(d) = &self.delivery {
            keyroll_core::Delivery::parse(d)
                .with_context(|| format!("--delivery {d:?}: expected agent, ci or manual"))
                .or_usage()?;
        }
        Ok(())
    }
}

impl PolicyFlags {
    fn check(&self) -> anyhow::Result<()> {
        if let Some(r) = &self.retire {
            keyroll_core::RetirePolicy::parse(r)
                .with_context(|| format!("--retire {r:?}: expected when-idle or at-deadline"))
                .or_usage()?;
        }
        check_duration("idle", self.idle.as_ref())?;
        if let Some(o) = &self.on_stall {
            keyroll_core::OnStall::parse(o)
                .with_context(|| format!("--on-stall {o:?}: expected extend or retire"))
                .or_usage()?;
        }
        Ok(())
    }
}

/// Client flags that do not apply to a subcommand: hidden from its `--help`, and an error if
/// given after it. (Global flags reach every subcommand; one that defines an argument of the
/// same id keeps its own, which is how these replace them.)
const NOT_HERE: [(&str, &[(&str, &str)]); 3] = [
    (
        "serve",
        &[
            ("server", "server"),
            ("token", "token"),
            ("output", "output"),
            ("ca_file", "ca-file"),
            ("client_cert", "client-cert"),
            ("client_key", "client-key"),
        ],
    ),
    (
        "init",
        &[
            ("server", "server"),
            ("token", "token"),
            ("ca_file", "ca-file"),
            ("client_cert", "client-cert"),
            ("client_key", "client-key"),
        ],
    ),
    (
        "fingerprint",
        &[
            ("server", "server"),
            ("token", "token"),
            ("data_dir", "data-dir"),
            ("ca_file", "ca-file"),
            ("client_cert", "client-cert"),
            ("client_key", "client-key"),
        ],
    ),
];

fn command() -> clap::Command {
    let mut cmd = Cli::command().after_long_help(Exit::help());
    for (sub, flags) in NOT_HERE {
        cmd = cmd.mut_subcommand(sub, |mut sc| {
            for &(id, long) in flags {
                sc = sc.arg(clap::Arg::new(id).long(long).hide(true).value_parser(
                    move |_: &str| -> Result<String, String> {
                        Err(format!("--{long} does not apply to `keyroll {sub}`"))
                    },
                ));
            }
            sc
        });
    }
    cmd
}

/// Whether the raw arguments ask for JSON, for errors found before they are parsed.
fn wants_json() -> bool {
    // `args_os`: `args` panics on an argument that is not UTF-8, which is one of the errors
    // this reports.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "--output=json" || (a == "--output" && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

fn parse() -> Result<Cli, ExitCode> {
    let parsed = command()
        .try_get_matches()
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
    match parsed {
        Ok(cli) => Ok(cli),
        // --help and --version, or a usage error in clap's own words (exit 2).
        Err(e) if !e.use_stderr() || !wants_json() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let detail = first.strip_prefix("error: ").unwrap_or(first);
            let err = anyhow::Error::from(Failure::new(Exit::Usage, "usage", detail));
            Err(exit::report(&err, true))
        }
    }
}

fn main() -> ExitCode {
    // Every TLS config in this process (webhooks, the client, the listener) uses one provider.
    keyroll_ca::tls::install_provider();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // For checking scripts and CI files without a server: the arguments parse, nothing runs.
    if std::env::var_os("KEYROLL_CHECK_ARGS").is_some_and(|v| v == "1") {
        return ExitCode::SUCCESS;
    }
    let json = cli.global.output == Format::Json;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)))
        .and_then(|code| Ok(output::flush_stdout().map(|()| code)?));
    match result {
        Ok(code) => code,
        Err(e) => exit::report(&e, json),
    }
}

/// `prod (protected, rotates after staging)`.
fn describe_env(e: &proto::Environment) -> String {
    let mut notes = Vec::new();
    if e.protected {
        notes.push("protected".to_owned());
    }
    if let Some(after) = &e.rotate_after {
        notes.push(format!("rotates after {after}"));
    }
    if notes.is_empty() {
        e.name.clone()
    } else {
        format!("{} ({})", e.name, notes.join(", "))
    }
}

fn consumer_ref(text: &str) -> anyhow::Result<ConsumerRef> {
    ConsumerRef::parse(text).or_usage()
}

fn check_duration(flag: &str, value: Option<&String>) -> anyhow::Result<()> {
    if let Some(v) = value {
        parse_duration(v)
            .with_context(|| format!("--{flag}"))
            .or_usage()?;
    }
    Ok(())
}

fn version(text: &str) -> anyhow::Result<u32> {
    VersionNumber::parse(text)
        .map(|n| n.0)
        .with_context(|| format!("invalid version {text:?}: expected v1, v2, … or 1, 2, …"))
        .or_usage()
}

fn read_key(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the key from stdin")?;
    let key = line.trim();
    if key.is_empty() {
        // Asking the server about "" would only say `malformed_credential`.
        return Err(usage(
            "no key on stdin: `-` reads the key from the first line of stdin",
        ));
    }
    Ok(key.to_owned())
}

/// The admin token: `--token` / `KEYROLL_TOKEN`, else the token file in the data dir. Every
/// server command needs one, so a missing file is said here, naming the path tried, rather than
/// as the server's "no admin token".
fn token(global: &Global) -> anyhow::Result<String> {
    let remedy = "use --token, KEYROLL_TOKEN or --data-dir";
    if let Some(t) = &global.token {
        let t = t.trim();
        if t.is_empty() {
            return Err(usage(
                "the admin token given by --token or KEYROLL_TOKEN is empty",
            ));
        }
        return Ok(t.to_owned());
    }
    let dir = global
        .data_dir
        .clone()
        .or_else(|| {
            std::env::var_os("KEYROLL_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("./keyroll-data"));
    let path = dir.join(keyroll_server::ADMIN_TOKEN_FILE);
    // A relative path is read from the current directory, which is what surprises.
    let shown = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!("{} (in {})", path.display(), cwd.display()),
        _ => path.display().to_string(),
    };
    let fail = |code: &str, detail: String| -> anyhow::Error {
        Failure::new(Exit::Auth, code, detail).into()
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(fail(
            "no_token",
            format!("the token file {shown} is empty; {remedy}"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(
            "no_token",
            format!("no token file at {shown}; {remedy}"),
        )),
        Err(e) => Err(fail(
            "token_unreadable",
            format!("cannot read the token file {shown}: {e}; {remedy}"),
        )),
    }
}

fn client(global: &Global) -> anyhow::Result<Client> {
    let token = token(global)?;
    Ok(Client::with_tls(
        &global.server,
        Some(token),
        &tls(global)?,
    )?)
}

/// A client for public endpoints (the CA bundle): the admin token when there is one.
fn public_client(global: &Global) -> anyhow::Result<Client> {
    Ok(Client::with_tls(
        &global.server,
        token(global).ok(),
        &tls(global)?,
    )?)
}

/// `--ca-file`, `--client-cert` and `--client-key`, read and checked before any request.
fn tls(global: &Global) -> anyhow::Result<keyroll_client::Tls> {
    keyroll_client::Tls::from_files(
        global.ca_file.as_deref(),
        global.client_cert.as_deref(),
        global.client_key.as_deref(),
    )
    .map_err(|e| Failure::new(Exit::Usage, "invalid_tls_file", e.to_string()).into())
}

fn server_config(flags: ServerFlags) -> anyhow::Result<keyroll_server::Config> {
    let overrides = keyroll_server::Overrides {
        listen: flags.listen,
        data_dir: flags.data_dir,
        database_url: flags.database_url,
        log_format: flags.log_format,
    };
    Ok(keyroll_server::Config::load(
        flags.config.as_deref(),
        &overrides,
    )?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Output {
        json: cli.global.output == Format::Json,
    };
    match cli.command {
        Cmd::Serve(flags) => {
            let config = server_config(flags)?;
            keyroll_server::logging::init(config.log_format, &config.log_level);
            let server = keyroll_server::Server::start(config).await?;
            server.run().await?;
        }
        Cmd::Init(flags) => {
            let config = server_config(flags.server)?;
            let done = keyroll_server::init(&config, flags.force).await?;
            for replaced in &done.replaced {
                eprintln!("Earlier installation: {replaced}.");
            }
            out.init(&done.token, done.path.as_deref())?;
        }
        Cmd::Env(EnvCmd::Create {
            name,
            protected,
            rotate_after,
        }) => {
            Environment::parse(&name).or_usage()?;
            if let Some(e) = &rotate_after {
                Environment::parse(e).context("--rotate-after").or_usage()?;
            }
            let a = client(&cli.global)?
                .create_environment(&proto::CreateEnvironment {
                    name,
                    protected,
                    rotate_after,
                })
                .await?;
            out.json_or(&a.json, || {
                say!("Created environment {}.", describe_env(&a.body))
            })?;
        }
        Cmd::Env(EnvCmd::Set {
            name,
            protected,
            unprotected,
            rotate_after,
            no_rotate_after,
        }) => {
            Environment::parse(&name).or_usage()?;
            if let Some(e) = &rotate_after {
                Environment::parse(e).context("--rotate-after").or_usage()?;
            }
            let req = proto::UpdateEnvironment {
                protected: (protected || unprotected).then_some(protected),
                rotate_after: if no_rotate_after {
                    Some(None)
                } else {
                    rotate_after.map(Some)
                },
            };
            if req.protected.is_none() && req.rotate_after.is_none() {
                return Err(usage(
                    "nothing to change: give --protected, --unprotected, --rotate-after ENV or \
                     --no-rotate-after",
                ));
            }
            let a = client(&cli.global)?.update_environment(&name, &req).await?;
            out.json_or(&a.json, || say!("Environment {}.", describe_env(&a.body)))?;
        }
        Cmd::Env(EnvCmd::List) => {
            let a = client(&cli.global)?.list_environments().await?;
            out.json_or(&a.json, || print_environments(&a.body.items))?;
        }
        Cmd::Consumer(ConsumerCmd::Create {
            consumer,
            scopes,
            owner,
            expires_in,
            key_file,
            policy,
            schedule,
        }) => {
            let r = consumer_ref(&consumer)?;
            if let Some(path) = &key_file {
                keyfiles::refuse_existing(std::slice::from_ref(path))?;
            }
            check_duration("expires-in", expires_in.as_ref())?;
            policy.check()?;
            schedule.check()?;
            for s in &scopes {
                keyroll_core::Scope::parse(s).or_usage()?;
            }
            let req = proto::CreateConsumer {
                environment: r.environment.to_string(),
                name: r.name.to_string(),
                scopes,
                owner,
                expires_in,
                retire: policy.retire,
                idle: policy.idle,
                on_stall: policy.on_stall,
                rotate_every: schedule.rotate_every,
                grace: schedule.grace,
                delivery: schedule.delivery,
                managed: false,
            };
            let mut a = client(&cli.global)?.create_consumer(&req, None).await?;
            if let (Some(path), Some(key)) = (&key_file, a.body.key.clone()) {
                if let Err(e) = keyfiles::write_new(path, &key) {
                    // The consumer exists now: its only copy of the key must not be lost.
                    let what = format!(
                        "Created consumer {r} (v1, kid {}), but {e:#}; here is the key instead",
                        a.body.kid
                    );
                    print_new_key(&what, Some(&key))?;
                    return Err(e);
                }
                a.json["key"] = serde_json::Value::Null;
                a.json["key_file"] = serde_json::Value::String(path.display().to_string());
                out.json_or(&a.json, || {
                    say!(
                        "Created consumer {r} (v1, kid {}); its key is in {} (mode 0600), and is not shown.",
                        a.body.kid,
                        path.display()
                    )
                })?;
            } else {
                out.json_or(&a.json, || {
                    let what = format!("Created consumer {r} (v1, kid {})", a.body.kid);
                    print_new_key(&what, a.body.key.as_deref())
                })?;
            }
        }
        Cmd::Consumer(ConsumerCmd::Set {
            consumer,
            scopes,
            clear_scopes,
            owner,
            policy,
            schedule,
            no_schedule,
        }) => {
            let r = consumer_ref(&consumer)?;
            policy.check()?;
            schedule.check()?;
            for s in &scopes {
                keyroll_core::Scope::parse(s).or_usage()?;
            }
            let scopes = if clear_scopes {
                Some(Vec::new())
            } else if scopes.is_empty() {
                None
            } else {
                Some(scopes)
            };
            let req = proto::UpdateConsumer {
                scopes,
                owner,
                retire: policy.retire,
                idle: policy.idle,
                on_stall: policy.on_stall,
                rotate_every: if no_schedule {
                    Some(None)
                } else {
                    schedule.rotate_every.map(Some)
                },
                grace: schedule.grace.map(Some),
                delivery: schedule.delivery,
                managed: None,
            };
            let a = client(&cli.global)?
                .update_consumer(r.environment.as_str(), r.name.as_str(), &req)
                .await?;
            out.json_or(&a.json, || print_consumer(&a.body))?;
        }
        Cmd::Status { target, watch } => {
            let every = watch
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--watch")
                .or_usage()?;
            if every.is_some_and(|d| d.is_zero()) {
                return Err(usage("--watch must be longer than 0 (e.g. 2s)"));
            }
            status::run(&client(&cli.global)?, target.as_deref(), out.json, every).await?;
        }
        Cmd::Events { after, limit } => {
            let a = client(&cli.global)?.events(after, limit).await?;
            out.json_or(&a.json, || status::print_events(&a.body.items))?;
        }
        Cmd::Consumer(ConsumerCmd::List { environment }) => {
            if let Some(e) = &environment {
                Environment::parse(e).or_usage()?;
            }
            let client = client(&cli.global)?;
            let a = client.list_consumers(environment.as_deref()).await?;
            if a.body.items.is_empty()
                && let Some(e) = &environment
            {
                status::check_environment(&client, e).await?;
            }
            out.json_or(&a.json, || print_consumers(&a.body.items))?;
        }
        Cmd::Consumer(ConsumerCmd::Show { consumer }) => {
            let r = consumer_ref(&consumer)?;
            let a = client(&cli.global)?
                .get_consumer(r.environment.as_str(), r.name.as_str())
                .await?;
            out.json_or(&a.json, || print_consumer(&a.body))?;
        }
        Cmd::Consumer(ConsumerCmd::Disable { consumer, yes }) => {
            let r = consumer_ref(&consumer)?;
            let a = client(&cli.global)?
                .disable_confirmed(
                    r.environment.as_str(),
                    r.name.as_str(),
                    &proto::Confirm { confirm: yes },
                )
                .await?;
            out.json_or(&a.json, || {
                say!("Disabled {r}: every key of it is now rejected as consumer_disabled.")
            })?;
        }
        Cmd::Consumer(ConsumerCmd::Enable { consumer }) => {
            let r = consumer_ref(&consumer)?;
            let a = client(&cli.global)?
                .enable(r.environment.as_str(), r.name.as_str())
                .await?;
            out.json_or(&a.json, || say!("Enabled {r}."))?;
        }
        Cmd::Rotate {
            consumer,
            grace,
            enforce,
            expires_in,
            idempotency_key,
            yes,
            ci,
        } => {
            if ci.due {
                let options = rotate::DueOptions {
                    enforce,
                    expires_in,
                    yes,
                };
                return rotate::due(&client(&cli.global)?, &ci, &options, out).await;
            }
            let r = consumer_ref(consumer.as_deref().unwrap_or_default())?;
            if ci.plan {
                rotate::plan(&client(&cli.global)?, &r, out).await?;
                return Ok(ExitCode::SUCCESS);
            }
            if ci.via_agent {
                rotate::via_agent(&client(&cli.global)?, &r, yes, out).await?;
                return Ok(ExitCode::SUCCESS);
            }
            check_duration("grace", grace.as_ref())?;
            check_duration("expires-in", expires_in.as_ref())?;
            let req = proto::RotateRequest {
                grace,
                enforce,
                expires_in,
                confirm: yes,
            };
            let a = client(&cli.global)?
                .rotate(
                    r.environment.as_str(),
                    r.name.as_str(),
                    &req,
                    idempotency_key.as_deref(),
                )
                .await?;
            out.json_or(&a.json, || {
                let b = &a.body;
                print_new_key(
                    &format!("Rotated {r}: v{} is active (kid {})", b.version, b.kid),
                    b.key.as_deref(),
                )?;
                if let Some(why) = &b.key_unavailable {
                    say!("{why}")?;
                }
                for v in &b.retiring {
                    say!(
                        "v{} keeps working until {} (grace window), then retires.",
                        v.version,
                        v.deadline
                    )?;
                }
                for v in &b.retired {
                    say!("v{v} was retired at once (grace 0).")?;
                }
                Ok(())
            })?;
        }
        Cmd::Revoke {
            consumer,
            version: v,
            reason,
            yes,
            wait,
        } => {
            let r = consumer_ref(&consumer)?;
            let n = version(&v)?;
            let a = client(&cli.global)?
                .revoke(
                    r.environment.as_str(),
                    r.name.as_str(),
                    n,
                    &proto::RevokeRequest {
                        reason,
                        confirm: yes,
                    },
                    wait.as_deref(),
                )
                .await?;
            out.json_or(&a.json, || {
                if a.body.already_revoked {
                    say!(
                        "{r} v{n} (kid {}) was already revoked; nothing changed.",
                        a.body.kid
                    )?;
                } else {
                    say!(
                        "Revoked {r} v{n} (kid {}): it is rejected as key_revoked from now on.",
                        a.body.kid
                    )?;
                }
                if let Some(p) = &a.body.propagation {
                    match p.within_ms {
                        Some(ms) if p.lagging.is_empty() => say!(
                            "Confirmed by {} of {} live nodes within {ms} ms.",
                            p.confirmed,
                            p.nodes
                        )?,
                        _ => {
                            let lagging: Vec<String> = p
                                .lagging
                                .iter()
                                .map(|l| {
                                    format!(
                                        "{} (applied {}, last heartbeat {})",
                                        l.node_id, l.applied_seq, l.heartbeat_at
                                    )
                                })
                                .collect();
                            say!(
                                "Confirmed by {} of {} live nodes; not yet: {}.",
                                p.confirmed,
                                p.nodes,
                                lagging.join(", ")
                            )?;
                        }
                    }
                }
                Ok(())
            })?;
            if let Some(w) = &a.body.warning {
                eprintln!("warning: {w}");
            }
        }
        Cmd::Retire {
            consumer,
            version: v,
            yes,
        } => {
            let r = consumer_ref(&consumer)?;
            let n = version(&v)?;
            let a = client(&cli.global)?
                .retire_confirmed(
                    r.environment.as_str(),
                    r.name.as_str(),
                    n,
                    &proto::Confirm { confirm: yes },
                )
                .await?;
            out.json_or(&a.json, || {
                if a.body.already_retired {
                    say!(
                        "{r} v{n} (kid {}) was already retired; nothing changed.",
                        a.body.kid
                    )
                } else {
                    say!(
                        "Retired {r} v{n} (kid {}): it is rejected as key_retired from now on.",
                        a.body.kid
                    )
                }
            })?;
        }
        Cmd::Verify {
            key,
            scopes,
            environment,
            count_as_use,
        } => {
            let key = read_key(&key)?;
            if let Some(e) = &environment {
                Environment::parse(e).or_usage()?;
            }
            let a = client(&cli.global)?
                .verify(&proto::VerifyRequest {
                    key,
                    scopes,
                    environment,
                    operator_check: Some(!count_as_use),
                })
                .await?;
            let b = &a.body;
            out.json_or(&a.json, || {
                let verdict = if b.allowed { "allowed" } else { "rejected" };
                say!("{verdict}: {} — {}", b.code, b.detail)?;
                if let Some(fp) = &b.fingerprint {
                    say!("fingerprint {fp}, request {}", b.request_id)?;
                }
                Ok(())
            })?;
            if !b.allowed {
                return Ok(Exit::Rejected.into());
            }
        }
        Cmd::Scan {
            paths,
            min_remaining,
        } => {
            let global = &cli.global;
            let verdict = scan::run(|| client(global), paths, &min_remaining, out.json).await?;
            return Ok(verdict.into());
        }
        Cmd::Decisions(args) => decisions::run(args, &client(&cli.global)?, out).await?,
        Cmd::Token(cmd) => token::run(cmd, &client(&cli.global)?, out).await?,
        Cmd::Webhook(cmd) => webhook::run(cmd, &client(&cli.global)?, out).await?,
        Cmd::Cluster(cmd) => cluster::run(cmd, &client(&cli.global)?, out).await?,
        Cmd::Ca(cmd) => {
            let global = &cli.global;
            ca::run_ca(cmd, || client(global), || public_client(global), out).await?;
        }
        Cmd::Cert(cmd) => ca::run_cert(cmd, || client(&cli.global), out).await?,
        Cmd::Policy(cmd) => return policy::check(cmd, out),
        Cmd::Plan(args) => {
            let global = &cli.global;
            return Ok(policy::plan(args, || client(global), out).await);
        }
        Cmd::Apply(args) => return policy::apply(args, &client(&cli.global)?, out).await,
        Cmd::Audit(cmd) => return audit::run(cmd, &client(&cli.global)?, out).await,
        Cmd::Agent(args) => {
            return agent::agent(args, &cli.global.server, tls(&cli.global)?, out).await;
        }
        Cmd::Run(args) => {
            return agent::run::run(args, &cli.global.server, tls(&cli.global)?).await;
        }
        Cmd::Fingerprint { key } => {
            let key = read_key(&key)?;
            let fp = fingerprint(key.as_bytes());
            let parsed = parse_key(key.as_bytes());
            if out.json {
                let v = serde_json::json!({
                    "fingerprint": fp.to_string(),
                    "kid": parsed.as_ref().ok().map(|p| p.kid().to_string()),
                    "environment": parsed.as_ref().ok().map(|p| p.environment().to_owned()),
                    "well_formed": parsed.is_ok(),
                    "malformed": parsed.as_ref().err().map(ToString::to_string),
                });
                say!("{v}")?;
            } else {
                say!("{fp}")?;
                match parsed {
                    Ok(p) => output::note(format_args!(
                        "well-formed key: environment {}, kid {}",
                        p.environment(),
                        p.kid()
                    )),
                    Err(m) => output::note(format_args!("not a well-formed keyroll key: {m}")),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
