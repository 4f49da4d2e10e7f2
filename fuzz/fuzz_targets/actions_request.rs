//! A `POST /actions` request body: `nodemedic_api::request::parse` (strict JSON object, known fields, types,
//! required fields, id syntax), the function the actions API runs on every body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nodemedic_api::request::parse(data);
});
