//! Tests at the crate's boundary: text in, errors or plans out.

use crate::*;

const GOOD: &str = r#"[defaults]
rotate_every = "30d"
grace = "48h"

[[environment]]
name = "staging"

[[environment]]
name = "prod"
protected = true
rotate_after = "staging"

[[consumer]]
name = "billing-app"
environments = ["staging", "prod"]
scopes = ["invoices:read"]
owner = "payments-team"
delivery = "agent"

[[consumer]]
name = "deploy-bot"
environments = ["prod"]
delivery = "ci"
rotate_every = "7d"
grace = "1h"

[[consumer]]
name = "partner-feed"
environments = ["staging"]
"#;

/// The errors of a file, as `LINE:COL: message` lines.
fn errors(text: &str) -> Vec<String> {
    match parse("policy.toml", text) {
        Ok(_) => vec![],
        Err(e) => {
            e.0.iter()
                .map(|e| {
                    let s = e.to_string();
                    assert!(s.starts_with("policy.toml:"), "{s}");
                    s["policy.toml:".len()..].to_owned()
                })
                .collect()
        }
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

#[test]
fn a_good_file_becomes_the_desired_state_with_defaults() {
    let p = parse("policy.toml", GOOD).unwrap();
    assert_eq!(p.sha256, sha256_hex(GOOD));
    let envs: Vec<_> = p
        .environments
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.protected,
                e.rotate_after.as_ref().map(|a| a.as_str()),
            )
        })
        .collect();
    assert_eq!(
        envs,
        [("staging", false, None), ("prod", true, Some("staging"))]
    );
    let names: Vec<String> = p.consumers.iter().map(|c| c.consumer.to_string()).collect();
    assert_eq!(
        names,
        [
            "staging/billing-app",
            "prod/billing-app",
            "prod/deploy-bot",
            "staging/partner-feed"
        ]
    );
    let billing = &p.consumers[0].settings;
    assert_eq!(billing.scopes, ["invoices:read"]);
    assert_eq!(billing.owner.as_deref(), Some("payments-team"));
    assert_eq!(billing.delivery, "agent");
    assert_eq!(billing.rotate_every.as_deref(), Some("30d"));
    assert_eq!(billing.grace.as_deref(), Some("2d"));
    assert_eq!(
        (
            billing.retire.as_str(),
            billing.idle.as_str(),
            billing.on_stall.as_str()
        ),
        ("when-idle", "1h", "extend")
    );
    let bot = &p.consumers[2].settings;
    assert_eq!(
        (bot.rotate_every.as_deref(), bot.grace.as_deref()),
        (Some("7d"), Some("1h"))
    );
    assert_eq!(p.consumers[3].settings.delivery, "manual");
}

#[test]
fn without_a_schedule_nothing_is_scheduled() {
    let p = parse(
        "p.toml",
        "[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\"]\n",
    )
    .unwrap();
    assert_eq!(p.consumers[0].settings.rotate_every, None);
    assert_eq!(p.consumers[0].settings.grace.as_deref(), Some("2d"));
}

#[test]
fn a_bad_duration_names_line_column_field_and_what_was_expected() {
    let text = "[defaults]\nidle = \"1h\"\nrotate_every = \"3 dayz\"\n";
    assert_eq!(
        one_error(text),
        "3:16: bad duration \"3 dayz\" for rotate_every: expected a number and a unit such as 30d, 48h, 15m"
    );
    let text = "[defaults]\nidle = \"200years\"\n";
    assert_eq!(
        one_error(text),
        "2:8: bad duration \"200years\" for idle: longer than 100 years"
    );
    assert_eq!(
        one_error("[defaults]\nrotate_every = \"0\"\n"),
        "2:16: rotate_every must be longer than 0 (leave it out for no schedule)"
    );
}

#[test]
fn unknown_fields_are_named_with_the_allowed_ones() {
    let text = "[defaults]\nrotate-every = \"30d\"\n\n[[environment]]\nname = \"prod\"\nprotect = true\n\n[[consumer]]\nname = \"a\"\nenvironments = [\"prod\"]\nscope = [\"x\"]\n\n[extra]\n";
    assert_eq!(
        errors(text),
        [
            "2:1: unknown field \"rotate-every\" in [defaults]: expected one of rotate_every, grace, retire, idle, on_stall",
            "6:1: unknown field \"protect\" in [[environment]]: expected one of name, protected, rotate_after",
            "11:1: unknown field \"scope\" in [[consumer]]: expected one of name, environments, scopes, owner, delivery, rotate_every, grace, retire, idle, on_stall",
            "13:2: unknown field \"extra\" in the top level: expected one of defaults, environment, consumer, webhook",
        ]
    );
}

#[test]
fn a_consumer_in_an_undeclared_environment() {
    let text = "[[environment]]\nname = \"prod\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"prod\", \"qa\"]\n";
    assert_eq!(
        one_error(text),
        "5:25: environment \"qa\" is not declared: expected one of the [[environment]] names (prod)"
    );
}

#[test]
fn rotate_after_must_name_another_declared_environment_without_a_cycle() {
    let undeclared = "[[environment]]\nname = \"prod\"\nrotate_after = \"qa\"\n";
    assert_eq!(
        one_error(undeclared),
        "3:16: rotate_after \"qa\": no environment \"qa\" is declared (declared: prod)"
    );
    let itself = "[[environment]]\nname = \"prod\"\nrotate_after = \"prod\"\n";
    assert_eq!(
        one_error(itself),
        "3:16: rotate_after \"prod\": an environment cannot rotate after itself"
    );
    let cycle = "[[environment]]\nname = \"dev\"\n\n[[environment]]\nname = \"prod\"\nrotate_after = \"staging\"\n\n[[environment]]\nname = \"staging\"\nrotate_after = \"prod\"\n";
    assert_eq!(
        one_error(cycle),
        "6:16: rotate_after makes a cycle: prod -> staging -> prod"
    );
    let long = "[[environment]]\nname = \"a\"\nrotate_after = \"b\"\n[[environment]]\nname = \"b\"\nrotate_after = \"c\"\n[[environment]]\nname = \"c\"\nrotate_after = \"a\"\n[[environment]]\nname = \"d\"\nrotate_after = \"a\"\n";
    assert_eq!(
        one_error(long),
        "3:16: rotate_after makes a cycle: a -> b -> c -> a"
    );
}

#[test]
fn duplicates_point_at_the_second_and_name_the_first_line() {
    let envs = "[[environment]]\nname = \"prod\"\n\n[[environment]]\nname = \"prod\"\n";
    assert_eq!(
        one_error(envs),
        "5:8: duplicate environment \"prod\": already declared at line 2"
    );
    let consumers = "[[environment]]\nname = \"prod\"\n[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"prod\"]\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\", \"prod\"]\n";
    assert_eq!(
        one_error(consumers),
        "10:24: duplicate consumer \"a\" in environment \"prod\": already declared at line 6"
    );
    // The same name in other environments is another consumer (per-environment scopes).
    let split = "[[environment]]\nname = \"prod\"\n[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"prod\"]\nscopes = [\"x\"]\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\"]\nscopes = [\"x\", \"debug\"]\n";
    assert_eq!(errors(split), Vec::<String>::new());
    let twice = "[[environment]]\nname = \"prod\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"prod\", \"prod\"]\n";
    assert_eq!(
        one_error(twice),
        "5:25: environment \"prod\" is listed twice"
    );
}

#[test]
fn names_and_scopes_follow_the_core_grammar() {
    let text = "[[environment]]\nname = \"Prod\"\n[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"Billing\"\nenvironments = [\"dev\"]\n[[consumer]]\nname = \"b\"\nenvironments = [\"dev\"]\nscopes = [\"ok\", \"not ok\"]\n";
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("2:8: invalid environment name \"Prod\""),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("6:8: invalid consumer name \"Billing\""),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("11:17: invalid scope \"not ok\""),
        "{}",
        e[2]
    );
}

#[test]
fn grace_against_the_schedule() {
    assert_eq!(
        one_error("[defaults]\nrotate_every = \"30d\"\ngrace = \"0\"\n"),
        "3:9: grace must be longer than 0 when rotate_every is set: a scheduled rotation would cut off the old key at once"
    );
    assert_eq!(
        one_error("[defaults]\nrotate_every = \"1d\"\n"),
        "2:16: grace 2d must be shorter than rotate_every 1d"
    );
    // Reported where it is written: the consumer's own grace, not [defaults] again.
    let text = "[defaults]\nrotate_every = \"30d\"\n[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\"]\ngrace = \"31d\"\n[[consumer]]\nname = \"b\"\nenvironments = [\"dev\"]\n";
    assert_eq!(
        one_error(text),
        "8:9: grace 31d must be shorter than rotate_every 30d"
    );
    // Without a schedule, grace 0 is fine.
    assert_eq!(errors("[defaults]\ngrace = \"0\"\n"), Vec::<String>::new());
}

#[test]
fn delivery_retire_on_stall_and_types() {
    let text = "[defaults]\nretire = \"never\"\non_stall = \"panic\"\n[[environment]]\nname = \"dev\"\nprotected = \"yes\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\"]\ndelivery = \"email\"\nowner = 7\n";
    assert_eq!(
        errors(text),
        [
            "2:10: bad retire \"never\": expected when-idle or at-deadline",
            "3:12: bad on_stall \"panic\": expected extend or retire",
            "6:13: protected: expected a boolean (true or false), found a string",
            "10:12: bad delivery \"email\": expected agent, ci or manual",
            "11:9: owner: expected a string, found an integer",
        ]
    );
}

#[test]
fn missing_names_and_environments() {
    let text = "[[environment]]\nprotected = true\n[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\n[[consumer]]\nenvironments = [\"dev\"]\n";
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("1:1: [[environment]] without a name"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("6:8: consumer \"a\" has no environments"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("7:1: [[consumer]] without a name"),
        "{}",
        e[2]
    );
}

#[test]
fn a_syntax_error_has_a_position_and_a_key_in_owner_is_not_repeated() {
    let e = one_error("[defaults]\nidle = \n");
    assert!(e.starts_with("2:8: invalid TOML: "), "{e}");
    let key = "kr_prod_0123456789abcdef_abcdefghijklmnopqrstuvwxyzABCDEFGH";
    let text = format!(
        "[[environment]]\nname = \"dev\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"dev\"]\nowner = \"{key}\"\n"
    );
    let e = one_error(&text);
    assert!(
        e.starts_with("6:9: owner looks like it contains an API key"),
        "{e}"
    );
    assert!(!e.contains(key));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = "[defaults]\nidle = \"x\"\ngrace = \"y\"\n[[environment]]\nname = \"prod\"\nrotate_after = \"nope\"\n[[consumer]]\nname = \"a\"\nenvironments = [\"qa\"]\n";
    assert_eq!(errors(text).len(), 4, "{:#?}", errors(text));
}

// ---- plans ----

fn policy() -> Policy {
    parse("policy.toml", GOOD).unwrap()
}

fn env(name: &str, protected: bool, after: Option<&str>) -> LiveEnvironment {
    LiveEnvironment {
        name: name.into(),
        protected,
        rotate_after: after.map(Into::into),
    }
}

/// The live state right after applying [`GOOD`].
fn applied() -> LiveState {
    let p = policy();
    LiveState {
        environments: vec![
            env("staging", false, None),
            env("prod", true, Some("staging")),
        ],
        consumers: p
            .consumers
            .iter()
            .map(|c| LiveConsumer {
                environment: c.consumer.environment.to_string(),
                name: c.consumer.name.to_string(),
                // As the server writes them back: other duration spellings.
                settings: Settings {
                    grace: c.settings.grace.as_deref().map(|g| {
                        format!("{}s", keyroll_core::parse_duration(g).unwrap().as_secs())
                    }),
                    ..c.settings.clone()
                },
                disabled: false,
                managed: Some(c.settings.clone()),
            })
            .collect(),
        schedule: vec![],
        webhooks: vec![],
    }
}

fn consumer_mut<'a>(live: &'a mut LiveState, r: &str) -> &'a mut LiveConsumer {
    live.consumers
        .iter_mut()
        .find(|c| c.reference() == r)
        .unwrap()
}

#[test]
fn an_empty_installation_creates_everything_in_order() {
    let live = LiveState::default();
    let p = plan(&policy(), &live, false);
    assert!(p.has_changes());
    let envs: Vec<&str> = p
        .environments_to_create
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(envs, ["staging", "prod"]);
    assert_eq!(p.consumers_to_create.len(), 4);
    // prod first in the file still comes after staging, which it rotates after.
    let text = GOOD.replace(
        "[[environment]]\nname = \"staging\"\n\n[[environment]]\nname = \"prod\"\nprotected = true\nrotate_after = \"staging\"\n",
        "[[environment]]\nname = \"prod\"\nprotected = true\nrotate_after = \"staging\"\n\n[[environment]]\nname = \"staging\"\n",
    );
    assert_ne!(text, GOOD);
    let p = plan(&parse("p.toml", &text).unwrap(), &live, false);
    let envs: Vec<&str> = p
        .environments_to_create
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(envs, ["staging", "prod"]);
    let shown = render(&p, "p.toml");
    assert!(
        shown.contains("  + prod (protected, rotates after staging)"),
        "{shown}"
    );
    assert!(
        shown.contains("Plan: 2 environment(s) to create"),
        "{shown}"
    );
}

#[test]
fn the_applied_state_has_no_changes() {
    let p = plan(&policy(), &applied(), false);
    assert!(!p.has_changes(), "{p:#?}");
    assert!(
        render(&p, "policy.toml").ends_with("No changes: the live state matches policy.toml.\n")
    );
}

#[test]
fn a_file_change_is_an_intended_change_not_drift() {
    let text = GOOD.replace(
        "scopes = [\"invoices:read\"]",
        "scopes = [\"invoices:read\", \"invoices:write\"]",
    );
    let p = plan(&parse("policy.toml", &text).unwrap(), &applied(), false);
    assert!(p.has_changes());
    assert!(p.drift.is_empty());
    assert_eq!(p.consumers_to_update.len(), 2);
    let c = &p.consumers_to_update[0];
    assert_eq!(
        (c.environment.as_str(), c.name.as_str()),
        ("staging", "billing-app")
    );
    assert_eq!(
        c.changes,
        [FieldChange {
            field: "scopes".into(),
            from: "[invoices:read]".into(),
            to: "[invoices:read, invoices:write]".into()
        }]
    );
    assert_eq!(c.fields(), ["scopes"]);
    let shown = render(&p, "policy.toml");
    assert!(
        shown.contains("  ~ staging/billing-app\n      scopes: [invoices:read] -> [invoices:read, invoices:write]\n"),
        "{shown}"
    );
}

#[test]
fn a_change_outside_the_file_is_drift_shown_apart_and_put_back() {
    let mut live = applied();
    consumer_mut(&mut live, "prod/billing-app").settings.owner = Some("someone".into());
    let p = plan(&policy(), &live, false);
    assert!(p.has_changes());
    assert_eq!(p.drift.len(), 1);
    assert_eq!(p.drift[0].consumer, "prod/billing-app");
    assert_eq!(
        p.drift[0].changes,
        [FieldChange {
            field: "owner".into(),
            from: "payments-team".into(),
            to: "someone".into()
        }]
    );
    let c = &p.consumers_to_update[0];
    assert!(c.changes.is_empty());
    assert_eq!(c.fields(), ["owner"]);
    let shown = render(&p, "policy.toml");
    assert!(!shown.contains("Consumers to change"), "{shown}");
    assert!(
        shown.contains("Drift (changed outside policy.toml since the last apply; apply puts the file's values back):\n  ! prod/billing-app\n      owner: payments-team (applied) -> someone (live); apply sets payments-team\n"),
        "{shown}"
    );
}

#[test]
fn a_hand_made_consumer_named_by_the_file_is_adopted() {
    let mut live = applied();
    consumer_mut(&mut live, "staging/partner-feed").managed = None;
    let p = plan(&policy(), &live, false);
    assert!(p.has_changes());
    let c = &p.consumers_to_update[0];
    assert!(c.adopt && c.fields().is_empty());
    assert!(p.drift.is_empty());
    // A disabled one is enabled.
    let mut live = applied();
    consumer_mut(&mut live, "staging/partner-feed").disabled = true;
    let p = plan(&policy(), &live, false);
    assert!(p.consumers_to_update[0].enable);
}

#[test]
fn consumers_the_file_no_longer_names_are_disabled_only_with_prune() {
    let mut live = applied();
    let mut old = live.consumers[2].clone(); // prod/deploy-bot: managed
    old.name = "old-bot".into();
    let mut hand = old.clone();
    hand.name = "hand-made".into();
    hand.managed = None;
    live.consumers.push(old);
    live.consumers.push(hand);
    live.environments.push(env("sandbox", false, None));
    let p = plan(&policy(), &live, false);
    assert!(!p.has_changes());
    let actions: Vec<(&str, Unnamed)> = p
        .not_in_file
        .iter()
        .map(|n| (n.name.as_str(), n.action))
        .collect();
    assert_eq!(
        actions,
        [("hand-made", Unnamed::Ignore), ("old-bot", Unnamed::Keep)]
    );
    assert_eq!(p.environments_not_in_file, ["sandbox"]);
    let p = plan(&policy(), &live, true);
    assert!(p.has_changes());
    let actions: Vec<(&str, Unnamed, bool)> = p
        .not_in_file
        .iter()
        .map(|n| (n.name.as_str(), n.action, n.protected))
        .collect();
    assert_eq!(
        actions,
        [
            ("hand-made", Unnamed::Ignore, true),
            ("old-bot", Unnamed::Disable, true)
        ]
    );
    let shown = render(&p, "policy.toml");
    assert!(
        shown.contains(
            "  - prod/old-bot: managed by the policy: disabled by apply (--prune; protected"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("    prod/hand-made: not managed by a policy: left as it is"),
        "{shown}"
    );
}

#[test]
fn environment_changes() {
    let mut live = applied();
    live.environments[1] = env("prod", false, None);
    let p = plan(&policy(), &live, false);
    assert!(p.has_changes());
    assert_eq!(p.environments_to_update.len(), 1);
    let fields: Vec<(&str, &str, &str)> = p.environments_to_update[0]
        .changes
        .iter()
        .map(|c| (c.field.as_str(), c.from.as_str(), c.to.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("protected", "no", "yes"),
            ("rotate_after", "none", "staging")
        ]
    );
}

#[test]
fn the_schedule_is_shown_but_never_a_change() {
    let mut live = applied();
    let entry = |c: &str, state: &str, at: Option<&str>, blockers: Vec<Blocker>| ScheduleEntry {
        consumer: c.into(),
        state: state.into(),
        delivery: Some("agent".into()),
        next_due: at.map(Into::into),
        blockers,
    };
    live.schedule = vec![
        entry(
            "prod/deploy-bot",
            "scheduled",
            Some("2026-12-20T00:00:00Z"),
            vec![],
        ),
        entry(
            "staging/billing-app",
            "due",
            Some("2026-12-01T00:00:00Z"),
            vec![],
        ),
        entry(
            "staging/partner-feed",
            "scheduled",
            Some("2026-12-10T00:00:00.61Z"),
            vec![],
        ),
        entry(
            "prod/partner-feed",
            "scheduled",
            Some("2026-12-10T00:00:00.614Z"),
            vec![],
        ),
        entry(
            "prod/billing-app",
            "blocked",
            Some("2026-12-01T00:00:00Z"),
            vec![Blocker {
                code: "ordering".into(),
                message: "staging/billing-app has not completed a rotation".into(),
            }],
        ),
        entry("staging/x", "unscheduled", None, vec![]),
    ];
    let p = plan(&policy(), &live, false);
    assert!(!p.has_changes());
    assert_eq!(p.rotations_due.len(), 1);
    let next: Vec<&str> = p.next_due.iter().map(|d| d.consumer.as_str()).collect();
    assert_eq!(
        next,
        [
            "staging/partner-feed",
            "prod/partner-feed",
            "prod/deploy-bot"
        ]
    );
    let shown = render(&p, "policy.toml");
    assert!(shown.contains("Rotations due now"), "{shown}");
    assert!(
        shown.contains(
            "  prod/billing-app: staging/billing-app has not completed a rotation (ordering)"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("Next rotations:\n  2026-12-10T00:00:00.61Z  staging/partner-feed\n  2026-12-10T00:00:00.614Z  prod/partner-feed\n"),
        "{shown}"
    );
}

// ---- saved plans ----

#[test]
fn a_saved_plan_round_trips_and_goes_stale() {
    let live = applied();
    let text = GOOD.replace("owner = \"payments-team\"", "owner = \"billing-team\"");
    let desired = parse("policy.toml", &text).unwrap();
    let p = plan(&desired, &live, false);
    let saved = SavedPlan::new("policy.toml", &desired.sha256, false, p.clone(), &live);
    let back = SavedPlan::from_json(&saved.to_json()).unwrap();
    assert_eq!(back, saved);
    assert_eq!(back.format, "keyroll-plan/1");
    assert!(check_pin(&back, &live).is_empty());
    // A schedule change (a sweep, a rotation's progress) does not stale it.
    let mut moved = live.clone();
    moved.schedule.push(ScheduleEntry {
        consumer: "prod/billing-app".into(),
        state: "due".into(),
        delivery: None,
        next_due: None,
        blockers: vec![],
    });
    assert!(check_pin(&back, &moved).is_empty());
    // A duration written another way is no change.
    let mut respelled = live.clone();
    consumer_mut(&mut respelled, "prod/billing-app")
        .settings
        .grace = Some("48h".into());
    assert!(check_pin(&back, &respelled).is_empty());

    let mut changed = live.clone();
    consumer_mut(&mut changed, "prod/billing-app")
        .settings
        .scopes
        .push("b".into());
    let mut new = changed.consumers[0].clone();
    new.name = "x".into();
    changed.consumers.push(new);
    changed.environments[1].protected = false;
    consumer_mut(&mut changed, "staging/partner-feed").disabled = true;
    assert_eq!(
        check_pin(&back, &changed),
        [
            "environment prod: protected changed since the plan (true -> false)",
            "prod/billing-app: scopes changed since the plan ([invoices:read] -> [b, invoices:read])",
            "staging/partner-feed: disabled since the plan",
            "staging/x: created since the plan",
        ]
    );
}

#[test]
fn a_foreign_file_is_not_a_plan() {
    let e = SavedPlan::from_json("{\"format\": \"terraform\"}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported plan format \"terraform\": expected \"keyroll-plan/1\" (made by another keyroll version?)"
    );
    assert!(SavedPlan::from_json("not json").is_err());
}

// ---- webhooks ----

const HOOKS: &str = r#"[[environment]]
name = "prod"

[[webhook]]
url = "http://Hooks.Internal:80/keyroll"
events = ["version.retired", "rotation.started"]
description = "pager"

[[webhook]]
url = "http://10.0.0.7:9000/all"
events = ["*"]

[[webhook]]
url = "http://audit.internal/in"
"#;

fn live_hook(id: &str, url: &str, events: &[&str], description: Option<&str>) -> LiveWebhook {
    LiveWebhook {
        id: id.into(),
        url: url.into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        description: description.map(Into::into),
        state: "enabled".into(),
    }
}

/// The live state right after applying [`HOOKS`], as the server lists it.
fn hooks_applied() -> LiveState {
    LiveState {
        environments: vec![env("prod", false, None)],
        webhooks: vec![
            live_hook(
                "wh_a",
                "http://hooks.internal/keyroll",
                &["rotation.started", "version.retired"],
                Some("pager"),
            ),
            live_hook("wh_b", "http://10.0.0.7:9000/all", &["*"], None),
            // The server's default set, in its own order.
            live_hook(
                "wh_c",
                "http://audit.internal/in",
                &[
                    "rotation.started",
                    "rotation.due",
                    "rotation.stalled",
                    "rotation.requested",
                    "version.retired",
                    "version.revoked",
                    "version.unused",
                    "version.delivered",
                    "key.expiring",
                ],
                None,
            ),
        ],
        ..LiveState::default()
    }
}

#[test]
fn webhooks_are_read_with_urls_as_the_server_stores_them_and_default_events() {
    let p = parse("policy.toml", HOOKS).unwrap();
    let hooks: Vec<(&str, Vec<&str>, Option<&str>)> = p
        .webhooks
        .iter()
        .map(|w| {
            (
                w.url.as_str(),
                w.events.iter().map(String::as_str).collect(),
                w.description.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            (
                "http://hooks.internal/keyroll",
                vec!["rotation.started", "version.retired"],
                Some("pager")
            ),
            ("http://10.0.0.7:9000/all", vec!["*"], None),
            (
                "http://audit.internal/in",
                DEFAULT_WEBHOOK_EVENTS.to_vec(),
                None
            ),
        ]
    );
}

#[test]
fn webhook_errors_have_positions_and_name_what_is_valid() {
    let text = r#"[[webhook]]
url = "http://a.internal/x"
events = ["rotation.started", "rotation.strated"]
secret = "whsec_x"

[[webhook]]
url = "ftp://b.internal/"

[[webhook]]
url = "http://A.internal:80/x"

[[webhook]]
events = []

[[webhook]]
url = "http://c.internal/"
events = ["*", "version.retired", "version.retired"]
description = 3

[[webhook]]
url = "not a url"
"#;
    let e = errors(text);
    let valid = WEBHOOK_EVENTS.join(", ");
    assert_eq!(
        e,
        [
            format!("3:31: unknown event type \"rotation.strated\": expected one of {valid}"),
            "4:1: unknown field \"secret\" in [[webhook]]: expected one of url, events, description".to_owned(),
            "7:7: url: scheme \"ftp\"; expected an http:// or https:// URL".to_owned(),
            "10:7: duplicate webhook url \"http://a.internal/x\": already declared at line 2".to_owned(),
            "12:1: [[webhook]] without a url: expected url = \"http://…\"".to_owned(),
            format!("13:10: events is empty: expected event types, or [\"*\"] for all (leave it out for the default: {})", DEFAULT_WEBHOOK_EVENTS.join(", ")),
            "17:11: events: \"*\" already means every type; give it alone".to_owned(),
            "17:35: event type \"version.retired\" is listed twice".to_owned(),
            "18:15: description: expected a string, found an integer".to_owned(),
            "21:7: url: not a URL (relative URL without a base)".to_owned(),
        ]
    );
    let e = one_error("[webhook]\nurl = \"http://x/\"\n");
    assert!(
        e.starts_with("1:1: webhook: expected an array of tables ([[webhook]])"),
        "{e}"
    );
    let e = one_error(
        "[[webhook]]\nurl = \"http://x/\"\ndescription = \"kr_prod_AAAAAAAAAAAAAAAAAAAAAA_AAAAAAAA\"\n",
    );
    assert!(
        e.starts_with("3:15: description looks like it contains an API key"),
        "{e}"
    );
}

#[test]
fn webhooks_plan_create_then_nothing_and_unmanaged_ones_are_only_listed() {
    let desired = parse("policy.toml", HOOKS).unwrap();
    let live = LiveState {
        environments: vec![env("prod", false, None)],
        webhooks: vec![live_hook("wh_z", "http://other.internal/", &["*"], None)],
        ..LiveState::default()
    };
    for prune in [false, true] {
        let p = plan(&desired, &live, prune);
        assert!(p.has_changes());
        let urls: Vec<&str> = p
            .webhooks_to_create
            .iter()
            .map(|w| w.url.as_str())
            .collect();
        assert_eq!(
            urls,
            [
                "http://hooks.internal/keyroll",
                "http://10.0.0.7:9000/all",
                "http://audit.internal/in"
            ]
        );
        assert_eq!(p.webhooks_to_create[2].events, DEFAULT_WEBHOOK_EVENTS);
        assert_eq!(
            p.webhooks_not_in_file,
            [WebhookNotInFile {
                id: "wh_z".into(),
                url: "http://other.internal/".into(),
                events: vec!["*".into()],
            }]
        );
        let shown = render(&p, "policy.toml");
        assert!(
            shown.contains("Webhook endpoints to register (each gets a new whsec_ signing secret, shown once):\n  + http://hooks.internal/keyroll\n      events rotation.started, version.retired; description \"pager\"\n"),
            "{shown}"
        );
        assert!(
            shown.contains("    webhook endpoint wh_z http://other.internal/ (events *): not managed by the policy: left as it is\n"),
            "{shown}"
        );
        assert!(
            shown.contains("      3 webhook endpoint(s) to register.\n"),
            "{shown}"
        );
    }

    let mut live = hooks_applied();
    let p = plan(&desired, &live, false);
    assert!(!p.has_changes(), "{p:#?}");
    assert!(p.webhooks_differ.is_empty() && p.webhooks_not_in_file.is_empty());
    assert!(
        render(&p, "policy.toml").ends_with("No changes: the live state matches policy.toml.\n")
    );

    // The same URL registered twice by hand: the matching one is the file's.
    let mut twin = live.webhooks[1].clone();
    twin.id = "wh_0".into();
    twin.events = vec!["version.retired".into()];
    live.webhooks.insert(0, twin);
    let p = plan(&desired, &live, true);
    assert!(!p.has_changes());
    let extra: Vec<&str> = p
        .webhooks_not_in_file
        .iter()
        .map(|w| w.id.as_str())
        .collect();
    assert_eq!(extra, ["wh_0"]);
}

#[test]
fn a_webhook_that_differs_is_shown_and_left_as_it_is() {
    let desired = parse("policy.toml", HOOKS).unwrap();
    let mut live = hooks_applied();
    live.webhooks[0].events = vec!["version.retired".into()];
    live.webhooks[0].description = None;
    let p = plan(&desired, &live, false);
    assert!(
        !p.has_changes(),
        "the API cannot change it, so apply does nothing"
    );
    assert!(p.webhooks_to_create.is_empty());
    assert_eq!(
        p.webhooks_differ,
        [WebhookDiffers {
            id: "wh_a".into(),
            url: "http://hooks.internal/keyroll".into(),
            changes: vec![
                FieldChange {
                    field: "events".into(),
                    from: "version.retired".into(),
                    to: "rotation.started, version.retired".into(),
                },
                FieldChange {
                    field: "description".into(),
                    from: "none".into(),
                    to: "\"pager\"".into(),
                },
            ],
        }]
    );
    let shown = render(&p, "policy.toml");
    assert!(shown.contains("  ! wh_a http://hooks.internal/keyroll\n      events: version.retired (live) -> rotation.started, version.retired (file)\n      description: none (live) -> \"pager\" (file)\n      to take the file's values: `keyroll webhook remove wh_a`, then apply again (a NEW secret for the receiver; pending deliveries are dropped)\n"), "{shown}");
    assert!(shown.ends_with("No changes apply can make, but 1 webhook endpoint(s) differ from policy.toml (above).\n"), "{shown}");
}

#[test]
fn a_saved_plan_holds_webhook_steps_and_goes_stale_when_endpoints_move() {
    let desired = parse("policy.toml", HOOKS).unwrap();
    let mut live = hooks_applied();
    let removed = live.webhooks.remove(2);
    let p = plan(&desired, &live, false);
    assert_eq!(p.webhooks_to_create.len(), 1);
    let saved = SavedPlan::new("policy.toml", &desired.sha256, false, p, &live);
    let back = SavedPlan::from_json(&saved.to_json()).unwrap();
    assert_eq!(back, saved);
    assert_eq!(
        back.plan.webhooks_to_create[0].url,
        "http://audit.internal/in"
    );
    assert!(check_pin(&back, &live).is_empty());
    // The sender disabling an endpoint changes nothing the plan does.
    let mut disabled = live.clone();
    disabled.webhooks[0].state = "disabled".into();
    assert!(check_pin(&back, &disabled).is_empty());

    let mut moved = live.clone();
    moved.webhooks.push(removed);
    moved.webhooks[0].events = vec!["*".into()];
    moved.webhooks.remove(1);
    assert_eq!(
        check_pin(&back, &moved),
        [
            "webhook endpoint wh_a (http://hooks.internal/keyroll): changed since the plan",
            "webhook endpoint wh_c (http://audit.internal/in): registered since the plan",
            "webhook endpoint wh_b (http://10.0.0.7:9000/all): removed since the plan",
        ]
    );
    // A plan saved before webhooks were planned still reads (its webhook fields default).
    let mut old: serde_json::Value = serde_json::from_str(&saved.to_json()).unwrap();
    for k in [
        "webhooks_to_create",
        "webhooks_differ",
        "webhooks_not_in_file",
    ] {
        old["plan"].as_object_mut().unwrap().remove(k);
    }
    old["pin"].as_object_mut().unwrap().remove("webhooks");
    let old = SavedPlan::from_json(&old.to_string()).unwrap();
    assert!(old.plan.webhooks_to_create.is_empty());
}
