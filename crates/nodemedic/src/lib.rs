//! The parts of the `nodemedic` command that other targets (fuzz targets, tests) must run as the
//! binary does: today the demo's scenario format. Everything else lives in the binary's modules.

pub mod scenario;
