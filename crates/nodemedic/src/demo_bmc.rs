//! The BMC of the demo's nodes that die: the Redfish emulator sushy-tools (its fake driver, from the
//! venv `scripts/bmc-peers/setup` builds), over HTTPS with a CA the demo makes, behind basic auth. One
//! Redfish system per dead node. The controllers' power executor switches them exactly as it would a
//! real BMC; the demo reads the power state for its timeline and, playing the person who fixes the
//! machine, powers it on again through the same API.

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use nodemedic_controller::bmc::{BmcAddress, BmcTarget, PowerConfig, SecretRef};
use nodemedic_testenv::ControlPlane;
use nodemedic_testenv::redfish::{FakeSystem, RedfishEmulator};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the controllers find the BMC credentials.
const SECRET_NAMESPACE: &str = "nodemedic";
const USER: &str = "admin";

/// The installed emulator: `NODEMEDIC_SUSHY_EMULATOR`, else what the setup script prints last.
fn emulator() -> Result<PathBuf> {
    crate::demo_peers::installed_by("NODEMEDIC_SUSHY_EMULATOR", "scripts/bmc-peers/setup")
}

/// The running emulator (stopped on drop) and what the demo needs to talk to it.
pub struct Bmc {
    emulator: RedfishEmulator,
    password: String,
    /// Node → its Redfish system's UUID.
    systems: BTreeMap<String, String>,
    http: reqwest::Client,
}

impl Bmc {
    /// Starts sushy-emulator with one system per node, each powered On.
    pub fn start(nodes: &[&str]) -> Result<Bmc> {
        let password = format!("demo-{}", std::process::id());
        let systems: BTreeMap<String, String> =
            nodes.iter().enumerate().map(|(i, n)| (n.to_string(), format!("5e0d1c2b-0000-4000-8000-{:012}", i + 1))).collect();
        let fake: Vec<FakeSystem> = systems.iter().map(|(name, uuid)| FakeSystem { uuid: uuid.clone(), name: name.clone() }).collect();
        let emulator = RedfishEmulator::start(&emulator()?, &fake, USER, &password)?;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(emulator.ca_bundle())?)?;
        let http =
            reqwest::Client::builder().add_root_certificate(ca).tls_built_in_root_certs(false).timeout(Duration::from_secs(5)).build()?;
        Ok(Bmc { emulator, password, systems, http })
    }

    fn system_url(&self, node: &str) -> Result<String> {
        let uuid = self.systems.get(node).ok_or_else(|| anyhow!("{node} has no BMC in the demo"))?;
        Ok(self.emulator.system_url(uuid))
    }

    /// The executors config's `power:` section: each node's system, its Secret, the demo's CA.
    pub fn power_config(&self) -> Result<PowerConfig> {
        let mut nodes = BTreeMap::new();
        for node in self.systems.keys() {
            let target = BmcTarget {
                address: BmcAddress::Redfish(self.system_url(node)?),
                credentials: SecretRef { namespace: SECRET_NAMESPACE.into(), name: secret_name(node) },
                ca_bundle: Some(self.emulator.ca_bundle()),
                insecure_skip_tls_verify: false,
            };
            nodes.insert(node.clone(), target);
        }
        Ok(PowerConfig { nodes, poll_interval: nodemedic_core::Duration::from_millis(500), ..PowerConfig::default() })
    }

    /// The Secrets the power executor reads the credentials from.
    pub async fn create_secrets(&self, cp: &ControlPlane) -> Result<()> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": SECRET_NAMESPACE}}))?;
        match Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await {
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            other => other.map(|_| ()).context("creating the namespace of the BMC Secrets")?,
        }
        let secrets: Api<Secret> = Api::namespaced(cp.client(), SECRET_NAMESPACE);
        for node in self.systems.keys() {
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": secret_name(node)},
                "stringData": {"username": USER, "password": self.password}}))?;
            secrets.create(&PostParams::default(), &secret).await.with_context(|| format!("creating {}", secret_name(node)))?;
        }
        Ok(())
    }

    /// What the node's BMC says its power is (`On`, `Off`, …).
    pub async fn power_state(&self, node: &str) -> Result<String> {
        let url = self.system_url(node)?;
        let response = self.http.get(&url).basic_auth(USER, Some(&self.password)).send().await?.error_for_status()?;
        let system: serde_json::Value = response.json().await?;
        system["PowerState"].as_str().map(str::to_string).ok_or_else(|| anyhow!("{url} has no PowerState"))
    }

    /// What a person does to bring the machine back: `ComputerSystem.Reset` with `On`.
    pub async fn power_on(&self, node: &str) -> Result<()> {
        let url = format!("{}/Actions/ComputerSystem.Reset", self.system_url(node)?);
        self.http
            .post(&url)
            .basic_auth(USER, Some(&self.password))
            .json(&serde_json::json!({"ResetType": "On"}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("powering {node} on through {url}"))?;
        Ok(())
    }
}

fn secret_name(node: &str) -> String {
    format!("bmc-{node}")
}

/// The label the demo puts on the nodes that have a BMC (the nodes of `kind: dead` faults).
pub const BMC_LABEL: &str = "demo.nodemedic.io/bmc";

/// How long after its BMC says Off, and its StatefulSet pods run elsewhere, a person powers a dead
/// node on; and the longest the person waits for the pods before powering it on anyway.
const POWER_ON_AFTER: Duration = Duration::from_secs(10);
const POWER_ON_AT_LATEST: Duration = Duration::from_secs(90);

/// The dead nodes as the demo sees them through their BMC: when each was seen Off, and which the
/// person has asked to power on.
#[derive(Default)]
pub struct PowerWatch {
    off_at: BTreeMap<String, Instant>,
    on_asked: BTreeMap<String, Instant>,
}

/// A line for the timeline: (node, reason, what happened).
pub type Line = (String, &'static str, String);

impl PowerWatch {
    /// One look at the dead nodes still down (`down`: node → whether its StatefulSet pods run
    /// elsewhere now). A node its BMC says is Off is told once; once its pods have moved (or
    /// [`POWER_ON_AT_LATEST`] has passed) the person powers it on through the BMC, and once the BMC
    /// says On its kubelet returns and it boots with a new boot ID. Returns the timeline's lines and
    /// the nodes back.
    pub async fn look(&mut self, bmc: &Bmc, cp: &ControlPlane, down: &BTreeMap<String, bool>) -> Result<(Vec<Line>, Vec<String>)> {
        let (mut lines, mut back) = (Vec::new(), Vec::new());
        for (node, moved) in down {
            if let Some(asked) = self.on_asked.get(node).copied() {
                if bmc.power_state(node).await? != "On" {
                    continue;
                }
                cp.resume_heartbeat(node).await?;
                let boot_id = cp.simulate_reboot(node).await?;
                let text = format!(
                    "its BMC reads PowerState On {:.1}s after the request; it boots, new bootID …{}, its kubelet is back",
                    asked.elapsed().as_secs_f64(),
                    &boot_id[boot_id.len().saturating_sub(12)..]
                );
                lines.push((node.clone(), "PoweredOn", text));
                back.push(node.clone());
                continue;
            }
            let Some(off_at) = self.off_at.get(node).copied() else {
                if bmc.power_state(node).await? == "Off" {
                    self.off_at.insert(node.clone(), Instant::now());
                    lines.push((node.clone(), "BmcSaysOff", "its BMC (sushy-tools, Redfish) reads PowerState Off".to_string()));
                }
                continue;
            };
            let due = (*moved && off_at.elapsed() >= POWER_ON_AFTER) || off_at.elapsed() >= POWER_ON_AT_LATEST;
            if due {
                bmc.power_on(node).await?;
                self.on_asked.insert(node.clone(), Instant::now());
                lines.push((node.clone(), "PowerOnAsked", "a person powers it on through its BMC (Redfish Reset On)".to_string()));
            }
        }
        for n in &back {
            self.off_at.remove(n);
            self.on_asked.remove(n);
        }
        Ok((lines, back))
    }
}
