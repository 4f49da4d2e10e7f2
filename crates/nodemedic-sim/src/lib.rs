//! nodemedic-sim owns the discrete-event fleet simulator that drives
//! nodemedic-core's engine. It must not depend on tokio, kube or any clock:
//! time is simulated, measured in milliseconds since the start of a run.
//! `progress` decides how the command line shows a run's progress, from
//! times the caller measures.

pub mod faults;
pub mod progress;
pub mod sim;
