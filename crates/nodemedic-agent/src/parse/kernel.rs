//! Kernel log lines, from /dev/kmsg (`pri,seq,ts_us,flags;message`) or from dmesg / journalctl text (plain
//! `[ 12.345]`, `-T`, `--time-format=iso`, `--decode` and journal short format): NVIDIA `NVRM: Xid`, "fallen off
//! the bus", NVSwitch `SXid`, and amdgpu messages matched against the fault catalog's patterns.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::Serialize;

use crate::catalog::{ActionClass, ActionClassExt, Catalog, Classification, FaultKey, FaultTracker};
use crate::verdict::Verdict;

/// One kernel log line with its prefix taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLine<'a> {
    /// The kmsg sequence number (kmsg format only).
    pub sequence: Option<u64>,
    /// Time since boot when the format carries it (kmsg, plain dmesg).
    pub since_boot: Option<Duration>,
    pub message: &'a str,
}

/// A GPU fault found in the kernel log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelEvent {
    pub since_boot: Option<Duration>,
    /// PCI address (or driver name when the line has none).
    pub device: String,
    pub key: FaultKey,
    pub message: String,
}

macro_rules! pattern {
    ($name:ident, $re:expr) => {
        static $name: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new($re).ok());
    };
}

pattern!(KMSG, r"^(\d+),(\d+),(\d+),[^;]*;(.*)$");
pattern!(DECODED, r"^[a-z]+\s*:[a-z]+\s*: (.*)$");
// `[  12.345678]` (seconds since boot) or `[Sun Feb 23 16:24:18 2025]` (dmesg -T); not `[drm:…]` message text.
pattern!(BRACKETED, r"^\[\s*(\d+\.\d+|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [\d:]+ \d{4})\]\s?(.*)$");
pattern!(ISO, r"^\d{4}-\d{2}-\d{2}T\S+\s(.*)$");
pattern!(JOURNAL, r"^[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \S+ kernel: (.*)$");
pattern!(XID, r"NVRM: Xid \((?:PCI:)?([^)]*)\): (\d+),\s*(.*)$");
pattern!(SXID, r"SXid \((?:PCI:)?([^)]*)\): (\d+),?\s*(.*)$");
pattern!(PCI_ADDRESS, r"(?:PCI:)?([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?");
pattern!(AMD_DEVICE, r"amdgpu ([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])");

fn captures<'a>(pattern: &LazyLock<Option<Regex>>, text: &'a str) -> Option<regex::Captures<'a>> {
    pattern.as_ref().and_then(|re| re.captures(text))
}

fn group<'a>(caps: &regex::Captures<'a>, index: usize) -> &'a str {
    caps.get(index).map(|m| m.as_str()).unwrap_or("")
}

/// Takes the format's prefix off a line. Returns None for blank lines and kmsg continuation lines.
pub fn split_line(line: &str) -> Option<KernelLine<'_>> {
    if line.trim().is_empty() || line.starts_with(' ') && line.contains('=') && !line.contains(':') {
        return None;
    }
    if let Some(caps) = captures(&KMSG, line) {
        let sequence: Option<u64> = group(&caps, 2).parse().ok();
        let micros: u64 = group(&caps, 3).parse().ok()?;
        return Some(KernelLine { sequence, since_boot: Some(Duration::from_micros(micros)), message: group(&caps, 4) });
    }
    let mut rest = line;
    if let Some(caps) = captures(&DECODED, rest) {
        rest = group(&caps, 1);
    }
    if let Some(caps) = captures(&BRACKETED, rest) {
        let stamp = group(&caps, 1).trim();
        let since_boot = stamp.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64);
        return Some(KernelLine { sequence: None, since_boot, message: group(&caps, 2) });
    }
    if let Some(caps) = captures(&ISO, rest) {
        return Some(KernelLine { sequence: None, since_boot: None, message: group(&caps, 1) });
    }
    if let Some(caps) = captures(&JOURNAL, rest) {
        return Some(KernelLine { sequence: None, since_boot: None, message: group(&caps, 1) });
    }
    Some(KernelLine { sequence: None, since_boot: None, message: rest })
}

/// Recognises a GPU fault in one message.
pub fn classify_message(message: &str, catalog: &Catalog) -> Option<(String, FaultKey)> {
    if let Some(caps) = captures(&XID, message) {
        let code: u32 = group(&caps, 2).parse().ok()?;
        return Some((group(&caps, 1).to_string(), FaultKey::NvidiaXid(code)));
    }
    if message.contains("SXid")
        && let Some(caps) = captures(&SXID, message)
    {
        let code: u32 = group(&caps, 2).parse().ok()?;
        return Some((group(&caps, 1).to_string(), FaultKey::NvswitchSxid(code)));
    }
    if message.contains("NVRM") && message.to_ascii_lowercase().contains("fallen off the bus") {
        let device = captures(&PCI_ADDRESS, message).map(|c| group(&c, 1).to_string()).unwrap_or_else(|| "nvidia".to_string());
        return Some((device, FaultKey::NvidiaXid(79)));
    }
    if message.contains("amdgpu")
        && let Some(key) = catalog.match_amdgpu(message)
    {
        let device = captures(&AMD_DEVICE, message).map(|c| group(&c, 1).to_string()).unwrap_or_else(|| "amdgpu".to_string());
        return Some((device, key));
    }
    None
}

/// Finds every GPU fault in a block of kernel log text. A "fallen off the bus" line for a device that also has
/// an Xid 79 line in the same block is the same incident and is counted once.
pub fn scan(text: &str, catalog: &Catalog) -> Vec<KernelEvent> {
    let mut events: Vec<KernelEvent> = Vec::new();
    for line in text.lines() {
        let Some(parsed) = split_line(line) else { continue };
        if let Some((device, key)) = classify_message(parsed.message, catalog) {
            events.push(KernelEvent { since_boot: parsed.since_boot, device, key, message: parsed.message.trim().to_string() });
        }
    }
    let is_off_bus_line = |e: &KernelEvent| e.key == FaultKey::NvidiaXid(79) && !e.message.contains("Xid");
    let xid79_devices: Vec<String> =
        events.iter().filter(|e| e.key == FaultKey::NvidiaXid(79) && e.message.contains("Xid")).map(|e| short_pci(&e.device)).collect();
    events.retain(|e| !(is_off_bus_line(e) && xid79_devices.contains(&short_pci(&e.device))));
    events
}

/// Remembers the last kmsg sequence number seen, so a long-running agent that re-reads /dev/kmsg (or a saved
/// copy) counts each record once. Lines without a sequence number (dmesg/journal text) always pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KmsgCursor {
    pub last_sequence: Option<u64>,
}

impl KmsgCursor {
    /// True when record `sequence` was not seen before; the cursor moves past it.
    pub fn admits(&mut self, sequence: u64) -> bool {
        if self.last_sequence.is_some_and(|last| sequence <= last) {
            return false;
        }
        self.last_sequence = Some(sequence);
        true
    }

    /// The lines of `text` not seen before, in order; the cursor moves past them.
    pub fn fresh_lines<'a>(&mut self, text: &'a str) -> Vec<&'a str> {
        text.lines().filter(|line| split_line(line).and_then(|l| l.sequence).is_none_or(|sequence| self.admits(sequence))).collect()
    }
}

/// One name per GPU whichever source reported it: lower case, no `PCI:` prefix, no function number, and the
/// 4-digit PCI domain the kernel log prints (NVML's bus IDs carry 8 digits: `00000000:3B:00.0` → `0000:3b:00`).
pub fn short_pci(device: &str) -> String {
    let lower = device.to_ascii_lowercase();
    let trimmed = lower.trim_start_matches("pci:");
    let without_function = trimmed.split('.').next().unwrap_or(trimmed);
    match without_function.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 && domain.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => without_function.to_string(),
    }
}

/// Classifies events through the tracker (so repeats escalate) and folds them into one verdict. Events without a
/// time since boot are taken as seen at `now`. Restart-application and ignore classes leave the node healthy.
pub fn verdict(events: &[KernelEvent], catalog: &Catalog, tracker: &mut FaultTracker, now: Duration) -> (Verdict, Vec<Classification>) {
    let classifications: Vec<Classification> =
        events.iter().map(|e| tracker.observe(catalog, &short_pci(&e.device), &e.key, e.since_boot.unwrap_or(now))).collect();
    // The strongest action wins; among equals the latest sighting, whose count is the highest.
    let worst = classifications.iter().enumerate().max_by_key(|(position, c)| (c.action, *position));
    let verdict = match worst {
        None => Verdict::healthy("no GPU faults in the kernel log"),
        Some((position, worst)) => {
            let device = events.get(position).map(|e| e.device.as_str()).unwrap_or("?");
            let others = classifications.len() - 1;
            let mut other_keys: Vec<String> = Vec::new();
            for classification in &classifications {
                let key = classification.key.to_string();
                if classification.key != worst.key && !other_keys.contains(&key) {
                    other_keys.push(key);
                }
            }
            let tail = match (others, other_keys.is_empty()) {
                (0, _) => String::new(),
                (n, true) => format!(" ({n} more GPU kernel messages)"),
                (n, false) => format!(" (also {}; {n} more GPU kernel messages)", other_keys.join(", ")),
            };
            match worst.action.kernel_reason() {
                Some(reason) => Verdict::unhealthy(reason, format!("{} on {device}{tail}", worst.reason)),
                None if worst.action == ActionClass::Ignore => {
                    Verdict::healthy(format!("only ignorable GPU kernel messages: {}{tail}", worst.reason))
                }
                None => Verdict::healthy(format!("application-level GPU faults only: {} on {device}{tail}", worst.reason)),
            }
        }
    };
    (verdict, classifications)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_every_format_come_off() {
        let kmsg = split_line("4,1234,5678901234,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.");
        assert_eq!(kmsg.as_ref().map(|l| l.message), Some("NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus."));
        assert_eq!(kmsg.and_then(|l| l.since_boot), Some(Duration::from_micros(5_678_901_234)));
        let plain = split_line("[ 1234.500000] NVRM: Xid (PCI:0000:3b:00): 13, Graphics Exception");
        assert_eq!(plain.as_ref().map(|l| l.message), Some("NVRM: Xid (PCI:0000:3b:00): 13, Graphics Exception"));
        assert_eq!(plain.and_then(|l| l.since_boot), Some(Duration::from_millis(1_234_500)));
        let journal = split_line("Jan 06 14:37:38 archdesktop kernel: amdgpu 0000:0b:00.0: amdgpu: GPU reset begin!");
        assert_eq!(journal.map(|l| l.message), Some("amdgpu 0000:0b:00.0: amdgpu: GPU reset begin!"));
        let decoded = split_line("kern  :err   : 2026-01-07T10:02:00,123456-06:00 amdgpu 0000:01:00.0: {14}poison is consumed");
        assert_eq!(decoded.map(|l| l.message), Some("amdgpu 0000:01:00.0: {14}poison is consumed"));
        assert_eq!(split_line(" SUBSYSTEM=pci"), None);
        let bare = split_line("[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout");
        assert_eq!(bare.map(|l| l.message), Some("[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout"));
        let dated = split_line("[Sun Feb 23 16:24:18 2025] NVRM: Xid (PCI:0000:9b:00): 119, pid=1");
        assert_eq!(dated.map(|l| l.message), Some("NVRM: Xid (PCI:0000:9b:00): 119, pid=1"));
    }

    #[test]
    fn a_kmsg_cursor_passes_each_record_once() {
        let mut cursor = KmsgCursor::default();
        let first = "4,10,100,-;NVRM: Xid (PCI:0000:3b:00): 13, a\n4,11,200,-;NVRM: Xid (PCI:0000:3b:00): 13, b\n";
        assert_eq!(cursor.fresh_lines(first).len(), 2);
        let again = format!("{first}4,12,300,-;NVRM: Xid (PCI:0000:3b:00): 13, c\n");
        assert_eq!(cursor.fresh_lines(&again), vec!["4,12,300,-;NVRM: Xid (PCI:0000:3b:00): 13, c"]);
        assert_eq!(cursor.last_sequence, Some(12));
    }

    #[test]
    fn kernel_log_and_nvml_names_for_one_gpu_agree() {
        assert_eq!(short_pci("00000000:3B:00.0"), "0000:3b:00");
        assert_eq!(short_pci("PCI:0000:3b:00"), "0000:3b:00");
        assert_eq!(short_pci("0000:3b:00.1"), "0000:3b:00");
        assert_eq!(short_pci("amdgpu"), "amdgpu");
    }

    #[test]
    fn sxid_lines_are_recognised() -> Result<(), crate::catalog::CatalogError> {
        let catalog = Catalog::embedded()?;
        let found =
            classify_message("nvidia-nvswitch3: SXid (PCI:0000:c8:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error", &catalog);
        assert_eq!(found, Some(("0000:c8:00.0".to_string(), FaultKey::NvswitchSxid(12028))));
        Ok(())
    }
}
