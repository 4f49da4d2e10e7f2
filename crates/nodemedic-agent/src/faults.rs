//! The kernel-log probe's memory: fault sightings for the catalog's escalation windows ("Xid 79 twice in 7
//! days"), the faults that keep the node unhealthy now, and how far the kernel log has been read. The running
//! agent keeps one for its lifetime and writes it to a state file on the node's disk (temp file, fsync, rename,
//! directory fsync) after every new sighting, so counts survive agent restarts and reboots.
//!
//! A kernel-log line records an event, not a state: a fault keeps the probe Unhealthy for `hold` after it was
//! seen, and only within the boot it was seen in (the reboot is what the reboot-class faults ask for). What
//! persists after that (a GPU still off the bus, pages pending retirement) is for the state probes (NVML,
//! nvidia-smi) to report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::catalog::{ActionClass, ActionClassExt, Catalog, Classification, FaultKey, FaultTracker, SAME_INCIDENT_WITHIN, TrackedFault};
use crate::probe::format_duration;
use crate::verdict::{Reason, Verdict};

/// The state file's format version.
pub const STATE_FORMAT: u32 = 1;

/// Where the kernel log was last read up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogCursor {
    /// The boot the kmsg sequence number belongs to (sequence numbers start again at each boot).
    pub boot_id: String,
    /// The last /dev/kmsg record consumed in that boot.
    pub kmsg_sequence: Option<u64>,
    /// For a regular-file source: its inode and how many bytes were consumed (a new inode or a shorter file is a
    /// rotated log, read from its start).
    pub file_inode: Option<u64>,
    pub file_offset: u64,
}

/// A fault that keeps the probe Unhealthy until it is `hold` old or the node has booted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveFault {
    pub device: String,
    pub key: FaultKey,
    pub action: ActionClass,
    /// The catalog's words for it (code, meaning, action, escalation count).
    pub reason: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub seen_at_ms: u64,
    pub boot_id: String,
}

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultState {
    pub format: u32,
    pub cursor: LogCursor,
    pub sightings: Vec<TrackedFault>,
    pub active: Vec<ActiveFault>,
}

#[derive(Debug, Error)]
pub enum FaultStateError {
    #[error("writing fault history {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// What was found at the state file's path.
#[derive(Debug)]
pub enum LoadedState {
    /// No file: the first start on this node.
    Missing,
    Restored(FaultState),
    /// Unreadable, truncated, not this format: reported, and the agent starts with an empty history.
    Corrupt(String),
}

/// Reads the state file. Never fails: a file that cannot be used is [`LoadedState::Corrupt`].
pub fn load_state(path: &Path) -> LoadedState {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LoadedState::Missing,
        Err(e) => LoadedState::Corrupt(format!("reading {}: {e}", path.display())),
        Ok(bytes) => match serde_json::from_slice::<FaultState>(&bytes) {
            Ok(state) if state.format == STATE_FORMAT => LoadedState::Restored(state),
            Ok(state) => LoadedState::Corrupt(format!("{} has format {}, expected {STATE_FORMAT}", path.display(), state.format)),
            Err(e) => LoadedState::Corrupt(format!("{} is not a fault history: {e}", path.display())),
        },
    }
}

/// Writes the state durably: a temp file beside it, fsynced, renamed over it, and the directory fsynced.
pub fn save_state(path: &Path, state: &FaultState) -> Result<(), FaultStateError> {
    let failed = |source| FaultStateError::Write { path: path.display().to_string(), source };
    let text = serde_json::to_vec(state).map_err(|e| failed(std::io::Error::other(e)))?;
    crate::durable::write_atomically(path, &text).map_err(failed)?;
    Ok(())
}

/// The fault history in memory.
#[derive(Debug, Clone)]
pub struct FaultMemory {
    tracker: FaultTracker,
    /// When each (GPU, fault) was last reported in this agent's run, to count an incident reported by two sources
    /// (kmsg and NVML, or an Xid 79 line and its "fallen off the bus" line) once.
    last_report_ms: BTreeMap<(String, FaultKey), u64>,
    active: Vec<ActiveFault>,
    pub cursor: LogCursor,
    boot_id: String,
    hold: Duration,
}

impl FaultMemory {
    /// The memory for boot `boot_id`, from a saved state or empty. From an earlier boot, the kmsg cursor is
    /// dropped (the new boot's records are all new) and that boot's active faults end; sightings stay.
    pub fn restore(saved: Option<FaultState>, boot_id: &str, hold: Duration) -> FaultMemory {
        let saved = saved.unwrap_or_default();
        let mut cursor = saved.cursor;
        if cursor.boot_id != boot_id {
            cursor.boot_id = boot_id.to_string();
            cursor.kmsg_sequence = None;
        }
        let active = saved.active.into_iter().filter(|a| a.boot_id == boot_id).collect();
        FaultMemory {
            tracker: FaultTracker::from_records(saved.sightings),
            last_report_ms: BTreeMap::new(),
            active,
            cursor,
            boot_id: boot_id.to_string(),
            hold,
        }
    }

    /// Counts one sighting at `at_ms` (wall clock) and classifies it; a class that makes the node unhealthy
    /// becomes an active fault. A report within [`SAME_INCIDENT_WITHIN`] of the previous one for the same GPU and
    /// fault in this run is the same incident and is not counted again.
    pub fn observe(&mut self, catalog: &Catalog, device: &str, key: &FaultKey, at_ms: u64) -> Classification {
        let pair = (device.to_string(), key.clone());
        let gap_ms = u64::try_from(SAME_INCIDENT_WITHIN.as_millis()).unwrap_or(u64::MAX);
        let repeat = self.last_report_ms.get(&pair).is_some_and(|last| at_ms.abs_diff(*last) < gap_ms);
        self.last_report_ms.insert(pair, at_ms);
        let at = Duration::from_millis(at_ms);
        let classification =
            if repeat { self.tracker.observe_repeat(catalog, device, key, at) } else { self.tracker.observe(catalog, device, key, at) };
        if classification.action.kernel_reason().is_some() {
            let fault = ActiveFault {
                device: device.to_string(),
                key: key.clone(),
                action: classification.action,
                reason: classification.reason.clone(),
                seen_at_ms: at_ms,
                boot_id: self.boot_id.clone(),
            };
            match self.active.iter_mut().find(|a| a.device == device && &a.key == key) {
                // A stronger (escalated) or newer sighting replaces the older one.
                Some(old) if (fault.action, fault.seen_at_ms) >= (old.action, old.seen_at_ms) => *old = fault,
                Some(_) => {}
                None => self.active.push(fault),
            }
        }
        classification
    }

    /// Drops active faults older than `hold` and sightings older than every escalation window.
    pub fn expire(&mut self, catalog: &Catalog, now_ms: u64) {
        let hold_ms = u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX);
        self.active.retain(|a| now_ms.saturating_sub(a.seen_at_ms) <= hold_ms);
        self.tracker.forget_before(catalog, Duration::from_millis(now_ms));
    }

    /// The probe's verdict at `now_ms`: the strongest active fault, or healthy.
    pub fn verdict(&self, now_ms: u64) -> Verdict {
        let hold_ms = u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX);
        let live: Vec<&ActiveFault> = self.active.iter().filter(|a| now_ms.saturating_sub(a.seen_at_ms) <= hold_ms).collect();
        let Some(worst) = live.iter().max_by_key(|a| (a.action, a.seen_at_ms)) else {
            return Verdict::healthy(format!("no GPU faults in the kernel log within the last {}", format_duration(self.hold)));
        };
        let reason = worst.action.kernel_reason().unwrap_or(Reason::KernelFaultReboot);
        let others = live.len() - 1;
        let tail = if others == 0 { String::new() } else { format!(" ({others} more active GPU faults)") };
        let age = format_duration(Duration::from_millis(now_ms.saturating_sub(worst.seen_at_ms) / 1000 * 1000));
        Verdict::unhealthy(reason, format!("{} on {}, {age} ago{tail}", worst.reason, worst.device))
    }

    /// A `resetGpu` step on `gpu` succeeded (the vendor tool exited 0 and the GPU tool probes pass): the
    /// active faults on that GPU which a reset fixes end now, so the kernel-log probe stops holding the node
    /// unhealthy for the rest of `hold`. Faults that need more than a reset (reboot, replace, support) and
    /// faults on other GPUs stay; every sighting stays, so escalation windows keep counting. Returns how many
    /// ended.
    pub fn cleared_by_reset(&mut self, gpu: &nodemedic_core::gpu::GpuDevice) -> usize {
        let before = self.active.len();
        let on_gpu =
            |a: &ActiveFault| nodemedic_core::gpu::GpuDevice::from_bus_id(&a.device, None).is_ok_and(|d| d.pci_bus_id == gpu.pci_bus_id);
        self.active.retain(|a| !(on_gpu(a) && a.action <= ActionClass::ResetGpu));
        before - self.active.len()
    }

    /// What the state file holds.
    pub fn state(&self) -> FaultState {
        FaultState { format: STATE_FORMAT, cursor: self.cursor.clone(), sightings: self.tracker.records(), active: self.active.clone() }
    }

    pub fn active(&self) -> &[ActiveFault] {
        &self.active
    }

    /// The GPU a `resetGpu` step could be aimed at, at `now_ms`: the one device every live fault is on,
    /// read as a PCI bus id. None when there is no live fault, when live faults are on more than one
    /// device (resetting one would not fix the other), or when a device is not a bus id (an NVSwitch, a
    /// line naming only "nvidia").
    pub fn faulty_gpu(&self, now_ms: u64) -> Option<nodemedic_core::gpu::GpuDevice> {
        let hold_ms = u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX);
        let mut live = self.active.iter().filter(|a| now_ms.saturating_sub(a.seen_at_ms) <= hold_ms);
        let first = live.next()?;
        let gpu = nodemedic_core::gpu::GpuDevice::from_bus_id(&first.device, None).ok()?;
        let same = |a: &ActiveFault| nodemedic_core::gpu::GpuDevice::from_bus_id(&a.device, None).is_ok_and(|g| g == gpu);
        live.all(same).then_some(gpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Health;

    const HOUR_MS: u64 = 3_600_000;
    const T0: u64 = 1_790_000_000_000;

    fn catalog() -> Catalog {
        Catalog::embedded().expect("the embedded catalog is valid")
    }

    #[test]
    fn a_fault_stops_making_the_node_unhealthy_after_the_hold_or_a_new_boot() {
        let catalog = catalog();
        let mut memory = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        memory.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(48), T0);
        assert_eq!(memory.verdict(T0 + 1000).reason, Reason::KernelFaultResetGpu);
        assert_eq!(memory.verdict(T0 + HOUR_MS).health, Health::Healthy);
        let rebooted = FaultMemory::restore(Some(memory.state()), "boot-b", Duration::from_secs(1800));
        assert_eq!(rebooted.verdict(T0 + 1000).health, Health::Healthy);
        assert_eq!(rebooted.cursor.boot_id, "boot-b");
    }

    #[test]
    fn the_faulty_gpu_is_named_only_when_every_live_fault_is_on_one_gpu() {
        let catalog = catalog();
        let mut memory = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        assert_eq!(memory.faulty_gpu(T0), None, "no fault, no GPU");
        memory.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(48), T0);
        memory.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(48), T0 + 1000);
        assert_eq!(memory.faulty_gpu(T0 + 2000).map(|g| g.pci_bus_id), Some("0000:3b:00.0".to_string()));
        assert_eq!(memory.faulty_gpu(T0 + HOUR_MS), None, "the fault is past its hold");
        memory.observe(&catalog, "0000:86:00", &FaultKey::NvidiaXid(48), T0 + 3000);
        assert_eq!(memory.faulty_gpu(T0 + 4000), None, "two GPUs: a single reset would not do");
        let mut unnamed = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        unnamed.observe(&catalog, "nvidia", &FaultKey::NvidiaXid(79), T0);
        assert_eq!(unnamed.faulty_gpu(T0), None, "a line that names no bus id");
    }

    #[test]
    fn a_good_reset_ends_only_the_reset_class_faults_on_its_gpu_and_keeps_every_sighting() {
        let catalog = catalog();
        let mut memory = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        memory.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(48), T0);
        memory.observe(&catalog, "0000:86:00", &FaultKey::NvidiaXid(48), T0);
        let reset = nodemedic_core::gpu::GpuDevice::from_bus_id("00000000:3B:00.0", Some(0)).expect("a bus id");
        assert_eq!(memory.cleared_by_reset(&reset), 1, "the index the record carries does not matter, the bus id does");
        assert_eq!(
            memory.active().iter().map(|a| a.device.as_str()).collect::<Vec<_>>(),
            vec!["0000:86:00"],
            "the other GPU's fault stays"
        );
        assert_eq!(memory.state().sightings.len(), 2, "sightings stay for the escalation windows");

        let mut fatal = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        fatal.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(79), T0);
        assert_eq!(fatal.cleared_by_reset(&reset), 0, "a fault that needs a reboot is not ended by a reset");
        assert_eq!(fatal.verdict(T0 + 1000).reason, Reason::KernelFaultReboot);
    }

    #[test]
    fn application_faults_are_counted_but_never_make_the_node_unhealthy() {
        let catalog = catalog();
        let mut memory = FaultMemory::restore(None, "boot-a", Duration::from_secs(1800));
        let classification = memory.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(13), T0);
        assert_eq!(classification.action, ActionClass::RestartApplication);
        assert!(memory.active().is_empty());
        assert_eq!(memory.verdict(T0).health, Health::Healthy);
        assert_eq!(memory.state().sightings.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_the_state_file_load_as_a_history_or_as_corrupt_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let dir = tempfile::tempdir().map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let path = dir.path().join("kernel-faults.json");
            std::fs::write(&path, &bytes).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert!(!matches!(load_state(&path), LoadedState::Missing));
        }
    }

    #[test]
    fn a_truncated_or_foreign_state_file_is_reported_not_trusted() -> Result<(), FaultStateError> {
        let dir = tempfile::tempdir().map_err(|source| FaultStateError::Write { path: "tempdir".into(), source })?;
        let path = dir.path().join("kernel-faults.json");
        assert!(matches!(load_state(&path), LoadedState::Missing));
        let mut memory = FaultMemory::restore(None, "boot-a", Duration::from_secs(60));
        memory.observe(&catalog(), "0000:3b:00", &FaultKey::NvidiaXid(79), T0);
        save_state(&path, &memory.state())?;
        assert!(matches!(load_state(&path), LoadedState::Restored(s) if s == memory.state()));
        let whole = std::fs::read(&path).map_err(|source| FaultStateError::Write { path: "read".into(), source })?;
        std::fs::write(&path, &whole[..whole.len() / 2]).map_err(|source| FaultStateError::Write { path: "cut".into(), source })?;
        assert!(matches!(load_state(&path), LoadedState::Corrupt(m) if m.contains("not a fault history")));
        std::fs::write(&path, b"{\"format\":99,\"cursor\":{\"boot_id\":\"x\",\"kmsg_sequence\":null,\"file_inode\":null,\"file_offset\":0},\"sightings\":[],\"active\":[]}")
            .map_err(|source| FaultStateError::Write { path: "foreign".into(), source })?;
        assert!(matches!(load_state(&path), LoadedState::Corrupt(m) if m.contains("format 99")));
        Ok(())
    }
}
