//! `decide` over a large GPU fleet with the recommended policy (monitor-only off).
//!
//! The fleet: 8-GPU nodes in 50 pools, each with Ready and DiskPressure conditions, fresh `gpu` and
//! `network` checks, the dozen labels and the `nvidia.com/gpu` taint a GKE GPU node carries. ~0.3% of
//! the nodes are on the remediation ladder (records built by one decide + apply in setup) and another
//! ~0.5% are unhealthy now (GPU check failing, NotReady, disk pressure), so the measured decision
//! starts remediations too; ~0.17% have a slow network (soft taint). Target: ≤ 20 ms per decide over
//! 100,000 nodes on one core.
//!
//! Also measured: 1,000 nodes (everything fits in cache: the engine's compute per node), and
//! `touch-only`, which only reads what pass 1 must read from each node (the memory floor).
//!
//! By default the fleet is a fresh copy, as a controller's per-decision snapshot is: each node's data
//! lies together in memory. `SCATTERED=1` keeps the fleet as the setup's edits left it, spread over
//! the heap, as a long-running simulator's fleet is.
//!
//! `cargo bench -p nodemedic-core --bench decide -- --warm-up-time 2 --measurement-time 5`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodemedic_core::observe::{Taint, TaintEffect};
use nodemedic_core::policy::ConditionStatus;
use nodemedic_core::testkit::{EPOCH, gpu_node, probe, set_condition};
use nodemedic_core::{Duration, FleetIndex, NodeObservation, Policy, Records, Time, apply, decide, presets};
use std::hint::black_box;

const POOLS: usize = 50;

struct Fleet {
    policy: Policy,
    fleet: Vec<NodeObservation>,
    records: Records,
    now: Time,
}

fn fleet(size: usize) -> Fleet {
    let mut policy = presets::recommended();
    policy.monitor_only = false;
    let t0 = EPOCH;
    let mut fleet: Vec<NodeObservation> = (0..size)
        .map(|i| {
            let mut n = gpu_node(&format!("gpu-{:02}-{i:06}", i % POOLS), &format!("pool-{:02}", i % POOLS), 8, t0);
            set_condition(&mut n, "DiskPressure", ConditionStatus::False, "KubeletHasNoDiskPressure", t0);
            // The labels and taint a GKE GPU node carries besides the pool and GPU count.
            for (k, v) in [
                ("kubernetes.io/arch", "amd64"),
                ("kubernetes.io/os", "linux"),
                ("node.kubernetes.io/instance-type", "a3-highgpu-8g"),
                ("topology.kubernetes.io/region", "us-central1"),
                ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),
                ("cloud.google.com/gke-os-distribution", "cos"),
                ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
                ("nvidia.com/gpu.memory", "81559"),
                ("nvidia.com/cuda.driver.major", "550"),
            ] {
                n.labels.insert(k.into(), v.into());
            }
            n.labels.insert("kubernetes.io/hostname".into(), n.name.clone());
            n.labels.insert("topology.kubernetes.io/zone".into(), format!("us-central1-{}", ["a", "b", "c"][i % 3]));
            n.taints.push(Taint { key: "nvidia.com/gpu".into(), value: Some("present".into()), effect: TaintEffect::NoSchedule });
            probe(&mut n, "gpu", true, t0);
            probe(&mut n, "network", true, t0);
            n
        })
        .collect();

    // ~0.3% go onto the ladder: their GPU check fails three times; one decision starts them.
    for n in fleet.iter_mut().step_by(333) {
        for _ in 0..3 {
            probe(n, "gpu", false, t0);
        }
    }
    let mut records = Records::default();
    let d = decide(&policy, &fleet, &records, t0);
    apply(&d, &mut fleet, &mut records);
    let remediating = records.nodes.values().filter(|r| r.active.is_some()).count();
    assert!(remediating * 1000 >= size * 2, "{remediating} of {size} remediating after setup");

    // Two minutes later: every agent has reported again, and ~0.5% of the others are unhealthy now.
    let now = t0 + Duration::from_mins(2);
    for (i, n) in fleet.iter_mut().enumerate() {
        let on_ladder = records.nodes.contains_key(&n.name);
        for c in n.conditions.iter_mut() {
            c.last_heartbeat_time = Some(now);
        }
        match i % 600 {
            _ if on_ladder => {}
            17 => {
                for _ in 0..3 {
                    probe(n, "gpu", false, now);
                }
            }
            71 => set_condition(n, "Ready", ConditionStatus::False, "KubeletNotReady", now - Duration::from_mins(6)),
            113 => set_condition(n, "DiskPressure", ConditionStatus::True, "KubeletHasDiskPressure", now - Duration::from_mins(31)),
            // Slow network: a soft taint, not unhealthy.
            213 => {
                for _ in 0..3 {
                    probe(n, "network", false, now);
                }
            }
            _ => {
                probe(n, "gpu", true, now);
                probe(n, "network", true, now);
            }
        }
    }
    // A controller builds a fresh snapshot of the nodes for every decision, so each node's data lies
    // together in memory; the edits above scattered it (see the module comment).
    let fleet = if std::env::var_os("SCATTERED").is_some() { fleet } else { fleet.clone() };
    Fleet { policy, fleet, records, now }
}

/// Reads from every node what pass 1 has to read (name, label keys of the lengths it looks for,
/// condition types, check names, allocatable and taint keys) and nothing more: the cost of just
/// bringing that memory in, which `decide` cannot beat with this data layout.
fn touch(fleet: &[NodeObservation]) -> usize {
    let first = |s: &str| s.as_bytes().first().copied().map_or(0, usize::from);
    let mut acc = 0usize;
    for n in fleet {
        acc += first(&n.name);
        for (k, v) in &n.labels {
            if matches!(k.len(), 20 | 30 | 37) {
                acc += first(k) + v.len();
            }
        }
        acc += n.conditions.iter().map(|c| first(&c.type_)).sum::<usize>();
        acc += n.allocatable.iter().map(|(k, v)| first(k) + *v as usize).sum::<usize>();
        acc += n.taints.iter().map(|t| first(&t.key)).sum::<usize>();
    }
    acc
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for size in [1_000usize, 10_000, 100_000] {
        let f = fleet(size);
        let d = decide(&f.policy, &f.fleet, &f.records, f.now);
        eprintln!(
            "decide/{size}: selected {}, healthy {}, unhealthy {}, remediating {}, in flight {}, {} actions, {} record changes",
            d.summary.selected,
            d.summary.healthy,
            d.summary.unhealthy,
            d.summary.remediating,
            d.summary.disruptive_in_flight,
            d.actions.len(),
            d.record_changes.len()
        );
        group.throughput(Throughput::Elements(size as u64));
        group.sample_size(if size >= 100_000 { 30 } else { 100 });
        group.bench_with_input(BenchmarkId::from_parameter(size), &f, |b, f| {
            b.iter(|| decide(black_box(&f.policy), black_box(&f.fleet), black_box(&f.records), black_box(f.now)))
        });
        group.bench_with_input(BenchmarkId::new("touch-only", size), &f, |b, f| b.iter(|| touch(black_box(&f.fleet))));
        if size >= 10_000 {
            // The controller's way: a FleetIndex fed by watch events. Each decision follows ten node
            // updates (an agent report each), as a steady stream of heartbeats would bring.
            let mut index = FleetIndex::from_nodes(f.fleet.iter().cloned());
            let first = index.decide(&f.policy, &f.records, f.now);
            assert_eq!(first, d, "the index decides like a full pass");
            let names: Vec<String> = f.fleet.iter().map(|n| n.name.clone()).collect();
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new("index, 10 updates per decision", size), |b| {
                b.iter(|| {
                    for _ in 0..10 {
                        next = (next + 7919) % names.len();
                        if let Some(n) = index.get_mut(&names[next]) {
                            probe(n, "gpu", true, f.now);
                        }
                    }
                    index.decide(black_box(&f.policy), black_box(&f.records), black_box(f.now))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
