//! In-process verification against 1,000,000 loaded key versions (SPEC §12), beside the floor it
//! is budgeted against: one SHA-256 of a secret plus one hash-map lookup, in the same run.
//!
//! Also prints the index's memory per key version (heap held, counted by the allocator, and RSS
//! growth) and its load time.
//! Run: `cargo bench -p keyroll-verify --bench verify` (results in docs/benchmarks.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]
// The one unsafe block of the workspace: a counting global allocator, so the memory figure is
// the heap the index really holds rather than an RSS estimate.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll_core::{
    Command, Consumer, ConsumerName, Entropy, EntropyUnavailable, Environment, Kid, NewVersion,
    SecretHash, Timestamp, Usage, issue_key, parse_key,
};
use keyroll_verify::index::Index;
use keyroll_verify::verify::{Presented, Recording, verify};

const VERSIONS: usize = 1_000_000;
const SAMPLE: usize = 4096;

/// A fast deterministic generator: the benchmark measures lookups, not the OS RNG.
struct Xorshift(u64);
impl Entropy for Xorshift {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        for chunk in dest.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = status
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// 500,000 consumers with two versions each (one active, one retiring): the shape of an
/// installation in the middle of a rotation.
fn build() -> (Vec<(i64, Consumer)>, Vec<String>) {
    let env = Environment::parse("prod").unwrap();
    let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
    let now = Timestamp::from_unix_millis(1_800_000_000_000);
    let mut consumers = Vec::with_capacity(VERSIONS / 2);
    let mut sample = Vec::with_capacity(SAMPLE);
    for i in 0..VERSIONS / 2 {
        let k1 = issue_key(&env, &mut rng).unwrap();
        let k2 = issue_key(&env, &mut rng).unwrap();
        let nv = |k: &keyroll_core::IssuedKey| NewVersion {
            kid: k.kid,
            secret_hash: k.secret_hash,
            fingerprint: k.fingerprint,
            expires_at: None,
        };
        let c = Consumer::create(
            env.clone(),
            ConsumerName::parse(&format!("consumer-{i}")).unwrap(),
            vec![],
            None,
            nv(&k1),
            now,
        );
        let c = c
            .apply(
                Command::Rotate {
                    grace: Duration::from_secs(3600 * 48),
                    enforce: false,
                    new_version: nv(&k2),
                },
                &Usage::NONE,
                now,
            )
            .unwrap()
            .consumer;
        if sample.len() < SAMPLE && i % ((VERSIONS / 2) / SAMPLE).max(1) == 0 {
            sample.push(k2.reveal().to_owned());
        }
        consumers.push((i as i64, c));
    }
    (consumers, sample)
}

fn benches(c: &mut Criterion) {
    let (consumers, sample) = build();
    let before = rss_bytes();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let index = Index::new();
    let started = Instant::now();
    index.load(consumers.iter().map(|(_, c)| (1, c)));
    let load = started.elapsed();
    let after = rss_bytes();
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let n = index.len() as f64;
    println!(
        "index: {} versions loaded in {:.2} s; heap {:.1} MiB = {:.0} B/version (records and tables {:.0} B/version); RSS grew {:.0} B/version",
        index.len(),
        load.as_secs_f64(),
        heap as f64 / 1048576.0,
        heap as f64 / n,
        index.table_bytes() as f64 / n,
        after.saturating_sub(before) as f64 / n,
    );

    // The floor: SHA-256 of the secret and one lookup in a std HashMap of the same size.
    let mut floor_map: HashMap<Kid, u32> = HashMap::with_capacity(VERSIONS);
    for (i, (_, c)) in consumers.iter().enumerate() {
        for v in &c.versions {
            floor_map.insert(v.kid, i as u32);
        }
    }
    drop(consumers);
    let now = Timestamp::from_unix_millis(1_800_000_000_000);
    let no_scopes: [&str; 0] = [];

    let mut group = c.benchmark_group("verify_1M");
    // The floor gets its kids already parsed: it is only the hash and the lookup.
    let kids: Vec<Kid> = sample
        .iter()
        .map(|s| parse_key(s.as_bytes()).unwrap().kid())
        .collect();
    let mut i = 0usize;
    group.bench_function("floor: sha256(secret) + HashMap lookup", |b| {
        b.iter(|| {
            let n = i % sample.len();
            i += 1;
            let h = black_box(SecretHash::of(&sample[n].as_bytes()[21..53]));
            black_box((floor_map.get(&kids[n]), h))
        })
    });
    let mut j = 0usize;
    group.bench_function(
        "keyroll verify (parse, checksum, hash, lookup, judge)",
        |b| {
            b.iter(|| {
                let key = sample[j % sample.len()].as_bytes();
                j += 1;
                let v = verify(
                    &index,
                    Presented::Key(key),
                    Some("prod"),
                    &no_scopes,
                    Recording::CountsAsUse,
                    now,
                );
                debug_assert!(v.code.allowed());
                black_box(v.code)
            })
        },
    );
    let mut k = 0usize;
    group.bench_function("keyroll verify, unknown kid", |b| {
        let unknown: Vec<String> = sample
            .iter()
            .map(|s| keyroll_core::assemble_key("prod", "ZZZZZZZZZZZZ", &s[21..53]))
            .collect();
        b.iter(|| {
            let key = unknown[k % unknown.len()].as_bytes();
            k += 1;
            black_box(
                verify(
                    &index,
                    Presented::Key(key),
                    Some("prod"),
                    &no_scopes,
                    Recording::CountsAsUse,
                    now,
                )
                .code,
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = verify_benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(verify_benches);
