//! Time during which the controller could not observe the cluster (its API server did not answer)
//! does not count against the deadline of a step in flight: a node's report written during the outage,
//! or just after it, could not have been seen. The controller says when it lost and regained sight
//! ([`Outage`]); [`account_for_outages`] moves the deadlines on the records, which are then persisted,
//! so a new leader sees the same deadlines. Each record remembers up to when outages were counted, so
//! an outage is counted once however often it is reported.

use crate::record::{ActiveRemediation, NodeRecord, Records, Stage};
use crate::time::{Duration, Time};

/// A span during which the controller could not observe the cluster: from the last moment it
/// could, to the moment it could again (or to now, while it still cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from: Time,
    pub to: Time,
}

/// Records whose step deadline moves because of `outages`, already changed; an empty list when
/// none does. For each outage that began before the step's deadline, the deadline moves on by the
/// unobserved time within the step (not counted before), and is at least `grace` after sight
/// returned, so a report the node sends on reconnecting is seen. A step that was already overdue
/// when sight was lost is left alone.
pub fn account_for_outages(records: &Records, outages: &[Outage], grace: Duration) -> Vec<NodeRecord> {
    let mut sorted: Vec<Outage> = outages.iter().copied().filter(|o| o.to > o.from).collect();
    sorted.sort_by_key(|o| (o.from, o.to));
    let mut changed = Vec::new();
    for record in records.nodes.values() {
        let Some(active) = record.active.as_ref() else { continue };
        let mut moved = active.clone();
        if extend_deadline(&mut moved, &sorted, grace) {
            changed.push(NodeRecord { active: Some(moved), ..record.clone() });
        }
    }
    changed
}

/// The deadline a step waits for, where the start of what it waits for is, and a setter.
fn deadline_of(a: &mut ActiveRemediation) -> Option<(Time, &mut Time)> {
    match &mut a.stage {
        Stage::Executing => {
            let start = a.step_started_at;
            a.deadline.as_mut().map(|d| (start, d))
        }
        Stage::Verifying { completed_at, verify_deadline, .. } => Some((*completed_at, verify_deadline)),
        Stage::AwaitingNext { .. } => None,
    }
}

fn extend_deadline(a: &mut ActiveRemediation, outages: &[Outage], grace: Duration) -> bool {
    let counted = a.unobserved_until;
    let mut unobserved = a.unobserved;
    let mut until = counted;
    let Some((start, deadline)) = deadline_of(a) else { return false };
    let mut changed = false;
    for o in outages {
        let counted_from = until.map_or(start, |u| u.max(start));
        if o.to <= counted_from || o.from >= *deadline {
            continue;
        }
        let lost = o.to.since(o.from.max(counted_from));
        *deadline = (*deadline + lost).max(o.to + grace);
        unobserved = unobserved + lost;
        until = Some(o.to);
        changed = true;
    }
    if changed {
        a.unobserved = unobserved;
        a.unobserved_until = until;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RemediationStep;
    use crate::record::Phase;

    const GRACE: Duration = Duration::from_secs(30);

    fn t(s: i64) -> Time {
        Time(1_795_000_000_000 + s * 1000)
    }

    fn rebooting(started: i64, timeout: i64) -> Records {
        let active = ActiveRemediation {
            trigger: "gpu".into(),
            reason: "GPUProblem".into(),
            started_at: t(started),
            unhealthy_since: t(started),
            step_index: 0,
            step: RemediationStep::Reboot,
            step_started_at: t(started),
            deadline: Some(t(started + timeout)),
            stage: Stage::Executing,
            executed: true,
            boot_id_at_start: Some("boot-1".into()),
            notified_at: None,
            drain_held_at: None,
            fault_class: None,
            gpu: None,
            unobserved: Duration::ZERO,
            unobserved_until: None,
        };
        let mut records = Records::default();
        records
            .nodes
            .insert("gpu-1".into(), NodeRecord { phase: Phase::Remediating, active: Some(active), attempt: 1, ..NodeRecord::new("gpu-1") });
        records
    }

    fn deadline(records: &[NodeRecord]) -> Option<Time> {
        records.first().and_then(|r| r.active.as_ref()).and_then(|a| a.deadline)
    }

    /// Issue 16's case: the API server paused 64 s during a reboot whose timeout then passed.
    #[test]
    fn an_outage_during_a_reboot_moves_its_deadline_by_the_unobserved_time() {
        let records = rebooting(0, 60);
        let changed = account_for_outages(&records, &[Outage { from: t(30), to: t(94) }], GRACE);
        assert_eq!(deadline(&changed), Some(t(124)), "60 s timeout + 64 s unobserved");
        let a = changed[0].active.clone().unwrap_or_else(|| unreachable!());
        assert_eq!((a.unobserved, a.unobserved_until), (Duration::from_secs(64), Some(t(94))));
    }

    #[test]
    fn sight_regained_just_before_the_deadline_leaves_at_least_the_grace_period() {
        let records = rebooting(0, 60);
        let changed = account_for_outages(&records, &[Outage { from: t(55), to: t(58) }], GRACE);
        assert_eq!(deadline(&changed), Some(t(88)), "max(60 + 3, 58 + 30)");
    }

    #[test]
    fn the_same_outage_reported_again_is_counted_once_also_by_a_new_leader() {
        let records = rebooting(0, 60);
        let outage = Outage { from: t(30), to: t(94) };
        let changed = account_for_outages(&records, &[outage], GRACE);
        let mut after = records.clone();
        for r in changed {
            after.nodes.insert(r.node.clone(), r);
        }
        // A new leader that saw the same outage reads the persisted record: nothing moves again.
        assert!(account_for_outages(&after, &[outage], GRACE).is_empty());
        // An outage still open at the first pass and closed later counts only its new part.
        let open = account_for_outages(&records, &[Outage { from: t(30), to: t(40) }], GRACE);
        let mut after = records.clone();
        for r in open {
            after.nodes.insert(r.node.clone(), r);
        }
        let closed = account_for_outages(&after, &[Outage { from: t(30), to: t(94) }], GRACE);
        assert_eq!(deadline(&closed), Some(t(124)));
    }

    #[test]
    fn an_outage_before_the_step_counts_only_from_its_start() {
        let records = rebooting(100, 60);
        let changed = account_for_outages(&records, &[Outage { from: t(90), to: t(110) }], GRACE);
        assert_eq!(deadline(&changed), Some(t(170)), "only the 10 s within the step; 110 + 30 is earlier");
    }

    #[test]
    fn a_step_already_overdue_when_sight_was_lost_is_not_given_more_time() {
        let records = rebooting(0, 60);
        assert!(account_for_outages(&records, &[Outage { from: t(61), to: t(120) }], GRACE).is_empty());
    }

    #[test]
    fn a_step_waiting_for_its_gates_or_for_a_person_has_no_deadline_to_move() {
        let mut records = rebooting(0, 60);
        if let Some(a) = records.nodes.get_mut("gpu-1").and_then(|r| r.active.as_mut()) {
            a.stage = Stage::AwaitingNext { ended_at: t(10) };
        }
        assert!(account_for_outages(&records, &[Outage { from: t(20), to: t(90) }], GRACE).is_empty());
        if let Some(a) = records.nodes.get_mut("gpu-1").and_then(|r| r.active.as_mut()) {
            (a.stage, a.step, a.deadline) = (Stage::Executing, RemediationStep::Manual, None);
        }
        assert!(account_for_outages(&records, &[Outage { from: t(20), to: t(90) }], GRACE).is_empty());
    }

    #[test]
    fn an_outage_while_verifying_moves_the_verification_deadline() {
        let mut records = rebooting(0, 60);
        if let Some(a) = records.nodes.get_mut("gpu-1").and_then(|r| r.active.as_mut()) {
            a.stage = Stage::Verifying { completed_at: t(20), verify_from: t(23), verify_deadline: t(43) };
        }
        let changed = account_for_outages(&records, &[Outage { from: t(25), to: t(40) }], GRACE);
        let stage = changed.first().and_then(|r| r.active.as_ref()).map(|a| a.stage.clone());
        assert_eq!(stage, Some(Stage::Verifying { completed_at: t(20), verify_from: t(23), verify_deadline: t(70) }));
    }
}
