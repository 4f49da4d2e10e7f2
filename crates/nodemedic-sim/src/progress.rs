//! When `nodemedic simulate` shows a progress bar, and what the bar says. Both are pure (the caller
//! passes the elapsed time and whether stderr is a terminal), so they are tested without a terminal;
//! the command line only writes the line to stderr.

use std::time::Duration;

/// A run that ends sooner than this never shows a bar: it would only flicker.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Cells between the brackets of the bar.
pub const BAR_CELLS: usize = 40;

/// Whether to draw a bar now: the run has already taken more than [`SHOW_AFTER`], a person is
/// watching stderr, and the output is for people (with `--json` a machine reads it).
pub fn shows_progress(elapsed: Duration, stderr_is_terminal: bool, json: bool) -> bool {
    stderr_is_terminal && !json && elapsed > SHOW_AFTER
}

/// One line of the bar: `simulating [#####-----]  50% (3s)` with `done` the fraction finished.
/// Out-of-range or NaN fractions are shown as the nearest of empty and full.
pub fn progress_line(done: f64, elapsed: Duration) -> String {
    let done = if done.is_nan() { 0.0 } else { done.clamp(0.0, 1.0) };
    // Floors, so that the bar is full and says 100% only when the work is.
    let filled = ((done * BAR_CELLS as f64) as usize).min(BAR_CELLS);
    let percent = (done * 100.0) as u32;
    format!("simulating [{}{}] {percent:>3}% ({}s)", "#".repeat(filled), "-".repeat(BAR_CELLS - filled), elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_shows_only_on_a_terminal_for_people_after_a_second() {
        let long = Duration::from_millis(1_500);
        assert!(shows_progress(long, true, false));
        assert!(!shows_progress(Duration::from_millis(900), true, false), "short runs never show one");
        assert!(!shows_progress(SHOW_AFTER, true, false), "more than a second, not exactly one");
        assert!(!shows_progress(long, false, false), "stderr piped or redirected");
        assert!(!shows_progress(long, true, true), "--json");
    }

    #[test]
    fn the_bar_fills_with_the_fraction_done_and_says_the_percentage_and_elapsed_seconds() {
        let empty = format!("simulating [{}]   0% (0s)", "-".repeat(BAR_CELLS));
        assert_eq!(progress_line(0.0, Duration::ZERO), empty);
        let half = format!("simulating [{}{}]  50% (3s)", "#".repeat(20), "-".repeat(20));
        assert_eq!(progress_line(0.5, Duration::from_millis(3_900)), half);
        let full = format!("simulating [{}] 100% (12s)", "#".repeat(BAR_CELLS));
        assert_eq!(progress_line(1.0, Duration::from_secs(12)), full);
    }

    #[test]
    fn the_bar_is_never_full_before_the_work_is_done() {
        let line = progress_line(0.999, Duration::from_secs(1));
        assert!(line.contains(" 99%") && line.contains("#-]"), "{line}");
    }

    #[test]
    fn fractions_out_of_range_are_drawn_as_empty_or_full() {
        assert_eq!(progress_line(-0.5, Duration::ZERO), progress_line(0.0, Duration::ZERO));
        assert_eq!(progress_line(f64::NAN, Duration::ZERO), progress_line(0.0, Duration::ZERO));
        assert_eq!(progress_line(7.0, Duration::ZERO), progress_line(1.0, Duration::ZERO));
    }
}
