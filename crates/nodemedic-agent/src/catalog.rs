//! The fault catalog as data: NVIDIA XID / NVSwitch SXid codes and amdgpu kernel-log patterns mapped to an
//! action class, with count-in-window escalation. The default is embedded (`catalog/default.yaml`); a site can
//! replace it with its own file.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::probe::{TextDuration, format_duration};
use crate::verdict::Reason;

/// The embedded default catalog text.
pub const DEFAULT_CATALOG_YAML: &str = include_str!("../catalog/default.yaml");

/// What to do about a fault, weakest first: nodemedic-core's [`nodemedic_core::class::FaultClass`], so the
/// class the catalog writes is the type the engine chooses a rung with (it travels in the condition reason,
/// `KernelFault<Class>`).
pub use nodemedic_core::class::FaultClass as ActionClass;

/// The agent's words and verdict reasons for an action class.
pub trait ActionClassExt {
    /// The action in words, for messages.
    fn describe(self) -> &'static str;
    /// The verdict reason for a kernel fault with this action, or None when the node stays healthy.
    fn kernel_reason(self) -> Option<Reason>;
}

impl ActionClassExt for ActionClass {
    fn describe(self) -> &'static str {
        match self {
            ActionClass::Ignore => "no action needed",
            ActionClass::RestartApplication => "restart the application",
            ActionClass::ResetGpu => "reset the GPU",
            ActionClass::Reboot => "reboot the node",
            ActionClass::Replace => "replace the GPU (RMA)",
            ActionClass::ContactSupport => "contact support",
        }
    }

    fn kernel_reason(self) -> Option<Reason> {
        match self {
            ActionClass::Ignore => None,
            ActionClass::RestartApplication => None,
            ActionClass::ResetGpu => Some(Reason::KernelFaultResetGpu),
            ActionClass::Reboot => Some(Reason::KernelFaultReboot),
            ActionClass::Replace => Some(Reason::KernelFaultReplace),
            ActionClass::ContactSupport => Some(Reason::KernelFaultContactSupport),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// How many sightings (this one included) on the same GPU within `window` trigger the stronger action.
    pub count: u32,
    pub window: TextDuration,
    pub action: ActionClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRule {
    pub codes: Vec<u32>,
    pub meaning: String,
    pub action: ActionClass,
    #[serde(default)]
    pub escalate: Option<Escalation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeTable {
    /// What a code that no rule lists means.
    pub unlisted_action: ActionClass,
    #[serde(default)]
    pub rules: Vec<CodeRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    pub name: String,
    /// A regular expression matched against the kernel message.
    pub pattern: String,
    pub meaning: String,
    pub action: ActionClass,
    #[serde(default)]
    pub escalate: Option<Escalation>,
}

/// The catalog file's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    pub nvidia_xid: CodeTable,
    pub nvswitch_sxid: CodeTable,
    #[serde(default)]
    pub amdgpu: Vec<PatternRule>,
}

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("fault catalog is not valid YAML for the catalog format: {0}")]
    Yaml(String),
    #[error("reading fault catalog {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("fault catalog lists {table} code {code} in more than one rule")]
    DuplicateCode { table: &'static str, code: u32 },
    #[error("fault catalog amdgpu rule {name:?} has an invalid pattern: {message}")]
    BadPattern { name: String, message: String },
    #[error("fault catalog rule {rule} escalates after {count} sightings; use 2 or more")]
    EscalationTooSmall { rule: String, count: u32 },
    #[error("fault catalog rule {rule} escalates to {to:?}, which is not stronger than its action {from:?}")]
    EscalationNotStronger { rule: String, from: ActionClass, to: ActionClass },
    #[error("fault catalog has two amdgpu rules named {0:?}")]
    DuplicateName(String),
}

/// Which family a fault belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FaultKey {
    NvidiaXid(u32),
    NvswitchSxid(u32),
    Amdgpu(String),
}

impl std::fmt::Display for FaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKey::NvidiaXid(code) => write!(f, "Xid {code}"),
            FaultKey::NvswitchSxid(code) => write!(f, "SXid {code}"),
            FaultKey::Amdgpu(name) => write!(f, "amdgpu {name}"),
        }
    }
}

/// A catalog lookup's answer: the action class and a reason string naming the code and the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub key: FaultKey,
    pub action: ActionClass,
    pub escalated: bool,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct CompiledPattern {
    rule: PatternRule,
    regex: Regex,
}

/// A validated, ready-to-use catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    file: CatalogFile,
    xid_index: HashMap<u32, usize>,
    sxid_index: HashMap<u32, usize>,
    patterns: Vec<CompiledPattern>,
}

impl Catalog {
    /// The embedded default catalog.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Catalog::from_yaml(DEFAULT_CATALOG_YAML)
    }

    pub fn from_yaml(text: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFile = nodemedic_core::input::from_yaml_str(text).map_err(|e| CatalogError::Yaml(e.to_string()))?;
        Catalog::from_file_data(file)
    }

    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.display().to_string(), source })?;
        Catalog::from_yaml(&text)
    }

    pub fn from_file_data(file: CatalogFile) -> Result<Catalog, CatalogError> {
        let xid_index = index_codes("nvidia_xid", &file.nvidia_xid)?;
        let sxid_index = index_codes("nvswitch_sxid", &file.nvswitch_sxid)?;
        let mut names = HashSet::new();
        let mut patterns = Vec::with_capacity(file.amdgpu.len());
        for rule in &file.amdgpu {
            if !names.insert(rule.name.clone()) {
                return Err(CatalogError::DuplicateName(rule.name.clone()));
            }
            check_escalation(&format!("amdgpu {}", rule.name), rule.action, rule.escalate.as_ref())?;
            let regex =
                Regex::new(&rule.pattern).map_err(|e| CatalogError::BadPattern { name: rule.name.clone(), message: e.to_string() })?;
            patterns.push(CompiledPattern { rule: rule.clone(), regex });
        }
        Ok(Catalog { file, xid_index, sxid_index, patterns })
    }

    pub fn file(&self) -> &CatalogFile {
        &self.file
    }

    fn code_rule(&self, key: &FaultKey) -> Option<(&str, ActionClass, Option<&Escalation>)> {
        match key {
            FaultKey::NvidiaXid(code) => self
                .xid_index
                .get(code)
                .and_then(|i| self.file.nvidia_xid.rules.get(*i))
                .map(|r| (r.meaning.as_str(), r.action, r.escalate.as_ref())),
            FaultKey::NvswitchSxid(code) => self
                .sxid_index
                .get(code)
                .and_then(|i| self.file.nvswitch_sxid.rules.get(*i))
                .map(|r| (r.meaning.as_str(), r.action, r.escalate.as_ref())),
            FaultKey::Amdgpu(name) => self
                .patterns
                .iter()
                .find(|p| &p.rule.name == name)
                .map(|p| (p.rule.meaning.as_str(), p.rule.action, p.rule.escalate.as_ref())),
        }
    }

    /// The first amdgpu rule whose pattern matches `message`, as a fault key.
    pub fn match_amdgpu(&self, message: &str) -> Option<FaultKey> {
        self.patterns.iter().find(|p| p.regex.is_match(message)).map(|p| FaultKey::Amdgpu(p.rule.name.clone()))
    }

    /// Classifies one sighting, given how many sightings of the same key on the same GPU fell inside each
    /// window (the caller counts; [`FaultTracker`] does it for you).
    pub fn classify_with_count(&self, key: &FaultKey, sightings_in_window: impl Fn(Duration) -> u32) -> Classification {
        let (meaning, base, escalation) = match self.code_rule(key) {
            Some(found) => found,
            None => {
                let unlisted = match key {
                    FaultKey::NvidiaXid(_) => self.file.nvidia_xid.unlisted_action,
                    FaultKey::NvswitchSxid(_) => self.file.nvswitch_sxid.unlisted_action,
                    FaultKey::Amdgpu(_) => ActionClass::Ignore,
                };
                return Classification {
                    key: key.clone(),
                    action: unlisted,
                    escalated: false,
                    reason: format!("{key} is not in the fault catalog: {}", unlisted.describe()),
                };
            }
        };
        if let Some(escalation) = escalation {
            let seen = sightings_in_window(escalation.window.0);
            if seen >= escalation.count {
                return Classification {
                    key: key.clone(),
                    action: escalation.action,
                    escalated: true,
                    reason: format!(
                        "{key} ({meaning}) seen {seen} times within {} on one GPU: {}",
                        format_duration(escalation.window.0),
                        escalation.action.describe()
                    ),
                };
            }
        }
        Classification { key: key.clone(), action: base, escalated: false, reason: format!("{key} ({meaning}): {}", base.describe()) }
    }

    /// Classifies a single sighting with no history.
    pub fn classify(&self, key: &FaultKey) -> Classification {
        self.classify_with_count(key, |_| 1)
    }

    fn longest_window(&self) -> Duration {
        let codes = self.file.nvidia_xid.rules.iter().chain(self.file.nvswitch_sxid.rules.iter()).filter_map(|r| r.escalate.as_ref());
        let patterns = self.file.amdgpu.iter().filter_map(|r| r.escalate.as_ref());
        codes.chain(patterns).map(|e| e.window.0).max().unwrap_or(Duration::ZERO)
    }
}

fn check_escalation(rule: &str, action: ActionClass, escalation: Option<&Escalation>) -> Result<(), CatalogError> {
    if let Some(escalation) = escalation {
        if escalation.count < 2 {
            return Err(CatalogError::EscalationTooSmall { rule: rule.to_string(), count: escalation.count });
        }
        if escalation.action <= action {
            return Err(CatalogError::EscalationNotStronger { rule: rule.to_string(), from: action, to: escalation.action });
        }
    }
    Ok(())
}

fn index_codes(table: &'static str, codes: &CodeTable) -> Result<HashMap<u32, usize>, CatalogError> {
    let mut index = HashMap::new();
    for (position, rule) in codes.rules.iter().enumerate() {
        let label = format!("{table} {:?}", rule.codes);
        check_escalation(&label, rule.action, rule.escalate.as_ref())?;
        for code in &rule.codes {
            if index.insert(*code, position).is_some() {
                return Err(CatalogError::DuplicateCode { table, code: *code });
            }
        }
    }
    Ok(index)
}

/// Sightings of the same fault on the same GPU closer together than this are one incident reported twice (the
/// kernel log and NVML's event set both report an Xid; a "fallen off the bus" line follows its Xid 79 line).
pub const SAME_INCIDENT_WITHIN: Duration = Duration::from_secs(10);

/// Counts sightings per (GPU, fault) in time so repeats escalate. Time is whatever clock the caller uses (the
/// running agent uses wall-clock time, so counts survive reboots); only differences matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultTracker {
    sightings: BTreeMap<(String, FaultKey), VecDeque<Duration>>,
}

/// One (GPU, fault) pair's sightings, as the agent's state file keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedFault {
    pub device: String,
    pub key: FaultKey,
    /// Milliseconds on the tracker's clock, oldest first.
    pub seen_at_ms: Vec<u64>,
}

impl FaultTracker {
    pub fn new() -> Self {
        FaultTracker::default()
    }

    /// Records a sighting of `key` on `device` at `at` and classifies it, counting earlier sightings in the window.
    pub fn observe(&mut self, catalog: &Catalog, device: &str, key: &FaultKey, at: Duration) -> Classification {
        self.observe_counting(catalog, device, key, at, true)
    }

    /// Classifies a second report of an incident already counted (see [`SAME_INCIDENT_WITHIN`]) without counting it.
    pub fn observe_repeat(&mut self, catalog: &Catalog, device: &str, key: &FaultKey, at: Duration) -> Classification {
        self.observe_counting(catalog, device, key, at, false)
    }

    fn observe_counting(&mut self, catalog: &Catalog, device: &str, key: &FaultKey, at: Duration, count: bool) -> Classification {
        let horizon = catalog.longest_window();
        let times = self.sightings.entry((device.to_string(), key.clone())).or_default();
        if count || times.is_empty() {
            times.push_back(at);
        }
        while let Some(first) = times.front() {
            if at.saturating_sub(*first) > horizon {
                times.pop_front();
            } else {
                break;
            }
        }
        let snapshot: Vec<Duration> = times.iter().copied().collect();
        catalog.classify_with_count(key, |window| {
            let count = snapshot.iter().filter(|t| at.saturating_sub(**t) <= window && **t <= at).count();
            u32::try_from(count).unwrap_or(u32::MAX)
        })
    }

    /// Forgets sightings older than the catalog's longest escalation window, as seen at `now`.
    pub fn forget_before(&mut self, catalog: &Catalog, now: Duration) {
        let horizon = catalog.longest_window();
        for times in self.sightings.values_mut() {
            times.retain(|t| now.saturating_sub(*t) <= horizon);
        }
        self.sightings.retain(|_, times| !times.is_empty());
    }

    /// The sightings as records for the state file.
    pub fn records(&self) -> Vec<TrackedFault> {
        self.sightings
            .iter()
            .map(|((device, key), times)| TrackedFault {
                device: device.clone(),
                key: key.clone(),
                seen_at_ms: times.iter().map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).collect(),
            })
            .collect()
    }

    /// A tracker holding `records` (times are sorted; duplicates of a pair are merged).
    pub fn from_records(records: Vec<TrackedFault>) -> Self {
        let mut sightings: BTreeMap<(String, FaultKey), VecDeque<Duration>> = BTreeMap::new();
        for record in records {
            let times = sightings.entry((record.device, record.key)).or_default();
            times.extend(record.seen_at_ms.into_iter().map(Duration::from_millis));
        }
        for times in sightings.values_mut() {
            times.make_contiguous().sort();
        }
        FaultTracker { sightings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::embedded().expect("the embedded catalog is valid")
    }

    #[test]
    fn the_kernel_fault_reason_carries_the_class_the_engine_reads() {
        for class in ActionClass::ALL {
            if let Some(reason) = class.kernel_reason() {
                assert_eq!(ActionClass::from_condition_reason(reason.as_str()), Some(class), "{reason:?}");
            }
        }
        assert_eq!(ActionClass::RestartApplication.kernel_reason(), None, "an application's fault leaves the node healthy");
    }

    #[test]
    fn the_embedded_catalog_loads() {
        let catalog = catalog();
        assert!(catalog.file().nvidia_xid.rules.len() > 10);
    }

    #[test]
    fn xid_79_asks_for_a_reboot_first_and_an_rma_when_it_repeats() {
        let catalog = catalog();
        let mut tracker = FaultTracker::new();
        let first = tracker.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(79), Duration::from_secs(0));
        assert_eq!(first.action, ActionClass::Reboot);
        assert!(first.reason.contains("Xid 79"), "{}", first.reason);
        assert!(first.reason.contains("reboot"), "{}", first.reason);
        let second = tracker.observe(&catalog, "0000:3b:00", &FaultKey::NvidiaXid(79), Duration::from_secs(3600));
        assert_eq!(second.action, ActionClass::Replace);
        assert!(second.escalated);
    }

    #[test]
    fn application_xids_repeating_on_one_gpu_escalate_to_hardware() {
        let catalog = catalog();
        let mut tracker = FaultTracker::new();
        let mut last = None;
        for minute in 0..5 {
            last = Some(tracker.observe(&catalog, "gpu0", &FaultKey::NvidiaXid(13), Duration::from_secs(minute * 60)));
        }
        let last = last.expect("five sightings");
        assert_eq!(last.action, ActionClass::ResetGpu);
        assert!(last.escalated);
    }

    #[test]
    fn application_xids_spread_over_gpus_or_time_do_not_escalate() {
        let catalog = catalog();
        let mut tracker = FaultTracker::new();
        for gpu in 0..5 {
            let c = tracker.observe(&catalog, &format!("gpu{gpu}"), &FaultKey::NvidiaXid(13), Duration::ZERO);
            assert_eq!(c.action, ActionClass::RestartApplication);
        }
        for hour in 0..6 {
            let c = tracker.observe(&catalog, "gpu9", &FaultKey::NvidiaXid(31), Duration::from_secs(hour * 3600 * 2));
            assert_eq!(c.action, ActionClass::RestartApplication);
        }
    }

    #[test]
    fn the_same_incident_reported_twice_counts_once_and_a_tracker_survives_its_records() {
        let catalog = catalog();
        let mut tracker = FaultTracker::new();
        let xid79 = FaultKey::NvidiaXid(79);
        let first = tracker.observe(&catalog, "0000:3b:00", &xid79, Duration::from_secs(100));
        let echo = tracker.observe_repeat(&catalog, "0000:3b:00", &xid79, Duration::from_secs(101));
        assert_eq!((first.action, echo.action), (ActionClass::Reboot, ActionClass::Reboot));
        let mut restored = FaultTracker::from_records(tracker.records());
        assert_eq!(restored, tracker);
        let again = restored.observe(&catalog, "0000:3b:00", &xid79, Duration::from_secs(100 + 86_400));
        assert_eq!(again.action, ActionClass::Replace);
        restored.forget_before(&catalog, Duration::from_secs(100 + 86_400 * 30));
        assert!(restored.records().is_empty());
    }

    #[test]
    fn well_known_codes_map_to_public_guidance() {
        let catalog = catalog();
        let action = |code| catalog.classify(&FaultKey::NvidiaXid(code)).action;
        assert_eq!(action(13), ActionClass::RestartApplication);
        assert_eq!(action(31), ActionClass::RestartApplication);
        assert_eq!(action(43), ActionClass::RestartApplication);
        assert_eq!(action(48), ActionClass::ResetGpu);
        assert_eq!(action(63), ActionClass::ResetGpu);
        assert_eq!(action(64), ActionClass::Replace);
        assert_eq!(action(74), ActionClass::ResetGpu);
        assert_eq!(action(94), ActionClass::RestartApplication);
        assert_eq!(action(95), ActionClass::ResetGpu);
        assert_eq!(action(119), ActionClass::ResetGpu);
        assert_eq!(action(9999), ActionClass::Ignore);
        let unlisted = catalog.classify(&FaultKey::NvidiaXid(9999));
        assert!(unlisted.reason.contains("not in the fault catalog"));
    }

    #[test]
    fn amdgpu_patterns_classify_kernel_messages() {
        let catalog = catalog();
        let key = catalog.match_amdgpu("amdgpu 0000:02:00.0: amdgpu: Saved bad pages 150 reaches threshold value 128");
        assert_eq!(key, Some(FaultKey::Amdgpu("bad-page-threshold".to_string())));
        let key = catalog.match_amdgpu("[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout, signaled seq=1");
        assert_eq!(key, Some(FaultKey::Amdgpu("ring-timeout".to_string())));
        let key = catalog.match_amdgpu("amdgpu 0000:0b:00.0: amdgpu: GPU reset(2) failed");
        assert_eq!(key, Some(FaultKey::Amdgpu("gpu-reset-failed".to_string())));
        assert_eq!(catalog.match_amdgpu("amdgpu: ATOM BIOS: 113-D4120100-O04"), None);
    }

    #[test]
    fn an_override_file_replaces_the_catalog() -> Result<(), CatalogError> {
        let yaml = "nvidia_xid:\n  unlisted_action: contact-support\n  rules:\n    - codes: [79]\n      meaning: off the bus\n      action: replace\nnvswitch_sxid:\n  unlisted_action: ignore\n";
        let catalog = Catalog::from_yaml(yaml)?;
        assert_eq!(catalog.classify(&FaultKey::NvidiaXid(79)).action, ActionClass::Replace);
        assert_eq!(catalog.classify(&FaultKey::NvidiaXid(13)).action, ActionClass::ContactSupport);
        Ok(())
    }

    #[test]
    fn a_catalog_with_a_duplicate_code_or_weak_escalation_is_refused() {
        let duplicate = "nvidia_xid:\n  unlisted_action: ignore\n  rules:\n    - {codes: [79], meaning: a, action: reboot}\n    - {codes: [79], meaning: b, action: replace}\nnvswitch_sxid: {unlisted_action: ignore}\n";
        assert!(matches!(Catalog::from_yaml(duplicate), Err(CatalogError::DuplicateCode { code: 79, .. })));
        let weak = "nvidia_xid:\n  unlisted_action: ignore\n  rules:\n    - {codes: [79], meaning: a, action: reboot, escalate: {count: 2, window: 1h, action: ignore}}\nnvswitch_sxid: {unlisted_action: ignore}\n";
        assert!(matches!(Catalog::from_yaml(weak), Err(CatalogError::EscalationNotStronger { .. })));
        assert!(matches!(Catalog::from_yaml("nvidia_xid: ["), Err(CatalogError::Yaml(_))));
    }
}
