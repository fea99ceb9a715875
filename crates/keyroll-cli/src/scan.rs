//! `keyroll scan PATH…`: the pre-deploy check of SPEC §6.
//!
//! It finds keyroll keys in files (the `kr_` prefix plus a valid checksum, so random look-alikes
//! are not reported), asks the server about each distinct kid (`GET /v1/keys/{kid}`: the key
//! itself never leaves this machine) and fails when a key would not keep working: retired,
//! revoked, expired, unknown, not the issued key for its kid, of a disabled consumer, or
//! retiring (or expiring) within `--min-remaining`.
//!
//! Design, for large trees: the walk uses std only (a few dozen lines; a walker crate would add
//! gitignore semantics this check must *not* have: an ignored `.env` is exactly what gets
//! deployed). Worker threads share a queue of directories and batches of files; each reads its
//! files in fixed-size chunks into one reusable buffer, so memory stays flat whatever the file
//! sizes, and a key split across two chunks is still found. Only the kid, environment,
//! fingerprint and position of a key are kept once it is parsed; the secret is never stored,
//! printed or sent.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use keyroll_client::{Client, ClientError};
use keyroll_core::key::{CHECK_LEN, KID_LEN, MAX_KEY_LEN, PREFIX, SECRET_LEN};
use keyroll_core::{Fingerprint, Kid, fingerprint, parse_duration, parse_key};
use keyroll_proto as proto;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exit::{Exit, OrUsage};
use crate::output::{Printed, note, say};

/// A file with a NUL byte in its first this-many bytes is binary and skipped (git's rule).
const BINARY_PROBE: usize = 8 * 1024;
/// Bytes read per `read` call. Large enough that a small file is one call (plus the EOF call).
const CHUNK: usize = 64 * 1024;
/// Files handed to a worker at once: keeps a flat directory of 100,000 files spread over all
/// workers without taking the queue's lock per file.
const FILE_BATCH: usize = 256;
/// Server lookups in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;

/// One key found in a file. Holds no secret.
#[derive(Debug, Clone)]
pub struct FoundKey {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based byte column in the line.
    pub column: u64,
    /// The key's environment (from its prefix).
    pub environment: String,
    /// The key's id.
    pub kid: Kid,
    /// Fingerprint of the whole key string.
    pub fingerprint: Fingerprint,
}

impl FoundKey {
    /// `kr_prod_<kid>_…`: enough to recognise the key, nothing of the secret.
    pub fn redacted(&self) -> String {
        format!("{PREFIX}{}_{}_…", self.environment, self.kid)
    }
}

/// What the walk saw.
#[derive(Debug, Default)]
pub struct WalkReport {
    /// Text files read to the end.
    pub files: u64,
    /// Files skipped as binary.
    pub binary: u64,
    /// Keys found, sorted by path and position.
    pub keys: Vec<FoundKey>,
    /// Files and directories that could not be read.
    pub warnings: Vec<String>,
}

impl WalkReport {
    fn merge(&mut self, other: WalkReport) {
        self.files += other.files;
        self.binary += other.binary;
        self.keys.extend(other.keys);
        self.warnings.extend(other.warnings);
    }
}

/// Whether a file held text (and was searched) or was skipped as binary.
enum FileKind {
    Text,
    Binary,
}

/// Where we are in the current file, to give each key a line and column.
struct Position {
    /// Offset in the file of `buf[0]`.
    base: u64,
    /// Bytes of `buf` already counted.
    counted: usize,
    line: u64,
    /// Offset in the file where the current line starts.
    line_start: u64,
}

impl Position {
    fn advance(&mut self, buf: &[u8], to: usize) {
        let seg = &buf[self.counted..to];
        let newlines = seg.iter().filter(|&&b| b == b'\n').count();
        if newlines > 0 {
            self.line += newlines as u64;
            let last = seg.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            self.line_start = self.base + (self.counted + last + 1) as u64;
        }
        self.counted = to;
    }
}

/// The first `kr_` at or after `from` that starts before `end`.
fn find_prefix(hay: &[u8], mut from: usize, end: usize) -> Option<usize> {
    while from < end {
        let p = from + hay[from..end].iter().position(|&b| b == b'k')?;
        if hay.get(p + 1) == Some(&b'r') && hay.get(p + 2) == Some(&b'_') {
            return Some(p);
        }
        from = p + 1;
    }
    None
}

/// The length of the key that would start at `p` (its environment fixes it), if the bytes there
/// can be one. `parse_key` then decides.
fn candidate_len(hay: &[u8], p: usize) -> Option<usize> {
    let env_start = p + PREFIX.len();
    // An environment is at most 16 characters, so its `_` is within the next 17 bytes.
    let window = hay.get(env_start..hay.len().min(env_start + 17))?;
    let env_len = window.iter().position(|&b| b == b'_')?;
    Some(PREFIX.len() + env_len + 1 + KID_LEN + 1 + SECRET_LEN + CHECK_LEN)
}

/// Reads files with one buffer, reused for every file a worker scans.
struct Scanner {
    buf: Vec<u8>,
}

impl Scanner {
    fn new() -> Scanner {
        // Room for one chunk plus the tail of the previous one that may hold the start of a key.
        Scanner {
            buf: vec![0; CHUNK + MAX_KEY_LEN],
        }
    }

    fn scan_file(&mut self, path: &Path, out: &mut Vec<FoundKey>) -> std::io::Result<FileKind> {
        let mut file = File::open(path)?;
        let mut carry = 0usize;
        let mut first = true;
        let mut pos = Position {
            base: 0,
            counted: 0,
            line: 1,
            line_start: 0,
        };
        loop {
            let mut filled = carry;
            let mut eof = false;
            // The first chunk is read until the binary probe is covered (or the file ends), so
            // the NUL check sees the same bytes whatever the read sizes.
            loop {
                let n = match file.read(&mut self.buf[filled..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                filled += n;
                if n == 0 {
                    eof = true;
                    break;
                }
                if !first || filled >= BINARY_PROBE {
                    break;
                }
            }
            if first {
                first = false;
                if self.buf[..filled.min(BINARY_PROBE)].contains(&0) {
                    return Ok(FileKind::Binary);
                }
            }
            let hay = &self.buf[..filled];
            // A key starting before `limit` lies wholly in `hay`; later starts wait for the
            // next chunk, unless there is none.
            let limit = if eof {
                filled
            } else {
                filled.saturating_sub(MAX_KEY_LEN - 1)
            };
            let mut at = 0usize;
            while let Some(p) = find_prefix(hay, at, limit) {
                at = p + 1;
                let Some(len) = candidate_len(hay, p) else {
                    continue;
                };
                let Some(candidate) = hay.get(p..p + len) else {
                    continue;
                };
                let Ok(parsed) = parse_key(candidate) else {
                    continue;
                };
                pos.advance(hay, p);
                let offset = pos.base + p as u64;
                out.push(FoundKey {
                    path: path.to_owned(),
                    line: pos.line,
                    column: offset - pos.line_start + 1,
                    environment: parsed.environment().to_owned(),
                    kid: parsed.kid(),
                    fingerprint: fingerprint(candidate),
                });
                // A key holds no `kr_` of its own past its prefix: continue after it.
                at = p + len;
            }
            if eof {
                return Ok(FileKind::Text);
            }
            // Keep the unsearched tail (it may start a key) at the front of the buffer.
            let keep_from = at.max(limit).min(filled);
            pos.advance(hay, keep_from);
            self.buf.copy_within(keep_from..filled, 0);
            carry = filled - keep_from;
            pos.base += keep_from as u64;
            pos.counted = 0;
        }
    }
}

/// Work shared by the walking threads.
enum Job {
    Dir(PathBuf),
    Files(Vec<PathBuf>),
}

struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

struct QueueState {
    jobs: Vec<Job>,
    /// Workers holding a job; when none is and no job is queued, the walk is over.
    busy: usize,
}

impl Queue {
    fn next(&self) -> Option<Job> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = s.jobs.pop() {
                s.busy += 1;
                return Some(job);
            }
            if s.busy == 0 {
                self.wake.notify_all();
                return None;
            }
            s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.jobs.extend(jobs);
        self.wake.notify_all();
    }

    fn done(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.busy -= 1;
        if s.busy == 0 && s.jobs.is_empty() {
            self.wake.notify_all();
        }
    }
}

fn scan_one(scanner: &mut Scanner, path: &Path, report: &mut WalkReport) {
    match scanner.scan_file(path, &mut report.keys) {
        Ok(FileKind::Text) => report.files += 1,
        Ok(FileKind::Binary) => report.binary += 1,
        Err(e) => report
            .warnings
            .push(format!("cannot read {}: {e}", path.display())),
    }
}

fn read_dir(dir: &Path, report: &mut WalkReport) -> Vec<Job> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            report
                .warnings
                .push(format!("cannot read directory {}: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut jobs = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report
                    .warnings
                    .push(format!("cannot read directory {}: {e}", dir.display()));
                continue;
            }
        };
        // `file_type` does not follow symlinks (and on Linux costs no system call).
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) => {
                report
                    .warnings
                    .push(format!("cannot read {}: {e}", entry.path().display()));
                continue;
            }
        };
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                jobs.push(Job::Dir(entry.path()));
            }
        } else if kind.is_file() {
            files.push(entry.path());
            if files.len() == FILE_BATCH {
                jobs.push(Job::Files(std::mem::take(&mut files)));
            }
        }
        // Symlinks are not followed (they may leave the tree or loop), and FIFOs, sockets and
        // devices are not files to read: opening a FIFO would block the scan.
    }
    if !files.is_empty() {
        jobs.push(Job::Files(files));
    }
    jobs
}

/// Marks a job finished even if scanning it panicked, so the other workers still see the walk
/// end instead of waiting for it forever.
struct Finished<'a>(&'a Queue);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

fn worker(queue: &Queue) -> WalkReport {
    let mut scanner = Scanner::new();
    let mut report = WalkReport::default();
    while let Some(job) = queue.next() {
        let _finished = Finished(queue);
        match job {
            Job::Dir(dir) => {
                let jobs = read_dir(&dir, &mut report);
                queue.push(jobs);
            }
            Job::Files(files) => {
                for f in &files {
                    scan_one(&mut scanner, f, &mut report);
                }
            }
        }
    }
    report
}

/// Walks `paths` (files or directories) and finds every key. A path that does not exist is an
/// error (a typo must not pass as "no keys"); anything unreadable below it is a warning.
pub fn walk(paths: &[PathBuf], threads: usize) -> anyhow::Result<WalkReport> {
    let mut report = WalkReport::default();
    let mut jobs = Vec::new();
    let mut scanner = Scanner::new();
    for p in paths {
        // Paths named on the command line are followed even if they are symlinks (the caller
        // chose them); nothing found below them is.
        let meta = std::fs::metadata(p).with_context(|| format!("cannot scan {}", p.display()))?;
        if meta.is_dir() {
            jobs.push(Job::Dir(p.clone()));
        } else if meta.is_file() {
            scan_one(&mut scanner, p, &mut report);
        } else {
            report.warnings.push(format!(
                "skipped {}: not a regular file or directory",
                p.display()
            ));
        }
    }
    let queue = Queue {
        state: Mutex::new(QueueState { jobs, busy: 0 }),
        wake: Condvar::new(),
    };
    let reports: Vec<Option<WalkReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(|| worker(&queue)))
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    for r in reports {
        // A worker that died took its findings with it: never report that as a clean tree.
        report.merge(r.context("a scanning thread failed; the scan is incomplete")?);
    }
    report
        .keys
        .sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
    report.warnings.sort();
    Ok(report)
}

/// What the server said about a kid.
#[derive(Debug, Clone)]
enum Known {
    Key(Box<proto::KeyInfo>, Value),
    Unknown,
}

async fn lookup_all(client: &Client, kids: Vec<Kid>) -> anyhow::Result<BTreeMap<Kid, Known>> {
    let mut answers = BTreeMap::new();
    let mut pending = kids.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < LOOKUP_CONCURRENCY {
            let Some(kid) = pending.next() else { break };
            let client = client.clone();
            tasks.spawn(async move { (kid, client.get_key(kid.as_str()).await) });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (kid, result) = joined.context("a server lookup failed")?;
        let known = match result {
            Ok(a) => Known::Key(Box::new(a.body), a.json),
            // The server sets `kid` on the problem for an unknown kid; a 404 without it is a
            // route it does not have (an older server), which must not read as "unknown key".
            Err(ClientError::Api {
                status: 404,
                problem,
            }) if problem.kid.is_some() => Known::Unknown,
            Err(ClientError::Api { status: 404, .. }) => anyhow::bail!(
                "the server does not answer GET /v1/keys/{{kid}}; upgrade it to use keyroll scan"
            ),
            Err(e) => return Err(e.into()),
        };
        answers.insert(kid, known);
    }
    Ok(answers)
}

/// `--min-remaining`: a key must keep working at least this long. Printed as given (`24h`), so
/// the output echoes the flag rather than a normalised `1day`.
#[derive(Debug)]
struct Window {
    min: Duration,
    text: String,
}

/// The check's outcome for one found key.
#[derive(Debug)]
struct Verdict {
    ok: bool,
    /// The state, or `unknown`.
    state: String,
    reason: String,
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `3h`, `2h 5m`, `45m`, `3d 4h`: precise enough to act on, short enough to read.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Time left until an RFC 3339 instant (zero when past); `None` when it cannot be read.
fn remaining(at: &str, now: OffsetDateTime) -> Option<Duration> {
    let t = OffsetDateTime::parse(at, &Rfc3339).ok()?;
    Some(Duration::try_from(t - now).unwrap_or(Duration::ZERO))
}

fn judge(found: &FoundKey, known: &Known, window: &Window, now: OffsetDateTime) -> Verdict {
    let fail = |state: &str, reason: String| Verdict {
        ok: false,
        state: state.to_owned(),
        reason,
    };
    let Known::Key(info, _) = known else {
        return fail("unknown", "unknown to the server".into());
    };
    let state = info.state.as_str();
    if found.fingerprint.to_string() != info.fingerprint {
        return fail(
            state,
            format!(
                "not the key issued as {} v{} (fingerprint {} ≠ {}): its secret would be rejected",
                info.consumer, info.version, found.fingerprint, info.fingerprint
            ),
        );
    }
    let replacement = info
        .replaced_by
        .map(|n| format!("; v{n} replaces it"))
        .unwrap_or_default();
    let window_text = &window.text;
    let mut ok_reason = state.to_owned();
    match state {
        "active" => {}
        "retiring" => {
            let Some(deadline) = info.deadline.as_deref() else {
                return fail(state, "retiring without a deadline".into());
            };
            match remaining(deadline, now) {
                Some(left) if left >= window.min => {
                    ok_reason = format!(
                        "retiring: works until {deadline} (in {}){replacement}",
                        short_duration(left)
                    );
                }
                Some(left) => {
                    return fail(
                        state,
                        format!(
                            "retires in {} (< {window_text}){replacement}",
                            short_duration(left)
                        ),
                    );
                }
                None => return fail(state, format!("retiring; unreadable deadline {deadline}")),
            }
        }
        "retired" => {
            let reason = match info.replaced_by {
                Some(n) => format!("retired: v{n} replaces it"),
                None => "retired".into(),
            };
            return fail(state, reason);
        }
        "revoked" => {
            let reason = match &info.revoke_reason {
                Some(r) => format!("revoked: {r}"),
                None => "revoked".into(),
            };
            return fail(state, reason);
        }
        "expired" => {
            let at = info.expires_at.as_deref().unwrap_or("?");
            return fail(state, format!("expired at {at}"));
        }
        other => return fail(other, format!("state {other} is not valid")),
    }
    if info.consumer_disabled {
        return fail(
            state,
            format!(
                "consumer {} is disabled: every key of it is rejected",
                info.consumer
            ),
        );
    }
    if let Some(at) = info.expires_at.as_deref() {
        match remaining(at, now) {
            Some(left) if left >= window.min => {}
            Some(left) => {
                return fail(
                    state,
                    format!("expires in {} (< {window_text})", short_duration(left)),
                );
            }
            None => return fail(state, format!("unreadable expiry {at}")),
        }
    }
    Verdict {
        ok: true,
        state: state.to_owned(),
        reason: ok_reason,
    }
}

/// Runs the whole check; [`Exit::Ok`] only when every key found passes, [`Exit::Rejected`] when
/// one fails. `client` is only called when there is a kid to ask about: a tree without keys
/// needs neither a server nor a token.
pub async fn run(
    client: impl FnOnce() -> anyhow::Result<Client>,
    paths: Vec<PathBuf>,
    min_remaining: &str,
    json_output: bool,
) -> anyhow::Result<Exit> {
    let window = Window {
        min: parse_duration(min_remaining)
            .context("--min-remaining")
            .or_usage()?,
        text: min_remaining.trim().to_owned(),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let report = tokio::task::spawn_blocking(move || walk(&paths, threads))
        .await
        .context("the scan stopped")??;
    for w in &report.warnings {
        note(format_args!("warning: {w}"));
    }
    let mut kids: Vec<Kid> = report.keys.iter().map(|k| k.kid).collect();
    kids.sort();
    kids.dedup();
    // No key, nothing to ask: the tree is clear whatever the server's state.
    let answers = if kids.is_empty() {
        BTreeMap::new()
    } else {
        lookup_all(&client()?, kids.clone()).await?
    };
    // The CLI is its own process and edge: it reads its clock once here to judge what it found.
    #[allow(clippy::disallowed_methods)]
    let now = OffsetDateTime::now_utc();
    let verdicts: Vec<Verdict> = report
        .keys
        .iter()
        .map(|k| match answers.get(&k.kid) {
            Some(known) => judge(k, known, &window, now),
            None => Verdict {
                ok: false,
                state: "unknown".into(),
                reason: "not checked".into(),
            },
        })
        .collect();
    let failed = verdicts.iter().filter(|v| !v.ok).count();
    if json_output {
        print_json(&report, &verdicts, &answers, &window, kids.len())?;
    } else {
        print_table(&report, &verdicts, &answers, &window, kids.len(), failed)?;
    }
    Ok(if failed == 0 {
        Exit::Ok
    } else {
        Exit::Rejected
    })
}

fn print_json(
    report: &WalkReport,
    verdicts: &[Verdict],
    answers: &BTreeMap<Kid, Known>,
    window: &Window,
    distinct: usize,
) -> Printed {
    let findings: Vec<Value> = report
        .keys
        .iter()
        .zip(verdicts)
        .map(|(k, v)| {
            let server = match answers.get(&k.kid) {
                Some(Known::Key(_, raw)) => raw.clone(),
                _ => Value::Null,
            };
            json!({
                "path": k.path.display().to_string(),
                "line": k.line,
                "column": k.column,
                "key": k.redacted(),
                "kid": k.kid.as_str(),
                "environment": k.environment,
                "fingerprint": k.fingerprint.to_string(),
                "ok": v.ok,
                "state": v.state,
                "reason": v.reason,
                "server": server,
            })
        })
        .collect();
    let failed = verdicts.iter().filter(|v| !v.ok).count();
    let out = json!({
        "ok": failed == 0,
        "min_remaining": window.text,
        "files_scanned": report.files,
        "binary_files_skipped": report.binary,
        "keys_found": report.keys.len(),
        "distinct_kids": distinct,
        "failed": failed,
        "findings": findings,
        "warnings": report.warnings,
    });
    say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default())
}

fn print_table(
    report: &WalkReport,
    verdicts: &[Verdict],
    answers: &BTreeMap<Kid, Known>,
    window: &Window,
    distinct: usize,
    failed: usize,
) -> Printed {
    let files = format!(
        "{} ({} binary skipped)",
        plural(report.files + report.binary, "file"),
        report.binary
    );
    if report.keys.is_empty() {
        return say!("No keyroll keys found in {files}.");
    }
    let header = ["LOCATION", "KEY", "CONSUMER", "FINGERPRINT", "RESULT"];
    let rows: Vec<[String; 5]> = report
        .keys
        .iter()
        .zip(verdicts)
        .map(|(k, v)| {
            let consumer = match answers.get(&k.kid) {
                Some(Known::Key(info, _)) => format!("{} v{}", info.consumer, info.version),
                _ => "-".into(),
            };
            [
                format!("{}:{}", k.path.display(), k.line),
                k.redacted(),
                consumer,
                k.fingerprint.to_string(),
                format!("{} {}", if v.ok { "ok" } else { "FAIL" }, v.reason),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print_row = |cells: [&str; 5]| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        say!("{}", line.trim_end())
    };
    print_row(header)?;
    for r in &rows {
        print_row([&r[0], &r[1], &r[2], &r[3], &r[4]])?;
    }
    say!()?;
    let summary = format!(
        "{} ({}) in {files}",
        plural(report.keys.len() as u64, "key"),
        plural(distinct as u64, "distinct kid")
    );
    let window = &window.text;
    if failed == 0 {
        say!("{summary}: all keep working for at least {window}.")
    } else {
        say!("{summary}: {failed} fail the check (--min-remaining {window}).")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> String {
        keyroll_core::assemble_key("prod", kid, "abcdefghijklmnopqrstuvwxyzABCDEF")
    }

    fn scan_bytes(bytes: &[u8]) -> Vec<FoundKey> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let mut out = Vec::new();
        Scanner::new().scan_file(&p, &mut out).unwrap();
        out
    }

    #[test]
    fn finds_keys_with_line_and_column() {
        let k = key("AAAAAAAAAAAA");
        let text = format!("a=1\n\nTOKEN={k}\nx {k}y\n");
        let found = scan_bytes(text.as_bytes());
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].line, found[0].column), (3, 7));
        assert_eq!((found[1].line, found[1].column), (4, 3));
        assert_eq!(found[0].redacted(), "kr_prod_AAAAAAAAAAAA_…");
        assert_eq!(found[0].fingerprint, fingerprint(k.as_bytes()));
    }

    #[test]
    fn a_key_across_chunk_boundaries_is_found_with_its_line() {
        let k = key("BBBBBBBBBBBB");
        for shift in [0usize, 1, 10, 30, 60, 61, 62, 100] {
            // Filler that ends `shift` bytes before the first chunk boundary, then the key.
            let mut text = "filler line of text\n".repeat(CHUNK / 20 + 1);
            text.truncate(CHUNK - shift);
            let lines = text.matches('\n').count() as u64;
            text.push_str(&k);
            text.push('\n');
            text.push_str(&"y".repeat(3 * CHUNK));
            text.push('\n');
            text.push_str(&k);
            let found = scan_bytes(text.as_bytes());
            assert_eq!(found.len(), 2, "shift {shift}");
            assert_eq!(found[0].line, lines + 1, "shift {shift}");
            assert_eq!(found[1].line, lines + 3, "shift {shift}");
            assert_eq!(found[1].column, 1);
        }
    }

    #[test]
    fn bad_checksums_and_look_alikes_are_not_keys() {
        let k = key("CCCCCCCCCCCC");
        let mut typo = k.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        let mut text = typo;
        text.extend_from_slice(b"\nkr_ kr_prod_ kr_prod_short kr_kr_");
        text.extend_from_slice(&k.as_bytes()[..k.len() - 1]);
        assert!(scan_bytes(&text).is_empty());
        // A prefix glued to a real key does not hide it.
        let glued = format!("kr_kr_{k}");
        assert_eq!(scan_bytes(glued.as_bytes()).len(), 1);
    }

    #[test]
    fn binary_files_are_skipped() {
        let k = key("DDDDDDDDDDDD");
        let mut bytes = vec![0u8, 1, 2];
        bytes.extend_from_slice(k.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, &bytes).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            Scanner::new().scan_file(&p, &mut out).unwrap(),
            FileKind::Binary
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(short_duration(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(short_duration(Duration::from_secs(3600 + 5 * 60)), "1h 5m");
        assert_eq!(short_duration(Duration::from_secs(59 * 60 + 59)), "59m");
        assert_eq!(
            short_duration(Duration::from_secs(86_400 * 2 + 3600)),
            "2d 1h"
        );
        assert_eq!(short_duration(Duration::from_secs(12)), "12s");
    }
}
