//! Tests at the crate's boundary: text in, errors or plans out.
