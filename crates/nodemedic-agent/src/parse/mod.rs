//! One module per tool. Every parser returns typed data or a `thiserror` error naming what was wrong (never a
//! panic), and every module has a verdict function from the typed data to a [`crate::Verdict`].

pub mod amd;
pub mod dcgmi;
pub mod disk;
pub mod ethtool;
pub mod infiniband;
pub mod kernel;
pub mod netperf;
pub mod nvidia_smi;
pub mod nvidia_smi_views;
