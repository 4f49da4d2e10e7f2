//! nodemedic-core owns the policy model, rule evaluation and the remediation engine: given a policy,
//! the observed nodes, the durable records and the time, it decides what to do, with a reason for
//! everything. It is pure: it must not depend on tokio, kube, a clock, the file system or the
//! network, so the controller, the simulator and `nodemedic plan` all run exactly this code.

pub mod class;
pub mod drain;
pub mod engine;
pub mod eval;
pub mod external;
pub mod fencing;
pub mod gpu;
pub mod index;
pub mod input;
pub mod manual;
pub mod observe;
pub mod outage;
pub mod policy;
pub mod presets;
pub mod probe;
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
pub use probe::{ProbeFamily, probes_may_run};
pub use record::{NodeRecord, Phase, Records};
pub use time::{Duration, Time};
