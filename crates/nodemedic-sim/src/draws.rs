//! Common random numbers: everything random about one fault is drawn up front, from a stream that
//! depends only on the seed and the fault's id (`faults::fault_rng`). Two policies simulated over
//! the same seed therefore face the same faults with the same durations: how long a reboot of that
//! node takes, how long a person takes to respond, whether the probe sees it. Only what the
//! policies do differs, so a difference in their results is the policies', not the dice's.

use crate::faults::{Fault, FaultModel, NodeClass, RepairKind, fault_rng};
use rand::Rng;

/// After a lemon node is replaced, each later fault generated for it is dropped with this
/// probability: the new machine does not carry the old one's latent defect.
pub const REPLACEMENT_CURES_LEMON: f64 = 0.9;

/// The durations and coin flips of one fault, drawn before any policy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultDraws {
    /// The node agent's probe sees this fault (always true for symptoms no probe is needed for).
    pub probe_visible: bool,
    /// How long people take to start work on it: after automation escalates it, or after it
    /// starts, for a fault automation never acts on.
    pub response_ms: i64,
    /// A reboot of its node (node class of the fleet).
    pub reboot_ms: i64,
    /// A reimage of its node (a reboot is added on top).
    pub reimage_ms: i64,
    /// Lead time of a replacement asked for because of it.
    pub replace_lead_ms: i64,
    /// The hands-on replacement.
    pub replace_ms: i64,
    /// On a lemon node that was already replaced, this fault does not happen.
    pub cured_by_replacement: bool,
}

impl FaultDraws {
    /// The draws of `fault` in the run with `seed`: the same for every policy.
    pub fn for_fault(model: &FaultModel, fault: &Fault, class: NodeClass, seed: u64) -> FaultDraws {
        let mut rng = fault_rng(seed, fault.id);
        let hidden = model.cause_spec(fault.cause).is_some_and(|c| c.hidden_from_probes);
        let sensitivity = model.probe_sensitivity.of(fault.symptom).clamp(0.0, 1.0);
        // Always draw, so that a change of sensitivity does not shift the other draws.
        let seen: f64 = rng.random();
        let repair = &model.repair;
        FaultDraws {
            probe_visible: !hidden && seen < sensitivity,
            response_ms: repair.sample(RepairKind::Manual, class, &mut rng),
            reboot_ms: repair.sample(RepairKind::Reboot, class, &mut rng),
            reimage_ms: repair.sample(RepairKind::Reimage, class, &mut rng),
            replace_lead_ms: repair.replace_lead.sample(&mut rng),
            replace_ms: repair.sample(RepairKind::Replace, class, &mut rng),
            cured_by_replacement: rng.random::<f64>() < REPLACEMENT_CURES_LEMON,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FleetSpec, generate};

    #[test]
    fn a_faults_draws_depend_on_the_seed_and_the_fault_alone() {
        let model = FaultModel::default();
        let faults = generate(&model, &FleetSpec::default(), 3);
        let once: Vec<FaultDraws> = faults.iter().map(|f| FaultDraws::for_fault(&model, f, NodeClass::Gpu, 3)).collect();
        let again: Vec<FaultDraws> = faults.iter().rev().map(|f| FaultDraws::for_fault(&model, f, NodeClass::Gpu, 3)).collect();
        assert_eq!(once, again.into_iter().rev().collect::<Vec<_>>(), "order of asking changes nothing");
        let other_seed = FaultDraws::for_fault(&model, &faults[0], NodeClass::Gpu, 4);
        assert_ne!(once[0], other_seed);
    }

    #[test]
    fn silent_data_corruption_is_never_seen_by_a_probe_and_sensitivity_sets_the_share_seen() {
        let model = FaultModel::default();
        let faults = generate(&model, &FleetSpec { duration_ms: 540 * crate::faults::MS_PER_DAY, ..FleetSpec::default() }, 5);
        let draws = |cause: crate::faults::Cause| -> Vec<bool> {
            faults.iter().filter(|f| f.cause == cause).map(|f| FaultDraws::for_fault(&model, f, NodeClass::Gpu, 5).probe_visible).collect()
        };
        let sdc = draws(crate::faults::Cause::SilentDataCorruption);
        assert!(!sdc.is_empty() && sdc.iter().all(|seen| !seen), "{} SDC faults", sdc.len());
        let hbm = draws(crate::faults::Cause::Hbm3);
        let share = hbm.iter().filter(|s| **s).count() as f64 / hbm.len() as f64;
        assert!(hbm.len() > 300 && (share - 0.9).abs() < 0.05, "{share} of {}", hbm.len());
        // Missing GPUs are counted by the device plugin, not probed: always seen.
        assert!(
            faults
                .iter()
                .filter(|f| f.symptom == crate::faults::Symptom::GpuCount)
                .all(|f| { FaultDraws::for_fault(&model, f, NodeClass::Gpu, 5).probe_visible })
        );
    }
}
