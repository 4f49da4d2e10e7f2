//! The controller process: watches Nodes (lean cache), policies and records; campaigns for the
//! leader lease; while it leads, reconciles every policy whenever something changes, when the
//! engine asked to be woken, or at the resync interval. It stops on the shutdown signal and gives
//! the lease back so a standby takes over at once.

use crate::contact::Contact;
use crate::leader::{Leadership, LeaseConfig};
use crate::{ControllerError, Executor, FleetCache, Metrics, Reconciler, RecordCache, now};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, lean, lean_record};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub lease: LeaseConfig,
    /// Reconcile at least this often even when nothing changes.
    pub resync: Duration,
    /// Wait this long after a change before reconciling, so a burst of watch events is one pass.
    pub debounce: Duration,
    /// Tell people about the engine's events (see [`crate::notify`]); nobody is told when None.
    pub notifications: Option<crate::notify::NotificationsConfig>,
    /// After the API server answers again, a step in flight has at least this long to report
    /// before its deadline counts (the outage itself never counts).
    pub reconnect_grace: Duration,
    /// The client the watches use, when it is not the one `run` gets: watches are idle for long
    /// stretches, so they need a longer read timeout than the calls that expect an answer (see
    /// [`crate::client::with_timeouts`]).
    pub watch_client: Option<WatchClient>,
}

/// The watches' client (a newtype so [`RunConfig`] stays `Debug`).
#[derive(Clone)]
pub struct WatchClient(pub Client);

impl std::fmt::Debug for WatchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchClient")
    }
}

impl RunConfig {
    pub fn new(identity: impl Into<String>) -> Self {
        RunConfig {
            lease: LeaseConfig::new(identity),
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(200),
            notifications: None,
            reconnect_grace: Duration::from_millis(crate::DEFAULT_RECONNECT_GRACE.as_millis() as u64),
            watch_client: None,
        }
    }
}

/// The watches' backoff after an error: 0.5 s doubling to 5 s, from 0.5 s again once a watch
/// works. kube's default grows to 30 s, which after an API-server restart kept the controller
/// blind (and not ready) for up to half a minute after the API server was back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectBackoff {
    next: Duration,
}

impl ReconnectBackoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        ReconnectBackoff { next: Self::FIRST }
    }
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Watches one kind into a store and pokes `changed` on every event; restarts with backoff on errors.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>, modify: fn(&mut K)) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).backoff(ReconnectBackoff::new()).modify(modify).reflect(writer).touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with backoff)"),
            }
        }
    });
    (store, task)
}

/// When the next pass starts at the latest: when the engine asked to be woken, but never later
/// than the resync interval (`--resync` promises "at least this often", also while a step with a
/// long timeout is in flight).
pub fn next_pass_at(now: tokio::time::Instant, wake_at: Option<tokio::time::Instant>, resync: Duration) -> tokio::time::Instant {
    let resync_at = now + resync;
    wake_at.map_or(resync_at, |w| w.min(resync_at))
}

/// A pass refused because the Lease looked unusable is tried again this soon while the lease
/// manager still says this replica holds it (a renewal in flight, a slow read).
pub const RETRY_WHILE_HOLDING: Duration = Duration::from_millis(500);

/// Runs until `shutdown` resolves. All replicas watch; only the lease holder writes. The API
/// server may be away at the start or at any time later: leader election and the watches retry
/// with backoff, `/readyz` says not-ready meanwhile, and the work carries on when it answers.
pub async fn run(
    client: Client,
    config: RunConfig,
    executor: Arc<dyn Executor>,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControllerError> {
    futures::pin_mut!(shutdown);
    let changed = Arc::new(Notify::new());
    let watching = config.watch_client.as_ref().map_or_else(|| client.clone(), |w| w.0.clone());
    let (nodes, node_task) = reflect(Api::<Node>::all(watching.clone()), changed.clone(), lean);
    let (policies, policy_task) = reflect(Api::<NodeHealthPolicy>::all(watching.clone()), changed.clone(), |_| {});
    let (records, record_task) = reflect(Api::<NodeRemediation>::all(watching), changed.clone(), lean_record);
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sync_task = {
        let (nodes, policies, records, synced) = (nodes.clone(), policies.clone(), records.clone(), synced.clone());
        tokio::spawn(async move {
            if nodes.wait_until_ready().await.is_ok()
                && policies.wait_until_ready().await.is_ok()
                && records.wait_until_ready().await.is_ok()
            {
                synced.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let contact = Contact::start(client.clone(), synced.clone(), ready);
    let tasks = [node_task, policy_task, record_task, sync_task];

    let Some(mut leadership) = Leadership::start_with_retry(client.clone(), config.lease.clone(), &mut shutdown).await else {
        tracing::info!("shut down before leader election could start");
        tasks.iter().for_each(|t| t.abort());
        return Ok(());
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "nodemedic-controller".into(), instance: Some(config.lease.identity.clone()) },
    );
    tracing::info!(identity = %config.lease.identity, "controller started; campaigning for the leader lease");

    let mut known_policies: BTreeSet<String> = BTreeSet::new();
    let mut wake_at: Option<tokio::time::Instant> = None;
    let mut notifier = config.notifications.clone().map(|c| crate::notify::Notifier::new(client.clone(), c).with_metrics(metrics.clone()));
    let mut leading = leadership.is_leader();
    metrics.set_leader(leading);
    let fleet_cache = FleetCache::new();
    let record_cache = RecordCache::new(records.clone());
    loop {
        let deadline = next_pass_at(tokio::time::Instant::now(), wake_at, config.resync);
        tokio::select! {
            _ = &mut shutdown => break,
            now_leading = leadership.changed() => {
                let Some(now_leading) = now_leading else {
                    metrics.set_leader(false);
                    return Err(ControllerError::Lease("the lease task ended".into()));
                };
                if now_leading != leading {
                    tracing::info!(identity = %leadership.identity(), leader = now_leading, "leadership changed");
                }
                leading = now_leading;
                metrics.set_leader(leading);
                if !leading {
                    continue;
                }
            }
            _ = changed.notified() => {
                tokio::time::sleep(config.debounce).await;
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        wake_at = None;
        if !leading {
            notifier.iter_mut().for_each(|n| n.stand_by());
            continue;
        }
        // Nothing is decided on a half-filled cache: wait for every watch's first list.
        if nodes.wait_until_ready().await.is_err()
            || policies.wait_until_ready().await.is_err()
            || records.wait_until_ready().await.is_err()
        {
            return Err(ControllerError::Lease("a watch ended".into()));
        }
        // A store wakes only its latest waiter: when this loop waited too, the `synced` task may never
        // wake, so the loop says so itself (ready still needs the API server to answer).
        synced.store(true, std::sync::atomic::Ordering::Relaxed);
        let snapshot: Vec<Arc<Node>> = nodes.state();
        let current: BTreeSet<String> = policies.state().iter().map(|p| p.name_any()).collect();
        for gone in known_policies.difference(&current) {
            metrics.forget_policy(gone);
            fleet_cache.forget(gone);
        }
        known_policies = current.clone();
        let now = now();
        let outages = contact.outages(now);
        let reconciler = Reconciler {
            client: client.clone(),
            executor: executor.as_ref(),
            events: Some(&recorder),
            metrics: Some(metrics.as_ref()),
            fence: Some(&leadership),
            fleet_cache: Some(&fleet_cache),
            outages: &outages,
            reconnect_grace: nodemedic_core::Duration::from_millis(config.reconnect_grace.as_millis() as i64),
            records: Some(&record_cache),
            // The agents renew their self-fencing Leases beside the controller's own.
            agent_lease_namespace: &config.lease.namespace,
        };
        if let Some(n) = notifier.as_mut()
            && let Err(e) = n.ensure_started().await
        {
            tracing::error!(error = %e, "notifications could not start; retrying on the next pass");
        }
        if let Some(n) = notifier.as_mut() {
            n.catch_up(&policies.state(), &snapshot, &record_cache.state());
        }
        let pass = Pass { policies: &policies, snapshot: &snapshot, records: &record_cache, leadership: &leadership, now };
        if let Some(at) = pass.reconcile_all(&reconciler, &current, notifier.as_mut()).await {
            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        }
    }
    tracing::info!("shutting down: releasing the leader lease");
    metrics.set_leader(false);
    leadership.release().await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// What one pass as the leader reads: the policy cache, one snapshot of the nodes, the records, the
/// lease, and the time the pass decides at.
struct Pass<'p> {
    policies: &'p Store<NodeHealthPolicy>,
    snapshot: &'p [Arc<Node>],
    records: &'p RecordCache,
    leadership: &'p Leadership,
    now: nodemedic_core::Time,
}

impl Pass<'_> {
    /// Reconciles every policy over the same snapshot, telling the notifier each decision. Returns when
    /// the next pass is due at the latest, if a decision or a failure asks for one sooner than the
    /// resync; stops at the first pass the lease refuses.
    async fn reconcile_all(
        &self,
        reconciler: &Reconciler<'_>,
        names: &BTreeSet<String>,
        mut notifier: Option<&mut crate::notify::Notifier>,
    ) -> Option<tokio::time::Instant> {
        let mut wake_at: Option<tokio::time::Instant> = None;
        let mut wake = |at: tokio::time::Instant| wake_at = Some(wake_at.map_or(at, |w: tokio::time::Instant| w.min(at)));
        for name in names {
            let before = self.policies.get(&reflector::ObjectRef::new(name));
            match reconciler.reconcile_with(name, Some(self.snapshot), self.now).await {
                Ok(decision) => {
                    if let (Some(n), Some(policy)) = (notifier.as_deref_mut(), before) {
                        n.on_decision(&policy, &decision, self.snapshot, &self.records.state());
                    }
                    if let Some(next) = decision.next_wakeup {
                        let after = Duration::from_millis(next.0.saturating_sub(self.now.0).max(0) as u64);
                        wake(tokio::time::Instant::now() + after);
                    }
                    tracing::debug!(policy = %name, actions = decision.actions.len(), events = decision.events.len(), "reconciled");
                }
                Err(ControllerError::NotLeader) if self.leadership.is_leader() => {
                    // The lease manager holds the lease: its renewal is in flight, or the read
                    // was slow. Try again shortly rather than at the next change or resync.
                    tracing::info!(policy = %name, retry_in = ?RETRY_WHILE_HOLDING, "the lease was not usable for this pass; retrying");
                    wake(tokio::time::Instant::now() + RETRY_WHILE_HOLDING);
                    break;
                }
                Err(ControllerError::NotLeader) => {
                    tracing::warn!(policy = %name, "lost the lease before writing; standing by");
                    break;
                }
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, kind = e.metric_label(), "reconcile failed");
                    // Retry soon, not at the resync interval.
                    wake(tokio::time::Instant::now() + Duration::from_secs(2));
                }
            }
        }
        wake_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: a reboot's 15-minute timeout pushed the next pass past the 30 s resync.
    #[test]
    fn a_step_in_flight_does_not_push_the_next_pass_past_the_resync_interval() {
        let now = tokio::time::Instant::now();
        let resync = Duration::from_secs(30);
        assert_eq!(next_pass_at(now, Some(now + Duration::from_secs(900)), resync), now + resync);
        assert_eq!(next_pass_at(now, Some(now + Duration::from_secs(5)), resync), now + Duration::from_secs(5));
        assert_eq!(next_pass_at(now, None, resync), now + resync);
    }

    #[test]
    fn a_watch_retries_at_most_5_s_apart_and_from_half_a_second_again_once_it_works() {
        use kube::runtime::utils::Backoff;
        let mut b = ReconnectBackoff::new();
        let waits: Vec<Duration> = b.by_ref().take(6).collect();
        assert_eq!(waits.iter().map(Duration::as_millis).collect::<Vec<_>>(), vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
