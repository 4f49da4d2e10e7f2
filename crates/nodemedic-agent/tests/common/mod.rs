//! Helpers shared by the tests that run the agent in-process against a real API server: a host that
//! must never be asked to act, the agent with its log in the test's output, running it beside a test
//! body, and reading a node condition.
#![allow(dead_code)]

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::Api;
use nodemedic_agent::agent::Agent;
use nodemedic_agent::remediate::{HostActions, HostFuture};
use nodemedic_agent::{AgentConfig, Catalog};
use nodemedic_core::RemediationStep;
use nodemedic_testenv::ControlPlane;

/// A host that must never be asked to do anything: any request fails, naming the step.
pub struct NoActions;

impl HostActions for NoActions {
    fn perform<'a>(&'a self, step: RemediationStep) -> HostFuture<'a> {
        Box::pin(async move { Err(format!("unexpected {} request", step.as_str())) })
    }
}

/// The agent for `node`; its log goes with the test's output (shown for a failing test).
pub fn agent<'h>(cp: &ControlPlane, node: &str, config: AgentConfig, host: &'h dyn HostActions) -> anyhow::Result<Agent<'h>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("nodemedic_agent=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    Ok(Agent { client: cp.client(), node: node.to_string(), config: Arc::new(config), catalog: Arc::new(Catalog::embedded()?), host })
}

/// Runs `body` while `agent` runs; the agent stops (is dropped) when the body ends, as a killed process would.
pub async fn while_running<T>(agent: &Agent<'_>, body: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        stopped = agent.run() => Err(anyhow::anyhow!("the agent stopped: {stopped:?}")),
        result = body => result,
    }
}

/// The node's condition of this type, if the node and the condition can be read.
pub async fn condition(nodes: &Api<Node>, node: &str, type_: &str) -> Option<NodeCondition> {
    let node = nodes.get(node).await.ok()?;
    node.status?.conditions?.into_iter().find(|c| c.type_ == type_)
}
