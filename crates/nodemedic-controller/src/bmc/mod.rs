//! Out-of-band power through a node's BMC, confirmed by the BMC's own power state.
//!
//! The `powerOff` and `powerCycle` steps run here. A step succeeds only when the BMC has *said* the
//! power state the step asked for (Off; for a cycle Off and then On) before the deadline. A BMC that
//! cannot be reached, refuses the credentials or never confirms fails the step with an error naming
//! the BMC and what it said, so nothing downstream takes the node for fenced.
//!
//! - [`redfish`]: `ComputerSystem.Reset`, then `PowerState` read back.
//! - [`ipmi`]: `ipmitool chassis power off|on|status` over IPMI v2 (lanplus).
//!
//! Which BMC belongs to a node comes from [`PowerConfig::nodes`] or, when the node is not listed
//! there, from the node's [`BMC_ANNOTATION`]. Credentials are only ever read from a Secret
//! ([`SecretRef`]) and never logged ([`Credentials`] redacts itself).

pub mod ipmi;
pub mod redfish;

use crate::executors::{Started, report_or_log, time_left};
use crate::{ExecFuture, Executor, StepRequest};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{Api, Client, ResourceExt};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::{Duration, RemediationStep};
use nodemedic_k8s::field_managers;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The node annotation naming its BMC when the executor config does not: a JSON [`BmcTarget`], e.g.
/// `{"address": {"redfish": "https://10.0.0.9/redfish/v1/Systems/1"}, "credentials": {"namespace": "nodemedic", "name": "bmc-gpu-1"}}`.
pub const BMC_ANNOTATION: &str = "nodemedic.io/bmc";

/// How the power executor finds and talks to BMCs (`power:` in the executors config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PowerConfig {
    /// Node name → its BMC. A node not listed here is looked up by its [`BMC_ANNOTATION`].
    pub nodes: BTreeMap<String, BmcTarget>,
    /// How long the BMC may take to confirm the power state when the request carries no deadline.
    /// Default 5m.
    pub confirm_timeout: Duration,
    /// How often the power state is read back while waiting. Default 1s.
    pub poll_interval: Duration,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig { nodes: BTreeMap::new(), confirm_timeout: Duration::from_mins(5), poll_interval: Duration::from_secs(1) }
    }
}

/// One node's BMC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BmcTarget {
    pub address: BmcAddress,
    /// The Secret holding `username` and `password`.
    pub credentials: SecretRef,
    /// PEM file of the CA certificates a Redfish BMC's certificate is verified against (default: the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// Accept any certificate from this BMC. Off unless set, per BMC.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

/// Where a BMC answers and in which protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BmcAddress {
    /// The Redfish ComputerSystem's URL, e.g. `https://10.0.0.9/redfish/v1/Systems/1`.
    Redfish(String),
    /// The IPMI LAN endpoint, `host` or `host:port` (default port 623).
    Ipmi(String),
}

impl std::fmt::Display for BmcAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BmcAddress::Redfish(url) => write!(f, "redfish {url}"),
            BmcAddress::Ipmi(host) => write!(f, "ipmi {host}"),
        }
    }
}

/// A Secret by namespace and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// A BMC's user name and password. Its `Debug` shows the user only.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// The power state a BMC reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
        })
    }
}

/// What the step asks of the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Force the power off; confirmed when the BMC says Off.
    Off,
    /// Force the power off, confirm Off, power on, confirm On. Both halves are confirmed, which a
    /// single cycle command (whose Off moment may be too short to read) does not allow.
    Cycle,
}

impl PowerAction {
    /// The action a ladder step asks for, if it is a power step.
    pub fn for_step(step: RemediationStep) -> Option<PowerAction> {
        match step {
            RemediationStep::PowerOff => Some(PowerAction::Off),
            RemediationStep::PowerCycle => Some(PowerAction::Cycle),
            _ => None,
        }
    }
}

/// Why a power step failed: which BMC, and what it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BMC {bmc}: {message}")]
pub struct BmcError {
    /// The BMC as configured (protocol and address).
    pub bmc: String,
    pub message: String,
}

impl BmcError {
    pub fn new(bmc: &BmcAddress, message: impl Into<String>) -> BmcError {
        BmcError { bmc: bmc.to_string(), message: message.into() }
    }
}

/// Carries out `action` on `target` and waits, until `limit` has passed, for the BMC to confirm it.
/// Returns what was confirmed, in words.
pub async fn run_power_action(
    target: &BmcTarget,
    credentials: &Credentials,
    action: PowerAction,
    limit: std::time::Duration,
    poll: std::time::Duration,
) -> Result<String, BmcError> {
    let until = tokio::time::Instant::now() + limit;
    match &target.address {
        BmcAddress::Redfish(_) => run_on(&redfish::Redfish::new(target, credentials.clone())?, action, until, poll).await,
        BmcAddress::Ipmi(_) => run_on(&ipmi::Ipmi::new(target, credentials.clone()), action, until, poll).await,
    }
}

/// What each protocol offers: switch the power, read it back.
pub(crate) trait PowerControl {
    fn address(&self) -> &BmcAddress;
    /// Asks the BMC to force the power to `state`; accepted is not yet confirmed.
    async fn switch(&self, state: PowerState) -> Result<(), BmcError>;
    async fn state(&self) -> Result<PowerState, BmcError>;
}

async fn run_on(
    bmc: &impl PowerControl,
    action: PowerAction,
    until: tokio::time::Instant,
    poll: std::time::Duration,
) -> Result<String, BmcError> {
    let started = tokio::time::Instant::now();
    bmc.switch(PowerState::Off).await?;
    confirm(bmc, PowerState::Off, until, poll).await?;
    let off_after = started.elapsed();
    if action == PowerAction::Off {
        return Ok(format!("{}: power Off confirmed after {:.1}s", bmc.address(), off_after.as_secs_f64()));
    }
    bmc.switch(PowerState::On).await?;
    confirm(bmc, PowerState::On, until, poll).await?;
    Ok(format!(
        "{}: power cycled, Off confirmed after {:.1}s, On after {:.1}s",
        bmc.address(),
        off_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// Reads the power state until it is `want` or `until` passes; the error says what the BMC said last.
async fn confirm(
    bmc: &impl PowerControl,
    want: PowerState,
    until: tokio::time::Instant,
    poll: std::time::Duration,
) -> Result<(), BmcError> {
    loop {
        let said = bmc.state().await;
        if said.as_ref().is_ok_and(|s| *s == want) {
            return Ok(());
        }
        if tokio::time::Instant::now() + poll > until {
            let last = match said {
                Ok(state) => format!("it still says {state}"),
                Err(e) => format!("the last read failed: {}", e.message),
            };
            return Err(BmcError::new(bmc.address(), format!("did not confirm power {want} before the deadline; {last}")));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Reads `username` and `password` from the Secret `reference` names.
pub async fn read_credentials(client: &Client, reference: &SecretRef, bmc: &BmcAddress) -> Result<Credentials, BmcError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &reference.namespace);
    let secret = api.get(&reference.name).await.map_err(|e| {
        BmcError::new(bmc, format!("reading the credentials Secret {}/{} failed: {e}", reference.namespace, reference.name))
    })?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| {
        let bytes = data.get(key).map(|b| b.0.clone()).unwrap_or_default();
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
            BmcError::new(bmc, format!("the credentials Secret {}/{} has no UTF-8 `{key}`", reference.namespace, reference.name))
        })
    };
    Ok(Credentials { username: field("username")?, password: field("password")? })
}

/// Runs the `powerOff` and `powerCycle` steps through each node's BMC and reports the confirmed
/// outcome (or the BMC's error) on the node's NodeRemediation. One action per (node, attempt, step).
pub struct PowerExecutor {
    client: Client,
    config: Arc<PowerConfig>,
    started: Arc<Started>,
}

impl PowerExecutor {
    pub fn new(client: Client, config: PowerConfig) -> PowerExecutor {
        PowerExecutor { client, config: Arc::new(config), started: Arc::default() }
    }

    /// How many power actions this executor has started (repeated requests for one attempt count once).
    pub fn actions_started(&self) -> u64 {
        self.started.count()
    }
}

impl Executor for PowerExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            let Some(action) = PowerAction::for_step(request.step) else {
                return Err(format!("the power executor cannot run step {}", request.step));
            };
            self.started.start(request, || {
                let (client, config, req) = (self.client.clone(), self.config.clone(), request.clone());
                Ok(tokio::spawn(async move {
                    let (outcome, message) = match power(&client, &config, &req, action).await {
                        Ok(confirmed) => (ReportedOutcome::Succeeded, confirmed),
                        Err(e) => (ReportedOutcome::Failed, e.to_string()),
                    };
                    report_or_log(&client, field_managers::EXECUTOR, &req, outcome, message).await;
                })
                .abort_handle())
            })?;
            Ok(())
        })
    }
}

/// Finds the node's BMC and credentials, then runs the action to its confirmation.
async fn power(client: &Client, config: &PowerConfig, req: &StepRequest, action: PowerAction) -> Result<String, String> {
    let target = bmc_of(client, config, &req.node).await?;
    let credentials = read_credentials(client, &target.credentials, &target.address).await.map_err(|e| e.to_string())?;
    let limit = time_left(req.deadline, config.confirm_timeout);
    let poll = std::time::Duration::from_millis(u64::try_from(config.poll_interval.as_millis()).unwrap_or(1000).max(50));
    tracing::info!(node = %req.node, step = %req.step, attempt = req.attempt, bmc = %target.address, "power action started");
    run_power_action(&target, &credentials, action, limit, poll).await.map_err(|e| e.to_string())
}

/// The node's BMC: from the config, else from the node's annotation.
async fn bmc_of(client: &Client, config: &PowerConfig, node: &str) -> Result<BmcTarget, String> {
    if let Some(target) = config.nodes.get(node) {
        return Ok(target.clone());
    }
    let api: Api<Node> = Api::all(client.clone());
    let found = api.get(node).await.map_err(|e| format!("node {node}: reading it for its BMC failed: {e}"))?;
    let Some(text) = found.annotations().get(BMC_ANNOTATION) else {
        return Err(format!("node {node} has no BMC: not in the power executor's config and no {BMC_ANNOTATION} annotation"));
    };
    // The annotation comes through our API server, but a person wrote its JSON: read strictly.
    nodemedic_core::input::from_json_str(text).map_err(|e| format!("node {node}: the {BMC_ANNOTATION} annotation is not a BMC target: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials { username: "admin".into(), password: "hunter2".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("admin") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_bmc_annotation_reads_like_the_docs() -> Result<(), serde_json::Error> {
        let t: BmcTarget = serde_json::from_str(
            r#"{"address": {"ipmi": "10.0.0.9:623"}, "credentials": {"namespace": "nodemedic", "name": "bmc-gpu-1"}}"#,
        )?;
        assert_eq!(t.address, BmcAddress::Ipmi("10.0.0.9:623".into()));
        assert!(!t.insecure_skip_tls_verify, "TLS is verified unless a BMC says otherwise");
        assert!(
            serde_json::from_str::<BmcTarget>(
                r#"{"address": {"ipmi": "h"}, "credentials": {"namespace": "n", "name": "s"}, "insecure": true}"#
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn the_executors_config_names_bmcs_under_power() -> Result<(), Box<dyn std::error::Error>> {
        let yaml = r#"
power:
  confirmTimeout: 2m
  nodes:
    gpu-001:
      address: {redfish: "https://10.0.0.9/redfish/v1/Systems/1"}
      credentials: {namespace: nodemedic, name: bmc-gpu-001}
      caBundle: /etc/nodemedic/bmc-ca.pem
"#;
        let config: crate::executors::ExecutorsConfig = serde_saphyr::from_str(yaml)?;
        assert_eq!(config.power.confirm_timeout, Duration::from_mins(2));
        assert_eq!(config.power.poll_interval, Duration::from_secs(1));
        let target = config.power.nodes.get("gpu-001").ok_or("gpu-001 missing")?;
        assert_eq!(target.address, BmcAddress::Redfish("https://10.0.0.9/redfish/v1/Systems/1".into()));
        assert_eq!(target.ca_bundle, Some(PathBuf::from("/etc/nodemedic/bmc-ca.pem")));
        Ok(())
    }

    #[tokio::test]
    async fn the_power_steps_go_to_the_power_executor_by_default() -> Result<(), Box<dyn std::error::Error>> {
        // Never contacted: building the router does not talk to the API server.
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?;
        let router = crate::executors::StepRouter::from_config(client, &crate::executors::ExecutorsConfig::default())?;
        let steps: Vec<RemediationStep> = router.steps().collect();
        assert!(steps.contains(&RemediationStep::PowerOff) && steps.contains(&RemediationStep::PowerCycle), "{steps:?}");
        Ok(())
    }

    #[test]
    fn only_the_power_steps_are_power_actions() {
        assert_eq!(PowerAction::for_step(RemediationStep::PowerOff), Some(PowerAction::Off));
        assert_eq!(PowerAction::for_step(RemediationStep::PowerCycle), Some(PowerAction::Cycle));
        assert_eq!(PowerAction::for_step(RemediationStep::Reboot), None);
    }
}
