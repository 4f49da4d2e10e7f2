//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), evaluated without a client library.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Node labels as the engine sees them.
pub type Labels = BTreeMap<String, String>;

/// The value of label `key`, as `labels.get(key)`. Scans comparing lengths first: a node has a few
/// dozen labels at most, and a scan reads only the bytes of keys as long as `key`, where a tree search
/// compares (and so loads from memory) several keys. The engine reads a handful of labels from every
/// node on every decision; on a fleet spread over the heap this matters (docs/benchmarks.md).
pub fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a String> {
    labels.iter().find_map(|(k, v)| (k.len() == key.len() && k == key).then_some(v))
}

/// A label selector with Kubernetes semantics: all terms are AND'ed; an empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| label(labels, k) == Some(v)) && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Structural problems, each as (field, reason), for policy validation.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, r) in self.match_expressions.iter().enumerate() {
            let field = format!("matchExpressions[{i}].values");
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                    out.push((field, format!("operator {:?} needs at least one value", r.operator)))
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if !r.values.is_empty() => {
                    out.push((field, format!("operator {:?} takes no values", r.operator)))
                }
                _ => {}
            }
            if r.key.is_empty() {
                out.push((format!("matchExpressions[{i}].key"), "must not be empty".into()));
            }
        }
        out
    }
}

impl LabelSelectorRequirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = label(labels, &self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_finds_what_get_finds() {
        let l = labels(&[("nvidia.com/gpu.count", "8"), ("nodemedic.io/exclude", "true"), ("zone", "a"), ("", "empty")]);
        for key in ["nvidia.com/gpu.count", "nodemedic.io/exclude", "nodemedic.io/exclude2", "zone", "zona", "", "absent"] {
            assert_eq!(label(&l, key), l.get(key), "{key}");
        }
    }

    #[test]
    fn empty_selector_matches_every_node() {
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn medik8s_worker_selector_matches_only_workers() {
        let sel: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions":[{"key":"node-role.kubernetes.io/worker","operator":"Exists"}]}"#).unwrap();
        assert!(sel.matches(&labels(&[("node-role.kubernetes.io/worker", "")])));
        assert!(!sel.matches(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
    }

    #[test]
    fn not_in_matches_absent_labels_and_in_needs_the_label() {
        let sel = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![
                LabelSelectorRequirement { key: "zone".into(), operator: SelectorOperator::NotIn, values: vec!["b".into()] },
                LabelSelectorRequirement { key: "pool".into(), operator: SelectorOperator::In, values: vec!["gpu".into()] },
            ],
        };
        assert!(sel.matches(&labels(&[("pool", "gpu")])));
        assert!(!sel.matches(&labels(&[("pool", "gpu"), ("zone", "b")])));
        assert!(!sel.matches(&labels(&[("zone", "a")])));
    }

    #[test]
    fn in_without_values_is_a_problem() {
        let sel = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement { key: "k".into(), operator: SelectorOperator::In, values: vec![] }],
        };
        assert_eq!(sel.problems().len(), 1);
    }
}
