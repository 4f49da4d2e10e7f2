//! Baselines the simulator compares besides the built-in presets: stronger readings of the seed
//! designs that a fair comparison needs. They are ordinary policies run through the same engine.

use crate::agent::NPD_GPU_CONDITION;
use nodemedic_core::class::FaultClassRungs;
use nodemedic_core::policy::{ConditionMatch, ConditionStatus, Rule, RuleEffect};
use nodemedic_core::{Duration, Policy, RemediationStep, presets};

/// Reboots in [`seed003_unbounded`]'s ladder: each takes at least its fixed 40-minute wait on a GPU
/// node, so 2,000 last longer than 55 days, more than any default run: the retries never run out.
pub const SEED003_UNBOUNDED_REBOOTS: usize = 2_000;

/// Seed 003 as its description says: reboot, wait, re-check, and reboot again for as long as the
/// node stays unhealthy; no person is ever called. (The `seed003` preset stops after three
/// reboots and calls a person.)
pub fn seed003_unbounded() -> Policy {
    let mut p = presets::seed003();
    let Some(reboot) = p.ladder.iter().find(|s| s.step == RemediationStep::Reboot).cloned() else { return p };
    let manual = p.ladder.iter().find(|s| s.step == RemediationStep::Manual).cloned();
    p.ladder = vec![reboot; SEED003_UNBOUNDED_REBOOTS];
    // Validation wants a ladder that ends; the person after 2,000 reboots is never reached.
    p.ladder.extend(manual);
    p
}

/// Seed 004 as seed 004 itself recommends running it: Node Health Check fed by node-problem-detector,
/// whose custom plugin runs the DCGM health check and sets the `GpuUnhealthy` condition. NHC's rule
/// for it has the same 300 s as its Ready rules; the rest (minHealthy 51 %, reboot, then a person)
/// is the `seed004` preset.
pub fn seed004_npd() -> Policy {
    let mut p = presets::seed004();
    p.rules.push(Rule {
        name: "gpu-unhealthy".into(),
        condition: Some(ConditionMatch { type_: NPD_GPU_CONDITION.into(), status: ConditionStatus::True, only_with_reasons: vec![] }),
        gpu_count: None,
        check: None,
        duration: Duration::from_secs(300),
        stale_after: None,
        effect: RuleEffect::default(),
    });
    p
}

/// nodemedic's recommended policy with the fault class ignored: every fault climbs the whole ladder, as it
/// did before the class chose the rung. Side by side with `nodemedic` it shows what the class is worth.
pub fn nodemedic_noclass() -> Policy {
    let mut p = presets::recommended();
    p.fault_classes = FaultClassRungs::class_blind();
    p
}

/// Every policy `simulate --compare` runs by default: the presets, then the NPD-fed seed 004 and the
/// class-blind nodemedic.
pub fn all() -> Vec<(&'static str, Policy)> {
    let mut all = presets::all();
    all.push(("seed004-npd", seed004_npd()));
    all.push(("nodemedic-noclass", nodemedic_noclass()));
    all
}

/// Baselines run only by name: `seed003-unbounded` reboots a node with a dead part every 45 minutes
/// until the run ends, which costs minutes of simulation on the default fleet and tells nothing a
/// single run does not (README, "What the simulator says").
pub fn by_name_only() -> Vec<(&'static str, Policy)> {
    vec![("seed003-unbounded", seed003_unbounded())]
}

/// A preset or baseline by name.
pub fn by_name(name: &str) -> Option<Policy> {
    all().into_iter().chain(by_name_only()).find(|(n, _)| *n == name).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_baseline_is_a_valid_policy() {
        for (name, p) in all().into_iter().chain(by_name_only()) {
            p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(by_name("seed003-unbounded").is_some() && by_name("seed004-npd").is_some() && by_name("nope").is_none());
    }

    #[test]
    fn unbounded_seed003_only_reboots_for_longer_than_a_default_run() {
        let p = seed003_unbounded();
        let reboots = p.ladder.iter().filter(|s| s.step == RemediationStep::Reboot).count();
        assert_eq!(reboots, SEED003_UNBOUNDED_REBOOTS);
        let gpu_wait = p.ladder[0].timeout_for(nodemedic_core::policy::GPU_NODE_CLASS);
        assert!(gpu_wait.0 * reboots as i64 > 55 * 24 * 3_600_000, "{gpu_wait:?}");
    }
}
