//! The demo's real notification peers: an SMTP server (aiosmtpd, from the venv that
//! `scripts/notify-peers/setup` builds) and an Alertmanager (Debian's `prometheus-alertmanager`).
//! The controllers deliver to them exactly as they would to a site's mail relay and Alertmanager.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A peer's program: the path in `env` when set, else what the project's setup `script` (under the
/// repository root) prints last after installing it (it installs once, then only prints).
pub(crate) fn installed_by(env: &str, script: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let script = repo_root().join(script);
    let out =
        Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().map(|l| PathBuf::from(l.trim())).ok_or_else(|| anyhow!("{} printed nothing", script.display()))
}

/// Installs the peers when missing (a venv from PyPI, a Debian package) and returns the venv's python.
fn setup() -> Result<PathBuf> {
    installed_by("NODEMEDIC_AIOSMTPD_PYTHON", "scripts/notify-peers/setup")
}

pub struct Peers {
    smtp_port: u16,
    pub alertmanager_url: String,
    mail_dir: tempfile::TempDir,
    smtp: Child,
    alertmanager: Child,
}

impl Drop for Peers {
    fn drop(&mut self) {
        for child in [&mut self.smtp, &mut self.alertmanager] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A received email, as smtp_sink.py summarises it.
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
}

impl Peers {
    pub fn start() -> Result<Peers> {
        let python = setup()?;
        let mail_dir = tempfile::tempdir()?;
        let smtp_port = free_port()?;
        let mut smtp = Command::new(&python)
            .arg(repo_root().join("scripts/notify-peers/smtp_sink.py"))
            .args(["--port", &smtp_port.to_string()])
            .arg("--dir")
            .arg(mail_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(mail_dir.path().join("aiosmtpd.log"))?)
            .spawn()
            .with_context(|| format!("starting aiosmtpd with {}", python.display()))?;
        let stdout = smtp.stdout.take().ok_or_else(|| anyhow!("aiosmtpd has no stdout"))?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        if !first.starts_with("ready") {
            let _ = smtp.kill();
            bail!("aiosmtpd did not start (said {first:?})");
        }

        let storage = mail_dir.path().join("alertmanager");
        std::fs::create_dir_all(&storage)?;
        let config = storage.join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: discard\n  group_wait: 1s\nreceivers:\n  - name: discard\n")?;
        let port = free_port()?;
        let alertmanager = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let alertmanager = match alertmanager {
            Ok(a) => a,
            Err(e) => {
                let _ = smtp.kill();
                return Err(anyhow!("starting prometheus-alertmanager: {e}"));
            }
        };
        let peers = Peers { smtp_port, alertmanager_url: format!("http://127.0.0.1:{port}"), mail_dir, smtp, alertmanager };
        let started = Instant::now();
        while http_get(port, "/-/ready").is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("Alertmanager did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(peers)
    }

    /// The controllers' notification config: email and Alertmanager for what needs a person.
    pub fn notifications_yaml(&self) -> String {
        format!(
            "channels:\n\
             - name: email-infra\n  kinds: [NodeManual, LemonNode, StepTimedOut, BreakerTripped, DrainBlocked]\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    security: plain\n    from: nodemedic <nodemedic@demo.local>\n    to: [infra@demo.local]\n    subjectPrefix: \"[nodemedic demo]\"\n\
             - name: alertmanager\n  kinds: [NodeManual, NodeRecovered, BreakerTripped, BreakerReset]\n  alertmanager:\n    url: {}\n",
            self.smtp_port, self.alertmanager_url
        )
    }

    /// What the demo's own SMTP peer wrote (not outside input: plain serde_json).
    pub fn mails(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(text) = std::fs::read_to_string(self.mail_dir.path().join(format!("{n}.json"))) else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            let to = v["rcptTos"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
            out.push(Mail {
                to,
                subject: v["subject"].as_str().unwrap_or_default().to_string(),
                text: v["text"].as_str().unwrap_or_default().to_string(),
            });
        }
        out
    }

    /// Alerts Alertmanager holds that are not resolved: (alertname, node label, summary annotation).
    pub fn alerts(&self) -> Result<Vec<(String, String, String)>> {
        let port = self.alertmanager_url.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow!("alertmanager url"))?;
        let body = http_get(port, "/api/v2/alerts")?;
        let v: serde_json::Value = serde_json::from_str(&body).context("Alertmanager's /api/v2/alerts")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
                (s(&a["labels"]["alertname"]), s(&a["labels"]["node"]), s(&a["annotations"]["summary"]))
            })
            .collect())
    }
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}
