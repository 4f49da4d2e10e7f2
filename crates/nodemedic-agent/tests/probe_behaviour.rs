//! Behaviour the node agent promises, one test per promise: kernel-log faults and their catalog actions, GPU
//! counts, the fabric checks on sysfs trees in temp dirs, and the threshold machine that keeps a flapping input
//! from flapping the published verdict.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use nodemedic_agent::catalog::{ActionClass, Catalog, FaultKey, FaultTracker};
use nodemedic_agent::parse::{amd, infiniband, kernel, nvidia_smi};
use nodemedic_agent::probe::{ProbeSchedule, ProbeState};
use nodemedic_agent::{Health, Reason, Verdict};
use proptest::prelude::*;

fn fixture(name: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn catalog() -> anyhow::Result<Catalog> {
    Ok(Catalog::embedded()?)
}

#[test]
fn xid_79_in_kmsg_asks_for_reboot_then_rma() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let text = fixture("handmade/kmsg/xid79_fallen_off_bus.kmsg")?;
    let mut tracker = FaultTracker::new();
    let events = kernel::scan(&text, &catalog);
    assert_eq!(events.len(), 1, "the Xid 79 line and its 'fallen off the bus' line are one incident: {events:?}");
    let (first, _) = kernel::verdict(&events, &catalog, &mut tracker, Duration::ZERO);
    assert_eq!((first.health, first.reason), (Health::Unhealthy, Reason::KernelFaultReboot));
    assert!(first.message.contains("Xid 79") && first.message.contains("reboot the node"), "{}", first.message);
    assert!(first.message.contains("0000:3b:00"), "{}", first.message);

    // The same GPU falls off the bus again two days later (kmsg time): now it needs replacing.
    let again = text.replace("86400000200", "259200000200");
    let events = kernel::scan(&again, &catalog);
    let (second, classifications) = kernel::verdict(&events, &catalog, &mut tracker, Duration::ZERO);
    assert_eq!(second.reason, Reason::KernelFaultReplace, "{second:?}");
    assert!(classifications.iter().any(|c| c.escalated && c.action == ActionClass::Replace));
    assert!(second.message.contains("RMA"), "{}", second.message);
    Ok(())
}

#[test]
fn a_lone_fallen_off_the_bus_line_counts_as_xid_79() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan("[ 5012.1] NVRM: GPU 0000:86:00.0: GPU has fallen off the bus.\n", &catalog);
    assert_eq!(events.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), vec![FaultKey::NvidiaXid(79)]);
    assert_eq!(events[0].device, "0000:86:00");
    Ok(())
}

#[test]
fn one_application_xid_leaves_the_node_healthy_but_names_it() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("handmade/kmsg/xid13_once.kmsg")?, &catalog);
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.health, Health::Healthy);
    assert!(verdict.message.contains("Xid 13") && verdict.message.contains("restart the application"), "{}", verdict.message);
    Ok(())
}

#[test]
fn application_xid_repeating_on_one_gpu_within_the_window_points_at_hardware() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("handmade/kmsg/xid13_repeating_on_one_gpu.kmsg")?, &catalog);
    assert_eq!(events.len(), 5);
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultResetGpu);
    assert!(verdict.message.contains("seen 5 times within 1h"), "{}", verdict.message);
    Ok(())
}

#[test]
fn repeated_gsp_timeouts_ask_for_a_reboot() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("dmesg/nvidia_xid119_gsp_timeout_h100.log")?, &catalog);
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e.key == FaultKey::NvidiaXid(119) && e.device == "0000:9b:00"));
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultReboot);
    Ok(())
}

#[test]
fn a_dbe_with_row_remap_asks_for_a_gpu_reset() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("dmesg/nvidia_xid48_63_94_dbe_rowremap_iso.log")?, &catalog);
    let codes: Vec<FaultKey> = events.iter().map(|e| e.key.clone()).collect();
    assert!(
        codes.contains(&FaultKey::NvidiaXid(48)) && codes.contains(&FaultKey::NvidiaXid(63)) && codes.contains(&FaultKey::NvidiaXid(94))
    );
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultResetGpu);
    assert!(verdict.message.contains("Xid 48"), "{}", verdict.message);
    Ok(())
}

#[test]
fn amdgpu_bad_page_threshold_asks_for_replacement() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("dmesg/amdgpu_ras_poison_aca_sample.log")?, &catalog);
    assert!(events.iter().any(|e| e.key == FaultKey::Amdgpu("ras-uncorrectable".to_string())));
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultReplace);
    assert!(verdict.message.contains("bad-page-threshold") && verdict.message.contains("0000:02:00.0"), "{}", verdict.message);
    Ok(())
}

#[test]
fn an_amdgpu_ring_timeout_that_the_driver_recovered_from_is_not_a_node_fault() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("dmesg/amdgpu_ring_gfx_timeout_gpu_reset_journal.log")?, &catalog);
    let names: Vec<FaultKey> = events.iter().map(|e| e.key.clone()).collect();
    assert!(names.contains(&FaultKey::Amdgpu("ring-timeout".to_string())), "{names:?}");
    assert!(names.contains(&FaultKey::Amdgpu("gpu-reset-begin".to_string())), "{names:?}");
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.health, Health::Healthy);
    assert!(verdict.message.contains("application-level"), "{}", verdict.message);
    Ok(())
}

#[test]
fn an_amdgpu_reset_that_failed_asks_for_a_reboot() -> anyhow::Result<()> {
    let catalog = catalog()?;
    let events = kernel::scan(&fixture("handmade/kmsg/amdgpu_reset_failed.kmsg")?, &catalog);
    let (verdict, _) = kernel::verdict(&events, &catalog, &mut FaultTracker::new(), Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultReboot);
    assert!(verdict.message.contains("gpu-reset-failed") && verdict.message.contains("0000:c1:00.0"), "{}", verdict.message);
    Ok(())
}

#[test]
fn both_throttle_reason_dtds_are_read() -> anyhow::Result<()> {
    let v11 = nvidia_smi::parse_xml(&fixture("handmade/nvidia-smi-xml/v11_hw_slowdown_and_row_remap_pending.xml")?)?;
    let health = nvidia_smi::gpu_health(&v11.gpus[0]);
    assert_eq!(health.hardware_slowdowns, vec!["hw_slowdown", "hw_thermal_slowdown"]);
    assert!(health.row_remap_pending);
    let v12 = nvidia_smi::parse_xml(&fixture("nvidia-smi-xml/a100-sxm4-v12.xml")?)?;
    assert!(v12.gpus.iter().all(|g| nvidia_smi::gpu_health(g).hardware_slowdowns.is_empty()));
    assert!(v12.gpus[0].fields.iter().any(|(path, _)| path == "clocks_event_reasons/clocks_event_reason_hw_slowdown"));
    Ok(())
}

#[test]
fn gpu_count_below_the_expected_count_is_unhealthy() -> anyhow::Result<()> {
    let report = nvidia_smi::parse_xml(&fixture("nvidia-smi-xml/a100-sxm4-v12.xml")?)?;
    // The capture lists one <gpu> element (as `-i 0` would) but reports 4 attached: the count comes from
    // attached_gpus, and the three GPUs it does not show keep it from proving the node healthy.
    assert_eq!(report.attached_gpus, Some(4));
    assert_eq!(report.gpus.len(), 1);
    let four = nvidia_smi::NvidiaThresholds { expected_gpus: Some(4), ..Default::default() };
    assert_eq!(nvidia_smi::verdict(&report, &four).reason, Reason::OutputIncomplete);
    let eight = nvidia_smi::NvidiaThresholds { expected_gpus: Some(8), ..Default::default() };
    let verdict = nvidia_smi::verdict(&report, &eight);
    assert_eq!(verdict.reason, Reason::GpuCountMismatch);
    assert_eq!(verdict.message, "nvidia-smi sees 4 GPUs, expected 8");

    let cards = amd::parse_rocm_smi_json(&fixture("rocm-smi/mi100_rocm602.json")?)?;
    assert_eq!(cards.len(), 4);
    let expect = amd::AmdExpectations { expected_gpus: Some(8), required_metrics: vec![] };
    assert_eq!(amd::rocm_smi_verdict(&cards, &expect).reason, Reason::GpuCountMismatch);

    let agents = amd::parse_rocminfo(&fixture("rocminfo/mi300x_docs_example.txt")?)?;
    assert_eq!((agents.gpus, agents.cpus), (1, 1));
    assert_eq!(amd::rocminfo_verdict(&agents, Some(8)).reason, Reason::GpuCountMismatch);
    Ok(())
}

#[test]
fn a_missing_amd_metric_key_is_a_fault() -> anyhow::Result<()> {
    let cards = amd::parse_rocm_smi_json(&fixture("rocm-smi/vega-10-XT.json")?)?;
    let present = amd::AmdExpectations { expected_gpus: Some(1), required_metrics: vec!["Temperature (Sensor edge) (C)".to_string()] };
    assert!(amd::rocm_smi_verdict(&cards, &present).is_healthy());
    let missing = amd::AmdExpectations { expected_gpus: Some(1), required_metrics: vec!["Uncorrectable ECC count".to_string()] };
    let verdict = amd::rocm_smi_verdict(&cards, &missing);
    assert_eq!(verdict.reason, Reason::MetricMissing);
    assert!(verdict.message.contains("card0") && verdict.message.contains("Uncorrectable ECC count"), "{}", verdict.message);
    Ok(())
}

#[test]
fn rocm_smi_without_cards_says_the_driver_is_probably_not_loaded() -> anyhow::Result<()> {
    let error = amd::parse_rocm_smi_json(&fixture("handmade/rocm-smi/no_cards.json")?).err().context("no cards must be an error")?;
    assert!(error.to_string().contains("driver is probably not loaded"), "{error}");
    let error = amd::parse_rocm_smi_json("").err().context("empty output must be an error")?;
    assert!(error.to_string().contains("no JSON"), "{error}");
    assert_eq!(amd::amd_failure_verdict(&error, Some(1)).health, nodemedic_agent::Health::Unknown);
    Ok(())
}

#[test]
fn amd_smi_reads_both_json_shapes_and_value_unit_numbers() -> anyhow::Result<()> {
    let bare = amd::parse_amd_smi_json(&fixture("handmade/amd-smi/metric_bare_array.json")?)?;
    assert_eq!(bare.len(), 2);
    let edge = amd::lookup(&bare[0].metrics, "temperature.edge").and_then(amd::metric_number);
    assert_eq!(edge, Some(38.0));
    assert_eq!(amd::lookup(&bare[0].metrics, "temperature.mem").and_then(amd::metric_number), None);
    let wrapped = amd::parse_amd_smi_json(&fixture("handmade/amd-smi/metric_gpu_data_uncorrectable.json")?)?;
    let verdict = amd::amd_smi_verdict(&wrapped, &amd::AmdExpectations { expected_gpus: Some(2), required_metrics: vec![] });
    assert_eq!(verdict.reason, Reason::UncorrectableEcc);
    assert!(verdict.message.contains("GPU 1") && verdict.message.contains("ecc.total_uncorrectable_count"), "{}", verdict.message);
    let csv = amd::parse_amd_smi_csv(&fixture("amd-smi/monitor_csv_with_bom.txt")?)?;
    assert_eq!(csv.len(), 1);
    assert_eq!(amd::lookup(&csv[0].metrics, "fb_total").and_then(amd::metric_number), Some(14928.0));
    assert_eq!(amd::lookup(&csv[0].metrics, "gpu").and_then(|v| v.as_str()), Some("0"));
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn fake_port(root: &Path, device: &str, port: u32, state: &str, phys: &str, rate: &str, link_downed: u64) -> anyhow::Result<()> {
    let dir = root.join(device).join("ports").join(port.to_string());
    write(&dir.join("state"), &format!("{state}\n"))?;
    write(&dir.join("phys_state"), &format!("{phys}\n"))?;
    write(&dir.join("rate"), &format!("{rate}\n"))?;
    write(&dir.join("link_layer"), "InfiniBand\n")?;
    write(&dir.join("counters/link_downed"), &format!("{link_downed}\n"))?;
    Ok(())
}

#[test]
fn infiniband_ports_down_slow_or_flapping_are_unhealthy() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    fake_port(root.path(), "mlx5_0", 1, "4: ACTIVE", "5: LinkUp", "400 Gb/sec (4X NDR)", 0)?;
    fake_port(root.path(), "mlx5_1", 1, "4: ACTIVE", "5: LinkUp", "400 Gb/sec (4X NDR)", 2)?;
    let expect = infiniband::IbExpectations { expected_ports: Some(2), min_rate_gbps: Some(400.0), devices: vec![], ..Default::default() };
    let before = infiniband::read_sysfs(root.path())?;
    assert!(infiniband::verdict(&before, &expect, None).is_healthy());

    // mlx5_1 flaps: its link_downed counter grows between two readings.
    fake_port(root.path(), "mlx5_1", 1, "4: ACTIVE", "5: LinkUp", "400 Gb/sec (4X NDR)", 5)?;
    let after = infiniband::read_sysfs(root.path())?;
    let verdict = infiniband::verdict(&after, &expect, Some(&before));
    assert_eq!(verdict.reason, Reason::IbLinkFlapping);
    assert!(verdict.message.contains("mlx5_1/1 link went down 3 times"), "{}", verdict.message);

    fake_port(root.path(), "mlx5_0", 1, "4: ACTIVE", "5: LinkUp", "200 Gb/sec (2X NDR)", 0)?;
    assert_eq!(infiniband::verdict(&infiniband::read_sysfs(root.path())?, &expect, None).reason, Reason::IbRateLow);

    fake_port(root.path(), "mlx5_0", 1, "1: DOWN", "3: Disabled", "10 Gb/sec (4X SDR)", 0)?;
    let verdict = infiniband::verdict(&infiniband::read_sysfs(root.path())?, &expect, None);
    assert_eq!(verdict.reason, Reason::IbPortDown);
    assert!(verdict.message.contains("mlx5_0/1 is DOWN / Disabled"), "{}", verdict.message);

    std::fs::remove_dir_all(root.path().join("mlx5_1"))?;
    fake_port(root.path(), "mlx5_0", 1, "4: ACTIVE", "5: LinkUp", "400 Gb/sec (4X NDR)", 0)?;
    assert_eq!(infiniband::verdict(&infiniband::read_sysfs(root.path())?, &expect, None).reason, Reason::IbDeviceMissing);
    Ok(())
}

#[test]
fn the_recorded_sysfs_trees_read_like_the_hardware() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/infiniband-sysfs");
    let h100 = infiniband::read_sysfs(&root.join("h100_node_ndr"))?;
    let rates: Vec<(String, Option<f64>)> = h100.iter().map(|p| (p.name(), p.rate_gbps)).collect();
    assert_eq!(rates, vec![("mlx5_0/1".to_string(), Some(400.0)), ("mlx5_bond_0/1".to_string(), Some(200.0))]);
    let expect = infiniband::IbExpectations { expected_ports: Some(2), min_rate_gbps: Some(400.0), devices: vec![], ..Default::default() };
    assert_eq!(infiniband::verdict(&h100, &expect, None).reason, Reason::IbRateLow, "the bonded RoCE port runs at 200");
    let only_ib = infiniband::IbExpectations { expected_ports: Some(1), devices: vec!["mlx5_0".to_string()], ..expect };
    assert!(infiniband::verdict(&h100, &only_ib, None).is_healthy());
    let mlx4 = infiniband::read_sysfs(&root.join("procfs_fixture"))?;
    assert_eq!(mlx4.len(), 2);
    assert_eq!(mlx4[1].link_layer.as_deref(), Some("InfiniBand"));
    Ok(())
}

#[test]
fn a_missing_sysfs_root_is_an_error_naming_the_path() {
    let error = infiniband::read_sysfs(Path::new("/nonexistent/infiniband")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("/nonexistent/infiniband"), "{error}");
}

fn fail() -> Verdict {
    Verdict::unhealthy(Reason::GpuLost, "GPU 0 lost")
}

fn pass() -> Verdict {
    Verdict::healthy("ok")
}

proptest! {
    /// Whatever state a history leaves the probe in, an input that from then on alternates pass/fail (starting
    /// with the opposite of the history's last result) never changes the published health, for thresholds of two
    /// or more (the defaults are 3 and 2).
    #[test]
    fn alternating_pass_fail_never_changes_the_published_verdict(
        history in proptest::collection::vec(any::<bool>(), 1..40),
        alternations in 1usize..60,
        failures_before_unhealthy in 2u32..6,
        passes_before_healthy in 2u32..6,
    ) {
        let schedule = ProbeSchedule { failures_before_unhealthy, passes_before_healthy, ..ProbeSchedule::default() };
        let mut state = ProbeState::new(&schedule);
        let now = Instant::now();
        for passed in history.iter().copied() {
            state.record(if passed { pass() } else { fail() }, now);
        }
        let before = state.published(now).health;
        let mut next_is_pass = !history.last().copied().unwrap_or(false);
        for _ in 0..alternations {
            state.record(if next_is_pass { pass() } else { fail() }, now);
            prop_assert_eq!(state.published(now).health, before);
            next_is_pass = !next_is_pass;
        }
    }

    /// The defaults (3 failures, 2 passes) also hold against a flapping input.
    #[test]
    fn default_schedule_ignores_flapping(alternations in 1usize..100) {
        let mut state = ProbeState::new(&ProbeSchedule::default());
        let now = Instant::now();
        for i in 0..alternations {
            state.record(if i % 2 == 0 { fail() } else { pass() }, now);
            prop_assert_eq!(state.published(now).health, Health::Unknown);
        }
    }

    /// No input text makes a parser panic.
    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in ".{0,400}") {
        let _ = nvidia_smi::parse_xml(&text);
        let _ = nvidia_smi::parse_query_text(&text);
        let _ = nvidia_smi::parse_query_csv(&text);
        let _ = nvidia_smi::parse_link_status(&text);
        let _ = nvidia_smi::parse_table(&text);
        let _ = amd::parse_amd_smi_json(&text);
        let _ = amd::parse_amd_smi_csv(&text);
        let _ = amd::parse_rocm_smi_json(&text);
        let _ = amd::parse_rocminfo(&text);
        let _ = infiniband::parse_ibstat(&text);
        if let Ok(catalog) = Catalog::embedded() {
            let _ = kernel::scan(&text, &catalog);
        }
    }
}
