//! The NVIDIA probe through NVML (nvml-wrapper). The library is loaded at run time, so the same binary runs on
//! CPU-only nodes: there, a missing libnvidia-ml gives a NonGpuNode (no GPUs expected) or NvmlUnavailable
//! (GPUs expected; the nvidia-smi probe is the fallback) verdict, never an error.
//!
//! NVML is read through the safe wrapper only; row-remap state is not exposed by nvml-wrapper 0.13, so that
//! check stays with the `nvidia-smi -q -x` parser. The running agent keeps one library handle ([`NvmlHandle`])
//! for its lifetime and, where NVML is present, receives critical-Xid events through NVML's event set
//! ([`follow_xid_events`]) as well as from the kernel log.

use std::sync::{Arc, Mutex, PoisonError};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;

use crate::catalog::FaultKey;
use crate::parse::kernel::short_pci;
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

/// The NVML library held for the agent's lifetime: loaded on first use and kept; a load that failed (no driver
/// yet) is tried again on the next use.
#[derive(Default)]
pub struct NvmlHandle {
    nvml: Mutex<Option<Arc<Nvml>>>,
}

impl std::fmt::Debug for NvmlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self.nvml.lock().map(|n| n.is_some()).unwrap_or(false);
        f.debug_struct("NvmlHandle").field("loaded", &loaded).finish()
    }
}

impl NvmlHandle {
    /// The loaded library, loading it if needed.
    pub fn get(&self) -> Result<Arc<Nvml>, NvmlError> {
        let mut slot = self.nvml.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(nvml) = slot.as_ref() {
            return Ok(nvml.clone());
        }
        let nvml = Arc::new(Nvml::init()?);
        *slot = Some(nvml.clone());
        Ok(nvml)
    }

    /// Runs the NVML checks with the held library.
    pub fn probe(&self, expected_gpus: Option<u32>, max_pcie_replays: u64) -> Verdict {
        match self.get() {
            Ok(nvml) => probe_with(&nvml, expected_gpus, max_pcie_replays),
            Err(error) => init_failure_verdict(&error, expected_gpus),
        }
    }
}

/// The fault an NVML critical-Xid event reports: the GPU by its bus ID (named as the kernel log names it, so the
/// same incident from both sources counts once) and the Xid. An event without an Xid value says nothing.
pub fn xid_event_fault(bus_id: &str, xid: Option<&XidError>) -> Option<(String, FaultKey)> {
    match xid {
        Some(XidError::Value(code)) => u32::try_from(*code).ok().map(|code| (short_pci(bus_id), FaultKey::NvidiaXid(code))),
        Some(XidError::Unknown) | None => None,
    }
}

/// Receives NVML's critical-Xid events on a thread of its own for the process's lifetime and hands each to
/// `sink`. Err says why there are none (then Xids come from the kernel log only).
pub fn follow_xid_events(nvml: Arc<Nvml>, sink: impl Fn(&str, &FaultKey) + Send + 'static) -> Result<(), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("nvml-xid-events".into())
        .spawn(move || {
            let registered = (|| {
                let mut set = nvml.create_event_set().map_err(|e| format!("creating an NVML event set: {e}"))?;
                let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
                for index in 0..count {
                    let device = nvml.device_by_index(index).map_err(|e| format!("NVML GPU {index}: {e}"))?;
                    set = device
                        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
                        .map_err(|e| format!("registering GPU {index} for Xid events: {}", e.error))?;
                }
                Ok(set)
            })();
            let set = match registered {
                Ok(set) => {
                    let _ = ready_tx.send(Ok(()));
                    set
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            loop {
                match set.wait(1000) {
                    Ok(event) => {
                        let bus_id = event.device.pci_info().map(|p| p.bus_id).unwrap_or_else(|_| "nvidia".to_string());
                        if let Some((device, key)) = xid_event_fault(&bus_id, event.event_data.as_ref()) {
                            sink(&device, &key);
                        }
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(error) => {
                        tracing::warn!(%error, "waiting for NVML Xid events; Xids now come from the kernel log only");
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("starting the NVML event thread: {e}"))?;
    ready_rx.recv().unwrap_or_else(|_| Err("the NVML event thread ended before registering".to_string()))
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
    fn an_nvml_xid_event_names_the_gpu_as_the_kernel_log_does() {
        let found = xid_event_fault("00000000:3B:00.0", Some(&XidError::Value(79)));
        assert_eq!(found, Some(("0000:3b:00".to_string(), FaultKey::NvidiaXid(79))));
        assert_eq!(xid_event_fault("00000000:3B:00.0", Some(&XidError::Unknown)), None);
        assert_eq!(xid_event_fault("00000000:3B:00.0", None), None);
        assert_eq!(xid_event_fault("00000000:3B:00.0", Some(&XidError::Value(u64::MAX))), None);
    }

    #[test]
    fn without_libnvidia_ml_there_is_no_event_thread_and_the_handle_says_why() {
        // No NVIDIA driver on this machine: the handle fails to load and stays empty, so no Xid events are
        // followed; on a GPU node the same call loads the library once and keeps it.
        let handle = NvmlHandle::default();
        match handle.get() {
            Err(error) => assert_eq!(init_failure_verdict(&error, None).reason, Reason::NonGpuNode),
            Ok(first) => assert!(handle.get().is_ok_and(|again| Arc::ptr_eq(&first, &again))),
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
