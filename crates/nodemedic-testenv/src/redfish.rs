//! The Redfish emulator sushy-tools (its fake driver, from the venv `scripts/bmc-peers/setup` builds) as a
//! BMC for tests and the demo: HTTPS with a CA made here, basic auth, one Redfish system per entry. A
//! real peer: the power executor talks to it exactly as to a machine's BMC.

use crate::{TestEnvError, io};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One Redfish system the emulator serves, powered On at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
}

/// The running emulator: killed and its files removed on drop.
pub struct RedfishEmulator {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for RedfishEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.crt`) and a serving certificate for 127.0.0.1 and localhost signed by it (`bmc.crt`, `bmc.key`).
fn write_pki(dir: &Path) -> Result<(), TestEnvError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "nodemedic-bmc-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    serving.distinguished_name.push(DnType::CommonName, "bmc");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = serving.signed_by(&key, &issuer)?;
    for (name, pem) in [("ca.crt", ca_cert.pem()), ("bmc.crt", cert.pem()), ("bmc.key", key.serialize_pem())] {
        std::fs::write(dir.join(name), pem).map_err(io(format!("writing the BMC's {name}")))?;
    }
    Ok(())
}

/// The htpasswd line for `user`: sushy-tools only accepts bcrypt entries, so the venv's own Python hashes it.
fn htpasswd(emulator: &Path, user: &str, password: &str) -> Result<String, TestEnvError> {
    let hash = Command::new(emulator.with_file_name("python"))
        .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())", password])
        .output()
        .map_err(io("hashing the BMC password with the sushy-tools venv's python"))?;
    if !hash.status.success() {
        return Err(TestEnvError::Binaries(format!("hashing the BMC password failed: {}", String::from_utf8_lossy(&hash.stderr))));
    }
    Ok(format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()))
}

impl RedfishEmulator {
    /// Starts `emulator` (the venv's `sushy-emulator`) over HTTPS on a free loopback port with `systems`,
    /// behind basic auth for `user`/`password`, and waits until it listens (30 s at most).
    pub fn start(emulator: &Path, systems: &[FakeSystem], user: &str, password: &str) -> Result<RedfishEmulator, TestEnvError> {
        let dir = tempfile::tempdir().map_err(io("a temp dir for the BMC"))?;
        write_pki(dir.path())?;
        std::fs::write(dir.path().join("htpasswd"), htpasswd(emulator, user, password)?).map_err(io("writing the BMC's htpasswd"))?;
        let fake: Vec<String> =
            systems.iter().map(|s| format!("{{'uuid': '{}', 'name': '{}', 'power_state': 'On', 'nics': []}}", s.uuid, s.name)).collect();
        let d = dir.path().display();
        let config = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{d}/state'\nSUSHY_EMULATOR_AUTH_FILE = '{d}/htpasswd'\n\
             SUSHY_EMULATOR_SSL_CERT = '{d}/bmc.crt'\nSUSHY_EMULATOR_SSL_KEY = '{d}/bmc.key'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n",
            fake.join(", ")
        );
        std::fs::write(dir.path().join("emulator.conf"), config).map_err(io("writing the emulator's config"))?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(io("finding a free port for the BMC"))?.port();
        let log = std::fs::File::create(dir.path().join("emulator.log")).map_err(io("creating the emulator's log"))?;
        let child = Command::new(emulator)
            .arg("--config")
            .arg(dir.path().join("emulator.conf"))
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("the emulator's log"))?)
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", emulator.display())))?;
        let bmc = RedfishEmulator { child, dir, port };
        bmc.wait_listening(Duration::from_secs(30))?;
        Ok(bmc)
    }

    fn wait_listening(&self, limit: Duration) -> Result<(), TestEnvError> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(TestEnvError::NotReady { component: "sushy-emulator", waited: limit, log: self.log() })
    }

    /// The Redfish ComputerSystem URL of the system with this UUID.
    pub fn system_url(&self, uuid: &str) -> String {
        format!("https://127.0.0.1:{}/redfish/v1/Systems/{uuid}", self.port)
    }

    /// The CA that signed the emulator's certificate.
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The emulator's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }
}
