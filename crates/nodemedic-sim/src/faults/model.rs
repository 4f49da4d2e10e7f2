//! The fault model as a whole: its default (calibrated on published data, docs/fault-model.md) and
//! its validation.

use super::*;

/// Why a [`FaultModel`] or [`FleetSpec`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A rate or weight is negative, NaN or infinite.
    #[error("{field} must be a finite, non-negative number (got {value})")]
    NegativeOrNonFinite {
        /// Which field.
        field: String,
        /// The offending value.
        value: f64,
    },
    /// A probability is outside [0, 1].
    #[error("{field} must lie in [0, 1] (got {value})")]
    NotAProbability {
        /// Which field.
        field: String,
        /// The offending value.
        value: f64,
    },
    /// A cause's fix shares do not sum to 1.
    #[error("fix split of {cause} sums to {sum}, expected 1 (within 0.001)")]
    FixSplitNotNormalized {
        /// Which cause.
        cause: Cause,
        /// The sum found.
        sum: f64,
    },
    /// A cause has no symptom with a positive weight.
    #[error("symptom split of {cause} has no positive weight")]
    EmptySymptomSplit {
        /// Which cause.
        cause: Cause,
    },
    /// The unexpected rate is positive but no cause has a positive weight.
    #[error("unexpected_per_gpu_day is positive but no cause has a positive weight")]
    NoCauses,
    /// A cause appears twice in the cause table.
    #[error("cause {0} is listed more than once")]
    DuplicateCause(Cause),
    /// `FalsePositive` or `NetworkFlap` appears in the cause table.
    #[error("cause {0} has its own population and cannot be in the cause table")]
    ReservedCause(Cause),
    /// A duration distribution is malformed.
    #[error("duration {field}: {reason}")]
    BadDuration {
        /// Which field.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A rack with no nodes.
    #[error("rack_power.nodes_per_rack must be at least 1")]
    EmptyRack,
    /// The fleet is malformed.
    #[error("fleet: {0}")]
    BadFleet(&'static str),
}

/// The whole fault model: rates, splits, the extra populations and repair
/// durations. `FaultModel::default()` is the published-data model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultModel {
    /// Fleet-average unexpected interruptions per GPU-day:
    /// 419 / (16,384 GPUs x 54 days) by default.
    pub unexpected_per_gpu_day: f64,
    /// GPUs per node of the reference cluster the rate was measured on (8).
    /// Node-scoped causes get `unexpected_per_gpu_day x share x this` per
    /// node-day, so their rate does not change with `gpus_per_node`.
    pub reference_gpus_per_node: u8,
    /// Per-cause weight (Table 5 count), scope, symptom split and fix split.
    pub causes: Vec<CauseSpec>,
    /// How long an unexpected fault with `Fix::SelfClears` lasts.
    pub transient_self_clear: DurationDist,
    /// Lemon nodes.
    pub lemons: LemonSpec,
    /// Network flaps.
    pub flaps: FlapSpec,
    /// Probe false positives.
    pub false_positives: FalsePositiveSpec,
    /// Rack power events (off by default; absent from older model files).
    #[serde(default)]
    pub rack_power: RackPowerSpec,
    /// How likely a health probe is to see a fault, per symptom (absent from older model files:
    /// the default).
    #[serde(default)]
    pub probe_sensitivity: ProbeSensitivity,
    /// How long remedies take.
    pub repair: RepairDurations,
}

pub(super) fn cause_spec(cause: Cause, count: u32, scope: FaultScope, symptoms: &[(Symptom, f64)], fixes: FixSplit) -> CauseSpec {
    CauseSpec { cause, weight: f64::from(count), scope, symptoms: symptoms.to_vec(), fixes, hidden_from_probes: false }
}

impl Default for FaultModel {
    /// The published-data model (see `docs/fault-model.md`).
    fn default() -> Self {
        use Cause as C;
        use FaultScope::{Gpu as G, Node as N};
        use Symptom as S;
        // Fix splits are (self_clears, reboot, reimage, replace).
        let causes = vec![
            cause_spec(C::FaultyGpu, 148, G, &[(S::Gpu, 0.7), (S::GpuCount, 0.3)], FixSplit::new(0.0, 0.32, 0.0, 0.68)),
            cause_spec(C::Hbm3, 72, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.55, 0.0, 0.45)),
            cause_spec(C::SoftwareBug, 54, N, &[(S::Gpu, 0.4), (S::NodeNotReady, 0.6)], FixSplit::new(0.15, 0.50, 0.35, 0.0)),
            cause_spec(C::NetworkSwitchCable, 35, N, &[(S::Network, 1.0)], FixSplit::new(0.15, 0.10, 0.0, 0.75)),
            cause_spec(C::HostMaintenance, 32, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.45, 0.35, 0.20)),
            cause_spec(C::GpuSram, 19, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.60, 0.0, 0.40)),
            cause_spec(C::GpuSystemProcessor, 17, G, &[(S::Gpu, 0.6), (S::GpuCount, 0.4)], FixSplit::new(0.0, 0.85, 0.0, 0.15)),
            cause_spec(C::Nic, 7, N, &[(S::Network, 1.0)], FixSplit::new(0.0, 0.30, 0.0, 0.70)),
            cause_spec(C::NcclWatchdog, 7, N, &[(S::Network, 1.0)], FixSplit::new(0.50, 0.50, 0.0, 0.0)),
            CauseSpec {
                hidden_from_probes: true,
                ..cause_spec(C::SilentDataCorruption, 6, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0))
            },
            cause_spec(C::GpuThermal, 6, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.25, 0.0, 0.75)),
            cause_spec(C::Ssd, 3, N, &[(S::Disk, 1.0)], FixSplit::new(0.0, 0.0, 0.20, 0.80)),
            cause_spec(C::PowerSupply, 3, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0)),
            cause_spec(C::ServerChassis, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0)),
            cause_spec(C::IoExpansionBoard, 2, N, &[(S::GpuCount, 1.0)], FixSplit::new(0.0, 0.20, 0.0, 0.80)),
            cause_spec(C::Dependency, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.70, 0.30, 0.0, 0.0)),
            cause_spec(C::Cpu, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.20, 0.0, 0.80)),
            cause_spec(C::SystemMemory, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.30, 0.0, 0.70)),
        ];
        Self {
            unexpected_per_gpu_day: f64::from(LLAMA3_UNEXPECTED_INTERRUPTIONS) / (f64::from(LLAMA3_GPUS) * f64::from(LLAMA3_DAYS)),
            reference_gpus_per_node: LLAMA3_GPUS_PER_NODE,
            causes,
            transient_self_clear: DurationDist::lognormal(10 * MS_PER_MINUTE, 1.0, MS_PER_MINUTE, 6 * MS_PER_HOUR),
            lemons: LemonSpec { node_fraction: 0.01, rate_multiplier: 10.0, recurrence_probability: 0.7 },
            flaps: FlapSpec {
                episodes_per_node_day: 0.002,
                mean_flaps_per_episode: 4.0,
                flap_duration: DurationDist::lognormal(2 * MS_PER_MINUTE, 0.7, 10 * MS_PER_SECOND, 30 * MS_PER_MINUTE),
                gap: DurationDist::lognormal(10 * MS_PER_MINUTE, 0.8, 30 * MS_PER_SECOND, 2 * MS_PER_HOUR),
            },
            false_positives: FalsePositiveSpec {
                per_node_day: 0.005,
                gpu_share: 0.6,
                self_clear: DurationDist::lognormal(90 * MS_PER_SECOND, 0.7, 10 * MS_PER_SECOND, 15 * MS_PER_MINUTE),
            },
            rack_power: RackPowerSpec::default(),
            probe_sensitivity: ProbeSensitivity::default(),
            repair: RepairDurations::default(),
        }
    }
}

impl FaultModel {
    /// The spec of one cause, if it is in the table.
    pub fn cause_spec(&self, cause: Cause) -> Option<&CauseSpec> {
        self.causes.iter().find(|c| c.cause == cause)
    }

    /// Per-node rate of each cause in the table, in faults per node-day, for
    /// an average node of `fleet` (lemons not yet taken into account; they
    /// redistribute this rate between nodes without changing the fleet total).
    pub fn cause_rates_per_node_day(&self, fleet: &FleetSpec) -> Vec<(Cause, f64)> {
        let total_weight: f64 = self.causes.iter().map(|c| sane(c.weight)).sum();
        if total_weight <= 0.0 {
            return self.causes.iter().map(|c| (c.cause, 0.0)).collect();
        }
        let base = sane(self.unexpected_per_gpu_day);
        self.causes
            .iter()
            .map(|c| {
                let gpus = match c.scope {
                    FaultScope::Gpu => fleet.gpus_per_node,
                    FaultScope::Node => self.reference_gpus_per_node,
                };
                let rate = base * sane(c.weight) / total_weight * f64::from(gpus);
                (c.cause, rate)
            })
            .collect()
    }

    /// Expected number of unexpected interruptions over the whole run
    /// (exactly 419 for the default model on the default fleet).
    pub fn expected_unexpected(&self, fleet: &FleetSpec) -> f64 {
        let per_node_day: f64 = self.cause_rates_per_node_day(fleet).iter().map(|(_, r)| r).sum();
        per_node_day * fleet.node_days()
    }

    /// Expected share of each cause among unexpected interruptions on `fleet`
    /// (the Table 5 split when `gpus_per_node` equals the reference).
    pub fn expected_cause_shares(&self, fleet: &FleetSpec) -> Vec<(Cause, f64)> {
        let rates = self.cause_rates_per_node_day(fleet);
        let total: f64 = rates.iter().map(|(_, r)| r).sum();
        rates.into_iter().map(|(c, r)| (c, if total > 0.0 { r / total } else { 0.0 })).collect()
    }

    /// Expected number of flap episodes over the run (each has >= 1 flap).
    pub fn expected_flap_episodes(&self, fleet: &FleetSpec) -> f64 {
        sane(self.flaps.episodes_per_node_day) * fleet.node_days()
    }

    /// Expected number of probe false positives over the run.
    pub fn expected_false_positives(&self, fleet: &FleetSpec) -> f64 {
        sane(self.false_positives.per_node_day) * fleet.node_days()
    }

    /// Check the model: rates and weights finite and non-negative,
    /// probabilities in [0, 1], every fix split summing to 1, every cause with
    /// a usable symptom split, no duplicate or reserved causes, durations sane.
    pub fn validate(&self) -> Result<(), ModelError> {
        non_negative("unexpected_per_gpu_day", self.unexpected_per_gpu_day)?;
        let mut seen: Vec<Cause> = Vec::with_capacity(self.causes.len());
        for spec in &self.causes {
            if !spec.cause.is_unexpected_interruption() {
                return Err(ModelError::ReservedCause(spec.cause));
            }
            if seen.contains(&spec.cause) {
                return Err(ModelError::DuplicateCause(spec.cause));
            }
            seen.push(spec.cause);
            non_negative(&format!("causes[{}].weight", spec.cause), spec.weight)?;
            for (symptom, w) in &spec.symptoms {
                non_negative(&format!("causes[{}].symptoms[{symptom:?}]", spec.cause), *w)?;
            }
            if !spec.symptoms.iter().any(|(_, w)| *w > 0.0) {
                return Err(ModelError::EmptySymptomSplit { cause: spec.cause });
            }
            for fix in [Fix::SelfClears, Fix::Reboot, Fix::Reimage, Fix::Replace] {
                probability(&format!("causes[{}].fixes.{fix:?}", spec.cause), spec.fixes.share(fix))?;
            }
            let sum = spec.fixes.total();
            if (sum - 1.0).abs() > 1e-3 {
                return Err(ModelError::FixSplitNotNormalized { cause: spec.cause, sum });
            }
        }
        if self.unexpected_per_gpu_day > 0.0 && !self.causes.iter().any(|c| c.weight > 0.0) {
            return Err(ModelError::NoCauses);
        }
        self.transient_self_clear.check("transient_self_clear")?;
        probability("lemons.node_fraction", self.lemons.node_fraction)?;
        non_negative("lemons.rate_multiplier", self.lemons.rate_multiplier)?;
        probability("lemons.recurrence_probability", self.lemons.recurrence_probability)?;
        non_negative("flaps.episodes_per_node_day", self.flaps.episodes_per_node_day)?;
        non_negative("flaps.mean_flaps_per_episode", self.flaps.mean_flaps_per_episode)?;
        self.flaps.flap_duration.check("flaps.flap_duration")?;
        self.flaps.gap.check("flaps.gap")?;
        non_negative("false_positives.per_node_day", self.false_positives.per_node_day)?;
        probability("false_positives.gpu_share", self.false_positives.gpu_share)?;
        self.false_positives.self_clear.check("false_positives.self_clear")?;
        non_negative("rack_power.per_rack_day", self.rack_power.per_rack_day)?;
        if self.rack_power.nodes_per_rack == 0 {
            return Err(ModelError::EmptyRack);
        }
        if self.rack_power.spread_ms < 0 {
            return Err(ModelError::BadDuration { field: "rack_power.spread_ms".into(), reason: "durations must not be negative" });
        }
        self.rack_power.outage.check("rack_power.outage")?;
        self.repair.gpu_node_reboot.check("repair.gpu_node_reboot")?;
        self.repair.cpu_node_reboot.check("repair.cpu_node_reboot")?;
        self.repair.reimage.check("repair.reimage")?;
        self.repair.replace.check("repair.replace")?;
        self.repair.replace_lead.check("repair.replace_lead")?;
        probability("probe_sensitivity.gpu", self.probe_sensitivity.gpu)?;
        probability("probe_sensitivity.network", self.probe_sensitivity.network)?;
        self.repair.manual_response.check("repair.manual_response")?;
        Ok(())
    }
}

pub(super) fn non_negative(field: &str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(ModelError::NegativeOrNonFinite { field: field.to_owned(), value }) }
}

pub(super) fn probability(field: &str, value: f64) -> Result<(), ModelError> {
    if (0.0..=1.0).contains(&value) { Ok(()) } else { Err(ModelError::NotAProbability { field: field.to_owned(), value }) }
}

/// A weight or rate made safe: NaN, infinities and negatives become 0.
pub(super) fn sane(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}
