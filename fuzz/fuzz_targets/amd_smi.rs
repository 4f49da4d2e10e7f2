//! AMD tools: `amd-smi metric --json` / `--csv`, `rocm-smi --json` and its text output, and `rocminfo` — each
//! parsed and judged as `tools::amd_smi` / `tools::rocm_smi` / `tools::rocminfo` do, failures included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::amd::{self, AmdExpectations};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let expect = AmdExpectations {
        expected_gpus: Some(8),
        required_metrics: vec!["usage.gfx_activity".into(), "ecc.total_uncorrectable_count".into()],
    };
    for parsed in [amd::parse_amd_smi_json(&text), amd::parse_amd_smi_csv(&text)] {
        match parsed {
            Ok(gpus) => drop(amd::amd_smi_verdict(&gpus, &expect)),
            Err(error) => drop(amd::amd_failure_verdict(&error, Some(8))),
        }
    }
    match amd::parse_rocm_smi_json(&text) {
        Ok(cards) => drop(amd::rocm_smi_verdict(&cards, &expect)),
        Err(error) => drop(amd::amd_failure_verdict(&error, Some(8))),
    }
    if let Ok(parsed) = amd::parse_rocm_smi_text(&text) {
        let _ = amd::rocm_smi_text_verdict(&parsed, Some(8));
    }
    if let Ok(agents) = amd::parse_rocminfo(&text) {
        let _ = amd::rocminfo_verdict(&agents, Some(8));
    }
});
