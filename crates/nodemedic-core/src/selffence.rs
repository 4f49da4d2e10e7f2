//! Self-fencing (issue 11 §2, seed 004's "poison pill"): a node agent that has lost the API server
//! asks its peers before it decides anything, and reboots itself only when it is the one cut off.
//! The controller, in turn, may take such a node for fenced only once `safeTimeToAssumeRebooted` has
//! passed, a time computed from the agent's own timeouts with a floor nobody may configure below.
//!
//! Both halves live here so the agent's promise and the controller's reading of it are one contract:
//! [`decide`] is what the agent does, [`SelfFencingPromise`] is what it publishes while it can, and
//! [`self_fenced`] is the controller's rule over that promise.

use crate::observe::NodeObservation;
use crate::policy::ConditionStatus;
use crate::record::{ActiveRemediation, NodeRecord};
use crate::time::{Duration, Time};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The agent's own timeouts: everything that bounds how late after its last contact with the API
/// server it can still be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfFenceTimings {
    /// How long the API server may be out of reach before the agent asks its peers.
    pub api_loss_window: Duration,
    /// How often the agent checks the API server and, once it is lost, asks its peers.
    pub check_interval: Duration,
    /// The deadline of one peer question (all peers are asked at once).
    pub peer_timeout: Duration,
    /// The watchdog device's timeout: how long after the last keepalive the hardware resets the node.
    /// Zero without a watchdog (the reboot syscall is immediate).
    pub watchdog_timeout: Duration,
    /// How long the reboot takes to stop every process on the node once it is triggered.
    pub reboot_time: Duration,
}

impl SelfFenceTimings {
    /// The least `safeTimeToAssumeRebooted` these timeouts allow: the API loss window, two check
    /// intervals (the loss is noticed at the next check, whose API call may take up to its deadline,
    /// half an interval, rounded up to a whole one), the peer question's deadline, the watchdog's
    /// timeout and the reboot. Before this much time after its last contact, the agent may still be
    /// deciding, or its node still be running.
    pub fn floor(&self) -> Duration {
        self.api_loss_window + self.check_interval + self.check_interval + self.peer_timeout + self.watchdog_timeout + self.reboot_time
    }

    fn words(&self) -> String {
        format!(
            "API loss window {} + 2 × check interval {} + peer timeout {} + watchdog timeout {} + reboot time {}",
            self.api_loss_window, self.check_interval, self.peer_timeout, self.watchdog_timeout, self.reboot_time
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SafeTimeError {
    #[error("safeTimeToAssumeRebooted {configured} is below the floor {floor} ({why}); configure at least {floor}")]
    BelowFloor { configured: Duration, floor: Duration, why: String },
}

/// `safeTimeToAssumeRebooted`: the configured value if it is at least the floor, the floor when none
/// is configured; a configured value below the floor is refused, naming the floor.
pub fn safe_time(timings: &SelfFenceTimings, configured: Option<Duration>) -> Result<Duration, SafeTimeError> {
    let floor = timings.floor();
    match configured {
        Some(configured) if configured < floor => Err(SafeTimeError::BelowFloor { configured, floor, why: timings.words() }),
        Some(configured) => Ok(configured),
        None => Ok(floor),
    }
}

/// What a peer agent said about the node that asked, from where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerVerdict {
    /// The peer reaches the API server and nodemedic is not remediating the asking node.
    Healthy,
    /// The peer reaches the API server and nodemedic is remediating the asking node (a step of its
    /// NodeRemediation was executed): the controller counts on it fencing itself.
    Unhealthy,
    /// The peer does not reach the API server either, or could not read the asking node's record.
    Unknown,
}

/// One peer's answer to "can you reach the API server, and how do I look from there?"
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerAnswer {
    /// No answer by the deadline, refused, or an answer that failed authentication.
    Silent,
    Answered {
        api_server_reachable: bool,
        verdict: PeerVerdict,
    },
}

/// What the agent does at one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfFenceDecision {
    Stay(String),
    Reboot(String),
}

impl SelfFenceDecision {
    pub fn reboots(&self) -> bool {
        matches!(self, SelfFenceDecision::Reboot(_))
    }
}

/// The agent's rule. `api_lost_for` is the time since its last successful API call (None: the last
/// call succeeded); `peers` holds one answer per known peer, from the round just asked.
///
/// - Within the API loss window nothing happens.
/// - A peer that reaches the API server and sees nodemedic remediating this node wins: reboot.
/// - A peer that reaches the API server and sees this node healthy: the API server is up and only
///   this node's path to it is broken; the controller sees the node and decides. Stay.
/// - Otherwise no answering peer vouches for this node. If this node and the peers that answered
///   are a majority of the nodes it knows, that is an API-server outage (an outage must not reboot
///   the fleet): stay. If they are a minority — no peer answered, or only a few — this node is on the
///   cut-off side: reboot. Two sides of a partition cannot both be majorities.
pub fn decide(api_lost_for: Option<Duration>, peers: &[PeerAnswer], timings: &SelfFenceTimings) -> SelfFenceDecision {
    let Some(lost) = api_lost_for else { return SelfFenceDecision::Stay("the API server answers".into()) };
    if lost < timings.api_loss_window {
        return SelfFenceDecision::Stay(format!(
            "the API server has been out of reach for {lost}, within the {} window",
            timings.api_loss_window
        ));
    }
    let answered: Vec<(bool, PeerVerdict)> = peers
        .iter()
        .filter_map(|p| match p {
            PeerAnswer::Answered { api_server_reachable, verdict } => Some((*api_server_reachable, *verdict)),
            PeerAnswer::Silent => None,
        })
        .collect();
    let reaching = || answered.iter().filter(|(reachable, _)| *reachable);
    if reaching().any(|(_, v)| *v == PeerVerdict::Unhealthy) {
        return SelfFenceDecision::Reboot(format!(
            "the API server has been out of reach for {lost}, and a peer that reaches it says nodemedic is remediating this node"
        ));
    }
    let vouching = reaching().filter(|(_, v)| *v == PeerVerdict::Healthy).count();
    if vouching > 0 {
        return SelfFenceDecision::Stay(format!(
            "the API server has been out of reach for {lost}, but {vouching} peer(s) reach it and see this node healthy"
        ));
    }
    let (known, heard) = (peers.len(), answered.len());
    // This node plus the peers that answered, out of this node plus every known peer.
    if 2 * (heard + 1) > known + 1 {
        return SelfFenceDecision::Stay(format!(
            "the API server has been out of reach for {lost}; {heard} of {known} peer(s) answered and none reaches it: an API-server outage, not an isolation"
        ));
    }
    SelfFenceDecision::Reboot(format!(
        "the API server has been out of reach for {lost} and only {heard} of {known} peer(s) answered, none reaching it: this node is the one cut off"
    ))
}

/// The verdict a peer gives about a node whose NodeRemediation it read: unhealthy while a step of an
/// active remediation was executed (the controller acts on the node and may count on it fencing
/// itself), healthy otherwise.
pub fn verdict_from_record(record: Option<&NodeRecord>) -> PeerVerdict {
    if record.and_then(|r| r.active.as_ref()).is_some_and(|a| a.executed) { PeerVerdict::Unhealthy } else { PeerVerdict::Healthy }
}

/// The annotation on the agent's Lease ([`lease_name`]) that carries its [`SelfFencingPromise`]
/// as JSON; the Lease's `renewTime` is its last contact with the API server.
pub const PROMISE_ANNOTATION: &str = "nodemedic.io/self-fencing";

/// The name of a node's self-fencing Lease (in the namespace the agent and the controller share).
pub fn lease_name(node: &str) -> String {
    format!("self-fencing-{node}")
}

/// What the agent publishes while it reaches the API server (on its Lease): its timeouts, the safe
/// time it computed from them, whether a watchdog is armed and how many peers it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfFencingPromise {
    pub timings: SelfFenceTimings,
    pub safe_time_to_assume_rebooted: Duration,
    /// A watchdog device is open and fed: if the agent dies, the node resets anyway.
    pub watchdog: bool,
    pub peers: u32,
}

/// The promise as the controller observes it, with the agent's last contact (its Lease's renewTime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfFencingObservation {
    pub promise: SelfFencingPromise,
    pub last_contact: Time,
}

/// Why a published promise cannot be counted on, if it cannot.
pub fn promise_flaw(promise: &SelfFencingPromise) -> Option<String> {
    if !promise.watchdog {
        // Without a watchdog, an agent that died cannot reboot anything.
        return Some("the agent has no watchdog armed".into());
    }
    if promise.peers == 0 {
        return Some("the agent knows no peers, so it cannot tell an isolation from an API-server outage".into());
    }
    safe_time(&promise.timings, Some(promise.safe_time_to_assume_rebooted)).err().map(|e| e.to_string())
}

/// The controller's rule: the node in remediation (a step was executed) has fenced itself when its
/// agent promised to (with a watchdog, knowing peers, with a safe time at or above the floor), it is
/// not Ready, and `safeTimeToAssumeRebooted` has passed since both its agent's last contact with the
/// API server and the start of the step (from then on its peers tell it that it is being remediated).
///
/// `ready_majority`: more than half of the fleet is Ready. A group of nodes cut off together, seeing
/// each other, stays up when it is a majority of the peer set ([`decide`] takes that for an API-server
/// outage); with a Ready majority on the controller's side, no cut-off group can be one.
pub fn self_fenced(active: &ActiveRemediation, obs: &NodeObservation, now: Time, ready_majority: bool) -> Option<String> {
    let sf = obs.self_fencing.as_ref()?;
    if !active.executed || !ready_majority || promise_flaw(&sf.promise).is_some() {
        return None;
    }
    let ready = obs.condition("Ready").is_some_and(|c| c.status == ConditionStatus::True);
    let since = sf.last_contact.max(active.step_started_at);
    let safe = sf.promise.safe_time_to_assume_rebooted;
    (!ready && now >= since + safe).then(|| {
        format!(
            "the node's agent self-fences: it has not reached the API server since {} and safeTimeToAssumeRebooted {safe} has passed since {since}",
            sf.last_contact
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> SelfFenceTimings {
        SelfFenceTimings {
            api_loss_window: Duration::from_secs(60),
            check_interval: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(5),
            watchdog_timeout: Duration::from_secs(60),
            reboot_time: Duration::from_secs(15),
        }
    }

    const LOST: Option<Duration> = Some(Duration::from_secs(61));
    const SILENT: PeerAnswer = PeerAnswer::Silent;
    const OUTAGE: PeerAnswer = PeerAnswer::Answered { api_server_reachable: false, verdict: PeerVerdict::Unknown };
    const HEALTHY: PeerAnswer = PeerAnswer::Answered { api_server_reachable: true, verdict: PeerVerdict::Healthy };
    const UNHEALTHY: PeerAnswer = PeerAnswer::Answered { api_server_reachable: true, verdict: PeerVerdict::Unhealthy };

    #[test]
    fn an_agent_cut_off_from_the_api_server_and_every_peer_reboots() {
        assert!(decide(LOST, &[SILENT, SILENT], &timings()).reboots());
    }

    #[test]
    fn nothing_happens_within_the_api_loss_window_even_alone() {
        assert!(!decide(Some(Duration::from_secs(59)), &[SILENT, SILENT], &timings()).reboots());
        assert!(!decide(None, &[SILENT], &timings()).reboots());
    }

    #[test]
    fn an_api_server_outage_seen_by_the_peers_too_reboots_nobody() {
        assert!(!decide(LOST, &[OUTAGE, OUTAGE], &timings()).reboots());
        // One peer down during the outage: still two of three.
        assert!(!decide(LOST, &[OUTAGE, SILENT], &timings()).reboots());
    }

    #[test]
    fn a_node_in_a_minority_cut_off_with_one_peer_reboots() {
        // Two of five see each other and nothing else.
        assert!(decide(LOST, &[OUTAGE, SILENT, SILENT, SILENT], &timings()).reboots());
    }

    #[test]
    fn peers_that_reach_the_api_server_and_see_the_node_healthy_keep_it_up() {
        assert!(!decide(LOST, &[HEALTHY, SILENT, SILENT], &timings()).reboots());
    }

    #[test]
    fn a_peer_that_sees_nodemedic_remediating_the_node_makes_it_reboot() {
        assert!(decide(LOST, &[HEALTHY, UNHEALTHY], &timings()).reboots());
        // Only a peer that reaches the API server can say so.
        let blind = PeerAnswer::Answered { api_server_reachable: false, verdict: PeerVerdict::Unhealthy };
        assert!(!decide(LOST, &[blind, OUTAGE], &timings()).reboots());
    }

    #[test]
    fn a_node_that_knows_no_peers_never_reboots() {
        assert!(!decide(LOST, &[], &timings()).reboots());
    }

    #[test]
    fn the_safe_time_defaults_to_the_floor_and_a_value_below_it_is_refused_naming_the_floor() {
        assert_eq!(safe_time(&timings(), None), Ok(Duration::from_secs(160)));
        assert_eq!(safe_time(&timings(), Some(Duration::from_mins(5))), Ok(Duration::from_mins(5)));
        let refused = safe_time(&timings(), Some(Duration::from_mins(2))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("below the floor 2m40s"), "{refused}");
        assert!(refused.contains("watchdog timeout 1m"), "{refused}");
    }
}
