//! The dashboard's files, compiled in with `include_bytes!`. Asset URLs carry a version (the
//! first 12 hex digits of SHA-256 over every asset) in their path, `/ui/assets/<version>/app.js`,
//! so a new binary's files are never mixed with a browser's cached old ones and assets can be
//! cached as immutable; relative `import`s between modules keep the version by themselves.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// One file.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/ui/assets/<version>/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// Every asset.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/chart.js"),
    },
    Asset {
        name: "login.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/login.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
];

/// The page shell every dashboard page is served from (`{{v}}` is the asset version).
pub const SHELL: &str = include_str!("assets/shell.html");
/// The login page (`{{v}}` the asset version, `{{error}}` an HTML-escaped message or nothing).
pub const LOGIN: &str = include_str!("assets/login.html");

/// The asset version.
pub fn version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| {
        let mut h = Sha256::new();
        for a in ASSETS {
            h.update(a.name.as_bytes());
            h.update(a.body);
        }
        h.update(SHELL.as_bytes());
        h.update(LOGIN.as_bytes());
        hex::encode(&h.finalize()[..6])
    });
    VERSION.as_str()
}

/// The asset named `name`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
