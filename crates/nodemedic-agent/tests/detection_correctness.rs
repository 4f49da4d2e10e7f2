//! Issue 13 §4: inputs from other GPU models, tool versions and failure cases on which the agent gave a wrong
//! answer. Each test names the class of input and replays a hand-made capture of it (tests/fixtures/handmade/).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodemedic_agent::catalog::{Catalog, FaultTracker};
use nodemedic_agent::config::{NvidiaSmiFormat, NvidiaSmiProbe, ToolSpec};
use nodemedic_agent::exec::SearchPath;
use nodemedic_agent::parse::{amd, dcgmi, infiniband, nvidia_smi};
use nodemedic_agent::probe::TextDuration;
use nodemedic_agent::tools;
use nodemedic_agent::{Health, Reason};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handmade").join(name)
}

fn read(name: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&std::fs::read(fixture(name))?).into_owned())
}

fn expecting(gpus: u32) -> nvidia_smi::NvidiaThresholds {
    nvidia_smi::NvidiaThresholds { expected_gpus: Some(gpus), ..Default::default() }
}

#[test]
fn a_truncated_nvidia_smi_q_whose_header_announces_8_gpus_is_not_healthy() -> anyhow::Result<()> {
    let report = nvidia_smi::parse_query_text(&read("nvidia-smi-text/query_8_announced_cut_in_gpu_2.txt")?)?;
    assert_eq!(report.attached_gpus, Some(8));
    let verdict = nvidia_smi::verdict(&report, &expecting(8));
    assert_eq!(verdict.health, Health::Unknown, "{verdict:?}");
    assert_eq!(verdict.reason, Reason::OutputIncomplete);
    assert!(verdict.message.contains("announces 8 GPUs but its output shows 2"), "{}", verdict.message);
    Ok(())
}

#[test]
fn a_gpu_section_without_any_health_field_is_not_healthy() -> anyhow::Result<()> {
    // All eight sections present, but the last one cut right after its name.
    let text = read("nvidia-smi-text/query_8_announced_cut_in_gpu_2.txt")?
        .replace("Attached GPUs                             : 8", "Attached GPUs : 2");
    let verdict = nvidia_smi::verdict(&nvidia_smi::parse_query_text(&text)?, &expecting(2));
    assert_eq!(verdict.reason, Reason::OutputIncomplete, "{verdict:?}");
    assert!(verdict.message.contains("00000000:3B:00.0"), "{}", verdict.message);
    Ok(())
}

#[test]
fn a_supported_clocks_listing_that_shows_one_gpu_is_not_healthy() -> anyhow::Result<()> {
    let report = nvidia_smi::parse_query_text(&read("nvidia-smi-text/query_d_supported_clocks_one_gpu_of_8.txt")?)?;
    for thresholds in [expecting(8), nvidia_smi::NvidiaThresholds::default()] {
        let verdict = nvidia_smi::verdict(&report, &thresholds);
        assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputIncomplete), "{verdict:?}");
    }
    // The same listing with a header that matches still says nothing about health.
    let one = read("nvidia-smi-text/query_d_supported_clocks_one_gpu_of_8.txt")?.replace(": 8", ": 1");
    let verdict = nvidia_smi::verdict(&nvidia_smi::parse_query_text(&one)?, &expecting(1));
    assert_eq!(verdict.reason, Reason::OutputIncomplete, "{verdict:?}");
    Ok(())
}

#[test]
fn an_ibstat_listing_that_ends_in_ibpanic_is_not_healthy() -> anyhow::Result<()> {
    let parsed = infiniband::parse_ibstat(&read("ibstat/ends_in_ibpanic.txt")?);
    let error = parsed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("ibpanic") && error.contains("mlx5_1"), "{error:?}");
    Ok(())
}

#[test]
fn a_non_utf8_byte_in_a_saved_kernel_log_does_not_hide_the_xid_79_after_it() -> anyhow::Result<()> {
    let path = fixture("kmsg/xid79_after_non_utf8_byte.kmsg");
    assert!(std::str::from_utf8(&std::fs::read(&path)?).is_err(), "the capture must hold a non-UTF-8 byte");
    let catalog = Catalog::embedded()?;
    let mut tracker = FaultTracker::new();
    let verdict = tools::kernel_log(&path, &catalog, &mut tracker, Duration::from_secs(86_401));
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::KernelFaultReboot), "{verdict:?}");
    Ok(())
}

#[test]
fn rocm_smi_json_after_a_warning_line_is_read_not_taken_for_a_missing_driver() -> anyhow::Result<()> {
    let cards = amd::parse_rocm_smi_json(&read("rocm-smi/warning_before_json.txt")?)?;
    let expect = amd::AmdExpectations { expected_gpus: Some(2), ..Default::default() };
    let verdict = amd::rocm_smi_verdict(&cards, &expect);
    assert!(verdict.is_healthy(), "{verdict:?}");
    Ok(())
}

#[test]
fn a_rocm_smi_warning_without_json_is_unknown_not_a_driver_fault() -> anyhow::Result<()> {
    let error = amd::parse_rocm_smi_json(&read("rocm-smi/warning_only.txt")?).err();
    let error = error.ok_or_else(|| anyhow::anyhow!("a warning alone must not parse"))?;
    let verdict = amd::amd_failure_verdict(&error, Some(2));
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputUnparseable), "{verdict:?}");
    // What a missing driver really prints still counts as one.
    let missing = amd::parse_rocm_smi_json(&read("rocm-smi/driver_not_loaded.txt")?).err();
    let missing = missing.ok_or_else(|| anyhow::anyhow!("the driver message must not parse"))?;
    assert_eq!(amd::amd_failure_verdict(&missing, Some(2)).reason, Reason::AmdDriverNotLoaded);
    Ok(())
}

#[test]
fn a_dcgmi_diag_with_zero_results_is_not_healthy() -> anyhow::Result<()> {
    let results = dcgmi::parse_diag(&read("dcgmi/diag_zero_results.json")?)?;
    assert!(results.is_empty());
    let verdict = dcgmi::diag_verdict(&results);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputIncomplete), "{verdict:?}");
    Ok(())
}

/// A fake tool on a temp PATH: prints `body`'s output and exits as it says.
fn fake_tool(dir: &Path, name: &str, body: &str) -> anyhow::Result<SearchPath> {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(SearchPath::prepend(dir))
}

fn dcgmi_diag() -> ToolSpec {
    ToolSpec {
        path: "dcgmi".to_string(),
        args: ["diag", "-r", "1", "-j"].map(String::from).to_vec(),
        timeout: TextDuration(Duration::from_secs(10)),
    }
}

#[test]
fn a_failing_tool_is_quoted_by_what_it_said_not_by_its_first_stdout_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let capture = fixture("dcgmi/diag_exit_226_host_engine_unreachable.json");
    let search = fake_tool(dir.path(), "dcgmi", &format!("cat '{}'\nexit 226", capture.display()))?;
    let verdict = tools::dcgmi_health(&dcgmi_diag(), &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::ToolFailed), "{verdict:?}");
    assert!(verdict.message.contains("exited 226"), "{}", verdict.message);
    assert!(verdict.message.contains("unable to establish a connection"), "{}", verdict.message);
    assert!(!verdict.message.ends_with('{'), "{}", verdict.message);
    Ok(())
}

#[test]
fn output_cut_at_8_mib_says_so_and_is_not_healthy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A healthy-looking 8-GPU CSV whose rows go on past the capture limit.
    let capture = fixture("../nvidia-smi-csv/query-gpu-8xH100.csv.txt");
    let body = format!("cat '{}'\nyes ' ' | head -c 9000000\nexit 0", capture.display());
    let search = fake_tool(dir.path(), "nvidia-smi", &body)?;
    let probe = NvidiaSmiProbe { format: NvidiaSmiFormat::Csv, ..NvidiaSmiProbe::default() };
    let verdict = tools::nvidia_smi(&probe, Some(8), 1000, &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputIncomplete), "{verdict:?}");
    assert!(verdict.message.contains("cut"), "{}", verdict.message);
    Ok(())
}

#[test]
fn an_unsupported_format_is_reported_as_such_not_as_a_tool_failure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let capture = fixture("nvidia-smi-csv/query_gpu_field_not_valid_on_535.csv.txt");
    let search = fake_tool(dir.path(), "nvidia-smi", &format!("cat '{}'\nexit 2", capture.display()))?;
    let probe = NvidiaSmiProbe { format: NvidiaSmiFormat::Csv, ..NvidiaSmiProbe::default() };
    let verdict = tools::nvidia_smi(&probe, Some(8), 1000, &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::UnsupportedFormat), "{verdict:?}");
    assert!(verdict.message.contains("unsupported format") && verdict.message.contains("not a valid field"), "{}", verdict.message);
    Ok(())
}

#[test]
fn a_port_whose_cumulative_link_downed_and_error_counters_are_large_is_not_healthy() -> anyhow::Result<()> {
    let ports = infiniband::read_sysfs(&fixture("infiniband-sysfs/ndr_port_with_high_error_counters"))?;
    let expect = infiniband::IbExpectations { expected_ports: Some(1), ..Default::default() };
    let verdict = infiniband::verdict(&ports, &expect, None);
    assert_eq!((verdict.health, verdict.reason), (Health::Unhealthy, Reason::IbLinkFlapping), "{verdict:?}");
    assert!(verdict.message.contains("mlx5_2/1 link went down 212 times"), "{}", verdict.message);
    assert!(verdict.message.contains("symbol_error is 48113"), "{}", verdict.message);
    assert!(verdict.message.contains("port_rcv_errors is 2291"), "{}", verdict.message);
    // The bounds are the operator's: without them only the port state is judged.
    let unbounded = infiniband::IbExpectations { max_link_downed: None, max_error_count: None, ..expect };
    assert!(infiniband::verdict(&ports, &unbounded, None).is_healthy());
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().ok_or_else(|| anyhow::anyhow!("no file name"))?);
        if path.is_dir() { copy_tree(&path, &target)? } else { std::fs::copy(&path, &target).map(drop)? }
    }
    Ok(())
}

#[test]
fn the_infiniband_probe_compares_counters_with_its_previous_reading() -> anyhow::Result<()> {
    // Issue 13 §3: the probe keeps its last reading for the agent's lifetime, so a counter that grows between
    // two runs shows, even far below the cumulative bounds.
    let root = tempfile::tempdir()?;
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/infiniband-sysfs/h100_node_ndr"), root.path())?;
    let yaml = format!("probes:\n  infiniband: {{ sysfs_root: '{}', expected_ports: 2 }}\n", root.path().display());
    let config = nodemedic_agent::AgentConfig::from_yaml(&yaml)?;
    let catalog = Catalog::embedded()?;
    let search = SearchPath::prepend(root.path());
    let memory = nodemedic_agent::check::ProbeMemory::default();
    let run = || {
        nodemedic_agent::check::run_probe_remembering(
            &config,
            &catalog,
            &search,
            "infiniband",
            &memory,
            nodemedic_agent::gpu_count::ExpectedGpus::default(),
        )
    };
    assert!(run().is_some_and(|v| v.is_healthy()), "the recorded H100 node is healthy");

    let counters = root.path().join("mlx5_0/ports/1/counters");
    std::fs::write(counters.join("link_downed"), "2\n")?;
    let verdict = run().ok_or_else(|| anyhow::anyhow!("infiniband is configured"))?;
    assert_eq!(verdict.reason, Reason::IbLinkFlapping, "{verdict:?}");
    assert!(verdict.message.contains("mlx5_0/1 link went down 2 times since the last check"), "{}", verdict.message);

    std::fs::write(counters.join("symbol_error"), "40\n")?;
    let verdict = run().ok_or_else(|| anyhow::anyhow!("infiniband is configured"))?;
    assert_eq!(verdict.reason, Reason::IbPortErrors, "{verdict:?}");
    assert!(verdict.message.contains("symbol_error grew by 40"), "{}", verdict.message);

    // Steady counters are healthy again; a one-off check (no memory) cannot see growth at all.
    assert!(run().is_some_and(|v| v.is_healthy()));
    assert!(nodemedic_agent::check::run_probe(&config, &catalog, &search, "infiniband").is_some_and(|v| v.is_healthy()));
    Ok(())
}

/// Issue 16 §1: a tool's JSON that repeats a key is ambiguous (serde would keep the last value):
/// unreadable data is Unknown, never a reason to remediate, and the message names the key.
#[test]
fn tool_json_that_repeats_a_key_is_unknown_not_a_reason_to_remediate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let health = r#"{"body": {"Overall Health": {"value": "Healthy"}, "Overall Health": {"value": "Failure"}}}"#;
    let search = fake_tool(dir.path(), "dcgmi", &format!("cat <<'JSON'\n{health}\nJSON\nexit 0"))?;
    let spec = ToolSpec {
        path: "dcgmi".to_string(),
        args: ["health", "-c", "-j"].map(String::from).to_vec(),
        timeout: TextDuration(Duration::from_secs(10)),
    };
    let verdict = tools::dcgmi_health(&spec, &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputUnparseable), "{verdict:?}");
    assert!(verdict.message.contains("duplicate key `Overall Health`"), "{}", verdict.message);

    // dcgmi keys are matched without regard to case: two that differ only in case are as ambiguous.
    let health = r#"{"body": {"Overall Health": {"value": "Healthy"}, "overall health": {"value": "Failure"}}}"#;
    let search = fake_tool(dir.path(), "dcgmi", &format!("cat <<'JSON'\n{health}\nJSON\nexit 0"))?;
    let verdict = tools::dcgmi_health(&spec, &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputUnparseable), "{verdict:?}");
    assert!(verdict.message.contains("differ only in case"), "{}", verdict.message);

    let cards = r#"{"card0": {"GPU use (%)": "0"}, "card0": {"GPU use (%)": "100"}}"#;
    let search = fake_tool(dir.path(), "rocm-smi", &format!("cat <<'JSON'\n{cards}\nJSON\nexit 0"))?;
    let verdict = tools::rocm_smi(&nodemedic_agent::config::RocmSmiProbe::default(), Some(1), &search);
    assert_eq!((verdict.health, verdict.reason), (Health::Unknown, Reason::OutputUnparseable), "{verdict:?}");
    assert!(verdict.message.contains("duplicate key `card0`"), "{}", verdict.message);
    Ok(())
}
