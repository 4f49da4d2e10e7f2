//! The Linux watchdog device (`/dev/watchdog`: a hardware watchdog or the `softdog` module). Once
//! open it must be fed; if the agent stops feeding it — because it decided to fence, or because it
//! died — the node resets when the timeout runs out. Only a deliberate shutdown of the agent disarms
//! it (the "magic close": write `V`, then close).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

pub struct Watchdog {
    file: File,
    pub timeout: Duration,
}

impl Watchdog {
    /// Opens the device (which arms it) and reads its timeout from sysfs (`/sys/class/watchdog/<dev>/timeout`;
    /// `/dev/watchdog` is `watchdog0`). A device that resets later than `most` would break the safe
    /// time computed from `most`, and one whose timeout cannot be read cannot be counted on: both are
    /// disarmed again and refused. (The timeout is set by the driver, e.g. softdog's `soft_margin`.)
    pub fn open(device: &Path, most: Duration) -> std::io::Result<Watchdog> {
        let file = OpenOptions::new().write(true).open(device)?;
        let dog = Watchdog { file, timeout: most };
        match read_timeout(device) {
            Ok(timeout) if timeout <= most => Ok(Watchdog { timeout, ..dog }),
            Ok(timeout) => {
                dog.disarm();
                Err(std::io::Error::other(format!(
                    "{} resets {timeout:?} after the last keepalive, more than self_fencing.watchdog.timeout {most:?}",
                    device.display()
                )))
            }
            Err(error) => {
                dog.disarm();
                Err(std::io::Error::other(format!("reading the timeout of {}: {error}", device.display())))
            }
        }
    }

    /// Any byte other than `V` restarts the countdown.
    pub fn keepalive(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"k")?;
        self.file.flush()
    }

    /// The agent is stopping on purpose: write the magic `V` and close, so the node is not reset.
    pub fn disarm(mut self) {
        if let Err(error) = self.file.write_all(b"V") {
            tracing::warn!(%error, "writing the watchdog's magic close; the node may be reset");
        }
    }
}

fn read_timeout(device: &Path) -> std::io::Result<Duration> {
    let name = device.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = if name == "watchdog" { "watchdog0" } else { name };
    let text = std::fs::read_to_string(Path::new("/sys/class/watchdog").join(name).join("timeout"))?;
    let seconds: u64 =
        text.trim().parse().map_err(|e| std::io::Error::other(format!("{:?} is not a number of seconds: {e}", text.trim())))?;
    Ok(Duration::from_secs(seconds))
}
