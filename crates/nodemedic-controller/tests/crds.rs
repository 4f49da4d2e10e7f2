//! The CRDs on a real kube-apiserver: installed by the controller's `install_crds`, valid policies accepted, invalid ones refused by
//! the schema or CEL with a message naming the problem, status through the subresource, and the
//! printer columns `kubectl get` shows.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use nodemedic_controller::install_crds;
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, probe};
use nodemedic_core::{Duration, presets};
use nodemedic_k8s::{
    NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, NodeRemediationSpec, NodeRemediationStatus, policy_crd, remediation_crd,
};
use nodemedic_testenv::{ControlPlane, Options};

fn policy_api(cp: &ControlPlane) -> Api<DynamicObject> {
    Api::all_with(cp.client(), &ApiResource::erase::<NodeHealthPolicy>(&()))
}

async fn create_raw(cp: &ControlPlane, name: &str, spec: serde_json::Value) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeHealthPolicy", "metadata": {"name": name}, "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    policy_api(cp).create(&PostParams::default(), &obj).await
}

fn minimal() -> serde_json::Value {
    serde_json::json!({
        "rules": [{"name": "ready", "condition": {"type": "Ready", "status": "False"}, "duration": "5m"}],
        "ladder": [{"step": "reboot"}],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_presets_are_accepted_and_read_back_unchanged() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        let api: Api<NodeHealthPolicy> = Api::all(cp.client());
        for (name, policy) in presets::all() {
            let obj = NodeHealthPolicy::new(name, NodeHealthPolicySpec { policy: policy.clone() });
            api.create(&PostParams::default(), &obj).await?;
            let back = api.get(name).await?;
            assert_eq!(back.spec.policy, policy, "{name} survives the API server");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_are_refused_with_a_message_naming_the_problem() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        create_raw(cp, "minimal", minimal()).await?;
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("unknown-step", serde_json::json!({"rules": minimal()["rules"], "ladder": [{"step": "rebot"}]}), "spec.ladder[0].step"),
            ("min-healthy-over-100", { let mut s = minimal(); s["gates"] = serde_json::json!({"minHealthy": "120%"}); s }, "spec.gates.minHealthy"),
            ("both-gates", { let mut s = minimal(); s["gates"] = serde_json::json!({"minHealthy": 2, "maxUnhealthy": "10%"}); s }, "set gates.minHealthy or gates.maxUnhealthy, not both"),
            ("negative-duration", { let mut s = minimal(); s["rules"][0]["duration"] = "-5m".into(); s }, "spec.rules[0].duration"),
            ("empty-ladder", serde_json::json!({"rules": minimal()["rules"], "ladder": []}), "the remediation ladder needs at least one step"),
            ("manual-not-last", serde_json::json!({"rules": minimal()["rules"], "ladder": [{"step": "manual"}, {"step": "reboot"}]}), "manual must be the last step"),
            ("two-sources", serde_json::json!({"rules": [{"name": "r", "condition": {"type": "Ready", "status": "False"}, "check": {"name": "gpu"}}], "ladder": [{"step": "reboot"}]}), "exactly one of condition, gpuCount, check"),
            ("breaker-over-100", { let mut s = minimal(); s["gates"] = serde_json::json!({"circuitBreaker": {"maxUnhealthy": "101%", "window": "10m", "cooldown": "30m"}}); s }, "gates.circuitBreaker.maxUnhealthy must be a count or a percentage of at most 100%"),
            ("bad-status", serde_json::json!({"rules": [{"name": "r", "condition": {"type": "Ready", "status": "Maybe"}}], "ladder": [{"step": "reboot"}]}), "spec.rules[0].condition.status"),
        ];
        for (name, spec, expected) in cases {
            let err = create_raw(cp, name, spec).await.expect_err(name);
            let kube::Error::Api(status) = &err else { panic!("{name}: {err}") };
            assert_eq!(status.code, 422, "{name}: {err}");
            assert!(status.message.contains(expected), "{name}: expected the message to name `{expected}`: {}", status.message);
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_remediation_records_its_status_and_kubectl_tells_the_story() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        // A real record from the engine: three GPU failures, reboot in flight.
        let mut p = presets::seed000();
        p.monitor_only = false;
        let mut h = Harness::new(p.clone(), vec![gpu_node("gpu-7", "a", 8, EPOCH)]);
        for _ in 0..3 {
            let now = h.now;
            probe(h.node("gpu-7"), "gpu", false, now);
            h.decide();
            h.advance(Duration::from_secs(30));
        }
        let record = h.records.nodes["gpu-7"].clone();
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());
        policies.create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: p })).await?;
        let api: Api<NodeRemediation> = Api::all(cp.client());
        api.create(
            &PostParams::default(),
            &NodeRemediation::new("gpu-7", NodeRemediationSpec { node: "gpu-7".into(), policy: "gpu-workers".into() }),
        )
        .await?;
        let status = NodeRemediationStatus { record: record.clone(), ..Default::default() };
        api.patch_status("gpu-7", &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
        let back = api.get("gpu-7").await?;
        assert_eq!(back.status.map(|s| s.record), Some(record), "the record survives the API server exactly");

        let out = cp.kubectl(&["get", "noderemediations"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "NODE", "POLICY", "PHASE", "STEP", "ATTEMPT", "AGE"], "{text}");
        let row: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(&row[..6], ["gpu-7", "gpu-7", "gpu-workers", "Remediating", "reboot", "1"], "{text}");
        let out = cp.kubectl(&["get", "nhp"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().next().is_some_and(|l| l.contains("MONITOR-ONLY") && l.contains("REMEDIATING")), "{text}");
        Ok(())
    })
    .await
}

#[test]
fn the_crds_name_the_group_scope_and_subresources() {
    for crd in [policy_crd(), remediation_crd()] {
        assert_eq!(crd.spec.group, "nodemedic.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert!(crd.spec.versions[0].subresources.as_ref().is_some_and(|s| s.status.is_some()));
    }
    let yaml = nodemedic_k8s::crds_yaml().expect("render");
    assert!(yaml.contains("x-kubernetes-validations") && yaml.contains("x-kubernetes-int-or-string"));
}
