//! Terminal output shared by the `sealer` CLI and the installer stub: short forms of sizes and
//! digests ([`format`]), the one byte-progress renderer ([`progress`]), the install's host lines and
//! report table ([`install`]), the run log file ([`log`]), the one-sentence error ([`error`]) and
//! the examples of a command's help read back for its tests ([`examples`]).
//!
//! It only prints: it calls no engine, store or registry function and decides nothing. The library
//! reports what it does through events; these modules turn them into text.

pub mod error;
pub mod examples;
pub mod format;
pub mod install;
pub mod log;
pub mod progress;

pub use format::{human_bytes, short_digest};

use std::sync::atomic::{AtomicU8, Ordering};

/// How much a command says (`-q`, `-v`): set once by the command line, read by every printer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Results, warnings and errors only: no progress, no stage lines, no build steps.
    Quiet,
    Normal,
    /// Also how long each stage of each host took, and progress lines every second without a
    /// terminal.
    Verbose,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(1);

/// Sets the verbosity of everything printed from now on.
pub fn set_verbosity(verbosity: Verbosity) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
}

/// The verbosity the command line asked for ([`Verbosity::Normal`] unless set).
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// The verbosity of `-q` / `-v` flags as given (the last one wins when both are).
pub fn verbosity_from_flags(quiet: bool, verbose: bool) -> Verbosity {
    match (quiet, verbose) {
        (_, true) => Verbosity::Verbose,
        (true, false) => Verbosity::Quiet,
        (false, false) => Verbosity::Normal,
    }
}
