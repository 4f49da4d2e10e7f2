//! Which GPU a fault is on. A single-GPU reset (`reset-gpu` ladder step) needs it; without it the reset
//! cannot be aimed, so the step is skipped and the ladder goes on to a reboot.

use serde::{Deserialize, Serialize};

/// The GPU a fault was seen on, as the agent's kernel-log fault history names it. The PCI bus id is
/// what both the kernel log (`NVRM: Xid (PCI:0000:3b:00): 79`) and the reset tools (`nvidia-smi -r -i
/// <bus id>`) understand; the index is kept when the agent knows it (AMD's `amd-smi reset -G` takes one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuDevice {
    /// Normalised `dddd:bb:dd.f`, lower case.
    pub pci_bus_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// A bus id that is not `[dddd:]bb:dd[.f]` in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a PCI bus id ([domain:]bus:device[.function], hex)")]
pub struct BadBusId(pub String);

impl GpuDevice {
    /// Reads a bus id as the kernel log, nvidia-smi (`00000000:3B:00.0`) or amd-smi write it; the
    /// domain defaults to 0 and the function to 0.
    pub fn from_bus_id(raw: &str, index: Option<u32>) -> Result<GpuDevice, BadBusId> {
        let bad = || BadBusId(raw.to_string());
        let trimmed = raw.trim();
        let body = trimmed.strip_prefix("PCI:").unwrap_or(trimmed);
        let (rest, function) = match body.rsplit_once('.') {
            Some((rest, f)) => (rest, f),
            None => (body, "0"),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0", *b, *v),
            _ => return Err(bad()),
        };
        let hex = |s: &str, max: u32| u32::from_str_radix(s, 16).ok().filter(|v| !s.is_empty() && s.len() <= 8 && *v <= max);
        let (Some(domain), Some(bus), Some(device), Some(function)) =
            (hex(domain, 0xffff), hex(bus, 0xff), hex(device, 0x1f), hex(function, 0x7))
        else {
            return Err(bad());
        };
        Ok(GpuDevice { pci_bus_id: format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"), index })
    }
}

impl std::fmt::Display for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "GPU {i} ({})", self.pci_bus_id),
            None => write!(f, "GPU {}", self.pci_bus_id),
        }
    }
}

/// The node annotation the agent writes: a JSON object from condition type to the [`GpuDevice`] its
/// fault is on (`{"GPUProblem":{"pciBusId":"0000:3b:00.0","index":3}}`). A condition cannot carry it.
pub const FAULTY_GPU_ANNOTATION: &str = "nodemedic.io/faulty-gpus";

/// Reads [`FAULTY_GPU_ANNOTATION`] (through the strict reader: a key given twice is refused); a value that
/// is not that shape, or a bus id that is not one, is an error (the adapter then treats every GPU as unknown, so no reset is aimed at a guess).
pub fn faulty_gpus_from_annotation(value: &str) -> Result<std::collections::BTreeMap<String, GpuDevice>, String> {
    let raw: std::collections::BTreeMap<String, GpuDevice> = crate::input::from_json_str(value).map_err(|e| e.to_string())?;
    raw.into_iter()
        .map(|(type_, gpu)| {
            let normal = GpuDevice::from_bus_id(&gpu.pci_bus_id, gpu.index).map_err(|e| e.to_string())?;
            Ok((type_, normal))
        })
        .collect()
}
