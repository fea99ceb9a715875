//! The CI examples in `examples/ci/` parse as YAML, have the structure their comments promise
//! (an off-the-hour schedule, a dry-run input, one run at a time, least privilege, reports kept
//! on failure), and every `keyroll …` command in their scripts exists with those flags: each is
//! run through the real binary with `KEYROLL_CHECK_ARGS=1`, which parses and exits.

use std::path::PathBuf;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::BIN;

fn example(name: &str) -> (String, Yaml) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/ci")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(docs.len(), 1, "{name}: one YAML document");
    (text, docs.remove(0))
}

fn key(map: &Yaml, k: &str) -> Yaml {
    map[k].clone()
}

/// A shell word or operator.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    /// `;`, `;;`, `&&`, `||`, `|`, `&`, `(`, `)`.
    Op(String),
    /// `>`, `>>`, `<`, `2>`, `2>&1`, … (the target word follows, unless it is `N>&M`).
    Redirect(String),
}

/// Replaces `${{ … }}` (GitHub expressions), `${NAME}` and `$NAME` with a plausible value.
fn substitute(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix("{{") {
            let end = inner.find("}}").map_or(inner.len(), |e| e + 2);
            rest = &inner[end..];
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').map_or(inner.len(), |e| e + 1);
            rest = &inner[end..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '?'))
                .unwrap_or(after.len());
            rest = &after[end..];
        }
        out.push_str("value");
    }
    out.push_str(rest);
    out
}

/// Splits a script into tokens, as sh would for this purpose: quotes group, `#` at a word's
/// start comments out the rest of the line, a backslash-newline continues the line, and a
/// newline ends a command.
fn tokenize(script: &str) -> Vec<Token> {
    let script = script.replace("\\\n", " ");
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, tokens: &mut Vec<Token>| {
        if *in_word {
            tokens.push(Token::Word(substitute(word)));
            word.clear();
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(q),
                    }
                }
            }
            // `${{ … }}` and `${…}` are one piece of a word, spaces and all.
            '$' if chars.peek() == Some(&'{') => {
                in_word = true;
                word.push(c);
                let mut prev = ' ';
                let mut braces = 0;
                for q in chars.by_ref() {
                    word.push(q);
                    match q {
                        '{' => braces += 1,
                        '}' => braces -= 1,
                        _ => {}
                    }
                    if braces == 0 && (q == '}' || prev == '}') {
                        break;
                    }
                    prev = q;
                }
            }
            '#' if !in_word => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        break;
                    }
                }
                tokens.push(Token::Op(";".into()));
            }
            ' ' | '\t' => flush(&mut word, &mut in_word, &mut tokens),
            '\n' => {
                flush(&mut word, &mut in_word, &mut tokens);
                tokens.push(Token::Op(";".into()));
            }
            ';' | '&' | '|' | '(' | ')' => {
                flush(&mut word, &mut in_word, &mut tokens);
                let mut op = c.to_string();
                if (c == ';' || c == '&' || c == '|') && chars.peek() == Some(&c) {
                    op.push(c);
                    chars.next();
                }
                tokens.push(Token::Op(op));
            }
            '>' | '<' => {
                // `2>` and `2>&1`: a lone digit before the redirection belongs to it.
                let mut op = if in_word && (word == "1" || word == "2") {
                    in_word = false;
                    std::mem::take(&mut word)
                } else {
                    flush(&mut word, &mut in_word, &mut tokens);
                    String::new()
                };
                op.push(c);
                while let Some(&n) = chars.peek() {
                    if n == '>' || n == '&' || (op.ends_with('&') && n.is_ascii_digit()) {
                        op.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Redirect(op));
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut tokens);
    tokens
}

/// Every `keyroll …` command in a script, as its arguments (without `keyroll`), redirections
/// and what follows a pipe or `&&`/`||` left out.
fn keyroll_commands(script: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(script);
    let mut found = Vec::new();
    let mut at_start = true;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Word(w) if at_start && w == "keyroll" => {
                let mut args = Vec::new();
                i += 1;
                while i < tokens.len() {
                    match &tokens[i] {
                        Token::Word(a) => args.push(a.clone()),
                        // A redirection's target is not an argument (`2>&1` has none).
                        Token::Redirect(r) => {
                            if !r.contains('&') {
                                i += 1;
                            }
                        }
                        Token::Op(_) => break,
                    }
                    i += 1;
                }
                found.push(args);
                at_start = false;
                continue;
            }
            Token::Word(w) => {
                at_start = matches!(w.as_str(), "then" | "else" | "do" | "if" | "!" | "time");
            }
            Token::Op(_) => at_start = true,
            Token::Redirect(r) => {
                if !r.contains('&') {
                    i += 1;
                }
            }
        }
        i += 1;
    }
    found
}

/// Exit code of `keyroll ARGS` with `KEYROLL_CHECK_ARGS=1`, and its stderr. No server listens
/// at the address given: the check must not need one.
fn check_args(args: &[String]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("KEYROLL_CHECK_ARGS", "1")
        .env("KEYROLL_SERVER", "http://127.0.0.1:9")
        .env("KEYROLL_TOKEN", "not-a-token")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_commands_parse(file: &str, scripts: &[String]) -> Vec<Vec<String>> {
    let commands: Vec<Vec<String>> = scripts.iter().flat_map(|s| keyroll_commands(s)).collect();
    for args in &commands {
        let (code, stderr) = check_args(args);
        assert_eq!(code, 0, "{file}: `keyroll {}`: {stderr}", args.join(" "));
    }
    for needle in [
        &["policy", "check"][..],
        &["plan"],
        &["rotate", "--due"],
        &["rotate", "--due", "--yes", "--dry-run", "--output", "json"],
    ] {
        assert!(
            commands
                .iter()
                .any(|c| c.len() >= needle.len() && c[..needle.len()] == *needle),
            "{file}: no `keyroll {}` in {commands:?}",
            needle.join(" ")
        );
    }
    let exec = commands
        .iter()
        .find(|c| c.iter().any(|a| a == "--exec"))
        .unwrap_or_else(|| panic!("{file}: no rotate --exec"));
    assert!(
        exec.windows(2)
            .any(|w| w[0] == "--exec" && w[1] == "./scripts/push-secret.sh"),
        "{file}: {exec:?}"
    );
    commands
}

#[test]
fn the_command_extractor_handles_continuations_redirections_and_variables() {
    let script = "set -euo pipefail\n# keyroll in a comment\nstatus=0\n\
        keyroll plan -f \"$POLICY\" --output json > plan.json || status=$?\n\
        if [ x ]; then keyroll rotate --due \\\n  --exec './a b.sh' 2>&1 | tee r.json; fi\n\
        echo \"then keyroll apply\"; cargo install keyroll-cli\n\
        keyroll status ${{ inputs.env }}";
    assert_eq!(
        keyroll_commands(script),
        vec![
            vec!["plan", "-f", "value", "--output", "json"],
            vec!["rotate", "--due", "--exec", "./a b.sh"],
            vec!["status", "value"],
        ]
    );
}

#[test]
fn the_argument_check_fails_on_a_flag_that_does_not_exist() {
    let ok: Vec<String> = ["rotate", "--due", "--dry-run", "--output", "json"]
        .map(String::from)
        .to_vec();
    assert_eq!(check_args(&ok).0, 0, "{}", check_args(&ok).1);
    for bad in [
        &["rotate", "--due", "--dry-runn"][..],
        &["rotate", "--due", "--out-dir", "d", "--exec", "x"],
        &["rotate", "prod/app", "--due"],
        &["rotate", "prod/app", "--plan", "--yes"],
        &["rotat", "--due"],
    ] {
        let args: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
        let (code, stderr) = check_args(&args);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("error:"), "{bad:?}: {stderr}");
    }
}

#[test]
fn the_github_actions_workflow_is_scheduled_off_the_hour_and_its_commands_exist() {
    let (_, w) = example("github-actions.yml");
    // YAML 1.1 readers take a bare `on` for `true`; this reader (1.2) keeps the string.
    let on = key(&w, "on");
    let cron = on["schedule"][0]["cron"].as_str().expect("a schedule cron");
    let minute = cron.split_whitespace().next().unwrap();
    assert!(
        minute.parse::<u32>().is_ok_and(|m| m != 0),
        "cron {cron:?}: not on the hour"
    );
    let dry_run = &on["workflow_dispatch"]["inputs"]["dry_run"];
    assert_eq!(dry_run["type"].as_str(), Some("boolean"), "{dry_run:?}");
    assert_eq!(w["concurrency"]["group"].as_str(), Some("keyroll-rotation"));
    assert_eq!(
        w["concurrency"]["cancel-in-progress"].as_bool(),
        Some(false)
    );
    let permissions = w["permissions"].as_hash().expect("permissions");
    assert_eq!(permissions.len(), 1, "least privilege: {permissions:?}");
    assert_eq!(w["permissions"]["contents"].as_str(), Some("read"));

    let mut scripts = Vec::new();
    let mut uploads = 0;
    for (_, job) in w["jobs"].as_hash().expect("jobs") {
        for step in job["steps"].as_vec().expect("steps") {
            if let Some(run) = step["run"].as_str() {
                assert!(
                    run.trim_start().starts_with("set -euo pipefail"),
                    "a step without set -euo pipefail: {run}"
                );
                scripts.push(run.to_owned());
            }
            let uses = step["uses"].as_str().unwrap_or_default();
            if uses.starts_with("actions/upload-artifact@") {
                uploads += 1;
                assert_eq!(step["if"].as_str(), Some("always()"), "{step:?}");
                let paths = step["with"]["path"].as_str().unwrap_or_default();
                for report in ["plan.json", "rotate.json"] {
                    assert!(paths.contains(report), "{report} not uploaded: {paths}");
                }
            }
        }
        assert!(
            job["env"]["KEYROLL_SERVER"]
                .as_str()
                .is_some_and(|v| v.contains("secrets.KEYROLL_SERVER"))
        );
        assert!(
            job["env"]["KEYROLL_TOKEN"]
                .as_str()
                .is_some_and(|v| v.contains("secrets.KEYROLL_TOKEN"))
        );
    }
    assert_eq!(uploads, 1, "the reports are uploaded once");
    let commands = assert_commands_parse("github-actions.yml", &scripts);
    // The plan's "changes" exit (2) must not fail the step.
    let plan = scripts.iter().find(|s| s.contains("keyroll plan")).unwrap();
    assert!(
        plan.contains("|| status=$?") && plan.contains("2)"),
        "{plan}"
    );
    assert!(commands.len() >= 5, "{commands:?}");
}

#[test]
fn the_gitlab_job_runs_on_schedules_one_at_a_time_and_its_commands_exist() {
    let (_, g) = example("gitlab-ci.yml");
    assert_eq!(g["variables"]["DRY_RUN"]["value"].as_str(), Some("false"));
    let job = &g["keyroll-rotation"];
    let rules: Vec<&str> = job["rules"]
        .as_vec()
        .expect("rules")
        .iter()
        .filter_map(|r| r["if"].as_str())
        .collect();
    for source in ["schedule", "web"] {
        assert!(
            rules
                .iter()
                .any(|r| r.contains("$CI_PIPELINE_SOURCE") && r.contains(source)),
            "no rule for {source}: {rules:?}"
        );
    }
    assert_eq!(job["resource_group"].as_str(), Some("keyroll-rotation"));
    assert_eq!(job["artifacts"]["when"].as_str(), Some("always"));
    let paths: Vec<&str> = job["artifacts"]["paths"]
        .as_vec()
        .expect("artifact paths")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(paths, ["plan.json", "rotate.json"]);
    let mut scripts = Vec::new();
    for part in ["before_script", "script", "after_script"] {
        for line in job[part].as_vec().map(Vec::as_slice).unwrap_or_default() {
            scripts.push(line.as_str().expect("a script line is a string").to_owned());
        }
    }
    let commands = assert_commands_parse("gitlab-ci.yml", &scripts);
    assert!(commands.len() >= 5, "{commands:?}");
}
