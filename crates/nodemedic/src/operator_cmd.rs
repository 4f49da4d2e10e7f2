//! The commands people use on a running cluster: `history` (a node's story as a timeline) and the
//! requests the engine acts on — `resume`, `abort` on a node's NodeRemediation, `pause`, `unpause`,
//! `reset-breaker` on a NodeHealthPolicy. Every request names who made it (`--as`, else the user of the
//! kubeconfig's current context, else `$USER`), in the request itself and in a `nodemedic.io/<action>-by`
//! annotation. The kubeconfig comes from the environment.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use nodemedic_core::observe::OperatorAction;
use nodemedic_core::record::Phase;
use nodemedic_core::time::Time;
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, field_managers};

#[derive(clap::Args, Debug, Clone)]
pub struct Who {
    /// Who is acting (recorded with the request). Default: the kubeconfig's user, else $USER.
    #[arg(long = "as", value_name = "NAME")]
    pub as_user: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum OperatorCommand {
    /// Print a node's remediation as a timeline: signal → rule → gate → action → outcome → notification.
    History { node: String },
    /// The node in repair-manual was repaired by hand: nodemedic clears repair-manual once its checks pass.
    Resume {
        node: String,
        #[command(flatten)]
        who: Who,
    },
    /// Stop the automated ladder on a node and keep it cordoned (repair-manual) for a person.
    Abort {
        node: String,
        #[command(flatten)]
        who: Who,
    },
    /// Hold new remediations for a policy (a pause request naming who and why).
    Pause {
        policy: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Withdraw your pause request (`--all`: every pause request) for a policy.
    Unpause {
        policy: String,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Ask to close a policy's open circuit breaker (honoured once its cooldown has passed).
    ResetBreaker {
        policy: String,
        #[command(flatten)]
        who: Who,
    },
}

pub async fn run(command: OperatorCommand) -> Result<()> {
    let client = kube::Client::try_default().await.context("reading the Kubernetes client configuration (kubeconfig or in-cluster)")?;
    match command {
        OperatorCommand::History { node } => {
            print!("{}", history(&client, &node).await?);
            Ok(())
        }
        OperatorCommand::Resume { node, who } => node_request(&client, &node, OperatorAction::Resolve, &who.resolve()).await,
        OperatorCommand::Abort { node, who } => node_request(&client, &node, OperatorAction::Abort, &who.resolve()).await,
        OperatorCommand::Pause { policy, reason, who } => pause(&client, &policy, &reason, &who.resolve()).await,
        OperatorCommand::Unpause { policy, all, who } => unpause(&client, &policy, all, &who.resolve()).await,
        OperatorCommand::ResetBreaker { policy, who } => reset_breaker(&client, &policy, &who.resolve()).await,
    }
}

impl Who {
    /// `--as`, else the user named by the kubeconfig's current context, else `$USER`.
    pub fn resolve(&self) -> String {
        if let Some(name) = self.as_user.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            return name.to_string();
        }
        let from_kubeconfig = kube::config::Kubeconfig::read().ok().and_then(|k| {
            let current = k.current_context.clone()?;
            k.contexts.into_iter().find(|c| c.name == current)?.context?.user
        });
        from_kubeconfig
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into())
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now().as_millisecond())
}

/// `nodemedic.io/<action>-by: <who> at <time>[: <detail>]` on the object.
fn annotation(action: &str, who: &str, at: Time, detail: Option<&str>) -> serde_json::Value {
    let value = match detail {
        Some(d) => format!("{who} at {at}: {d}"),
        None => format!("{who} at {at}"),
    };
    serde_json::json!({"metadata": {"annotations": {format!("nodemedic.io/{action}-by"): value}}})
}

async fn node_request(client: &Client, node: &str, action: OperatorAction, who: &str) -> Result<()> {
    let api: Api<NodeRemediation> = Api::all(client.clone());
    let current = api.get_opt(node).await?.with_context(|| format!("node {node} has no NodeRemediation: nodemedic is not acting on it"))?;
    let record = current.status.as_ref().map(|s| &s.record);
    let phase = record.map_or(Phase::Healthy, |r| r.phase);
    let (verb, wanted) = match action {
        OperatorAction::Resolve => ("resume", Phase::Manual),
        OperatorAction::Abort => ("abort", Phase::Remediating),
    };
    if phase != wanted {
        bail!("node {node} is {}, not {}: nothing to {verb}", phase.as_str(), wanted.as_str());
    }
    let at = now();
    let body = serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1",
        "kind": "NodeRemediation",
        "metadata": {"name": node},
        "status": {"operatorRequest": {"action": action, "by": who, "at": at}},
    });
    api.patch_status(node, &PatchParams::apply(field_managers::OPERATOR).force(), &Patch::Apply(&body))
        .await
        .with_context(|| format!("writing the {verb} request on {node}"))?;
    api.patch(node, &PatchParams::default(), &Patch::Merge(annotation(verb, who, at, None))).await?;
    match action {
        OperatorAction::Resolve => {
            println!("{node}: resume requested by {who}; nodemedic clears repair-manual once the checks pass on data newer than {at}")
        }
        OperatorAction::Abort => println!("{node}: abort requested by {who}; the ladder stops and the node stays cordoned (repair-manual)"),
    }
    Ok(())
}

/// Read-modify-write of a policy's pause requests, guarded by the resourceVersion.
async fn edit_pause_requests(
    client: &Client,
    policy: &str,
    edit: impl Fn(&mut Vec<String>) -> Result<()>,
) -> Result<(Vec<String>, Vec<String>)> {
    let api: Api<NodeHealthPolicy> = Api::all(client.clone());
    for _ in 0..5 {
        let current = api.get(policy).await.with_context(|| format!("reading policy {policy}"))?;
        let before = current.spec.policy.pause_requests.clone();
        let mut after = before.clone();
        edit(&mut after)?;
        if after == before {
            return Ok((before, after));
        }
        let patch = serde_json::json!({"metadata": {"resourceVersion": current.resource_version()}, "spec": {"pauseRequests": after}});
        match api.patch(policy, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => return Ok((before, after)),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("updating policy {policy}")),
        }
    }
    bail!("policy {policy} kept changing under us; try again")
}

async fn pause(client: &Client, policy: &str, reason: &str, who: &str) -> Result<()> {
    if reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let entry = format!("{who}: {}", reason.trim());
    let (_, after) = edit_pause_requests(client, policy, |requests| {
        if !requests.contains(&entry) {
            requests.push(entry.clone());
        }
        Ok(())
    })
    .await?;
    let api: Api<NodeHealthPolicy> = Api::all(client.clone());
    api.patch(policy, &PatchParams::default(), &Patch::Merge(annotation("pause", who, now(), Some(reason.trim())))).await?;
    println!("{policy}: paused by {who}; pause requests now: {}", after.join("; "));
    Ok(())
}

async fn unpause(client: &Client, policy: &str, all: bool, who: &str) -> Result<()> {
    let mine = format!("{who}: ");
    let (before, after) = edit_pause_requests(client, policy, |requests| {
        if all {
            requests.clear();
        } else {
            requests.retain(|r| !r.starts_with(&mine));
        }
        Ok(())
    })
    .await?;
    if before == after && !before.is_empty() {
        bail!("{policy}: no pause request by {who} (paused by: {}); use --all to withdraw them all", before.join("; "));
    }
    let api: Api<NodeHealthPolicy> = Api::all(client.clone());
    let detail = if all { "every pause request withdrawn" } else { "own pause request withdrawn" };
    api.patch(policy, &PatchParams::default(), &Patch::Merge(annotation("unpause", who, now(), Some(detail)))).await?;
    if after.is_empty() {
        println!("{policy}: unpaused by {who}; remediation resumes");
    } else {
        println!("{policy}: {who}'s pause request withdrawn; still paused by: {}", after.join("; "));
    }
    Ok(())
}

async fn reset_breaker(client: &Client, policy: &str, who: &str) -> Result<()> {
    let api: Api<NodeHealthPolicy> = Api::all(client.clone());
    let current = api.get(policy).await.with_context(|| format!("reading policy {policy}"))?;
    let at = now();
    let body = serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1",
        "kind": "NodeHealthPolicy",
        "metadata": {"name": policy},
        "status": {"breakerResetRequestedAt": at},
    });
    api.patch_status(policy, &PatchParams::apply(field_managers::OPERATOR).force(), &Patch::Apply(&body))
        .await
        .with_context(|| format!("writing the breaker reset request on {policy}"))?;
    api.patch(policy, &PatchParams::default(), &Patch::Merge(annotation("reset-breaker", who, at, None))).await?;
    let breaker = current.spec.policy.gates.circuit_breaker.as_ref();
    match current.status.as_ref().and_then(|s| s.record.breaker_tripped_at) {
        Some(tripped) => {
            let cooldown = breaker.map(|b| b.cooldown.to_string()).unwrap_or_default();
            println!("{policy}: breaker reset requested by {who}; it closes once its cooldown ({cooldown}) since {tripped} has passed");
        }
        None => println!("{policy}: the breaker is closed; reset request by {who} recorded (it only closes a breaker tripped before it)"),
    }
    Ok(())
}

/// One line of a timeline.
struct Row {
    at: Time,
    what: &'static str,
    text: String,
}

/// A node's story from its NodeRemediation, its policy's gates and the Events about it, oldest first.
pub async fn history(client: &Client, node: &str) -> Result<String> {
    let rec = Api::<NodeRemediation>::all(client.clone())
        .get_opt(node)
        .await?
        .with_context(|| format!("node {node} has no NodeRemediation: nodemedic has nothing on record for it"))?;
    let policy = Api::<NodeHealthPolicy>::all(client.clone()).get_opt(&rec.spec.policy).await?;
    let events = match Api::<K8sEvent>::all(client.clone()).list(&ListParams::default().fields(&format!("regarding.name={node}"))).await {
        Ok(list) => list.items,
        Err(_) => Api::<K8sEvent>::all(client.clone()).list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default(),
    };
    Ok(render_history(&rec, policy.as_ref(), &events))
}

/// The timeline as text (pure, for tests).
pub fn render_history(rec: &NodeRemediation, policy: Option<&NodeHealthPolicy>, events: &[K8sEvent]) -> String {
    let node = rec.spec.node.as_str();
    let status = rec.status.clone().unwrap_or_default();
    let r = &status.record;
    let mut rows: Vec<Row> = Vec::new();
    for e in events {
        let about = e.regarding.as_ref();
        if about.and_then(|o| o.name.as_deref()) != Some(node) || about.and_then(|o| o.kind.as_deref()) != Some("Node") {
            continue;
        }
        let Some(at) = e.event_time.as_ref().map(|t| Time(t.0.as_millisecond())) else { continue };
        let reason = e.reason.clone().unwrap_or_default();
        let what = match reason.as_str() {
            "RemediationStarted" => "signal",
            "StepStarted" | "EscalatedToManual" => "action",
            "StepSucceeded" | "StepFailed" | "StepTimedOut" | "Recovered" | "ResolvedByOperator" => "outcome",
            "BreakerTripped" | "BreakerClosed" => "gate",
            _ => "event",
        };
        rows.push(Row { at, what, text: format!("{reason}: {}", e.note.clone().unwrap_or_default()) });
    }
    if let Some(a) = &r.active {
        rows.push(Row { at: a.unhealthy_since, what: "signal", text: format!("unhealthy: {}", a.reason) });
        rows.push(Row { at: a.started_at, what: "rule", text: format!("rule `{}` fired; remediation started", a.trigger) });
    }
    for h in &r.history {
        let ran = if h.executed { "" } else { " (monitor-only: not executed)" };
        rows.push(Row { at: h.started_at, what: "action", text: format!("step {} (attempt {}) started{ran}", h.step, h.attempt) });
        rows.push(Row {
            at: h.ended_at,
            what: "outcome",
            text: format!("step {} (attempt {}) {}: {}", h.step, h.attempt, h.outcome.as_str(), h.reason),
        });
    }
    if let Some(a) = &r.active {
        let until = a.deadline.map(|d| format!(", deadline {d}")).unwrap_or_default();
        rows.push(Row {
            at: a.step_started_at,
            what: "action",
            text: format!("step {} (attempt {}) in progress{until}", a.step, r.attempt),
        });
    }
    if let Some(o) = &r.out_of_service {
        let taint = nodemedic_core::fencing::OUT_OF_SERVICE_TAINT;
        rows.push(Row { at: o.added_at, what: "fencing", text: format!("{taint} added: {}", o.reason) });
        if let Some(at) = o.removed_at {
            rows.push(Row { at, what: "fencing", text: format!("{taint} removed: {}", o.removed_reason.clone().unwrap_or_default()) });
        }
    }
    if let Some(p) = policy.and_then(|p| p.status.as_ref()) {
        for c in p.conditions.iter().filter(|c| (c.type_ == "Paused" || c.type_ == "BreakerOpen") && c.status == "True") {
            rows.push(Row {
                at: Time(c.last_transition_time.0.as_millisecond()),
                what: "gate",
                text: format!("{}: {}", c.type_, c.message),
            });
        }
    }
    if let Some(s) = &status.step_report {
        rows.push(Row {
            at: s.at,
            what: "outcome",
            text: format!("executor reported attempt {}: {:?} {}", s.attempt, s.outcome, s.message),
        });
    }
    if let Some(o) = &status.operator_request {
        let verb = match o.action {
            OperatorAction::Resolve => "resume (repaired by hand)",
            OperatorAction::Abort => "abort (stop the ladder)",
        };
        rows.push(Row { at: o.at, what: "operator", text: format!("{verb} requested by {}", o.by) });
    }
    for n in &status.notifications {
        let result = if n.ok {
            "delivered".to_string()
        } else {
            format!("failed: {}{}", n.error.clone().unwrap_or_default(), if n.gave_up { " (gave up)" } else { "" })
        };
        rows.push(Row { at: n.at, what: "notification", text: format!("{} to {} (try {}): {result}", n.key, n.channel, n.attempt) });
    }
    rows.sort_by_key(|row| row.at);
    let mut out = format!("Node {node} (policy {}): phase {}, attempt {}\n", rec.spec.policy, r.phase.as_str(), r.attempt);
    for row in rows {
        out.push_str(&format!("{:<24}  {:<12}  {}\n", row.at.to_string(), row.what, row.text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_reads_as_a_timeline_from_the_signal_to_the_notification() -> Result<()> {
        let rec: NodeRemediation = serde_json::from_value(serde_json::json!({
            "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation",
            "metadata": {"name": "gpu-011"},
            "spec": {"node": "gpu-011", "policy": "gpu-workers"},
            "status": {
                "node": "gpu-011", "phase": "Manual", "attempt": 2,
                "active": {"trigger": "gpu", "reason": "rule `gpu` Unhealthy: Xid 119", "startedAt": "2026-11-21T10:00:01Z",
                           "unhealthySince": "2026-11-21T10:00:00Z", "stepIndex": 1, "step": "manual",
                           "stepStartedAt": "2026-11-21T10:00:04Z", "stage": {"name": "executing"}, "executed": true},
                "history": [{"attempt": 1, "step": "reboot", "startedAt": "2026-11-21T10:00:01Z", "endedAt": "2026-11-21T10:00:04Z",
                             "outcome": "timedOut", "reason": "no completion report within 3s", "executed": true}],
                "operatorRequest": {"action": "resolve", "by": "alice", "at": "2026-11-21T11:00:00Z"},
                "notifications": [{"key": "gpu-011/NodeManual/2", "channel": "email-infra", "attempt": 1, "ok": true,
                                   "at": "2026-11-21T10:00:05Z"}]
            }
        }))?;
        let text = render_history(&rec, None, &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Node gpu-011 (policy gpu-workers): phase Manual, attempt 2");
        let order: Vec<&str> = lines[1..].iter().filter_map(|l| l.split_whitespace().nth(1)).collect();
        assert_eq!(order, ["signal", "rule", "action", "outcome", "action", "notification", "operator"], "{text}");
        assert!(text.contains("step reboot (attempt 1) timed_out: no completion report within 3s"), "{text}");
        assert!(text.contains("gpu-011/NodeManual/2 to email-infra (try 1): delivered"), "{text}");
        assert!(text.contains("resume (repaired by hand) requested by alice"), "{text}");
        Ok(())
    }

    #[test]
    fn the_history_shows_when_and_why_the_node_was_marked_out_of_service_and_unmarked() -> Result<()> {
        let rec: NodeRemediation = serde_json::from_value(serde_json::json!({
            "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation",
            "metadata": {"name": "gpu-000"},
            "spec": {"node": "gpu-000", "policy": "gpu-workers"},
            "status": {
                "node": "gpu-000", "phase": "Manual", "attempt": 2,
                "outOfService": {"attempt": 1, "source": "bmcPowerOff", "addedAt": "2026-11-21T10:02:00Z",
                                 "reason": "fencing confirmed: the BMC confirmed power Off", "removedAt": "2026-11-21T11:00:00Z",
                                 "removedReason": "node gpu-000 is back and Ready"}
            }
        }))?;
        let text = render_history(&rec, None, &[]);
        let fencing: Vec<&str> = text.lines().filter(|l| l.split_whitespace().nth(1) == Some("fencing")).collect();
        assert_eq!(fencing.len(), 2, "{text}");
        assert!(fencing[0].ends_with("node.kubernetes.io/out-of-service added: fencing confirmed: the BMC confirmed power Off"), "{text}");
        assert!(fencing[1].ends_with("node.kubernetes.io/out-of-service removed: node gpu-000 is back and Ready"), "{text}");
        Ok(())
    }
}
