//! Many seeds instead of one: every policy runs over the same seeds (and so, with common random
//! numbers, the same faults per seed), and each figure is reported as a mean with a 95 % interval.
//! Differences between two policies are paired by seed, so the interval of a difference is far
//! narrower than the two intervals suggest; a difference whose interval excludes zero is called
//! significant.

use crate::report::Report;
use crate::sim::{SimConfig, simulate};
use nodemedic_core::Policy;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Two-sided 95 % quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093,
    2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (normal beyond 120).
pub fn t_975(df: usize) -> f64 {
    match df {
        0 => f64::INFINITY,
        1..=30 => T_975[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// A mean with its 95 % confidence interval (Student's t over the seeds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

impl Interval {
    /// The mean of `values` and its 95 % interval; one value gives an unbounded interval.
    pub fn of(values: &[f64]) -> Interval {
        let n = values.len();
        if n == 0 {
            return Interval { mean: 0.0, low: 0.0, high: 0.0, n };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { f64::INFINITY };
        let half = t_975(n - 1) * (var / n as f64).sqrt();
        Interval { mean, low: mean - half, high: mean + half, n }
    }

    /// Half the width of the interval.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }

    /// Zero lies outside the interval.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// A figure of a report that is summarised over seeds.
pub type Metric = (&'static str, fn(&Report) -> f64);

/// The figures summarised over seeds, in the order they are printed.
pub const METRICS: [Metric; 12] = [
    ("GPU-hours lost, total", |r| r.gpu_hours_lost.total),
    ("  policy-controlled", |r| r.gpu_hours_lost.policy_controlled),
    ("    faulty node still taking work", |r| r.gpu_hours_lost.faulty_node_serving),
    ("    repairs that did not fix", |r| r.gpu_hours_lost.ineffective_repairs),
    ("    healthy nodes disrupted", |r| r.gpu_hours_lost.healthy_nodes_disrupted),
    ("    waiting (gates/verify/people)", |r| r.gpu_hours_lost.waiting),
    ("  repair that finally worked", |r| r.gpu_hours_lost.effective_repair),
    ("time to quarantine, mean (min)", |r| r.time_to_quarantine.mean_minutes),
    ("time to repair, mean (h)", |r| r.time_to_repair.mean_minutes / 60.0),
    ("faults found by people", |r| r.faults.found_by_people as f64),
    ("escalations to manual", |r| r.escalations_to_manual as f64),
    ("unresolved at end", |r| r.faults.unresolved_at_end as f64),
];

/// Policy-controlled GPU-hours: what the ranking and the differences are about.
pub fn policy_controlled(r: &Report) -> f64 {
    r.gpu_hours_lost.policy_controlled
}

/// One policy's reports, one per seed, in the order of the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRuns {
    pub policy: String,
    pub reports: Vec<Report>,
}

/// Runs every policy over every seed (`cfg.seed` is replaced by each seed) on up to `threads`
/// threads. `progress` is told how many of the runs are done, out of how many.
pub fn run_seeds(
    cfg: &SimConfig,
    policies: &[(String, Policy)],
    seeds: &[u64],
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<PolicyRuns> {
    let jobs: Vec<(usize, u64)> = (0..policies.len()).flat_map(|p| seeds.iter().map(move |s| (p, *s))).collect();
    let results: Mutex<Vec<Option<Report>>> = Mutex::new(vec![None; jobs.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(p, seed)) = jobs.get(i) else { break };
                    let (name, policy) = &policies[p];
                    let run_cfg = SimConfig { seed, trace: false, ..cfg.clone() };
                    let report = simulate(&run_cfg, name, policy, &mut |_| {});
                    // A poisoned lock means another run panicked; the scope re-raises that panic.
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(report);
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
                }
            });
        }
    });
    let mut slots = results.into_inner().unwrap_or_default().into_iter();
    policies
        .iter()
        .map(|(name, _)| PolicyRuns { policy: name.clone(), reports: slots.by_ref().take(seeds.len()).flatten().collect() })
        .collect()
}

/// One policy's figures over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub policy: String,
    /// `METRICS`, in order.
    pub metrics: Vec<(String, Interval)>,
    /// Real faults generated per seed (the same for every policy).
    pub real_faults: Interval,
}

/// Policy `a` minus policy `b` in policy-controlled GPU-hours, paired by seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub a: String,
    pub b: String,
    pub diff: Interval,
    pub significant: bool,
}

/// The figures of every policy over the seeds, and every pairwise difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub seeds: Vec<u64>,
    pub policies: Vec<PolicySummary>,
    pub differences: Vec<Difference>,
    /// Every policy faced exactly the same faults on each seed (equal fault digests).
    pub same_faults: bool,
}

impl Summary {
    /// Policy names from the least policy-controlled loss to the most (by mean).
    pub fn ranking(&self) -> Vec<(String, f64)> {
        let mut r: Vec<(String, f64)> =
            self.policies.iter().map(|p| (p.policy.clone(), p.metrics.get(1).map_or(0.0, |(_, i)| i.mean))).collect();
        r.sort_by(|a, b| a.1.total_cmp(&b.1));
        r
    }

    /// The paired difference between two policies, either way round.
    pub fn difference(&self, a: &str, b: &str) -> Option<Difference> {
        self.differences.iter().find_map(|d| {
            if d.a == a && d.b == b {
                Some(d.clone())
            } else if d.a == b && d.b == a {
                let diff = Interval { mean: -d.diff.mean, low: -d.diff.high, high: -d.diff.low, n: d.diff.n };
                Some(Difference { a: a.into(), b: b.into(), diff, significant: d.significant })
            } else {
                None
            }
        })
    }
}

/// Means, intervals and paired differences of runs made by [`run_seeds`].
pub fn summarize(seeds: &[u64], runs: &[PolicyRuns]) -> Summary {
    let policies = runs
        .iter()
        .map(|p| PolicySummary {
            policy: p.policy.clone(),
            metrics: METRICS
                .iter()
                .map(|(label, f)| (label.to_string(), Interval::of(&p.reports.iter().map(f).collect::<Vec<_>>())))
                .collect(),
            real_faults: Interval::of(&p.reports.iter().map(|r| r.faults.real as f64).collect::<Vec<_>>()),
        })
        .collect();
    let mut differences = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let paired: Vec<f64> = a.reports.iter().zip(&b.reports).map(|(x, y)| policy_controlled(x) - policy_controlled(y)).collect();
            let diff = Interval::of(&paired);
            differences.push(Difference { a: a.policy.clone(), b: b.policy.clone(), diff, significant: diff.excludes_zero() });
        }
    }
    let same_faults = runs.first().is_none_or(|first| {
        runs.iter().all(|p| {
            p.reports.len() == first.reports.len() && p.reports.iter().zip(&first.reports).all(|(x, y)| x.faults.digest == y.faults.digest)
        })
    });
    Summary { seeds: seeds.to_vec(), policies, differences, same_faults }
}

fn short(x: f64) -> String {
    if x.abs() >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The summary as a table of `mean ±half-width` per policy, then the significant differences.
pub fn render(summary: &Summary) -> String {
    let w = 34;
    let col = 18;
    let seeds = &summary.seeds;
    let mut out = format!(
        "{} seeds ({}..={}), mean ±95% interval; every policy faced the same faults per seed: {}\n\n",
        seeds.len(),
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0),
        if summary.same_faults { "yes" } else { "NO" }
    );
    out += &format!("{:w$}", "");
    for p in &summary.policies {
        out += &format!("{:>col$}", p.policy);
    }
    out += "\n";
    let rows = summary.policies.first().map_or(0, |p| p.metrics.len());
    for row in 0..rows {
        out += &format!("{:w$}", summary.policies[0].metrics[row].0);
        for p in &summary.policies {
            let i = p.metrics[row].1;
            out += &format!("{:>col$}", format!("{} ±{}", short(i.mean), short(i.half_width())));
        }
        out += "\n";
    }
    out += &format!("{:w$}", "real faults per seed");
    for p in &summary.policies {
        out += &format!("{:>col$}", format!("{} ±{}", short(p.real_faults.mean), short(p.real_faults.half_width())));
    }
    out += "\n\nranking by policy-controlled GPU-hours (mean): ";
    out += &summary.ranking().iter().map(|(p, m)| format!("{p} {}", short(*m))).collect::<Vec<_>>().join(" < ");
    out += "\n\npaired differences in policy-controlled GPU-hours (a - b, 95% interval):\n";
    for d in &summary.differences {
        out += &format!(
            "  {:>18} - {:<18} {:>9} [{}, {}]  {}\n",
            d.a,
            d.b,
            short(d.diff.mean),
            short(d.diff.low),
            short(d.diff.high),
            if d.significant { "significant" } else { "not significant" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_uses_students_t_over_the_seeds() {
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((i.mean - 3.0).abs() < 1e-12);
        // s = sqrt(2.5), t(4) = 2.776: half-width 2.776 * sqrt(2.5 / 5).
        assert!((i.half_width() - 2.776 * 0.5f64.sqrt()).abs() < 1e-9, "{i:?}");
        assert!(i.excludes_zero());
        assert!(!Interval::of(&[-1.0, 1.0, -2.0, 2.0]).excludes_zero());
        assert!(Interval::of(&[7.0]).half_width().is_infinite(), "one seed says nothing about spread");
        assert_eq!(Interval::of(&[]).n, 0);
        assert_eq!(t_975(19), 2.093);
        assert_eq!(t_975(1_000), 1.960);
    }
}
