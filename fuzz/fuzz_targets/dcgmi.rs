//! DCGM: `dcgmi diag -j` results and `dcgmi health -c -j` reports, parsed and judged as the agent does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::dcgmi;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(results) = dcgmi::parse_diag(&text) {
        let _ = dcgmi::diag_verdict(&results);
    }
    if let Ok(report) = dcgmi::parse_health(&text) {
        let _ = dcgmi::health_verdict(&report);
    }
});
