//! nodemedic-core owns the policy model, rule evaluation and the remediation engine: given a policy,
//! the observed nodes, the durable records and the time, it decides what to do, with a reason for
//! everything. It is pure: it must not depend on tokio, kube, a clock, the file system or the
//! network, so the controller, the simulator and `nodemedic plan` all run exactly this code.

pub mod drain;
pub mod engine;
pub mod eval;
pub mod external;
pub mod fencing;
pub mod index;
pub mod input;
pub mod manual;
pub mod observe;
pub mod outage;
pub mod policy;
pub mod presets;
pub mod record;
pub mod selector;
pub mod selffence;
pub mod testkit;
pub mod time;

pub use engine::{Action, Decision, Event, EventKind, Gate, Hold, RecordChange, Summary, apply, decide};
pub use index::FleetIndex;
pub use observe::NodeObservation;
pub use outage::{Outage, account_for_outages};
pub use policy::{Policy, PolicyError, RemediationStep};
pub use record::{NodeRecord, Phase, Records};
pub use time::{Duration, Time};

/// Which probes the node agent may run on a node with these taints: GPU probes pause while a repair
/// taint is on the node (the repair is in progress, seed 000) and run again when the controller wants a
/// re-check — `verifying`: the record is verifying a repair (seed 000's reboot service re-runs the GPU
/// tests), or a person marked a Manual node resolved; the network probe keeps
/// running on `slow-network` nodes so recovery is seen.
pub fn probe_may_run(family: ProbeFamily, taint_keys: &[&str], taint_prefix: &str, verifying: bool) -> bool {
    match family {
        ProbeFamily::Gpu => {
            verifying || !taint_keys.iter().any(|k| k.strip_prefix(taint_prefix).is_some_and(|name| name.starts_with("repair-")))
        }
        ProbeFamily::Network | ProbeFamily::Disk | ProbeFamily::Custom => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFamily {
    Gpu,
    Network,
    Disk,
    Custom,
}
