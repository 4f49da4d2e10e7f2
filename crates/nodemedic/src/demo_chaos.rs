//! `nodemedic demo --chaos`: while a scenario plays, strike at random moments (seeded, so a run
//! can be repeated): SIGKILL the leading controller replica (a replacement starts at once), pause
//! the API server (SIGSTOP, then SIGCONT), or kill it and start it again on the same port and data.
//! At the end the demo counts what must never happen ([`crate::demo_judge::chaos_counts`]).

use std::time::{Duration, Instant};

/// A seed when none is given: the clock's nanoseconds.
pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
}

/// One strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    KillLeader,
    PauseApiServer(Duration),
    RestartApiServer(Duration),
}

/// The strikes' schedule and tally.
pub struct Chaos {
    state: u64,
    next_at: Instant,
    pub seed: u64,
    pub kills: u32,
    pub pauses: u32,
    pub paused_for: Duration,
    pub restarts: u32,
}

impl Chaos {
    pub fn new(seed: u64, start: Instant) -> Chaos {
        let mut chaos = Chaos {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            next_at: start,
            seed,
            kills: 0,
            pauses: 0,
            paused_for: Duration::ZERO,
            restarts: 0,
        };
        chaos.next_at = start + chaos.pause_between();
        chaos
    }

    /// xorshift64*: enough for picking moments, and the same for the same seed.
    fn next(&mut self) -> u64 {
        let mut x = self.state.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.next() % (high_ms - low_ms + 1))
    }

    fn pause_between(&mut self) -> Duration {
        self.between(6_000, 18_000)
    }

    /// The strike due now, if any; the next one is scheduled at once.
    pub fn due(&mut self, now: Instant) -> Option<Strike> {
        if now < self.next_at {
            return None;
        }
        self.next_at = now + self.pause_between();
        // Leader kills most often: they are what a step must survive without repeating.
        let strike = match self.next() % 4 {
            0 | 1 => Strike::KillLeader,
            2 => Strike::PauseApiServer(self.between(3_000, 15_000)),
            _ => Strike::RestartApiServer(self.between(1_000, 5_000)),
        };
        match strike {
            Strike::KillLeader => self.kills += 1,
            Strike::PauseApiServer(d) => {
                self.pauses += 1;
                self.paused_for += d;
            }
            Strike::RestartApiServer(_) => self.restarts += 1,
        }
        Some(strike)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_strikes_the_same_way_and_every_kind_of_strike_comes_up() {
        let start = Instant::now();
        let run = |seed| {
            let mut chaos = Chaos::new(seed, start);
            (0..200).filter_map(|i| chaos.due(start + Duration::from_secs(20 * (i + 1)))).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let strikes = run(7);
        assert!(strikes.contains(&Strike::KillLeader));
        assert!(strikes.iter().any(|s| matches!(s, Strike::PauseApiServer(d) if *d >= Duration::from_secs(3))));
        assert!(strikes.iter().any(|s| matches!(s, Strike::RestartApiServer(_))));
    }

    #[test]
    fn nothing_strikes_before_its_moment() {
        let start = Instant::now();
        let mut chaos = Chaos::new(1, start);
        assert_eq!(chaos.due(start + Duration::from_secs(5)), None, "the first strike comes after 6 s at the earliest");
    }
}
