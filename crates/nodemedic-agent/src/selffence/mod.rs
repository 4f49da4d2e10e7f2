//! Self-fencing in the node agent (issue 11 §2). Every `check_interval` the agent renews its Lease
//! (its check of the API server, and the last-contact time the controller reads) and feeds the
//! watchdog. Once the API server has been out of reach for `api_loss_window`, it asks its peers
//! ([`peer`]) and applies `nodemedic_core::selffence::decide`: when it is the one cut off it stops
//! feeding the watchdog (the node resets) or, without one, reboots with the reboot syscall.

pub mod config;
pub mod peer;
pub mod watchdog;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams};
use nodemedic_core::selffence::{PROMISE_ANNOTATION, SelfFenceDecision, SelfFencingPromise, decide, lease_name};
use thiserror::Error;

pub use config::SelfFencingConfig;
use watchdog::Watchdog;

#[derive(Debug, Error)]
pub enum SelfFenceError {
    #[error("reading the peer token {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("the peer token file {0} is empty")]
    EmptyToken(String),
    #[error("the watchdog is required but {device} cannot be used: {source}")]
    Watchdog { device: String, source: std::io::Error },
    #[error("self_fencing: {0}")]
    SafeTime(#[from] nodemedic_core::selffence::SafeTimeError),
    #[error("listening for peers on {listen}: {source}")]
    Listen { listen: SocketAddr, source: std::io::Error },
    #[error("the peer HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The watchdog, shared with `main` so a deliberate shutdown can disarm it. Once the agent decides to
/// fence, it takes the watchdog out: nothing disarms it any more.
pub type WatchdogSlot = Arc<Mutex<Option<Watchdog>>>;

pub struct SelfFencer {
    pub client: kube::Client,
    pub node: String,
    pub config: SelfFencingConfig,
}

impl SelfFencer {
    /// Opens the watchdog when the device exists (refusing to go on without it when it is required).
    pub fn open_watchdog(&self) -> Result<WatchdogSlot, SelfFenceError> {
        let wd = &self.config.watchdog;
        let opened = match Watchdog::open(&wd.device, wd.timeout.0) {
            Ok(dog) => Some(dog),
            Err(source) if wd.required => return Err(SelfFenceError::Watchdog { device: wd.device.display().to_string(), source }),
            Err(error) => {
                tracing::warn!(device = %wd.device.display(), %error, "no watchdog: self-fencing reboots with the reboot syscall, and the controller will not count it as fencing");
                None
            }
        };
        Ok(Arc::new(Mutex::new(opened)))
    }

    /// Runs until the process ends; returns only on a setup error.
    pub async fn run(self, slot: WatchdogSlot) -> Result<(), SelfFenceError> {
        let cfg = &self.config;
        let path = cfg.token_file.display().to_string();
        let token = std::fs::read_to_string(&cfg.token_file).map_err(|source| SelfFenceError::Token { path: path.clone(), source })?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(SelfFenceError::EmptyToken(path));
        }
        let armed = lock(&slot).is_some();
        let timings = cfg.timings(armed);
        let safe = cfg.safe_time(armed)?;
        let api_ok = Arc::new(AtomicBool::new(false));
        let answerer = peer::Answerer {
            node: self.node.clone(),
            token: token.clone(),
            api_ok: api_ok.clone(),
            client: self.client.clone(),
            lookup_timeout: cfg.peer_timeout.0 / 2,
        };
        let listener =
            tokio::net::TcpListener::bind(cfg.listen).await.map_err(|source| SelfFenceError::Listen { listen: cfg.listen, source })?;
        let server = tokio::spawn(peer::serve(listener, Arc::new(answerer)));
        let asker = peer::Asker::new(&self.node, &token, cfg.peer_timeout.0)?;
        tracing::info!(node = %self.node, watchdog = armed, %safe, listen = %cfg.listen, "self-fencing armed");

        let mut peers: Vec<SocketAddr> = Vec::new();
        let mut peers_read: Option<Instant> = None;
        let mut last_contact = Instant::now();
        let mut last_said = String::new();
        let mut ticks = tokio::time::interval(cfg.check_interval.0);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let decision = loop {
            ticks.tick().await;
            if let Some(dog) = lock(&slot).as_mut()
                && let Err(error) = dog.keepalive()
            {
                tracing::error!(%error, "feeding the watchdog");
            }
            let promise = SelfFencingPromise { timings, safe_time_to_assume_rebooted: safe, watchdog: armed, peers: count(peers.len()) };
            // Counted from before the call: the Lease's renewTime is set then, and the controller counts from it.
            let sent = Instant::now();
            let renewed = self.renew_lease(&promise).await;
            api_ok.store(renewed, Ordering::Relaxed);
            if renewed {
                last_contact = sent;
                if peers_read.is_none_or(|at| at.elapsed() >= cfg.peer_refresh.0)
                    && let Some(found) = self.read_peers().await
                {
                    peers = found;
                    peers_read = Some(Instant::now());
                }
            }
            let lost = (!renewed).then(|| core_duration(last_contact.elapsed()));
            let asked = match lost {
                Some(l) if l >= timings.api_loss_window => asker.ask_all(&peers).await,
                _ => Vec::new(),
            };
            let decision = decide(lost, &asked, &timings);
            match &decision {
                SelfFenceDecision::Reboot(_) => break decision,
                SelfFenceDecision::Stay(why) if lost.is_some() && *why != last_said => {
                    tracing::warn!(node = %self.node, reason = %why, "self-fencing: staying up");
                    last_said = why.clone();
                }
                SelfFenceDecision::Stay(_) => {}
            }
        };
        let SelfFenceDecision::Reboot(reason) = decision else { return Ok(()) };
        // Taken out of the slot: a shutdown from now on leaves the watchdog armed.
        let dog = lock(&slot).take();
        self.fence(&reason, dog).await;
        server.abort();
        std::future::pending().await
    }

    /// The check of the API server: a server-side apply of this node's Lease with the promise.
    async fn renew_lease(&self, promise: &SelfFencingPromise) -> bool {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.config.lease_namespace);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(&self.node)),
                annotations: Some([(PROMISE_ANNOTATION.to_string(), serde_json::to_string(promise).unwrap_or_default())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                lease_duration_seconds: i32::try_from(promise.safe_time_to_assume_rebooted.as_millis() / 1000).ok(),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply(crate::node::FIELD_MANAGER).force();
        match tokio::time::timeout(self.config.check_interval.0 / 2, api.patch(&lease_name(&self.node), &params, &Patch::Apply(&lease)))
            .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(error)) => {
                tracing::debug!(%error, "renewing the self-fencing Lease");
                false
            }
            Err(_) => false,
        }
    }

    /// The other nodes' InternalIPs, at the peer port; None when the list cannot be read.
    async fn read_peers(&self) -> Option<Vec<SocketAddr>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&self.config.peer_selector);
        let listed = tokio::time::timeout(self.config.check_interval.0 / 2, nodes.list(&params)).await;
        let Ok(Ok(list)) = listed else {
            tracing::warn!("reading the peer list; the last one is kept");
            return None;
        };
        let port = self.config.peer_port();
        let peers: Vec<SocketAddr> = list
            .items
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(self.node.as_str()))
            .filter_map(|n| {
                let addresses = n.status.as_ref()?.addresses.as_ref()?;
                let internal = addresses.iter().find(|a| a.type_ == "InternalIP")?;
                internal.address.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
            })
            .collect();
        tracing::debug!(peers = peers.len(), "peer list read");
        Some(peers)
    }

    /// Reboots the node: the test hook records it; a watchdog is left unfed (the node resets within
    /// its timeout), then the reboot syscall follows in case it did not.
    async fn fence(&self, reason: &str, dog: Option<Watchdog>) {
        tracing::error!(node = %self.node, %reason, "self-fencing: rebooting this node");
        if let Some(path) = &self.config.test_reboot_record {
            let line = format!("{} {} reboot: {reason}\n", jiff::Timestamp::now(), self.node);
            let written = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
                use std::io::Write;
                f.write_all(line.as_bytes())
            });
            if let Err(error) = written {
                tracing::error!(path = %path.display(), %error, "the test hook could not record the reboot");
            }
            // Keep the watchdog (if any) unfed and open, as on a real node.
            std::mem::forget(dog);
            return;
        }
        if let Some(dog) = dog {
            tracing::error!(timeout = ?dog.timeout, "the watchdog is no longer fed; the node resets when it runs out");
            tokio::time::sleep(dog.timeout + self.config.reboot_time.0).await;
            tracing::error!("the node is still up after the watchdog's timeout; using the reboot syscall");
            std::mem::forget(dog);
        }
        nix::unistd::sync();
        let Err(error) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        tracing::error!(%error, "the reboot syscall failed (CAP_SYS_BOOT and hostPID are needed)");
    }
}

fn lock(slot: &WatchdogSlot) -> std::sync::MutexGuard<'_, Option<Watchdog>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Disarms the watchdog on a deliberate shutdown (nothing to do once fencing took it).
pub fn disarm(slot: &WatchdogSlot) {
    if let Some(dog) = lock(slot).take() {
        dog.disarm();
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn core_duration(d: Duration) -> nodemedic_core::Duration {
    nodemedic_core::Duration::from_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
