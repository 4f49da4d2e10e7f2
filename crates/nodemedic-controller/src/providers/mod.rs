//! Providers: the machine behind a node, repaired or replaced through whatever manages it. One
//! [`Provider`] interface serves both the ladder's steps (through [`ProviderExecutor`], configured
//! as `steps.replace: {provider: ...}` in the executors file) and the actions API's repair.
//!
//! - [`ClusterApiProvider`]: deletes the Cluster API Machine that owns the node; its MachineSet
//!   creates a replacement (any CAPI-managed cluster).
//! - [`GceProvider`]: deletes the node's Compute Engine instance; its managed instance group
//!   creates a replacement (seed 002).
//! - [`CivoProvider`]: hard-reboots the node's Civo instance (seed 003's executor).
//! - [`RecreateNodeProvider`]: deletes the Node object and creates it again (test clusters).

mod civo;
mod cluster_api;
mod gce;

pub use civo::{CivoConfig, CivoProvider};
pub use cluster_api::{ClusterApiProvider, MACHINE_ANNOTATION, MACHINE_NAMESPACE_ANNOTATION};
pub use gce::{GceInstance, GceProvider};

use crate::executors::{Started, report_or_resume};
use crate::{ExecFuture, Executor, StepRequest};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use nodemedic_core::RemediationStep;
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_k8s::field_managers;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub type ProviderFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;

/// Repairs or replaces the machine behind a node. `repair` returns once the provider accepted the
/// work, saying what was done in words (for the step report and the action record); asked again
/// for the same node (a resumed step) it must not do harm: a machine already gone is done.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    /// The ladder steps this provider carries out; a provider replaces the machine unless it says
    /// otherwise.
    fn steps(&self) -> &'static [RemediationStep] {
        &[RemediationStep::Replace]
    }
    fn repair<'a>(&'a self, node: &'a Node) -> ProviderFuture<'a>;
}

/// Which provider a step goes to (camelCase, one key): `{clusterApi: {}}`, `{gce: {}}`,
/// `{civo: {region: LON1, apiKeyFile: /etc/civo/key}}`, `{recreateNode: {}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProviderConfig {
    ClusterApi(ClusterApiConfig),
    Gce(GceConfig),
    Civo(CivoConfig),
    RecreateNode(EmptyConfig),
}

/// Settings of the Cluster API provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterApiConfig {
    /// Look for Machines only here (default: the node's `cluster.x-k8s.io/cluster-namespace`
    /// annotation, else every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Settings of the GCE provider: endpoints other than Google's (private endpoints, tests).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

/// A provider without settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyConfig {}

impl ProviderConfig {
    /// The provider this configuration describes.
    pub fn build(&self, client: &Client) -> Result<Arc<dyn Provider>, String> {
        Ok(match self {
            ProviderConfig::ClusterApi(c) => Arc::new(ClusterApiProvider { client: client.clone(), namespace: c.namespace.clone() }),
            ProviderConfig::Gce(c) => Arc::new(GceProvider::with_endpoints(
                c.endpoint.as_deref().unwrap_or("https://compute.googleapis.com"),
                c.metadata.as_deref().unwrap_or("http://metadata.google.internal"),
            )?),
            ProviderConfig::Civo(c) => Arc::new(CivoProvider::new(c.clone())?),
            ProviderConfig::RecreateNode(_) => Arc::new(RecreateNodeProvider { client: client.clone() }),
        })
    }
}

/// Carries out ladder steps through a [`Provider`]: reads the node, asks the provider in the
/// background (once per node, attempt and step) and reports the outcome on the record. A new
/// leader resuming the step asks the provider again, which reads as done when the machine is
/// already gone.
pub struct ProviderExecutor {
    client: Client,
    provider: Arc<dyn Provider>,
    started: Arc<Started>,
}

impl ProviderExecutor {
    pub fn new(client: Client, provider: Arc<dyn Provider>) -> ProviderExecutor {
        ProviderExecutor { client, provider, started: Arc::default() }
    }

    fn start(&self, request: &StepRequest) -> Result<(), String> {
        if !self.provider.steps().contains(&request.step) {
            return Err(format!("the {} provider cannot carry out step {}", self.provider.name(), request.step));
        }
        self.started.start(request, || {
            let (client, provider, req, started) =
                (self.client.clone(), self.provider.clone(), request.clone(), std::sync::Arc::downgrade(&self.started));
            Ok(tokio::spawn(async move {
                let (outcome, message) = match Api::<Node>::all(client.clone()).get(&req.node).await {
                    Err(e) => (ReportedOutcome::Failed, format!("reading node {}: {e}", req.node)),
                    Ok(node) => match provider.repair(&node).await {
                        Ok(done) => (ReportedOutcome::Succeeded, done),
                        Err(e) => (ReportedOutcome::Failed, format!("{} provider: {e}", provider.name())),
                    },
                };
                report_or_resume(&client, field_managers::EXECUTOR, &req, outcome, message, &started).await;
            })
            .abort_handle())
        })?;
        Ok(())
    }
}

impl Executor for ProviderExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move { self.start(request) })
    }

    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move { self.start(request) })
    }

    fn executor_for(&self, step: RemediationStep) -> Option<String> {
        self.provider.steps().contains(&step).then(|| format!("the {} provider", self.provider.name()))
    }
}

/// Deletes the Node object and creates it again with the same name, labels, annotations and
/// capacity, schedulable and without taints: what a replaced machine looks like to Kubernetes.
pub struct RecreateNodeProvider {
    pub client: Client,
}

impl Provider for RecreateNodeProvider {
    fn name(&self) -> &'static str {
        "recreate-node"
    }

    fn steps(&self) -> &'static [RemediationStep] {
        &[RemediationStep::Replace]
    }

    fn repair<'a>(&'a self, node: &'a Node) -> ProviderFuture<'a> {
        Box::pin(async move {
            let api: Api<Node> = Api::all(self.client.clone());
            let name = node.name_any();
            api.delete(&name, &DeleteParams::default()).await.map_err(|e| format!("deleting node {name}: {e}"))?;
            // Wait until it is gone (a finalizer may hold it for a moment).
            for _ in 0..100 {
                match api.get_opt(&name).await {
                    Ok(None) => break,
                    Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    Err(e) => return Err(format!("reading node {name}: {e}")),
                }
            }
            let mut fresh = Node::default();
            fresh.metadata.name = Some(name.clone());
            fresh.metadata.labels = node.metadata.labels.clone();
            fresh.metadata.annotations = node.metadata.annotations.clone();
            let mut spec = node.spec.clone().unwrap_or_default();
            spec.unschedulable = None;
            spec.taints = None;
            fresh.spec = Some(spec);
            fresh.status = node.status.as_ref().map(|s| k8s_openapi::api::core::v1::NodeStatus {
                capacity: s.capacity.clone(),
                allocatable: s.allocatable.clone(),
                ..Default::default()
            });
            api.create(&PostParams::default(), &fresh).await.map_err(|e| format!("creating node {name} again: {e}"))?;
            Ok(format!("node {name} deleted and created again"))
        })
    }
}
