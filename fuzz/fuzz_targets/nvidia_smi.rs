//! nvidia-smi in every view the agent reads: `-q -x` XML, `-q` text, `--query-gpu --format=csv`, the default
//! table, `nvlink -s` / `c2c -s` link status, a saved capture of several views, and the failure text an
//! erroring run prints — each parsed and judged as `tools::nvidia_smi` / `tools::nvlink` do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::nvidia_smi::{self, NvidiaThresholds};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let thresholds = NvidiaThresholds { expected_gpus: Some(8), max_pcie_replays: 100 };
    for report in
        [nvidia_smi::parse_xml(&text), nvidia_smi::parse_query_text(&text), nvidia_smi::parse_query_csv(&text)].into_iter().flatten()
    {
        let _ = nvidia_smi::verdict(&report, &thresholds);
        for gpu in &report.gpus {
            let _ = nvidia_smi::gpu_health(gpu);
        }
    }
    if let Ok(gpus) = nvidia_smi::parse_table(&text) {
        let _ = nvidia_smi::table_verdict(&gpus, Some(8));
    }
    if let Ok(gpus) = nvidia_smi::parse_link_status(&text) {
        let _ = nvidia_smi::link_status_verdict(&gpus);
    }
    let _ = nvidia_smi::failure_verdict(&text, Some(8));
    let _ = nvidia_smi::split_capture(&text);
});
