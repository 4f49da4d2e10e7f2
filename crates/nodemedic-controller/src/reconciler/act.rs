//! The write side of a pass: records first, then the actions (executors, taints), and work in flight
//! resumed after a failover.

use super::*;

impl Reconciler<'_> {
    /// Records first: nothing is executed that is not recorded. A record that exists with this
    /// spec only gets its status written (one request, not two).
    pub(super) async fn persist(
        &self,
        policy_name: &str,
        decision: &Decision,
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        self.persist_records(policy_name, &decision.record_changes, recs).await
    }

    pub(super) async fn persist_records(
        &self,
        policy_name: &str,
        changes: &[RecordChange],
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        let api: Api<NodeRemediation> = Api::all(self.client.clone());
        let ssa = PatchParams::apply(FIELD_MANAGER).force();
        for change in changes {
            match change {
                RecordChange::Upsert(record) => {
                    let spec = NodeRemediationSpec { node: record.node.clone(), policy: policy_name.to_string() };
                    if recs.get(&record.node).is_none_or(|r| r.spec != spec) {
                        let written = api.patch(&record.node, &ssa, &Patch::Apply(&NodeRemediation::new(&record.node, spec))).await?;
                        if let Some(cache) = self.records {
                            cache.wrote(written);
                        }
                    }
                    // Server-side apply of the whole record: fields the engine dropped are removed,
                    // fields others own (the executor's report, a person's request) are kept.
                    let status = serde_json::json!({
                        "apiVersion": "nodemedic.io/v1alpha1",
                        "kind": "NodeRemediation",
                        "metadata": {"name": record.node},
                        "status": NodeRemediationStatus { record: record.clone(), ..Default::default() },
                    });
                    let written = api.patch_status(&record.node, &ssa, &Patch::Apply(&status)).await?;
                    if let Some(cache) = self.records {
                        cache.wrote(written);
                    }
                }
                RecordChange::Delete(node) => {
                    match api.delete(node, &DeleteParams::default()).await {
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                        Ok(_) => {}
                    }
                    if let Some(cache) = self.records {
                        cache.deleted(node);
                    }
                }
            }
        }
        Ok(())
    }

    /// Carries out every action, even after one failed (a node whose taint patch failed must not
    /// keep another node's reboot from being handed over); the first error is returned.
    pub(super) async fn act(&self, policy_name: &str, decision: &Decision, nodes: &[Arc<Node>]) -> Result<(), ControllerError> {
        let tainted: HashSet<&str> = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::SetTaints { node, .. } | Action::SetOutOfService { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        let cached: HashMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref().filter(|name| tainted.contains(name)).map(|name| (name, n.as_ref())))
            .collect();
        let mut first_error = None;
        for action in &decision.actions {
            let result = match action {
                Action::SetTaints { node, add, remove, reason } => {
                    tracing::info!(node = %node, add = ?add, remove = ?remove, reason = %reason, "setting taints");
                    self.set_taints(node, add, remove, cached.get(node.as_str()).copied()).await
                }
                Action::Execute { node, step, attempt, deadline, reason, template } => {
                    tracing::info!(node = %node, step = %step, attempt, reason = %reason, "executing step");
                    let request = StepRequest {
                        node: node.clone(),
                        step: *step,
                        attempt: *attempt,
                        deadline: *deadline,
                        reason: reason.clone(),
                        template: template.clone(),
                    };
                    self.executor.execute(&request).await.map_err(|message| {
                        if let Some(m) = self.metrics {
                            m.executor_error(policy_name, &step.to_string());
                        }
                        ControllerError::Executor { node: node.clone(), step: *step, attempt: *attempt, message }
                    })
                }
                Action::Notify { node, notice } => {
                    tracing::warn!(node = %node, notice = ?notice, "notification due");
                    Ok(())
                }
                Action::SetOutOfService { node, present, reason } => {
                    tracing::warn!(node = %node, present, reason = %reason, "out-of-service taint");
                    let (add, remove) =
                        if *present { (vec![out_of_service_taint()], vec![]) } else { (vec![], vec![OUT_OF_SERVICE_TAINT.to_string()]) };
                    self.patch_taints(node, &add, &remove, cached.get(node.as_str()).copied()).await
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "action failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Hands every step the records show in flight without a report (and not just started by this
    /// pass) back to its executor, which resumes it or reads its outcome back: the process that
    /// started it may have been the previous leader. Executors make this idempotent.
    pub(super) async fn resume_in_flight(
        &self,
        policy: &nodemedic_core::Policy,
        decision: &Decision,
        after: &Records,
        recs: &BTreeMap<String, NodeRemediation>,
    ) {
        for record in after.nodes.values() {
            let report = recs.get(&record.node).and_then(|r| r.status.as_ref()).and_then(|s| s.step_report.as_ref());
            let Some(step) = step_to_resume(record, report) else { continue };
            let just_started = decision.actions.iter().any(|a| matches!(a, Action::Execute { node, .. } if *node == step.node));
            if just_started {
                continue;
            }
            // The template of the rung the record names (recorded before it was executed).
            let template = record
                .active
                .as_ref()
                .and_then(|a| policy.ladder.get(a.step_index).filter(|ls| ls.step == a.step))
                .and_then(|ls| ls.template.clone());
            let request = StepRequest {
                node: step.node,
                step: step.step,
                attempt: step.attempt,
                deadline: step.deadline,
                reason: step.reason,
                template,
            };
            if let Err(message) = self.executor.resume(&request).await {
                tracing::error!(node = %request.node, step = %request.step, attempt = request.attempt, error = %message, "resuming the step failed; tried again next pass");
            }
        }
    }

    /// Read-modify-write of the node's taints with a resourceVersion precondition, so taints others
    /// set meanwhile (the node lifecycle controller's, a person's) are never lost. The first try
    /// starts from the watch cache's copy (no GET); a stale copy is refused (409) and read again.
    async fn set_taints(&self, node: &str, add: &[String], remove: &[String], cached: Option<&Node>) -> Result<(), ControllerError> {
        let add: Vec<K8sTaint> =
            add.iter().map(|key| K8sTaint { key: key.clone(), effect: "NoSchedule".into(), value: None, time_added: None }).collect();
        self.patch_taints(node, &add, remove, cached).await
    }

    /// Adds `add` (where no taint has its key) and removes the keys in `remove`, keeping every other taint.
    async fn patch_taints(&self, node: &str, add: &[K8sTaint], remove: &[String], cached: Option<&Node>) -> Result<(), ControllerError> {
        let api: Api<Node> = Api::all(self.client.clone());
        const ATTEMPTS: u32 = 5;
        let mut cached = cached.filter(|n| n.resource_version().is_some()).cloned();
        for _ in 0..ATTEMPTS {
            let current = match cached.take() {
                Some(n) => n,
                None => api.get(node).await?,
            };
            let mut taints: Vec<K8sTaint> = current.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            taints.retain(|t| !remove.contains(&t.key));
            for taint in add {
                if !taints.iter().any(|t| t.key == taint.key) {
                    taints.push(taint.clone());
                }
            }
            let patch = serde_json::json!({"metadata": {"resourceVersion": current.resource_version()}, "spec": {"taints": taints}});
            match api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::TaintConflict { node: node.to_string(), attempts: ATTEMPTS })
    }
}

/// `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`, which kube-controller-manager reads as
/// "this node is shut down": it force-deletes the node's terminating pods and detaches their volumes.
fn out_of_service_taint() -> K8sTaint {
    K8sTaint { key: OUT_OF_SERVICE_TAINT.into(), value: Some(OUT_OF_SERVICE_VALUE.into()), effect: "NoExecute".into(), time_added: None }
}
