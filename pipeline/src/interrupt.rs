//! SIGINT and SIGTERM for long commands. The first signal asks the work to stop at its next
//! safe point (a shard or a training step) after saving what it has; a second one exits at
//! once with the shell's `128 + signal` status. Job schedulers send SIGTERM some time before
//! the time limit, so one signal must be enough to leave a resumable folder behind.
//!
//! Only binaries call [`install`]; library code polls [`requested`] at its safe points. Tests
//! drive the real signal path through [`fault_point`], which raises SIGTERM on the process
//! itself at a chosen point (`SPLITMASK_FAULT_SIGNAL=<stage>:<n>[:<times>]`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Exit status of a command that stopped on a signal after saving its work (`EX_TEMPFAIL` of
/// sysexits.h: the same command run again continues). Distinct from 1 (error) and 2 (done
/// with skipped inputs).
pub const EXIT_INTERRUPTED: i32 = 75;

/// The environment variable of [`fault_point`].
pub const FAULT_ENV: &str = "SPLITMASK_FAULT_SIGNAL";

struct Flags {
    any: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

fn flags() -> &'static Flags {
    FLAGS.get_or_init(|| Flags {
        any: Arc::new(AtomicBool::new(false)),
        which: Arc::new(AtomicUsize::new(0)),
    })
}

/// Registers the handlers (idempotent). Without it, [`requested`] never returns a signal and
/// the signals keep their default action (exit at once).
pub fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let f = flags();
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag before this signal sets it: only a second
        // signal finds it set and exits.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, f.any.clone())?;
        signal_hook::flag::register_usize(sig, f.which.clone(), sig as usize)?;
        signal_hook::flag::register(sig, f.any.clone())?;
    }
    let _ = INSTALLED.set(());
    Ok(())
}

/// The name of the first signal received since [`install`], if any.
pub fn requested() -> Option<&'static str> {
    let f = flags();
    if !f.any.load(Ordering::SeqCst) {
        return None;
    }
    Some(match f.which.load(Ordering::SeqCst) as i32 {
        SIGINT => "SIGINT",
        _ => "SIGTERM",
    })
}

/// Raises SIGTERM on this process (`times` times) when [`FAULT_ENV`] names this point:
/// `step:3` at the end of training step 3, `shard:2` after the second shard written,
/// `step:3:2` twice. Tests use it to interrupt a run at an exact point through the same
/// handlers a scheduler's signal meets.
pub fn fault_point(stage: &str, n: u64) {
    static PLAN: OnceLock<Option<(String, u64, u32)>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var(FAULT_ENV).ok()?;
        let mut parts = text.split(':');
        let stage = parts.next()?.to_string();
        let n = parts.next()?.parse().ok()?;
        let times = parts.next().map_or(Some(1), |t| t.parse().ok())?;
        Some((stage, n, times))
    });
    if let Some((s, at, times)) = plan {
        if s == stage && *at == n {
            for _ in 0..*times {
                let _ = signal_hook::low_level::raise(SIGTERM);
            }
        }
    }
}

/// A safe point of long work: the test fault named `stage:n` fires here, then the first
/// signal received (if any) is returned, so the caller saves what it has and stops.
pub fn safe_point(stage: &str, n: u64) -> Option<&'static str> {
    fault_point(stage, n);
    requested()
}
