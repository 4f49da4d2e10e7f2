//! An incremental fleet index for long-running callers (the controller's `FleetCache`).
//!
//! It holds the observed nodes and remembers each node's pass-1 summary between decisions, so a
//! decision re-evaluates only nodes whose observation changed, nodes with records, and nodes whose
//! verdict changes with time (a rule's duration elapsing, evidence turning stale). The decision is
//! exactly the one [`crate::decide`] makes over the same nodes (a property test holds it to that).

use crate::engine::{Decision, NodeSummary, Pass1Cache, RecordChange, apply, decide_with};
use crate::observe::NodeObservation;
use crate::policy::Policy;
use crate::record::Records;
use crate::time::Time;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct FleetIndex {
    nodes: Vec<NodeObservation>,
    slots: HashMap<String, usize>,
    summaries: Vec<Option<NodeSummary>>,
    reasons: Vec<u8>,
    had_record: HashSet<String>,
    /// The policy and time the summaries were made for; a different policy or an earlier time
    /// invalidates them all.
    policy: Option<Policy>,
    last_now: Option<Time>,
}

impl FleetIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeObservation>) -> Self {
        let mut index = Self::new();
        for n in nodes {
            index.upsert(n);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[NodeObservation] {
        &self.nodes
    }

    pub fn get(&self, name: &str) -> Option<&NodeObservation> {
        self.slots.get(name).map(|&i| &self.nodes[i])
    }

    /// Mutable access; the node is re-evaluated at the next decision.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut NodeObservation> {
        let i = *self.slots.get(name)?;
        self.invalidate(i);
        Some(&mut self.nodes[i])
    }

    /// Adds or replaces a node (a watch event).
    pub fn upsert(&mut self, node: NodeObservation) {
        match self.slots.get(&node.name) {
            Some(&i) => {
                self.invalidate(i);
                self.nodes[i] = node;
            }
            None => {
                self.slots.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(node);
                self.summaries.push(None);
            }
        }
    }

    /// Removes a node (a delete event); its record is dropped at the next decision.
    pub fn remove(&mut self, name: &str) -> Option<NodeObservation> {
        let i = self.slots.remove(name)?;
        let removed = self.nodes.swap_remove(i);
        self.summaries.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            // The last node moved into this slot; its per-slot reasons are rewritten when it is
            // re-evaluated.
            self.slots.insert(moved.name.clone(), i);
            self.invalidate(i);
        }
        Some(removed)
    }

    fn invalidate(&mut self, i: usize) {
        if let Some(s) = self.summaries.get_mut(i) {
            *s = None;
        }
    }

    /// Decides over the indexed nodes, re-evaluating only what may have changed.
    pub fn decide(&mut self, policy: &Policy, records: &Records, now: Time) -> Decision {
        let stale_policy = self.policy.as_ref() != Some(policy);
        let time_went_back = self.last_now.is_some_and(|t| now < t);
        if stale_policy || time_went_back {
            self.summaries.iter_mut().for_each(|s| *s = None);
            self.reasons.clear();
            self.policy = Some(policy.clone());
        }
        self.last_now = Some(now);
        let cache =
            Pass1Cache { summaries: &mut self.summaries, reasons: &mut self.reasons, had_record: &mut self.had_record, slots: &self.slots };
        decide_with(policy, &self.nodes, records, now, Some(cache))
    }

    /// Applies a decision as the controller's writes would: records, and (unless monitor-only) taints.
    pub fn apply(&mut self, decision: &Decision, records: &mut Records) {
        for a in &decision.actions {
            if let Some(&i) = self.slots.get(a.node()) {
                self.invalidate(i);
            }
        }
        for c in &decision.record_changes {
            let name = match c {
                RecordChange::Upsert(r) => r.node.as_str(),
                RecordChange::Delete(n) => n.as_str(),
            };
            if let Some(&i) = self.slots.get(name) {
                self.invalidate(i);
            }
        }
        apply(decision, &mut self.nodes, records);
    }
}
