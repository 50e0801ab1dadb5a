//! The one byte-progress renderer, for pack, verify, extract, push, pull and the bytes an install
//! sends to each host. One policy for all of them: when stderr is a terminal, an indicatif bar per
//! counter (several share the screen through a [`Board`]); otherwise plain lines on stderr — one
//! when a counter starts with a known total, one every few seconds while it moves, and one when
//! it ends — so that a long operation in a log never goes silent. Either way the end is a line
//! (`verifying: done in 3.1 s`) that stays.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::format::human_bytes;

/// How often a counter writes a line when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Counters that share the screen: bars stacked on a terminal, lines in a log.
#[derive(Clone)]
pub struct Board {
    /// Present when stderr is a terminal.
    multi: Option<MultiProgress>,
    /// Where plain lines go: stderr, or a list (tests).
    lines: Option<Arc<Mutex<Vec<String>>>>,
    every: Duration,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

impl Board {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Board {
        Board {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
            lines: None,
            every: LINE_EVERY,
        }
    }

    /// A board without a terminal that keeps its lines in `lines`, a line every `every` at most.
    #[cfg(test)]
    fn capturing(lines: Arc<Mutex<Vec<String>>>, every: Duration) -> Board {
        Board {
            multi: None,
            lines: Some(lines),
            every,
        }
    }

    /// A plain line on stderr (or in the captured list).
    fn plain(&self, line: String) {
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
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:<22} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.clone());
            bar
        });
        if bar.is_none() && total > 0 {
            self.plain(format!("{label}: {}", human_bytes(total)));
        }
        let now = Instant::now();
        ByteProgress {
            label,
            board: self.clone(),
            bar,
            started: now,
            state: Mutex::new(State {
                total,
                last_line: now,
                finished: false,
            }),
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

struct State {
    total: u64,
    last_line: Instant,
    finished: bool,
}

/// One byte counter: a bar on a terminal, a line every few seconds otherwise. An unfinished
/// counter that is dropped (the work failed) disappears without an end line.
pub struct ByteProgress {
    label: String,
    board: Board,
    bar: Option<ProgressBar>,
    started: Instant,
    state: Mutex<State>,
}

impl ByteProgress {
    /// A counter on a board of its own.
    pub fn new(label: impl Into<String>, total: u64) -> ByteProgress {
        Board::new().bar(label, total)
    }

    pub fn total(&self) -> u64 {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }

    pub fn is_finished(&self) -> bool {
        self.state.lock().map(|s| s.finished).unwrap_or(true)
    }

    /// The total became known or changed.
    pub fn set_total(&self, total: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.total = total;
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// `done` bytes so far.
    pub fn update(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.finished || state.last_line.elapsed() < self.board.every {
            return;
        }
        state.last_line = Instant::now();
        let line = if state.total == 0 {
            format!("{}: {}", self.label, human_bytes(done))
        } else {
            let done = done.min(state.total);
            format!(
                "{}: {}% ({} of {})",
                self.label,
                done * 100 / state.total,
                human_bytes(done),
                human_bytes(state.total)
            )
        };
        drop(state);
        self.board.plain(line);
    }

    /// A line about this counter (`LABEL: TEXT`) that stays, above the bars on a terminal.
    pub fn note(&self, text: &str) {
        let line = format!("{}: {text}", self.label);
        self.board.suspend(|| self.board.plain(line));
    }

    /// The work is done: `LABEL: done in 3.1 s`.
    pub fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.finish_with(&format!("done in {secs:.1} s"));
    }

    /// The work ended as `message` says (`LABEL: already present`).
    pub fn finish_with(&self, message: &str) {
        if let Ok(mut state) = self.state.lock() {
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
