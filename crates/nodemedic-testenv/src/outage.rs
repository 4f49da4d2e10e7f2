//! API-server outages on demand: kill kube-apiserver and start it again on the same port against
//! the same etcd (so the same data), or pause it (SIGSTOP: connections are accepted and never
//! answered) and resume it.

use crate::{ControlPlane, Health, TestEnvError, io};
use std::process::Command;
use std::time::Duration;

const API_SERVER: &str = "kube-apiserver";

impl ControlPlane {
    fn api_server_pid(&self) -> Result<u32, TestEnvError> {
        self.pids()
            .into_iter()
            .find(|(name, _)| *name == API_SERVER)
            .map(|(_, pid)| pid)
            .ok_or_else(|| TestEnvError::Binaries("kube-apiserver is not running".into()))
    }

    fn signal_api_server(&self, signal: &str) -> Result<(), TestEnvError> {
        let pid = self.api_server_pid()?.to_string();
        let status = Command::new("kill").args([signal, &pid]).status().map_err(io(format!("kill {signal} {pid}")))?;
        if !status.success() {
            return Err(TestEnvError::Io { what: format!("kill {signal} {pid}"), source: std::io::Error::other(status.to_string()) });
        }
        Ok(())
    }

    /// Kills kube-apiserver (SIGKILL, no graceful shutdown); etcd keeps running with the data.
    /// Clients get "connection refused" until [`ControlPlane::start_api_server`].
    pub fn stop_api_server(&self) -> Result<(), TestEnvError> {
        let mut components = self.components();
        let Some(i) = components.iter().position(|c| c.name == API_SERVER) else {
            return Err(TestEnvError::Binaries("kube-apiserver is not running".into()));
        };
        let mut stopped = components.remove(i);
        let _ = stopped.child.kill();
        let _ = stopped.child.wait();
        // The old log is kept beside the new one.
        let _ = std::fs::rename(&stopped.log, stopped.log.with_extension(format!("log.{}", stopped.child.id())));
        Ok(())
    }

    /// Starts kube-apiserver again with the flags it first had (same port, same etcd) and waits
    /// until it is ready.
    pub async fn start_api_server(&self) -> Result<(), TestEnvError> {
        let args = self.api_server_args.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.spawn(API_SERVER, &args)?;
        self.wait_ready(API_SERVER, Health::ApiServer("/readyz"), Duration::from_secs(90)).await
    }

    /// [`ControlPlane::stop_api_server`], `down` of outage, then [`ControlPlane::start_api_server`].
    pub async fn restart_api_server(&self, down: Duration) -> Result<(), TestEnvError> {
        self.stop_api_server()?;
        tokio::time::sleep(down).await;
        self.start_api_server().await
    }

    /// SIGSTOP: the API server accepts connections and answers nothing until resumed.
    pub fn pause_api_server(&self) -> Result<(), TestEnvError> {
        self.signal_api_server("-STOP")
    }

    /// SIGCONT after [`ControlPlane::pause_api_server`].
    pub fn resume_api_server(&self) -> Result<(), TestEnvError> {
        self.signal_api_server("-CONT")
    }
}
