//! What the integration tests share: a sample incident, free ports, and the real peers (an aiosmtpd SMTP
//! server, an Alertmanager) started per test and stopped when dropped. A peer that cannot start fails the
//! test with a message saying how to install it; nothing is skipped.
#![allow(dead_code)]

use anyhow::{Context, Result, anyhow, bail};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::StepOutcome;
use nodemedic_core::time::Time;
use nodemedic_notify::{Attempt, Condition, Incident, IncidentKind, NodeDetails, ProbeHistory, ProbeResult, Taint};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demo's never-recovering node after its ladder ended in Manual.
pub fn never_recovering_node_incident() -> Incident {
    let mut node = NodeDetails::named("gpu-node-3");
    node.internal_ips = vec!["10.0.3.13".into()];
    node.external_ips = vec!["198.51.100.13".into()];
    node.labels.insert("nvidia.com/gpu.product".into(), "H100-SXM".into());
    node.labels.insert("pool".into(), "training".into());
    node.taints.push(Taint { key: "nodemedic.io/repair-manual".into(), value: None, effect: "NoSchedule".into() });
    node.conditions.push(Condition {
        type_: "GpuHealthy".into(),
        status: "False".into(),
        reason: "GpuMissing".into(),
        message: "7 of 8 GPUs visible".into(),
        last_transition: Some(Time(1_700_000_000_000)),
    });
    let step = |attempt: u32, step: RemediationStep, start: i64, end: Option<i64>, outcome: Option<StepOutcome>, reason: &str| Attempt {
        attempt,
        step,
        started_at: Time(1_700_000_000_000 + start * 1000),
        ended_at: end.map(|end| Time(1_700_000_000_000 + end * 1000)),
        outcome,
        reason: reason.into(),
        executed: true,
    };
    let attempts = vec![
        step(1, RemediationStep::Reboot, 60, Some(600), Some(StepOutcome::Failed), "still 7 of 8 GPUs after reboot"),
        step(2, RemediationStep::Reimage, 600, Some(2400), Some(StepOutcome::Failed), "still 7 of 8 GPUs after reimage"),
        step(3, RemediationStep::Replace, 2400, Some(6000), Some(StepOutcome::TimedOut), "provider did not answer within 1h"),
        step(4, RemediationStep::Manual, 6000, None, None, "the ladder is exhausted"),
    ];
    let probes = vec![ProbeHistory {
        probe: "gpu-count".into(),
        results: (0..3)
            .map(|i| ProbeResult {
                at: Time(1_700_000_000_000 + i * 60_000),
                passed: false,
                message: format!("nvidia-smi lists 7 GPUs (run {i})"),
            })
            .collect(),
    }];
    Incident::for_node(IncidentKind::NodeManual, "gpu-default", node, 4, Time(1_700_000_006_000))
        .with_rule("gpu-count")
        .with_summary("gpu-node-3 still has 7 of 8 GPUs after reboot, reimage and replace")
        .with_attempts(attempts)
        .with_probes(probes, 5)
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if start.elapsed() > timeout {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}; last error: {last_error:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The venv python with aiosmtpd: `NODEMEDIC_AIOSMTPD_PYTHON`, else whatever `scripts/notify-peers/setup`
/// prints last (it installs the venv the first time).
pub fn aiosmtpd_python() -> Result<PathBuf> {
    if let Ok(python) = std::env::var("NODEMEDIC_AIOSMTPD_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    Ok(PathBuf::from(run_setup()?.trim()))
}

/// Runs the setup script once per test binary and remembers what it printed last.
fn run_setup() -> Result<String> {
    static LAST_LINE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    LAST_LINE.get_or_init(|| run_setup_script().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn run_setup_script() -> Result<String> {
    let script = repo_root().join("scripts/notify-peers/setup");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({}); the SMTP and Alertmanager tests need its peers", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().map(str::to_string).ok_or_else(|| anyhow!("{} printed nothing", script.display()))
}

/// `prometheus-alertmanager` on PATH, installed by the setup script if missing.
pub fn alertmanager_binary() -> Result<PathBuf> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()))
            .unwrap_or_default()
    };
    if let Some(binary) = on_path("prometheus-alertmanager") {
        return Ok(binary);
    }
    run_setup()?;
    on_path("prometheus-alertmanager").ok_or_else(|| {
        anyhow!("prometheus-alertmanager is not on PATH even after scripts/notify-peers/setup (apt-get install prometheus-alertmanager)")
    })
}

/// A running aiosmtpd that saves what it receives in `dir`.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _process: Child,
}

#[derive(Default)]
pub struct SmtpSinkOptions {
    pub auth: Option<(String, String)>,
    /// Certificate and key files: offer STARTTLS and require it.
    pub starttls: Option<(PathBuf, PathBuf)>,
    /// Certificate and key files: TLS from the first byte.
    pub implicit_tls: Option<(PathBuf, PathBuf)>,
}

/// A self-signed certificate for 127.0.0.1 written to a temporary directory: (dir, cert path, key path, cert PEM).
pub fn self_signed_certificate() -> Result<(tempfile::TempDir, PathBuf, PathBuf, String)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let dir = tempfile::tempdir()?;
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem())?;
    std::fs::write(&key_path, certified.signing_key.serialize_pem())?;
    Ok((dir, cert_path, key_path, certified.cert.pem()))
}

impl SmtpSink {
    pub async fn start(options: SmtpSinkOptions) -> Result<SmtpSink> {
        let python = aiosmtpd_python()?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new(&python);
        command.arg(repo_root().join("scripts/notify-peers/smtp_sink.py")).args(["--port", &port.to_string()]).arg("--dir").arg(dir.path());
        if let Some((user, password)) = &options.auth {
            command.args(["--auth", &format!("{user}:{password}")]);
        }
        if let Some((cert, key)) = &options.starttls {
            command.arg("--starttls-cert").arg(cert).arg("--starttls-key").arg(key);
        }
        if let Some((cert, key)) = &options.implicit_tls {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        // Its log (tracebacks of clients the tests make fail on purpose) goes to a file, shown if it fails to start.
        let log_path = dir.path().join("aiosmtpd.log");
        let log = std::fs::File::create(&log_path)?;
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting aiosmtpd with {} (run scripts/notify-peers/setup)", python.display()))?;
        let stdout = process.stdout.take().ok_or_else(|| anyhow!("aiosmtpd has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("aiosmtpd did not say ready within 30s")?
            .context("reading aiosmtpd's output")?;
        match ready {
            Some(line) if line.starts_with("ready") => Ok(SmtpSink { port, dir, _process: process }),
            other => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("aiosmtpd failed to start (said {other:?}); its log:\n{log}")
            }
        }
    }

    /// Waits for the `n`th message (1-based) and returns its parsed summary (see smtp_sink.py).
    pub async fn message(&self, n: usize) -> Result<serde_json::Value> {
        let json = self.dir.path().join(format!("{n}.json"));
        eventually(&format!("message {n} at the SMTP server"), Duration::from_secs(30), || {
            let json = json.clone();
            async move {
                if !json.exists() {
                    return Ok(None);
                }
                let text = tokio::fs::read_to_string(&json).await?;
                Ok(Some(serde_json::from_str(&text)?))
            }
        })
        .await
    }

    pub fn raw_message(&self, n: usize) -> Result<String> {
        let path = self.dir.path().join(format!("{n}.eml"));
        Ok(String::from_utf8_lossy(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?).into_owned())
    }

    pub fn message_count(&self) -> Result<usize> {
        let mut count = 0;
        for entry in std::fs::read_dir(self.dir.path())? {
            if entry?.path().extension().is_some_and(|ext| ext == "eml" || ext == "tmp") {
                count += 1;
            }
        }
        Ok(count)
    }
}

/// A running Alertmanager with a receiver that drops everything, on its own port and storage.
pub struct Alertmanager {
    pub url: String,
    _storage: tempfile::TempDir,
    _process: Child,
}

impl Alertmanager {
    pub async fn start() -> Result<Alertmanager> {
        let binary = alertmanager_binary()?;
        let storage = tempfile::tempdir()?;
        let config = storage.path().join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: discard\n  group_wait: 1s\nreceivers:\n  - name: discard\n")?;
        let port = free_port()?;
        let process = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let ready_url = format!("{url}/-/ready");
        let client = reqwest::Client::new();
        eventually("Alertmanager to be ready", Duration::from_secs(30), || {
            let request = client.get(&ready_url).send();
            async move { Ok(request.await?.status().is_success().then_some(())) }
        })
        .await
        .context("Alertmanager did not become ready")?;
        Ok(Alertmanager { url, _storage: storage, _process: process })
    }

    /// `GET /api/v2/alerts` (active, silenced, inhibited and unprocessed: every alert not yet resolved).
    pub async fn alerts(&self) -> Result<Vec<serde_json::Value>> {
        let response = reqwest::Client::new().get(format!("{}/api/v2/alerts", self.url)).send().await?.error_for_status()?;
        let body: serde_json::Value = serde_json::from_str(&response.text().await?)?;
        body.as_array().cloned().ok_or_else(|| anyhow!("Alertmanager answered {body}, not a list"))
    }
}
