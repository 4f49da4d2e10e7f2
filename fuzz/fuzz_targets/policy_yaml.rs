//! A NodeHealthPolicy spec as YAML or JSON (`nodemedic validate`, `simulate --policy`, the scenario's policy):
//! `Policy::from_yaml` (typed parse with the bad field's path, then validation), and the duration and
//! timestamp formats the policy and records use, and the strict YAML reader (`nodemedic_core::input`, which
//! refuses duplicate keys) on any document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_core::{Duration, Policy, Time};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Policy::from_yaml(text);
    let _ = nodemedic_core::input::from_yaml_str::<serde_json::Value>(text);
    if text.len() <= 64 {
        let _ = Duration::parse(text);
        let _ = Time::parse_rfc3339(text);
    }
});
