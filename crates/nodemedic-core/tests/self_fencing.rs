//! Issue 11 §2: the agent's self-fencing rule, and the controller counting a self-fencing node as
//! fenced only once `safeTimeToAssumeRebooted` has passed.

use nodemedic_core::engine::Action;
use nodemedic_core::fencing::FencingSource;
use nodemedic_core::policy::{ConditionStatus, Policy};
use nodemedic_core::selffence::{PeerAnswer, PeerVerdict, SelfFenceTimings, SelfFencingObservation, SelfFencingPromise, decide, safe_time};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, set_condition};
use nodemedic_core::{Decision, Duration, RemediationStep, Time};
use proptest::prelude::*;

/// A dead node is rebooted (by its agent, which cannot hear the request) and then goes to a person.
const REBOOT: &str = r#"
rules:
- {name: ready-unknown, condition: {type: Ready, status: Unknown}, duration: 60s}
ladder:
- {step: reboot, timeout: 30m, settle: 0s, verifyTimeout: 5m}
- {step: manual}
monitorOnly: false
"#;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn timings() -> SelfFenceTimings {
    SelfFenceTimings {
        api_loss_window: Duration::from_secs(60),
        check_interval: Duration::from_secs(10),
        peer_timeout: Duration::from_secs(5),
        watchdog_timeout: Duration::from_secs(60),
        reboot_time: Duration::from_secs(15),
    }
}

fn promise(watchdog: bool, peers: u32) -> SelfFencingPromise {
    SelfFencingPromise { timings: timings(), safe_time_to_assume_rebooted: Duration::from_mins(3), watchdog, peers }
}

fn tainted(d: &Decision) -> bool {
    d.actions.iter().any(|a| matches!(a, Action::SetOutOfService { present: true, .. }))
}

/// gpu-1's agent last renewed its Lease at `contact`; the node goes Unknown and the reboot starts.
fn cut_off_node(p: SelfFencingPromise) -> Result<(Harness, Time), Box<dyn std::error::Error>> {
    let mut h = Harness::new(
        Policy::from_yaml(REBOOT)?,
        vec![gpu_node("gpu-1", "a", 8, EPOCH), gpu_node("gpu-2", "a", 8, EPOCH), gpu_node("gpu-3", "a", 8, EPOCH)],
    );
    h.advance(Duration::from_mins(10));
    let contact = h.now;
    h.node("gpu-1").self_fencing = Some(SelfFencingObservation { promise: p, last_contact: contact });
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::Unknown, "NodeStatusUnknown", contact);
    h.advance(Duration::from_secs(61));
    h.decide();
    Ok((h, contact))
}

#[test]
fn a_self_fencing_node_counts_as_fenced_only_once_the_safe_time_has_passed() -> TestResult {
    let (mut h, _) = cut_off_node(promise(true, 2))?;
    let started = h.records.nodes["gpu-1"].active.as_ref().map(|a| (a.step, a.step_started_at)).ok_or("no remediation")?;
    assert_eq!(started.0, RemediationStep::Reboot, "{:?}", h.records.nodes["gpu-1"]);
    // The step started after the last contact: the safe time counts from the step's start.
    h.advance(Duration::from_secs(179));
    assert!(!tainted(&h.decide()), "before safeTimeToAssumeRebooted the node may still run");
    h.advance(Duration::from_secs(1));
    let d = h.decide();
    assert!(tainted(&d), "{d:?}");
    let o = h.records.nodes["gpu-1"].out_of_service.clone().ok_or("no outOfService on the record")?;
    assert_eq!(o.source, FencingSource::SelfFenced);
    assert!(o.reason.contains("safeTimeToAssumeRebooted 3m"), "{}", o.reason);
    Ok(())
}

#[test]
fn a_promise_without_a_watchdog_or_peers_or_below_its_floor_is_never_counted() -> TestResult {
    let low = SelfFencingPromise { safe_time_to_assume_rebooted: Duration::from_mins(2), ..promise(true, 2) };
    for p in [promise(false, 2), promise(true, 0), low] {
        let (mut h, _) = cut_off_node(p)?;
        for _ in 0..6 {
            h.advance(Duration::from_mins(5));
            assert!(!tainted(&h.decide()), "{p:?}");
        }
    }
    Ok(())
}

#[test]
fn a_node_whose_agent_still_reached_the_api_server_later_waits_from_that_contact() -> TestResult {
    let (mut h, _) = cut_off_node(promise(true, 2))?;
    // The kubelet died but the agent renewed its Lease two minutes into the step.
    h.advance(Duration::from_mins(2));
    let later = h.now;
    if let Some(sf) = h.node("gpu-1").self_fencing.as_mut() {
        sf.last_contact = later;
    }
    h.advance(Duration::from_secs(179));
    assert!(!tainted(&h.decide()));
    h.advance(Duration::from_secs(1));
    assert!(tainted(&h.decide()));
    Ok(())
}

#[test]
fn without_a_ready_majority_a_cut_off_group_may_be_up_and_is_never_taken_for_self_fenced() -> TestResult {
    let (mut h, contact) = cut_off_node(promise(true, 2))?;
    set_condition(h.node("gpu-2"), "Ready", ConditionStatus::Unknown, "NodeStatusUnknown", contact);
    h.advance(Duration::from_mins(20));
    assert!(!tainted(&h.decide()), "gpu-1 and gpu-2 may be a majority that sees each other and stays up");
    Ok(())
}

#[test]
fn a_ready_node_is_never_taken_for_self_fenced() -> TestResult {
    let (mut h, contact) = cut_off_node(promise(true, 2))?;
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::True, "KubeletReady", contact + Duration::from_secs(62));
    h.advance(Duration::from_mins(20));
    assert!(!tainted(&h.decide()));
    Ok(())
}

fn answer() -> impl Strategy<Value = PeerAnswer> {
    let verdict = prop_oneof![Just(PeerVerdict::Healthy), Just(PeerVerdict::Unhealthy), Just(PeerVerdict::Unknown)];
    prop_oneof![
        Just(PeerAnswer::Silent),
        (any::<bool>(), verdict).prop_map(|(api_server_reachable, verdict)| PeerAnswer::Answered { api_server_reachable, verdict }),
    ]
}

fn any_timings() -> impl Strategy<Value = SelfFenceTimings> {
    let d = || (0i64..3_600_000).prop_map(Duration::from_millis);
    (d(), d(), d(), d(), d()).prop_map(|(api_loss_window, check_interval, peer_timeout, watchdog_timeout, reboot_time)| SelfFenceTimings {
        api_loss_window,
        check_interval,
        peer_timeout,
        watchdog_timeout,
        reboot_time,
    })
}

proptest! {
    #[test]
    fn a_peer_that_reaches_the_api_server_and_sees_the_node_healthy_means_no_reboot(
        mut peers in prop::collection::vec(answer(), 0..8),
        at in any::<prop::sample::Index>(),
        lost in (0i64..10_000_000).prop_map(Duration::from_millis),
    ) {
        let healthy = PeerAnswer::Answered { api_server_reachable: true, verdict: PeerVerdict::Healthy };
        peers.insert(at.index(peers.len() + 1), healthy);
        // Only a peer that sees nodemedic remediating the node may overrule.
        let unhealthy = peers.iter().any(|p| matches!(p, PeerAnswer::Answered { api_server_reachable: true, verdict: PeerVerdict::Unhealthy }));
        prop_assert_eq!(decide(Some(lost), &peers, &timings()).reboots(), unhealthy && lost >= timings().api_loss_window);
    }

    #[test]
    fn a_majority_answering_without_the_api_server_is_an_outage_and_reboots_nobody(
        peers in prop::collection::vec(answer(), 0..9),
        lost in (0i64..10_000_000).prop_map(Duration::from_millis),
    ) {
        let heard = peers.iter().filter(|p| **p != PeerAnswer::Silent).count();
        let reach_unhealthy = peers.iter().any(|p| matches!(p, PeerAnswer::Answered { api_server_reachable: true, verdict: PeerVerdict::Unhealthy }));
        prop_assume!(2 * (heard + 1) > peers.len() + 1 && !reach_unhealthy);
        prop_assert!(!decide(Some(lost), &peers, &timings()).reboots());
    }

    #[test]
    fn nothing_reboots_within_the_api_loss_window(peers in prop::collection::vec(answer(), 0..8), t in any_timings(), frac in 0.0f64..1.0) {
        let lost = Duration::from_millis((t.api_loss_window.as_millis() as f64 * frac) as i64);
        prop_assume!(lost < t.api_loss_window);
        prop_assert!(!decide(Some(lost), &peers, &t).reboots());
        prop_assert!(!decide(None, &peers, &t).reboots());
    }

    #[test]
    fn the_safe_time_is_never_below_the_floor_and_only_a_value_below_it_is_refused(
        t in any_timings(),
        configured in prop::option::of((0i64..20_000_000).prop_map(Duration::from_millis)),
    ) {
        let floor = t.api_loss_window + t.check_interval + t.check_interval + t.peer_timeout + t.watchdog_timeout + t.reboot_time;
        match safe_time(&t, configured) {
            Ok(safe) => prop_assert!(safe >= floor && configured.is_none_or(|c| c == safe)),
            Err(e) => {
                prop_assert!(configured.is_some_and(|c| c < floor));
                prop_assert!(e.to_string().contains(&format!("floor {floor}")), "{}", e);
            }
        }
    }
}
