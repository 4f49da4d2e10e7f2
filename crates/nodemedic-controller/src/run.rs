//! The controller process: watches Nodes (lean cache), policies and records; campaigns for the
//! leader lease; while it leads, reconciles every policy whenever something changes, when the
//! engine asked to be woken, or at the resync interval. It stops on the shutdown signal and gives
//! the lease back so a standby takes over at once.

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
}

impl RunConfig {
    pub fn new(identity: impl Into<String>) -> Self {
        RunConfig {
            lease: LeaseConfig::new(identity),
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(200),
            notifications: None,
        }
    }
}

/// Watches one kind into a store and pokes `changed` on every event; restarts with backoff on errors.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>, modify: fn(&mut K)) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(modify).reflect(writer).touched_objects();
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

/// Runs until `shutdown` resolves. All replicas watch; only the lease holder writes.
pub async fn run(
    client: Client,
    config: RunConfig,
    executor: Arc<dyn Executor>,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControllerError> {
    let changed = Arc::new(Notify::new());
    let (nodes, node_task) = reflect(Api::<Node>::all(client.clone()), changed.clone(), lean);
    let (policies, policy_task) = reflect(Api::<NodeHealthPolicy>::all(client.clone()), changed.clone(), |_| {});
    let (records, record_task) = reflect(Api::<NodeRemediation>::all(client.clone()), changed.clone(), lean_record);
    let synced = {
        let (nodes, policies, records, ready) = (nodes.clone(), policies.clone(), records.clone(), ready.clone());
        tokio::spawn(async move {
            if nodes.wait_until_ready().await.is_ok()
                && policies.wait_until_ready().await.is_ok()
                && records.wait_until_ready().await.is_ok()
            {
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let tasks = [node_task, policy_task, record_task, synced];

    let mut leadership =
        Leadership::start(client.clone(), config.lease.clone()).await.map_err(|e| ControllerError::Lease(e.to_string()))?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "nodemedic-controller".into(), instance: Some(config.lease.identity.clone()) },
    );
    tracing::info!(identity = %config.lease.identity, "controller started; campaigning for the leader lease");

    futures::pin_mut!(shutdown);
    let mut known_policies: BTreeSet<String> = BTreeSet::new();
    let mut wake_at: Option<tokio::time::Instant> = None;
    let mut notifier = config.notifications.clone().map(|c| crate::notify::Notifier::new(client.clone(), c));
    let mut leading = leadership.is_leader();
    metrics.set_leader(leading);
    let fleet_cache = FleetCache::new();
    let record_cache = RecordCache::new(records.clone());
    loop {
        let deadline = wake_at.unwrap_or_else(|| tokio::time::Instant::now() + config.resync);
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
        // wake, so the loop says so itself.
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let snapshot: Vec<Arc<Node>> = nodes.state();
        let current: BTreeSet<String> = policies.state().iter().map(|p| p.name_any()).collect();
        for gone in known_policies.difference(&current) {
            metrics.forget_policy(gone);
            fleet_cache.forget(gone);
        }
        known_policies = current.clone();
        let reconciler = Reconciler {
            client: client.clone(),
            executor: executor.as_ref(),
            events: Some(&recorder),
            metrics: Some(metrics.as_ref()),
            fence: Some(&leadership),
            fleet_cache: Some(&fleet_cache),
            records: Some(&record_cache),
        };
        if let Some(n) = notifier.as_mut()
            && let Err(e) = n.ensure_started().await
        {
            tracing::error!(error = %e, "notifications could not start; retrying on the next pass");
        }
        if let Some(n) = notifier.as_mut() {
            n.catch_up(&policies.state(), &snapshot, &record_cache.state());
        }
        let now = now();
        for name in &current {
            let before = policies.get(&reflector::ObjectRef::new(name));
            match reconciler.reconcile_with(name, Some(&snapshot), now).await {
                Ok(decision) => {
                    if let (Some(n), Some(policy)) = (notifier.as_mut(), before) {
                        n.on_decision(&policy, &decision, &snapshot, &record_cache.state());
                    }
                    if let Some(next) = decision.next_wakeup {
                        let after = Duration::from_millis(next.0.saturating_sub(now.0).max(0) as u64);
                        let at = tokio::time::Instant::now() + after;
                        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                    }
                    tracing::debug!(policy = %name, actions = decision.actions.len(), events = decision.events.len(), "reconciled");
                }
                Err(ControllerError::NotLeader) => {
                    tracing::warn!(policy = %name, "lost the lease before writing; standing by");
                    break;
                }
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, kind = e.metric_label(), "reconcile failed");
                    // Retry soon, not at the resync interval.
                    let at = tokio::time::Instant::now() + Duration::from_secs(2);
                    wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                }
            }
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
