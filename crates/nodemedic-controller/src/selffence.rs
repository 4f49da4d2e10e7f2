//! The node agents' self-fencing promises (issue 11 §2), read from their Leases for the nodes in
//! remediation: the engine counts a self-fencing node as fenced only from its promise and its last
//! contact (`nodemedic_core::selffence::self_fenced`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use nodemedic_core::selffence::{SelfFencingObservation, lease_name};
use nodemedic_k8s::NodeRemediation;

/// Where the agents renew their Leases unless configured otherwise (the agent's `lease_namespace`).
pub const DEFAULT_AGENT_LEASE_NAMESPACE: &str = "nodemedic";

/// The promise of every node with a remediation in flight whose agent publishes one. A Lease that
/// cannot be read gives no promise: nothing is taken for fenced on data that could not be read.
pub async fn promises(
    client: &Client,
    namespace: &str,
    recs: &BTreeMap<String, NodeRemediation>,
) -> HashMap<String, SelfFencingObservation> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut found = HashMap::new();
    let active = recs.iter().filter(|(_, r)| r.status.as_ref().is_some_and(|s| s.record.active.is_some()));
    for (node, _) in active {
        match tokio::time::timeout(std::time::Duration::from_secs(10), leases.get_opt(&lease_name(node))).await {
            Ok(Ok(Some(lease))) => {
                if let Some(sf) = nodemedic_k8s::self_fencing(&lease) {
                    found.insert(node.clone(), sf);
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::warn!(%node, %error, "reading the agent's self-fencing Lease"),
            Err(_) => tracing::warn!(%node, "reading the agent's self-fencing Lease timed out"),
        }
    }
    found
}
