//! Following the kernel log for the running agent: a thread of its own reads each new record as it appears
//! (a blocking read of /dev/kmsg or a FIFO; a regular file is polled every [`FILE_POLL`] from the byte offset it
//! was read to), classifies GPU faults through the fault catalog into the agent's [`FaultMemory`], writes the
//! memory to its state file after every sighting, and wakes the probe loop so a fatal line is published at
//! once. NVML's Xid events ([`crate::nvml::XidEvents`]) feed the same memory through [`KernelLogFollower::record`].

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::catalog::{Catalog, FaultKey};
use crate::config::KernelLogProbe;
use crate::faults::{FaultMemory, LoadedState, load_state, save_state};
use crate::parse::kernel::{KmsgCursor, classify_message, short_pci, split_line};
use crate::verdict::{Reason, Verdict};

/// How often a regular-file source is checked for new lines.
pub const FILE_POLL: Duration = Duration::from_millis(100);
/// How long to wait before opening a source that could not be opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// This boot's ID, or a fixed word when the file cannot be read (then every start looks like the same boot).
pub fn read_boot_id(path: &Path) -> String {
    std::fs::read_to_string(path).map(|t| t.trim().to_string()).unwrap_or_else(|_| "unknown-boot".to_string())
}

struct Shared {
    memory: Mutex<FaultMemory>,
    /// Why the source cannot be read now (the probe is Unknown while it is set).
    problem: Mutex<Option<String>>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    catalog: Arc<Catalog>,
    state_file: PathBuf,
    source: PathBuf,
    /// Wall-clock time of this boot, to date kmsg records (stamped in time since boot).
    boot_wall_ms: u64,
}

/// The kernel-log probe of a running agent; dropping it stops a file-polling thread (a thread blocked on
/// /dev/kmsg ends with the process).
pub struct KernelLogFollower {
    shared: Arc<Shared>,
}

impl Drop for KernelLogFollower {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

impl KernelLogFollower {
    /// Restores the fault history and starts following `probe.source`.
    pub fn start(probe: &KernelLogProbe, catalog: Arc<Catalog>) -> KernelLogFollower {
        let boot_id = read_boot_id(&probe.boot_id_file);
        let (saved, skip_backlog) = match load_state(&probe.state_file) {
            LoadedState::Missing => (None, false),
            LoadedState::Restored(state) => (Some(state), false),
            LoadedState::Corrupt(problem) => {
                // Counts and cursor are lost: start empty and read only lines logged from now on, so an old line
                // read again cannot start a repair.
                tracing::warn!(%problem, "the kernel-log fault history cannot be used; starting with an empty one");
                (None, true)
            }
        };
        let memory = FaultMemory::restore(saved, &boot_id, probe.hold.0);
        let uptime_ms = crate::check::uptime().map(|u| u64::try_from(u.as_millis()).unwrap_or(0)).unwrap_or(0);
        let shared = Arc::new(Shared {
            memory: Mutex::new(memory),
            problem: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            catalog,
            state_file: probe.state_file.clone(),
            source: probe.source.clone(),
            boot_wall_ms: wall_ms().saturating_sub(uptime_ms),
        });
        shared.save();
        let worker = shared.clone();
        let spawned = std::thread::Builder::new().name("kernel-log".into()).spawn(move || worker.follow(skip_backlog));
        if let Err(error) = spawned {
            shared.set_problem(Some(format!("starting the kernel-log reader: {error}")));
        }
        KernelLogFollower { shared }
    }

    /// The probe's verdict now.
    pub fn verdict(&self) -> Verdict {
        if let Some(problem) = self.shared.problem.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Verdict::unknown(Reason::ToolFailed, problem);
        }
        let now = wall_ms();
        let mut memory = self.shared.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.expire(&self.shared.catalog, now);
        memory.verdict(now)
    }

    /// The one GPU every live fault is on, if there is one ([`crate::faults::FaultMemory::faulty_gpu`]).
    pub fn faulty_gpu(&self) -> Option<nodemedic_core::gpu::GpuDevice> {
        self.shared.memory.lock().unwrap_or_else(PoisonError::into_inner).faulty_gpu(wall_ms())
    }

    /// Resolves when a fault was recorded since the last wait (a stored permit makes none missed).
    pub async fn fault_recorded(&self) {
        self.shared.wake.notified().await
    }

    /// Records a fault reported by another source (NVML's event set) as seen now.
    pub fn record(&self, device: &str, key: &FaultKey) {
        self.shared.sighting(device, key, wall_ms());
        self.shared.save();
        self.shared.wake.notify_one();
    }

    /// A `resetGpu` step on `gpu` succeeded: end the active faults a reset fixes on that GPU
    /// ([`crate::faults::FaultMemory::cleared_by_reset`]), save the history, and wake the probe loop so the
    /// kernel-log probe publishes what it says now. Returns how many faults ended.
    pub fn reset_succeeded(&self, gpu: &nodemedic_core::gpu::GpuDevice) -> usize {
        let cleared = self.shared.memory.lock().unwrap_or_else(PoisonError::into_inner).cleared_by_reset(gpu);
        if cleared > 0 {
            self.shared.save();
            self.shared.wake.notify_one();
        }
        cleared
    }

    /// The fault history as it would be saved now (for tests and `check`).
    pub fn state(&self) -> crate::faults::FaultState {
        self.shared.memory.lock().unwrap_or_else(PoisonError::into_inner).state()
    }
}

impl Shared {
    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = problem;
    }

    fn sighting(&self, device: &str, key: &FaultKey, at_ms: u64) {
        let classification =
            self.memory.lock().unwrap_or_else(PoisonError::into_inner).observe(&self.catalog, &short_pci(device), key, at_ms);
        tracing::info!(device, fault = %key, action = ?classification.action, reason = %classification.reason, "GPU fault seen");
    }

    fn save(&self) {
        let state = self.memory.lock().unwrap_or_else(PoisonError::into_inner).state();
        if let Err(error) = save_state(&self.state_file, &state) {
            tracing::warn!(%error, "saving the kernel-log fault history");
        }
    }

    /// Takes one line; true when it was a GPU fault.
    fn consume(&self, line: &str) -> bool {
        let Some(parsed) = split_line(line) else { return false };
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sequence) = parsed.sequence {
            let mut cursor = KmsgCursor { last_sequence: memory.cursor.kmsg_sequence };
            if !cursor.admits(sequence) {
                return false;
            }
            memory.cursor.kmsg_sequence = cursor.last_sequence;
        }
        drop(memory);
        let Some((device, key)) = classify_message(parsed.message, &self.catalog) else { return false };
        // kmsg records carry their time since boot; other lines are dated when read (they are read as they come).
        let at = match (parsed.sequence, parsed.since_boot) {
            (Some(_), Some(since_boot)) => self.boot_wall_ms.saturating_add(u64::try_from(since_boot.as_millis()).unwrap_or(0)),
            _ => wall_ms(),
        };
        self.sighting(&device, &key, at.min(wall_ms()));
        true
    }

    /// Takes the complete lines at the front of `pending`; returns how many bytes were used and how many GPU
    /// faults they held. The caller moves its cursor past them, then calls [`Shared::commit`].
    fn consume_lines(&self, pending: &[u8]) -> (usize, usize) {
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else { return (0, 0) };
        let text = String::from_utf8_lossy(&pending[..end]);
        let faults = text.lines().filter(|line| self.consume(line)).count();
        (end + 1, faults)
    }

    /// After new faults: the history (with the cursor past them) goes to disk, then the probe loop is woken.
    fn commit(&self, faults: usize) {
        if faults > 0 {
            self.save();
            self.wake.notify_one();
        }
    }

    fn follow(&self, skip_backlog: bool) {
        let mut skip_backlog = skip_backlog;
        while !self.stop.load(Ordering::SeqCst) {
            let result = match std::fs::metadata(&self.source) {
                Ok(metadata) if metadata.is_file() => self.poll_file(skip_backlog),
                Ok(_) => self.read_stream(skip_backlog),
                Err(error) => Err(error),
            };
            skip_backlog = false;
            if let Err(error) = result {
                self.set_problem(Some(format!("reading {}: {error}", self.source.display())));
                std::thread::sleep(REOPEN_AFTER);
            }
        }
    }

    /// /dev/kmsg (one record per read) or a FIFO: blocking reads until the source fails or ends.
    fn read_stream(&self, skip_backlog: bool) -> std::io::Result<()> {
        let mut source = std::fs::File::open(&self.source)?;
        if skip_backlog {
            // /dev/kmsg supports seeking to its end: the records already there are skipped.
            let _ = source.seek(SeekFrom::End(0));
        }
        self.set_problem(None);
        let mut pending: Vec<u8> = Vec::new();
        let mut record = vec![0u8; 16 * 1024];
        loop {
            match source.read(&mut record) {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the source ended")),
                Ok(n) => {
                    pending.extend_from_slice(&record[..n]);
                    let (used, faults) = self.consume_lines(&pending);
                    pending.drain(..used);
                    self.commit(faults);
                }
                // A record overwritten before it was read: the next read returns the next one.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPIPE as i32) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A regular file: read what was appended since the cursor's offset, every [`FILE_POLL`].
    fn poll_file(&self, skip_backlog: bool) -> std::io::Result<()> {
        let mut skip_backlog = skip_backlog;
        while !self.stop.load(Ordering::SeqCst) {
            let metadata = std::fs::metadata(&self.source)?;
            let (inode, length) = (metadata.ino(), metadata.len());
            let offset = {
                let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
                let cursor = &mut memory.cursor;
                if skip_backlog {
                    (cursor.file_inode, cursor.file_offset) = (Some(inode), length);
                    skip_backlog = false;
                } else if cursor.file_inode != Some(inode) || length < cursor.file_offset {
                    // Another file at the path, or this one cut short: a rotated log, read from its start.
                    (cursor.file_inode, cursor.file_offset) = (Some(inode), 0);
                }
                cursor.file_offset
            };
            self.set_problem(None);
            if length > offset {
                let mut file = std::fs::File::open(&self.source)?;
                file.seek(SeekFrom::Start(offset))?;
                let mut appended = Vec::new();
                file.take(length - offset).read_to_end(&mut appended)?;
                let (used, faults) = self.consume_lines(&appended);
                self.memory.lock().unwrap_or_else(PoisonError::into_inner).cursor.file_offset = offset + used as u64;
                self.commit(faults);
            }
            std::thread::sleep(FILE_POLL);
        }
        Ok(())
    }
}
