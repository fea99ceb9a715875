//! Reading a policy file: from text to the validated desired state, or every error in it, each
//! with the file, line and column and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use keyroll_core::{
    ConsumerName, ConsumerRef, Environment, OnStall, RetirePolicy, Scope, key_shaped_runs,
    parse_duration,
};

use crate::settings::{Delivery, Settings, show_duration};
use crate::tree::{self, Key, Node, Value};
use crate::webhook::{DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS, check_description, normalize_url};

/// One thing wrong with a policy file, where it is, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name, as the caller gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Everything wrong with a policy file, in the order of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// An environment as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredEnvironment {
    /// Its name.
    pub name: Environment,
    /// Rotations and disabling need confirmation.
    pub protected: bool,
    /// A rotation here needs a completed rotation of the same consumer there first.
    pub rotate_after: Option<Environment>,
}

/// One consumer in one environment, as the file declares it (a `[[consumer]]` with two
/// environments is two of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConsumer {
    /// `ENV/NAME`.
    pub consumer: ConsumerRef,
    /// Its settings after defaults, in canonical form.
    pub settings: Settings,
}

/// A webhook endpoint as the file declares it, identified by its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredWebhook {
    /// Where deliveries go, as the server stores it (normalized: `http://h:80/` is `http://h/`).
    pub url: String,
    /// The event types it receives, sorted; the server's default set when the file leaves
    /// `events` out.
    pub events: Vec<String>,
    /// A label for people.
    pub description: Option<String>,
}

/// A checked policy file: the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file name, for messages.
    pub file: String,
    /// SHA-256 of the file's text, hex: which text a saved plan was made from.
    pub sha256: String,
    /// Environments, in file order.
    pub environments: Vec<DesiredEnvironment>,
    /// Consumers, in file order, one per environment.
    pub consumers: Vec<DesiredConsumer>,
    /// Webhook endpoints, in file order.
    pub webhooks: Vec<DesiredWebhook>,
}

/// Defaults when `[defaults]` leaves a field out (SPEC §7): the core's, so a consumer the file
/// leaves at the default and one created by hand get the same grace and idle window.
pub use keyroll_core::DEFAULT_GRACE;
/// Default idle window: the core's [`keyroll_core::Policy::default`].
pub const DEFAULT_IDLE: Duration = keyroll_core::lifecycle::DEFAULT_IDLE;

const ROOT_FIELDS: &[&str] = &["defaults", "environment", "consumer", "webhook"];
const POLICY_FIELDS: &[&str] = &["rotate_every", "grace", "retire", "idle", "on_stall"];
const ENVIRONMENT_FIELDS: &[&str] = &["name", "protected", "rotate_after"];
const WEBHOOK_FIELDS: &[&str] = &["url", "events", "description"];
const CONSUMER_FIELDS: &[&str] = &[
    "name",
    "environments",
    "scopes",
    "owner",
    "delivery",
    "rotate_every",
    "grace",
    "retire",
    "idle",
    "on_stall",
];

/// Parses and checks a policy file. `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyErrors> {
    let mut cx = Cx {
        file,
        text,
        errors: Vec::new(),
    };
    let policy = cx.policy();
    let mut errors = cx.errors;
    if errors.is_empty()
        && let Some(policy) = policy
    {
        return Ok(policy);
    }
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    Err(PolicyErrors(errors))
}

/// SHA-256 of a policy's text, hex.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Retirement and schedule settings, from `[defaults]` or a consumer, each with where it was
/// written so that a rule broken by the combination points at the value that breaks it.
#[derive(Debug, Clone, Default)]
struct PolicyFields {
    rotate_every: Option<(Duration, Range<usize>)>,
    grace: Option<(Duration, Range<usize>)>,
    retire: Option<RetirePolicy>,
    idle: Option<Duration>,
    on_stall: Option<OnStall>,
}

impl PolicyFields {
    fn or(&self, defaults: &PolicyFields) -> PolicyFields {
        PolicyFields {
            rotate_every: self
                .rotate_every
                .clone()
                .or_else(|| defaults.rotate_every.clone()),
            grace: self.grace.clone().or_else(|| defaults.grace.clone()),
            retire: self.retire.or(defaults.retire),
            idle: self.idle.or(defaults.idle),
            on_stall: self.on_stall.or(defaults.on_stall),
        }
    }
}

/// A `[[environment]]` or `[[consumer]]` block: where it is, and its entries.
type Block<'n> = (&'n Range<usize>, &'n [(Key, Node)]);

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<PolicyError>,
}

/// The position of a byte offset: 1-based line and column (in characters).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

impl Cx<'_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn policy(&mut self) -> Option<Policy> {
        let root = match tree::parse(self.text) {
            Ok(root) => root,
            Err((message, span)) => {
                let span = span.unwrap_or(0..0);
                // toml's message can span several lines with a caret picture; the first line
                // says what is wrong.
                let first = message.lines().next().unwrap_or("invalid TOML").trim();
                self.error(&span, format!("invalid TOML: {first}"));
                return None;
            }
        };
        let mut defaults = PolicyFields::default();
        let mut environments = Vec::new();
        let mut consumers = Vec::new();
        let mut webhooks = Vec::new();
        for (key, node) in &root {
            match key.name.as_str() {
                "defaults" => {
                    if let Some(t) = self.table(node, "[defaults]") {
                        defaults = self.policy_fields(t, "[defaults]", POLICY_FIELDS);
                    }
                }
                "environment" => environments = self.tables(node, "environment"),
                "consumer" => consumers = self.tables(node, "consumer"),
                "webhook" => webhooks = self.tables(node, "webhook"),
                _ => self.unknown(key, "the top level", ROOT_FIELDS),
            }
        }
        self.check_grace(&defaults, None);
        let envs = self.environments(&environments);
        let consumers = self.consumers(&consumers, &defaults, &envs);
        let webhooks = self.webhooks(&webhooks);
        if !self.errors.is_empty() {
            return None;
        }
        Some(Policy {
            file: self.file.to_owned(),
            sha256: sha256_hex(self.text),
            environments: envs.into_iter().map(|(_, e)| e).collect(),
            consumers,
            webhooks,
        })
    }

    fn unknown(&mut self, key: &Key, place: &str, allowed: &[&str]) {
        self.error(
            &key.span,
            format!(
                "unknown field {:?} in {place}: expected one of {}",
                key.name,
                allowed.join(", ")
            ),
        );
    }

    fn table<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Table(t) => Some(t),
            other => {
                self.error(
                    &node.span,
                    format!("{what}: expected a table, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// `[[environment]]` / `[[consumer]]`: an array of tables, each with its span.
    fn tables<'n>(&mut self, node: &'n Node, name: &str) -> Vec<Block<'n>> {
        let Value::Array(items) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "{name}: expected an array of tables ([[{name}]]), found {}",
                    node.value.kind()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            if let Some(t) = self.table(item, &format!("[[{name}]]")) {
                out.push((&item.span, t));
            }
        }
        out
    }

    fn string<'n>(&mut self, field: &str, node: &'n Node) -> Option<&'n str> {
        match &node.value {
            Value::String(s) => Some(s),
            other => {
                self.error(
                    &node.span,
                    format!("{field}: expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, field: &str, node: &Node) -> Option<bool> {
        match &node.value {
            Value::Boolean(b) => Some(*b),
            other => {
                self.error(
                    &node.span,
                    format!(
                        "{field}: expected a boolean (true or false), found {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    /// An array of strings, each with its span.
    fn strings<'n>(&mut self, field: &str, node: &'n Node) -> Vec<(&'n str, &'n Range<usize>)> {
        let Value::Array(items) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "{field}: expected an array of strings, found {}",
                    node.value.kind()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::String(s) => out.push((s.as_str(), &item.span)),
                other => self.error(
                    &item.span,
                    format!(
                        "{field}: expected an array of strings, found {} in it",
                        other.kind()
                    ),
                ),
            }
        }
        out
    }

    fn duration(&mut self, field: &str, node: &Node) -> Option<Duration> {
        let s = self.string(field, node)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                let shown: String = s.chars().take(64).collect();
                let why = match e.reason.as_str() {
                    r @ ("finer than a millisecond" | "longer than 100 years") => r.to_owned(),
                    _ => "expected a number and a unit such as 30d, 48h, 15m".to_owned(),
                };
                self.error(
                    &node.span,
                    format!("bad duration {shown:?} for {field}: {why}"),
                );
                None
            }
        }
    }

    /// The policy fields of a table; other fields are left to `rest`, unknown ones reported.
    fn policy_fields(&mut self, t: &[(Key, Node)], place: &str, allowed: &[&str]) -> PolicyFields {
        let mut p = PolicyFields::default();
        for (key, node) in t {
            match key.name.as_str() {
                "rotate_every" => {
                    if let Some(d) = self.duration("rotate_every", node) {
                        if d.is_zero() {
                            self.error(
                                &node.span,
                                "rotate_every must be longer than 0 (leave it out for no schedule)",
                            );
                        } else {
                            p.rotate_every = Some((d, node.span.clone()));
                        }
                    }
                }
                "grace" => p.grace = self.duration("grace", node).map(|d| (d, node.span.clone())),
                "idle" => p.idle = self.duration("idle", node),
                "retire" => {
                    if let Some(s) = self.string("retire", node) {
                        p.retire = RetirePolicy::parse(s);
                        if p.retire.is_none() {
                            self.error(
                                &node.span,
                                format!("bad retire {s:?}: expected when-idle or at-deadline"),
                            );
                        }
                    }
                }
                "on_stall" => {
                    if let Some(s) = self.string("on_stall", node) {
                        p.on_stall = OnStall::parse(s);
                        if p.on_stall.is_none() {
                            self.error(
                                &node.span,
                                format!("bad on_stall {s:?}: expected extend or retire"),
                            );
                        }
                    }
                }
                name if allowed.contains(&name) => {}
                _ => self.unknown(key, place, allowed),
            }
        }
        p
    }

    /// A scheduled rotation needs a grace window, shorter than the schedule (else the old key
    /// would still be working when the next rotation comes). Checked where the values are
    /// written, so `[defaults]` is reported once, not once per consumer.
    fn check_grace(&mut self, p: &PolicyFields, inherited: Option<&PolicyFields>) {
        let effective = match inherited {
            Some(d) => p.or(d),
            None => p.clone(),
        };
        let (Some((every, every_span)), grace) = (&effective.rotate_every, &effective.grace) else {
            return;
        };
        let (grace, grace_span) = match grace {
            Some((g, span)) => (*g, Some(span)),
            None => (DEFAULT_GRACE, None),
        };
        // Reported at the grace if it is set here, else at the schedule if that is set here;
        // a pair both inherited from [defaults] was reported there.
        let here = |span: &Range<usize>, own: Option<&(Duration, Range<usize>)>| {
            own.is_some_and(|(_, s)| s == span)
        };
        let at = match grace_span {
            Some(s) if inherited.is_none() || here(s, p.grace.as_ref()) => s.clone(),
            _ if inherited.is_none() || here(every_span, p.rotate_every.as_ref()) => {
                every_span.clone()
            }
            _ => return,
        };
        if grace.is_zero() {
            self.error(
                &at,
                "grace must be longer than 0 when rotate_every is set: a scheduled rotation would cut off the old key at once",
            );
        } else if grace >= *every {
            self.error(
                &at,
                format!(
                    "grace {} must be shorter than rotate_every {}",
                    show_duration(grace),
                    show_duration(*every)
                ),
            );
        }
    }

    fn environments(&mut self, tables: &[Block<'_>]) -> Vec<(Range<usize>, DesiredEnvironment)> {
        let mut out: Vec<(Range<usize>, DesiredEnvironment)> = Vec::new();
        // rotate_after as written, checked once every name is known.
        let mut after: Vec<(Environment, String, Range<usize>)> = Vec::new();
        for (span, t) in tables {
            let mut name = None;
            let mut protected = false;
            for (key, node) in t.iter() {
                match key.name.as_str() {
                    "name" => {
                        if let Some(s) = self.string("name", node) {
                            match Environment::parse(s) {
                                Ok(e) => name = Some((e, node.span.clone())),
                                Err(e) => self.error(&node.span, e.to_string()),
                            }
                        }
                    }
                    "protected" => protected = self.boolean("protected", node).unwrap_or(false),
                    "rotate_after" => {}
                    _ => self.unknown(key, "[[environment]]", ENVIRONMENT_FIELDS),
                }
            }
            let Some((name, name_span)) = name else {
                if !t.iter().any(|(k, _)| k.name == "name") {
                    self.error(
                        span,
                        "[[environment]] without a name: expected name = \"…\"",
                    );
                }
                continue;
            };
            if let Some((first, _)) = out.iter().find(|(_, e)| e.name == name) {
                let line = self.line_of(first);
                self.error(
                    &name_span,
                    format!(
                        "duplicate environment {:?}: already declared at line {line}",
                        name.as_str()
                    ),
                );
                continue;
            }
            for (key, node) in t.iter() {
                if key.name == "rotate_after"
                    && let Some(s) = self.string("rotate_after", node)
                {
                    after.push((name.clone(), s.to_owned(), node.span.clone()));
                }
            }
            out.push((
                name_span,
                DesiredEnvironment {
                    name,
                    protected,
                    rotate_after: None,
                },
            ));
        }
        let declared: Vec<String> = out.iter().map(|(_, e)| e.name.to_string()).collect();
        for (env, target, span) in &after {
            if target == env.as_str() {
                self.error(
                    span,
                    format!("rotate_after {target:?}: an environment cannot rotate after itself"),
                );
                continue;
            }
            match out.iter_mut().find(|(_, e)| e.name.as_str() == target) {
                None => self.error(
                    span,
                    format!(
                        "rotate_after {target:?}: no environment {target:?} is declared (declared: {})",
                        declared.join(", ")
                    ),
                ),
                Some((_, t)) => {
                    let t = t.name.clone();
                    if let Some((_, e)) = out.iter_mut().find(|(_, e)| &e.name == env) {
                        e.rotate_after = Some(t);
                    }
                }
            }
        }
        self.check_cycles(&out, &after);
        out
    }

    /// Each environment names at most one other, so a cycle is found by walking from each.
    fn check_cycles(
        &mut self,
        envs: &[(Range<usize>, DesiredEnvironment)],
        after: &[(Environment, String, Range<usize>)],
    ) {
        let next: BTreeMap<&Environment, &Environment> = envs
            .iter()
            .filter_map(|(_, e)| e.rotate_after.as_ref().map(|a| (&e.name, a)))
            .collect();
        let mut reported: Vec<&Environment> = Vec::new();
        // File order, so a cycle is named from the first of its environments a reader meets.
        for (_, e) in envs {
            if reported.contains(&&e.name) {
                continue;
            }
            let mut path = vec![&e.name];
            let mut at = &e.name;
            while let Some(n) = next.get(at) {
                if *n == &e.name {
                    let mut words: Vec<&str> = path.iter().map(|p| p.as_str()).collect();
                    words.push(e.name.as_str());
                    if let Some((_, _, span)) = after.iter().find(|(from, _, _)| from == &e.name) {
                        self.error(
                            span,
                            format!("rotate_after makes a cycle: {}", words.join(" -> ")),
                        );
                    }
                    reported.extend(path.iter().copied());
                    break;
                }
                if path.contains(n) {
                    break; // a cycle further on, reported from one of its own members
                }
                path.push(n);
                at = n;
            }
        }
    }

    fn consumers(
        &mut self,
        tables: &[Block<'_>],
        defaults: &PolicyFields,
        envs: &[(Range<usize>, DesiredEnvironment)],
    ) -> Vec<DesiredConsumer> {
        let declared: Vec<&str> = envs.iter().map(|(_, e)| e.name.as_str()).collect();
        let mut out: Vec<DesiredConsumer> = Vec::new();
        let mut seen: BTreeMap<ConsumerRef, Range<usize>> = BTreeMap::new();
        for (span, t) in tables {
            let mut name = None;
            let mut environments: Vec<(Environment, Range<usize>)> = Vec::new();
            let mut has_environments = false;
            let mut scopes: Vec<String> = Vec::new();
            let mut owner = None;
            let mut delivery = Delivery::Manual;
            for (key, node) in t.iter() {
                match key.name.as_str() {
                    "name" => {
                        if let Some(s) = self.string("name", node) {
                            match ConsumerName::parse(s) {
                                Ok(n) => name = Some((n, node.span.clone())),
                                Err(e) => self.error(&node.span, e.to_string()),
                            }
                        }
                    }
                    "environments" => {
                        has_environments = true;
                        let items = self.strings("environments", node);
                        if items.is_empty() && matches!(node.value, Value::Array(_)) {
                            self.error(
                                &node.span,
                                "environments is empty: expected at least one declared environment",
                            );
                        }
                        for (s, at) in items {
                            if !declared.contains(&s) {
                                self.error(
                                    at,
                                    format!(
                                        "environment {s:?} is not declared: expected one of the [[environment]] names ({})",
                                        if declared.is_empty() { "none declared".to_owned() } else { declared.join(", ") }
                                    ),
                                );
                            } else if environments.iter().any(|(e, _)| e.as_str() == s) {
                                self.error(at, format!("environment {s:?} is listed twice"));
                            } else if let Ok(e) = Environment::parse(s) {
                                environments.push((e, at.clone()));
                            }
                        }
                    }
                    "scopes" => {
                        for (s, at) in self.strings("scopes", node) {
                            match Scope::parse(s) {
                                Ok(s) => scopes.push(s.as_str().to_owned()),
                                Err(e) => self.error(at, e.to_string()),
                            }
                        }
                    }
                    "owner" => {
                        if let Some(s) = self.string("owner", node) {
                            owner = self.owner(s, &node.span);
                        }
                    }
                    "delivery" => {
                        if let Some(s) = self.string("delivery", node) {
                            match Delivery::parse(s) {
                                Some(d) => delivery = d,
                                None => self.error(
                                    &node.span,
                                    format!("bad delivery {s:?}: expected agent, ci or manual"),
                                ),
                            }
                        }
                    }
                    _ => {}
                }
            }
            let own = self.policy_fields(t, "[[consumer]]", CONSUMER_FIELDS);
            self.check_grace(&own, Some(defaults));
            let Some((name, name_span)) = name else {
                if !t.iter().any(|(k, _)| k.name == "name") {
                    self.error(span, "[[consumer]] without a name: expected name = \"…\"");
                }
                continue;
            };
            if !has_environments {
                self.error(
                    &name_span,
                    format!(
                        "consumer {:?} has no environments: expected environments = [\"…\"]",
                        name.as_str()
                    ),
                );
            }
            let p = own.or(defaults);
            let settings = Settings {
                scopes: scopes.clone(),
                owner: owner.clone(),
                retire: p
                    .retire
                    .unwrap_or(RetirePolicy::WhenIdle)
                    .as_str()
                    .to_owned(),
                idle: show_duration(p.idle.unwrap_or(DEFAULT_IDLE)),
                on_stall: p.on_stall.unwrap_or(OnStall::Extend).as_str().to_owned(),
                rotate_every: p.rotate_every.as_ref().map(|(d, _)| show_duration(*d)),
                grace: Some(show_duration(
                    p.grace.as_ref().map_or(DEFAULT_GRACE, |(d, _)| *d),
                )),
                delivery: delivery.as_str().to_owned(),
            }
            .canonical();
            for (env, at) in environments {
                let r = ConsumerRef {
                    environment: env,
                    name: name.clone(),
                };
                // The same name in two blocks is fine for different environments (different
                // scopes per environment need it); the same consumer twice is not.
                if let Some(first) = seen.get(&r) {
                    let line = self.line_of(first);
                    self.error(
                        &at,
                        format!(
                            "duplicate consumer {:?} in environment {:?}: already declared at line {line}",
                            r.name.as_str(),
                            r.environment.as_str()
                        ),
                    );
                    continue;
                }
                seen.insert(r.clone(), name_span.clone());
                out.push(DesiredConsumer {
                    consumer: r,
                    settings: settings.clone(),
                });
            }
        }
        out
    }

    /// `[[webhook]]` blocks: a URL each (compared as the server stores it, so two spellings
    /// of one endpoint are a duplicate), known event types, a description.
    fn webhooks(&mut self, tables: &[Block<'_>]) -> Vec<DesiredWebhook> {
        let mut out: Vec<DesiredWebhook> = Vec::new();
        // Every URL read, with where, so a duplicate of a block with other errors is found.
        let mut seen: Vec<(String, Range<usize>)> = Vec::new();
        for (span, t) in tables {
            let mut url = None;
            let mut events = None;
            let mut description = None;
            let mut ok = true;
            for (key, node) in t.iter() {
                match key.name.as_str() {
                    "url" => match self.string("url", node).map(normalize_url) {
                        Some(Ok(u)) => url = Some((u, node.span.clone())),
                        Some(Err(why)) => self.error(&node.span, why),
                        None => {}
                    },
                    "events" => match self.events(node) {
                        Some(e) => events = Some(e),
                        None => ok = false,
                    },
                    "description" => match self.string("description", node) {
                        Some(s) => match check_description(s) {
                            Ok(()) => description = (!s.is_empty()).then(|| s.to_owned()),
                            Err(why) => {
                                self.error(&node.span, why);
                                ok = false;
                            }
                        },
                        None => ok = false,
                    },
                    _ => self.unknown(key, "[[webhook]]", WEBHOOK_FIELDS),
                }
            }
            let Some((url, url_span)) = url else {
                if !t.iter().any(|(k, _)| k.name == "url") {
                    self.error(
                        span,
                        "[[webhook]] without a url: expected url = \"http://…\"",
                    );
                }
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(u, _)| *u == url) {
                let line = self.line_of(first);
                self.error(
                    &url_span,
                    format!("duplicate webhook url {url:?}: already declared at line {line}"),
                );
                continue;
            }
            seen.push((url.clone(), url_span));
            if !ok {
                continue;
            }
            let events = events.unwrap_or_else(|| {
                DEFAULT_WEBHOOK_EVENTS
                    .iter()
                    .map(|e| (*e).to_owned())
                    .collect()
            });
            out.push(DesiredWebhook {
                url,
                events,
                description,
            });
        }
        out
    }

    /// `events = [...]`: known types, each once, `*` alone; sorted. None when any is wrong.
    fn events(&mut self, node: &Node) -> Option<Vec<String>> {
        let before = self.errors.len();
        let items = self.strings("events", node);
        if items.is_empty() && matches!(node.value, Value::Array(_)) {
            self.error(
                &node.span,
                format!(
                    "events is empty: expected event types, or [\"*\"] for all (leave it out for the default: {})",
                    DEFAULT_WEBHOOK_EVENTS.join(", ")
                ),
            );
        }
        let mut out: Vec<String> = Vec::new();
        for (s, at) in &items {
            if !WEBHOOK_EVENTS.contains(s) {
                self.error(
                    at,
                    format!(
                        "unknown event type {s:?}: expected one of {}",
                        WEBHOOK_EVENTS.join(", ")
                    ),
                );
            } else if out.iter().any(|e| e == s) {
                self.error(at, format!("event type {s:?} is listed twice"));
            } else {
                out.push((*s).to_owned());
            }
        }
        if out.len() > 1
            && let Some((_, at)) = items.iter().find(|(s, _)| *s == "*")
        {
            self.error(at, "events: \"*\" already means every type; give it alone");
        }
        if self.errors.len() > before {
            return None;
        }
        out.sort();
        Some(out)
    }

    /// The server's rule for owners, and never a key pasted into the file.
    fn owner(&mut self, s: &str, span: &Range<usize>) -> Option<String> {
        if key_shaped_runs(s).next().is_some() {
            // The value is not repeated: it looks like a key.
            self.error(
                span,
                "owner looks like it contains an API key: expected a team or person",
            );
            return None;
        }
        if s.chars().count() > 200 || s.chars().any(char::is_control) {
            self.error(
                span,
                "owner: expected at most 200 characters without control characters",
            );
            return None;
        }
        (!s.is_empty()).then(|| s.to_owned())
    }
}
