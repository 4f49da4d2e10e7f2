//! Real BMC peers for the power tests, installed by `scripts/bmc-peers/setup`: the Redfish emulator
//! sushy-tools (fake driver, HTTPS with a test CA, basic auth) and OpenIPMI's `ipmi_sim` (IPMI v2 LAN)
//! answered by `ipmitool`. Each peer lives in its own temporary directory and dies with its handle.

use anyhow::{Context, bail};
use nodemedic_testenv::redfish::{FakeSystem, RedfishEmulator};
use std::path::PathBuf;
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

/// The Redfish system the emulator serves.
pub const SYSTEM_UUID: &str = "7d1a9a3e-5b1c-4b7e-9d1e-000000000001";

/// The Redfish emulator ([`RedfishEmulator`]) serving one system, `gpu-000`.
pub struct Redfish(RedfishEmulator);

impl Redfish {
    /// The Redfish ComputerSystem URL of the emulator's system.
    pub fn system_url(&self) -> String {
        self.0.system_url(SYSTEM_UUID)
    }

    pub fn ca_bundle(&self) -> PathBuf {
        self.0.ca_bundle()
    }
}

/// Starts sushy-emulator over HTTPS with one fake system (powered On) behind basic auth.
pub fn start_redfish() -> anyhow::Result<Redfish> {
    let system = FakeSystem { uuid: SYSTEM_UUID.into(), name: "gpu-000".into() };
    Ok(Redfish(RedfishEmulator::start(&sushy_emulator()?, &[system], USER, PASSWORD)?))
}

impl Peer {
    /// The peer's own log, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
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
