//! Real BMC peers for the power tests, installed by `scripts/bmc-peers/setup`: the Redfish emulator
//! sushy-tools (fake driver, HTTPS with a test CA, basic auth) and OpenIPMI's `ipmi_sim` (IPMI v2 LAN)
//! answered by `ipmitool`. Each peer lives in its own temporary directory and dies with its handle.

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret-bmc-pw";

/// A running peer: killed and its files removed on drop.
pub struct Peer {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A UDP port nothing listens on right now (IPMI is UDP).
fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The sushy-emulator the setup script installed; required, never skipped.
fn sushy_emulator() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("NODEMEDIC_SUSHY_EMULATOR")
        .context("NODEMEDIC_SUSHY_EMULATOR is not set: run `export NODEMEDIC_SUSHY_EMULATOR=$(scripts/bmc-peers/setup | tail -n1)`")?;
    Ok(PathBuf::from(path))
}

/// Writes a CA (`ca.crt`) and a serving certificate for 127.0.0.1 signed by it (`bmc.crt`, `bmc.key`).
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "nodemedic-test-bmc-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    serving.distinguished_name.push(DnType::CommonName, "bmc");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = serving.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("bmc.crt"), cert.pem())?;
    std::fs::write(dir.join("bmc.key"), key.serialize_pem())?;
    Ok(())
}

/// The Redfish system the emulator serves.
pub const SYSTEM_UUID: &str = "7d1a9a3e-5b1c-4b7e-9d1e-000000000001";

/// Starts sushy-emulator over HTTPS with one fake system (powered On) behind basic auth.
pub fn start_redfish() -> anyhow::Result<Peer> {
    let emulator = sushy_emulator()?;
    let dir = tempfile::tempdir()?;
    write_pki(dir.path())?;
    // sushy-tools only accepts bcrypt htpasswd entries; the venv's own Python hashes the password.
    let python = emulator.with_file_name("python");
    let hash = Command::new(&python)
        .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())", PASSWORD])
        .output()?;
    if !hash.status.success() {
        bail!("hashing the test password failed: {}", String::from_utf8_lossy(&hash.stderr));
    }
    std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout).trim()))?;
    let d = dir.path().display();
    let config = format!(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
         SUSHY_EMULATOR_STATE_DIR = '{d}/state'\n\
         SUSHY_EMULATOR_AUTH_FILE = '{d}/htpasswd'\n\
         SUSHY_EMULATOR_SSL_CERT = '{d}/bmc.crt'\n\
         SUSHY_EMULATOR_SSL_KEY = '{d}/bmc.key'\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': 'gpu-000', 'power_state': 'On', 'nics': []}}]\n"
    );
    std::fs::write(dir.path().join("emulator.conf"), config)?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("emulator.log"))?;
    let child = Command::new(&emulator)
        .arg("--config")
        .arg(dir.path().join("emulator.conf"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", emulator.display()))?;
    let peer = Peer { child, dir, port };
    wait_listening(&peer, "sushy-emulator")?;
    Ok(peer)
}

impl Peer {
    /// The Redfish ComputerSystem URL of the emulator's system.
    pub fn system_url(&self) -> String {
        format!("https://127.0.0.1:{}/redfish/v1/Systems/{SYSTEM_UUID}", self.port)
    }

    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The peer's own log, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

fn wait_listening(peer: &Peer, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", peer.port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on {} within 30s: {}", peer.port, peer.log("emulator.log"))
}

/// How the simulated chassis answers a power change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Chassis {
    /// Switches the power as asked.
    Obeys,
    /// Accepts the command but the power never changes (a stuck relay).
    Stuck,
}

/// Starts `ipmi_sim` as a BMC on IPMI v2 LAN with one admin user; the chassis starts powered on.
pub fn start_ipmi(chassis: Chassis) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let set = if chassis == Chassis::Obeys { r#"[ "$1" = power ] && echo "$2" > "$state""# } else { ":" };
    let script = format!(
        "#!/bin/sh\nstate=\"{}/power\"\nop=$2; shift 2\ncase \"$op\" in\nget) for p in \"$@\"; do [ \"$p\" = power ] && echo \"power:$(cat \"$state\" 2>/dev/null || echo 1)\"; done ;;\nset) while [ $# -ge 2 ]; do {set}; shift 2; done ;;\nesac\nexit 0\n",
        d.display()
    );
    std::fs::write(d.join("chassis"), script)?;
    std::fs::set_permissions(d.join("chassis"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let port = free_udp_port()?;
    let lan = format!(
        "name \"nodemedic-test\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
         \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
         \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
         \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{}/chassis 0x20\"\n\
         \x20 user 2 true \"{USER}\" \"{PASSWORD}\" admin 10 none md2 md5 straight\n",
        d.display()
    );
    std::fs::write(d.join("lan.conf"), lan)?;
    std::fs::write(
        d.join("bmc.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
    )?;
    let log = std::fs::File::create(d.join("ipmi_sim.log"))?;
    let child = Command::new("ipmi_sim")
        .arg("-c")
        .arg(d.join("lan.conf"))
        .arg("-f")
        .arg(d.join("bmc.emu"))
        .arg("-s")
        .arg(d.join("state"))
        .args(["-n", "-p"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ipmi_sim (installed by scripts/bmc-peers/setup)")?;
    let peer = Peer { child, dir, port };
    // Ready once ipmitool gets an answer.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-P", PASSWORD, "-N", "1", "-R", "1"])
            .args(["chassis", "power", "status"])
            .output()
            .context("running ipmitool (installed by scripts/bmc-peers/setup)")?;
        if out.status.success() {
            return Ok(peer);
        }
        if Instant::now() > until {
            bail!("ipmi_sim did not answer on {port}: {}", peer.log("ipmi_sim.log"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
