//! Whether this replica can observe the cluster now, and when it could not. A probe asks the API
//! server for its version every second (with a deadline, since a paused API server accepts
//! connections and never answers). The spans between the last answer before a failure and the
//! first answer after it are outages: the engine does not count them against a step's deadline
//! ([`nodemedic_core::outage`]), and `/readyz` says not-ready while one lasts.

use nodemedic_core::{Outage, Time};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the API server is asked, and how long an answer may take.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Closed outages kept (the oldest go first); a step's deadline needs only those during the step.
const KEPT: usize = 64;

/// What the probes have seen so far. Pure: the times come in with each result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContactLog {
    last_answer: Option<Time>,
    /// The last answer before the probes began to fail, while they fail.
    lost_since: Option<Time>,
    closed: VecDeque<Outage>,
}

impl ContactLog {
    /// The API server answered at `at`.
    pub fn answered(&mut self, at: Time) {
        if let Some(from) = self.lost_since.take() {
            self.closed.push_back(Outage { from, to: at });
            while self.closed.len() > KEPT {
                self.closed.pop_front();
            }
        }
        self.last_answer = Some(at);
    }

    /// A probe failed (refused, an error, no answer in time). Before the first answer ever there
    /// is nothing to count: this process had not observed the cluster yet.
    pub fn failed(&mut self) {
        if self.lost_since.is_none() {
            self.lost_since = self.last_answer;
        }
    }

    /// Whether the last probe was answered.
    pub fn connected(&self) -> bool {
        self.last_answer.is_some() && self.lost_since.is_none()
    }

    /// Every outage kept, the one still going on (if any) ending at `now`.
    pub fn outages(&self, now: Time) -> Vec<Outage> {
        let open = self.lost_since.map(|from| Outage { from, to: now });
        self.closed.iter().copied().chain(open).collect()
    }
}

/// The probe task and what it has seen; the task ends when this is dropped.
pub struct Contact {
    log: Arc<Mutex<ContactLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Contact {
    /// Starts probing. `ready` is kept at "the watches have synced (`synced`) and the API server
    /// answers".
    pub fn start(client: kube::Client, synced: Arc<AtomicBool>, ready: Arc<AtomicBool>) -> Contact {
        let log = Arc::new(Mutex::new(ContactLog::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let answered = matches!(tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await, Ok(Ok(_)));
                let connected = match shared.lock() {
                    Ok(mut log) => {
                        let was = log.connected();
                        if answered {
                            log.answered(crate::now());
                        } else {
                            log.failed();
                        }
                        if was != log.connected() {
                            if answered {
                                tracing::info!("the API server answers again");
                            } else {
                                tracing::warn!("the API server does not answer; not ready until it does");
                            }
                        }
                        log.connected()
                    }
                    Err(_) => false,
                };
                ready.store(connected && synced.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        Contact { log, task }
    }

    /// The outages seen so far (see [`ContactLog::outages`]).
    pub fn outages(&self, now: Time) -> Vec<Outage> {
        self.log.lock().map(|l| l.outages(now)).unwrap_or_default()
    }
}

impl Drop for Contact {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_between_two_answers_are_one_outage_from_the_last_answer_to_the_next() {
        let mut log = ContactLog::default();
        log.answered(Time(1_000));
        log.failed();
        log.failed();
        assert!(!log.connected());
        assert_eq!(log.outages(Time(5_000)), vec![Outage { from: Time(1_000), to: Time(5_000) }], "still going on");
        log.answered(Time(65_000));
        assert!(log.connected());
        assert_eq!(log.outages(Time(70_000)), vec![Outage { from: Time(1_000), to: Time(65_000) }]);
    }

    #[test]
    fn a_process_that_never_reached_the_api_server_has_no_outage_to_count_and_is_not_connected() {
        let mut log = ContactLog::default();
        log.failed();
        assert!(!log.connected());
        assert!(log.outages(Time(9_000)).is_empty());
        log.answered(Time(10_000));
        assert!(log.connected() && log.outages(Time(11_000)).is_empty());
    }

    #[test]
    fn only_the_most_recent_outages_are_kept() {
        let mut log = ContactLog::default();
        for i in 0..(KEPT as i64 + 10) {
            log.answered(Time(i * 10));
            log.failed();
        }
        log.answered(Time(100_000));
        let kept = log.outages(Time(100_000));
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.last(), Some(&Outage { from: Time((KEPT as i64 + 9) * 10), to: Time(100_000) }));
    }
}
