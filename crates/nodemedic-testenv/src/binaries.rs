//! Finding the control-plane binaries: an explicit directory, or the build script's cache (built from Go
//! modules on first use).

use super::*;

/// Where the built binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub bin: PathBuf,
    pub kwok_stages: PathBuf,
}

impl Binaries {
    /// `NODEMEDIC_CONTROL_PLANE_BIN` if set, else the build script's cache (building on first use).
    /// Fails loudly — an integration test never skips because the binaries are missing.
    pub fn locate() -> Result<Binaries, TestEnvError> {
        static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = FOUND
            .get_or_init(|| {
                if let Some(dir) = std::env::var_os("NODEMEDIC_CONTROL_PLANE_BIN") {
                    return Ok(PathBuf::from(dir));
                }
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/control-plane/build");
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| format!("running {}: {e}", script.display()))?;
                if !out.status.success() {
                    return Err(format!("{} failed ({})", script.display(), out.status));
                }
                let stdout = String::from_utf8_lossy(&out.stdout);
                stdout
                    .lines()
                    .last()
                    .map(|l| PathBuf::from(l.trim()))
                    .ok_or_else(|| format!("{} printed no bin directory", script.display()))
            })
            .clone()
            .map_err(TestEnvError::Binaries)?;
        Binaries::in_dir(&dir)
    }

    /// The binaries in `bin` (kwok's stage configs beside it, in `../kwok-stages`), or an error naming
    /// every binary that is missing or not executable there.
    pub fn in_dir(bin: &Path) -> Result<Binaries, TestEnvError> {
        let mut problems = Vec::new();
        for name in Self::REQUIRED {
            match std::fs::metadata(bin.join(name)) {
                Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {}
                Ok(_) => problems.push(format!("{name} is not an executable file")),
                Err(_) => problems.push(format!("{name} is missing")),
            }
        }
        if !problems.is_empty() {
            return Err(TestEnvError::Binaries(format!(
                "{} in {} (set by NODEMEDIC_CONTROL_PLANE_BIN, or printed by scripts/control-plane/build)",
                problems.join(", "),
                bin.display()
            )));
        }
        let kwok_stages = bin.parent().map(|p| p.join("kwok-stages")).unwrap_or_default();
        Ok(Binaries { bin: bin.to_path_buf(), kwok_stages })
    }

    /// What every control plane needs in the bin directory.
    pub(crate) const REQUIRED: [&str; 6] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"];

    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}
