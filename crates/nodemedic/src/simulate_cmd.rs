//! `nodemedic simulate`: argument parsing, file reading and printing for the fleet simulator. Every
//! number comes from nodemedic-sim: one seed, many seeds with intervals (`--seeds`), or a
//! sensitivity sweep (`--sweep`).

use anyhow::{Context, Result, bail};
use nodemedic_core::Policy;
use nodemedic_sim::faults::{FaultModel, FleetSpec, MS_PER_DAY};
use nodemedic_sim::progress::{progress_line, shows_progress};
use nodemedic_sim::sim::{Report, SimConfig, simulate};
use nodemedic_sim::{baselines, seeds, sweep};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Policy to simulate: a file, or a preset or baseline name (nodemedic, seed000, seed003,
    /// seed004, seed003-unbounded, seed004-npd, nodemedic-noclass).
    #[arg(long, default_value = "nodemedic")]
    policy: String,
    /// Also run these (files or names) side by side; `--compare` alone compares the presets,
    /// seed004-npd and nodemedic-noclass (seed003-unbounded only by name: it is slow on big fleets).
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    compare: Option<Vec<String>>,
    #[arg(long, default_value_t = 2048)]
    nodes: u32,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u8,
    #[arg(long, default_value_t = 54.0)]
    days: f64,
    /// Random seed (the first seed with --seeds): the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many seeds (seed, seed+1, …) and report means with 95% intervals and which
    /// differences between policies are significant.
    #[arg(long)]
    seeds: Option<u32>,
    /// Re-run the comparison with each uncertain parameter at the ends of its plausible range
    /// (docs/fault-model.md, section 17; the fault rate's range from `--calibration`), over --seeds seeds (default 20).
    #[arg(long)]
    sweep: bool,
    /// Print how the fault model's rate compares with a second public dataset (Meta's research clusters'
    /// failure rate by job size) and stop; the sweep's fault-rate range comes from it.
    #[arg(long)]
    calibration: bool,
    /// Fault model file (JSON or YAML, the serialised `FaultModel`); default: the published-data model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Threads for --seeds and --sweep (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Also print every engine event with its reason, per policy (best with a small fleet; one seed).
    #[arg(long)]
    trace: bool,
}

/// A preset or baseline by name, or a policy file.
pub fn load_policy(spec: &str) -> Result<(String, Policy)> {
    if let Some(p) = baselines::by_name(spec) {
        return Ok((spec.to_string(), p));
    }
    let path = std::path::Path::new(spec);
    if !path.exists() {
        bail!(
            "`{spec}` is neither a policy file nor a preset (presets: {})",
            baselines::all().iter().chain(&baselines::by_name_only()).map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
    let policy = if spec.ends_with(".json") { Policy::from_json(&text) } else { Policy::from_yaml(&text) }
        .with_context(|| format!("policy {spec}"))?;
    let name = path.file_stem().map_or(spec.to_string(), |s| s.to_string_lossy().into_owned());
    Ok((name, policy))
}

fn load_model(path: &std::path::Path) -> Result<FaultModel> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let model: FaultModel = if path.extension().is_some_and(|e| e == "json") {
        nodemedic_core::input::from_json_str(&text).with_context(|| format!("{} is not a fault model (JSON)", path.display()))?
    } else {
        nodemedic_core::input::from_yaml_str(&text).with_context(|| format!("{} is not a fault model (YAML)", path.display()))?
    };
    model.validate().with_context(|| format!("fault model {}", path.display()))?;
    Ok(model)
}

fn policies(args: &SimulateArgs) -> Result<Vec<(String, Policy)>> {
    let mut policies = vec![load_policy(&args.policy)?];
    match &args.compare {
        Some(list) if list.is_empty() => {
            policies.extend(baselines::all().into_iter().filter(|(n, _)| *n != args.policy).map(|(n, p)| (n.to_string(), p)));
        }
        Some(list) => {
            for spec in list {
                policies.push(load_policy(spec)?);
            }
        }
        None => {}
    }
    Ok(policies)
}

pub fn run_simulate(args: SimulateArgs) -> Result<()> {
    if args.nodes == 0 || !args.days.is_finite() || args.days <= 0.0 {
        bail!("--nodes and --days must be more than zero");
    }
    if args.seeds == Some(0) {
        bail!("--seeds must be at least 1");
    }
    let policies = policies(&args)?;
    let model = match &args.model {
        Some(path) => load_model(path)?,
        None => FaultModel::default(),
    };
    model.validate().context("fault model")?;
    if args.calibration {
        print!("{}", nodemedic_sim::calibration::render(&model));
        return Ok(());
    }
    let cfg = SimConfig {
        fleet: FleetSpec { nodes: args.nodes, gpus_per_node: args.gpus_per_node, duration_ms: (args.days * MS_PER_DAY as f64) as i64 },
        seed: args.seed,
        trace: args.trace,
        model,
        ..SimConfig::default()
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let started = Instant::now();
    if args.sweep {
        let seed_list: Vec<u64> = (0..u64::from(args.seeds.unwrap_or(20))).map(|i| args.seed + i).collect();
        let scenarios = with_progress(args.json, started, |tick| {
            sweep::run_sweep(&cfg, &policies, &seed_list, threads, &sweep::default_points(&cfg.model), &|d, of| tick(d, of))
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&scenarios)?);
        } else {
            println!("{}", header(&cfg, &format!("sweep, {} seeds per scenario", seed_list.len()), started));
            print!("{}", sweep::render(&scenarios));
        }
        return Ok(());
    }
    if let Some(n) = args.seeds.filter(|n| *n > 1) {
        let seed_list: Vec<u64> = (0..u64::from(n)).map(|i| args.seed + i).collect();
        let runs = with_progress(args.json, started, |tick| seeds::run_seeds(&cfg, &policies, &seed_list, threads, &|d, of| tick(d, of)));
        let summary = seeds::summarize(&seed_list, &runs);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            println!("{}", header(&cfg, &format!("{n} seeds"), started));
            print!("{}", seeds::render(&summary));
        }
        return Ok(());
    }
    let reports = run_one_seed(&cfg, &policies, args.json, started)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", render(&reports, started.elapsed().as_secs_f64()));
        for r in reports.iter().filter(|r| !r.timeline.is_empty()) {
            println!("\ntimeline: {}", r.policy);
            for line in &r.timeline {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn header(cfg: &SimConfig, what: &str, started: Instant) -> String {
    format!(
        "nodemedic simulate: {} nodes x {} GPUs, {:.0} days, {what} ({:.1}s)",
        cfg.fleet.nodes,
        cfg.fleet.gpus_per_node,
        cfg.fleet.duration_days(),
        started.elapsed().as_secs_f64()
    )
}

/// Runs `work`, drawing a progress bar from the (done, of) counts it reports, for a person at a
/// terminal only; the bar is erased before anything else is printed.
fn with_progress<T>(json: bool, started: Instant, work: impl FnOnce(&(dyn Fn(usize, usize) + Sync)) -> T) -> T {
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let drawn = std::sync::atomic::AtomicBool::new(false);
    let tick = |done: usize, of: usize| {
        if shows_progress(started.elapsed(), stderr_is_terminal, json) {
            let mut err = std::io::stderr().lock();
            // A lost progress line is not worth failing the run for.
            let _ = write!(err, "\r{}", progress_line(done as f64 / of.max(1) as f64, started.elapsed()));
            let _ = err.flush();
            drawn.store(true, Ordering::Relaxed);
        }
    };
    let out = work(&tick);
    if drawn.load(Ordering::Relaxed) {
        eprint!("\r\x1b[2K");
    }
    out
}

fn run_one_seed(cfg: &SimConfig, policies: &[(String, Policy)], json: bool, started: Instant) -> Result<Vec<Report>> {
    let progress: Vec<AtomicU64> = policies.iter().map(|_| AtomicU64::new(0)).collect();
    let mut reports: Vec<Option<Report>> = vec![None; policies.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = policies
            .iter()
            .zip(&progress)
            .map(|((name, policy), prog)| {
                s.spawn(move || simulate(cfg, name, policy, &mut |f| prog.store((f * 1000.0) as u64, Ordering::Relaxed)))
            })
            .collect();
        // A progress bar only for runs that take more than a second, and only for a person at a
        // terminal; drawn by rewriting one stderr line, cleared before the report is printed.
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let mut drawn = false;
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if shows_progress(started.elapsed(), stderr_is_terminal, json) {
                let done = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum::<u64>() as f64 / (1000.0 * policies.len() as f64);
                let mut err = std::io::stderr().lock();
                // A lost progress line is not worth failing the run for.
                let _ = write!(err, "\r{}", progress_line(done, started.elapsed()));
                let _ = err.flush();
                drawn = true;
            }
        }
        if drawn {
            // Carriage return, then erase the line (ANSI EL2): stderr is a terminal here.
            eprint!("\r\x1b[2K");
        }
        for (slot, h) in reports.iter_mut().zip(handles) {
            *slot = h.join().ok();
        }
    });
    reports.into_iter().collect::<Option<_>>().context("a simulation thread panicked")
}

const COL: usize = 19;

fn render(reports: &[Report], secs: f64) -> String {
    let Some(first) = reports.first() else { return String::new() };
    let mut out = format!(
        "nodemedic simulate: {} nodes x {} GPUs, {:.0} days, seed {} ({:.1}s)\nfaults: {} real, {} probe false positives, {} network flaps (the same for every policy)\n\n",
        first.nodes,
        first.gpus_per_node,
        first.days,
        first.seed,
        secs,
        first.faults.real,
        first.faults.false_positives,
        first.faults.network_flaps
    );
    let w = 34;
    out += &format!("{:w$}", "");
    for r in reports {
        out += &format!("{:>COL$}", r.policy);
    }
    out += "\n";
    type Row = (&'static str, fn(&Report) -> String);
    let rows: Vec<Row> = vec![
        ("real faults faced", |r| r.faults.real.to_string()),
        ("  prevented by a replaced lemon", |r| r.faults.prevented_by_replacement.to_string()),
        ("GPU-hours lost, total", |r| format!("{:.0}", r.gpu_hours_lost.total)),
        ("  share of fleet capacity", |r| format!("{:.3}%", r.fleet_share_lost * 100.0)),
        ("  policy-controlled", |r| format!("{:.0}", r.gpu_hours_lost.policy_controlled)),
        ("    faulty node still taking work", |r| format!("{:.0}", r.gpu_hours_lost.faulty_node_serving)),
        ("    repairs that did not fix", |r| format!("{:.0}", r.gpu_hours_lost.ineffective_repairs)),
        ("    healthy nodes disrupted", |r| format!("{:.0}", r.gpu_hours_lost.healthy_nodes_disrupted)),
        ("    waiting (gates/verify/people)", |r| format!("{:.0}", r.gpu_hours_lost.waiting)),
        ("  repair that finally worked", |r| format!("{:.0}", r.gpu_hours_lost.effective_repair)),
        ("time to quarantine, mean (min)", |r| format!("{:.1}", r.time_to_quarantine.mean_minutes)),
        ("time to quarantine, p95 (min)", |r| format!("{:.1}", r.time_to_quarantine.p95_minutes)),
        ("time to repair, mean (h)", |r| format!("{:.1}", r.time_to_repair.mean_minutes / 60.0)),
        ("time to repair, p95 (h)", |r| format!("{:.1}", r.time_to_repair.p95_minutes / 60.0)),
        ("faults found by people", |r| r.faults.found_by_people.to_string()),
        ("escalations to manual", |r| r.escalations_to_manual.to_string()),
        ("unresolved at end", |r| r.faults.unresolved_at_end.to_string()),
        ("engine decisions", |r| r.decisions.to_string()),
    ];
    for (label, f) in rows {
        out += &format!("{label:w$}");
        for r in reports {
            out += &format!("{:>COL$}", f(r));
        }
        out += "\n";
    }
    out += &keyed_rows(reports, "remediations: ", |r| &r.remediations_by_step);
    out += &keyed_rows(reports, "gate holds: ", |r| &r.gate_holds);
    out
}

fn keyed_rows(reports: &[Report], prefix: &str, map: fn(&Report) -> &std::collections::BTreeMap<String, u64>) -> String {
    let mut keys: Vec<&String> = reports.iter().flat_map(|r| map(r).keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = String::new();
    for k in keys {
        out += &format!("{:34}", format!("{prefix}{k}"));
        for r in reports {
            out += &format!("{:>COL$}", map(r).get(k).copied().unwrap_or(0));
        }
        out += "\n";
    }
    out
}
