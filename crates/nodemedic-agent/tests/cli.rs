//! `nodemedic-agent check --once` end to end, against fake tools on a temp PATH named in the config file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn script(dir: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn replay(dir: &Path, name: &str, fixture_name: &str, code: i32) -> anyhow::Result<()> {
    script(dir, name, &format!("cat '{}'\nexit {code}", fixture(fixture_name).display()))
}

/// A node with fake tools: a healthy T4 via nvidia-smi, a Xid 79 kernel log, the recorded H100 fabric, a lossy
/// ping and two plugins.
fn node(dir: &Path, kernel_log: &str) -> anyhow::Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    replay(&bin, "nvidia-smi", "nvidia-smi-xml/tesla-t4.xml", 0)?;
    replay(&bin, "ping", "handmade/ping/loss_40_percent.txt", 1)?;
    replay(&bin, "iperf3", "handmade/iperf3/client_25g.json", 0)?;
    script(&bin, "check_ok.sh", "echo all good")?;
    script(&bin, "check_bad.sh", "echo 'fan 3 stalled'\nexit 1")?;
    let config = format!(
        r#"
expected_gpus: 1
search_path: "{bin}:/usr/bin:/bin"
probes:
  nvidia_smi: {{}}
  kernel_log: {{ source: "{kernel}" }}
  infiniband: {{ sysfs_root: "{sysfs}", expected_ports: 2 }}
  ping: {{ peer: 10.0.0.2, max_loss_percent: 5 }}
  iperf3: {{ peer: 10.0.0.3, min_gbits_per_second: 10 }}
  plugins:
    - {{ name: ok, path: check_ok.sh }}
    - {{ name: fans, path: check_bad.sh }}
"#,
        bin = bin.display(),
        kernel = fixture(kernel_log).display(),
        sysfs = fixture("infiniband-sysfs/h100_node_ndr").display(),
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn agent(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_nodemedic-agent")).args(args).output().context("running nodemedic-agent")
}

#[test]
fn check_once_prints_a_table_row_per_probe_and_exits_1_when_something_is_unhealthy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = node(dir.path(), "handmade/kmsg/xid79_fallen_off_bus.kmsg")?;
    let output = agent(&["check", "--once", "--config", &config.display().to_string()])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("PROBE") && lines[0].contains("REASON") && lines[0].contains("MESSAGE"), "{stdout}");
    let row = |probe: &str| lines.iter().find(|l| l.starts_with(probe)).copied().unwrap_or("");
    assert!(row("nvidia-smi").contains("Healthy") && row("nvidia-smi").contains("AllChecksPassed"), "{stdout}");
    assert!(row("kernel-log").contains("Unhealthy") && row("kernel-log").contains("KernelFaultReboot"), "{stdout}");
    assert!(row("kernel-log").contains("Xid 79"), "{stdout}");
    assert!(row("infiniband").contains("Healthy"), "{stdout}");
    assert!(row("ping").contains("PacketLoss"), "{stdout}");
    assert!(row("iperf3").contains("Healthy"), "{stdout}");
    assert!(row("plugin/ok").contains("all good"), "{stdout}");
    assert!(row("plugin/fans").contains("CustomCheckProblem") && row("plugin/fans").contains("fan 3 stalled"), "{stdout}");
    Ok(())
}

#[test]
fn check_once_json_lists_probe_health_reason_and_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = node(dir.path(), "handmade/kmsg/no_gpu_faults.kmsg")?;
    let output = agent(&["check", "--once", "--config", &config.display().to_string(), "--json"])?;
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).context("stdout is JSON")?;
    let reports = reports.as_array().context("a JSON array")?;
    assert_eq!(reports.len(), 7);
    let kernel = reports.iter().find(|r| r["probe"] == "kernel-log").context("kernel-log row")?;
    assert_eq!(kernel["health"], "Healthy");
    assert_eq!(kernel["reason"], "AllChecksPassed");
    assert!(kernel["message"].as_str().is_some_and(|m| m.contains("no GPU faults")));
    assert!(reports.iter().all(|r| r["elapsed_ms"].is_u64()));
    Ok(())
}

#[test]
fn check_without_once_or_with_a_bad_config_explains_itself() -> anyhow::Result<()> {
    let output = agent(&["check"])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("check --once"));

    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "probes:\n  nvidia_smy: {}\n")?;
    let output = agent(&["check", "--once", "--config", &bad.display().to_string()])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nvidia_smy") && stderr.contains("bad.yaml"), "{stderr}");
    Ok(())
}

#[test]
fn check_once_without_a_config_runs_nvml_and_reports_a_non_gpu_node_here() -> anyhow::Result<()> {
    let output = agent(&["check", "--once", "--json"])?;
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).context("stdout is JSON")?;
    let nvml = reports.get(0).context("one row")?;
    assert_eq!(nvml["probe"], "nvml");
    // On a machine with the NVIDIA driver this row describes real GPUs instead.
    if nvml["reason"] == "NonGpuNode" {
        assert_eq!(nvml["health"], "Healthy");
        assert_eq!(output.status.code(), Some(0));
    }
    Ok(())
}

#[test]
fn the_catalog_subcommand_prints_the_embedded_catalog() -> anyhow::Result<()> {
    let output = agent(&["catalog"])?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("nvidia_xid:") && text.contains("codes: [79]"), "{text}");
    Ok(())
}

#[test]
fn run_refuses_a_safe_time_below_the_floor_and_names_the_floor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "self_fencing:\n  api_loss_window: 30s\n  safe_time_to_assume_rebooted: 1m\n")?;
    let output = agent(&["run", "--node", "gpu-001", "--config", &config.display().to_string()])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 30s + 2 × 10s + 5s + 60s + 30s.
    assert!(stderr.contains("safeTimeToAssumeRebooted 1m is below the floor 2m25s"), "{stderr}");
    Ok(())
}
