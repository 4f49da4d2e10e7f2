//! IPMI through `ipmitool` (IPMI v2, `lanplus`): `chassis power off|on|status`. The password goes to
//! ipmitool in its environment (`-E`, `IPMI_PASSWORD`), never on its command line where `ps` shows it.
//!
//! Why ipmitool rather than a Rust crate: the IPMI crates on crates.io are young, sparsely maintained
//! and cover RMCP+ session setup only partly, while ipmitool is the tool operators already use against
//! every vendor's BMC and is packaged by Debian.

use super::{BmcAddress, BmcError, BmcTarget, Credentials, PowerControl, PowerState};
use std::time::Duration;

/// How long one ipmitool run may take (it retries itself; see `-R` and `-N`).
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Ipmi {
    address: BmcAddress,
    host: String,
    port: String,
    credentials: Credentials,
}

impl Ipmi {
    pub fn new(target: &BmcTarget, credentials: Credentials) -> Ipmi {
        let endpoint = match &target.address {
            BmcAddress::Ipmi(e) | BmcAddress::Redfish(e) => e.as_str(),
        };
        let (host, port) = match endpoint.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
            _ => (endpoint.to_string(), "623".to_string()),
        };
        Ipmi { address: target.address.clone(), host, port, credentials }
    }

    /// Runs `ipmitool ... chassis power <verb>`; its stdout, or an error with what it said.
    async fn chassis_power(&self, verb: &str) -> Result<String, BmcError> {
        let mut command = tokio::process::Command::new("ipmitool");
        command
            .args(["-I", "lanplus", "-H", &self.host, "-p", &self.port, "-U", &self.credentials.username, "-E"])
            .args(["-R", "2", "-N", "2", "chassis", "power", verb])
            .env("IPMI_PASSWORD", &self.credentials.password)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!("ipmitool chassis power {verb}");
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .map_err(|_| BmcError::new(&self.address, format!("{what}: no answer within {}s", RUN_TIMEOUT.as_secs())))?
            .map_err(|e| BmcError::new(&self.address, format!("{what}: could not run ipmitool: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said: Vec<&str> = stderr.lines().chain(stdout.lines()).map(str::trim).filter(|l| !l.is_empty()).collect();
            let mut said = said;
            said.dedup();
            return Err(BmcError::new(&self.address, format!("{what} failed ({}): {}", output.status, said.join("; "))));
        }
        Ok(stdout)
    }
}

impl PowerControl for Ipmi {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn switch(&self, state: PowerState) -> Result<(), BmcError> {
        let verb = match state {
            PowerState::Off => "off",
            PowerState::On => "on",
        };
        self.chassis_power(verb).await.map(|_| ())
    }

    async fn state(&self) -> Result<PowerState, BmcError> {
        let said = self.chassis_power("status").await?;
        match said.strip_prefix("Chassis Power is ").map(str::trim) {
            Some("on") => Ok(PowerState::On),
            Some("off") => Ok(PowerState::Off),
            _ => Err(BmcError::new(&self.address, format!("ipmitool chassis power status said {said:?}"))),
        }
    }
}
