//! Request ids: `rq_` and 16 random hex digits. Not a secret (it is echoed and logged), so a
//! fast generator is enough; it only has to tell requests apart in logs.

/// A new request id.
pub fn new() -> String {
    format!("rq_{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape() {
        let id = super::new();
        assert_eq!(id.len(), 19);
        assert!(id.starts_with("rq_"));
        assert!(id[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, super::new());
    }
}
