//! Parsers that no probe called before issue 13 (NVLink status, the default nvidia-smi table, rocm-smi text,
//! ibstat, `rdma link`, ethtool settings and statistics), each reached through its probe's configuration: a fake tool on a temp PATH replays a
//! capture and `run_probe` gives the verdict the agent would publish.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nodemedic_agent::catalog::Catalog;
use nodemedic_agent::check::run_probe;
use nodemedic_agent::{AgentConfig, Health, Reason, Verdict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Runs `probe` from `yaml` with `tool` replaying `capture` and exiting `code`.
fn replay(yaml: &str, probe: &str, tool: &str, capture: &str, code: i32) -> anyhow::Result<Verdict> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(tool);
    std::fs::write(&path, format!("#!/bin/sh\ncat '{}'\nexit {code}\n", fixture(capture).display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    // The fake tool itself needs `cat` from the system directories.
    let yaml = format!("search_path: '{}:/usr/bin:/bin'\n{yaml}", dir.path().display());
    let config = AgentConfig::from_yaml(&yaml)?;
    let search = nodemedic_agent::check::search_path(&config);
    run_probe(&config, &Catalog::embedded()?, &search, probe).ok_or_else(|| anyhow::anyhow!("probe {probe} is not configured"))
}

fn is(verdict: &Verdict, health: Health, reason: Reason) {
    assert_eq!((verdict.health, verdict.reason), (health, reason), "{verdict:?}");
}

#[test]
fn the_nvlink_probe_reads_nvidia_smi_nvlink_status() -> anyhow::Result<()> {
    let yaml = "probes:\n  nvlink: {}\n";
    is(
        &replay(yaml, "nvlink", "nvidia-smi", "nvidia-smi-text/nvlink_status_a100_healthy.txt", 0)?,
        Health::Healthy,
        Reason::AllChecksPassed,
    );
    is(
        &replay(yaml, "nvlink", "nvidia-smi", "handmade/nvidia-smi-text/nvlink_one_link_inactive.txt", 0)?,
        Health::Unhealthy,
        Reason::NvlinkInactive,
    );
    let c2c = "probes:\n  nvlink: { args: [c2c, -s] }\n";
    is(&replay(c2c, "nvlink", "nvidia-smi", "nvidia-smi-text/c2c_status_gh200.txt", 0)?, Health::Healthy, Reason::AllChecksPassed);
    Ok(())
}

#[test]
fn the_nvidia_smi_probe_reads_the_default_table_when_told_so() -> anyhow::Result<()> {
    let yaml = "expected_gpus: 8\nprobes:\n  nvidia_smi: { args: [], format: table }\n";
    is(
        &replay(yaml, "nvidia-smi", "nvidia-smi", "nvidia-smi-text/table_8xh100_550.90.07.txt", 0)?,
        Health::Healthy,
        Reason::AllChecksPassed,
    );
    let two = yaml.replace("expected_gpus: 8", "expected_gpus: 2");
    is(&replay(&two, "nvidia-smi", "nvidia-smi", "handmade/nvidia-smi-text/table_gpu_err.txt", 0)?, Health::Unhealthy, Reason::GpuLost);
    Ok(())
}

#[test]
fn the_rocm_smi_probe_reads_its_text_listing_when_told_so() -> anyhow::Result<()> {
    let yaml = "probes:\n  rocm_smi: { args: [--showuse], format: text }\n";
    let two = format!("expected_gpus: 2\n{yaml}");
    is(&replay(&two, "rocm-smi", "rocm-smi", "handmade/rocm-smi/text_showuse_mi210_x2.txt", 0)?, Health::Healthy, Reason::AllChecksPassed);
    let four = format!("expected_gpus: 4\n{yaml}");
    is(
        &replay(&four, "rocm-smi", "rocm-smi", "handmade/rocm-smi/text_showuse_mi210_x2.txt", 0)?,
        Health::Unhealthy,
        Reason::GpuCountMismatch,
    );
    Ok(())
}

#[test]
fn the_infiniband_probe_reads_ibstat_or_rdma_link_when_told_so() -> anyhow::Result<()> {
    let ibstat = "probes:\n  infiniband: { source: ibstat, expected_ports: 12 }\n";
    is(&replay(ibstat, "infiniband", "ibstat", "ibstat/h100_all_active.txt", 0)?, Health::Healthy, Reason::AllChecksPassed);
    let two = ibstat.replace("expected_ports: 12", "expected_ports: 2");
    is(&replay(&two, "infiniband", "ibstat", "handmade/ibstat/one_port_down.txt", 0)?, Health::Unhealthy, Reason::IbPortDown);
    let panicked = replay(ibstat, "infiniband", "ibstat", "handmade/ibstat/ends_in_ibpanic.txt", 255)?;
    is(&panicked, Health::Unknown, Reason::ToolFailed);
    assert!(panicked.message.contains("stat of IB device 'mlx5_1' failed"), "{}", panicked.message);
    let rdma = "probes:\n  infiniband: { source: rdma-link }\n";
    is(&replay(rdma, "infiniband", "rdma", "rdma/rdma_link_json_ionic_4ports.json", 0)?, Health::Healthy, Reason::AllChecksPassed);
    is(&replay(rdma, "infiniband", "rdma", "handmade/rdma/link_down.json", 0)?, Health::Unhealthy, Reason::IbPortDown);
    Ok(())
}

#[test]
fn the_ethtool_probe_checks_link_speed_and_error_counters_per_interface() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ethtool");
    let (settings, stats) = (fixture("ethtool/settings_10g_eth0.txt"), fixture("ethtool/S_virtio_net_ens3.txt"));
    let down = fixture("handmade/ethtool/link_down.txt");
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in\n  '-S eth0') cat '{}' ;;\n  eth0) cat '{}' ;;\n  eth1) cat '{}' ;;\n  *) echo \"Cannot get device settings: No such device\" >&2; exit 75 ;;\nesac\n",
        stats.display(),
        settings.display(),
        down.display()
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let run = |probe: &str| -> anyhow::Result<Verdict> {
        let yaml = format!("search_path: '{}:/usr/bin:/bin'\nprobes:\n  ethtool: {probe}\n", dir.path().display());
        let config = AgentConfig::from_yaml(&yaml)?;
        let search = nodemedic_agent::check::search_path(&config);
        run_probe(&config, &Catalog::embedded()?, &search, "ethtool").ok_or_else(|| anyhow::anyhow!("ethtool is configured"))
    };
    is(&run("{ interfaces: [eth0], min_speed_mbps: 10000, max_errors: 0 }")?, Health::Healthy, Reason::AllChecksPassed);
    is(&run("{ interfaces: [eth0], min_speed_mbps: 25000 }")?, Health::Unhealthy, Reason::NicLinkDown);
    is(&run("{ interfaces: [eth0, eth1] }")?, Health::Unhealthy, Reason::NicLinkDown);
    let missing = run("{ interfaces: [eth9] }")?;
    is(&missing, Health::Unknown, Reason::ToolFailed);
    assert!(missing.message.contains("No such device"), "{}", missing.message);
    assert!(AgentConfig::from_yaml("probes:\n  ethtool: { interfaces: [] }\n").is_err(), "no interfaces is refused");
    Ok(())
}
