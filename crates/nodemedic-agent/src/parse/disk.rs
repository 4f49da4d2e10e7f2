//! Disks: mounts read-only (from `/proc/mounts` text) and free space (statvfs). A root or data filesystem the
//! kernel remounted read-only after I/O errors is a node fault.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::verdict::{Reason, Verdict, worst_of};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiskError {
    #[error("mounts line {line} has {fields} fields, expected at least 4: {text:?}")]
    BadMountLine { line: usize, fields: usize, text: String },
    #[error("statvfs {path}: {message}")]
    Statvfs { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
    pub options: Vec<String>,
}

impl Mount {
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Undoes the octal escapes /proc/mounts uses for spaces and tabs in paths (`\040`, `\011`, …).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(code) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(code));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Parses `/proc/mounts` (or `/proc/self/mounts`) text.
pub fn parse_mounts(text: &str) -> Result<Vec<Mount>, DiskError> {
    let mut mounts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            return Err(DiskError::BadMountLine { line: number + 1, fields: fields.len(), text: line.to_string() });
        }
        mounts.push(Mount {
            device: unescape(fields[0]),
            mount_point: unescape(fields[1]),
            fstype: fields[2].to_string(),
            options: fields[3].split(',').map(str::to_string).collect(),
        });
    }
    Ok(mounts)
}

/// Read-only verdict for the watched mount points; the last mount of a point wins (later mounts hide earlier).
pub fn read_only_verdict(mounts: &[Mount], watched: &[String]) -> Verdict {
    let mut findings = Vec::new();
    for point in watched {
        match mounts.iter().rev().find(|m| &m.mount_point == point) {
            None => findings.push(Verdict::unhealthy(Reason::MountMissing, format!("{point} is not mounted"))),
            Some(mount) if mount.is_read_only() => findings.push(Verdict::unhealthy(
                Reason::FilesystemReadOnly,
                format!("{point} ({} on {}) is mounted read-only", mount.fstype, mount.device),
            )),
            Some(_) => {}
        }
    }
    worst_of(findings, format!("{} watched filesystems mounted read-write", watched.len()))
}

/// Free space of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FreeSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl FreeSpace {
    pub fn available_percent(&self) -> f64 {
        if self.total_bytes == 0 { 100.0 } else { self.available_bytes as f64 * 100.0 / self.total_bytes as f64 }
    }
}

/// statvfs on `path` (space available to unprivileged users, as `df` shows it).
// The libc field types are u64 on 64-bit Linux but narrower elsewhere; the conversions keep it portable.
#[allow(clippy::useless_conversion)]
pub fn free_space(path: &Path) -> Result<FreeSpace, DiskError> {
    let stats =
        nix::sys::statvfs::statvfs(path).map_err(|e| DiskError::Statvfs { path: path.display().to_string(), message: e.to_string() })?;
    let fragment = u64::from(stats.fragment_size());
    Ok(FreeSpace {
        total_bytes: u64::from(stats.blocks()).saturating_mul(fragment),
        available_bytes: u64::from(stats.blocks_available()).saturating_mul(fragment),
    })
}

pub fn free_space_verdict(point: &str, space: &FreeSpace, min_free_percent: f64) -> Verdict {
    let percent = space.available_percent();
    if percent < min_free_percent {
        return Verdict::unhealthy(Reason::DiskSpaceLow, format!("{point} has {percent:.1}% free, below {min_free_percent}%"));
    }
    Verdict::healthy(format!("{point} has {percent:.1}% free"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "/dev/nvme0n1p1 / ext4 rw,relatime,errors=remount-ro 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n/dev/md0 /mnt/local\\040data xfs ro,relatime 0 0\n";

    #[test]
    fn a_data_filesystem_remounted_read_only_is_unhealthy() -> Result<(), DiskError> {
        let mounts = parse_mounts(MOUNTS)?;
        assert_eq!(mounts[2].mount_point, "/mnt/local data");
        assert!(read_only_verdict(&mounts, &["/".to_string()]).is_healthy());
        let verdict = read_only_verdict(&mounts, &["/".to_string(), "/mnt/local data".to_string()]);
        assert_eq!(verdict.reason, Reason::FilesystemReadOnly);
        assert!(verdict.message.contains("/dev/md0"), "{}", verdict.message);
        assert_eq!(read_only_verdict(&mounts, &["/var/lib/kubelet".to_string()]).reason, Reason::MountMissing);
        Ok(())
    }

    #[test]
    fn a_short_mounts_line_is_an_error() {
        assert!(matches!(parse_mounts("/dev/sda1 /\n"), Err(DiskError::BadMountLine { line: 1, fields: 2, .. })));
    }

    #[test]
    fn free_space_below_the_bound_is_unhealthy() -> Result<(), DiskError> {
        let dir = std::env::temp_dir();
        let space = free_space(&dir)?;
        assert!(space.total_bytes > 0);
        assert!(free_space_verdict("/tmp", &space, 0.0).is_healthy());
        let full = FreeSpace { total_bytes: 1000, available_bytes: 10 };
        let verdict = free_space_verdict("/var", &full, 5.0);
        assert_eq!(verdict.reason, Reason::DiskSpaceLow);
        assert_eq!(verdict.message, "/var has 1.0% free, below 5%");
        Ok(())
    }
}
