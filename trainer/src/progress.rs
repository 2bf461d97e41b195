//! Progress bars on stderr: one style for training loops (steps) and one for passes over
//! images and runs (loading a split, evaluation, k-NN banks, probes, export, report).
//! indicatif draws nothing when stderr is not a terminal, and every bar is hidden after
//! [`set_quiet`] (`trainer --quiet`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Process-wide, like a log level: the passes that draw bars sit deep inside evaluation and
/// loading, and threading a flag through every signature would say nothing more.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides every bar from now on (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn shown() -> bool {
    !QUIET.load(Ordering::Relaxed)
}

/// Every bar joins one stack, so an evaluation pass inside a training loop draws its bar under
/// the loop's instead of over it.
fn stack(bar: ProgressBar) -> ProgressBar {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new).add(bar)
}

/// A bar over the `total` updates of a run, starting at `at` (a resumed run).
pub fn steps(show: bool, total: u64, at: u64) -> ProgressBar {
    if !show || !shown() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(at);
    stack(bar)
}

/// A bar over one pass of `total` items; `what` names the pass ("loading train", "k-NN
/// bank") and `unit` its items. Finish it with `finish_and_clear`.
pub fn pass(what: &str, total: u64, unit: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    stack(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hides_every_bar() {
        set_quiet(true);
        assert!(pass("x", 10, "images").is_hidden());
        assert!(steps(true, 10, 0).is_hidden());
        set_quiet(false);
        // Shown or not is now the terminal's call (tests run without one), but not ours.
        assert!(steps(false, 10, 0).is_hidden());
    }
}
