//! nodemedic-testenv owns a real Kubernetes control plane for tests and the dev cluster: etcd and
//! kube-apiserver on free loopback ports with generated certificates and RBAC, and optionally
//! kube-controller-manager, kube-scheduler and kwok (simulated kubelets), built from Go modules by
//! `scripts/control-plane/build`. It also has helpers for fake GPU nodes. It must not contain any of
//! nodemedic's own logic: tests bring that, and prove it against this control plane.

mod audit;
mod binaries;
mod certs;
mod nodes;
mod outage;
pub mod redfish;
mod spawner;

pub use binaries::Binaries;
pub use nodes::{FakeNode, GpuVendor, KWOK_ANNOTATION, new_boot_id};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    #[error("the control-plane binaries could not be built or found: {0}")]
    Binaries(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("certificates: {0}")]
    Certs(#[from] rcgen::Error),
    #[error("{component} did not become ready within {waited:?}; its log ends with:\n{log}")]
    NotReady { component: &'static str, waited: Duration, log: String },
    #[error("{component} exited early ({status}); its log ends with:\n{log}")]
    Exited { component: &'static str, status: String, log: String },
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("the health-probe HTTP client: {0}")]
    ProbeClient(#[from] reqwest::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestEnvError {
    let what = what.into();
    move |source| TestEnvError::Io { what, source }
}

/// Which components to run beside etcd and kube-apiserver.
#[derive(Debug, Clone)]
pub struct Options {
    /// kube-controller-manager with every controller (`--controllers=*`): among them node lifecycle
    /// (NotReady/Unknown, unreachable taints), taint eviction, disruption budgets, service accounts
    /// and pod GC.
    pub controller_manager: bool,
    pub scheduler: bool,
    /// Simulated kubelets for nodes annotated `kwok.x-k8s.io/node=fake`.
    pub kwok: bool,
    /// How long a node may miss heartbeats before the node lifecycle controller marks it Unknown.
    pub node_monitor_grace_period: Duration,
    /// Write an audit log (JSON lines, one per request at the Metadata level) of the requests these
    /// users make; see [`ControlPlane::audit_log`]. Empty: no audit log. Only named users are logged,
    /// so a benchmark's own setup traffic does not bury what it measures.
    pub audit_users: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controller_manager: false,
            scheduler: false,
            kwok: false,
            node_monitor_grace_period: Duration::from_secs(20),
            audit_users: Vec::new(),
        }
    }
}

impl Options {
    /// Everything: controller manager, scheduler and kwok.
    pub fn full() -> Self {
        Options { controller_manager: true, scheduler: true, kwok: true, ..Options::default() }
    }
}

/// At most this many control planes run at once in one test process (the machine has two cores).
const MAX_CONCURRENT: usize = 2;

static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let (lock, cv) = &RUNNING;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_CONCURRENT {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &RUNNING;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_one();
    }
}

struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane. Everything is stopped and deleted on drop, also when a test panics; a
/// panicking test gets the tail of every component's log printed. A test process that is killed
/// (no drop runs) takes the components with it: they get a parent-death signal (see `spawner`).
pub struct ControlPlane {
    /// Behind a lock so that a shared control plane (`Arc`) can stop and start its API server.
    components: Mutex<Vec<Component>>,
    /// kube-apiserver's flags, to start it again on the same port and etcd.
    api_server_args: Mutex<Vec<String>>,
    client: Client,
    kubeconfig: PathBuf,
    server: String,
    binaries: Binaries,
    dir: tempfile::TempDir,
    _slot: Slot,
}

fn free_port() -> Result<u16, TestEnvError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free loopback port"))?;
    Ok(l.local_addr().map_err(io("reading the bound port"))?.port())
}

/// Flags kube-controller-manager and kube-scheduler share: the admin kubeconfig for everything, no
/// leader election, their own serving port on loopback (where their `/healthz` is probed).
fn client_component_args(kubeconfig: &Path, secure_port: u16) -> Vec<String> {
    let k = kubeconfig.display();
    vec![
        format!("--kubeconfig={k}"),
        format!("--authentication-kubeconfig={k}"),
        format!("--authorization-kubeconfig={k}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={secure_port}"),
    ]
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a port taken between picking it and the component binding it looks like in Go's logs.
const PORT_TAKEN: &str = "address already in use";

/// How a component shows it is ready: its health endpoint answers `ok`.
enum Health {
    /// A path on the API server, asked with the admin client.
    ApiServer(&'static str),
    /// A URL of the component's own server (self-signed on loopback, or plain HTTP for kwok).
    Url(String),
}

/// A start that failed; `port_taken` when some component's log says it lost a port race, so that
/// starting again on fresh ports may succeed.
struct FailedStart {
    error: TestEnvError,
    port_taken: bool,
}

impl From<TestEnvError> for FailedStart {
    fn from(error: TestEnvError) -> Self {
        FailedStart { error, port_taken: false }
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (plus what `opts` asks for) and waits until each component
    /// reports healthy. Ports are picked free just before use; when another process takes one in
    /// between (tests run side by side), the whole control plane is started again on new ports.
    pub async fn start(opts: Options) -> Result<ControlPlane, TestEnvError> {
        const TRIES: u32 = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts).await {
                Ok(cp) => return Ok(cp),
                Err(failed) if failed.port_taken && attempt < TRIES => attempt += 1,
                Err(failed) => return Err(failed.error),
            }
        }
    }

    async fn start_once(opts: &Options) -> Result<ControlPlane, FailedStart> {
        let binaries = Binaries::locate()?;
        let slot = tokio::task::spawn_blocking(Slot::take).await.map_err(|e| TestEnvError::Binaries(e.to_string()))?;
        let dir = tempfile::Builder::new().prefix("nodemedic-cp-").tempdir().map_err(io("creating the control-plane directory"))?;
        let root = dir.path().to_path_buf();
        let pki = certs::Pki::generate(&root)?;

        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = root.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(&server)).map_err(io("writing the kubeconfig"))?;

        let client = pki.client(&server).await?;
        let mut cp = ControlPlane {
            components: Mutex::new(Vec::new()),
            api_server_args: Mutex::new(Vec::new()),
            client,
            kubeconfig,
            server,
            binaries,
            dir,
            _slot: slot,
        };
        match cp.launch(opts, api_port).await {
            Ok(()) => Ok(cp),
            Err(error) => {
                // The failing component's log tail may not show it; any component's whole log may.
                let port_taken = cp.components().iter().any(|c| std::fs::read_to_string(&c.log).is_ok_and(|log| log.contains(PORT_TAKEN)));
                Err(FailedStart { error, port_taken })
            }
        }
    }

    /// Spawns the components and waits for each to be healthy.
    async fn launch(&mut self, opts: &Options, api_port: u16) -> Result<(), TestEnvError> {
        let root = self.dir.path().to_path_buf();
        let p = |f: &str| root.join(f).display().to_string();
        let (etcd_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        self.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let mut api_server_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ];
        if !opts.audit_users.is_empty() {
            api_server_args.extend(audit::apiserver_args(self.dir.path(), &self.audit_log(), &opts.audit_users)?);
        }
        self.spawn("kube-apiserver", &api_server_args)?;
        *self.api_server_args.lock().unwrap_or_else(|e| e.into_inner()) = api_server_args;
        // etcd has no probe of its own: the API server is not ready without it.
        self.wait_ready("kube-apiserver", Health::ApiServer("/readyz"), Duration::from_secs(90)).await?;

        // The rest start side by side, then each is awaited in turn.
        let mut pending: Vec<(&'static str, Health)> = Vec::new();
        if opts.controller_manager {
            let grace = opts.node_monitor_grace_period.as_secs().max(5);
            let port = free_port()?;
            let mut args = client_component_args(&self.kubeconfig, port);
            args.extend([
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=false".into(),
                "--node-monitor-period=1s".into(),
                format!("--node-monitor-grace-period={grace}s"),
                "--controllers=*".into(),
            ]);
            self.spawn("kube-controller-manager", &args)?;
            pending.push(("kube-controller-manager", Health::Url(format!("https://127.0.0.1:{port}/healthz"))));
        }
        if opts.scheduler {
            let port = free_port()?;
            self.spawn("kube-scheduler", &client_component_args(&self.kubeconfig, port))?;
            pending.push(("kube-scheduler", Health::Url(format!("https://127.0.0.1:{port}/healthz"))));
        }
        if opts.kwok {
            let port = free_port()?;
            let mut args = vec![
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake"),
                "--cidr=10.244.0.1/16".into(),
                "--node-ip=10.0.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
                format!("--server-address=127.0.0.1:{port}"),
            ];
            let stages_dir = &self.binaries.kwok_stages;
            let stages = std::fs::read_dir(stages_dir).map_err(io(format!("reading kwok stages in {}", stages_dir.display())))?;
            let mut files: Vec<PathBuf> = stages.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            args.extend(files.iter().map(|f| format!("--config={}", f.display())));
            self.spawn("kwok", &args)?;
            pending.push(("kwok", Health::Url(format!("http://127.0.0.1:{port}/healthz"))));
        }
        for (component, health) in pending {
            self.wait_ready(component, health, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Where the API server writes its audit log when [`Options::audit_users`] names anyone.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    fn spawn(&self, name: &'static str, args: &[String]) -> Result<(), TestEnvError> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = file.try_clone().map_err(io("duplicating a log handle"))?;
        let mut command = spawner::command_dying_with_parent(&self.binaries.path(name));
        command.args(args).stdin(Stdio::null()).stdout(file).stderr(err);
        let child = spawner::spawn(command).map_err(io(format!("starting {name}")))?;
        self.components().push(Component { name, child, log });
        Ok(())
    }

    /// Waits for `component`'s health endpoint to answer `ok`, watching that no component died.
    async fn wait_ready(&self, component: &'static str, health: Health, limit: Duration) -> Result<(), TestEnvError> {
        // Only for loopback probes of components whose self-signed serving certificates were made at
        // their start; /healthz is open to anonymous requests.
        let probe = reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(5)).build()?;
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let body = match &health {
                Health::ApiServer(path) => {
                    let req = http::Request::get(*path).body(Vec::new()).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
                    self.client.request_text(req).await.ok()
                }
                Health::Url(url) => match probe.get(url).send().await {
                    Ok(response) => response.text().await.ok(),
                    Err(_) => None,
                },
            };
            if body.is_some_and(|b| b.trim() == "ok") {
                return Ok(());
            }
            if start.elapsed() > limit {
                let log = self.components().iter().find(|c| c.name == component).map(|c| tail(&c.log, 30)).unwrap_or_default();
                return Err(TestEnvError::NotReady { component, waited: limit, log });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn components(&self) -> std::sync::MutexGuard<'_, Vec<Component>> {
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails if any component has exited.
    pub fn check_alive(&self) -> Result<(), TestEnvError> {
        for c in self.components().iter_mut() {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(TestEnvError::Exited { component: c.name, status: status.to_string(), log: tail(&c.log, 40) });
            }
        }
        Ok(())
    }

    /// Each running component's name and process id (the binary's own: setpriv execs it).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.components().iter().map(|c| (c.name, c.child.id())).collect()
    }

    /// An admin client (system:masters).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client that authenticates with a bearer token (e.g. a service account's), trusting this
    /// control plane's CA.
    pub async fn client_with_token(&self, token: &str) -> Result<Client, TestEnvError> {
        let mut kc = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        for auth in &mut kc.auth_infos {
            if let Some(info) = auth.auth_info.as_mut() {
                info.client_certificate_data = None;
                info.client_key_data = None;
                info.token = Some(token.to_string().into());
            }
        }
        let mut config =
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        config.default_retry = false;
        Ok(Client::try_from(config)?)
    }

    /// Writes a kubeconfig that authenticates with `token` (a service account's, say) to `path`, for
    /// running a process as that identity.
    pub fn write_kubeconfig_with_token(&self, token: &str, path: &Path) -> Result<(), TestEnvError> {
        let mut kc = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        for auth in &mut kc.auth_infos {
            if let Some(info) = auth.auth_info.as_mut() {
                info.client_certificate_data = None;
                info.client_key_data = None;
                info.client_certificate = None;
                info.client_key = None;
                info.token = Some(token.to_string().into());
            }
        }
        // JSON is YAML: kubectl and kube read it as a kubeconfig.
        let text = serde_json::to_string_pretty(&kc).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| TestEnvError::Kubeconfig(format!("writing {}: {e}", path.display())))
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Runs the built kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Result<std::process::Output, TestEnvError> {
        Command::new(self.binaries.path("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(io("running kubectl"))
    }

    /// Runs a test body against this control plane; on error the components' logs are printed
    /// before the error is returned (a panicking test gets them from `Drop`).
    pub async fn run<'a, T, E, Fut>(&'a self, body: impl FnOnce(&'a ControlPlane) -> Fut) -> Result<T, E>
    where
        E: std::fmt::Display,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let result = body(self).await;
        if let Err(e) = &result {
            eprintln!("test failed: {e}\ncontrol plane logs:\n{}", self.logs(60));
        }
        result
    }

    /// The last `lines` lines of each component's log.
    pub fn logs(&self, lines: usize) -> String {
        self.components()
            .iter()
            .map(|c| format!("----- {} ({})\n{}", c.name, c.log.display(), tail(&c.log, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn stop_all(components: &mut [Component]) {
    for c in components.iter_mut().rev() {
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("control plane in {} — component logs:\n{}", self.dir.path().display(), self.logs(40));
        }
        stop_all(&mut self.components());
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T, TestEnvError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(TestEnvError::Timeout(limit, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, mode: u32) -> std::io::Result<()> {
        std::fs::write(path, "")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn refusal(bin: &Path) -> String {
        match Binaries::in_dir(bin) {
            Ok(found) => panic!("{} was accepted: {found:?}", bin.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_empty_bin_directory_is_refused_naming_every_binary_and_the_directory() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let message = refusal(dir.path());
        for name in Binaries::REQUIRED {
            assert!(message.contains(&format!("{name} is missing")), "{message}");
        }
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
        Ok(())
    }

    #[test]
    fn a_bin_directory_lacking_one_binary_or_with_one_not_executable_names_just_those() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in Binaries::REQUIRED.into_iter().filter(|n| *n != "kwok") {
            write_file(&dir.path().join(name), 0o755)?;
        }
        write_file(&dir.path().join("kubectl"), 0o644)?;
        let message = refusal(dir.path());
        assert!(message.contains("kwok is missing") && message.contains("kubectl is not an executable file"), "{message}");
        assert!(!message.contains("etcd"), "{message}");
        Ok(())
    }

    #[test]
    fn a_complete_bin_directory_is_accepted_with_the_kwok_stages_beside_it() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin)?;
        for name in Binaries::REQUIRED {
            write_file(&bin.join(name), 0o755)?;
        }
        let found = Binaries::in_dir(&bin)?;
        assert_eq!(found.bin, bin);
        assert_eq!(found.kwok_stages, root.path().join("kwok-stages"));
        assert_eq!(found.path("etcd"), bin.join("etcd"));
        Ok(())
    }
}
