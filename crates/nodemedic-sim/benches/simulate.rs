//! The fleet simulator's speed: the default run (2,048 nodes x 8 GPUs x 54 days, target <= 10 s)
//! and a 256-node run, each with the recommended policy.

use criterion::{Criterion, criterion_group, criterion_main};
use nodemedic_core::presets;
use nodemedic_sim::faults::{FleetSpec, MS_PER_DAY};
use nodemedic_sim::sim::{SimConfig, simulate};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let policy = presets::recommended();
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(20));
    let small = SimConfig { fleet: FleetSpec { nodes: 256, gpus_per_node: 8, duration_ms: 54 * MS_PER_DAY }, ..SimConfig::default() };
    group.bench_function("256 nodes x 54 days", |b| b.iter(|| black_box(simulate(&small, "nodemedic", &policy, &mut |_| {}))));
    let default = SimConfig::default();
    group.measurement_time(Duration::from_secs(90));
    group.bench_function("2048 nodes x 54 days (default)", |b| b.iter(|| black_box(simulate(&default, "nodemedic", &policy, &mut |_| {}))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
