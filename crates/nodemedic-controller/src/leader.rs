//! Leader election over a coordination.k8s.io Lease (kube-lease-manager). Every replica watches
//! and decides; only the holder writes. Holding the lease in memory is not trusted on its own: a
//! replica that was paused (GC, a stopped VM) may still believe it leads while another replica has
//! taken over, so [`Leadership::confirm`] re-reads the Lease before each batch of writes.

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name in a cluster).
    pub identity: String,
    pub duration_seconds: u64,
    /// Renew this long before the lease would expire.
    pub grace_seconds: u64,
}

impl LeaseConfig {
    pub fn new(identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: "default".into(),
            name: "nodemedic-controller".into(),
            identity: identity.into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }
}

pub struct Leadership {
    config: LeaseConfig,
    leases: Api<Lease>,
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

impl Leadership {
    /// Starts campaigning in the background.
    pub async fn start(client: Client, config: LeaseConfig) -> Result<Leadership, kube_lease_manager::LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client.clone(), config.name.clone())
            .with_namespace(config.namespace.clone())
            .with_identity(config.identity.clone())
            .with_duration(config.duration_seconds)
            .with_grace(config.grace_seconds)
            .with_field_manager(format!("nodemedic-lease-{}", config.identity))
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        let leases = Api::namespaced(client, &config.namespace);
        Ok(Leadership { config, leases, state, task })
    }

    /// What the lease manager last saw.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Waits until leadership changes (either way); `None` when the lease task has ended.
    pub async fn changed(&mut self) -> Option<bool> {
        self.state.changed().await.ok()?;
        Some(*self.state.borrow_and_update())
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// True only if the Lease on the API server names this replica and has not expired.
    pub async fn confirm(&self) -> Result<bool, kube::Error> {
        if !self.is_leader() {
            return Ok(false);
        }
        let lease = self.leases.get(&self.config.name).await?;
        let Some(spec) = lease.spec else { return Ok(false) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let duration = spec.lease_duration_seconds.map_or(self.config.duration_seconds as i64, i64::from);
        let Some(renewed) = spec.renew_time.map(|t| t.0) else { return Ok(false) };
        // Leave the grace period as margin: writes stop before another replica may take over.
        let usable_until = renewed.as_second() + duration - self.config.grace_seconds as i64;
        Ok(jiff::Timestamp::now().as_second() < usable_until)
    }

    /// Gives the lease up so a standby takes over at once (SIGTERM path).
    pub async fn release(self) {
        let Leadership { state, task, .. } = self;
        // Closing the channel makes the manager's task release the lease and end.
        drop(state);
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the lease task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}
