//! The demo's output: the table of nodes that need attention, and the summary that judges the end.

use crate::demo::{Expect, Scenario};
use crate::demo_agent::retrying;
use crate::demo_chaos::Chaos;
use crate::demo_judge::{Asks, Verdict, chaos_counts, judge, judge_workload};
use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use nodemedic_core::fencing::OUT_OF_SERVICE_TAINT;
use nodemedic_core::record::Phase;
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation};
use nodemedic_testenv::ControlPlane;

/// The nodes that need attention, as a table.
pub fn table(nodes: &[Node], records: &[NodeRemediation]) -> String {
    let mut rows = Vec::new();
    let mut healthy = 0;
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let taints: Vec<String> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.key.starts_with("nodemedic.io/") || t.key == OUT_OF_SERVICE_TAINT)
            .map(|t| t.key.trim_start_matches("nodemedic.io/").trim_start_matches("node.kubernetes.io/").to_string())
            .collect();
        let rec = records.iter().find(|r| r.spec.node == name).and_then(|r| r.status.as_ref()).map(|s| &s.record);
        let active = rec.and_then(|r| r.active.as_ref());
        if taints.is_empty() && active.is_none() && rec.is_none_or(|r| r.phase == Phase::Healthy) {
            healthy += 1;
            continue;
        }
        rows.push(format!(
            "    {:<9} {:<12} {:<9} {:<8} {}",
            name,
            rec.map(|r| format!("{:?}", r.phase)).unwrap_or_else(|| "Healthy".into()),
            active.map(|a| a.step.to_string()).unwrap_or_else(|| "-".into()),
            rec.map(|r| r.attempt.to_string()).unwrap_or_else(|| "-".into()),
            if taints.is_empty() { "-".into() } else { taints.join(",") }
        ));
    }
    format!(
        "  ┌ nodes: {healthy} healthy, {} need attention\n    {:<9} {:<12} {:<9} {:<8} {}\n{}",
        rows.len(),
        "NODE",
        "PHASE",
        "STEP",
        "ATTEMPT",
        "TAINTS",
        rows.join("\n")
    )
}

/// The end: every node a fault hit, judged on the cluster as it is now ([`judge`]); with chaos,
/// what must never happen, counted.
pub async fn summary(
    cp: &ControlPlane,
    scenario: &Scenario,
    breaker_tripped_at: Option<f64>,
    peers: Option<&crate::demo_peers::Peers>,
    chaos: Option<(&Chaos, &Asks)>,
    ends: &crate::demo::Ends,
) -> Result<()> {
    // A chaos strike may have restarted the API server just before the end: it answers 429
    // while its storage comes back, so the end is read once it answers, not judged on an error.
    let (records, nodes, policies, stateful) = retrying("reading the end state", || async {
        let client = cp.client();
        let lp = ListParams::default();
        Ok((
            Api::<NodeRemediation>::all(client.clone()).list(&lp).await?.items,
            Api::<Node>::all(client.clone()).list(&lp).await?.items,
            Api::<NodeHealthPolicy>::all(client).list(&lp).await?.items,
            crate::demo_stateful::ends(cp, scenario).await?,
        ))
    })
    .await?;
    println!("\n== summary of scenario `{}`", scenario.name);
    for (name, st) in policies.iter().filter_map(|p| Some((p.metadata.name.as_deref()?, p.status.as_ref()?))) {
        println!(
            "policy {name}: {} selected, {} healthy, {} remediating, {} manual{}",
            st.selected,
            st.healthy,
            st.remediating,
            st.manual,
            // The timeline's BreakerTripped Events are the main policy's.
            match (name, breaker_tripped_at) {
                ("demo", Some(_)) => "; circuit breaker tripped during the run",
                ("demo", None) => "; circuit breaker never tripped",
                _ => "",
            }
        );
    }
    let mut failed = 0;
    for v in judge(scenario, &records, &nodes, breaker_tripped_at.is_some(), &ends.replacements, &stateful) {
        let f = &scenario.faults[v.fault];
        failed += usize::from(!v.ok);
        println!("{}", verdict_line(f, &v));
    }
    failed += workloads_and_replacements(cp, scenario, &records, &nodes, &policies, ends).await?;
    if let Some((c, asks)) = chaos {
        let counts = chaos_counts(asks, &records, &nodes);
        println!(
            "\nchaos (seed {}): {} leader kills, {} API-server pauses ({:.1}s in all), {} API-server restarts",
            c.seed,
            c.kills,
            c.pauses,
            c.paused_for.as_secs_f64(),
            c.restarts
        );
        println!("  duplicate disruptive actions: {}", counts.duplicate_disruptive);
        println!("  lost remediations: {} {:?}", counts.lost_remediations.len(), counts.lost_remediations);
        println!("  unexplained taints: {} {:?}", counts.unexplained_taints.len(), counts.unexplained_taints);
        failed += counts.duplicate_disruptive + counts.lost_remediations.len() + counts.unexplained_taints.len();
    }
    if let Some(p) = peers {
        let mails = p.mails();
        let alerts = p.alerts().unwrap_or_default();
        println!("\nnotifications — {} email(s) at the SMTP server, {} alert(s) active in Alertmanager:", mails.len(), alerts.len());
        for m in &mails {
            println!("  email to {}: {}", m.to.join(", "), m.subject);
        }
        for (name, node, summary) in &alerts {
            println!("  alert {name}{}: {summary}", if node.is_empty() { String::new() } else { format!(" node={node}") });
        }
        failed += people_told(scenario, &mails, &alerts);
    }
    match cp.kubectl(&["get", "nodehealthpolicies,noderemediations", "-o", "wide"]) {
        Ok(out) => println!("\n$ kubectl get nodehealthpolicies,noderemediations -o wide\n{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => println!("(kubectl: {e})"),
    }
    println!(
        "inspect while it runs with --keep:  KUBECONFIG={} {} get nhp,nrem",
        cp.kubeconfig().display(),
        cp.binaries().path("kubectl").display()
    );
    if failed > 0 {
        bail!("{failed} node(s) did not end as the scenario expects");
    }
    println!("every node ended as the scenario expects");
    Ok(())
}

/// The scenario's PDB-guarded workloads ([`judge_workload`]) and, after a replacement, whether the
/// policy selects every node there is now; prints a line each and returns how many failed.
async fn workloads_and_replacements(
    cp: &ControlPlane,
    scenario: &Scenario,
    records: &[NodeRemediation],
    nodes: &[Node],
    policies: &[NodeHealthPolicy],
    ends: &crate::demo::Ends,
) -> Result<usize> {
    let mut failed = 0;
    for w in &scenario.workloads {
        let budget = crate::demo_workloads::budget_name(w);
        let left = retrying("reading the workload's pods", || crate::demo_workloads::pods_left(cp, w)).await?;
        let rec = crate::demo_judge::record(records, &w.node);
        let verdict = judge_workload(&budget, ends.held.get(&w.node).map(String::as_str), ends.relaxed.get(&w.node).copied(), rec, left);
        failed += usize::from(verdict.is_err());
        let (mark, text) = match verdict {
            Ok(t) => ("✓", t),
            Err(t) => ("✗", t),
        };
        println!("  {mark} {:<9} workload {}/{} ({budget}): {text}", w.node, crate::demo_workloads::NAMESPACE, w.name);
    }
    if !ends.replacements.is_empty() {
        // The policies' selectors do not overlap: together they select every node once.
        let selected: u64 = policies.iter().filter_map(|p| p.status.as_ref()).map(|s| s.selected).sum();
        let tracked = selected as usize == nodes.len();
        failed += usize::from(!tracked);
        println!(
            "  {} the {} select {selected} of the {} nodes now, replacements included",
            if tracked { "✓" } else { "✗" },
            if policies.len() == 1 { "policy" } else { "policies" },
            nodes.len()
        );
    }
    Ok(failed)
}

/// One node's line in the summary.
fn verdict_line(f: &crate::demo::Fault, v: &Verdict) -> String {
    let mark = if v.ok { "✓" } else { "✗" };
    let kind = format!("{:?}", f.kind).to_lowercase();
    if let Some(fencing) = &v.fencing {
        let text = match fencing {
            Ok(t) | Err(t) => t,
        };
        return format!("  {mark} {:<9} {kind:<8} expected {:<10} ended {:<12} {text}", v.node, "fenced", format!("{:?}", v.phase));
    }
    if f.expect == Some(Expect::Replaced) {
        let new = v.replaced_by.as_deref().unwrap_or("no node");
        let (now, gone) = if v.ok { ("Ready, every probe passing, no taint", "gone") } else { ("missing or not healthy", "?") };
        return format!(
            "  {mark} {:<9} {kind:<8} expected {:<10} ended {gone} (node and record); its new Machine's node {new}: {now}",
            v.node, "replaced"
        );
    }
    format!(
        "  {mark} {:<9} {kind:<8} expected {:<10} ended {:<12} failing now: {:<12} steps: {}",
        v.node,
        f.expect.map(|e| format!("{e:?}").to_lowercase()).unwrap_or_else(|| "-".into()),
        format!("{:?}", v.phase),
        if v.failing.is_empty() { "none".into() } else { v.failing.join(",") },
        if v.steps.is_empty() { "none".into() } else { v.steps.join(", ") }
    )
}

/// Whether people were told what they must be: a node left to a person by an email naming it, with
/// its attempts, and an alert; a workload's held drain by a DrainBlocked email naming its budget.
/// Prints a line each and returns how many are missing.
fn people_told(scenario: &Scenario, mails: &[crate::demo_peers::Mail], alerts: &[(String, String, String)]) -> usize {
    let mut failed = 0;
    for f in scenario.faults.iter().filter(|f| matches!(f.expect, Some(Expect::Manual | Expect::Fenced))) {
        for n in &f.nodes {
            // A fenced node's email tells its power-off; a repaired one's its attempts.
            let attempts = if f.expect == Some(Expect::Fenced) { "powerOff" } else { "reimage" };
            let mailed = mails.iter().any(|m| m.subject.contains(n.as_str()) && m.text.contains(attempts));
            let alerted = alerts.iter().any(|(name, node, _)| node == n && name == "NodemedicNodeManual");
            println!(
                "  {} {n}: email with its attempts {}, alert NodemedicNodeManual {}",
                if mailed && alerted { "✓" } else { "✗" },
                if mailed { "received" } else { "MISSING" },
                if alerted { "firing" } else { "MISSING" }
            );
            failed += usize::from(!(mailed && alerted));
        }
    }
    for w in &scenario.workloads {
        let budget = crate::demo_workloads::budget_name(w);
        let node = w.node.as_str();
        let told = mails.iter().any(|m| m.subject.contains("DrainBlocked") && m.subject.contains(node) && m.text.contains(&budget));
        println!(
            "  {} {node}: email DrainBlocked naming {budget} {}",
            if told { "✓" } else { "✗" },
            if told { "received" } else { "MISSING" }
        );
        failed += usize::from(!told);
    }
    failed
}
