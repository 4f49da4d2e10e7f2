//! A control plane's processes end with it: when it is dropped, when the test body panics, and when
//! the test process itself is SIGKILLed (then no drop runs). And a test whose binaries are missing
//! fails, naming them, rather than skipping.
//!
//! A test process that must panic, be killed or fail is a second copy of this test binary: the
//! `child_*` tests, run by name from their parent test with `CHILD_ENV` set. They are ignored in a
//! normal run and do nothing without `CHILD_ENV`.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nodemedic_testenv::{ControlPlane, Options};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "NODEMEDIC_TESTENV_LIFECYCLE_CHILD";
/// A child prints this before each component's name and pid.
const PID_LINE: &str = "component-pid ";
/// A child prints this once its control plane is up and its pids printed.
const UP_LINE: &str = "control-plane-up";
/// A child that will be killed prints this before its control plane's directory, which its drop would
/// have removed.
const DIR_LINE: &str = "control-plane-dir ";
const PANIC_MESSAGE: &str = "the test body panicked on purpose";

/// The parents take turns: each runs a control plane (or has a child run one) on a two-core machine.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// This test binary, set to run just the ignored test `name` as a child.
fn child_test(name: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"]).env(CHILD_ENV, "1").stdin(Stdio::null());
    Ok(command)
}

fn print_pids(cp: &ControlPlane) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (name, pid) in cp.pids() {
        // On a line of its own: libtest may have left "test <name> ... " unterminated.
        writeln!(out, "\n{PID_LINE}{name} {pid}")?;
    }
    out.flush()
}

/// The (name, pid) pairs a child printed; the marker may follow other text on its line.
fn printed_pids(stdout: &str) -> Vec<(String, u32)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(PID_LINE)?;
            let (name, pid) = rest.trim().split_once(' ')?;
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// Whether `pid` is a live (not zombie) process running the component `name`. A pid that has been
/// reused by another program since counts as gone.
fn running(pid: u32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "<pid> (<comm>) <state> …"; comm is the executable's name cut to 15 bytes and may hold spaces.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    name.starts_with(comm) && !matches!(state, Some('Z' | 'X') | None)
}

fn still_running(pids: &[(String, u32)]) -> Vec<&(String, u32)> {
    pids.iter().filter(|(name, pid)| running(*pid, name)).collect()
}

const EVERY_COMPONENT: [&str; 5] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"];

#[test]
fn a_control_plane_outlives_the_thread_that_started_it_and_its_drop_stops_every_component() -> anyhow::Result<()> {
    let _turn = one_at_a_time();
    let runtime = tokio::runtime::Runtime::new()?;
    let handle = runtime.handle().clone();
    // The starting thread ends before the checks: a component forked by it would get its
    // parent-death signal then.
    let starter = std::thread::spawn(move || handle.block_on(ControlPlane::start(Options::full())));
    let cp = starter.join().map_err(|_| anyhow::anyhow!("the starting thread panicked"))??;
    let pids: Vec<(String, u32)> = cp.pids().into_iter().map(|(name, pid)| (name.to_string(), pid)).collect();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, EVERY_COMPONENT);

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(still_running(&pids).len(), pids.len(), "every pid is its component's own process, still running: {pids:?}");
    runtime.block_on(Api::<Namespace>::all(cp.client()).list(&Default::default()))?;

    drop(cp);
    let left = still_running(&pids);
    assert!(left.is_empty(), "still running after drop: {left:?}");
    Ok(())
}

#[test]
fn a_panicking_test_prints_every_components_log_tail_and_leaves_no_component_running() -> anyhow::Result<()> {
    let _turn = one_at_a_time();
    let out = child_test("child_panics_while_its_control_plane_runs")?.output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let shown = format!("status {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(!out.status.success(), "{shown}");
    assert!(stderr.contains(PANIC_MESSAGE), "{shown}");
    assert!(stderr.contains("component logs:"), "the drop printed the logs: {shown}");
    for name in ["etcd", "kube-apiserver"] {
        assert!(stderr.contains(&format!("----- {name} (")), "{name}'s log tail: {shown}");
    }
    let pids = printed_pids(&stdout);
    assert_eq!(pids.len(), 2, "{shown}");
    let left = still_running(&pids);
    assert!(left.is_empty(), "still running after the panic: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child process of a_panicking_test_prints_every_components_log_tail_and_leaves_no_component_running"]
async fn child_panics_while_its_control_plane_runs() -> anyhow::Result<()> {
    if !is_child() {
        return Ok(());
    }
    let cp = ControlPlane::start(Options::default()).await?;
    print_pids(&cp)?;
    cp.run(|_| async { panic_on_purpose() }).await
}

fn panic_on_purpose() -> anyhow::Result<()> {
    panic!("{PANIC_MESSAGE}")
}

/// Kills and reaps a child test process that is still running when the parent test ends early.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sigkilled_test_process_leaves_no_component_running() -> anyhow::Result<()> {
    let _turn = one_at_a_time();
    let stderr_file = tempfile::NamedTempFile::new()?;
    let mut child = KilledOnDrop(
        child_test("child_sleeps_while_its_control_plane_runs")?.stdout(Stdio::piped()).stderr(stderr_file.reopen()?).spawn()?,
    );
    let stdout = child.0.stdout.take().ok_or_else(|| anyhow::anyhow!("the child's stdout was not piped"))?;
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdout_text = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !stdout_text.contains(UP_LINE) {
        let left = deadline.saturating_duration_since(Instant::now());
        match printed.recv_timeout(left) {
            Ok(line) => stdout_text += &(line + "\n"),
            Err(e) => {
                let stderr = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
                anyhow::bail!("the child never reported its control plane up ({e}); stdout:\n{stdout_text}\nstderr:\n{stderr}");
            }
        }
    }
    let pids = printed_pids(&stdout_text);
    assert_eq!(pids.len(), EVERY_COMPONENT.len(), "{stdout_text}");
    assert_eq!(still_running(&pids).len(), pids.len(), "{pids:?}");

    kill(Pid::from_raw(i32::try_from(child.0.id())?), Signal::SIGKILL)?;
    child.0.wait()?;
    // The kernel signals the components when the process goes; they may take a moment to die.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !still_running(&pids).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = still_running(&pids);
    if let Some((_, dir)) = stdout_text.lines().find_map(|line| line.split_once(DIR_LINE)) {
        std::fs::remove_dir_all(dir.trim())?;
    }
    assert!(left.is_empty(), "still running 10 s after the test process was SIGKILLed: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child process of a_sigkilled_test_process_leaves_no_component_running"]
async fn child_sleeps_while_its_control_plane_runs() -> anyhow::Result<()> {
    if !is_child() {
        return Ok(());
    }
    let cp = ControlPlane::start(Options::full()).await?;
    print_pids(&cp)?;
    if let Some(dir) = cp.kubeconfig().parent() {
        println!("\n{DIR_LINE}{}", dir.display());
    }
    println!("\n{UP_LINE}");
    // The parent SIGKILLs this process long before this ends.
    tokio::time::sleep(Duration::from_secs(300)).await;
    drop(cp);
    Ok(())
}

#[test]
fn an_integration_test_whose_binaries_are_missing_fails_naming_them_rather_than_skipping() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let out = child_test("child_starts_a_control_plane")?.env("NODEMEDIC_CONTROL_PLANE_BIN", empty.path()).output()?;
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the child passed: {output}");
    assert!(output.contains("1 failed"), "the child test failed (not skipped or ignored): {output}");
    for name in ["etcd is missing", "kube-apiserver is missing", "kwok is missing"] {
        assert!(output.contains(name), "{name}: {output}");
    }
    assert!(output.contains(&empty.path().display().to_string()), "the error names the directory: {output}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child process of an_integration_test_whose_binaries_are_missing_fails_naming_them_rather_than_skipping"]
async fn child_starts_a_control_plane() -> anyhow::Result<()> {
    if !is_child() {
        return Ok(());
    }
    ControlPlane::start(Options::default()).await?;
    Ok(())
}
