//! Durable local files: the agent's state on the node (fault history, attempt log) must survive a
//! power cut in the middle of a write, because a torn file would make the agent forget a reboot it
//! already did. Owns only the write; what is written and how it is read belong to the callers.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: a temp file
/// beside it, fsynced, renamed over it, and the directory fsynced so the rename itself is kept.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = PathBuf::from(path);
    temp.set_extension("json.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_write_replaces_the_first_and_leaves_no_temp_file_behind() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/state.json");
        write_atomically(&path, b"{\"a\":1}")?;
        write_atomically(&path, b"{\"a\":2}")?;
        assert_eq!(std::fs::read(&path)?, b"{\"a\":2}");
        assert!(!path.with_extension("json.tmp").exists());
        Ok(())
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_an_error_not_a_panic() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x")?;
        assert!(write_atomically(&blocker.join("state.json"), b"{}").is_err());
        Ok(())
    }
}
