//! Kernel log text (/dev/kmsg records, dmesg and journal lines): the kmsg cursor, line splitting, Xid / SXid /
//! amdgpu classification through the embedded fault catalog, and the verdict with its count-in-window
//! tracker, as `tools::kernel_log` and the agent's loop run them.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::kernel::{self, KmsgCursor};
use nodemedic_agent::{Catalog, FaultTracker};

static CATALOG: LazyLock<Option<Catalog>> = LazyLock::new(|| Catalog::embedded().ok());

fuzz_target!(|data: &[u8]| {
    let Some(catalog) = CATALOG.as_ref() else { panic!("the embedded fault catalog does not load") };
    let text = String::from_utf8_lossy(data);
    let mut cursor = KmsgCursor::default();
    let fresh = cursor.fresh_lines(&text).join("\n");
    let _ = cursor.fresh_lines(&text);
    for line in text.lines() {
        if let Some(split) = kernel::split_line(line) {
            let _ = kernel::classify_message(split.message, catalog);
        }
    }
    let events = kernel::scan(&fresh, catalog);
    let mut tracker = FaultTracker::new();
    let _ = kernel::verdict(&events, catalog, &mut tracker, Duration::from_secs(3600));
    let _ = kernel::verdict(&events, catalog, &mut tracker, Duration::from_secs(7200));
});
