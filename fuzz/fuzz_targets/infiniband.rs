//! InfiniBand/RoCE from tools: `ibstat` text and `rdma link -j` JSON, judged against expectations (and against
//! the same ports as a previous reading) as `tools::infiniband_from_tool` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::parse::infiniband::{self, IbExpectations};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let expect = IbExpectations { expected_ports: Some(8), min_rate_gbps: Some(400.0), ..IbExpectations::default() };
    for ports in [infiniband::parse_ibstat(&text), infiniband::parse_rdma_link_json(&text)].into_iter().flatten() {
        let _ = infiniband::verdict(&ports, &expect, None);
        let _ = infiniband::verdict(&ports, &IbExpectations::default(), Some(&ports));
        for port in &ports {
            let _ = (port.name(), port.is_active(), port.is_link_up());
        }
    }
});
