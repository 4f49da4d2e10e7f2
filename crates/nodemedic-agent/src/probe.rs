//! The pure probe framework: schedule settings (interval, timeout, jitter as "30s"-style strings) and the
//! threshold machine that turns a stream of raw results into a published verdict that does not flap.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use nodemedic_core::probe::{Published, RunOutcome, ThresholdMachine, Thresholds};

use crate::verdict::{Health, Reason, Verdict};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("duration {0:?} is empty")]
    Empty(String),
    #[error("duration {0:?} has no number before its unit")]
    NoNumber(String),
    #[error("duration {text:?} has unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses "500ms", "30s", "5m", "1h", "2d" or compounds like "1m30s". A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty(text.to_string()));
    }
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(DurationError::NoNumber(text.to_string()));
        }
        let number: u64 = rest[..digits_end].parse().map_err(|_| DurationError::Overflow(text.to_string()))?;
        rest = &rest[digits_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(|| DurationError::Overflow(text.to_string()))?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(|| DurationError::Overflow(text.to_string()))?),
            "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(|| DurationError::Overflow(text.to_string()))?),
            other => return Err(DurationError::UnknownUnit { text: text.to_string(), unit: other.to_string() }),
        };
        total = total.checked_add(part).ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    }
    Ok(total)
}

/// Writes a duration in the shortest exact "1h", "30s", "250ms" form.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = millis / 1000;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// A duration that reads and writes as "30s"-style text in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TextDuration(pub Duration);

impl Serialize for TextDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(TextDuration).map_err(serde::de::Error::custom)
    }
}

impl From<Duration> for TextDuration {
    fn from(duration: Duration) -> Self {
        TextDuration(duration)
    }
}

/// How often a probe runs and how its results are smoothed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSchedule {
    /// Time between runs (seed default: 30 s).
    pub interval: TextDuration,
    /// How long one run may take before it counts as timed out.
    pub timeout: TextDuration,
    /// Up to this much random delay is added to each interval so a fleet does not probe in lock-step.
    pub jitter: TextDuration,
    /// Consecutive failed runs before the published verdict becomes unhealthy.
    pub failures_before_unhealthy: u32,
    /// Consecutive passed runs before the published verdict becomes healthy again.
    pub passes_before_healthy: u32,
    /// A result older than this is stale: the published verdict becomes Unknown. Defaults to three intervals.
    pub stale_after: Option<TextDuration>,
}

impl Default for ProbeSchedule {
    fn default() -> Self {
        ProbeSchedule {
            interval: TextDuration(Duration::from_secs(30)),
            timeout: TextDuration(Duration::from_secs(20)),
            jitter: TextDuration(Duration::from_secs(3)),
            failures_before_unhealthy: 3,
            passes_before_healthy: 2,
            stale_after: None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("interval must be more than zero")]
    ZeroInterval,
    #[error("timeout {timeout} must be more than zero and no longer than the interval {interval}")]
    TimeoutOutOfRange { timeout: String, interval: String },
    #[error("{field} must be at least 1")]
    ZeroThreshold { field: &'static str },
}

impl ProbeSchedule {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.interval.0.is_zero() {
            return Err(ScheduleError::ZeroInterval);
        }
        if self.timeout.0.is_zero() || self.timeout.0 > self.interval.0 {
            return Err(ScheduleError::TimeoutOutOfRange {
                timeout: format_duration(self.timeout.0),
                interval: format_duration(self.interval.0),
            });
        }
        if self.failures_before_unhealthy == 0 {
            return Err(ScheduleError::ZeroThreshold { field: "failures_before_unhealthy" });
        }
        if self.passes_before_healthy == 0 {
            return Err(ScheduleError::ZeroThreshold { field: "passes_before_healthy" });
        }
        Ok(())
    }

    /// The schedule's thresholds: the one place a check's run counts are set (see [`nodemedic_core::probe`]).
    pub fn thresholds(&self) -> Thresholds {
        Thresholds::new(self.failures_before_unhealthy, self.passes_before_healthy)
    }

    /// The age after which a result is stale.
    pub fn stale_after(&self) -> Duration {
        self.stale_after.map(|d| d.0).unwrap_or_else(|| self.interval.0.saturating_mul(3))
    }

    /// The delay before the next run, given a jitter fraction in [0, 1] (the caller supplies the randomness).
    pub fn next_delay(&self, jitter_fraction: f64) -> Duration {
        let fraction = if jitter_fraction.is_finite() { jitter_fraction.clamp(0.0, 1.0) } else { 0.0 };
        self.interval.0 + self.jitter.0.mul_f64(fraction)
    }
}

/// One probe's threshold machine: nodemedic-core's [`ThresholdMachine`] (the simulator drives the same one)
/// plus the verdict text to publish and the staleness of the last result. Raw results go in with
/// [`ProbeState::record`]; the verdict that may be published comes out of [`ProbeState::published`]. A run of
/// failures must reach `failures_before_unhealthy` before the published verdict turns unhealthy, and a run of
/// passes must reach `passes_before_healthy` before it turns healthy, so an input that alternates never changes
/// what is published (with both thresholds above one).
#[derive(Debug, Clone)]
pub struct ProbeState {
    machine: ThresholdMachine,
    stale_after: Duration,
    published: Verdict,
    /// The machine runs on core time; this process's runs are placed on it relative to `origin`.
    origin: Instant,
    last_result_at: Option<Instant>,
}

impl ProbeState {
    pub fn new(schedule: &ProbeSchedule) -> Self {
        ProbeState {
            machine: ThresholdMachine::new(schedule.thresholds()),
            stale_after: schedule.stale_after(),
            published: Verdict::unknown(Reason::NotYetRun, "the probe has not run yet"),
            origin: Instant::now(),
            last_result_at: None,
        }
    }

    /// Feeds one raw result, observed at `now`.
    pub fn record(&mut self, raw: Verdict, now: Instant) {
        self.last_result_at = Some(now);
        let outcome = match raw.health {
            Health::Unhealthy => RunOutcome::Failed,
            Health::Healthy => RunOutcome::Passed,
            Health::Unknown => RunOutcome::Unknown,
        };
        let at = nodemedic_core::Time(i64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(i64::MAX));
        self.machine.record(outcome, at);
        // While the machine publishes this run's kind of result, the newest description of it is published.
        let current = match self.machine.published() {
            Published::NotYetRun => None,
            Published::Unhealthy { .. } => Some(Health::Unhealthy),
            Published::Healthy { .. } => Some(Health::Healthy),
            Published::Unknown { .. } => Some(Health::Unknown),
        };
        if current == Some(raw.health) {
            self.published = raw;
        }
    }

    /// The verdict to publish at `now`: Unknown when the probe never ran or its last result is stale.
    pub fn published(&self, now: Instant) -> Verdict {
        match self.last_result_at {
            None => self.published.clone(),
            Some(at) => {
                let age = now.saturating_duration_since(at);
                if age > self.stale_after {
                    Verdict::unknown(
                        Reason::Stale,
                        format!("last result is {} old (stale after {})", format_duration(age), format_duration(self.stale_after)),
                    )
                } else {
                    self.published.clone()
                }
            }
        }
    }

    /// Consecutive failed results so far.
    pub fn failure_streak(&self) -> u32 {
        self.machine.failure_streak()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Verdict {
        Verdict::unhealthy(Reason::GpuLost, "gpu 0 lost")
    }

    fn pass() -> Verdict {
        Verdict::healthy("ok")
    }

    #[test]
    fn durations_read_and_write_as_text() -> Result<(), DurationError> {
        assert_eq!(parse_duration("30s")?, Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s")?, Duration::from_secs(90));
        assert_eq!(parse_duration("250ms")?, Duration::from_millis(250));
        assert_eq!(parse_duration("2h")?, Duration::from_secs(7200));
        assert_eq!(parse_duration("15")?, Duration::from_secs(15));
        assert!(matches!(parse_duration("5 fortnights"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("s"), Err(DurationError::NoNumber(_))));
        assert!(matches!(parse_duration(""), Err(DurationError::Empty(_))));
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        Ok(())
    }

    #[test]
    fn three_failures_in_a_row_make_the_probe_unhealthy() {
        let mut state = ProbeState::new(&ProbeSchedule::default());
        let now = Instant::now();
        state.record(fail(), now);
        state.record(fail(), now);
        assert_eq!(state.published(now).health, Health::Unknown);
        state.record(fail(), now);
        assert_eq!(state.published(now).health, Health::Unhealthy);
        assert_eq!(state.published(now).reason, Reason::GpuLost);
    }

    #[test]
    fn two_passes_in_a_row_make_an_unhealthy_probe_healthy() {
        let mut state = ProbeState::new(&ProbeSchedule::default());
        let now = Instant::now();
        for _ in 0..3 {
            state.record(fail(), now);
        }
        state.record(pass(), now);
        assert_eq!(state.published(now).health, Health::Unhealthy);
        state.record(pass(), now);
        assert_eq!(state.published(now).health, Health::Healthy);
    }

    #[test]
    fn a_tool_that_stops_answering_turns_unhealthy_into_unknown_only_after_the_threshold() {
        let mut state = ProbeState::new(&ProbeSchedule::default());
        let now = Instant::now();
        for _ in 0..3 {
            state.record(fail(), now);
        }
        let timed_out = Verdict::unknown(Reason::ToolTimedOut, "nvidia-smi did not finish within 20s");
        state.record(timed_out.clone(), now);
        state.record(timed_out.clone(), now);
        assert_eq!(state.published(now).health, Health::Unhealthy);
        state.record(timed_out, now);
        assert_eq!(state.published(now).reason, Reason::ToolTimedOut);
    }

    #[test]
    fn a_never_run_probe_is_unknown_not_unhealthy() {
        let state = ProbeState::new(&ProbeSchedule::default());
        let verdict = state.published(Instant::now());
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(verdict.reason, Reason::NotYetRun);
    }

    #[test]
    fn a_stale_unhealthy_result_is_published_as_unknown() {
        let schedule = ProbeSchedule::default();
        let mut state = ProbeState::new(&schedule);
        let start = Instant::now();
        for _ in 0..3 {
            state.record(fail(), start);
        }
        let later = start + schedule.stale_after() + Duration::from_secs(1);
        let verdict = state.published(later);
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(verdict.reason, Reason::Stale);
    }

    #[test]
    fn schedules_with_a_timeout_longer_than_the_interval_are_refused() {
        let schedule = ProbeSchedule { timeout: TextDuration(Duration::from_secs(60)), ..ProbeSchedule::default() };
        assert!(matches!(schedule.validate(), Err(ScheduleError::TimeoutOutOfRange { .. })));
        assert_eq!(ProbeSchedule::default().validate(), Ok(()));
    }
}
