//! Renderings of an [`Incident`]: plain text and HTML (the two parts of an email), JSON for machines and the
//! short `{"text": …}` form Slack and Teams incoming webhooks accept.

use crate::incident::{Attempt, Incident};
use std::fmt::Write;

/// The full plain-text report.
pub fn text(incident: &Incident) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", incident.title());
    let _ = writeln!(out);
    let _ = writeln!(out, "What happened: {}", incident.summary);
    let _ = writeln!(out, "When:          {}", incident.at);
    let _ = writeln!(out, "Severity:      {}", incident.severity);
    let _ = writeln!(out, "Policy:        {}", incident.policy);
    if let Some(rule) = &incident.rule {
        let _ = writeln!(out, "Rule fired:    {rule}");
    }
    let _ = writeln!(out, "Next action:   {}", incident.next_action);
    let _ = writeln!(out, "Key:           {}", incident.key);

    if let Some(node) = &incident.node {
        let _ = writeln!(out);
        let _ = writeln!(out, "Node {}", node.name);
        let _ = writeln!(out, "  Internal IPs: {}", list_or_none(&node.internal_ips));
        let _ = writeln!(out, "  External IPs: {}", list_or_none(&node.external_ips));
        let _ = writeln!(out, "  Labels:");
        if node.labels.is_empty() {
            let _ = writeln!(out, "    (none)");
        }
        for (key, value) in &node.labels {
            let _ = writeln!(out, "    {key}={value}");
        }
        let _ = writeln!(out, "  Taints:");
        if node.taints.is_empty() {
            let _ = writeln!(out, "    (none)");
        }
        for taint in &node.taints {
            let _ = writeln!(out, "    {taint}");
        }
        let _ = writeln!(out, "  Conditions:");
        if node.conditions.is_empty() {
            let _ = writeln!(out, "    (none)");
        }
        for c in &node.conditions {
            let _ = writeln!(out, "    {}={} reason={} message={}", c.type_, c.status, c.reason, c.message);
        }
    }

    if !incident.probes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Probe results (oldest first)");
        for probe in &incident.probes {
            let _ = writeln!(out, "  {}:", probe.probe);
            for r in &probe.results {
                let _ = writeln!(out, "    {} {} {}", r.at, pass_fail(r.passed), r.message);
            }
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "Repair attempts");
    if incident.attempts.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for a in &incident.attempts {
        let _ = writeln!(
            out,
            "  #{} {} started {} ended {} outcome {}{}: {}",
            a.attempt,
            a.step.as_str(),
            a.started_at,
            ended(a),
            a.outcome_text(),
            if a.executed { "" } else { " (not executed: monitor-only)" },
            a.reason
        );
    }
    out
}

/// The full report as an HTML document; every value from the incident is escaped.
pub fn html(incident: &Incident) -> String {
    let e = escape_html;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body style=\"font-family:sans-serif\">",
        e(&incident.title())
    );
    let _ = write!(out, "<h2>{}</h2>", e(&incident.title()));
    let _ = write!(out, "<table>");
    let mut row = |name: &str, value: &str| {
        let _ = write!(out, "<tr><th align=\"left\">{}</th><td>{}</td></tr>", e(name), e(value));
    };
    row("What happened", &incident.summary);
    row("When", &incident.at.to_string());
    row("Severity", incident.severity.as_str());
    row("Policy", &incident.policy);
    if let Some(rule) = &incident.rule {
        row("Rule fired", rule);
    }
    row("Next action", &incident.next_action);
    row("Key", &incident.key);
    let _ = write!(out, "</table>");

    if let Some(node) = &incident.node {
        let _ = write!(out, "<h3>Node {}</h3><table>", e(&node.name));
        let _ = write!(out, "<tr><th align=\"left\">Internal IPs</th><td>{}</td></tr>", e(&list_or_none(&node.internal_ips)));
        let _ = write!(out, "<tr><th align=\"left\">External IPs</th><td>{}</td></tr></table>", e(&list_or_none(&node.external_ips)));
        let _ = write!(out, "<h4>Labels</h4><ul>");
        for (key, value) in &node.labels {
            let _ = write!(out, "<li><code>{}={}</code></li>", e(key), e(value));
        }
        let _ = write!(out, "</ul><h4>Taints</h4><ul>");
        for taint in &node.taints {
            let _ = write!(out, "<li><code>{}</code></li>", e(&taint.to_string()));
        }
        let _ = write!(out, "</ul><h4>Conditions</h4><table border=\"1\" cellpadding=\"4\">");
        let _ = write!(out, "<tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th></tr>");
        for c in &node.conditions {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e(&c.type_),
                e(&c.status),
                e(&c.reason),
                e(&c.message)
            );
        }
        let _ = write!(out, "</table>");
    }

    if !incident.probes.is_empty() {
        let _ = write!(out, "<h3>Probe results</h3>");
        for probe in &incident.probes {
            let _ = write!(
                out,
                "<h4>{}</h4><table border=\"1\" cellpadding=\"4\"><tr><th>At</th><th>Result</th><th>Message</th></tr>",
                e(&probe.probe)
            );
            for r in &probe.results {
                let _ = write!(out, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", e(&r.at.to_string()), pass_fail(r.passed), e(&r.message));
            }
            let _ = write!(out, "</table>");
        }
    }

    let _ = write!(out, "<h3>Repair attempts</h3><table border=\"1\" cellpadding=\"4\">");
    let _ = write!(out, "<tr><th>#</th><th>Step</th><th>Started</th><th>Ended</th><th>Outcome</th><th>Reason</th></tr>");
    for a in &incident.attempts {
        let outcome = if a.executed { a.outcome_text().to_string() } else { format!("{} (not executed)", a.outcome_text()) };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.attempt,
            e(a.step.as_str()),
            e(&a.started_at.to_string()),
            e(&ended(a)),
            e(&outcome),
            e(&a.reason)
        );
    }
    let _ = write!(out, "</table></body></html>");
    out
}

/// The incident as JSON (its serde form, camelCase).
pub fn json(incident: &Incident) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(incident)
}

/// The short form chat tools accept: `{"text": "..."}` with a few lines (Slack mrkdwn; Teams shows it as is).
pub fn chat_text(incident: &Incident) -> serde_json::Value {
    serde_json::json!({ "text": chat_line(incident) })
}

/// The text of [`chat_text`]: title, summary, the last attempt and the next action, with `&`, `<`, `>`
/// escaped as Slack requires.
pub fn chat_line(incident: &Incident) -> String {
    let e = escape_slack;
    let mut out = format!("*{}*\n{}", e(&incident.title()), e(&incident.summary));
    if let Some(rule) = &incident.rule {
        let _ = write!(out, "\nRule: {}", e(rule));
    }
    if let Some(last) = incident.attempts.last() {
        let _ =
            write!(out, "\nAttempts: {} (last: #{} {} {})", incident.attempts.len(), last.attempt, last.step.as_str(), last.outcome_text());
    }
    let _ = write!(out, "\nNext: {}", e(&incident.next_action));
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "(none)".to_string() } else { items.join(", ") }
}

fn pass_fail(passed: bool) -> &'static str {
    if passed { "PASS" } else { "FAIL" }
}

fn ended(a: &Attempt) -> String {
    a.ended_at.map_or_else(|| "-".to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{Condition, IncidentKind, NodeDetails, ProbeHistory, ProbeResult, Taint};
    use nodemedic_core::RemediationStep;
    use nodemedic_core::record::StepOutcome;
    use nodemedic_core::time::Time;

    fn manual_incident() -> Incident {
        let mut node = NodeDetails::named("gpu-7");
        node.internal_ips = vec!["10.0.0.7".into()];
        node.external_ips = vec!["203.0.113.7".into()];
        node.labels.insert("pool".into(), "h100<&>".into());
        node.taints.push(Taint { key: "nodemedic.io/repair-manual".into(), value: None, effect: "NoSchedule".into() });
        node.conditions.push(Condition {
            type_: "GpuHealthy".into(),
            status: "False".into(),
            reason: "XidError".into(),
            message: "Xid 79 <fallen off the bus>".into(),
            last_transition: None,
        });
        let attempts = vec![
            Attempt {
                attempt: 1,
                step: RemediationStep::Reboot,
                started_at: Time(1_000),
                ended_at: Some(Time(61_000)),
                outcome: Some(StepOutcome::Failed),
                reason: "GPU count 7 < 8 after reboot".into(),
                executed: true,
            },
            Attempt {
                attempt: 2,
                step: RemediationStep::Manual,
                started_at: Time(62_000),
                ended_at: None,
                outcome: None,
                reason: "ladder exhausted".into(),
                executed: true,
            },
        ];
        let probes = vec![ProbeHistory {
            probe: "dcgm-diag".into(),
            results: vec![ProbeResult { at: Time(500), passed: false, message: "GPU 3 missing".into() }],
        }];
        Incident::for_node(IncidentKind::NodeManual, "gpu-default", node, 2, Time(62_000))
            .with_rule("gpu-count")
            .with_summary("GPU count 7 < 8 <script>")
            .with_attempts(attempts)
            .with_probes(probes, 5)
    }

    #[test]
    fn the_text_report_carries_node_details_probes_and_every_attempt() {
        let report = text(&manual_incident());
        for expected in [
            "[critical] NodeManual: gpu-7 (policy gpu-default)",
            "Rule fired:    gpu-count",
            "Internal IPs: 10.0.0.7",
            "External IPs: 203.0.113.7",
            "pool=h100<&>",
            "nodemedic.io/repair-manual:NoSchedule",
            "GpuHealthy=False reason=XidError message=Xid 79 <fallen off the bus>",
            "1970-01-01T00:00:00.500Z FAIL GPU 3 missing",
            "#1 reboot started 1970-01-01T00:00:01Z ended 1970-01-01T00:01:01Z outcome failed: GPU count 7 < 8 after reboot",
            "#2 manual started 1970-01-01T00:01:02Z ended - outcome in progress: ladder exhausted",
            "Next action:   Inspect and repair the node by hand",
            "Key:           gpu-7/NodeManual/2",
        ] {
            assert!(report.contains(expected), "missing {expected:?} in\n{report}");
        }
    }

    #[test]
    fn the_html_report_escapes_everything_from_the_node() {
        let report = html(&manual_incident());
        assert!(report.contains("GPU count 7 &lt; 8 &lt;script&gt;"), "{report}");
        assert!(report.contains("pool=h100&lt;&amp;&gt;"));
        assert!(report.contains("Xid 79 &lt;fallen off the bus&gt;"));
        assert!(!report.contains("<script>"));
        assert!(report.contains("<td>reboot</td>"));
        assert!(report.contains("<td>in progress</td>"));
        assert!(report.contains("<h3>Node gpu-7</h3>"));
    }

    #[test]
    fn the_json_form_is_camel_case_and_round_trips() -> Result<(), serde_json::Error> {
        let incident = manual_incident();
        let rendered = json(&incident)?;
        assert!(rendered.contains("\"internalIps\""));
        assert!(rendered.contains("\"nextAction\""));
        assert!(rendered.contains("\"kind\": \"NodeManual\""));
        assert!(rendered.contains("\"type\": \"GpuHealthy\""));
        let back: Incident = serde_json::from_str(&rendered)?;
        assert_eq!(back, incident);
        Ok(())
    }

    #[test]
    fn the_chat_form_is_a_short_escaped_text_field() {
        let value = chat_text(&manual_incident());
        let text = value["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("*[critical] NodeManual: gpu-7 (policy gpu-default)*"), "{text}");
        assert!(text.contains("GPU count 7 &lt; 8 &lt;script&gt;"));
        assert!(text.contains("Attempts: 2 (last: #2 manual in progress)"));
        assert!(text.contains("Rule: gpu-count"));
        assert_eq!(value.as_object().map(|o| o.len()), Some(1));
    }
}
