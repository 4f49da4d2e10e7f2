use super::*;
use std::collections::{BTreeMap, HashMap};

const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn unexpected(faults: &[Fault]) -> impl Iterator<Item = &Fault> {
    faults.iter().filter(|f| f.is_unexpected_interruption())
}

#[test]
fn the_same_seed_yields_identical_faults() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    assert_eq!(generate(&model, &fleet, 42), generate(&model, &fleet, 42));
}

#[test]
fn different_seeds_yield_different_faults() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    assert_ne!(generate(&model, &fleet, 1), generate(&model, &fleet, 2));
}

#[test]
fn the_default_model_expects_exactly_419_unexpected_interruptions_on_the_default_fleet() {
    let expected = FaultModel::default().expected_unexpected(&FleetSpec::default());
    assert!((expected - 419.0).abs() < 1e-6, "expected {expected}");
}

#[test]
fn the_default_fleet_averages_close_to_419_unexpected_interruptions() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    let total: usize = SEEDS.iter().map(|s| unexpected(&generate(&model, &fleet, *s)).count()).sum();
    let mean = total as f64 / SEEDS.len() as f64;
    assert!((mean - 419.0).abs() <= 41.9, "mean unexpected interruptions {mean}, want 419 +- 10%");
}

#[test]
fn the_cause_split_matches_llama3_table5() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    let table5: [(Cause, u32); 18] = [
        (Cause::FaultyGpu, 148),
        (Cause::Hbm3, 72),
        (Cause::SoftwareBug, 54),
        (Cause::NetworkSwitchCable, 35),
        (Cause::HostMaintenance, 32),
        (Cause::GpuSram, 19),
        (Cause::GpuSystemProcessor, 17),
        (Cause::Nic, 7),
        (Cause::NcclWatchdog, 7),
        (Cause::SilentDataCorruption, 6),
        (Cause::GpuThermal, 6),
        (Cause::Ssd, 3),
        (Cause::PowerSupply, 3),
        (Cause::ServerChassis, 2),
        (Cause::IoExpansionBoard, 2),
        (Cause::Dependency, 2),
        (Cause::Cpu, 2),
        (Cause::SystemMemory, 2),
    ];
    assert_eq!(table5.iter().map(|(_, n)| n).sum::<u32>(), 419);

    // The analytic split is exactly Table 5 on an 8-GPU fleet.
    let shares: HashMap<Cause, f64> = model.expected_cause_shares(&fleet).into_iter().collect();
    for (cause, count) in table5 {
        let want = f64::from(count) / 419.0;
        let got = shares.get(&cause).copied().unwrap_or(0.0);
        assert!((got - want).abs() < 1e-9, "{cause}: {got} vs {want}");
    }

    // The generated split, pooled over seeds, is close to it.
    let mut counts: HashMap<Cause, usize> = HashMap::new();
    let mut total = 0usize;
    for seed in SEEDS {
        for f in unexpected(&generate(&model, &fleet, seed)) {
            *counts.entry(f.cause).or_default() += 1;
            total += 1;
        }
    }
    for (cause, count) in table5 {
        let want = f64::from(count) / 419.0;
        let got = counts.get(&cause).copied().unwrap_or(0) as f64 / total as f64;
        assert!((got - want).abs() < 0.025, "{cause}: generated share {got:.3}, Table 5 share {want:.3}");
    }
}

#[test]
fn lemon_nodes_get_more_faults_than_average() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    let (mut lemon_faults, mut lemon_nodes_seen) = (0usize, 0usize);
    let (mut other_faults, mut other_nodes_seen) = (0usize, 0usize);
    for seed in SEEDS {
        let lemons = lemon_nodes(&model, &fleet, seed);
        assert_eq!(lemons.len(), 20, "1% of 2048 nodes, rounded");
        let faults = generate(&model, &fleet, seed);
        let on_lemons = unexpected(&faults).filter(|f| lemons.binary_search(&f.node).is_ok()).count();
        lemon_faults += on_lemons;
        lemon_nodes_seen += lemons.len();
        other_faults += unexpected(&faults).count() - on_lemons;
        other_nodes_seen += fleet.nodes as usize - lemons.len();
    }
    let lemon_mean = lemon_faults as f64 / lemon_nodes_seen as f64;
    let other_mean = other_faults as f64 / other_nodes_seen as f64;
    assert!(lemon_mean > 5.0 * other_mean, "lemon mean {lemon_mean:.3} vs normal mean {other_mean:.3}");
}

#[test]
fn lemon_faults_mostly_recur_with_the_same_cause_and_gpu() {
    let model = FaultModel::default();
    let fleet = FleetSpec { duration_ms: 540 * MS_PER_DAY, ..FleetSpec::default() };
    let lemons = lemon_nodes(&model, &fleet, 9);
    let faults = generate(&model, &fleet, 9);
    let (mut modal, mut total) = (0usize, 0usize);
    for node in &lemons {
        let mut per_defect: BTreeMap<(Cause, Option<u8>), usize> = BTreeMap::new();
        for f in unexpected(&faults).filter(|f| f.node == *node) {
            *per_defect.entry((f.cause, f.gpu)).or_default() += 1;
        }
        modal += per_defect.values().max().copied().unwrap_or(0);
        total += per_defect.values().sum::<usize>();
    }
    assert!(total > 100, "lemon faults {total}");
    let share = modal as f64 / total as f64;
    assert!(share > 0.6, "recurring share {share:.2}");
}

#[test]
fn false_positives_self_clear_and_are_flagged() {
    let faults = generate(&FaultModel::default(), &FleetSpec::default(), 7);
    let fps: Vec<&Fault> = faults.iter().filter(|f| f.false_positive).collect();
    assert!(!fps.is_empty());
    for f in &fps {
        assert_eq!(f.cause, Cause::FalsePositive);
        assert_eq!(f.fix, Fix::SelfClears);
        assert!(matches!(f.symptom, Symptom::Gpu | Symptom::Network));
        assert_eq!(f.gpu.is_some(), f.symptom == Symptom::Gpu);
        let clears = f.self_clear_after_ms.unwrap_or(0);
        assert!((10 * MS_PER_SECOND..=15 * MS_PER_MINUTE).contains(&clears));
    }
    assert!(faults.iter().filter(|f| f.cause == Cause::FalsePositive).all(|f| f.false_positive));
}

#[test]
fn network_flaps_are_self_clearing_network_faults_that_come_in_bursts() {
    let faults = generate(&FaultModel::default(), &FleetSpec::default(), 11);
    let flaps: Vec<&Fault> = faults.iter().filter(|f| f.cause == Cause::NetworkFlap).collect();
    assert!(!flaps.is_empty());
    for f in &flaps {
        assert_eq!(f.symptom, Symptom::Network);
        assert_eq!(f.fix, Fix::SelfClears);
        assert!(!f.false_positive);
        assert!(f.self_clear_after_ms.is_some_and(|ms| ms > 0));
    }
    let mut nodes: Vec<u32> = flaps.iter().map(|f| f.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert!(flaps.len() as f64 > 2.0 * nodes.len() as f64, "{} flaps on {} nodes", flaps.len(), nodes.len());
}

#[test]
fn faults_are_sorted_with_sequential_ids_and_stay_in_range() {
    let model = FaultModel::default();
    let fleet = FleetSpec::default();
    let faults = generate(&model, &fleet, 3);
    for (i, f) in faults.iter().enumerate() {
        assert_eq!(f.id as usize, i);
        assert!(f.node < fleet.nodes);
        assert!((0..fleet.duration_ms).contains(&f.start_ms));
        assert!(f.gpu.is_none_or(|g| g < fleet.gpus_per_node));
        assert_eq!(f.self_clear_after_ms.is_some(), f.fix == Fix::SelfClears);
        if let Some(spec) = model.cause_spec(f.cause) {
            assert_eq!(f.gpu.is_some(), spec.scope == FaultScope::Gpu);
        }
    }
    assert!(faults.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
}

#[test]
fn rack_power_events_are_off_by_default() {
    assert_eq!(FaultModel::default().rack_power.per_rack_day, 0.0);
    let faults = generate(&FaultModel::default(), &FleetSpec::default(), 1);
    assert!(faults.iter().all(|f| f.cause != Cause::RackPower));
}

#[test]
fn a_rack_power_event_takes_down_every_node_of_one_rack_within_the_spread_for_one_outage() {
    let mut model = FaultModel { unexpected_per_gpu_day: 0.0, ..FaultModel::default() };
    model.flaps.episodes_per_node_day = 0.0;
    model.false_positives.per_node_day = 0.0;
    model.rack_power = RackPowerSpec { per_rack_day: 0.05, nodes_per_rack: 16, ..RackPowerSpec::default() };
    let fleet = FleetSpec { nodes: 256, gpus_per_node: 8, duration_ms: 30 * MS_PER_DAY };
    let faults = generate(&model, &fleet, 4);
    assert!(faults.len() >= 32, "{} rack power faults", faults.len());
    // An event's faults all start within the one-minute spread of each other; events are rare
    // enough here that two never start within a minute on the same rack.
    let mut events: Vec<(u32, i64, Vec<&Fault>)> = Vec::new();
    for f in &faults {
        assert_eq!(
            (f.cause, f.symptom, f.fix, f.false_positive, f.gpu),
            (Cause::RackPower, Symptom::NodeNotReady, Fix::SelfClears, false, None)
        );
        let rack = f.node / 16;
        match events.iter_mut().rev().find(|(r, first, _)| *r == rack && f.start_ms - first < MS_PER_MINUTE) {
            Some((_, _, group)) => group.push(f),
            None => events.push((rack, f.start_ms, vec![f])),
        }
    }
    for (rack, _, group) in &events {
        let mut nodes: Vec<u32> = group.iter().map(|f| f.node).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, (rack * 16..rack * 16 + 16).collect::<Vec<_>>(), "the whole rack, once");
        assert!(group.iter().all(|f| f.self_clear_after_ms == group[0].self_clear_after_ms), "one outage per event");
    }
    assert_eq!(model.validate(), Ok(()));
    model.rack_power.nodes_per_rack = 0;
    assert_eq!(model.validate(), Err(ModelError::EmptyRack));
}

#[test]
fn the_default_model_is_valid_and_its_fix_splits_sum_to_one() {
    let model = FaultModel::default();
    assert_eq!(model.validate(), Ok(()));
    assert_eq!(model.causes.len(), 18);
}

#[test]
fn validation_rejects_negative_rates_and_unnormalised_fix_splits() {
    let model = FaultModel { unexpected_per_gpu_day: -1.0, ..FaultModel::default() };
    assert!(matches!(model.validate(), Err(ModelError::NegativeOrNonFinite { .. })));

    let mut model = FaultModel::default();
    model.causes[0].fixes = FixSplit::new(0.5, 0.5, 0.5, 0.0);
    assert!(matches!(model.validate(), Err(ModelError::FixSplitNotNormalized { cause: Cause::FaultyGpu, .. })));

    let mut model = FaultModel::default();
    model.lemons.node_fraction = 1.5;
    assert!(matches!(model.validate(), Err(ModelError::NotAProbability { .. })));
    assert!(try_generate(&model, &FleetSpec::default(), 1).is_err());
    // generate itself never panics on a bad model.
    let _ = generate(&model, &FleetSpec::default(), 1);
}

#[test]
fn an_empty_fleet_or_run_has_no_faults() {
    let model = FaultModel::default();
    let no_nodes = FleetSpec { nodes: 0, ..FleetSpec::default() };
    let no_time = FleetSpec { duration_ms: 0, ..FleetSpec::default() };
    assert!(generate(&model, &no_nodes, 1).is_empty());
    assert!(generate(&model, &no_time, 1).is_empty());
}

#[test]
fn gpu_scoped_rates_scale_with_gpus_per_node_and_node_scoped_rates_do_not() {
    let model = FaultModel::default();
    let eight = FleetSpec::default();
    let cpu_only = FleetSpec { gpus_per_node: 0, ..FleetSpec::default() };
    // 268 of 419 Table 5 interruptions are GPU components.
    let ratio = model.expected_unexpected(&cpu_only) / model.expected_unexpected(&eight);
    assert!((ratio - 151.0 / 419.0).abs() < 1e-9, "ratio {ratio}");
    let faults = generate(&model, &cpu_only, 5);
    assert!(faults.iter().all(|f| f.gpu.is_none()));
    assert!(!faults.is_empty());
    assert!(faults.iter().all(|f| !matches!(f.symptom, Symptom::Gpu | Symptom::GpuCount)));
}

#[test]
fn repair_durations_respect_their_ranges_and_gpu_nodes_reboot_slower() {
    let repair = RepairDurations::default();
    let mut rng = rng_for(1, 0);
    let mut gpu = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..2000 {
        gpu.push(repair.sample(RepairKind::Reboot, NodeClass::Gpu, &mut rng));
        cpu.push(repair.sample(RepairKind::Reboot, NodeClass::Cpu, &mut rng));
        let replace = repair.sample(RepairKind::Replace, NodeClass::Gpu, &mut rng);
        assert!((MS_PER_HOUR..=24 * MS_PER_HOUR).contains(&replace));
        let lead = repair.replace_lead.sample(&mut rng);
        assert!((MS_PER_HOUR..=21 * MS_PER_DAY).contains(&lead));
        let manual = repair.sample(RepairKind::Manual, NodeClass::Gpu, &mut rng);
        assert!((10 * MS_PER_MINUTE..=72 * MS_PER_HOUR).contains(&manual));
    }
    assert!(gpu.iter().all(|ms| (5 * MS_PER_MINUTE..=30 * MS_PER_MINUTE).contains(ms)));
    gpu.sort_unstable();
    cpu.sort_unstable();
    assert!(gpu[1000] > cpu[1000]);
    assert_eq!(RepairKind::for_fix(Fix::SelfClears), None);
    assert_eq!(RepairKind::for_fix(Fix::Replace), Some(RepairKind::Replace));
}

#[test]
fn labels_match_serde_names() {
    for cause in Cause::ALL {
        let json = serde_json::to_string(&cause).expect("serialize cause");
        assert_eq!(json, format!("\"{}\"", cause.label()));
    }
}

#[test]
fn the_model_round_trips_through_json() {
    let model = FaultModel::default();
    let json = serde_json::to_string(&model).expect("serialize model");
    let back: FaultModel = serde_json::from_str(&json).expect("deserialize model");
    assert_eq!(back, model);
    let faults = generate(&model, &FleetSpec::default(), 1);
    let json = serde_json::to_string(&faults).expect("serialize faults");
    let back: Vec<Fault> = serde_json::from_str(&json).expect("deserialize faults");
    assert_eq!(back, faults);
}
