//! The one byte-progress renderer, for pack, verify, extract, push, pull and the bytes an install
//! sends to each host. One policy for all of them: when stderr is a terminal, an indicatif bar per
//! counter (several share the screen through a [`Board`]); otherwise plain lines on stderr — one
//! when a counter starts with a known total, one every few seconds while it moves, and one when
//! it ends — so that a long operation in a log never goes silent. Either way the end is a line
//! (`verifying: done in 3.1 s`) that stays.
//!
//! A counter whose bytes stop moving says so: a bar redraws every second, so its rate decays to
//! 0 and its ETA goes, and after [`STALL_AFTER`] without a byte it shows `stalled 12s`; without a
//! terminal, a line every few seconds says `no progress for 12 s`. A counter whose total is not
//! known yet is a spinner with its bytes, rate and elapsed time.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::format::human_bytes;

/// How often a counter writes a line when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// How long a counter goes without a byte before it is shown as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// A bar of known size: bytes, rate, ETA, and the stall note.
const BAR_TEMPLATE: &str =
    "{prefix:<22} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}{stall} {msg}";
/// A counter of unknown size: spinner, bytes, rate, elapsed time, and the stall note.
const SPINNER_TEMPLATE: &str =
    "{prefix:<22} {spinner} {bytes} {bytes_per_sec} {elapsed}{stall} {msg}";

/// Counters that share the screen: bars stacked on a terminal, lines in a log.
#[derive(Clone)]
pub struct Board {
    /// Present when stderr is a terminal.
    multi: Option<MultiProgress>,
    /// `-q`: nothing is shown, neither bars nor lines.
    silent: bool,
    /// Where plain lines go: stderr, or a list (tests).
    lines: Option<Arc<Mutex<Vec<String>>>>,
    every: Duration,
    stall_after: Duration,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

impl Board {
    /// Bars when stderr is a terminal, plain lines otherwise; nothing with `-q`, and a line
    /// every second without a terminal with `-v`.
    pub fn new() -> Board {
        let verbosity = super::verbosity();
        let silent = verbosity == super::Verbosity::Quiet;
        Board {
            multi: (std::io::stderr().is_terminal() && !silent).then(MultiProgress::new),
            silent,
            lines: None,
            every: if verbosity == super::Verbosity::Verbose {
                Duration::from_secs(1)
            } else {
                LINE_EVERY
            },
            stall_after: STALL_AFTER,
        }
    }

    /// A board without a terminal that keeps its lines in `lines`, a line every `every` at most.
    #[cfg(test)]
    fn capturing(lines: Arc<Mutex<Vec<String>>>, every: Duration) -> Board {
        Board {
            multi: None,
            silent: false,
            lines: Some(lines),
            every,
            stall_after: STALL_AFTER,
        }
    }

    /// A plain line on stderr (or in the captured list); nothing when silent.
    fn plain(&self, line: String) {
        if self.silent {
            return;
        }
        match &self.lines {
            Some(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.multi.is_some()
    }

    /// A new counter of `total` bytes (0 while unknown; see [`ByteProgress::set_total`]).
    pub fn bar(&self, label: impl Into<String>, total: u64) -> ByteProgress {
        let label = label.into();
        let now = Instant::now();
        let shared = Arc::new(Shared {
            label: label.clone(),
            started: now,
            state: Mutex::new(State {
                total,
                done: 0,
                last_line: now,
                last_move: now,
                finished: false,
            }),
        });
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(style(total > 0, Arc::downgrade(&shared), self.stall_after));
            bar.set_prefix(label.clone());
            // Redrawn every second although no byte moves: the rate decays, the stall shows.
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        if bar.is_none() && !self.silent {
            if total > 0 {
                self.plain(format!("{label}: {}", human_bytes(total)));
            }
            self.watch_for_stalls(Arc::downgrade(&shared));
        }
        ByteProgress {
            board: self.clone(),
            bar,
            shared,
        }
    }

    /// Without a terminal: a thread that writes a line every `every` while the counter is
    /// stalled, so a log shows silence as silence. It ends with the counter.
    fn watch_for_stalls(&self, shared: Weak<Shared>) {
        let board = self.clone();
        let nap = self.every.min(Duration::from_secs(1));
        let _ = std::thread::Builder::new()
            .name("progress-stall".into())
            .spawn(move || loop {
                std::thread::sleep(nap);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let line = {
                    let Ok(mut state) = shared.state.lock() else {
                        return;
                    };
                    if state.finished {
                        return;
                    }
                    let quiet = state.last_move.elapsed();
                    if quiet < board.stall_after || state.last_line.elapsed() < board.every {
                        continue;
                    }
                    state.last_line = Instant::now();
                    format!(
                        "{}, no progress for {} s (stalled)",
                        state.position(&shared.label),
                        quiet.as_secs()
                    )
                };
                board.plain(line);
            });
    }

    /// Something of unknown length being worked on (a build step): a spinner with the elapsed
    /// time on a terminal; otherwise, after [`LINE_EVERY`], a line every [`LINE_EVERY`] saying it
    /// is still running. Print through [`Board::suspend`] while it spins.
    pub fn activity(&self, label: impl Into<String>) -> Activity {
        let label = label.into();
        let started = Instant::now();
        let done = Arc::new(Mutex::new(false));
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {elapsed} {msg}") {
                bar.set_style(style);
            }
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        if bar.is_none() && !self.silent {
            let board = self.clone();
            let watched = Arc::downgrade(&done);
            let every = self.every;
            let label = label.clone();
            let _ = std::thread::Builder::new()
                .name("progress-activity".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    loop {
                        std::thread::sleep(every.min(Duration::from_secs(1)));
                        let Some(done) = watched.upgrade() else {
                            return;
                        };
                        if done.lock().map(|d| *d).unwrap_or(true) {
                            return;
                        }
                        if last.elapsed() >= every {
                            last = Instant::now();
                            board.plain(format!(
                                "{label}: still running ({} s)",
                                started.elapsed().as_secs()
                            ));
                        }
                    }
                });
        }
        Activity {
            board: self.clone(),
            bar,
            started,
            done,
        }
    }

    /// Run `print` with the bars hidden, so that what it prints is not torn by a redraw.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.multi {
            Some(multi) => multi.suspend(print),
            None => print(),
        }
    }
}

/// What a counter and its stall watcher share.
struct Shared {
    label: String,
    started: Instant,
    state: Mutex<State>,
}

/// A step of unknown length, from [`Board::activity`]; it stops spinning when finished or
/// dropped.
pub struct Activity {
    board: Board,
    bar: Option<ProgressBar>,
    started: Instant,
    done: Arc<Mutex<bool>>,
}

impl Activity {
    /// What it is working on now, shown after the elapsed time on a terminal.
    pub fn set_item(&self, item: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            bar.set_message(item);
        }
    }

    /// Run `print` with the spinner hidden.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.board.suspend(print)
    }

    /// How long it has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop spinning; how long it ran.
    pub fn finish(&self) -> Duration {
        if let Ok(mut done) = self.done.lock() {
            *done = true;
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started.elapsed()
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.finish();
    }
}

struct State {
    total: u64,
    /// The bytes done at the last update.
    done: u64,
    last_line: Instant,
    /// When `done` last grew.
    last_move: Instant,
    finished: bool,
}

impl State {
    /// `LABEL: 50% (2.0 MiB of 4.0 MiB)`, or `LABEL: 2.0 MiB` while the total is unknown.
    fn position(&self, label: &str) -> String {
        if self.total == 0 {
            format!("{label}: {}", human_bytes(self.done))
        } else {
            let done = self.done.min(self.total);
            format!(
                "{label}: {}% ({} of {})",
                done * 100 / self.total,
                human_bytes(done),
                human_bytes(self.total)
            )
        }
    }
}

/// The bar's style: a bar when the size is known, else a spinner; both with the stall note.
fn style(known_size: bool, shared: Weak<Shared>, stall_after: Duration) -> ProgressStyle {
    let template = if known_size {
        BAR_TEMPLATE
    } else {
        SPINNER_TEMPLATE
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    style.progress_chars("=> ").with_key(
        "stall",
        move |_: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
            let quiet = shared
                .upgrade()
                .and_then(|s| s.state.lock().ok().map(|st| (st.finished, st.last_move)))
                .filter(|(finished, _)| !finished)
                .map(|(_, last_move)| last_move.elapsed())
                .filter(|quiet| *quiet >= stall_after);
            if let Some(quiet) = quiet {
                let _ = write!(out, " stalled {}s", quiet.as_secs());
            }
        },
    )
}

/// One byte counter: a bar on a terminal, a line every few seconds otherwise. An unfinished
/// counter that is dropped (the work failed) disappears without an end line.
pub struct ByteProgress {
    board: Board,
    bar: Option<ProgressBar>,
    shared: Arc<Shared>,
}

impl ByteProgress {
    /// A counter on a board of its own.
    pub fn new(label: impl Into<String>, total: u64) -> ByteProgress {
        Board::new().bar(label, total)
    }

    pub fn total(&self) -> u64 {
        self.shared.state.lock().map(|s| s.total).unwrap_or(0)
    }

    /// What the counter counts, as shown before it.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    pub fn is_finished(&self) -> bool {
        self.shared.state.lock().map(|s| s.finished).unwrap_or(true)
    }

    /// The total became known or changed (a spinner becomes a bar).
    pub fn set_total(&self, total: u64) {
        let was_known = match self.shared.state.lock() {
            Ok(mut state) => std::mem::replace(&mut state.total, total) > 0,
            Err(_) => return,
        };
        if let Some(bar) = &self.bar {
            if was_known != (total > 0) {
                bar.set_style(style(
                    total > 0,
                    Arc::downgrade(&self.shared),
                    self.board.stall_after,
                ));
            }
            bar.set_length(total);
        }
    }

    /// `done` bytes so far.
    pub fn update(&self, done: u64) {
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        if done > state.done {
            state.last_move = Instant::now();
        }
        state.done = done;
        if let Some(bar) = &self.bar {
            drop(state);
            bar.set_position(done);
            return;
        }
        if state.finished || state.last_line.elapsed() < self.board.every {
            return;
        }
        state.last_line = Instant::now();
        let line = state.position(&self.shared.label);
        drop(state);
        self.board.plain(line);
    }

    /// What is being worked on now (a file, a frame, a host's step), shown after the bar.
    pub fn set_item(&self, item: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            bar.set_message(item);
        }
    }

    /// A line about this counter (`LABEL: TEXT`) that stays, above the bars on a terminal.
    pub fn note(&self, text: &str) {
        let line = format!("{}: {text}", self.shared.label);
        self.board.suspend(|| self.board.plain(line));
    }

    /// The work is done: `LABEL: done in 3.1 s`.
    pub fn finish(&self) {
        let secs = self.shared.started.elapsed().as_secs_f64();
        self.finish_with(&format!("done in {secs:.1} s"));
    }

    /// The work ended as `message` says (`LABEL: already present`).
    pub fn finish_with(&self, message: &str) {
        if let Ok(mut state) = self.shared.state.lock() {
            if state.finished {
                return;
            }
            state.finished = true;
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.note(message);
    }
}

impl Drop for ByteProgress {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.finished = true;
        }
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_a_counter_writes_a_start_a_line_per_interval_and_an_end() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let board = Board::capturing(lines.clone(), Duration::from_millis(300));
        let progress = board.bar("verifying", 4 << 20);
        progress.update(1 << 20);
        std::thread::sleep(Duration::from_millis(350));
        progress.update(2 << 20);
        progress.update(3 << 20);
        progress.finish();
        progress.update(4 << 20);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "verifying: 4.0 MiB");
        assert_eq!(lines[1], "verifying: 50% (2.0 MiB of 4.0 MiB)");
        assert!(lines[2].starts_with("verifying: done in "), "{lines:?}");
    }

    #[test]
    fn without_a_terminal_a_stalled_counter_says_so_every_interval_until_it_moves() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut board = Board::capturing(lines.clone(), Duration::from_millis(200));
        board.stall_after = Duration::from_millis(300);
        let progress = board.bar("[10.0.0.2] sending", 4 << 20);
        progress.update(1 << 20);
        std::thread::sleep(Duration::from_millis(1900));
        let stalled: Vec<String> = lines.lock().unwrap().clone();
        progress.update(2 << 20);
        progress.finish();
        std::thread::sleep(Duration::from_millis(1100));
        let all = lines.lock().unwrap().clone();
        let notes: Vec<&String> = stalled.iter().filter(|l| l.contains("stalled")).collect();
        assert!(notes.len() >= 2, "{stalled:?}");
        assert!(
            notes[0].starts_with("[10.0.0.2] sending: 25% (1.0 MiB of 4.0 MiB), no progress for ")
                && notes[0].ends_with(" s (stalled)"),
            "{notes:?}"
        );
        // Once finished, the watcher is silent.
        assert!(all.last().unwrap().contains("done in"), "{all:?}");
    }

    #[test]
    fn without_a_terminal_a_long_activity_says_it_is_still_running_until_it_ends() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let board = Board::capturing(lines.clone(), Duration::from_millis(300));
        let step = board.activity("STEP 3/6");
        std::thread::sleep(Duration::from_millis(1400));
        let took = step.finish();
        std::thread::sleep(Duration::from_millis(700));
        let said = lines.lock().unwrap().clone();
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        assert!(!said.is_empty(), "{said:?}");
        assert!(
            said.iter()
                .all(|l| l.starts_with("STEP 3/6: still running (")),
            "{said:?}"
        );
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            lines.lock().unwrap().len(),
            said.len(),
            "it kept talking after it ended"
        );
    }

    #[test]
    fn a_moving_counter_is_never_called_stalled() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut board = Board::capturing(lines.clone(), Duration::from_millis(100));
        board.stall_after = Duration::from_millis(400);
        let progress = board.bar("packing", 0);
        for i in 1..=12u64 {
            progress.update(i << 20);
            std::thread::sleep(Duration::from_millis(100));
        }
        progress.finish();
        let lines = lines.lock().unwrap().clone();
        assert!(lines.iter().all(|l| !l.contains("stalled")), "{lines:?}");
        assert!(lines.len() >= 3, "{lines:?}");
    }

    #[test]
    fn a_counter_whose_total_is_unknown_still_reports_and_ends_once() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let board = Board::capturing(lines.clone(), Duration::ZERO);
        let progress = board.bar("packing", 0);
        progress.update(1536);
        progress.set_total(3072);
        progress.update(3072);
        progress.finish_with("done");
        progress.finish_with("done");
        drop(progress);
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "packing: 1.5 KiB",
                "packing: 100% (3.0 KiB of 3.0 KiB)",
                "packing: done"
            ]
        );
    }
}
