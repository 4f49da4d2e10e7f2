//! The simulator's comparison without the command line's dependencies, for measurements on a busy
//! machine: the same library calls `nodemedic simulate --compare [--seeds N | --sweep]` makes.
//!
//! cargo run --release -p nodemedic-sim --example compare -- NODES DAYS FIRST_SEED SEEDS THREADS [sweep|POLICY]
//!
//! With one seed and a POLICY name, runs only that policy (the benchmark's single-threaded run).

use nodemedic_sim::faults::{FleetSpec, MS_PER_DAY};
use nodemedic_sim::sim::{SimConfig, simulate};
use nodemedic_sim::{baselines, seeds, sweep};
use std::time::Instant;

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let (nodes, days, first, count, threads) = (arg(1, 2048u32), arg(2, 54i64), arg(3, 1u64), arg(4, 20u64), arg(5, 2usize));
    let sweep_mode = std::env::args().nth(6).is_some_and(|a| a == "sweep");
    let cfg = SimConfig { fleet: FleetSpec { nodes, gpus_per_node: 8, duration_ms: days * MS_PER_DAY }, ..SimConfig::default() };
    let only = std::env::args().nth(6).filter(|a| a != "sweep");
    let policies: Vec<(String, nodemedic_core::Policy)> = baselines::all()
        .into_iter()
        .chain(baselines::by_name_only())
        .filter(|(n, _)| only.as_deref().map_or(baselines::all().iter().any(|(m, _)| m == n), |o| o == *n))
        .map(|(n, p)| (n.to_string(), p))
        .collect();
    let seed_list: Vec<u64> = (first..first + count).collect();
    let started = Instant::now();
    if sweep_mode {
        let scenarios = sweep::run_sweep(&cfg, &policies, &seed_list, threads, &sweep::default_points(&cfg.model), &|_, _| {});
        println!("{nodes} nodes x 8 GPUs, {days} days, sweep, {count} seeds per scenario ({:.1}s)", started.elapsed().as_secs_f64());
        print!("{}", sweep::render(&scenarios));
    } else if count > 1 {
        let runs = seeds::run_seeds(&cfg, &policies, &seed_list, threads, &|_, _| {});
        println!("{nodes} nodes x 8 GPUs, {days} days, {count} seeds ({:.1}s)", started.elapsed().as_secs_f64());
        print!("{}", seeds::render(&seeds::summarize(&seed_list, &runs)));
    } else {
        for (name, p) in &policies {
            let t = Instant::now();
            let r = simulate(&SimConfig { seed: first, ..cfg.clone() }, name, p, &mut |_| {});
            println!(
                "{name:>18}: policy-controlled {:>7.0} (faulty serving {:.0}, repairs that did not fix {:.0}, healthy disrupted {:.0}, waiting {:.0})  total {:>7.0}  real faults {}  prevented {}  found by people {}  ({:.2}s)",
                r.gpu_hours_lost.policy_controlled,
                r.gpu_hours_lost.faulty_node_serving,
                r.gpu_hours_lost.ineffective_repairs,
                r.gpu_hours_lost.healthy_nodes_disrupted,
                r.gpu_hours_lost.waiting,
                r.gpu_hours_lost.total,
                r.faults.real,
                r.faults.prevented_by_replacement,
                r.faults.found_by_people,
                t.elapsed().as_secs_f64()
            );
        }
    }
}
