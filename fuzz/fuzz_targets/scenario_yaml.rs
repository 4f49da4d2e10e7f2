//! A demo scenario file (`nodemedic demo --scenario FILE`): `nodemedic::scenario::Scenario::parse`, the code
//! the demo runs (schema, its policy's validation, fault node names, what ends each fault).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic::scenario::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Scenario::parse(text);
});
