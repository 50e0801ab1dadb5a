//! The run log: every line a run that changes hosts prints, with a UTC time, in
//! `$SEALER_ROOT/logs/<UTC timestamp>-<cluster>-<verb>.log`, after the command line with its
//! passwords masked ([`masked_command`]).
//!
//! It only writes what the install view prints; it decides nothing. The file is opened when the
//! install names its cluster; lines printed before that are kept and written then. A log that
//! cannot be created or written is a warning on stderr, never a failure of the run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Flags whose value is a secret; their value is written as `***`.
const SECRET_FLAGS: &[&str] = &[
    "-p",
    "--passwd",
    "--password",
    "--pk-passwd",
    "--bastion-passwd",
    "--bastion-pk-passwd",
];

/// The password flags given on a command line (`-p` only for the verbs where it is the SSH
/// password: not `login`, whose `-p` warns by itself).
pub fn secret_flags_given(args: &[String]) -> Vec<&'static str> {
    let mut given = Vec::new();
    for arg in args {
        if arg == "--" {
            break;
        }
        let flag = SECRET_FLAGS.iter().find(|f| {
            arg == **f
                || arg.starts_with(&format!("{f}="))
                || (**f == "-p" && arg.starts_with("-p") && !arg.starts_with("--"))
        });
        if let Some(flag) = flag {
            if !given.contains(flag) {
                given.push(*flag);
            }
        }
    }
    given
}

/// Warn on stderr when a password is on the command line (other users see it in the process
/// list), naming the environment variables and the prompt that keep it out.
pub fn warn_secrets_on_command_line(args: &[String]) {
    let given = secret_flags_given(args);
    if given.is_empty() || args.first().map(String::as_str) == Some("login") {
        return;
    }
    eprintln!(
        "warning: {} on the command line: other users of this machine can read it in the process \
         list; use $SEALER_SSH_PASSWORD / $SEALER_SSH_KEY_PASSPHRASE, a Clusterfile, or run on a \
         terminal without it to be asked",
        given.join(", ")
    );
}

/// The command line as one string with the value of every password flag replaced by `***`
/// (`-p VALUE`, `-pVALUE`, `--passwd VALUE`, `--passwd=VALUE`, ...).
pub fn masked_command(args: &[String]) -> String {
    let mut out = Vec::with_capacity(args.len());
    let mut mask_next = false;
    for arg in args {
        if mask_next {
            out.push("***".to_string());
            mask_next = false;
            continue;
        }
        if SECRET_FLAGS.contains(&arg.as_str()) {
            mask_next = true;
            out.push(arg.clone());
        } else if let Some(flag) = SECRET_FLAGS
            .iter()
            .filter(|f| f.starts_with("--"))
            .find(|f| arg.starts_with(&format!("{f}=")))
        {
            out.push(format!("{flag}=***"));
        } else if arg.starts_with("-p") && !arg.starts_with("--") && arg.len() > 2 {
            out.push("-p***".to_string());
        } else {
            out.push(arg.clone());
        }
    }
    out.join(" ")
}

enum State {
    /// The cluster is not named yet: lines wait here.
    Pending(Vec<String>),
    Open {
        file: File,
        path: PathBuf,
    },
    /// Creating or writing failed; the warning was printed once.
    Off,
}

/// One run's log file.
pub struct RunLog {
    dir: PathBuf,
    verb: String,
    state: Mutex<State>,
}

impl RunLog {
    /// A log under `root/logs` for `verb` (`run`, `install`, `join`, ...), starting with the
    /// masked `args`. Nothing is created until [`RunLog::open`].
    pub fn new(root: &Path, verb: &str, args: &[String]) -> RunLog {
        let first = stamped(&format!("command: {}", masked_command(args)));
        RunLog {
            dir: root.join("logs"),
            verb: verb.to_string(),
            state: Mutex::new(State::Pending(vec![first])),
        }
    }

    /// Creates `<UTC timestamp>-<cluster>-<verb>.log` and writes the lines kept so far.
    pub fn open(&self, cluster: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let State::Pending(lines) = &*state else {
            return;
        };
        let stamp = crate::builder::rfc3339(now()).replace(':', "");
        let name: String = cluster
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(format!("{stamp}-{name}-{}.log", self.verb));
        let opened = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            for line in lines {
                writeln!(file, "{line}")?;
            }
            Ok(file)
        });
        *state = match opened {
            Ok(file) => State::Open { file, path },
            Err(e) => {
                eprintln!(
                    "warning: cannot write the run log {}: {e}; the run goes on without it",
                    path.display()
                );
                State::Off
            }
        };
    }

    /// Adds `text` (one or more lines), each with the time.
    pub fn write(&self, text: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut lines = text.lines().map(stamped);
        match &mut *state {
            State::Pending(kept) => kept.extend(lines),
            State::Open { file, path } => {
                let written = lines.try_for_each(|l| writeln!(file, "{l}"));
                if let Err(e) = written {
                    eprintln!(
                        "warning: cannot write the run log {}: {e}; the run goes on without it",
                        path.display()
                    );
                    *state = State::Off;
                }
            }
            State::Off => {}
        }
    }

    /// The file, once created.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.state.lock().ok()? {
            State::Open { path, .. } => Some(path.clone()),
            _ => None,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn stamped(line: &str) -> String {
    format!("{} {line}", crate::builder::rfc3339(now()))
}

#[cfg(test)]
mod tests {
    use super::masked_command;

    fn args(text: &str) -> Vec<String> {
        text.split(' ').map(String::from).collect()
    }

    #[test]
    fn every_password_flag_value_is_masked_and_nothing_else() {
        let masked = masked_command(&args(
            "sealer run app:1 -m 10.0.0.1 -p hunter2 --passwd=s3cret --password pw3 --pk-passwd pk4 -pglued --pk /k",
        ));
        assert_eq!(
            masked,
            "sealer run app:1 -m 10.0.0.1 -p *** --passwd=*** --password *** --pk-passwd *** -p*** --pk /k"
        );
        for secret in ["hunter2", "s3cret", "pw3", "pk4", "glued"] {
            assert!(!masked.contains(secret), "{secret} leaked: {masked}");
        }
    }
}
