//! The dashboard served at `/ui/`: its assets, compiled into the binary, and its login
//! sessions. The pages are hand-written ES modules that read the `/v1/*` JSON API with the
//! session cookie; there is no build step and nothing is fetched from the network at run time.
//! The HTTP side (routes, headers, login and logout) is `http/ui.rs`.

pub mod assets;
pub mod session;
