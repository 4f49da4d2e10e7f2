//! Turning a model into faults: independent random streams per population, Poisson arrivals, lemon
//! nodes, and the four populations.

use super::*;

/// A discrete distribution over indices, by cumulative weights.
pub(super) struct Categorical {
    cumulative: Vec<f64>,
    last_positive: Option<usize>,
}

impl Categorical {
    pub(super) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut cumulative = Vec::new();
        let mut last_positive = None;
        let mut acc = 0.0;
        for (i, w) in weights.into_iter().enumerate() {
            let w = sane(w);
            if w > 0.0 {
                last_positive = Some(i);
            }
            acc += w;
            cumulative.push(acc);
        }
        Self { cumulative, last_positive }
    }

    pub(super) fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// An index with probability proportional to its weight; `None` if all
    /// weights are zero. Zero-weight indices are never returned.
    pub(super) fn sample(&self, rng: &mut impl Rng) -> Option<usize> {
        let last = self.last_positive?;
        let x = rng.random::<f64>() * self.total();
        let i = self.cumulative.partition_point(|c| *c <= x);
        Some(i.min(last))
    }
}

/// Independent random streams, so that changing one population does not
/// reshuffle the others.
pub(super) mod stream {
    pub const LEMONS: u64 = 1;
    pub const UNEXPECTED: u64 = 2;
    pub const FLAPS: u64 = 3;
    pub const FALSE_POSITIVES: u64 = 4;
    pub const RACK_POWER: u64 = 5;
    /// Per-fault draws use streams `DRAWS + fault id`.
    pub const DRAWS: u64 = 1 << 32;
}

/// The random stream of one fault's own draws ([`FaultDraws`]): a function of the seed and the fault
/// id only, so every policy run over the same seed draws the same numbers for the same fault.
pub(crate) fn fault_rng(seed: u64, fault_id: u32) -> ChaCha8Rng {
    rng_for(seed, stream::DRAWS + u64::from(fault_id))
}

pub(super) fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Poisson arrivals: successive times `t` in `[0, duration_ms)` with
/// exponential gaps of mean `1 / rate_per_ms`.
pub(super) struct Arrivals {
    t: f64,
    rate_per_ms: f64,
    end: f64,
}

impl Arrivals {
    fn new(rate_per_day: f64, duration_ms: i64) -> Self {
        Self { t: 0.0, rate_per_ms: sane(rate_per_day) / MS_PER_DAY as f64, end: duration_ms.max(0) as f64 }
    }

    fn next(&mut self, rng: &mut impl Rng) -> Option<i64> {
        if self.rate_per_ms <= 0.0 {
            return None;
        }
        let gap: f64 = rng.sample(Exp1);
        self.t += gap / self.rate_per_ms;
        if self.t < self.end { Some(self.t as i64) } else { None }
    }
}

/// The lemon nodes of a run, with each lemon's recurring defect.
pub(super) struct Lemons {
    /// Lemon node ids, ascending.
    nodes: Vec<u32>,
    /// The recurring defect of `nodes[i]`: cause-table index and GPU.
    defects: Vec<Option<(usize, Option<u8>)>>,
    /// Non-lemon node ids, ascending.
    normal: Vec<u32>,
}

pub(super) fn lemon_count(model: &FaultModel, fleet: &FleetSpec) -> u32 {
    let fraction = sane(model.lemons.node_fraction).min(1.0);
    let count = (f64::from(fleet.nodes) * fraction).round();
    (count as u32).min(fleet.nodes)
}

pub(super) fn pick_lemons(model: &FaultModel, fleet: &FleetSpec, causes: &Categorical, seed: u64) -> Lemons {
    let mut rng = rng_for(seed, stream::LEMONS);
    let count = lemon_count(model, fleet);
    let mut nodes: Vec<u32> =
        rand::seq::index::sample(&mut rng, fleet.nodes as usize, count as usize).into_iter().map(|i| i as u32).collect();
    nodes.sort_unstable();
    let defects = nodes
        .iter()
        .map(|_| {
            causes.sample(&mut rng).map(|idx| {
                let gpu = model.causes.get(idx).and_then(|spec| pick_gpu(spec.scope, fleet, &mut rng));
                (idx, gpu)
            })
        })
        .collect();
    let mut normal = Vec::with_capacity((fleet.nodes - count) as usize);
    let mut lemon_iter = nodes.iter().peekable();
    for n in 0..fleet.nodes {
        if lemon_iter.peek() == Some(&&n) {
            lemon_iter.next();
        } else {
            normal.push(n);
        }
    }
    Lemons { nodes, defects, normal }
}

pub(super) fn pick_gpu(scope: FaultScope, fleet: &FleetSpec, rng: &mut impl Rng) -> Option<u8> {
    match scope {
        FaultScope::Gpu if fleet.gpus_per_node > 0 => Some(rng.random_range(0..fleet.gpus_per_node)),
        _ => None,
    }
}

/// The lemon nodes `generate` uses for this model, fleet and seed, ascending.
pub fn lemon_nodes(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Vec<u32> {
    let rates = model.cause_rates_per_node_day(fleet);
    let causes = Categorical::new(rates.iter().map(|(_, r)| *r));
    pick_lemons(model, fleet, &causes, seed).nodes
}

/// Generate every fault of a run: deterministic for a seed, sorted by
/// `start_ms` then `id` (ids are `0..len` in that order).
///
/// `generate` never panics: invalid numbers in the model (negative or NaN
/// rates and weights) are treated as zero. Call [`FaultModel::validate`] or
/// use [`try_generate`] to reject such a model instead.
pub fn generate(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Vec<Fault> {
    let mut faults = Vec::new();
    if fleet.nodes == 0 || fleet.duration_ms <= 0 {
        return faults;
    }
    generate_unexpected(model, fleet, seed, &mut faults);
    generate_flaps(model, fleet, seed, &mut faults);
    generate_false_positives(model, fleet, seed, &mut faults);
    generate_rack_power_events(model, fleet, seed, &mut faults);
    // Stable: ties keep population order, then generation order.
    faults.sort_by_key(|f| f.start_ms);
    for (i, fault) in faults.iter_mut().enumerate() {
        fault.id = u32::try_from(i).unwrap_or(u32::MAX);
    }
    faults
}

/// [`generate`] after validating the model and the fleet.
pub fn try_generate(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Result<Vec<Fault>, ModelError> {
    model.validate()?;
    if fleet.duration_ms < 0 {
        return Err(ModelError::BadFleet("duration_ms must not be negative"));
    }
    Ok(generate(model, fleet, seed))
}

pub(super) fn generate_unexpected(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let rates = model.cause_rates_per_node_day(fleet);
    let causes = Categorical::new(rates.iter().map(|(_, r)| *r));
    let per_node_day = causes.total();
    let lemons = pick_lemons(model, fleet, &causes, seed);
    let mut rng = rng_for(seed, stream::UNEXPECTED);

    // Lemons redistribute the fleet rate: a lemon weighs `multiplier`, a
    // normal node 1, and the fleet total stays `nodes x per_node_day`.
    let multiplier = sane(model.lemons.rate_multiplier);
    let lemon_weight = lemons.nodes.len() as f64 * multiplier;
    let normal_weight = lemons.normal.len() as f64;
    let total_weight = lemon_weight + normal_weight;
    if total_weight <= 0.0 {
        return;
    }
    let p_lemon = lemon_weight / total_weight;
    let recurrence = sane(model.lemons.recurrence_probability).min(1.0);

    let mut arrivals = Arrivals::new(per_node_day * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(start_ms) = arrivals.next(&mut rng) {
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
        let on_lemon = !lemons.nodes.is_empty() && rng.random::<f64>() < p_lemon;
        let (node, recurring) = if on_lemon || lemons.normal.is_empty() {
            let i = rng.random_range(0..lemons.nodes.len());
            let defect = lemons.defects.get(i).copied().flatten();
            let recurring = match defect {
                Some(d) if rng.random::<f64>() < recurrence => Some(d),
                _ => None,
            };
            (lemons.nodes.get(i).copied().unwrap_or(0), recurring)
        } else {
            let i = rng.random_range(0..lemons.normal.len());
            (lemons.normal.get(i).copied().unwrap_or(0), None)
        };
        let (idx, gpu) = match recurring {
            Some(defect) => defect,
            None => {
                let Some(idx) = causes.sample(&mut rng) else {
                    break;
                };
                let gpu = model.causes.get(idx).and_then(|spec| pick_gpu(spec.scope, fleet, &mut rng));
                (idx, gpu)
            }
        };
        let Some(spec) = model.causes.get(idx) else {
            break;
        };
        let symptom = match spec.sample_symptom(&mut rng) {
            // A CPU-only fleet has no GPU probe to fail.
            Symptom::Gpu | Symptom::GpuCount if fleet.gpus_per_node == 0 => Symptom::NodeNotReady,
            symptom => symptom,
        };
        let fix = spec.fixes.sample(&mut rng);
        let self_clear_after_ms = match fix {
            Fix::SelfClears => Some(model.transient_self_clear.sample(&mut rng).max(1)),
            _ => None,
        };
        out.push(Fault { id: 0, node, gpu, start_ms, cause: spec.cause, symptom, fix, self_clear_after_ms, false_positive: false });
        produced += 1;
    }
}

pub(super) fn generate_flaps(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.flaps;
    let mut rng = rng_for(seed, stream::FLAPS);
    let mean = sane(spec.mean_flaps_per_episode);
    // Geometric number of flaps with mean `mean` (at least one).
    let continue_p = if mean > 1.0 { 1.0 - 1.0 / mean } else { 0.0 };
    let mut arrivals = Arrivals::new(sane(spec.episodes_per_node_day) * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(episode_start) = arrivals.next(&mut rng) {
        let node = rng.random_range(0..fleet.nodes);
        let mut start_ms = episode_start;
        for _ in 0..MAX_FLAPS_PER_EPISODE {
            if start_ms >= fleet.duration_ms || produced >= MAX_FAULTS_PER_POPULATION {
                break;
            }
            let lasts = spec.flap_duration.sample(&mut rng).max(1);
            out.push(Fault {
                id: 0,
                node,
                gpu: None,
                start_ms,
                cause: Cause::NetworkFlap,
                symptom: Symptom::Network,
                fix: Fix::SelfClears,
                self_clear_after_ms: Some(lasts),
                false_positive: false,
            });
            produced += 1;
            if rng.random::<f64>() >= continue_p {
                break;
            }
            start_ms = start_ms.saturating_add(lasts).saturating_add(spec.gap.sample(&mut rng).max(1));
        }
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
    }
}

pub(super) fn generate_false_positives(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.false_positives;
    let mut rng = rng_for(seed, stream::FALSE_POSITIVES);
    let gpu_share = sane(spec.gpu_share).min(1.0);
    let mut arrivals = Arrivals::new(sane(spec.per_node_day) * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(start_ms) = arrivals.next(&mut rng) {
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
        let node = rng.random_range(0..fleet.nodes);
        let on_gpu = fleet.gpus_per_node > 0 && rng.random::<f64>() < gpu_share;
        let (symptom, gpu) = if on_gpu { (Symptom::Gpu, Some(rng.random_range(0..fleet.gpus_per_node))) } else { (Symptom::Network, None) };
        out.push(Fault {
            id: 0,
            node,
            gpu,
            start_ms,
            cause: Cause::FalsePositive,
            symptom,
            fix: Fix::SelfClears,
            self_clear_after_ms: Some(spec.self_clear.sample(&mut rng).max(1)),
            false_positive: true,
        });
        produced += 1;
    }
}

pub(super) fn generate_rack_power_events(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.rack_power;
    let per_rack = spec.nodes_per_rack.max(1);
    let racks = fleet.nodes.div_ceil(per_rack);
    let mut rng = rng_for(seed, stream::RACK_POWER);
    let mut arrivals = Arrivals::new(sane(spec.per_rack_day) * f64::from(racks), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(event_ms) = arrivals.next(&mut rng) {
        let rack = rng.random_range(0..racks);
        let outage = spec.outage.sample(&mut rng).max(1);
        let first = rack * per_rack;
        for node in first..(first + per_rack).min(fleet.nodes) {
            if produced >= MAX_FAULTS_PER_POPULATION {
                return;
            }
            let offset = if spec.spread_ms > 0 { rng.random_range(0..spec.spread_ms) } else { 0 };
            let start_ms = event_ms.saturating_add(offset);
            if start_ms >= fleet.duration_ms {
                continue;
            }
            out.push(Fault {
                id: 0,
                node,
                gpu: None,
                start_ms,
                cause: Cause::RackPower,
                symptom: Symptom::NodeNotReady,
                fix: Fix::SelfClears,
                self_clear_after_ms: Some(outage),
                false_positive: false,
            });
            produced += 1;
        }
    }
}
