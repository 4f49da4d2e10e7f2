//! The `self_fencing` section of the agent configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nodemedic_core::selffence::{SafeTimeError, SelfFenceTimings, safe_time};
use serde::{Deserialize, Serialize};

use crate::probe::TextDuration;

/// Self-fencing: the agent checks the API server (by renewing its Lease), asks its peers once the API
/// server has been out of reach for `api_loss_window`, and reboots its node when it is the one cut off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfFencingConfig {
    /// Where this agent answers its peers.
    pub listen: SocketAddr,
    /// The port peers answer on (their `listen` port; the same DaemonSet, so the same port by default).
    pub peer_port: Option<u16>,
    /// A file holding the shared peer token (mounted from a Secret); peers refuse a question without it.
    pub token_file: PathBuf,
    /// The namespace of the agent's Lease (`self-fencing-<node>`), renewed at every check: the
    /// controller's namespace, where it reads them.
    pub lease_namespace: String,
    /// Only nodes with these labels are peers (a label selector); all nodes when empty.
    pub peer_selector: String,
    pub api_loss_window: TextDuration,
    /// How often the API server is checked; an API call's deadline is half of it.
    pub check_interval: TextDuration,
    /// The deadline of one peer question.
    pub peer_timeout: TextDuration,
    /// How often the peer list is read again from the API server (while it answers).
    pub peer_refresh: TextDuration,
    pub watchdog: WatchdogConfig,
    /// How long the reboot takes to stop every process on the node once triggered.
    pub reboot_time: TextDuration,
    /// Replaces the computed floor; a value below the floor is refused.
    pub safe_time_to_assume_rebooted: Option<TextDuration>,
    /// Test hook: instead of rebooting, append a line to this file (and stop feeding the watchdog,
    /// if one is open). Never set it on a real node.
    pub test_reboot_record: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// The watchdog device. When it does not exist the agent reboots with the reboot syscall (and
    /// the controller does not count its self-fencing, see docs/fencing.md).
    pub device: PathBuf,
    /// Set on the device when it is opened: the node resets this long after the last keepalive.
    pub timeout: TextDuration,
    /// Refuse to start when the device cannot be opened.
    pub required: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig { device: PathBuf::from("/dev/watchdog"), timeout: TextDuration(Duration::from_secs(60)), required: false }
    }
}

impl Default for SelfFencingConfig {
    fn default() -> Self {
        SelfFencingConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9450)),
            peer_port: None,
            token_file: PathBuf::from("/etc/nodemedic/self-fencing/token"),
            lease_namespace: "nodemedic".into(),
            peer_selector: String::new(),
            api_loss_window: TextDuration(Duration::from_secs(60)),
            check_interval: TextDuration(Duration::from_secs(10)),
            peer_timeout: TextDuration(Duration::from_secs(5)),
            peer_refresh: TextDuration(Duration::from_secs(300)),
            watchdog: WatchdogConfig::default(),
            reboot_time: TextDuration(Duration::from_secs(30)),
            safe_time_to_assume_rebooted: None,
            test_reboot_record: None,
        }
    }
}

fn core(d: &TextDuration) -> nodemedic_core::Duration {
    nodemedic_core::Duration::from_millis(i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX))
}

impl SelfFencingConfig {
    /// The timeouts the safe time is computed from; `watchdog` says whether a watchdog is open (its
    /// timeout counts only then).
    pub fn timings(&self, watchdog: bool) -> SelfFenceTimings {
        SelfFenceTimings {
            api_loss_window: core(&self.api_loss_window),
            check_interval: core(&self.check_interval),
            peer_timeout: core(&self.peer_timeout),
            watchdog_timeout: if watchdog { core(&self.watchdog.timeout) } else { nodemedic_core::Duration::ZERO },
            reboot_time: core(&self.reboot_time),
        }
    }

    /// `safeTimeToAssumeRebooted`, or the refusal naming the floor. Checked with the watchdog's
    /// timeout counted (the larger floor) so a configuration valid here stays valid on any node.
    pub fn safe_time(&self, watchdog: bool) -> Result<nodemedic_core::Duration, SafeTimeError> {
        let configured = self.safe_time_to_assume_rebooted.as_ref().map(core);
        safe_time(&self.timings(true), configured)?;
        safe_time(&self.timings(watchdog), configured.or(Some(self.timings(true).floor())))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.check_interval.0.is_zero() || self.peer_timeout.0.is_zero() {
            return Err("self_fencing.check_interval and peer_timeout must be above zero".into());
        }
        if self.watchdog.timeout.0.as_secs() == 0 {
            return Err("self_fencing.watchdog.timeout must be at least 1s".into());
        }
        // The watchdog is fed once a check, and a check may run late by its API call and a peer round.
        if 2 * self.check_interval.0 + self.peer_timeout.0 >= self.watchdog.timeout.0 {
            return Err(format!(
                "self_fencing.watchdog.timeout {:?} must exceed 2 × check_interval + peer_timeout ({:?}), or the watchdog resets a healthy node",
                self.watchdog.timeout.0,
                2 * self.check_interval.0 + self.peer_timeout.0
            ));
        }
        if self.lease_namespace.trim().is_empty() {
            return Err("self_fencing.lease_namespace is empty".into());
        }
        self.safe_time(true).map(|_| ()).map_err(|e| format!("self_fencing: {e}"))
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port.unwrap_or(self.listen.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_time_below_the_floor_is_refused_naming_the_floor() {
        let config =
            SelfFencingConfig { safe_time_to_assume_rebooted: Some(TextDuration(Duration::from_secs(60))), ..SelfFencingConfig::default() };
        let error = config.validate().err().unwrap_or_default();
        // 60s + 2 × 10s + 5s + 60s + 30s.
        assert!(error.contains("below the floor 2m55s"), "{error}");
        assert_eq!(SelfFencingConfig::default().safe_time(true).map(|d| d.to_string()), Ok("2m55s".to_string()));
    }

    #[test]
    fn a_watchdog_timeout_shorter_than_the_feeding_gap_is_refused() {
        let config = SelfFencingConfig {
            check_interval: TextDuration(Duration::from_secs(30)),
            watchdog: WatchdogConfig { timeout: TextDuration(Duration::from_secs(60)), ..WatchdogConfig::default() },
            ..SelfFencingConfig::default()
        };
        let error = config.validate().err().unwrap_or_default();
        assert!(error.contains("must exceed 2 × check_interval + peer_timeout (65s)"), "{error}");
    }

    #[test]
    fn without_a_watchdog_the_default_safe_time_still_counts_one() {
        // The published safe time does not shrink on a node without a watchdog.
        assert_eq!(SelfFencingConfig::default().safe_time(false).map(|d| d.to_string()), Ok("2m55s".to_string()));
    }
}
