//! Sensitivity: the same comparison re-run with one uncertain parameter of the fault model moved to
//! each end of its plausible range, to see which conclusions survive. Each scenario runs every policy
//! over the same seeds ([`crate::seeds`]); the report says how the ranking and the gaps move.

use crate::faults::{Cause, DurationDist, FaultModel, MS_PER_HOUR};
use crate::seeds::{Summary, run_seeds, summarize};
use crate::sim::SimConfig;
use nodemedic_core::Policy;
use serde::{Deserialize, Serialize};

/// A parameter of the fault model that no source pins down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    /// Median of people's response time, in hours (the spread stays as in the model).
    ManualResponseHours,
    /// Probe sensitivity for GPU and network faults alike (0..=1).
    ProbeSensitivity,
    /// Probe false positives per node-day.
    FalsePositivesPerNodeDay,
    /// Median lead time of a replacement, in hours.
    ReplaceLeadHours,
    /// Share of GPU System Processor faults a reboot clears (the rest need a replacement).
    GspRebootShare,
    /// The unexpected-interruption rate times this (the second dataset's range, [`crate::calibration`]).
    FaultRateMultiplier,
}

impl Param {
    pub fn label(&self) -> &'static str {
        match self {
            Param::ManualResponseHours => "manual response median (h)",
            Param::ProbeSensitivity => "probe sensitivity",
            Param::FalsePositivesPerNodeDay => "false positives per node-day",
            Param::ReplaceLeadHours => "replace lead time median (h)",
            Param::GspRebootShare => "GSP reboot share",
            Param::FaultRateMultiplier => "fault rate x",
        }
    }
}

/// One scenario: a parameter at one value, every other number as in the base model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub param: Param,
    pub value: f64,
}

fn with_median(d: &DurationDist, median_ms: i64) -> DurationDist {
    DurationDist { median_ms, min_ms: d.min_ms.min(median_ms), max_ms: d.max_ms.max(median_ms), ..d.clone() }
}

impl Point {
    /// The base model with this parameter set.
    pub fn apply(&self, base: &FaultModel) -> FaultModel {
        let mut m = base.clone();
        let hours = (self.value * MS_PER_HOUR as f64).round() as i64;
        match self.param {
            Param::ManualResponseHours => m.repair.manual_response = with_median(&m.repair.manual_response, hours),
            Param::ProbeSensitivity => {
                m.probe_sensitivity.gpu = self.value;
                m.probe_sensitivity.network = self.value;
            }
            Param::FalsePositivesPerNodeDay => m.false_positives.per_node_day = self.value,
            Param::ReplaceLeadHours => m.repair.replace_lead = with_median(&m.repair.replace_lead, hours),
            Param::GspRebootShare => {
                if let Some(c) = m.causes.iter_mut().find(|c| c.cause == Cause::GpuSystemProcessor) {
                    let rest = 1.0 - self.value - c.fixes.self_clears - c.fixes.reimage;
                    c.fixes.reboot = self.value;
                    c.fixes.replace = rest.max(0.0);
                }
            }
            Param::FaultRateMultiplier => m.unexpected_per_gpu_day *= self.value,
        }
        m
    }
}

/// The plausible range of each parameter, low and high end (docs/fault-model.md, section 17); the fault
/// rate's range comes from the second dataset ([`crate::calibration::rate_points`]).
pub fn default_points(base: &FaultModel) -> Vec<Point> {
    let p = |param, value| Point { param, value };
    let mut points = vec![
        p(Param::ManualResponseHours, 0.5),
        p(Param::ManualResponseHours, 8.0),
        p(Param::ProbeSensitivity, 0.5),
        p(Param::ProbeSensitivity, 1.0),
        p(Param::FalsePositivesPerNodeDay, 0.0),
        p(Param::FalsePositivesPerNodeDay, 0.005),
        p(Param::ReplaceLeadHours, 4.0),
        p(Param::ReplaceLeadHours, 72.0),
        p(Param::GspRebootShare, 0.5),
        p(Param::GspRebootShare, 1.0),
    ];
    points.extend(crate::calibration::rate_points(base));
    points
}

/// One scenario's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// `None` for the base model.
    pub point: Option<Point>,
    pub summary: Summary,
}

/// Runs the base model and then each point, every policy over the same seeds.
pub fn run_sweep(
    cfg: &SimConfig,
    policies: &[(String, Policy)],
    seeds: &[u64],
    threads: usize,
    points: &[Point],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<Scenario> {
    let scenarios: Vec<Option<Point>> = std::iter::once(None).chain(points.iter().copied().map(Some)).collect();
    let total = scenarios.len();
    scenarios
        .into_iter()
        .enumerate()
        .map(|(i, point)| {
            let model = point.map_or_else(|| cfg.model.clone(), |p| p.apply(&cfg.model));
            let scenario_cfg = SimConfig { model, ..cfg.clone() };
            let runs = run_seeds(&scenario_cfg, policies, seeds, threads, &|done, of| progress(i * of + done, total * of));
            Scenario { point, summary: summarize(seeds, &runs) }
        })
        .collect()
}

fn short(x: f64) -> String {
    if x.abs() >= 10_000.0 { format!("{:.1}k", x / 1000.0) } else { format!("{x:.0}") }
}

/// How the ranking and the gaps move: one line per scenario with the policies from least to most
/// policy-controlled loss, each with its gap to the best (`*` where that gap is significant), then
/// which orderings held in every scenario.
pub fn render(scenarios: &[Scenario]) -> String {
    let mut out = String::from("policy-controlled GPU-hours by scenario, best first; +gap to the best (* significant at 95%)\n\n");
    for s in scenarios {
        let name = s.point.map_or_else(|| "base model".to_string(), |p| format!("{} = {}", p.param.label(), p.value));
        let ranking = s.summary.ranking();
        let best = ranking.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let cells: Vec<String> = ranking
            .iter()
            .map(|(p, m)| match s.summary.difference(p, &best) {
                Some(d) if *p != best => format!("{p} +{}{}", short(d.diff.mean), if d.significant { "*" } else { "" }),
                _ => format!("{p} {}", short(*m)),
            })
            .collect();
        out += &format!("{name:<40} {}\n", cells.join("  "));
    }
    out += "\n";
    out += &held_orderings(scenarios);
    out
}

/// For each pair of policies: in how many scenarios the first is significantly better, the
/// second is, or neither is.
fn held_orderings(scenarios: &[Scenario]) -> String {
    let Some(base) = scenarios.first() else { return String::new() };
    let mut out = String::from("pairs (a vs b): scenarios where a is significantly better / b is / neither\n");
    for d in &base.summary.differences {
        let (mut a_better, mut b_better, mut neither) = (0, 0, 0);
        for s in scenarios {
            match s.summary.difference(&d.a, &d.b) {
                Some(x) if x.significant && x.diff.mean < 0.0 => a_better += 1,
                Some(x) if x.significant => b_better += 1,
                _ => neither += 1,
            }
        }
        out += &format!("  {:>18} vs {:<18} {a_better:>3} / {b_better:>3} / {neither:>3}\n", d.a, d.b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_point_moves_only_its_own_parameter() {
        let base = FaultModel::default();
        for p in default_points(&base) {
            let m = p.apply(&base);
            assert_eq!(m.validate(), Ok(()), "{p:?}");
            let changed = [
                m.repair.manual_response != base.repair.manual_response,
                m.probe_sensitivity != base.probe_sensitivity,
                m.false_positives != base.false_positives,
                m.repair.replace_lead != base.repair.replace_lead,
                m.causes != base.causes,
                m.unexpected_per_gpu_day != base.unexpected_per_gpu_day,
            ];
            assert!(changed.iter().filter(|c| **c).count() <= 1, "{p:?} changed {changed:?}");
        }
        let gsp = Point { param: Param::GspRebootShare, value: 0.5 }.apply(&base);
        let fixes = &gsp.cause_spec(Cause::GpuSystemProcessor).map(|c| c.fixes.clone());
        assert_eq!(fixes.as_ref().map(|f| (f.reboot, f.replace)), Some((0.5, 0.5)));
        let slow = Point { param: Param::ManualResponseHours, value: 8.0 }.apply(&base);
        assert_eq!(slow.repair.manual_response.median_ms, 8 * MS_PER_HOUR);
    }
}
