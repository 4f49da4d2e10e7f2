//! Leader election over a coordination.k8s.io Lease (kube-lease-manager). Every replica watches
//! and decides; only the holder writes. Holding the lease in memory is not trusted on its own: a
//! replica that was paused (GC, a stopped VM) may still believe it leads while another replica has
//! taken over, so [`Leadership::confirm`] re-reads the Lease before each batch of writes.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
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

/// Whether a Lease naming `config.identity` may be written under at `now`: until renewTime +
/// duration − grace/2, counted to the microsecond the API server keeps. The lease manager renews at
/// renewTime + duration − grace, so a holder whose renewals succeed is never refused; the other
/// half of the grace is the margin by which writes stop before another replica may take over.
pub fn lease_usable(spec: &LeaseSpec, config: &LeaseConfig, now: jiff::Timestamp) -> bool {
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return false;
    }
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else { return false };
    let duration_ms = spec.lease_duration_seconds.map_or(config.duration_seconds as i64, i64::from) * 1000;
    let margin_ms = config.grace_seconds as i64 * 1000 / 2;
    let usable_for = jiff::SignedDuration::from_millis(duration_ms - margin_ms);
    renewed.checked_add(usable_for).is_ok_and(|until| now < until)
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
    /// Starts campaigning in the background; fails when the API server cannot be reached (see
    /// [`Leadership::start_with_retry`]).
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

    /// Starts campaigning, retrying with backoff (0.5 s doubling to 10 s) while the API server
    /// cannot be reached; `None` when `stop` resolves first.
    pub async fn start_with_retry(client: Client, config: LeaseConfig, stop: impl std::future::Future<Output = ()>) -> Option<Leadership> {
        futures::pin_mut!(stop);
        let mut backoff = std::time::Duration::from_millis(500);
        loop {
            match Leadership::start(client.clone(), config.clone()).await {
                Ok(leadership) => return Some(leadership),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "leader election cannot start yet (is the API server up?); retrying")
                }
            }
            tokio::select! {
                _ = &mut stop => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
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

    /// True only if the Lease on the API server names this replica and is usable now (see
    /// [`lease_usable`]).
    pub async fn confirm(&self) -> Result<bool, kube::Error> {
        if !self.is_leader() {
            return Ok(false);
        }
        let lease = self.leases.get(&self.config.name).await?;
        Ok(lease.spec.as_ref().is_some_and(|spec| lease_usable(spec, &self.config, jiff::Timestamp::now())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn held_by(identity: &str, renewed: jiff::Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Issue 15: the lease manager renews 10 s after the last renewal (15 s − 5 s grace); a pass just
    /// before that was refused, the renewal counted in whole seconds.
    #[test]
    fn a_pass_just_before_the_renewal_is_not_refused() {
        let config = LeaseConfig::new("replica-a");
        let spec = held_by("replica-a", at("2026-12-02T15:58:03.900Z"));
        // Today's renewal is due at :13.900; the old check refused from :13.000.
        assert!(lease_usable(&spec, &config, at("2026-12-02T15:58:13.500Z")));
        assert!(lease_usable(&spec, &config, at("2026-12-02T15:58:13.950Z")), "the renewal itself may take a moment");
    }

    #[test]
    fn the_boundary_is_counted_to_the_microsecond() {
        let config = LeaseConfig::new("replica-a");
        let spec = held_by("replica-a", at("2026-12-02T15:58:03.900001Z"));
        // Usable until renewTime + 15 s − 2.5 s.
        assert!(lease_usable(&spec, &config, at("2026-12-02T15:58:16.400000Z")));
        assert!(!lease_usable(&spec, &config, at("2026-12-02T15:58:16.400001Z")));
    }

    #[test]
    fn another_holder_or_no_renewal_time_is_never_usable() {
        let config = LeaseConfig::new("replica-a");
        let now = at("2026-12-02T15:58:04Z");
        assert!(!lease_usable(&held_by("replica-b", at("2026-12-02T15:58:03Z")), &config, now));
        let never_renewed = LeaseSpec { renew_time: None, ..held_by("replica-a", now) };
        assert!(!lease_usable(&never_renewed, &config, now));
    }
}
