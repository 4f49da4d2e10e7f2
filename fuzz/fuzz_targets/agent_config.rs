//! The node agent's configuration file (`AgentConfig::from_yaml`: schema and validation), the fault catalog
//! file it may name instead of the embedded one (`Catalog::from_yaml`), and the duration format both use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::probe::parse_duration;
use nodemedic_agent::{AgentConfig, Catalog};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = AgentConfig::from_yaml(text) {
        for probe in nodemedic_agent::check::configured_probes(&config) {
            let _ = config.family_of(&probe);
            let _ = config.schedule_for(&probe).stale_after();
        }
    }
    let _ = Catalog::from_yaml(text);
    if text.len() <= 64 {
        let _ = parse_duration(text);
    }
});
