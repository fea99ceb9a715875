//! Issuance and verification throughput of keyroll-ca (docs/benchmarks.md).

use criterion::{Criterion, criterion_group, criterion_main};

fn benches(_c: &mut Criterion) {}

criterion_group!(ca, benches);
criterion_main!(ca);
