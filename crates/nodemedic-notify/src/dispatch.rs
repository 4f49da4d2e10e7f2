//! Background delivery: the caller hands incidents over without waiting; a worker delivers each to every
//! channel whose filter accepts it, retries with capped exponential backoff, reports every try as a
//! [`DeliveryOutcome`], and never delivers the same (incident key, channel) twice.

use crate::channel::Channel;
use crate::incident::{Incident, IncidentKind, Severity};
use crate::now;
use nodemedic_core::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// How often and how patiently one delivery is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed try.
    pub initial_backoff: Duration,
    /// The wait never grows past this.
    pub max_backoff: Duration,
    /// Each wait is the previous one times this.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 8 tries waiting 2s, 4s, 8s, … up to 5 minutes between them (about 10 minutes in all).
    fn default() -> Self {
        RetryPolicy { max_attempts: 8, initial_backoff: Duration::from_secs(2), max_backoff: Duration::from_secs(300), multiplier: 2.0 }
    }
}

impl RetryPolicy {
    /// The wait after try number `failed_attempt` (1-based) failed.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let seconds = self.initial_backoff.as_secs_f64() * factor;
        if !seconds.is_finite() || seconds >= self.max_backoff.as_secs_f64() { self.max_backoff } else { Duration::from_secs_f64(seconds) }
    }
}

/// Which incidents a channel gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentFilter {
    /// Only these kinds; every kind when empty.
    #[serde(default)]
    pub kinds: BTreeSet<IncidentKind>,
    /// Only incidents at least this severe.
    #[serde(default)]
    pub min_severity: Severity,
}

impl IncidentFilter {
    /// Every incident.
    pub fn all() -> Self {
        IncidentFilter::default()
    }
    pub fn kinds(kinds: impl IntoIterator<Item = IncidentKind>) -> Self {
        IncidentFilter { kinds: kinds.into_iter().collect(), min_severity: Severity::Info }
    }
    pub fn min_severity(mut self, severity: Severity) -> Self {
        self.min_severity = severity;
        self
    }
    pub fn accepts(&self, incident: &Incident) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&incident.kind)) && incident.severity >= self.min_severity
    }
}

/// A channel and the incidents it gets.
#[derive(Clone)]
pub struct ChannelRoute {
    pub channel: Arc<dyn Channel>,
    pub filter: IncidentFilter,
}

impl ChannelRoute {
    pub fn new(channel: Arc<dyn Channel>, filter: IncidentFilter) -> Self {
        ChannelRoute { channel, filter }
    }
}

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Incidents waiting to be picked up; `submit` refuses more.
    pub queue_capacity: usize,
    /// Outcomes waiting for the controller; deliveries wait while it is full.
    pub outcome_capacity: usize,
    /// Channel calls running at once.
    pub max_concurrent_deliveries: usize,
    pub retry: RetryPolicy,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig { queue_capacity: 256, outcome_capacity: 1024, max_concurrent_deliveries: 8, retry: RetryPolicy::default() }
    }
}

/// One try at delivering one incident to one channel. The controller records these in the
/// NodeRemediation status; after a restart the `ok` ones are the already-delivered set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryOutcome {
    /// The incident's idempotency key.
    pub key: String,
    pub channel: String,
    /// 1 for the first try.
    pub attempt: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: Time,
    /// True on the last failed try: the dispatcher stopped retrying; submitting the incident again starts over.
    #[serde(default)]
    pub gave_up: bool,
}

/// Why `submit` did not take an incident; the incident comes back so the caller can keep it for later.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the notification queue is full")]
    QueueFull(Box<Incident>),
    #[error("the dispatcher has stopped")]
    Stopped(Box<Incident>),
}

type DeliveryId = (String, String);

#[derive(Default)]
struct Ledger {
    delivered: HashSet<DeliveryId>,
    in_flight: HashSet<DeliveryId>,
}

/// Hands incidents to a background worker. Dropping it (or [`Dispatcher::shutdown`]) lets the worker finish
/// what was queued and in flight, then stop.
pub struct Dispatcher {
    queue: mpsc::Sender<Incident>,
    worker: JoinHandle<()>,
}

impl Dispatcher {
    /// Starts the worker on the current tokio runtime. `already_delivered` holds the (incident key, channel
    /// name) pairs the records show as delivered; they are skipped. Returns the dispatcher and the stream of
    /// outcomes, one per try.
    pub fn start(
        routes: Vec<ChannelRoute>,
        config: DispatcherConfig,
        already_delivered: impl IntoIterator<Item = (String, String)>,
    ) -> (Dispatcher, mpsc::Receiver<DeliveryOutcome>) {
        let (queue, incoming) = mpsc::channel(config.queue_capacity.max(1));
        let (outcomes, outcome_stream) = mpsc::channel(config.outcome_capacity.max(1));
        let ledger = Ledger { delivered: already_delivered.into_iter().collect(), in_flight: HashSet::new() };
        let worker = Worker {
            routes,
            retry: config.retry,
            outcomes,
            ledger: Arc::new(Mutex::new(ledger)),
            limiter: Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1))),
        };
        let worker = tokio::spawn(worker.run(incoming));
        (Dispatcher { queue, worker }, outcome_stream)
    }

    /// Queues an incident for delivery without waiting; refuses it when the queue is full.
    pub fn submit(&self, incident: Incident) -> Result<(), SubmitError> {
        self.queue.try_send(incident).map_err(|error| match error {
            mpsc::error::TrySendError::Full(incident) => SubmitError::QueueFull(Box::new(incident)),
            mpsc::error::TrySendError::Closed(incident) => SubmitError::Stopped(Box::new(incident)),
        })
    }

    /// Stops taking incidents and waits until everything queued has been delivered or given up.
    pub async fn shutdown(self) {
        drop(self.queue);
        let _ = self.worker.await;
    }
}

struct Worker {
    routes: Vec<ChannelRoute>,
    retry: RetryPolicy,
    outcomes: mpsc::Sender<DeliveryOutcome>,
    ledger: Arc<Mutex<Ledger>>,
    limiter: Arc<Semaphore>,
}

impl Worker {
    async fn run(self, mut incoming: mpsc::Receiver<Incident>) {
        let mut deliveries = JoinSet::new();
        loop {
            tokio::select! {
                next = incoming.recv() => match next {
                    Some(incident) => self.schedule(incident, &mut deliveries),
                    None => break,
                },
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            }
        }
        while deliveries.join_next().await.is_some() {}
    }

    /// Starts a delivery for every channel that wants the incident and has neither delivered it nor is
    /// delivering it now.
    fn schedule(&self, incident: Incident, deliveries: &mut JoinSet<()>) {
        let incident = Arc::new(incident);
        for route in &self.routes {
            if !route.filter.accepts(&incident) {
                continue;
            }
            let id = (incident.key.clone(), route.channel.name().to_string());
            {
                let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                if ledger.delivered.contains(&id) || !ledger.in_flight.insert(id.clone()) {
                    continue;
                }
            }
            let delivery = Delivery {
                id,
                channel: Arc::clone(&route.channel),
                incident: Arc::clone(&incident),
                retry: self.retry.clone(),
                outcomes: self.outcomes.clone(),
                ledger: Arc::clone(&self.ledger),
                limiter: Arc::clone(&self.limiter),
            };
            deliveries.spawn(delivery.run());
        }
    }
}

struct Delivery {
    id: DeliveryId,
    channel: Arc<dyn Channel>,
    incident: Arc<Incident>,
    retry: RetryPolicy,
    outcomes: mpsc::Sender<DeliveryOutcome>,
    ledger: Arc<Mutex<Ledger>>,
    limiter: Arc<Semaphore>,
}

/// Holds a (key, channel) pair in the ledger's in-flight set and takes it out when dropped, also when the
/// delivery task panics, so the pair can be delivered again later.
struct InFlight {
    id: DeliveryId,
    ledger: Arc<Mutex<Ledger>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner).in_flight.remove(&self.id);
    }
}

impl Delivery {
    async fn run(self) {
        let mut in_flight = Some(InFlight { id: self.id.clone(), ledger: Arc::clone(&self.ledger) });
        let max_attempts = self.retry.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            let result = {
                let _permit = self.limiter.acquire().await;
                self.channel.deliver(&self.incident).await
            };
            let ok = result.is_ok();
            let gave_up = !ok && attempt == max_attempts;
            if ok {
                self.ledger.lock().unwrap_or_else(PoisonError::into_inner).delivered.insert(self.id.clone());
            }
            if ok || gave_up {
                // Done before the outcome goes out, so a resubmission from whoever reads it is not skipped.
                drop(in_flight.take());
            }
            let outcome = DeliveryOutcome {
                key: self.id.0.clone(),
                channel: self.id.1.clone(),
                attempt,
                ok,
                error: result.err().map(|e| e.to_string()),
                at: now(),
                gave_up,
            };
            // A controller that stopped reading outcomes does not stop deliveries.
            let _ = self.outcomes.send(outcome).await;
            if ok || gave_up {
                return;
            }
            tokio::time::sleep(self.retry.backoff(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{DeliveryError, DeliveryFuture};
    use crate::incident::NodeDetails;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails its first `failures` tries, then succeeds; counts every try.
    struct FlakyChannel {
        name: String,
        failures: u32,
        tries: AtomicU32,
    }

    impl Channel for FlakyChannel {
        fn name(&self) -> &str {
            &self.name
        }
        fn deliver<'a>(&'a self, _incident: &'a Incident) -> DeliveryFuture<'a> {
            let tries = self.tries.fetch_add(1, Ordering::SeqCst) + 1;
            let failures = self.failures;
            Box::pin(async move { if tries <= failures { Err(DeliveryError::Transport(format!("try {tries} refused"))) } else { Ok(()) } })
        }
    }

    fn flaky(name: &str, failures: u32) -> Arc<FlakyChannel> {
        Arc::new(FlakyChannel { name: name.to_string(), failures, tries: AtomicU32::new(0) })
    }

    fn fast_retries(max_attempts: u32) -> DispatcherConfig {
        DispatcherConfig {
            retry: RetryPolicy {
                max_attempts,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(4),
                multiplier: 2.0,
            },
            ..DispatcherConfig::default()
        }
    }

    fn manual(node: &str) -> Incident {
        Incident::for_node(IncidentKind::NodeManual, "gpu", NodeDetails::named(node), 3, Time(0))
    }

    async fn collect(mut outcomes: mpsc::Receiver<DeliveryOutcome>) -> Vec<DeliveryOutcome> {
        let mut all = Vec::new();
        while let Some(outcome) = outcomes.recv().await {
            all.push(outcome);
        }
        all
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
        };
        let waits: Vec<u64> = (1..=6).map(|n| retry.backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(retry.backoff(10_000), Duration::from_secs(10));
    }

    #[test]
    fn filters_select_by_kind_and_minimum_severity() {
        let critical_only = IncidentFilter::all().min_severity(Severity::Critical);
        assert!(critical_only.accepts(&manual("n")));
        let started = Incident::for_node(IncidentKind::RemediationStarted, "gpu", NodeDetails::named("n"), 1, Time(0));
        assert!(!critical_only.accepts(&started));
        let starts_only = IncidentFilter::kinds([IncidentKind::RemediationStarted]);
        assert!(starts_only.accepts(&started));
        assert!(!starts_only.accepts(&manual("n")));
    }

    #[tokio::test]
    async fn a_failing_channel_is_retried_until_it_accepts() {
        let channel = flaky("hook", 2);
        let (dispatcher, outcomes) =
            Dispatcher::start(vec![ChannelRoute::new(channel.clone(), IncidentFilter::all())], fast_retries(5), []);
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        dispatcher.shutdown().await;
        let outcomes = collect(outcomes).await;
        let oks: Vec<bool> = outcomes.iter().map(|o| o.ok).collect();
        assert_eq!(oks, vec![false, false, true]);
        assert_eq!(outcomes[2].attempt, 3);
        assert_eq!(outcomes[0].error.as_deref(), Some("sending: try 1 refused"));
        assert_eq!(channel.tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn delivery_gives_up_after_the_last_try_and_says_so() {
        let channel = flaky("hook", 100);
        let (dispatcher, outcomes) =
            Dispatcher::start(vec![ChannelRoute::new(channel.clone(), IncidentFilter::all())], fast_retries(3), []);
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        dispatcher.shutdown().await;
        let outcomes = collect(outcomes).await;
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| !o.ok));
        assert_eq!(outcomes.iter().map(|o| o.gave_up).collect::<Vec<_>>(), vec![false, false, true]);
    }

    #[tokio::test]
    async fn an_incident_given_up_on_is_delivered_when_submitted_again() {
        let channel = flaky("hook", 2);
        let (dispatcher, mut outcomes) =
            Dispatcher::start(vec![ChannelRoute::new(channel.clone(), IncidentFilter::all())], fast_retries(2), []);
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        let mut last = None;
        while let Some(outcome) = outcomes.recv().await {
            let done = outcome.gave_up;
            last = Some(outcome);
            if done {
                break;
            }
        }
        assert!(last.is_some_and(|o| o.gave_up && !o.ok));
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        dispatcher.shutdown().await;
        let again = collect(outcomes).await;
        assert_eq!(again.iter().map(|o| o.ok).collect::<Vec<_>>(), vec![true]);
        assert_eq!(channel.tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_incident_already_delivered_before_a_restart_is_not_sent_again_but_an_undelivered_one_is() {
        let email = flaky("email", 0);
        let hook = flaky("hook", 0);
        let routes = vec![ChannelRoute::new(email.clone(), IncidentFilter::all()), ChannelRoute::new(hook.clone(), IncidentFilter::all())];
        // The records say the email went out before the restart; the webhook did not.
        let delivered = [("gpu-1/NodeManual/3".to_string(), "email".to_string())];
        let (dispatcher, outcomes) = Dispatcher::start(routes, fast_retries(3), delivered);
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        assert!(dispatcher.submit(manual("gpu-1")).is_ok());
        dispatcher.shutdown().await;
        let outcomes = collect(outcomes).await;
        assert_eq!(email.tries.load(Ordering::SeqCst), 0);
        assert_eq!(hook.tries.load(Ordering::SeqCst), 1);
        assert_eq!(outcomes.len(), 1);
        assert_eq!((outcomes[0].channel.as_str(), outcomes[0].ok), ("hook", true));
    }

    #[tokio::test]
    async fn each_channel_gets_only_what_its_filter_accepts() {
        let pager = flaky("pager", 0);
        let chat = flaky("chat", 0);
        let routes = vec![
            ChannelRoute::new(pager.clone(), IncidentFilter::all().min_severity(Severity::Critical)),
            ChannelRoute::new(chat.clone(), IncidentFilter::all()),
        ];
        let (dispatcher, outcomes) = Dispatcher::start(routes, fast_retries(1), []);
        assert!(
            dispatcher.submit(Incident::for_node(IncidentKind::RemediationStarted, "gpu", NodeDetails::named("n"), 1, Time(0))).is_ok()
        );
        assert!(dispatcher.submit(manual("n")).is_ok());
        dispatcher.shutdown().await;
        let _ = collect(outcomes).await;
        assert_eq!(pager.tries.load(Ordering::SeqCst), 1);
        assert_eq!(chat.tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn submit_never_waits_and_refuses_when_the_queue_is_full() {
        /// Never finishes a delivery, so the worker stays busy.
        struct Stuck;
        impl Channel for Stuck {
            fn name(&self) -> &str {
                "stuck"
            }
            fn deliver<'a>(&'a self, _incident: &'a Incident) -> DeliveryFuture<'a> {
                Box::pin(std::future::pending())
            }
        }
        let config = DispatcherConfig { queue_capacity: 1, max_concurrent_deliveries: 1, ..fast_retries(1) };
        let (dispatcher, _outcomes) = Dispatcher::start(vec![ChannelRoute::new(Arc::new(Stuck), IncidentFilter::all())], config, []);
        let mut refused = 0;
        for i in 0..50 {
            if let Err(SubmitError::QueueFull(incident)) = dispatcher.submit(manual(&format!("n{i}"))) {
                assert_eq!(incident.node_name(), format!("n{i}"));
                refused += 1;
            }
        }
        assert!(refused > 0, "a queue of one should refuse some of 50 quick submissions");
    }
}
