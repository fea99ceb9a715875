//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the files it finds at
//! compile time, and cargo would otherwise not notice a new one.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
