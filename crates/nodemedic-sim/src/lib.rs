//! nodemedic-sim owns the discrete-event fleet simulator that drives
//! nodemedic-core's engine. It must not depend on tokio, kube or any clock:
//! time is simulated, measured in milliseconds since the start of a run.
//! `progress` decides how the command line shows a run's progress, from
//! times the caller measures.

mod agent;
pub mod baselines;
pub mod calibration;
pub mod draws;
pub mod faults;
pub mod progress;
pub mod report;
pub mod seeds;
pub mod sim;
pub mod sweep;
