//! The leader lease against a real API server: the check made before every batch of writes must not
//! refuse a replica that holds the lease and renews it on time (issue 15: passes just before a
//! renewal were refused, the boundary counted in whole seconds).

use nodemedic_controller::leader::{Leadership, LeaseConfig};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_renewing_its_lease_is_never_refused_between_renewals() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        // Renewed every 3 s (6 s − 3 s grace): a few renewals in the time below.
        let config = LeaseConfig { duration_seconds: 6, grace_seconds: 3, ..LeaseConfig::new("replica-a") };
        let leadership = Leadership::start(cp.client(), config).await?;
        wait_for(Duration::from_secs(20), "replica-a to lead", || async { leadership.is_leader().then_some(()) }).await?;
        let (mut asked, mut refused) = (0u32, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if leadership.is_leader() {
                asked += 1;
                if !leadership.confirm().await? {
                    refused.push(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(asked > 50, "asked only {asked} times");
        assert!(refused.is_empty(), "refused {} of {asked} checks while holding the lease, at {refused:?}", refused.len());
        leadership.release().await;
        Ok::<_, anyhow::Error>(())
    })
    .await
}
