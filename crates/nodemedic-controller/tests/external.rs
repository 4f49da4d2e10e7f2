//! The `external` ladder step against a real API server (issue 11 §4): the medik8s remediators'
//! CRDs with their exact group, version and kind (minimal: any spec, a status subresource), the
//! test playing the remediator by setting the CR's status conditions, and the controller's
//! reconciler deciding, recording and executing as `nodemedic controller` does.

mod common;

use common::reconcile_until;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use nodemedic_controller::executors::{ExecutorsConfig, StepRouter};
use nodemedic_controller::external::{ATTEMPT_ANNOTATION, MANAGED_BY_LABEL, TIMED_OUT_ANNOTATION};
use nodemedic_controller::{Executor, Reconciler, install_crds, now};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::time::Duration;

const NS: &str = "medik8s";

/// (group, kind) of the three medik8s remediators; every one is served at v1alpha1.
const REMEDIATORS: [(&str, &str); 3] = [
    ("self-node-remediation.medik8s.io", "SelfNodeRemediation"),
    ("fence-agents-remediation.medik8s.io", "FenceAgentsRemediation"),
    ("machine-deletion-remediation.medik8s.io", "MachineDeletionRemediation"),
];

fn resource(group: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1alpha1", kind))
}

fn snr() -> ApiResource {
    resource(REMEDIATORS[0].0, REMEDIATORS[0].1)
}

fn far() -> ApiResource {
    resource(REMEDIATORS[1].0, REMEDIATORS[1].1)
}

fn mdr() -> ApiResource {
    resource(REMEDIATORS[2].0, REMEDIATORS[2].1)
}

/// The remediator's CRDs (the remediation and its template), minimal: any fields, a status subresource.
async fn remediator_crds(cp: &ControlPlane) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    for (group, kind) in REMEDIATORS {
        for kind in [kind.to_string(), format!("{kind}Template")] {
            let plural = format!("{}s", kind.to_lowercase());
            let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{plural}.{group}")},
                "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
                    "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
            }))?;
            crds.create(&PostParams::default(), &crd).await?;
            let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), NS, &resource(group, &kind));
            wait_for(Duration::from_secs(30), &format!("{kind} to be served"), || async {
                api.list(&ListParams::default()).await.ok().map(|_| ())
            })
            .await?;
        }
    }
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// A template as the remediator's operator installs it: `spec.template.spec` is what each CR gets.
async fn template(cp: &ControlPlane, group: &str, kind: &str, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let ar = resource(group, &format!("{kind}Template"));
    let mut t = DynamicObject::new(name, &ar).within(NS);
    t.data = serde_json::json!({"spec": {"template": {"spec": spec}}});
    Api::<DynamicObject>::namespaced_with(cp.client(), NS, &ar).create(&PostParams::default(), &t).await?;
    Ok(())
}

async fn policy(cp: &ControlPlane, yaml: &str) -> anyhow::Result<()> {
    let spec = NodeHealthPolicySpec { policy: Policy::from_yaml(yaml)? };
    Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", spec)).await?;
    Ok(())
}

fn router(cp: &ControlPlane) -> anyhow::Result<StepRouter> {
    let config: ExecutorsConfig = serde_saphyr::from_str("external: {pollInterval: 200ms}")?;
    Ok(StepRouter::from_config(cp.client(), &config)?)
}

/// SNR first (timeout `snr_timeout`), then FAR, then MDR, then a person.
fn ladder(snr_timeout: &str, snr_template: &str) -> String {
    format!(
        r#"
rules:
- name: gpu
  condition: {{type: GPUProblem, status: "True"}}
ladder:
- step: external
  timeout: {snr_timeout}
  verifyTimeout: 1m
  template: {{apiVersion: self-node-remediation.medik8s.io/v1alpha1, kind: SelfNodeRemediationTemplate, name: {snr_template}, namespace: {NS}}}
- step: external
  timeout: 1m
  template: {{apiVersion: fence-agents-remediation.medik8s.io/v1alpha1, kind: FenceAgentsRemediationTemplate, name: fence-ipmilan, namespace: {NS}}}
- step: external
  timeout: 1m
  template: {{apiVersion: machine-deletion-remediation.medik8s.io/v1alpha1, kind: MachineDeletionRemediationTemplate, name: delete-machine, namespace: {NS}}}
- {{step: manual}}
monitorOnly: false
"#
    )
}

async fn cr(cp: &ControlPlane, ar: ApiResource, node: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(cp.client(), NS, &ar).get_opt(node).await.ok().flatten()
}

/// The test as the remediator: sets the CR's status conditions.
async fn remediator_says(cp: &ControlPlane, ar: &ApiResource, node: &str, conditions: serde_json::Value) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), NS, ar);
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": {"conditions": conditions}}))).await?;
    Ok(())
}

fn condition(type_: &str, status: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {status}"),
        "lastTransitionTime": jiff::Timestamp::now().to_string()})
}

async fn record(cp: &ControlPlane, node: &str) -> Option<nodemedic_core::NodeRecord> {
    Some(Api::<NodeRemediation>::all(cp.client()).get(node).await.ok()?.status?.record)
}

async fn standard_cluster(cp: &ControlPlane, nodes: usize) -> anyhow::Result<()> {
    install_crds(&cp.client()).await?;
    remediator_crds(cp).await?;
    cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), nodes).await?;
    template(cp, REMEDIATORS[0].0, REMEDIATORS[0].1, "automatic", serde_json::json!({"remediationStrategy": "Automatic"})).await?;
    template(
        cp,
        REMEDIATORS[1].0,
        REMEDIATORS[1].1,
        "fence-ipmilan",
        serde_json::json!({"agent": "fence_ipmilan", "sharedparameters": {"--lanplus": ""}}),
    )
    .await?;
    template(cp, REMEDIATORS[2].0, REMEDIATORS[2].1, "delete-machine", serde_json::json!({})).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remediation_cr_is_made_from_the_template_and_deleted_once_the_remediator_succeeded_and_the_node_is_healthy() -> anyhow::Result<()>
{
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        standard_cluster(cp, 2).await?;
        policy(cp, &ladder("1m", "automatic")).await?;
        let executor = router(cp)?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let made = reconcile_until(cp, &executor, "the SelfNodeRemediation for gpu-000", || cr(cp, snr(), "gpu-000")).await?;
        assert_eq!(made.data["spec"], serde_json::json!({"remediationStrategy": "Automatic"}), "spec.template.spec copied");
        assert_eq!(made.namespace().as_deref(), Some(NS));
        let owner = made.owner_references().first().cloned();
        let record_uid = Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await?.uid();
        assert_eq!(
            owner.as_ref().map(|o| (o.kind.as_str(), o.name.as_str(), Some(o.uid.clone()))),
            Some(("NodeRemediation", "gpu-000", record_uid))
        );
        assert_eq!(owner.and_then(|o| o.controller), Some(false));
        assert_eq!(made.labels().get(MANAGED_BY_LABEL).map(String::as_str), Some("nodemedic"));
        assert_eq!(made.annotations().get(ATTEMPT_ANNOTATION).map(String::as_str), Some("1"));
        assert!(cr(cp, snr(), "gpu-001").await.is_none(), "only the unhealthy node is remediated");

        // The remediator works, then succeeds; the node comes back healthy.
        remediator_says(cp, &snr(), "gpu-000", serde_json::json!([condition("Processing", "True", "RemediationStarted")])).await?;
        for _ in 0..3 {
            Reconciler::new(cp.client(), &executor).reconcile("gpu-workers", now()).await?;
        }
        assert!(record(cp, "gpu-000").await.and_then(|r| r.active).is_some_and(|a| a.step == RemediationStep::External));
        remediator_says(
            cp,
            &snr(),
            "gpu-000",
            serde_json::json!([
                condition("Processing", "False", "RemediationFinished"),
                condition("Succeeded", "True", "RemediationFinished")
            ]),
        )
        .await?;
        let report = wait_for(Duration::from_secs(30), "the executor's report", || async {
            Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await.ok()?.status?.step_report
        })
        .await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{}", report.message);
        assert!(report.message.contains("SelfNodeRemediation medik8s/gpu-000: Succeeded=True"), "{}", report.message);
        assert!(cr(cp, snr(), "gpu-000").await.is_some(), "kept while the node is not yet healthy");
        cp.set_node_condition("gpu-000", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        reconcile_until(cp, &executor, "the SelfNodeRemediation to be deleted", || async {
            cr(cp, snr(), "gpu-000").await.is_none().then_some(())
        })
        .await?;
        let rec = record(cp, "gpu-000").await.unwrap_or_default();
        assert_eq!(rec.phase, Phase::Healthy);
        assert_eq!(rec.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::External, StepOutcome::Recovered)));
        assert!(cr(cp, far(), "gpu-000").await.is_none(), "the next rung never ran");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remediator_that_fails_or_never_answers_moves_the_ladder_to_the_next_rung() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        standard_cluster(cp, 2).await?;
        policy(cp, &ladder("5s", "automatic")).await?;
        let executor = router(cp)?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 48").await?;
        reconcile_until(cp, &executor, "both SelfNodeRemediations", || async {
            (cr(cp, snr(), "gpu-000").await.is_some() && cr(cp, snr(), "gpu-001").await.is_some()).then_some(())
        })
        .await?;
        // gpu-000's remediator gives up; gpu-001's never answers.
        remediator_says(cp, &snr(), "gpu-000", serde_json::json!([condition("Succeeded", "False", "RemediationFailed")])).await?;
        let far_000 = reconcile_until(cp, &executor, "gpu-000's FenceAgentsRemediation", || cr(cp, far(), "gpu-000")).await?;
        assert_eq!(far_000.data["spec"]["agent"], "fence_ipmilan");
        assert_eq!(far_000.annotations().get(ATTEMPT_ANNOTATION).map(String::as_str), Some("2"));
        let rec = record(cp, "gpu-000").await.unwrap_or_default();
        let failed = rec.history.iter().find(|h| h.step == RemediationStep::External).map(|h| (h.outcome, h.reason.clone()));
        assert!(
            failed.as_ref().is_some_and(|(o, m)| *o == StepOutcome::Failed && m.contains("Succeeded=False (RemediationFailed")),
            "{failed:?}"
        );
        // FAR cannot fence it either: the last automated rung, Machine Deletion Remediation.
        remediator_says(cp, &far(), "gpu-000", serde_json::json!([condition("Succeeded", "False", "FenceAgentFailed")])).await?;
        let mdr_000 = reconcile_until(cp, &executor, "gpu-000's MachineDeletionRemediation", || cr(cp, mdr(), "gpu-000")).await?;
        assert_eq!(
            (mdr_000.data["spec"].clone(), mdr_000.annotations().get(ATTEMPT_ANNOTATION).cloned()),
            (serde_json::json!({}), Some("3".into()))
        );

        reconcile_until(cp, &executor, "gpu-001's FenceAgentsRemediation after the timeout", || cr(cp, far(), "gpu-001")).await?;
        let rec = record(cp, "gpu-001").await.unwrap_or_default();
        // The engine times the step out at its deadline; the executor, watching the same deadline,
        // may report first that the remediator did not answer by then. Either way the rung is over.
        let ended = rec.history.iter().find(|h| h.step == RemediationStep::External).map(|h| (h.outcome, h.reason.clone()));
        assert!(
            ended.as_ref().is_some_and(|(o, r)| *o == StepOutcome::TimedOut
                || (*o == StepOutcome::Failed && r.contains("did not report Succeeded before the step's deadline"))),
            "{ended:?}"
        );
        let marked = wait_for(Duration::from_secs(10), "the timed-out annotation on gpu-001's SelfNodeRemediation", || async {
            cr(cp, snr(), "gpu-001").await.filter(|c| c.annotations().contains_key(TIMED_OUT_ANNOTATION))
        })
        .await;
        assert!(marked.is_ok(), "the remediator is told to stop, as NodeHealthCheck does");
        assert!(cr(cp, snr(), "gpu-000").await.is_some(), "earlier rungs' CRs stay until the node is healthy");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_adopts_the_remediation_cr_and_two_replicas_never_create_a_second_one() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        standard_cluster(cp, 1).await?;
        policy(cp, &ladder("1m", "automatic")).await?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let first_leader = router(cp)?;
        let made = reconcile_until(cp, &first_leader, "the SelfNodeRemediation", || cr(cp, snr(), "gpu-000")).await?;
        // The leader dies (its background work with it); a replica with nothing in memory takes over.
        drop(first_leader);
        let second_leader = router(cp)?;
        let third = router(cp)?;
        for _ in 0..5 {
            Reconciler::new(cp.client(), &second_leader).reconcile("gpu-workers", now()).await?;
            // A stale replica asked to run the same attempt at the same time.
            let request = nodemedic_controller::StepRequest {
                node: "gpu-000".into(),
                step: RemediationStep::External,
                attempt: 1,
                deadline: None,
                reason: "Xid 79".into(),
                template: Policy::from_yaml(&ladder("1m", "automatic"))?.ladder[0].template.clone(),
            };
            third.execute(&request).await.map_err(anyhow::Error::msg)?;
        }
        let all = Api::<DynamicObject>::namespaced_with(cp.client(), NS, &snr()).list(&ListParams::default()).await?;
        assert_eq!(all.items.len(), 1, "one CR for the node");
        assert_eq!(all.items[0].uid(), made.uid(), "the same CR, adopted, not recreated");
        remediator_says(cp, &snr(), "gpu-000", serde_json::json!([condition("Succeeded", "True", "RemediationFinished")])).await?;
        let report = wait_for(Duration::from_secs(30), "the new leader's report", || async {
            Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await.ok()?.status?.step_report
        })
        .await?;
        assert_eq!((report.attempt, report.outcome), (1, ReportedOutcome::Succeeded), "{}", report.message);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_template_invalidates_the_policy_at_load_and_fails_a_step_naming_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        standard_cluster(cp, 1).await?;
        policy(cp, &ladder("1m", "late-template")).await?;
        let executor = router(cp)?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());

        // Known at load: the template does not exist. Valid=False naming the rung and the template.
        let err = Reconciler::new(cp.client(), &executor).reconcile("gpu-workers", now()).await.err();
        assert_eq!(err.map(|e| e.metric_label()), Some("invalid_policy"));
        let status = policies.get("gpu-workers").await?.status.unwrap_or_default();
        let valid = status.conditions.iter().find(|c| c.type_ == "Valid").cloned();
        assert!(
            valid.as_ref().is_some_and(|c| c.status == "False"
                && c.reason == "TemplateNotFound"
                && c.message.contains("ladder[0].template: the remediation template SelfNodeRemediationTemplate medik8s/late-template")
                && c.message.contains("does not exist")),
            "{valid:?}"
        );
        assert!(record(cp, "gpu-000").await.is_none() && cr(cp, snr(), "gpu-000").await.is_none(), "nothing acted on");
        // The remediator's template appears: the policy is valid and the step runs.
        template(cp, REMEDIATORS[0].0, REMEDIATORS[0].1, "late-template", serde_json::json!({"remediationStrategy": "Automatic"})).await?;
        reconcile_until(cp, &executor, "the SelfNodeRemediation", || cr(cp, snr(), "gpu-000")).await?;

        // Not known at load: a template gone by the time a step runs fails that step, naming it.
        let gone = nodemedic_core::policy::ExternalTemplate {
            api_version: "fence-agents-remediation.medik8s.io/v1alpha1".into(),
            kind: "FenceAgentsRemediationTemplate".into(),
            name: "gone".into(),
            namespace: NS.into(),
        };
        let request = nodemedic_controller::StepRequest {
            node: "gpu-000".into(),
            step: RemediationStep::External,
            attempt: 7,
            deadline: None,
            reason: "Xid 79".into(),
            template: Some(gone),
        };
        // Another replica's executor, kept alive while it works (its work dies with it).
        let other = router(cp)?;
        other.execute(&request).await.map_err(anyhow::Error::msg)?;
        let report = wait_for(Duration::from_secs(30), "the report of attempt 7", || async {
            Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await.ok()?.status?.step_report.filter(|r| r.attempt == 7)
        })
        .await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed);
        assert!(
            report.message.contains("the remediation template FenceAgentsRemediationTemplate medik8s/gone")
                && report.message.contains("does not exist"),
            "{}",
            report.message
        );
        assert!(cr(cp, far(), "gpu-000").await.is_none());

        // The API server refuses an external step without a template (CEL); the controller refuses
        // one whose template is incomplete, naming the field, and acts on nothing.
        let bare = Policy::from_yaml(&ladder("1m", "automatic"))?;
        let mut no_template = bare.clone();
        no_template.ladder[0].template = None;
        let refused = policies
            .create(&PostParams::default(), &NodeHealthPolicy::new("no-template", NodeHealthPolicySpec { policy: no_template }))
            .await;
        assert!(matches!(&refused, Err(kube::Error::Api(s)) if s.message.contains("an external step needs a template")), "{refused:?}");
        let mut bad_kind = bare;
        if let Some(t) = bad_kind.ladder[0].template.as_mut() {
            t.kind = "SelfNodeRemediation".into();
        }
        policies.create(&PostParams::default(), &NodeHealthPolicy::new("bad-kind", NodeHealthPolicySpec { policy: bad_kind })).await?;
        let err = Reconciler::new(cp.client(), &executor).reconcile("bad-kind", now()).await.err();
        assert_eq!(err.map(|e| e.metric_label()), Some("invalid_policy"));
        let status = policies.get("bad-kind").await?.status.unwrap_or_default();
        let valid = status.conditions.iter().find(|c| c.type_ == "Valid").cloned();
        assert!(valid.as_ref().is_some_and(|c| c.status == "False" && c.message.contains("ladder[0].template.kind")), "{valid:?}");
        Ok(())
    })
    .await
}

/// A client authenticated as `deploy/controller.yaml`'s service account: its RBAC and nothing more.
async fn controller_service_account(cp: &ControlPlane, dir: &std::path::Path) -> anyhow::Result<kube::Client> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/controller.yaml");
    let out = cp.kubectl(&["apply", "--server-side", "-f", manifest])?;
    anyhow::ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&["create", "token", "nodemedic-controller", "-n", "nodemedic"])?;
    anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
    let path = dir.join("sa.kubeconfig");
    cp.write_kubeconfig_with_token(String::from_utf8_lossy(&out.stdout).trim(), &path)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_manifests_rbac_is_enough_for_an_external_remediation_and_no_more_than_the_medik8s_groups() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        standard_cluster(cp, 1).await?;
        policy(cp, &ladder("1m", "automatic")).await?;
        let dir = tempfile::tempdir()?;
        let sa = controller_service_account(cp, dir.path()).await?;
        let config: ExecutorsConfig = serde_saphyr::from_str("external: {pollInterval: 200ms}")?;
        let executor = StepRouter::from_config(sa.clone(), &config)?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let started = std::time::Instant::now();
        while cr(cp, snr(), "gpu-000").await.is_none() {
            Reconciler::new(sa.clone(), &executor).reconcile("gpu-workers", now()).await?;
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no SelfNodeRemediation made as the service account");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        remediator_says(cp, &snr(), "gpu-000", serde_json::json!([condition("Succeeded", "True", "RemediationFinished")])).await?;
        let report = wait_for(Duration::from_secs(30), "the report, written as the service account", || async {
            Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await.ok()?.status?.step_report
        })
        .await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{}", report.message);
        cp.set_node_condition("gpu-000", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        let started = std::time::Instant::now();
        while cr(cp, snr(), "gpu-000").await.is_some() {
            Reconciler::new(sa.clone(), &executor).reconcile("gpu-workers", now()).await?;
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the SelfNodeRemediation was not deleted as the service account");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Scoped: another group's remediation kind is out of reach.
        let other = resource("example.com", "OtherRemediation");
        let denied = Api::<DynamicObject>::namespaced_with(sa, NS, &other).list(&ListParams::default()).await;
        assert!(matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403), "{denied:?}");
        Ok(())
    })
    .await
}
