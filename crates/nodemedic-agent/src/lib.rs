//! nodemedic-agent owns the node agent. Its pure half knows about hardware: parsers for GPU, kernel-log,
//! network and disk tool outputs with a verdict for each, the fault catalog (XID / SXid / amdgpu patterns →
//! action class, with count-in-window escalation), the probe threshold machine that keeps verdicts from
//! flapping, the node-problem-detector plugin protocol, tool runners with timeouts, and the
//! `nodemedic-agent check --once` operator CLI; those modules must not touch Kubernetes.
//!
//! The Kubernetes half is `node` (family verdicts → Node conditions through this node's status subresource),
//! `remediate` (the attempt state file and the host's reboot / reimage commands) and `agent` (the continuous
//! loop: probes on their schedules, the NodeRemediation watch, one action per attempt). It writes only this
//! node's status and this node's NodeRemediation `stepReport`. The library names no Kubernetes API version;
//! the binary's default `binary` feature picks v1_35.

pub mod agent;
pub mod bench;
pub mod catalog;
pub mod check;
pub mod config;
pub mod durable;
pub mod exec;
pub mod faults;
pub mod gpu_count;
pub mod gpu_reset;
pub mod kernel_follow;
pub mod metrics;
pub mod node;
pub mod nvml;
pub mod parse;
pub mod plugin;
pub mod probe;
pub mod remediate;
pub mod selffence;
pub mod tools;
pub mod verdict;

pub use catalog::{ActionClass, ActionClassExt, Catalog, Classification, FaultKey, FaultTracker};
pub use config::AgentConfig;
pub use probe::{ProbeSchedule, ProbeState};
pub use verdict::{Health, Reason, Verdict};
