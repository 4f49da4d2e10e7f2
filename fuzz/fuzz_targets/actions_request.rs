//! A `POST /actions` request: its Content-Type and body through `nodemedic_api::request::parse_action_request`,
//! the function the actions API's handler runs (415 for a non-JSON type; strict JSON that refuses duplicate
//! keys; every field checked before it reaches the API server), and the strict JSON reader of
//! `nodemedic_core::input` on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_api::request::parse_action_request;

const CONTENT_TYPES: [Option<&str>; 4] = [Some("application/json"), Some("application/json; charset=utf-8"), None, Some("text/plain")];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(first) % CONTENT_TYPES.len()];
    if let Err(error) = parse_action_request(content_type, body) {
        let _ = error.status();
        let _ = error.to_string();
    }
    if first & 0x80 != 0
        && let Ok(text) = std::str::from_utf8(body)
    {
        // A header line's bytes as the content type, the rest as the body.
        let (header, rest) = text.split_once('\n').unwrap_or((text, ""));
        let _ = parse_action_request(Some(header), rest.as_bytes());
    }
    let _ = nodemedic_core::input::from_json_slice::<serde_json::Value>(body);
});
