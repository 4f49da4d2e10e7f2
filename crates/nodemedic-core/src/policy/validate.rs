//! Reading a policy from YAML or JSON and refusing one that cannot be run, naming the field.

use super::*;

/// A policy field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The document could not be read as a policy (syntax, unknown field or step name, bad duration).
    #[error("policy could not be read: {0}")]
    Parse(String),
    /// It was read, but some fields are invalid.
    #[error("policy is invalid: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

impl Policy {
    /// Reads a policy from YAML (or JSON, which is YAML) and validates it.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        // A repeated key is refused first, with its path (crate::input).
        crate::input::check_yaml_keys(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        // The path of the bad field (`rules[0].duration`) leads the message; serde-saphyr's own
        // message adds the line and column.
        let mut path = None;
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        });
        let policy: Policy = parsed.map_err(|e| {
            PolicyError::Parse(match path.filter(|p| p != ".") {
                Some(p) => format!("{p}: {e}"),
                None => e.to_string(),
            })
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy from JSON with the path of a bad field in the error, and validates it.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        crate::input::check_json_keys(text.as_bytes()).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let de = &mut serde_json::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError::Parse(format!("{path}: {}", e.inner()))
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut errs = Vec::new();
        self.selection_problems(&mut errs);
        self.ladder_problems(&mut errs);
        self.gate_problems(&mut errs);
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        // Parsing refuses negative durations; a policy built in code (the simulator, tests, a
        // library caller) is held to the same rule here.
        for (field, d) in self.durations() {
            if d < Duration::ZERO {
                err(field, format!("{d} is negative"));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(PolicyError::Invalid(errs)) }
    }

    /// The selector and the rules: each rule named once, with exactly one source.
    fn selection_problems(&self, errs: &mut Vec<FieldError>) {
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        for (f, r) in self.selector.problems() {
            err(format!("selector.{f}"), r);
        }
        if self.rules.is_empty() {
            err("rules".into(), "at least one unhealthy rule is needed".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if rule.name.trim().is_empty() {
                err(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(rule.name.as_str()) {
                err(format!("{at}.name"), format!("`{}` is used by another rule", rule.name));
            }
            let sources = [rule.condition.is_some(), rule.gpu_count.is_some(), rule.check.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                err(at.clone(), "exactly one of condition, gpuCount, check must be set".into());
            }
            if let Some(c) = &rule.condition
                && c.type_.trim().is_empty()
            {
                err(format!("{at}.condition.type"), "must not be empty".into());
            }
            if let Some(c) = &rule.check
                && let Err(e) = crate::probe::check_condition_type(c)
            {
                err(format!("{at}.check.name"), e.to_string());
            }
            if let Some(g) = &rule.gpu_count
                && g.vendors.is_empty()
            {
                err(format!("{at}.gpuCount.vendors"), "at least one vendor is needed".into());
            }
            if let Some(t) = &rule.effect.taint
                && t.trim().is_empty()
            {
                err(format!("{at}.effect.taint"), "must not be empty".into());
            }
            if rule.stale_after == Some(Duration::ZERO) {
                err(format!("{at}.staleAfter"), "must be more than zero (omit it to never treat evidence as stale)".into());
            }
        }
    }

    /// The ladder, the drain policy and the node classes its timeouts name.
    fn ladder_problems(&self, errs: &mut Vec<FieldError>) {
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        if self.ladder.is_empty() {
            err("ladder".into(), "the remediation ladder needs at least one step".into());
        }
        for (f, r) in self.drain.problems() {
            err(f, r);
        }
        if self.drain.when_blocked == crate::drain::WhenDrainBlocked::Escalate
            && self.ladder.last().is_some_and(|l| l.step != RemediationStep::Manual)
        {
            err("drain.whenBlocked".into(), "escalate hands a blocked drain to the ladder's manual step; the ladder has none".into());
        }
        let class_names: std::collections::BTreeSet<&str> =
            self.node_classes.iter().map(|c| c.name.as_str()).chain([GPU_NODE_CLASS, STANDARD_NODE_CLASS]).collect();
        for (i, c) in self.node_classes.iter().enumerate() {
            if c.name.trim().is_empty() {
                err(format!("nodeClasses[{i}].name"), "must not be empty".into());
            }
            for (f, r) in c.selector.problems() {
                err(format!("nodeClasses[{i}].selector.{f}"), r);
            }
        }
        for (i, step) in self.ladder.iter().enumerate() {
            let at = format!("ladder[{i}]");
            for class in step.timeout_by_class.keys() {
                if !class_names.contains(class.as_str()) {
                    err(
                        format!("{at}.timeoutByClass.{class}"),
                        format!("unknown node class `{class}` (known: {})", class_names.iter().copied().collect::<Vec<_>>().join(", ")),
                    );
                }
            }
            if step.step == RemediationStep::Manual && i + 1 != self.ladder.len() {
                err(at.clone(), "manual must be the last step: nothing runs after a person takes over".into());
            }
            match (&step.template, step.step) {
                (None, RemediationStep::External) => {
                    err(format!("{at}.template"), "external needs a template: apiVersion, kind, name and namespace".into())
                }
                (Some(t), RemediationStep::External) => {
                    for (f, r) in t.problems() {
                        err(format!("{at}.template.{f}"), r);
                    }
                }
                (Some(_), other) => err(format!("{at}.template"), format!("only an external step takes a template, not {other}")),
                (None, _) => {}
            }
            if step.completion == Completion::FixedWait && !step.step.is_repair() && step.step != RemediationStep::Drain {
                err(format!("{at}.completion"), format!("fixedWait applies to drain and repair steps, not {}", step.step));
            }
        }
    }

    /// The gates: percentages, the circuit breaker, the retry budget and maintenance windows.
    fn gate_problems(&self, errs: &mut Vec<FieldError>) {
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        let g = &self.gates;
        if g.min_healthy.is_some() && g.max_unhealthy.is_some() {
            err("gates".into(), "set minHealthy or maxUnhealthy, not both".into());
        }
        for (name, v) in [
            ("gates.minHealthy", g.min_healthy),
            ("gates.maxUnhealthy", g.max_unhealthy),
            ("gates.maxConcurrent", g.max_concurrent),
            ("gates.maxConcurrentPerPool", g.max_concurrent_per_pool),
            ("gates.circuitBreaker.maxUnhealthy", g.circuit_breaker.as_ref().map(|b| b.max_unhealthy)),
        ] {
            if let Some(IntOrPercent::Percent(p)) = v
                && p > 100
            {
                err(name.into(), format!("{p}% is over 100%"));
            }
        }
        if let Some(b) = &g.circuit_breaker
            && b.window == Duration::ZERO
        {
            err("gates.circuitBreaker.window".into(), "must be more than zero".into());
        }
        if let Some(r) = &g.retry_budget {
            if r.max_remediations == 0 {
                err("gates.retryBudget.maxRemediations".into(), "must be at least 1".into());
            }
            if r.window == Duration::ZERO {
                err("gates.retryBudget.window".into(), "must be more than zero".into());
            }
        }
        for (i, w) in g.maintenance_windows.iter().enumerate() {
            if w.start_millis().is_none() {
                err(format!("gates.maintenanceWindows[{i}].start"), format!("`{}` is not a time of day in HH:MM", w.start));
            }
            if w.duration == Duration::ZERO {
                err(format!("gates.maintenanceWindows[{i}].duration"), "must be more than zero".into());
            }
        }
    }

    /// Every duration in the policy with its field path.
    fn durations(&self) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            out.push((format!("rules[{i}].duration"), rule.duration));
            if let Some(s) = rule.stale_after {
                out.push((format!("rules[{i}].staleAfter"), s));
            }
        }
        for (i, step) in self.ladder.iter().enumerate() {
            out.push((format!("ladder[{i}].timeout"), step.timeout));
            out.push((format!("ladder[{i}].settle"), step.settle));
            out.push((format!("ladder[{i}].verifyTimeout"), step.verify_timeout));
            out.extend(step.timeout_by_class.iter().map(|(c, d)| (format!("ladder[{i}].timeoutByClass.{c}"), *d)));
        }
        let g = &self.gates;
        if let Some(b) = &g.circuit_breaker {
            out.push(("gates.circuitBreaker.window".into(), b.window));
            out.push(("gates.circuitBreaker.cooldown".into(), b.cooldown));
        }
        if let Some(r) = &g.retry_budget {
            out.push(("gates.retryBudget.window".into(), r.window));
        }
        out.extend(g.maintenance_windows.iter().enumerate().map(|(i, w)| (format!("gates.maintenanceWindows[{i}].duration"), w.duration)));
        out
    }

    pub fn taint_key(&self, name: &str) -> String {
        if name.contains('/') { name.to_string() } else { format!("{}{}", self.taint_prefix, name) }
    }

    pub fn step_taint(&self, step: RemediationStep) -> String {
        self.taint_key(step.taint_name())
    }

    /// The node class used for per-class timeouts: the first matching custom class, else `gpu` for
    /// nodes with GPUs (by label or allocatable), else `standard`.
    pub fn node_class<'a>(&'a self, labels: &Labels, has_gpus: bool) -> &'a str {
        for c in &self.node_classes {
            if c.selector.matches(labels) {
                return &c.name;
            }
        }
        if has_gpus { GPU_NODE_CLASS } else { STANDARD_NODE_CLASS }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!("rules:\n- name: ready\n  condition: {{type: Ready, status: \"False\"}}\n  duration: 5m\nladder:\n- step: reboot\n{extra}")
    }

    #[test]
    fn a_minimal_policy_reads_with_safe_defaults() {
        let p = Policy::from_yaml(&minimal("")).unwrap();
        assert!(p.monitor_only, "monitor-only is on unless turned off (seed 003)");
        assert_eq!(p.exclude_label, "nodemedic.io/exclude");
        assert_eq!(p.step_taint(RemediationStep::Reboot), "nodemedic.io/repair-reboot");
        assert_eq!(p.ladder[0].timeout, Duration::from_mins(10));
        assert_eq!(p.rules[0].duration, Duration::from_mins(5));
    }

    #[test]
    fn seed_000_bare_taint_keys_come_from_an_empty_prefix() {
        let p = Policy::from_yaml(&minimal("taintPrefix: \"\"\n")).unwrap();
        assert_eq!(p.step_taint(RemediationStep::Reimage), "repair-reimage");
        assert_eq!(p.taint_key("slow-network"), "slow-network");
    }

    #[test]
    fn min_healthy_over_100_percent_is_refused_naming_the_field() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: \"120%\"}\n")).unwrap_err();
        assert_eq!(err.to_string(), "policy is invalid: gates.minHealthy: 120% is over 100%");
    }

    #[test]
    fn both_min_healthy_and_max_unhealthy_are_refused() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: 2, maxUnhealthy: \"10%\"}\n")).unwrap_err();
        assert!(err.to_string().contains("gates: set minHealthy or maxUnhealthy, not both"), "{err}");
    }

    #[test]
    fn negative_durations_are_refused() {
        let text = minimal("").replace("duration: 5m", "duration: -5m");
        let err = Policy::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("rules[0].duration") && err.contains("negative"), "{err}");
        let json =
            r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"},"duration":"-1s"}],"ladder":[{"step":"reboot"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("rules[0].duration") && err.contains("negative"), "{err}");
    }

    #[test]
    fn negative_durations_built_in_code_are_refused_naming_the_field() {
        let mut p = Policy::from_yaml(&minimal("")).unwrap();
        p.rules[0].duration = Duration(-1_000);
        p.ladder[0].settle = Duration(-5);
        let Err(PolicyError::Invalid(errs)) = p.validate() else { panic!("expected invalid") };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rules[0].duration", "ladder[0].settle"]);
    }

    #[test]
    fn a_badly_typed_yaml_field_is_named_by_its_path() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: lots}\n")).unwrap_err().to_string();
        assert!(err.contains("gates.minHealthy"), "{err}");
        let err = Policy::from_yaml(&minimal("").replace("status: \"False\"", "status: Maybe")).unwrap_err().to_string();
        assert!(err.contains("rules[0].condition.status") && err.contains("Maybe"), "{err}");
    }

    #[test]
    fn an_empty_ladder_is_refused() {
        let text = "rules:\n- name: ready\n  condition: {type: Ready, status: \"False\"}\nladder: []\n";
        let err = Policy::from_yaml(text).unwrap_err();
        assert!(err.to_string().contains("ladder: the remediation ladder needs at least one step"), "{err}");
    }

    #[test]
    fn unknown_step_names_are_refused() {
        let json = r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"}}],"ladder":[{"step":"rebot"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("ladder[0].step") && err.contains("unknown variant `rebot`"), "{err}");
        let err = Policy::from_yaml(&minimal("").replace("step: reboot", "step: rebot")).unwrap_err().to_string();
        assert!(err.contains("ladder[0].step") && err.contains("rebot"), "{err}");
    }

    #[test]
    fn a_policy_that_repeats_a_key_is_refused_naming_the_key_and_where() {
        let json =
            r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"}}],"ladder":[{"step":"reboot","step":"reimage"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("duplicate key `step` in `ladder[0]`"), "{err}");
        let err = Policy::from_yaml(&minimal("taintPrefix: a/\ntaintPrefix: b/\n")).unwrap_err().to_string();
        assert!(err.contains("duplicate key `taintPrefix` at the top level"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Policy::from_yaml(&minimal("minHealty: 3\n")).unwrap_err();
        assert!(err.to_string().contains("minHealty"), "{err}");
    }

    #[test]
    fn a_rule_needs_exactly_one_source() {
        let text = "rules:\n- name: both\n  condition: {type: Ready, status: \"False\"}\n  check: {name: gpu}\nladder:\n- step: reboot\n";
        let err = Policy::from_yaml(text).unwrap_err();
        assert!(err.to_string().contains("rules[0]: exactly one of condition, gpuCount, check"), "{err}");
    }

    #[test]
    fn manual_must_be_last_and_classes_must_exist() {
        let text = "rules:\n- name: r\n  check: {name: gpu}\nladder:\n- step: manual\n- step: reboot\n  timeoutByClass: {tpu: 1h}\n";
        let Err(PolicyError::Invalid(errs)) = Policy::from_yaml(text) else { panic!("expected invalid") };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["ladder[0]", "ladder[1].timeoutByClass.tpu"]);
    }

    #[test]
    fn min_healthy_rounds_up_like_medik8s() {
        assert_eq!(IntOrPercent::Percent(51).scaled_up(6), 4);
        assert_eq!(IntOrPercent::Count(3).scaled_up(6), 3);
        assert!(IntOrPercent::Percent(20).exceeded_by(4, 16));
        assert!(!IntOrPercent::Percent(25).exceeded_by(4, 16));
    }

    #[test]
    fn maintenance_window_times_are_checked() {
        let err = Policy::from_yaml(&minimal("gates:\n  maintenanceWindows:\n  - {start: \"25:00\", duration: 1h}\n")).unwrap_err();
        assert!(err.to_string().contains("gates.maintenanceWindows[0].start"), "{err}");
    }
}
