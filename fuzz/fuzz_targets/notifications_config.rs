//! The controller's notifications file (`nodemedic controller --notifications`): channels (SMTP, webhook,
//! Alertmanager), routes and retry, read and validated by `nodemedic::config_files::parse_notifications`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = nodemedic::config_files::parse_notifications(text);
});
