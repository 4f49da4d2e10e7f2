//! /proc/mounts (or /proc/self/mountinfo-like) text: parsed and judged for read-only remounts of the watched
//! mount points as `tools::disk` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::disk;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(mounts) = disk::parse_mounts(&text) {
        let watched: Vec<String> = ["/", "/var/lib/kubelet", "/var/lib/containerd"].map(String::from).to_vec();
        let _ = disk::read_only_verdict(&mounts, &watched);
        for mount in &mounts {
            let _ = mount.is_read_only();
        }
    }
});
