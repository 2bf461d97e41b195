//! Progress bars on stderr: one style for training loops (steps) and one for passes over
//! images (loading, evaluation). indicatif draws nothing when stderr is not a terminal, and a
//! hidden bar is returned when the caller asked for quiet.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over the `total` updates of a run, starting at `at` (a resumed run).
pub fn steps(show: bool, total: u64, at: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(at);
    bar
}
