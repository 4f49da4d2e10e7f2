//! Running a tool with a timeout: PATH lookup on a search path the caller gives (so tests never touch the
//! process environment), stdout/stderr captured up to a bound, and the whole process group killed on timeout.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

/// The most output kept per stream; the rest is read and dropped.
pub const OUTPUT_LIMIT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("{program} not found on the search path")]
    NotFound { program: String },
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("waiting for {program}: {source}")]
    Wait { program: String, source: std::io::Error },
}

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; None when killed by a signal (including our timeout).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// The tool printed more than [`OUTPUT_LIMIT_BYTES`] on stdout and the rest was dropped.
    pub stdout_cut: bool,
}

/// Where to look for programs, and the PATH the programs themselves see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath(pub OsString);

impl SearchPath {
    /// The agent's own PATH (or the usual system directories when it has none).
    pub fn from_environment() -> Self {
        SearchPath(
            std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")),
        )
    }

    /// `first` put in front of the agent's own PATH.
    pub fn prepend(first: &Path) -> Self {
        let mut joined = first.as_os_str().to_os_string();
        joined.push(":");
        joined.push(SearchPath::from_environment().0);
        SearchPath(joined)
    }
}

/// Finds `program`: a name with a `/` is used as is, anything else is looked up on `search`.
pub fn resolve_program(program: &str, search: &SearchPath) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&search.0).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// What one stream printed, up to the limit, and whether anything past the limit was dropped.
type Captured = (Vec<u8>, bool);

fn spawn_reader(mut stream: impl Read + Send + 'static) -> mpsc::Receiver<Captured> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut cut = false;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_LIMIT_BYTES.saturating_sub(kept.len());
                    cut |= n > room;
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
        let _ = sender.send((kept, cut));
    });
    receiver
}

fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs `program args…` with `timeout`, its PATH set to `search`, stdin closed.
pub fn run_with_timeout(program: &str, args: &[String], timeout: Duration, search: &SearchPath) -> Result<CommandOutput, ExecError> {
    let resolved = resolve_program(program, search).ok_or_else(|| ExecError::NotFound { program: program.to_string() })?;
    run_resolved(&resolved, args, timeout, &search.0)
}

fn run_resolved(program: &Path, args: &[String], timeout: Duration, path_env: &OsStr) -> Result<CommandOutput, ExecError> {
    let name = program.display().to_string();
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", path_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ExecError::Spawn { program: name.clone(), source })?;
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                timed_out = true;
                kill_group(child.id());
                break child.wait().map_err(|source| ExecError::Wait { program: name.clone(), source })?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                kill_group(child.id());
                return Err(ExecError::Wait { program: name, source });
            }
        }
    };
    // A grandchild that left the group could keep the pipes open; do not wait for it forever.
    let collect = |receiver: Option<mpsc::Receiver<Captured>>| {
        receiver
            .and_then(|r| r.recv_timeout(Duration::from_secs(1)).ok())
            .map(|(bytes, cut)| (String::from_utf8_lossy(&bytes).into_owned(), cut))
            .unwrap_or_default()
    };
    let (stdout, stdout_cut) = collect(stdout);
    let (stderr, _) = collect(stderr);
    Ok(CommandOutput { exit_code: status.code(), stdout, stderr, timed_out, elapsed: started.elapsed(), stdout_cut })
}
