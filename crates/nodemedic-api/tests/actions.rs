//! `POST /actions` against a real control plane (auth off, as `--insecure-no-auth` serves it):
//! every action type, dry run, the expected-node-counts preflight, the JSON errors naming their
//! field, the action record, `GET /nodes`, `/openapi.json`, and a standby replica's 503, and a repair that fails.

mod common;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use nodemedic_api::{ApiConfig, LeaderLease};
use nodemedic_testenv::{ControlPlane, FakeNode, Options};
use serde_json::json;

/// Pool `slice-a`: three nodes of a 2x2x3 TPU slice with 4 chips each (12 chips: 3 nodes, complete).
/// Pool `slice-b`: two nodes of the same topology (one missing). Pool `spare`: one node.
async fn fleet(cp: &ControlPlane) -> anyhow::Result<()> {
    for (pool, n) in [("slice-a", 3), ("slice-b", 2)] {
        let mut node = FakeNode::cpu(pool, pool);
        node.labels.insert(TOPOLOGY.into(), "2x2x3".into());
        node.labels.insert(CHIPS.into(), "4".into());
        cp.create_nodes(&node, n).await?;
    }
    cp.create_nodes(&FakeNode::cpu("spare", "spare"), 1).await?;
    Ok(())
}

fn request(type_: &str, pool: &str) -> serde_json::Value {
    json!({"requestor": "alice@example.com", "type": type_, "node_pool": pool, "reason": "ICI link errors on the slice"})
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.into(), value);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_type_does_what_seed_002_says_and_tells_it_in_events() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        nodemedic_controller::install_crds(&cp.client()).await?;
        install_jobset_crd(cp).await?;
        fleet(cp).await?;
        create_jobset(cp, "default", "trainer", "slice-b-000", "slice-b-001").await?;
        let api = serve(cp, no_auth(), None).await?;

        // A dry run checks and tells, and changes nothing.
        let (status, body) = api.post(&with(request("cordon_nodepool", "slice-a"), "dry_run", json!(true))).await?;
        assert_eq!(status, 200, "{body}");
        let id = body["id"].as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty() && body.get("error").is_none(), "{body}");
        assert!(!unschedulable(cp, "slice-a-000").await?, "a dry run cordons nothing");
        let (_, record) = api.get(&format!("/actions/{id}")).await?;
        assert_eq!(record["state"], "DryRun");
        assert_eq!(record["steps"][0], "would cordon node slice-a-000");
        let notes = event_notes(cp, "slice-a-000", "ManualActionDryRun").await?;
        assert!(notes.iter().any(|n| n.contains("alice@example.com") && n.contains("ICI link errors")), "{notes:?}");

        // The preflight refuses a slice that is missing a node, and passes a complete one.
        let preflight = json!({"expected_node_counts": true});
        let (status, body) = api.post(&with(request("cordon_nodepool", "slice-b"), "preflight_checks", preflight.clone())).await?;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "preflight_checks.expected_node_counts");
        assert!(body["error"].as_str().unwrap_or_default().contains("needs 3"), "{body}");
        assert!(body["id"].is_string(), "the id is returned with the error: {body}");
        let (_, record) = api.get(&format!("/actions/{}", body["id"].as_str().unwrap_or_default())).await?;
        assert_eq!(record["state"], "Refused", "a refusal is recorded: {record}");
        assert!(!unschedulable(cp, "slice-b-000").await?);

        // cordon_nodepool: every node of the pool.
        let (status, body) =
            api.post(&with(with(request("cordon_nodepool", "slice-a"), "preflight_checks", preflight), "id", json!("cordon-a"))).await?;
        assert_eq!((status, body.clone()), (200, json!({"id": "cordon-a"})));
        for n in ["slice-a-000", "slice-a-001", "slice-a-002"] {
            assert!(unschedulable(cp, n).await?, "{n} cordoned");
            let notes = event_notes(cp, n, "Cordoned").await?;
            assert!(
                notes.iter().any(|t| t.contains("alice@example.com") && t.contains("ICI link errors") && t.contains("cordon-a")),
                "{notes:?}"
            );
        }
        assert!(!unschedulable(cp, "spare-000").await?, "other pools untouched");
        let (status, record) = api.get("/actions/cordon-a").await?;
        assert_eq!(status, 200);
        assert_eq!(record["state"], "Succeeded");
        assert_eq!(record["nodes"], json!(["slice-a-000", "slice-a-001", "slice-a-002"]));

        // The same id twice is a conflict.
        let (status, body) = api.post(&with(request("cordon_nodepool", "slice-a"), "id", json!("cordon-a"))).await?;
        assert_eq!((status, body["field"].clone()), (409, json!("id")));

        // cordon_nodepool_and_restart_jobset: cordon, then delete the JobSet's leader pod only.
        let restart = with(request("cordon_nodepool_and_restart_jobset", "slice-b"), "jobset_name", json!("trainer"));
        let (status, body) = api.post(&restart).await?;
        assert_eq!(status, 200, "{body}");
        assert!(unschedulable(cp, "slice-b-000").await? && unschedulable(cp, "slice-b-001").await?);
        assert!(pod_deleted(cp, "default", "trainer-workers-0-0").await?, "the leader pod is deleted");
        assert!(!pod_deleted(cp, "default", "trainer-workers-0-1").await?, "the other pod is left alone");
        let notes = event_notes(cp, "trainer", "JobSetRestarted").await?;
        assert!(notes.iter().any(|n| n.contains("trainer-workers-0-0") && n.contains("alice@example.com")), "{notes:?}");

        // A JobSet that does not exist (or has no leader pod) is a 404 naming jobset_name.
        let (status, body) = api.post(&with(restart.clone(), "jobset_name", json!("nope"))).await?;
        assert_eq!((status, body["field"].clone()), (404, json!("jobset_name")), "{body}");
        let (status, body) = api.post(&restart).await?;
        assert_eq!((status, body["field"].clone()), (404, json!("jobset_name")), "no leader pod left: {body}");

        // repair_nodepool: the test provider replaces the node (a new Node object, same name).
        let before = uid(cp, "spare-000").await?;
        let (status, body) = api.post(&request("repair_nodepool", "spare")).await?;
        assert_eq!(status, 200, "{body}");
        let after = uid(cp, "spare-000").await?;
        assert!(after.is_some() && after != before, "spare-000 was recreated");
        assert!(!unschedulable(cp, "spare-000").await?, "repair_nodepool does not cordon");
        let notes = event_notes(cp, "spare-000", "RepairRequested").await?;
        assert!(notes.iter().any(|n| n.contains("recreate-node") && n.contains("alice@example.com")), "{notes:?}");

        // cordon_and_repair_nodepool: cordon, then replace one instance.
        let before = uid(cp, "spare-000").await?;
        let (status, body) = api.post(&request("cordon_and_repair_nodepool", "spare")).await?;
        assert_eq!(status, 200, "{body}");
        assert_ne!(uid(cp, "spare-000").await?, before);
        let id = body["id"].as_str().unwrap_or_default().to_string();
        let (_, record) = api.get(&format!("/actions/{id}")).await?;
        assert_eq!(record["steps"][0], "cordoned node spare-000");
        assert!(record["steps"][1].as_str().unwrap_or_default().contains("deleted and created again"), "{record}");

        // cordon_node and repair_node act on one node.
        let one = |t: &str, node: &str| json!({"requestor": "bob", "type": t, "node_name": node, "reason": "XID 79"});
        let (status, body) = api.post(&one("cordon_node", "spare-000")).await?;
        assert_eq!(status, 200, "{body}");
        assert!(unschedulable(cp, "spare-000").await?);
        let before = uid(cp, "spare-000").await?;
        let (status, body) = api.post(&one("repair_node", "spare-000")).await?;
        assert_eq!(status, 200, "{body}");
        assert_ne!(uid(cp, "spare-000").await?, before);

        // A single node's preflight counts the node's whole pool.
        let (status, body) =
            api.post(&with(one("cordon_node", "slice-b-000"), "preflight_checks", json!({"expected_node_counts": true}))).await?;
        assert_eq!((status, body["field"].clone()), (422, json!("preflight_checks.expected_node_counts")), "{body}");

        // 404s name the field.
        let (status, body) = api.post(&request("cordon_nodepool", "no-such-pool")).await?;
        assert_eq!((status, body["field"].clone()), (404, json!("node_pool")));
        let (status, body) = api.post(&one("cordon_node", "no-such-node")).await?;
        assert_eq!((status, body["field"].clone()), (404, json!("node_name")));
        let (status, body) = api.get("/actions/never-was").await?;
        assert_eq!((status, body["field"].clone()), (404, json!("id")));

        // 400s name the field; 413 for a body over the limit.
        let (status, body) = api.post(&json!({"type": "cordon_nodepool", "node_pool": "slice-a", "reason": "x"})).await?;
        assert_eq!((status, body["field"].clone()), (400, json!("requestor")));
        let (status, body) = api.post(&request("reboot_the_world", "slice-a")).await?;
        assert_eq!((status, body["field"].clone()), (400, json!("type")));
        let (status, body) = api.post_raw(b"{\"requestor\": ".to_vec(), None).await?;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap_or_default().contains("not valid JSON"), "{body}");
        let huge = with(request("cordon_nodepool", "slice-a"), "reason", json!("x".repeat(nodemedic_api::DEFAULT_BODY_LIMIT + 1)));
        let (status, body) = api.post(&huge).await?;
        assert_eq!(status, 413, "{body}");
        assert!(body["error"].as_str().unwrap_or_default().contains("larger than"), "{body}");

        // GET /nodes sums the fleet up; /openapi.json is the document in the repository.
        let (status, nodes) = api.get("/nodes").await?;
        assert_eq!(status, 200);
        assert_eq!(nodes["total"], 6);
        assert_eq!(nodes["nodes"][0]["name"], "slice-a-000");
        assert_eq!(nodes["nodes"][0]["node_pool"], "slice-a");
        assert_eq!(nodes["nodes"][0]["unschedulable"], true);
        let (status, doc) = api.get("/openapi.json").await?;
        assert_eq!((status, doc), (200, nodemedic_api::openapi::document()));
        Ok::<_, anyhow::Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_refuses_writes_naming_the_leader_and_a_failed_repair_answers_500_with_its_record() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        cp.create_nodes(&FakeNode::cpu("n", "pool"), 1).await?;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "nodemedic-controller", "namespace": "default"},
            "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 60, "renewTime": now}}))?;
        Api::<Lease>::namespaced(cp.client(), "default").create(&PostParams::default(), &lease).await?;
        let lease_of =
            |identity: &str| LeaderLease { namespace: "default".into(), name: "nodemedic-controller".into(), identity: identity.into() };
        let standby = serve(cp, ApiConfig { leader: Some(lease_of("replica-b")), ..no_auth() }, None).await?;
        let resp = standby.http.post(format!("{}/actions", standby.url)).json(&request("cordon_nodepool", "pool")).send().await?;
        let (status, retry_after) = (resp.status().as_u16(), resp.headers().get("retry-after").cloned());
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some(), "Retry-After is set: {body}");
        assert_eq!(body["leader"], "replica-a");
        assert!(!unschedulable(cp, "n-000").await?);

        let leader = serve(cp, ApiConfig { leader: Some(lease_of("replica-a")), ..no_auth() }, None).await?;
        let (status, body) = leader.post(&request("cordon_nodepool", "pool")).await?;
        assert_eq!(status, 200, "{body}");
        assert!(unschedulable(cp, "n-000").await?);

        // A repair the cloud refuses: 500 with the id and the error; the record says how far it got.
        let broken = serve_with(cp, no_auth(), None, std::sync::Arc::new(BrokenCloud)).await?;
        let (status, body) = broken.post(&with(request("cordon_and_repair_nodepool", "pool"), "id", json!("broken-1"))).await?;
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["id"], "broken-1");
        assert!(body["error"].as_str().unwrap_or_default().contains("quota exceeded replacing n-000"), "{body}");
        let (_, record) = broken.get("/actions/broken-1").await?;
        assert_eq!(record["state"], "Failed");
        assert_eq!(record["steps"], json!(["cordoned node n-000"]));
        Ok::<_, anyhow::Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_actions_that_ended_before_the_retention_are_pruned_and_the_rest_kept() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use nodemedic_api::store::{ActionRecord, ActionState, Store};
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let store = Store::new(cp.client(), "default");
        let now = jiff::Timestamp::now();
        let days_ago = |d: i64| (now - jiff::SignedDuration::from_hours(24 * d)).to_string();
        let record = |id: &str, state: ActionState, created: i64, finished: Option<i64>| -> anyhow::Result<ActionRecord> {
            let request = serde_json::from_value(request("cordon_node", "spare"))?;
            Ok(ActionRecord {
                id: id.into(),
                state,
                request,
                user: None,
                created_at: days_ago(created),
                finished_at: finished.map(days_ago),
                nodes: vec![],
                forced_gates: vec![],
                steps: vec![],
                error: None,
            })
        };
        store.create(&record("old-done", ActionState::Succeeded, 41, Some(40))?).await?;
        store.create(&record("old-refused", ActionState::Refused, 40, Some(40))?).await?;
        store.create(&record("recent-done", ActionState::Failed, 2, Some(1))?).await?;
        store.create(&record("old-but-running", ActionState::Running, 40, None)?).await?;
        // Someone's hand-edited record that no longer parses: kept for a person to look at.
        let garbled: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "nodemedic-action-garbled", "labels": {"nodemedic.io/action-id": "garbled"}},
            "data": {"action.json": "{not json"},
        }))?;
        Api::<ConfigMap>::namespaced(cp.client(), "default").create(&PostParams::default(), &garbled).await?;

        let mut pruned = store.prune(std::time::Duration::from_secs(30 * 86_400), now).await?;
        pruned.sort();
        assert_eq!(pruned, ["old-done", "old-refused"]);
        for (id, kept) in [("old-done", false), ("old-refused", false), ("recent-done", true), ("old-but-running", true)] {
            assert_eq!(store.get(id).await?.is_some(), kept, "{id}");
        }
        assert!(Api::<ConfigMap>::namespaced(cp.client(), "default").get_opt("nodemedic-action-garbled").await?.is_some());
        // A pruned id may be used again; a kept one may not.
        store.create(&record("old-done", ActionState::Succeeded, 0, Some(0))?).await?;
        assert!(store.create(&record("recent-done", ActionState::Succeeded, 0, Some(0))?).await.is_err());
        assert!(store.prune(std::time::Duration::from_secs(30 * 86_400), now).await?.is_empty(), "nothing more to prune");
        Ok(())
    })
    .await
}
