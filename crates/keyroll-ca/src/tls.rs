//! The one TLS crypto provider of keyroll (aws-lc-rs), for every rustls config it builds.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider every keyroll TLS config is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`provider`] as the process default (what reqwest's TLS uses). Idempotent: a second
/// call, or a provider installed by someone else, is left as it is.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
