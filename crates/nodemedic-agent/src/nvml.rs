//! The NVIDIA probe through NVML (nvml-wrapper). The library is loaded at run time, so the same binary runs on
//! CPU-only nodes: there, a missing libnvidia-ml gives a NonGpuNode (no GPUs expected) or NvmlUnavailable
//! (GPUs expected; the nvidia-smi probe is the fallback) verdict, never an error.
//!
//! NVML is read through the safe wrapper only; row-remap state is not exposed by nvml-wrapper 0.13, so that
//! check stays with the `nvidia-smi -q -x` parser.

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::error::NvmlError;

use crate::verdict::{Health, Reason, Verdict, worst_of};

/// The most NVLinks a GPU has (NVML_NVLINK_MAX_LINKS).
const MAX_NVLINKS: u32 = 18;

fn is_lost(error: &NvmlError) -> bool {
    matches!(error, NvmlError::GpuLost | NvmlError::ResetRequired)
}

/// Maps a failed `Nvml::init` to a verdict.
pub fn init_failure_verdict(error: &NvmlError, expected_gpus: Option<u32>) -> Verdict {
    let gpus_expected = expected_gpus.unwrap_or(0) > 0;
    match error {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound if !gpus_expected => {
            Verdict::new(Health::Healthy, Reason::NonGpuNode, "libnvidia-ml is not installed and no NVIDIA GPUs are expected")
        }
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            Verdict::unknown(Reason::NvmlUnavailable, format!("libnvidia-ml could not be loaded ({error}); NVIDIA GPUs are expected"))
        }
        NvmlError::DriverNotLoaded if !gpus_expected => {
            Verdict::new(Health::Healthy, Reason::NonGpuNode, "the NVIDIA driver is not loaded and no NVIDIA GPUs are expected")
        }
        other if is_lost(other) => Verdict::unhealthy(Reason::GpuLost, format!("NVML init: {other}")),
        other => Verdict::unknown(Reason::NvmlUnavailable, format!("NVML init failed: {other}")),
    }
}

/// Runs the NVML checks once.
pub fn probe(expected_gpus: Option<u32>, max_pcie_replays: u64) -> Verdict {
    match Nvml::init() {
        Ok(nvml) => probe_with(&nvml, expected_gpus, max_pcie_replays),
        Err(error) => init_failure_verdict(&error, expected_gpus),
    }
}

/// Runs the NVML checks with an already initialised library (a long-running agent keeps one).
pub fn probe_with(nvml: &Nvml, expected_gpus: Option<u32>, max_pcie_replays: u64) -> Verdict {
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(error) => return Verdict::unknown(Reason::NvmlUnavailable, format!("NVML device count: {error}")),
    };
    let mut findings = Vec::new();
    if let Some(expected) = expected_gpus
        && expected != count
    {
        findings.push(Verdict::unhealthy(Reason::GpuCountMismatch, format!("NVML sees {count} GPUs, expected {expected}")));
    }
    if count == 0 && expected_gpus.unwrap_or(0) == 0 {
        return Verdict::new(Health::Healthy, Reason::NonGpuNode, "NVML sees no GPUs and none are expected");
    }
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(error) if is_lost(&error) => {
                findings.push(Verdict::unhealthy(Reason::GpuLost, format!("GPU {index}: {error}")));
                continue;
            }
            Err(error) => {
                findings.push(Verdict::unknown(Reason::NvmlUnavailable, format!("GPU {index}: {error}")));
                continue;
            }
        };
        let id = device.pci_info().map(|p| p.bus_id).unwrap_or_else(|_| index.to_string());
        let lost = |error: &NvmlError, what: &str, findings: &mut Vec<Verdict>| {
            if is_lost(error) {
                findings.push(Verdict::unhealthy(Reason::GpuLost, format!("GPU {id} {what}: {error}")));
            }
        };
        match device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
            Ok(n) if n > 0 => {
                findings.push(Verdict::unhealthy(Reason::UncorrectableEcc, format!("GPU {id} has {n} uncorrectable volatile ECC errors")))
            }
            Ok(_) => {}
            Err(error) => lost(&error, "ECC", &mut findings),
        }
        match device.are_pages_pending_retired() {
            Ok(true) => findings.push(Verdict::unhealthy(Reason::RetiredPagesPending, format!("GPU {id} has pages pending retirement"))),
            Ok(false) => {}
            Err(error) => lost(&error, "retired pages", &mut findings),
        }
        match device.current_throttle_reasons() {
            Ok(reasons) => {
                let hardware =
                    ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN;
                if reasons.intersects(hardware) {
                    findings.push(Verdict::unhealthy(
                        Reason::HardwareSlowdown,
                        format!("GPU {id} is in hardware slowdown ({:?})", reasons & hardware),
                    ));
                }
            }
            Err(error) => lost(&error, "throttle reasons", &mut findings),
        }
        match device.pcie_replay_counter() {
            Ok(replays) if u64::from(replays) > max_pcie_replays => findings
                .push(Verdict::unhealthy(Reason::PcieReplays, format!("GPU {id} has {replays} PCIe replays (bound {max_pcie_replays})"))),
            Ok(_) => {}
            Err(error) => lost(&error, "PCIe replays", &mut findings),
        }
        for link in 0..MAX_NVLINKS {
            match device.link_wrapper_for(link).is_active() {
                Ok(true) => {}
                Ok(false) => findings.push(Verdict::unhealthy(Reason::NvlinkInactive, format!("GPU {id} NVLink {link} is inactive"))),
                Err(error) => {
                    lost(&error, "NVLink", &mut findings);
                    break;
                }
            }
        }
    }
    worst_of(findings, format!("{count} NVIDIA GPUs healthy (NVML)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_libnvidia_ml_is_a_non_gpu_node_not_a_failure() {
        // This machine has no NVIDIA driver; on one that has it, the probe reports real GPUs instead.
        let verdict = probe(None, 1000);
        if verdict.reason == Reason::NonGpuNode {
            assert_eq!(verdict.health, Health::Healthy);
        } else {
            assert_ne!(verdict.reason, Reason::NvmlUnavailable, "{verdict:?}");
        }
    }

    #[test]
    fn missing_nvml_with_gpus_expected_is_unknown_not_unhealthy() {
        let verdict = init_failure_verdict(&NvmlError::LibraryNotFound, Some(8));
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(verdict.reason, Reason::NvmlUnavailable);
        let verdict = init_failure_verdict(&NvmlError::LibraryNotFound, None);
        assert_eq!(verdict.reason, Reason::NonGpuNode);
    }
}
