//! The kernel-log follower's fault history across agent restarts and reboots, on a node's disk in a temp dir: a
//! log file the test appends to stands for the kernel log, a boot-ID file the test rewrites stands for a reboot,
//! and each "agent" is a follower started on the same state file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nodemedic_agent::catalog::FaultKey;
use nodemedic_agent::config::KernelLogProbe;
use nodemedic_agent::kernel_follow::KernelLogFollower;
use nodemedic_agent::probe::TextDuration;
use nodemedic_agent::{Catalog, Health, Reason, Verdict};

const XID_79: &str = "[ 8012.000001] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.\n";

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> anyhow::Result<Node> {
        let node = Node { dir: tempfile::tempdir()? };
        node.boot("boot-1")?;
        std::fs::write(node.log(), "[    0.000000] Linux version 6.8.0\n")?;
        Ok(node)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("kern.log")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("var/lib/nodemedic/kernel-faults.json")
    }

    fn probe(&self, hold: Duration) -> KernelLogProbe {
        KernelLogProbe {
            source: self.log(),
            state_file: self.state_file(),
            hold: TextDuration(hold),
            boot_id_file: self.dir.path().join("boot_id"),
        }
    }

    /// A new boot: a new boot ID and a new, short kernel log (another file at the same path).
    fn boot(&self, id: &str) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join("boot_id"), format!("{id}\n"))?;
        let fresh = self.dir.path().join("kern.log.new");
        std::fs::write(&fresh, "[    0.000000] Linux version 6.8.0\n")?;
        std::fs::rename(&fresh, self.log())?;
        Ok(())
    }

    fn append(&self, line: &str) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new().append(true).open(self.log())?;
        log.write_all(line.as_bytes())?;
        Ok(())
    }

    fn agent(&self, hold: Duration) -> anyhow::Result<KernelLogFollower> {
        Ok(KernelLogFollower::start(&self.probe(hold), Arc::new(Catalog::embedded()?)))
    }
}

/// Waits (polling) until `agent`'s verdict satisfies `want`.
fn verdict_within(agent: &KernelLogFollower, limit: Duration, want: impl Fn(&Verdict) -> bool) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + limit;
    loop {
        let verdict = agent.verdict();
        if want(&verdict) {
            return Ok(verdict);
        }
        anyhow::ensure!(Instant::now() < deadline, "verdict still {verdict:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xid79_sightings(agent: &KernelLogFollower) -> usize {
    let state = agent.state();
    state.sightings.iter().filter(|s| s.device == "0000:3b:00" && s.key == FaultKey::NvidiaXid(79)).map(|s| s.seen_at_ms.len()).sum()
}

/// Lets the follower's thread take one more look at the log.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

#[test]
fn xid_79_on_one_gpu_in_two_boots_escalates_to_replace_and_each_reboot_ends_the_active_fault() -> anyhow::Result<()> {
    let node = Node::new()?;
    let hold = Duration::from_secs(1800);

    let first = node.agent(hold)?;
    node.append(XID_79)?;
    let verdict = verdict_within(&first, Duration::from_secs(2), |v| v.health == Health::Unhealthy)?;
    assert_eq!(verdict.reason, Reason::KernelFaultReboot, "{verdict:?}");

    // The agent restarts in the same boot: the line is not counted again, and the fault is still active.
    drop(first);
    let restarted = node.agent(hold)?;
    settle();
    assert_eq!(restarted.verdict().reason, Reason::KernelFaultReboot);
    assert_eq!(xid79_sightings(&restarted), 1, "a line read before the restart is not read again");

    // Reboot 1: the fault from the last boot ends, its sighting stays.
    drop(restarted);
    node.boot("boot-2")?;
    let after_reboot = node.agent(hold)?;
    settle();
    assert_eq!(after_reboot.verdict().health, Health::Healthy, "{:?}", after_reboot.verdict());
    assert_eq!(xid79_sightings(&after_reboot), 1);

    // The same GPU falls off the bus again: twice within 7 days means replace.
    node.append(XID_79)?;
    let verdict = verdict_within(&after_reboot, Duration::from_secs(2), |v| v.health == Health::Unhealthy)?;
    assert_eq!(verdict.reason, Reason::KernelFaultReplace, "{verdict:?}");
    assert!(verdict.message.contains("seen 2 times"), "{}", verdict.message);

    // Reboot 2: both sightings are still remembered for the next escalation; nothing is active.
    drop(after_reboot);
    node.boot("boot-3")?;
    let third_boot = node.agent(hold)?;
    settle();
    assert_eq!(third_boot.verdict().health, Health::Healthy);
    assert_eq!(xid79_sightings(&third_boot), 2);
    let state = third_boot.state();
    assert_eq!(state.cursor.boot_id, "boot-3");
    Ok(())
}

#[test]
fn an_old_fault_line_stops_making_the_node_unhealthy_after_the_hold_though_it_is_still_in_the_log() -> anyhow::Result<()> {
    let node = Node::new()?;
    let agent = node.agent(Duration::from_secs(1))?;
    node.append(XID_79)?;
    verdict_within(&agent, Duration::from_secs(2), |v| v.health == Health::Unhealthy)?;
    let healthy = verdict_within(&agent, Duration::from_secs(3), |v| v.health == Health::Healthy)?;
    assert!(healthy.message.contains("no GPU faults"), "{}", healthy.message);
    let log = std::fs::read_to_string(node.log())?;
    assert!(log.contains("Xid"), "the line is still in the log");
    Ok(())
}

#[test]
fn application_xids_repeating_on_one_gpu_across_a_restart_escalate_to_a_reset() -> anyhow::Result<()> {
    let node = Node::new()?;
    let hold = Duration::from_secs(1800);
    // kmsg records (sequence number, microseconds since boot) 11 s apart over the last minute: five in an hour on
    // one GPU escalate.
    let uptime = nodemedic_agent::check::uptime().context("/proc/uptime")?;
    anyhow::ensure!(uptime > Duration::from_secs(61), "the test dates records in the last minute of this boot");
    let first_us = (uptime - Duration::from_secs(60)).as_micros();
    let xid13 =
        |n: u128| format!("3,{},{},-;NVRM: Xid (PCI:0000:86:00): 13, Graphics SM Warp Exception\n", 100 + n, first_us + n * 11_000_000);
    let agent = node.agent(hold)?;
    for n in 0..3 {
        node.append(&xid13(n))?;
    }
    settle();
    assert_eq!(agent.verdict().health, Health::Healthy, "an application Xid alone leaves the node healthy");
    drop(agent);
    let restarted = node.agent(hold)?;
    node.append(&xid13(3))?;
    node.append(&xid13(4))?;
    let verdict = verdict_within(&restarted, Duration::from_secs(2), |v| v.health == Health::Unhealthy)?;
    assert_eq!(verdict.reason, Reason::KernelFaultResetGpu, "{verdict:?}");
    assert!(verdict.message.contains("seen 5 times"), "{}", verdict.message);
    Ok(())
}

#[test]
fn a_corrupt_history_is_reported_and_starts_empty_without_reading_old_lines_as_new() -> anyhow::Result<()> {
    let node = Node::new()?;
    node.append(XID_79)?;
    let state_file = node.state_file();
    std::fs::create_dir_all(state_file.parent().context("a parent")?)?;
    std::fs::write(&state_file, b"{\"format\":1,\"cursor\":{\"boot_id\":\"boot-1\",\"kms")?;
    let agent = node.agent(Duration::from_secs(1800))?;
    settle();
    assert_eq!(agent.verdict().health, Health::Healthy, "the Xid 79 line was there before: {:?}", agent.verdict());
    assert_eq!(xid79_sightings(&agent), 0);
    assert!(saved_state_is_valid(&state_file), "the corrupt file is replaced by a good one");
    // A line logged from now on is seen.
    node.append(XID_79)?;
    verdict_within(&agent, Duration::from_secs(2), |v| v.reason == Reason::KernelFaultReboot)?;
    Ok(())
}

#[test]
fn an_xid_reported_by_the_kernel_log_and_by_nvml_counts_once() -> anyhow::Result<()> {
    let node = Node::new()?;
    let agent = node.agent(Duration::from_secs(1800))?;
    node.append(XID_79)?;
    verdict_within(&agent, Duration::from_secs(2), |v| v.reason == Reason::KernelFaultReboot)?;
    // NVML names the GPU by its 8-digit-domain bus ID; it is the same GPU and the same incident.
    agent.record("00000000:3B:00.0", &FaultKey::NvidiaXid(79));
    assert_eq!(xid79_sightings(&agent), 1, "{:?}", agent.state());
    assert_eq!(agent.verdict().reason, Reason::KernelFaultReboot, "not escalated to replace by the echo");
    Ok(())
}

#[test]
fn a_fifo_is_followed_with_blocking_reads_like_dev_kmsg() -> anyhow::Result<()> {
    let node = Node::new()?;
    let fifo = node.dir.path().join("kmsg.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().context("running mkfifo")?;
    anyhow::ensure!(made.success(), "mkfifo failed: {made}");
    let probe = KernelLogProbe { source: fifo.clone(), ..node.probe(Duration::from_secs(1800)) };
    let agent = KernelLogFollower::start(&probe, Arc::new(Catalog::embedded()?));
    // The reader opens the FIFO and blocks in read(); records arrive in kmsg format, one per write.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo)?;
    let uptime = nodemedic_agent::check::uptime().context("/proc/uptime")?;
    writer.write_all(format!("6,7,{},-;nvidia: loading out-of-tree module\n", uptime.as_micros()).as_bytes())?;
    writer.write_all(
        format!("3,8,{},-;NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.\n", uptime.as_micros()).as_bytes(),
    )?;
    writer.flush()?;
    let verdict = verdict_within(&agent, Duration::from_secs(2), |v| v.health == Health::Unhealthy)?;
    assert_eq!(verdict.reason, Reason::KernelFaultReboot, "{verdict:?}");
    assert_eq!(agent.state().cursor.kmsg_sequence, Some(8));
    drop(writer);
    Ok(())
}

fn saved_state_is_valid(path: &Path) -> bool {
    matches!(nodemedic_agent::faults::load_state(path), nodemedic_agent::faults::LoadedState::Restored(_))
}
