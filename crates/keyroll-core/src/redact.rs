//! Redaction of secrets embedded in URLs (`postgres://user:password@host/db`), for every message
//! that shows a database or server URL.

/// Query parameters whose value is a credential (libpq accepts `?password=`).
const SECRET_PARAMS: [&str; 5] = ["password", "pass", "pwd", "secret", "token"];

/// `url` with the password of its userinfo and any credential query parameter replaced by `***`
/// (`postgres://user:***@host/db`). Text that is not a URL comes back unchanged unless it looks
/// like `user:password@host`, which is redacted the same way. Errs towards redacting too much.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The userinfo ends at the last `@` before the query: a password pasted with a raw `/` or
    // `@` in it must not end it early and leak its tail.
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_at);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    out.push_str(&redact_query(query));
    out
}

fn redact_query(query: &str) -> String {
    let Some(params) = query.strip_prefix('?') else {
        return query.to_owned();
    };
    let (params, fragment) = match params.find('#') {
        Some(i) => params.split_at(i),
        None => (params, ""),
    };
    let redacted: Vec<String> = params
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                format!("{k}=***")
            }
            _ => p.to_owned(),
        })
        .collect();
    format!("?{}{fragment}", redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        let cases = [
            (
                "postgres://bob:hunter2@db.internal:5432/keyroll",
                "postgres://bob:***@db.internal:5432/keyroll",
            ),
            ("postgres://bob@db/keyroll", "postgres://bob@db/keyroll"),
            ("postgres://db/keyroll", "postgres://db/keyroll"),
            ("mysql://u:p@ss/w@rd@h/db", "mysql://u:***@h/db"),
            (
                "postgres://db/k?sslmode=require&password=hunter2",
                "postgres://db/k?sslmode=require&password=***",
            ),
            ("bob:hunter2@db/x", "bob:***@db/x"),
            (
                "sqlite:///var/lib/keyroll.db",
                "sqlite:///var/lib/keyroll.db",
            ),
            (
                "sqlite://keyroll.db?mode=rwc",
                "sqlite://keyroll.db?mode=rwc",
            ),
            ("http://127.0.0.1:7878", "http://127.0.0.1:7878"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn never_returns_the_password() {
        for url in [
            "postgres://u:hunter2@h/d",
            "postgresql://u:hunter2@h",
            "postgres://u:hunter2@",
            "x://:hunter2@h",
            "u:hunter2@h",
            "postgres://u:hunter2@h/d?password=hunter2#f",
            "postgres://h/d?PASSWORD=hunter2",
        ] {
            assert!(!redact_url(url).contains("hunter2"), "{url}");
        }
    }
}
