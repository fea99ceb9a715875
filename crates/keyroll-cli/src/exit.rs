//! The exit codes of `keyroll`, in one place, and how any failure becomes one: a typed
//! [`Failure`], or an error found in the chain of what a command returned (the client's, a stdout
//! write, a parse error), so a new subcommand that propagates errors with `?` gets the same
//! codes and the same JSON without code of its own.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use keyroll_client::ClientError;

/// What a `keyroll` process exits with. Stable: scripts depend on these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok,
    /// Any other failure (a local file, an unexpected answer, stdout full).
    Error,
    /// Invalid arguments or configuration, refused by keyroll or by the server (HTTP 400, 422).
    Usage,
    /// `verify`: the key is rejected; `scan`: a key found fails the check; `audit verify`: the
    /// audit chain is broken; `agent status`: the agent is unhealthy.
    Rejected,
    /// The server cannot be reached (connection refused, DNS, timeout, connection lost).
    Unreachable,
    /// No admin token, or the server refused it (HTTP 401, 403).
    Auth,
    /// What was named does not exist (HTTP 404).
    NotFound,
    /// The change conflicts with the current state (HTTP 409, 412, 428; a reused Idempotency-Key).
    Conflict,
    /// The server failed (HTTP 5xx, e.g. storage unavailable).
    Server,
    /// Stdout was closed early (`keyroll status --watch | head`): 128 + SIGPIPE, as a shell
    /// reports for a program killed by it.
    BrokenPipe,
}

impl Exit {
    /// Every code, in order, for the README and `keyroll --help`.
    pub const ALL: [Exit; 10] = [
        Exit::Ok,
        Exit::Error,
        Exit::Usage,
        Exit::Rejected,
        Exit::Unreachable,
        Exit::Auth,
        Exit::NotFound,
        Exit::Conflict,
        Exit::Server,
        Exit::BrokenPipe,
    ];

    /// The number.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Rejected => 3,
            Exit::Unreachable => 4,
            Exit::Auth => 5,
            Exit::NotFound => 6,
            Exit::Conflict => 7,
            Exit::Server => 8,
            Exit::BrokenPipe => 141,
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success (verify: the key is allowed; scan: every key passes)",
            Exit::Error => "any other error (a local file, an unexpected answer, stdout full)",
            Exit::Usage => "invalid arguments or configuration (also HTTP 400/422 from the server)",
            Exit::Rejected => {
                "verify: the key is rejected; scan: a key fails the check; audit verify: the chain is broken; agent status: unhealthy"
            }
            Exit::Unreachable => "the server cannot be reached (refused, DNS, timeout, cut off)",
            Exit::Auth => "no admin token, or the server refused it (HTTP 401/403)",
            Exit::NotFound => "what was named does not exist (HTTP 404)",
            Exit::Conflict => "conflicts with the current state (HTTP 409; Idempotency-Key reused)",
            Exit::Server => "the server failed (HTTP 5xx, e.g. storage unavailable)",
            Exit::BrokenPipe => "stdout was closed early (… | head); nothing more is printed",
        }
    }

    /// The table shown after `keyroll --help`.
    pub fn help() -> String {
        let mut s = String::from(
            "Exit codes. An error is one line on stderr; with --output json it is one JSON object\n\
             on stderr: {\"error\": {\"code\", \"detail\", \"request_id\", \"exit_code\"}}.\n",
        );
        for e in Exit::ALL {
            s.push_str(&format!("  {:>3}  {}\n", e.code(), e.meaning()));
        }
        s
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// A failure with its exit code and a stable machine code, raised where the CLI itself knows
/// what went wrong (no token file, a name that does not exist, a bad argument).
#[derive(Debug, Clone)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// A stable machine code (`no_token`, `not_found`, `invalid_argument`, …).
    pub code: String,
    /// What happened and what to do, in words.
    pub detail: String,
    /// The server's request id, when the failure is the server's answer.
    pub request_id: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A new failure.
    pub fn new(exit: Exit, code: &str, detail: impl Into<String>) -> Failure {
        Failure {
            exit,
            code: code.to_owned(),
            detail: detail.into(),
            request_id: None,
        }
    }
}

/// An invalid argument, as an error for `?`.
pub fn usage(detail: impl fmt::Display) -> anyhow::Error {
    Failure::new(Exit::Usage, "invalid_argument", detail.to_string()).into()
}

/// Something named on the command line does not exist.
pub fn not_found(detail: impl fmt::Display) -> anyhow::Error {
    Failure::new(Exit::NotFound, "not_found", detail.to_string()).into()
}

/// Marks any error of an argument check as a usage error.
pub trait OrUsage<T> {
    /// The error, as [`Exit::Usage`].
    fn or_usage(self) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> OrUsage<T> for Result<T, E> {
    fn or_usage(self) -> anyhow::Result<T> {
        self.map_err(|e| usage(format!("{:#}", e.into())))
    }
}

/// Writing to stdout failed: the reader went away (EPIPE) or the disk is full (ENOSPC).
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write to stdout: {}", self.0)
    }
}

// No `source`: the message already holds the I/O error, and `{:#}` would print it twice.
impl std::error::Error for StdoutError {}

/// The exit code and machine code of a server's answer or a transport failure.
fn from_client(e: &ClientError) -> (Exit, String) {
    match e {
        ClientError::Unreachable { kind, .. } => (Exit::Unreachable, kind.code().to_owned()),
        ClientError::Request(_) => (Exit::Usage, "invalid_server_url".to_owned()),
        ClientError::Api { status, problem } => {
            let exit = match (*status, problem.code.as_str()) {
                (_, "idempotency_key_reused") => Exit::Conflict,
                (401 | 403, _) => Exit::Auth,
                (404, _) => Exit::NotFound,
                (409 | 412 | 428, _) => Exit::Conflict,
                (400 | 413 | 422, _) => Exit::Usage,
                (500.., _) => Exit::Server,
                _ => Exit::Error,
            };
            (exit, problem.code.clone())
        }
        ClientError::Decode { status, .. } if *status >= 500 => {
            (Exit::Server, "unexpected_answer".to_owned())
        }
        ClientError::Decode { .. } => (Exit::Error, "unexpected_answer".to_owned()),
    }
}

/// Classifies a command's error by the first known error in its chain (outermost first).
pub fn classify(err: &anyhow::Error) -> Failure {
    let whole = format!("{err:#}");
    for (depth, cause) in err.chain().enumerate() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return Failure {
                detail: whole,
                ..f.clone()
            };
        }
        if let Some(e) = cause.downcast_ref::<StdoutError>() {
            return if e.0.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::new(Exit::BrokenPipe, "broken_pipe", whole)
            } else {
                Failure::new(Exit::Error, "write_failed", whole)
            };
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            let (exit, code) = from_client(e);
            // The server's words stand alone when nothing was added around them.
            let detail = match e.problem() {
                Some(p) if depth == 0 => p.detail.clone(),
                _ => whole,
            };
            return Failure {
                exit,
                code,
                detail,
                request_id: e.problem().map(|p| p.request_id.clone()),
            };
        }
        if cause.is::<keyroll_server::config::ConfigError>() {
            return Failure::new(Exit::Usage, "invalid_config", whole);
        }
        if cause.is::<keyroll_core::NameError>() || cause.is::<keyroll_core::DurationError>() {
            return Failure::new(Exit::Usage, "invalid_argument", whole);
        }
    }
    Failure::new(Exit::Error, "error", whole)
}

/// Reports a failure on stderr (one line, or one JSON object) and returns its exit code. A
/// closed stdout is not reported: the reader chose to stop reading.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let f = classify(err);
    if f.exit == Exit::BrokenPipe {
        return f.exit.into();
    }
    let line = if json {
        serde_json::json!({
            "error": {
                "code": f.code,
                "detail": f.detail,
                "request_id": f.request_id,
                "exit_code": f.exit.code(),
            }
        })
        .to_string()
    } else {
        format!("error: {err:#}")
    };
    // Nothing is left to tell if stderr is gone too; the exit code still says it.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    f.exit.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_all_in_the_help() {
        let help = Exit::help();
        let mut seen = std::collections::HashSet::new();
        for e in Exit::ALL {
            assert!(seen.insert(e.code()), "{e:?} reuses {}", e.code());
            assert!(help.contains(&format!(" {}  ", e.code())), "{e:?} missing");
        }
    }

    fn api(status: u16, code: &str) -> anyhow::Error {
        ClientError::Api {
            status,
            problem: Box::new(keyroll_proto::Problem {
                type_uri: String::new(),
                title: String::new(),
                status,
                detail: format!("detail of {code}"),
                code: code.to_owned(),
                kid: None,
                fingerprint: None,
                consumer: None,
                version: None,
                request_id: "rq_1".to_owned(),
            }),
        }
        .into()
    }

    #[test]
    fn server_answers_map_by_status_and_code() {
        let cases = [
            (400, "invalid_request", Exit::Usage),
            (422, "invalid_request", Exit::Usage),
            (422, "idempotency_key_reused", Exit::Conflict),
            (401, "invalid_token", Exit::Auth),
            (403, "insufficient_scope", Exit::Auth),
            (404, "not_found", Exit::NotFound),
            (409, "conflict", Exit::Conflict),
            (500, "storage_corrupt", Exit::Server),
            (503, "storage_unavailable", Exit::Server),
            (429, "slow_down", Exit::Error),
        ];
        for (status, code, exit) in cases {
            let f = classify(&api(status, code));
            assert_eq!(f.exit, exit, "{status} {code}");
            assert_eq!(f.code, code);
            assert_eq!(f.detail, format!("detail of {code}"));
            assert_eq!(f.request_id.as_deref(), Some("rq_1"));
        }
        // Context around the server's words is kept.
        let f = classify(&api(404, "not_found").context("looking up kid X"));
        assert_eq!(f.exit, Exit::NotFound);
        assert!(f.detail.starts_with("looking up kid X: "), "{}", f.detail);
    }

    #[test]
    fn the_chain_decides() {
        let e = anyhow::Error::from(StdoutError(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )))
        .context("printing the status");
        assert_eq!(classify(&e).exit, Exit::BrokenPipe);
        let e = anyhow::Error::from(keyroll_core::parse_duration("soon").unwrap_err())
            .context("--grace");
        assert_eq!(classify(&e).exit, Exit::Usage);
        assert_eq!(classify(&anyhow::anyhow!("x")).exit, Exit::Error);
        let e = not_found("environment nope does not exist");
        let f = classify(&e);
        assert_eq!((f.exit, f.code.as_str()), (Exit::NotFound, "not_found"));
    }
}
