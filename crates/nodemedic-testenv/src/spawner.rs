//! Starting component processes so that they die with the test process, even one that is SIGKILLed
//! or killed by a test runner's timeout (then no `Drop` runs).
//!
//! Each component is launched as `setpriv --pdeathsig KILL -- <binary> <args>`: setpriv sets
//! PR_SET_PDEATHSIG and execs the binary, so the child's pid is the component's own. The kernel
//! sends that signal when the *thread* that forked the child exits, not the process; a component
//! forked from a tokio worker or a test thread would be killed as soon as that thread ends. So every
//! spawn goes through one dedicated thread that lives as long as the process.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};

struct SpawnJob {
    command: Command,
    reply: Sender<io::Result<Child>>,
}

/// The spawner thread's inbox. The sender is never dropped (it lives in a static), so the thread
/// never ends; `None` if the thread could not be started.
fn spawner() -> Option<&'static Sender<SpawnJob>> {
    static INBOX: OnceLock<Option<Sender<SpawnJob>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (inbox, jobs) = mpsc::channel::<SpawnJob>();
            let started = std::thread::Builder::new().name("nodemedic-testenv-spawner".into()).spawn(move || {
                for mut job in jobs {
                    // The asker may have given up waiting; its child is then killed on drop.
                    let _ = job.reply.send(job.command.spawn());
                }
            });
            started.ok().map(|_| inbox)
        })
        .as_ref()
}

/// `setpriv` from util-linux, looked up once on `PATH`; `None` (after a one-time warning) if absent.
fn setpriv() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = find_on_path("setpriv", &std::env::var_os("PATH").unwrap_or_default());
            if found.is_none() {
                eprintln!(
                    "nodemedic-testenv: warning: setpriv (util-linux) is not on PATH; control-plane components are started \
                     without a parent-death signal and outlive a test process that is killed"
                );
            }
            found
        })
        .as_deref()
}

fn find_on_path(name: &str, path: &OsString) -> Option<PathBuf> {
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// The command that runs `binary` so that it is SIGKILLed when its parent thread (the spawner) exits.
pub(crate) fn command_dying_with_parent(binary: &Path) -> Command {
    match setpriv() {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// Spawns `command` on the spawner thread and returns the child.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    let gone = || io::Error::other("the nodemedic-testenv spawner thread is not running");
    let inbox = spawner().ok_or_else(gone)?;
    let (reply, answer) = mpsc::channel();
    inbox.send(SpawnJob { command, reply }).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_found_in_the_first_path_directory_that_has_it() -> io::Result<()> {
        let (first, second) = (tempfile::tempdir()?, tempfile::tempdir()?);
        std::fs::write(second.path().join("tool"), "")?;
        let path = std::env::join_paths([first.path(), second.path()]).map_err(io::Error::other)?;
        assert_eq!(find_on_path("tool", &path), Some(second.path().join("tool")));
        assert_eq!(find_on_path("absent", &path), None);
        Ok(())
    }

    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() -> io::Result<()> {
        // Were the child forked by the asking thread, its parent-death signal would kill it as soon
        // as that thread ended.
        let mut sleeper = command_dying_with_parent(Path::new("sleep"));
        sleeper.arg("30");
        let asking_thread = std::thread::spawn(move || spawn(sleeper));
        let mut child = asking_thread.join().map_err(|_| io::Error::other("the asking thread panicked"))??;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let still_running = child.try_wait()?.is_none();
        child.kill()?;
        child.wait()?;
        assert!(still_running, "the child died with the thread that asked for it");
        Ok(())
    }
}
