//! Every recorded fixture goes through its parser and gets an asserted verdict. The table below is the spec:
//! one row per fixture (file, or sysfs tree), with the health and reason it must produce, or the parse error
//! it must give. Fixtures copied into `tests/fixtures/` always run; those only in the shared fixture set
//! (no licence to copy them; `../shared/fixtures/` beside the checkout, or `NODEMEDIC_SHARED_FIXTURES`) run
//! too, and a missing shared set fails the test rather than passing it unseen. A coverage test makes sure the
//! table names every file in both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodemedic_agent::catalog::{Catalog, FaultTracker};
use nodemedic_agent::parse::{amd, dcgmi, ethtool, infiniband, kernel, netperf, nvidia_smi};
use nodemedic_agent::verdict::worst_of;
use nodemedic_agent::{Health, Reason, Verdict};

#[derive(Debug, Clone, Copy)]
enum Expect {
    Verdict(Health, Reason),
    /// The parser must refuse the input with an error whose text contains this.
    ParseError(&'static str),
}

use Expect::{ParseError, Verdict as Is};
use Health::{Healthy, Unhealthy, Unknown};

const CASES: &[(&str, Expect)] = &[
    ("amd-smi/monitor_csv_with_bom.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("dcgmi/diag_r1.json", Is(Healthy, Reason::AllChecksPassed)),
    ("dcgmi/diag_r2.json", Is(Healthy, Reason::AllChecksPassed)),
    ("dcgmi/diag_r3.json", Is(Healthy, Reason::AllChecksPassed)),
    ("dcgmi/health_check.json", Is(Healthy, Reason::AllChecksPassed)),
    ("dmesg/amdgpu_ras_poison_aca_sample.log", Is(Unhealthy, Reason::KernelFaultReplace)),
    ("dmesg/amdgpu_ring_gfx_timeout_gpu_reset_journal.log", Is(Healthy, Reason::AllChecksPassed)),
    ("dmesg/amdgpu_ring_gfx_timeout_gpu_reset_journal_2.log", Is(Healthy, Reason::AllChecksPassed)),
    ("dmesg/nvidia_xid119_gsp_timeout_h100.log", Is(Unhealthy, Reason::KernelFaultReboot)),
    ("dmesg/nvidia_xid48_63_94_dbe_rowremap_iso.log", Is(Unhealthy, Reason::KernelFaultResetGpu)),
    ("ethtool/S_virtio_net_ens3.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ethtool/i_driver_e1000e.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ethtool/i_driver_virtio_net.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ethtool/settings_10g_eth0.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ethtool/settings_e1000e_netlink_eperm.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ethtool/settings_virtio_speed_unknown.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("ibstat/h100_all_active.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("infiniband-sysfs/h100_node_ndr", Is(Healthy, Reason::AllChecksPassed)),
    ("infiniband-sysfs/procfs_fixture", Is(Healthy, Reason::AllChecksPassed)),
    // The receiver's summary of this 10 KB run says 0 bytes arrived: the probe trusts the receiver side.
    ("iperf3/tcp_client_10KB_iperf3.9.json", Is(Unhealthy, Reason::ThroughputLow)),
    ("iperf3/tcp_client_10s_iperf3.9.json", Is(Healthy, Reason::AllChecksPassed)),
    ("iperf3/tcp_client_200MB_bytes_iperf3.6.json", Is(Healthy, Reason::AllChecksPassed)),
    ("iperf3/tcp_reverse_10KB_iperf3.9.json", ParseError("not JSON")),
    // An upstream unit-test file with counting values (0, 1, 2, …) in the ECC columns: 14 uncorrected volatile.
    ("nvidia-smi-csv/query-gpu-1xH100.csv.txt", Is(Unhealthy, Reason::UncorrectableEcc)),
    ("nvidia-smi-csv/query-gpu-8xH100.csv.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-csv/rtx2080super_win_471.11_allfields.csv.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/c2c_status_gh200.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/capture_linux_h100-80gb-hbm3_590.48.01.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/capture_linux_h200_590.48.01.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/capture_linux_l40s_595.80.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/capture_linux_rtx4080super_595.71.05.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/nvlink_status_a100_healthy.txt", Is(Healthy, Reason::AllChecksPassed)),
    // Upstream calls these captures "valid" (they parse), but the values are not healthy: every H100 shows
    // "HW Slowdown: Active" with "HW Power Brake Slowdown: Active", and the A10 has 4 uncorrectable rows with a
    // remap pending.
    ("nvidia-smi-text/query_8xh100_535.161.08.txt", Is(Unhealthy, Reason::HardwareSlowdown)),
    ("nvidia-smi-text/query_a10_535.129.03.txt", Is(Unhealthy, Reason::RowRemapPending)),
    ("nvidia-smi-text/query_rtx4090_535.154.05.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/query_titanv_560.35.03.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/retired_pages_8gpu_bad.txt", Is(Unhealthy, Reason::RetiredPagesPending)),
    ("nvidia-smi-text/retired_pages_8gpu_healthy.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-text/table_8xh100_550.90.07.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/3090-v13.xml", Is(Healthy, Reason::AllChecksPassed)),
    // The header announces 4 GPUs, the file holds one <gpu> (upstream trimmed it): not proof the node is healthy.
    ("nvidia-smi-xml/a100-sxm4-v12.xml", Is(Unknown, Reason::OutputIncomplete)),
    ("nvidia-smi-xml/a10g.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/gt-1030.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/quadro-p2000-v12.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/quadro-p400.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/rtx-3060-v12.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/rtx-3080-v12.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/rtx-3080-v13.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/rtx-3090-v12.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/rtx-4000-sff-ada-v13.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("nvidia-smi-xml/tesla-t4.xml", Is(Healthy, Reason::AllChecksPassed)),
    ("rdma/rdma_link_json_ionic_4ports.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/mi100_rocm602.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/mi210_x2_rocm643_setclock_permission_denied.txt", Is(Unknown, Reason::ToolFailed)),
    ("rocm-smi/mi210_x2_rocm643_showclocks_s.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/rx6700xt_rocm430.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/rx6700xt_rocm571.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/rx6700xt_rocm602.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/vega-10-XT.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocm-smi/vega-20-WKS-GL-XE.json", Is(Healthy, Reason::AllChecksPassed)),
    ("rocminfo/mi300x_docs_example.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("speedtest/ookla_1.0_result_no_packetloss.json", Is(Healthy, Reason::AllChecksPassed)),
    ("speedtest/ookla_1.2_ipv6_result.json", Is(Healthy, Reason::AllChecksPassed)),
    ("speedtest/ookla_error_no_servers_defined.json", Is(Unknown, Reason::ThroughputTestFailed)),
    // Hand-made failure variants (tests/fixtures/handmade/).
    ("handmade/nvidia-smi-xml/v12_two_gpus_one_uncorrectable_ecc.xml", Is(Unhealthy, Reason::UncorrectableEcc)),
    ("handmade/nvidia-smi-xml/v11_hw_slowdown_and_row_remap_pending.xml", Is(Unhealthy, Reason::RowRemapPending)),
    ("handmade/nvidia-smi-xml/v12_gpu_requires_reset.xml", Is(Unhealthy, Reason::GpuLost)),
    ("handmade/nvidia-smi-xml/v12_retired_pages_pending_and_pcie_replays.xml", Is(Unhealthy, Reason::RetiredPagesPending)),
    ("handmade/nvidia-smi-xml/truncated.xml", ParseError("malformed")),
    ("handmade/nvidia-smi-text/nvlink_one_link_inactive.txt", Is(Unhealthy, Reason::NvlinkInactive)),
    ("handmade/nvidia-smi-text/table_gpu_err.txt", Is(Unhealthy, Reason::GpuLost)),
    ("handmade/nvidia-smi-text/query_d_memory_remap_failure.txt", Is(Unhealthy, Reason::RowRemapFailure)),
    ("handmade/nvidia-smi-csv/query_gpu_requires_reset.csv.txt", Is(Unhealthy, Reason::GpuLost)),
    ("handmade/nvidia-smi-csv/query_gpu_8x_one_requires_reset.csv.txt", Is(Unhealthy, Reason::GpuLost)),
    ("handmade/kmsg/xid79_fallen_off_bus.kmsg", Is(Unhealthy, Reason::KernelFaultReboot)),
    ("handmade/kmsg/xid13_repeating_on_one_gpu.kmsg", Is(Unhealthy, Reason::KernelFaultResetGpu)),
    ("handmade/kmsg/xid13_once.kmsg", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/kmsg/nvswitch_sxid.kmsg", Is(Unhealthy, Reason::KernelFaultContactSupport)),
    ("handmade/kmsg/amdgpu_reset_failed.kmsg", Is(Unhealthy, Reason::KernelFaultReboot)),
    ("handmade/kmsg/no_gpu_faults.kmsg", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/amd-smi/metric_bare_array.json", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/amd-smi/metric_gpu_data_uncorrectable.json", Is(Unhealthy, Reason::UncorrectableEcc)),
    ("handmade/amd-smi/driver_not_loaded.txt", ParseError("not JSON")),
    ("handmade/rocm-smi/driver_not_loaded.txt", Is(Unhealthy, Reason::AmdDriverNotLoaded)),
    ("handmade/rocm-smi/no_cards.json", Is(Unhealthy, Reason::AmdDriverNotLoaded)),
    ("handmade/rocminfo/rock_not_loaded.txt", ParseError("no agents")),
    ("handmade/ibstat/one_port_down.txt", Is(Unhealthy, Reason::IbPortDown)),
    ("handmade/rdma/link_down.json", Is(Unhealthy, Reason::IbPortDown)),
    ("handmade/iperf3/client_25g.json", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/iperf3/connection_refused.json", Is(Unknown, Reason::ThroughputTestFailed)),
    ("handmade/iperf3/interrupted.json", ParseError("not JSON")),
    ("handmade/ping/healthy.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/ping/loss_40_percent.txt", Is(Unhealthy, Reason::PacketLoss)),
    ("handmade/ping/unreachable.txt", Is(Unhealthy, Reason::PacketLoss)),
    ("handmade/speedtest/result.json", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/speedtest/error_log.json", Is(Unknown, Reason::ThroughputTestFailed)),
    ("handmade/dcgmi/diag_r1_fail.json", Is(Unhealthy, Reason::DcgmDiagFailed)),
    ("handmade/dcgmi/health_failure.json", Is(Unhealthy, Reason::DcgmHealthDegraded)),
    ("handmade/ethtool/link_down.txt", Is(Unhealthy, Reason::NicLinkDown)),
    // Issue 13 §4: wrong answers seen on other GPU models, tool versions and failure cases.
    ("handmade/nvidia-smi-text/query_8_announced_cut_in_gpu_2.txt", Is(Unknown, Reason::OutputIncomplete)),
    ("handmade/nvidia-smi-text/query_d_supported_clocks_one_gpu_of_8.txt", Is(Unknown, Reason::OutputIncomplete)),
    ("handmade/ibstat/ends_in_ibpanic.txt", ParseError("ibpanic")),
    ("handmade/kmsg/xid79_after_non_utf8_byte.kmsg", Is(Unhealthy, Reason::KernelFaultReboot)),
    ("handmade/rocm-smi/warning_before_json.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/rocm-smi/warning_only.txt", Is(Unknown, Reason::OutputUnparseable)),
    ("handmade/dcgmi/diag_zero_results.json", Is(Unknown, Reason::OutputIncomplete)),
    ("handmade/rocm-smi/text_showuse_mi210_x2.txt", Is(Healthy, Reason::AllChecksPassed)),
    ("handmade/infiniband-sysfs/ndr_port_with_high_error_counters", Is(Unhealthy, Reason::IbLinkFlapping)),
    ("handmade/dcgmi/diag_exit_226_host_engine_unreachable.json", ParseError("test_categories")),
    ("handmade/nvidia-smi-csv/query_gpu_field_not_valid_on_535.csv.txt", ParseError("header names none")),
];

fn copied_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// The shared fixture set: `NODEMEDIC_SHARED_FIXTURES` when set, else `shared/fixtures` beside the checkout.
fn shared_root() -> PathBuf {
    std::env::var_os("NODEMEDIC_SHARED_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"))
}

/// The shared root, or a test failure naming where it was looked for.
fn present_shared_root() -> Result<PathBuf, String> {
    require_fixture_set(shared_root())
}

fn require_fixture_set(root: PathBuf) -> Result<PathBuf, String> {
    if root.is_dir() {
        Ok(root)
    } else {
        Err(format!("the shared fixture set is missing: {} is not a folder (set NODEMEDIC_SHARED_FIXTURES)", root.display()))
    }
}

/// Throughput bounds low enough that every recorded healthy run passes (the real captures are WAN tests).
const MIN_IPERF_BITS: f64 = 1e5;
const MIN_SPEEDTEST_BITS: f64 = 1e6;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn kernel_verdict(text: &str) -> Result<Verdict, String> {
    let catalog = Catalog::embedded().map_err(err)?;
    let mut tracker = FaultTracker::new();
    let events = kernel::scan(text, &catalog);
    Ok(kernel::verdict(&events, &catalog, &mut tracker, Duration::ZERO).0)
}

fn capture_verdict(text: &str) -> Result<Verdict, String> {
    let thresholds = nvidia_smi::NvidiaThresholds::default();
    let mut findings = Vec::new();
    let mut parsed_sections = 0;
    for section in nvidia_smi::split_capture(text) {
        let command = section.command.as_str();
        let verdict = if command == "nvidia-smi -q" {
            nvidia_smi::verdict(&nvidia_smi::parse_query_text(&section.output).map_err(err)?, &thresholds)
        } else if command == "nvidia-smi nvlink -s" {
            nvidia_smi::link_status_verdict(&nvidia_smi::parse_link_status(&section.output).map_err(err)?)
        } else if command == "nvidia-smi" {
            nvidia_smi::table_verdict(&nvidia_smi::parse_table(&section.output).map_err(err)?, None)
        } else if command.starts_with("nvidia-smi --query-gpu=") {
            nvidia_smi::verdict(&nvidia_smi::parse_query_csv(&section.output).map_err(err)?, &thresholds)
        } else {
            continue;
        };
        parsed_sections += 1;
        findings.push(verdict);
    }
    if parsed_sections < 4 {
        return Err(format!("only {parsed_sections} capture sections were parsed"));
    }
    Ok(worst_of(findings, "capture healthy"))
}

/// Runs one fixture (a file, or a sysfs tree) through the parser its folder and name call for.
fn verdict_for(root: &Path, name: &str) -> Result<Verdict, String> {
    let path = root.join(name);
    if name.contains("infiniband-sysfs/") {
        let ports = infiniband::read_sysfs(&path).map_err(err)?;
        if ports.is_empty() {
            return Err("no ports read".to_string());
        }
        let expect = infiniband::IbExpectations { expected_ports: Some(u32::try_from(ports.len()).map_err(err)?), ..Default::default() };
        return Ok(infiniband::verdict(&ports, &expect, None));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let folder = name.trim_start_matches("handmade/").split('/').next().unwrap_or("");
    let file = name.rsplit('/').next().unwrap_or("");
    match folder {
        "nvidia-smi-xml" => Ok(nvidia_smi::verdict(&nvidia_smi::parse_xml(&text).map_err(err)?, &Default::default())),
        "nvidia-smi-csv" => Ok(nvidia_smi::verdict(&nvidia_smi::parse_query_csv(&text).map_err(err)?, &Default::default())),
        "nvidia-smi-text" if file.starts_with("capture_") => capture_verdict(&text),
        "nvidia-smi-text" if file.starts_with("nvlink_") || file.starts_with("c2c_") => {
            Ok(nvidia_smi::link_status_verdict(&nvidia_smi::parse_link_status(&text).map_err(err)?))
        }
        "nvidia-smi-text" if file.starts_with("table_") => {
            Ok(nvidia_smi::table_verdict(&nvidia_smi::parse_table(&text).map_err(err)?, None))
        }
        "nvidia-smi-text" => Ok(nvidia_smi::verdict(&nvidia_smi::parse_query_text(&text).map_err(err)?, &Default::default())),
        "amd-smi" => {
            let body = text.trim_start_matches('\u{feff}');
            let looks_csv = !body.starts_with(['[', '{']) && body.lines().next().is_some_and(|l| l.contains(','));
            let gpus = if looks_csv { amd::parse_amd_smi_csv(&text) } else { amd::parse_amd_smi_json(&text) }.map_err(err)?;
            Ok(amd::amd_smi_verdict(&gpus, &Default::default()))
        }
        "rocm-smi" if file.starts_with("mi210_") || file.starts_with("text_") => {
            Ok(amd::rocm_smi_text_verdict(&amd::parse_rocm_smi_text(&text).map_err(err)?, None))
        }
        "rocm-smi" => Ok(match amd::parse_rocm_smi_json(&text) {
            Ok(cards) => amd::rocm_smi_verdict(&cards, &Default::default()),
            Err(error) => amd::amd_failure_verdict(&error, None),
        }),
        "rocminfo" => Ok(amd::rocminfo_verdict(&amd::parse_rocminfo(&text).map_err(err)?, None)),
        "dmesg" | "kmsg" => kernel_verdict(&text),
        "ibstat" => Ok(infiniband::verdict(&infiniband::parse_ibstat(&text).map_err(err)?, &Default::default(), None)),
        "rdma" => Ok(infiniband::verdict(&infiniband::parse_rdma_link_json(&text).map_err(err)?, &Default::default(), None)),
        "iperf3" => Ok(netperf::iperf3_verdict(&netperf::parse_iperf3(&text).map_err(err)?, MIN_IPERF_BITS)),
        "ping" => Ok(netperf::ping_verdict(&netperf::parse_ping(&text).map_err(err)?, 0.0, None)),
        "speedtest" => Ok(netperf::speedtest_verdict(&netperf::parse_speedtest(&text).map_err(err)?, MIN_SPEEDTEST_BITS)),
        "dcgmi" if file.starts_with("diag") => Ok(dcgmi::diag_verdict(&dcgmi::parse_diag(&text).map_err(err)?)),
        "dcgmi" => Ok(dcgmi::health_verdict(&dcgmi::parse_health(&text).map_err(err)?)),
        "ethtool" if file.starts_with("S_") => Ok(ethtool::statistics_verdict(&ethtool::parse_statistics(&text).map_err(err)?, 0)),
        "ethtool" if file.starts_with("i_") => Ok(ethtool::driver_verdict(&ethtool::parse_driver(&text).map_err(err)?)),
        "ethtool" => Ok(ethtool::settings_verdict(&ethtool::parse_settings(&text).map_err(err)?, None)),
        other => Err(format!("no parser for folder {other:?}")),
    }
}

fn check_case(root: &Path, name: &str, expect: Expect) -> Result<(), String> {
    match (verdict_for(root, name), expect) {
        (Ok(verdict), Is(health, reason)) if verdict.health == health && verdict.reason == reason => Ok(()),
        (Ok(verdict), _) => Err(format!("{name}: expected {expect:?}, got {verdict:?}")),
        (Err(error), ParseError(needle)) if error.contains(needle) => Ok(()),
        (Err(error), _) => Err(format!("{name}: expected {expect:?}, got error {error}")),
    }
}

fn run_cases(root: &Path, only_present: bool) -> (usize, Vec<String>) {
    let mut ran = 0;
    let mut failures = Vec::new();
    for (name, expect) in CASES {
        if only_present && !root.join(name).exists() {
            continue;
        }
        ran += 1;
        if let Err(failure) = check_case(root, name, *expect) {
            failures.push(failure);
        }
    }
    (ran, failures)
}

#[test]
fn every_copied_fixture_gives_its_asserted_verdict() {
    let (ran, failures) = run_cases(&copied_root(), true);
    assert!(ran >= 80, "only {ran} fixtures found under tests/fixtures");
    assert!(failures.is_empty(), "{} fixture(s) disagree:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_missing_shared_fixture_set_is_an_error_not_a_pass() {
    let missing = copied_root().join("no-such-fixture-set");
    let error = require_fixture_set(missing).err();
    assert!(error.as_deref().is_some_and(|e| e.contains("missing")), "{error:?}");
}

#[test]
fn every_shared_fixture_gives_its_asserted_verdict() -> Result<(), String> {
    let root = present_shared_root()?;
    let (ran, failures) = run_cases(&root, true);
    assert!(ran >= 60, "only {ran} shared fixtures ran");
    assert!(failures.is_empty(), "{} fixture(s) disagree:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

fn fixture_names(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let relative = path.strip_prefix(root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
        let sysfs = ["infiniband-sysfs/", "handmade/infiniband-sysfs/"].into_iter().find(|p| relative.starts_with(p));
        if let Some(prefix) = sysfs {
            let tree = relative[prefix.len()..].split('/').next().unwrap_or("");
            let name = format!("{prefix}{tree}");
            if !out.contains(&name) {
                out.push(name);
            }
            continue;
        }
        if path.is_dir() {
            fixture_names(root, &path, out)?;
        } else if relative != "SOURCES.md" {
            out.push(relative);
        }
    }
    Ok(())
}

#[test]
fn the_table_names_every_fixture_file() -> Result<(), String> {
    for root in [copied_root(), present_shared_root()?] {
        let mut names = Vec::new();
        fixture_names(&root, &root, &mut names).map_err(|e| format!("{}: {e}", root.display()))?;
        let missing: Vec<&String> = names.iter().filter(|n| !CASES.iter().any(|(c, _)| c == n)).collect();
        assert!(missing.is_empty(), "fixtures under {} with no asserted verdict: {missing:?}", root.display());
    }
    Ok(())
}
