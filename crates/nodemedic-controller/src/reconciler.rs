//! The reconciler: one pass over one policy — read the cluster, decide with the engine (through
//! the fleet cache between passes), persist, act.

mod act;

use super::*;

/// What one pass read: the Nodes, their NodeRemediations, and the self-fencing promises of the
/// nodes in remediation.
struct Observed<'a> {
    snapshot: &'a [Arc<Node>],
    recs: &'a BTreeMap<String, NodeRemediation>,
    promises: &'a HashMap<String, nodemedic_core::selffence::SelfFencingObservation>,
}

/// The engine's incremental index of each policy's fleet, kept between passes by a long-running
/// controller: a pass re-reads only the nodes whose Node or NodeRemediation changed (by
/// resourceVersion) and the engine re-evaluates only those, the nodes with records, and the nodes
/// whose verdict turns with time. The decision is the one a full pass would make (a property test
/// in nodemedic-core holds `FleetIndex` to that). Memory only: a restarted process starts empty and
/// fills it on its first pass.
#[derive(Default)]
pub struct FleetCache {
    policies: Mutex<HashMap<String, PolicyFleet>>,
}

#[derive(Default)]
struct PolicyFleet {
    index: FleetIndex,
    /// (Node resourceVersion, NodeRemediation resourceVersion) each observation was made from.
    versions: HashMap<String, (String, Option<String>)>,
}

impl FleetCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a deleted policy's fleet.
    pub fn forget(&self, policy: &str) {
        if let Ok(mut p) = self.policies.lock() {
            p.remove(policy);
        }
    }

    /// Brings the policy's index up to date with `observed` and decides over it.
    fn decide(
        &self,
        policy_name: &str,
        policy: &nodemedic_core::Policy,
        observed: Observed<'_>,
        records: &Records,
        now: Time,
    ) -> Result<Decision, ControllerError> {
        let Observed { snapshot, recs, promises } = observed;
        let mut all = self.policies.lock().map_err(|_| ControllerError::Cache("the fleet cache lock was poisoned".into()))?;
        let fleet = all.entry(policy_name.to_string()).or_default();
        let mut seen = HashSet::with_capacity(snapshot.len());
        for n in snapshot {
            let name = n.name_any();
            let rec = recs.get(&name);
            let version = n.resource_version().map(|v| (v, rec.and_then(|r| r.resource_version())));
            // A self-fencing promise renews with its Lease, not with the Node: compared here.
            let promise = promises.get(&name).copied();
            let unchanged = version.is_some()
                && fleet.versions.get(&name) == version.as_ref()
                && fleet.index.get(&name).is_some_and(|o| o.self_fencing == promise);
            if !unchanged {
                // An unreadable node fails the pass before anything is decided (never remediate
                // on data that could not be read); its version is not kept, so it is read again.
                fleet.versions.remove(&name);
                let mut obs: NodeObservation = observe_node(n, rec)?;
                obs.self_fencing = promise;
                fleet.index.upsert(obs);
                if let Some(v) = version {
                    fleet.versions.insert(name.clone(), v);
                }
            }
            seen.insert(name);
        }
        // Every indexed node was seen unless the index holds more: only then look for the deleted.
        let gone: Vec<String> = if fleet.index.len() > seen.len() {
            fleet.index.nodes().iter().map(|o| o.name.clone()).filter(|name| !seen.contains(name)).collect()
        } else {
            Vec::new()
        };
        for name in gone {
            fleet.index.remove(&name);
            fleet.versions.remove(&name);
        }
        Ok(fleet.index.decide(policy, records, now))
    }
}

/// One reconcile pass for one policy: read, decide, persist records, act, tell.
pub struct Reconciler<'e> {
    pub client: Client,
    pub executor: &'e dyn Executor,
    /// Publishes the engine's events on Nodes, records and the policy.
    pub events: Option<&'e Recorder>,
    pub metrics: Option<&'e Metrics>,
    /// Checked right before anything is written: only the lease holder writes.
    pub fence: Option<&'e Leadership>,
    /// Incremental decisions across passes; without it every pass is a full pass.
    pub fleet_cache: Option<&'e FleetCache>,
    /// When this replica could not observe the cluster, and the grace after sight returned: the
    /// deadlines of steps in flight move on by that time before anything is decided.
    pub outages: &'e [Outage],
    pub reconnect_grace: nodemedic_core::Duration,
    /// The records from the watch cache with this process's writes laid over it; without it every
    /// pass lists them from the API server.
    pub records: Option<&'e RecordCache>,
    /// The namespace of the node agents' self-fencing Leases.
    pub agent_lease_namespace: &'e str,
}

impl<'e> Reconciler<'e> {
    pub fn new(client: Client, executor: &'e dyn Executor) -> Self {
        Reconciler {
            client,
            executor,
            events: None,
            metrics: None,
            fence: None,
            fleet_cache: None,
            outages: &[],
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
            records: None,
            agent_lease_namespace: selffence::DEFAULT_AGENT_LEASE_NAMESPACE,
        }
    }

    pub fn with_fleet_cache(mut self, cache: &'e FleetCache) -> Self {
        self.fleet_cache = Some(cache);
        self
    }

    /// Reads everything from the API server, then reconciles.
    pub async fn reconcile(&self, policy_name: &str, now: Time) -> Result<Decision, ControllerError> {
        self.reconcile_with(policy_name, None, now).await
    }

    /// Reconciles with `nodes` from a watch cache when given (lean objects). The policy is always
    /// read fresh, and the records are either listed or taken from the [`RecordCache`], which lays
    /// this process's own writes over the watch: the engine must see its own last writes (the
    /// attempt counter, the breaker) or it could start the same step twice.
    pub async fn reconcile_with(&self, policy_name: &str, nodes: Option<&[Arc<Node>]>, now: Time) -> Result<Decision, ControllerError> {
        let started = std::time::Instant::now();
        let result = self.reconcile_inner(policy_name, nodes, now).await;
        if let Some(m) = self.metrics {
            m.reconcile_took(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                m.reconcile_error(e.metric_label());
            }
        }
        result
    }

    async fn reconcile_inner(&self, policy_name: &str, cached: Option<&[Arc<Node>]>, now: Time) -> Result<Decision, ControllerError> {
        let policies: Api<NodeHealthPolicy> = Api::all(self.client.clone());
        let policy = policies.get(policy_name).await?;
        let invalid = match policy.validate() {
            Err(e) => Some(("InvalidPolicy", e.to_string())),
            Ok(()) => match self.missing_executors(&policy.spec.policy) {
                Some(m) => Some(("MissingExecutor", m)),
                None => self.executor.check_policy(&policy.spec.policy).await.map(|m| ("TemplateNotFound", m)),
            },
        };
        if let Some((reason, e)) = invalid {
            // What the schema and CEL could not catch: say so on the policy and act on nothing.
            let status = NodeHealthPolicyStatus {
                observed_generation: policy.metadata.generation,
                conditions: conditions(policy.status.as_ref(), &[("Valid", false, reason, e.clone())]),
                notifications: Vec::new(),
                ..policy.status.clone().unwrap_or_default()
            };
            self.fenced().await?;
            self.write_policy_status(policy_name, &policy, status).await?;
            return Err(ControllerError::InvalidPolicy(policy_name.to_string(), e));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let remediations: Api<NodeRemediation> = Api::all(self.client.clone());
        let all_records: Vec<NodeRemediation> = match self.records {
            Some(cache) => cache.state().iter().map(|r| r.as_ref().clone()).collect(),
            None => remediations.list(&ListParams::default()).await?.items,
        };
        let recs: BTreeMap<String, NodeRemediation> =
            all_records.into_iter().filter(|r| r.spec.policy == policy_name).map(|r| (r.spec.node.clone(), r)).collect();
        let listed: Vec<Arc<Node>>;
        let snapshot = match cached {
            Some(c) => c,
            None => {
                listed = nodes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .map(|mut n| {
                        lean(&mut n);
                        Arc::new(n)
                    })
                    .collect();
                &listed
            }
        };
        let mut records = Records::default();
        for (node, r) in &recs {
            if let Some(st) = &r.status {
                records.nodes.insert(node.clone(), st.record.clone());
            }
        }
        if let Some(st) = &policy.status {
            records.policy = st.record.clone();
        }
        self.account_for_outages(policy_name, &mut records, &recs).await?;
        let promises = selffence::promises(&self.client, self.agent_lease_namespace, &recs).await;
        let decision = match self.fleet_cache {
            Some(cache) => {
                cache.decide(policy_name, &policy.spec.policy, Observed { snapshot, recs: &recs, promises: &promises }, &records, now)?
            }
            None => {
                let mut fleet = Vec::with_capacity(snapshot.len());
                for n in snapshot {
                    let mut obs = observe_node(n, recs.get(&n.name_any()))?;
                    obs.self_fencing = promises.get(&obs.name).copied();
                    fleet.push(obs);
                }
                decide(&policy.spec.policy, &fleet, &records, now)
            }
        };
        self.fenced().await?;
        self.persist(policy_name, &decision, &recs).await?;
        let status = self.policy_status(&policy, &decision, &records);
        // The records are persisted: the steps they name are carried out even if the policy status
        // cannot be written this time (the engine asks for a step once; skipping it would lose it).
        let status_written = self.write_policy_status(policy_name, &policy, status).await;
        for a in &decision.would_execute {
            if let Action::Execute { node, step, attempt, .. } = a {
                let executor = self.executor.executor_for(*step).unwrap_or_else(|| "no executor".into());
                tracing::info!(node = %node, step = %step, attempt, executor = %executor, "monitor-only: would run the step with {executor}");
            }
        }
        let acted = self.act(policy_name, &decision, snapshot).await;
        // The records only; the nodes' taints need not be replayed.
        let mut after = records.clone();
        apply(&decision, &mut [], &mut after);
        self.resume_in_flight(&policy.spec.policy, &decision, &after, &recs).await;
        if let Err(message) = self.executor.release(&policy.spec.policy, &after).await {
            tracing::warn!(policy = %policy_name, error = %message, "releasing what finished remediations left behind failed; tried again next pass");
        }
        if let Some(m) = self.metrics {
            let pools = metrics::pools_of(snapshot, &policy.spec.policy.node_pool_label, &after);
            m.observe(policy_name, &decision, &after, &pools, now);
        }
        if let Some(recorder) = self.events {
            publish_events(recorder, &policy, snapshot, &recs, &decision).await;
        }
        if let Err(e) = &status_written {
            tracing::warn!(policy = %policy_name, error = %e, "could not write the policy status; retried next pass");
        }
        acted?;
        status_written?;
        Ok(decision)
    }

    /// The policy's status after a pass: its conditions (valid, paused, breaker, executors), the counts
    /// and the breaker's record.
    fn policy_status(&self, policy: &NodeHealthPolicy, decision: &Decision, records: &Records) -> NodeHealthPolicyStatus {
        let p = &policy.spec.policy;
        let sum = &decision.summary;
        let paused = (
            !p.pause_requests.is_empty(),
            "PauseRequested",
            if p.pause_requests.is_empty() {
                "no pause requests".to_string()
            } else {
                format!("paused by: {}", p.pause_requests.join(", "))
            },
        );
        let breaker = decision.policy_record.as_ref().unwrap_or(&records.policy);
        NodeHealthPolicyStatus {
            observed_generation: policy.metadata.generation,
            conditions: conditions(
                policy.status.as_ref(),
                &[
                    ("Valid", true, "Validated", "the policy passed validation".into()),
                    ("Paused", paused.0, paused.1, paused.2),
                    ("BreakerOpen", sum.breaker_open, "CircuitBreaker", breaker.breaker_reason.clone().unwrap_or_else(|| "closed".into())),
                    ("Executors", true, if p.monitor_only { "MonitorOnly" } else { "Configured" }, self.executors_in_words(p)),
                ],
            ),
            selected: sum.selected as u64,
            healthy: sum.healthy as u64,
            unhealthy: sum.unhealthy as u64,
            unknown: sum.unknown as u64,
            remediating: sum.remediating as u64,
            manual: sum.manual as u64,
            record: breaker.clone(),
            // Owned by the notifier's field manager; this apply leaves them alone.
            notifications: Vec::new(),
        }
    }

    /// Moves the deadlines of steps in flight past the time this replica could not observe the
    /// cluster (the engine's rule), persisting the records first so a new leader sees them too.
    async fn account_for_outages(
        &self,
        policy_name: &str,
        records: &mut Records,
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        let moved = account_for_outages(records, self.outages, self.reconnect_grace);
        if moved.is_empty() {
            return Ok(());
        }
        self.fenced().await?;
        let changes: Vec<RecordChange> = moved.into_iter().map(RecordChange::Upsert).collect();
        self.persist_records(policy_name, &changes, recs).await?;
        for change in changes {
            if let RecordChange::Upsert(r) = change {
                let a = r.active.as_ref();
                tracing::info!(
                    node = %r.node,
                    unobserved = %a.map(|a| a.unobserved).unwrap_or_default(),
                    deadline = ?a.and_then(|a| a.deadline),
                    "the API server did not answer for part of this step: its deadline moves on by that time"
                );
                records.nodes.insert(r.node.clone(), r);
            }
        }
        Ok(())
    }

    /// The ladder steps no executor can carry out, in words; None when every step has one.
    fn missing_executors(&self, policy: &nodemedic_core::Policy) -> Option<String> {
        let missing: Vec<String> = policy
            .ladder
            .iter()
            .enumerate()
            .filter(|(_, ls)| !matches!(ls.step, RemediationStep::Quarantine | RemediationStep::Manual))
            .filter(|(_, ls)| self.executor.executor_for(ls.step).is_none())
            .map(|(i, ls)| {
                format!(
                    "ladder[{i}] step {step}: no executor can carry it out (configure steps.{step} in --executors: a provider, webhook or command)",
                    step = ls.step
                )
            })
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Which executor each step of the ladder goes to (what monitor-only would have used).
    fn executors_in_words(&self, policy: &nodemedic_core::Policy) -> String {
        let steps: Vec<String> = policy
            .ladder
            .iter()
            .filter(|ls| !matches!(ls.step, RemediationStep::Quarantine | RemediationStep::Manual))
            .map(|ls| format!("{}: {}", ls.step, self.executor.executor_for(ls.step).unwrap_or_else(|| "none".into())))
            .collect();
        let prefix = if policy.monitor_only { "monitor-only, nothing is executed; the steps would go to " } else { "" };
        format!("{prefix}{}", steps.join("; "))
    }

    async fn fenced(&self) -> Result<(), ControllerError> {
        match self.fence {
            Some(f) if !f.confirm().await.map_err(|e| ControllerError::Lease(format!("reading the lease: {e}")))? => {
                Err(ControllerError::NotLeader)
            }
            _ => Ok(()),
        }
    }

    /// Server-side applies the policy status when it changed (condition times aside).
    async fn write_policy_status(
        &self,
        name: &str,
        policy: &NodeHealthPolicy,
        status: NodeHealthPolicyStatus,
    ) -> Result<(), ControllerError> {
        let notifications = policy.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default();
        if policy.status.as_ref() == Some(&NodeHealthPolicyStatus { notifications, ..status.clone() }) {
            return Ok(());
        }
        let api: Api<NodeHealthPolicy> = Api::all(self.client.clone());
        let body = serde_json::json!({"apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeHealthPolicy", "metadata": {"name": name}, "status": status});
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
        Ok(())
    }
}
