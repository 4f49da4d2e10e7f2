//! The `resetGpu` step against fake vendor tools: a small `nvidia-smi` script that resets (or refuses,
//! or hangs) when called with `-r`, and otherwise replays a capture for the GPU probe that judges it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodemedic_agent::catalog::Catalog;
use nodemedic_agent::config::{AgentConfig, NvidiaSmiProbe};
use nodemedic_agent::exec::SearchPath;
use nodemedic_agent::gpu_count::ExpectedGpus;
use nodemedic_agent::gpu_reset::{GpuResetConfig, ResetTool, gpu_tool_verdicts, reset_and_verify};
use nodemedic_agent::probe::TextDuration;
use nodemedic_core::gpu::GpuDevice;
use nodemedic_core::observe::ReportedOutcome;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn gpu() -> anyhow::Result<GpuDevice> {
    Ok(GpuDevice::from_bus_id("00000000:3B:00.0", Some(0))?)
}

/// A temp dir with a fake `nvidia-smi`: `-r` runs `reset` (its arguments appended to `calls`), anything
/// else prints `capture` (the probe's `-q -x`).
struct FakeNvidiaSmi {
    dir: tempfile::TempDir,
}

impl FakeNvidiaSmi {
    fn new(reset: &str, capture: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let calls = dir.path().join("calls");
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = -r ]; then\n  echo \"$@\" >> '{}'\n  {reset}\nfi\ncat '{}'\n",
            calls.display(),
            fixture(capture).display()
        );
        let path = dir.path().join("nvidia-smi");
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(FakeNvidiaSmi { dir })
    }

    fn search(&self) -> SearchPath {
        SearchPath::prepend(self.dir.path())
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
    }

    /// Reset, then judge with the agent's own GPU probes (nvidia-smi, one GPU expected).
    fn reset(&self, timeout: Duration) -> anyhow::Result<(ReportedOutcome, String)> {
        let mut config = AgentConfig::default();
        config.probes.nvidia_smi = Some(NvidiaSmiProbe::default());
        config.expected_gpus = Some(1);
        let catalog = Catalog::embedded()?;
        let search = self.search();
        let reset = GpuResetConfig { timeout: TextDuration(timeout), ..GpuResetConfig::default() };
        let expected = ExpectedGpus::configured(&config);
        Ok(reset_and_verify(&reset, &gpu()?, &search, || gpu_tool_verdicts(&config, &catalog, &search, expected)))
    }
}

const HEALTHY: &str = "nvidia-smi-xml/tesla-t4.xml";
const FAILING: &str = "handmade/nvidia-smi-xml/v12_two_gpus_one_uncorrectable_ecc.xml";

#[test]
fn a_reset_that_exits_0_and_leaves_the_gpu_probe_passing_succeeds() -> anyhow::Result<()> {
    let fake = FakeNvidiaSmi::new("echo 'GPU 00000000:3B:00.0 was successfully reset.'; exit 0", HEALTHY)?;
    let (outcome, message) = fake.reset(Duration::from_secs(10))?;
    assert_eq!(outcome, ReportedOutcome::Succeeded, "{message}");
    assert_eq!(fake.calls().trim(), "-r -i 0000:3b:00.0", "the reset is aimed at the record's GPU by bus id");
    assert!(message.contains("nvidia-smi pass"), "{message}");
    Ok(())
}

#[test]
fn a_reset_refused_because_processes_use_the_gpu_fails_with_what_the_tool_said() -> anyhow::Result<()> {
    let refuse = "echo 'GPU 00000000:3B:00.0 is currently in use by another process.' >&2; exit 255";
    let fake = FakeNvidiaSmi::new(refuse, HEALTHY)?;
    let (outcome, message) = fake.reset(Duration::from_secs(10))?;
    assert_eq!(outcome, ReportedOutcome::Failed);
    assert!(message.contains("in use by another process") && message.contains("exit 255"), "{message}");
    Ok(())
}

#[test]
fn a_reset_that_hangs_past_its_deadline_is_killed_and_fails() -> anyhow::Result<()> {
    let fake = FakeNvidiaSmi::new("sleep 30; exit 0", HEALTHY)?;
    let started = Instant::now();
    let (outcome, message) = fake.reset(Duration::from_millis(300))?;
    assert!(started.elapsed() < Duration::from_secs(10), "the deadline held");
    assert_eq!(outcome, ReportedOutcome::Failed);
    assert!(message.contains("did not finish within"), "{message}");
    Ok(())
}

#[test]
fn a_reset_that_exits_0_while_the_gpu_still_fails_its_probe_fails() -> anyhow::Result<()> {
    let fake = FakeNvidiaSmi::new("exit 0", FAILING)?;
    let (outcome, message) = fake.reset(Duration::from_secs(10))?;
    assert_eq!(outcome, ReportedOutcome::Failed);
    assert!(message.contains("exited 0 but") && message.contains("still fails"), "{message}");
    Ok(())
}

#[test]
fn a_reset_with_no_gpu_probe_to_confirm_it_fails() -> anyhow::Result<()> {
    let fake = FakeNvidiaSmi::new("exit 0", HEALTHY)?;
    let (outcome, message) = reset_and_verify(&GpuResetConfig::default(), &gpu()?, &fake.search(), Vec::new);
    assert_eq!(outcome, ReportedOutcome::Failed);
    assert!(message.contains("no GPU probe"), "{message}");
    Ok(())
}

#[test]
fn a_missing_reset_tool_fails() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let nowhere = SearchPath(empty.path().as_os_str().to_os_string());
    let (outcome, message) = reset_and_verify(&GpuResetConfig::default(), &gpu()?, &nowhere, Vec::new);
    assert_eq!(outcome, ReportedOutcome::Failed);
    assert!(message.contains("not found"), "{message}");
    Ok(())
}

#[test]
fn amd_gpus_are_reset_with_amd_smi_by_bus_id() -> anyhow::Result<()> {
    let amd = GpuResetConfig { tool: ResetTool::AmdSmi, ..GpuResetConfig::default() };
    let (program, args) = amd.command(&gpu()?);
    assert_eq!((program.as_str(), args.join(" ")), ("amd-smi", "reset --gpureset -g 0000:3b:00.0".to_string()));
    Ok(())
}
