//! What one simulated run reports: capacity lost by bucket, fault counts, times, steps and holds.
//! How each figure is measured is stated in docs/fault-model.md, section 13.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean_minutes: f64,
    pub p95_minutes: f64,
}

impl Stats {
    /// Mean and nearest-rank 95th percentile of durations in ms, in minutes.
    pub fn from_millis(mut v: Vec<i64>) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_unstable();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let idx = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
        Stats { count: v.len() as u64, mean_minutes: mean / 60_000.0, p95_minutes: v[idx] as f64 / 60_000.0 }
    }
}

/// Capacity lost, in GPU-hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityLost {
    /// A faulty node still taking work: fault → quarantine. Policy-controlled.
    pub faulty_node_serving: f64,
    /// Out of service in repair steps that did not fix the fault. Policy-controlled.
    pub ineffective_repairs: f64,
    /// Healthy nodes (false positives, flaps) out of service. Policy-controlled.
    pub healthy_nodes_disrupted: f64,
    /// Cordoned and waiting: gates, settling, verification, people's response. Policy-controlled.
    pub waiting: f64,
    /// The inherent duration of the repair that finally worked, whoever starts it: for a
    /// replacement, its lead time and the hands-on swap.
    pub effective_repair: f64,
    pub total: f64,
    pub policy_controlled: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Real faults (hardware or software) generated for the run, excluding false positives and
    /// flaps: the same for every policy over the same seed.
    pub real: u64,
    pub false_positives: u64,
    pub network_flaps: u64,
    /// Faults generated for a lemon node that this policy had already replaced, which therefore
    /// never happened (included in the counts above).
    #[serde(default)]
    pub prevented_by_replacement: u64,
    /// Real faults the policy never acted on; people found them.
    pub found_by_people: u64,
    /// Real faults still active when the run ended.
    pub unresolved_at_end: u64,
    /// A digest of every generated fault with its draws (common random numbers): equal for two
    /// runs exactly when they faced the same faults with the same durations.
    #[serde(default)]
    pub digest: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub policy: String,
    pub nodes: u32,
    pub gpus_per_node: u8,
    pub days: f64,
    pub seed: u64,
    pub faults: FaultCounts,
    pub gpu_hours_lost: CapacityLost,
    /// Share of the fleet's GPU-hours lost.
    pub fleet_share_lost: f64,
    pub time_to_quarantine: Stats,
    pub time_to_repair: Stats,
    pub remediations_by_step: BTreeMap<String, u64>,
    pub escalations_to_manual: u64,
    /// Times a node was held back, by gate (counted when a hold begins).
    pub gate_holds: BTreeMap<String, u64>,
    pub decisions: u64,
    /// The engine's events with their reasons, when tracing: "time node kind: message".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_report_the_mean_and_the_nearest_rank_95th_percentile_in_minutes() {
        let minutes = |m: i64| m * 60_000;
        let s = Stats::from_millis((1..=100).rev().map(minutes).collect());
        assert_eq!(s, Stats { count: 100, mean_minutes: 50.5, p95_minutes: 95.0 });
        let s = Stats::from_millis(vec![minutes(1), minutes(2), minutes(30)]);
        assert_eq!(s, Stats { count: 3, mean_minutes: 11.0, p95_minutes: 30.0 }, "p95 of a few values is the largest");
        assert_eq!(Stats::from_millis(Vec::new()), Stats::default(), "nothing measured reads as zero");
    }
}
