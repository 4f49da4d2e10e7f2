//! The parts of the `nodemedic` command that other targets (fuzz targets, tests) must run as the
//! binary does: the demo's scenario format and the controller's configuration files. Everything
//! else lives in the binary's modules.

pub mod config_files;
pub mod scenario;
