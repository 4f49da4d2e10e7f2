//! Network performance tools: `iperf3 -J`, `ping` summaries and `speedtest` JSON, parsed and judged as
//! `tools::iperf3` / `tools::ping` / `tools::speedtest` do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::netperf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(result) = netperf::parse_iperf3(&text) {
        let _ = netperf::iperf3_verdict(&result, 10e9);
    }
    if let Ok(summary) = netperf::parse_ping(&text) {
        let _ = netperf::ping_verdict(&summary, 1.0, Some(5.0));
        let _ = netperf::ping_verdict(&summary, 0.0, None);
    }
    if let Ok(result) = netperf::parse_speedtest(&text) {
        let _ = netperf::speedtest_verdict(&result, 100e6);
    }
});
