//! Tool runners and custom plugins against fake binaries: small shell scripts put first on a temp PATH that
//! print recorded fixtures, fail, print garbage or hang.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodemedic_agent::config::{AmdSmiProbe, NvidiaSmiProbe, RocmSmiProbe, ToolSpec};
use nodemedic_agent::exec::SearchPath;
use nodemedic_agent::plugin::{PluginSpec, run_plugin};
use nodemedic_agent::probe::TextDuration;
use nodemedic_agent::tools;
use nodemedic_agent::{Health, Reason};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A temp dir holding fake tools, and the search path that finds them first.
struct FakeBin {
    dir: tempfile::TempDir,
}

impl FakeBin {
    fn new() -> anyhow::Result<Self> {
        Ok(FakeBin { dir: tempfile::tempdir()? })
    }

    fn script(&self, name: &str, body: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// A tool that prints a recorded fixture and exits with `code`.
    fn replay(&self, name: &str, fixture_name: &str, code: i32) -> anyhow::Result<PathBuf> {
        self.script(name, &format!("cat '{}'\nexit {code}", fixture(fixture_name).display()))
    }

    fn search(&self) -> SearchPath {
        SearchPath::prepend(self.dir.path())
    }
}

fn plugin(name: &str, path: &Path, timeout_ms: u64) -> PluginSpec {
    PluginSpec {
        name: name.to_string(),
        path: path.display().to_string(),
        args: vec![],
        timeout: TextDuration(Duration::from_millis(timeout_ms)),
        max_output_bytes: 80,
        family: Default::default(),
    }
}

#[test]
fn plugin_exit_0_is_ok_with_stdout_as_the_message() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    let path = bin.script("check_ntp.sh", "echo 'NTP is synchronised'\nexit 0")?;
    let verdict = run_plugin(&plugin("ntp", &path, 2000), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Healthy, Reason::AllChecksPassed));
    assert_eq!(verdict.message, "NTP is synchronised");
    Ok(())
}

#[test]
fn plugin_exit_1_is_a_problem_with_stdout_cut_to_the_bound() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    let path = bin.script("check_disk.sh", "printf 'disk /data is read-only %0200d' 0\nexit 1")?;
    let verdict = run_plugin(&plugin("disk", &path, 2000), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::CustomCheckProblem));
    assert!(verdict.message.starts_with("disk /data is read-only"), "{}", verdict.message);
    assert!(verdict.message.len() <= 80, "{} bytes", verdict.message.len());
    Ok(())
}

#[test]
fn plugin_other_exit_codes_are_unknown() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    let path = bin.script("check_odd.sh", "echo 'cannot tell'\nexit 3")?;
    let verdict = run_plugin(&plugin("odd", &path, 2000), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::CustomCheckUnknown));
    assert!(verdict.message.contains("exit 3"), "{}", verdict.message);
    Ok(())
}

#[test]
fn plugin_that_hangs_is_killed_at_its_timeout_and_unknown() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    let path = bin.script("check_hang.sh", "sleep 30\necho never")?;
    let started = Instant::now();
    let verdict = run_plugin(&plugin("hang", &path, 300), &bin.search());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}: the sleeping child was not killed", started.elapsed());
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::CustomCheckUnknown));
    assert!(verdict.message.contains("timed out"), "{}", verdict.message);
    Ok(())
}

#[test]
fn plugin_found_on_path_by_name_and_missing_plugins_are_unknown() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.script("npd-check-foo", "echo fine")?;
    let by_name = PluginSpec { path: "npd-check-foo".to_string(), ..plugin("foo", Path::new("unused"), 2000) };
    assert!(run_plugin(&by_name, &bin.search()).is_healthy());
    let missing = PluginSpec { path: "npd-check-absent".to_string(), ..by_name };
    let verdict = run_plugin(&missing, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolMissing));
    Ok(())
}

fn nvidia_probe() -> NvidiaSmiProbe {
    NvidiaSmiProbe::default()
}

#[test]
fn fake_nvidia_smi_replaying_a_healthy_capture_is_healthy() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.replay("nvidia-smi", "nvidia-smi-xml/tesla-t4.xml", 0)?;
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(1), 1000, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Healthy, Reason::AllChecksPassed), "{verdict:?}");
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(8), 1000, &bin.search());
    assert_eq!(verdict.reason, Reason::GpuCountMismatch);
    Ok(())
}

#[test]
fn fake_nvidia_smi_with_uncorrectable_ecc_is_unhealthy() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.replay("nvidia-smi", "handmade/nvidia-smi-xml/v12_two_gpus_one_uncorrectable_ecc.xml", 0)?;
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(2), 1000, &bin.search());
    assert_eq!(verdict.reason, Reason::UncorrectableEcc);
    assert!(verdict.message.contains("00000000:2A:00.0") && verdict.message.contains("4 uncorrectable"), "{}", verdict.message);
    Ok(())
}

#[test]
fn fake_nvidia_smi_that_lost_a_gpu_is_unhealthy_not_unknown() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.script("nvidia-smi", "echo 'Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error'\nexit 15")?;
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(8), 1000, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::GpuLost), "{verdict:?}");
    assert!(verdict.message.contains("GPU0000:3B:00.0"), "{}", verdict.message);
    Ok(())
}

#[test]
fn fake_nvidia_smi_with_garbage_or_no_driver() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.script("nvidia-smi", "echo 'Segmentation fault'\nexit 139")?;
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(8), 1000, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolFailed), "{verdict:?}");

    bin.script("nvidia-smi", "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with the NVIDIA driver.'\nexit 9")?;
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(8), 1000, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::GpuCountMismatch), "{verdict:?}");
    let verdict = tools::nvidia_smi(&nvidia_probe(), None, 1000, &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Healthy, Reason::NonGpuNode), "{verdict:?}");
    Ok(())
}

#[test]
fn a_tool_that_hangs_times_out_as_unknown_and_a_missing_tool_is_unknown() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.script("nvidia-smi", "sleep 30")?;
    let probe = NvidiaSmiProbe { timeout: TextDuration(Duration::from_millis(200)), ..nvidia_probe() };
    let started = Instant::now();
    let verdict = tools::nvidia_smi(&probe, Some(8), 1000, &bin.search());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolTimedOut), "{verdict:?}");

    let empty = tempfile::tempdir()?;
    let nowhere = SearchPath(empty.path().as_os_str().to_os_string());
    let verdict = tools::nvidia_smi(&nvidia_probe(), Some(8), 1000, &nowhere);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolMissing), "{verdict:?}");
    Ok(())
}

#[test]
fn nvidia_smi_csv_and_query_text_formats_run_too() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.replay("nvidia-smi", "nvidia-smi-csv/query-gpu-8xH100.csv.txt", 0)?;
    let csv = NvidiaSmiProbe { format: nodemedic_agent::config::NvidiaSmiFormat::Csv, ..nvidia_probe() };
    assert!(tools::nvidia_smi(&csv, Some(8), 1000, &bin.search()).is_healthy());
    bin.replay("nvidia-smi", "nvidia-smi-text/retired_pages_8gpu_bad.txt", 0)?;
    let text = NvidiaSmiProbe { format: nodemedic_agent::config::NvidiaSmiFormat::QueryText, ..nvidia_probe() };
    assert_eq!(tools::nvidia_smi(&text, Some(8), 1000, &bin.search()).reason, Reason::RetiredPagesPending);
    Ok(())
}

#[test]
fn fake_rocm_smi_with_cards_is_healthy_and_without_driver_is_a_fault() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.replay("rocm-smi", "rocm-smi/mi100_rocm602.json", 0)?;
    let probe = RocmSmiProbe::default();
    assert!(tools::rocm_smi(&probe, Some(4), &bin.search()).is_healthy());

    // rocm-smi exits 0 when the driver is not loaded, printing a log line instead of JSON.
    bin.replay("rocm-smi", "handmade/rocm-smi/driver_not_loaded.txt", 0)?;
    let verdict = tools::rocm_smi(&probe, Some(4), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::AmdDriverNotLoaded), "{verdict:?}");
    assert!(verdict.message.contains("amdgpu not found in modules"), "{}", verdict.message);

    bin.replay("rocm-smi", "handmade/rocm-smi/no_cards.json", 0)?;
    assert_eq!(tools::rocm_smi(&probe, Some(4), &bin.search()).reason, Reason::AmdDriverNotLoaded);
    Ok(())
}

#[test]
fn fake_amd_smi_in_csv_and_json_and_garbage() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    let probe = AmdSmiProbe::default();
    bin.replay("amd-smi", "amd-smi/monitor_csv_with_bom.txt", 0)?;
    assert!(tools::amd_smi(&probe, Some(1), &bin.search()).is_healthy());
    bin.replay("amd-smi", "handmade/amd-smi/metric_gpu_data_uncorrectable.json", 0)?;
    assert_eq!(tools::amd_smi(&probe, Some(2), &bin.search()).reason, Reason::UncorrectableEcc);
    bin.replay("amd-smi", "handmade/amd-smi/driver_not_loaded.txt", 1)?;
    let verdict = tools::amd_smi(&probe, Some(2), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::AmdDriverNotLoaded), "{verdict:?}");
    assert!(verdict.message.contains("AMDSMI_STATUS_DRIVER_NOT_LOADED"), "{}", verdict.message);
    bin.script("amd-smi", "echo 'Traceback (most recent call last):'\nexit 1")?;
    let verdict = tools::amd_smi(&probe, Some(2), &bin.search());
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolFailed), "{verdict:?}");
    assert!(verdict.message.contains("exited 1: Traceback"), "{}", verdict.message);
    Ok(())
}

#[test]
fn fake_rocminfo_counts_gpu_agents() -> anyhow::Result<()> {
    let bin = FakeBin::new()?;
    bin.replay("rocminfo", "rocminfo/mi300x_docs_example.txt", 0)?;
    let tool = ToolSpec { path: "rocminfo".to_string(), args: vec![], timeout: TextDuration(Duration::from_secs(5)) };
    assert!(tools::rocminfo(&tool, Some(1), &bin.search()).is_healthy());
    bin.replay("rocminfo", "handmade/rocminfo/rock_not_loaded.txt", 1)?;
    assert_eq!(tools::rocminfo(&tool, Some(1), &bin.search()).reason, Reason::AmdDriverNotLoaded);
    Ok(())
}

#[test]
fn kernel_log_probe_reads_a_saved_log_file() -> anyhow::Result<()> {
    let catalog = nodemedic_agent::Catalog::embedded()?;
    let mut tracker = nodemedic_agent::FaultTracker::new();
    let verdict = tools::kernel_log(&fixture("handmade/kmsg/xid79_fallen_off_bus.kmsg"), &catalog, &mut tracker, Duration::ZERO);
    assert_eq!(verdict.reason, Reason::KernelFaultReboot);
    let verdict = tools::kernel_log(Path::new("/nonexistent/kmsg"), &catalog, &mut tracker, Duration::ZERO);
    assert_eq!(verdict.health, Health::Unknown);
    Ok(())
}

#[test]
fn disk_probe_flags_a_read_only_root_and_low_space() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mounts = dir.path().join("mounts");
    std::fs::write(&mounts, "/dev/nvme0n1p1 / ext4 ro,relatime 0 0\n")?;
    let probe = nodemedic_agent::config::DiskProbe { mounts: vec!["/".to_string()], min_free_percent: 0.0, mounts_file: mounts.clone() };
    let verdict = tools::disk(&probe);
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::FilesystemReadOnly), "{verdict:?}");

    std::fs::write(&mounts, "/dev/nvme0n1p1 / ext4 rw,relatime 0 0\n")?;
    assert!(tools::disk(&probe).is_healthy());
    let greedy = nodemedic_agent::config::DiskProbe { min_free_percent: 100.1, ..probe };
    assert_eq!(tools::disk(&greedy).reason, Reason::DiskSpaceLow);
    Ok(())
}
