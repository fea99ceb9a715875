//! The rules of a `[[webhook]]` block that do not need the server: which event types exist,
//! the default set, and a URL in the form the server stores it (so that the file and the live
//! state are compared like for like).

use keyroll_core::key_shaped_runs;

pub use keyroll_webhooks::{DEFAULT_EVENTS as DEFAULT_WEBHOOK_EVENTS, EVENTS as WEBHOOK_EVENTS};

/// The longest URL the server accepts.
pub const MAX_URL: usize = 2048;

/// Checks a webhook URL as the server does at registration (http or https, a host, no credentials, no
/// key in it) and returns it as the server stores it (`http://Hooks:80/x` ->
/// `http://hooks/x`). Whether the address is allowed (loopback, private) depends on the
/// server's settings and is left to it.
pub fn normalize_url(s: &str) -> Result<String, String> {
    if s.len() > MAX_URL {
        return Err(format!("url: longer than {MAX_URL} characters"));
    }
    if key_shaped_runs(s).next().is_some() {
        return Err("url looks like it contains an API key: a key never goes into a URL".into());
    }
    let parsed = url::Url::parse(s).map_err(|e| format!("url: not a URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "url: scheme {other:?}; expected an http:// or https:// URL"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url: no host; expected http://HOST[:PORT]/PATH".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "url: credentials in the URL would be stored and logged; put a token in the path, or rely on the signature"
                .into(),
        );
    }
    Ok(parsed.to_string())
}

/// The server's rule for descriptions, and never a key pasted into the file.
pub fn check_description(s: &str) -> Result<(), String> {
    if key_shaped_runs(s).next().is_some() {
        // The value is not repeated: it looks like a key.
        return Err("description looks like it contains an API key: expected a label".into());
    }
    if s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err(
            "description: expected at most 200 characters without control characters".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_compared_as_the_server_stores_them() {
        assert_eq!(
            normalize_url("http://Hooks.Internal:80/keyroll").unwrap(),
            "http://hooks.internal/keyroll"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            normalize_url("https://Hooks.Internal:443/k").unwrap(),
            "https://hooks.internal/k"
        );
        assert!(normalize_url("ftp://x/").unwrap_err().contains("\"ftp\""));
        assert!(
            normalize_url("http://u:p@x/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(normalize_url("hooks").unwrap_err().contains("not a URL"));
    }

    #[test]
    fn the_default_set_is_sorted_and_known() {
        let mut sorted = DEFAULT_WEBHOOK_EVENTS;
        sorted.sort_unstable();
        assert_eq!(sorted, DEFAULT_WEBHOOK_EVENTS);
        for e in DEFAULT_WEBHOOK_EVENTS {
            assert!(WEBHOOK_EVENTS.contains(&e), "{e}");
        }
        let mut sorted = WEBHOOK_EVENTS;
        sorted.sort_unstable();
        assert_eq!(sorted, WEBHOOK_EVENTS);
    }
}
