//! ethtool: link settings (`ethtool IF`), driver info (`ethtool -i IF`) and statistics (`ethtool -S IF`),
//! parsed and judged as `tools::ethtool` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::ethtool;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = ethtool::parse_settings(&text) {
        let _ = ethtool::settings_verdict(&settings, Some(100_000));
        let _ = ethtool::settings_verdict(&settings, None);
    }
    if let Ok(info) = ethtool::parse_driver(&text) {
        let _ = ethtool::driver_verdict(&info);
    }
    if let Ok(counters) = ethtool::parse_statistics(&text) {
        let _ = ethtool::statistics_verdict(&counters, 0);
        let _ = ethtool::statistics_verdict(&counters, u64::MAX);
    }
});
