//! A `nodemedic controller` replica as a child process, and its memory as /proc tells it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Replica {
    pub name: String,
    child: Child,
    port: u16,
    pub log: PathBuf,
}

/// Resident memory of one process, in KiB (`/proc/PID/status`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss: u64,
    /// VmHWM: the most that was ever resident.
    pub peak: u64,
    /// RssAnon: the heap and stacks (what the process allocated).
    pub anon: u64,
    /// RssFile: mapped files, mostly the binary's own code.
    pub file: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Replica {
    pub fn start(bin: &Path, kubeconfig: &Path, name: &str, dir: &Path) -> anyhow::Result<Replica> {
        let port = free_port()?;
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .args(["controller", "--identity", name, "--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("SCALE_BENCH_LOG").unwrap_or_else(|_| "info,kube_lease_manager=warn".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Replica { name: name.to_string(), child, port, log })
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory { rss: field("VmRSS:"), peak: field("VmHWM:"), anon: field("RssAnon:"), file: field("RssFile:") })
    }

    /// The controller answers /readyz once every watch has its first list.
    pub fn ready(&self) -> bool {
        http_get(self.port, "/readyz").is_ok_and(|(code, _)| code == 200)
    }

    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, out.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()))
}
