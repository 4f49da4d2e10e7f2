//! nodemedic-agent (pure half) owns what the node agent knows about hardware: parsers for GPU, kernel-log,
//! network and disk tool outputs with a verdict for each, the fault catalog (XID / SXid / amdgpu patterns →
//! action class, with count-in-window escalation), the probe threshold machine that keeps verdicts from
//! flapping, the node-problem-detector plugin protocol, tool runners with timeouts, and the
//! `nodemedic-agent check --once` operator CLI. It must not touch Kubernetes: no kube or k8s-openapi
//! dependency, no Node objects, no conditions written anywhere, and no reboot or reimage; the caller turns
//! verdicts into Node conditions.

pub mod catalog;
pub mod check;
pub mod config;
pub mod exec;
pub mod nvml;
pub mod parse;
pub mod plugin;
pub mod probe;
pub mod tools;
pub mod verdict;

pub use catalog::{ActionClass, Catalog, Classification, FaultKey, FaultTracker};
pub use config::AgentConfig;
pub use probe::{ProbeSchedule, ProbeState};
pub use verdict::{Health, Reason, Verdict};
