//! The controller's executors file (`nodemedic controller --executors`): drain pacing, the executor per step
//! (agent, drain, webhook, command, providers) and BMCs, read by `nodemedic::config_files::parse_executors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = nodemedic::config_files::parse_executors(text);
});
