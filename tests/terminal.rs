//! What an operator sees on a real terminal: `sealer` runs inside tmux (a pty of 160x50), and
//! the screen is read with `capture-pane` while it works and after it ends. A pack at
//! `--level 19` shows a bar with its rate; a push to Debian's docker-registry on 127.0.0.1
//! (through a relay of the test's own that holds it to 4 MiB/s) shows a bar with its rate; an
//! install onto two testbed hosts shows a bar with its rate for each host's agent upload and
//! then for its frames, marks the host whose link is cut `stalled` while its rate decays, and
//! ends with a table whose columns line up.
//!
//! Needs tmux and docker-registry (`scripts/ci-deps.sh`); the install part needs root and the
//! testbed tools, and is skipped elsewhere unless `CI` or `SEALER_TESTBED_REQUIRED` is set.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::noise;
use support::registry::TestRegistry;
use support::store::{Sealer, SEALER, STUB};
use support::testbed::Testbed;

/// A tmux server of this test's own (its own socket), with one session running one command.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new 160x50 session; the pane stays after the
    /// command ends, with `[exit N]` as its last line.
    fn run(name: &str, command: &str) -> Tmux {
        let socket = format!("sealer-test-{}-{name}", std::process::id());
        let tmux = Tmux {
            socket,
            session: name.to_string(),
        };
        let script = format!("{command}; echo \"[exit $?]\"; sleep 3600");
        let status = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-s", name, "-x", "160", "-y", "50"])
            .args(["bash", "-c", &script])
            .status()
            .expect("tmux is needed (scripts/ci-deps.sh installs it)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    /// The screen and its scrollback, as text.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .args(["-t", &self.session, "-S", "-500"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `seen` holds for the screen (checked every 200 ms); the last screen read.
    fn wait_for(&self, limit: Duration, seen: impl Fn(&str) -> bool) -> (bool, String) {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if seen(&screen) {
                return (true, screen);
            }
            if started.elapsed() > limit {
                return (false, screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the command to end; its exit status and the final screen.
    fn finished(&self, limit: Duration) -> (Option<i32>, String) {
        let (_, screen) = self.wait_for(limit, |s| s.contains("[exit "));
        let status = screen
            .split("[exit ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .and_then(|code| code.parse().ok());
        (status, screen)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// `env VAR=VALUE... sealer` for a command line in tmux, with this store and the real stub.
fn sealer_line(store: &Sealer) -> String {
    format!(
        "env SEALER_ROOT='{}' SEALER_STUB='{STUB}' '{SEALER}'",
        store.root().display()
    )
}

/// The rate on a bar line, in bytes per second, as indicatif prints it: `1.20 MiB/s`,
/// `512.00 KiB/s`, `0 B/s`.
fn rate(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.ends_with("B/s"))?;
    let unit = match words[at] {
        "B/s" => 1.0,
        "KiB/s" => 1024.0,
        "MiB/s" => 1024.0 * 1024.0,
        "GiB/s" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
    Some(value * unit)
}

fn has_rate(line: &str) -> bool {
    rate(line).is_some()
}

/// A bar line: `LABEL [=====>    ] 3.00 MiB/16.00 MiB 1.20 MiB/s ETA 10s`.
fn bar_lines<'a>(screen: &'a str, label: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.starts_with(label) && l.contains(" [") && l.contains("] "))
        .collect()
}

#[test]
fn a_pack_at_level_19_shows_a_bar_with_its_rate_on_a_terminal() {
    let store = Sealer::new();
    let noise = noise::bytes(24 << 20, 0x51ab_1e5e_ed00_0001);
    store.build_from(
        "noisy:v1",
        "FROM scratch\nCOPY noise.bin data/\n",
        &[("noise.bin", &noise)],
    );
    let output = store.path("noisy.run");
    let tmux = Tmux::run(
        "pack",
        &format!(
            "{} pack noisy:v1 -o '{}' --level 19",
            sealer_line(&store),
            output.display()
        ),
    );
    let (seen, screen) = tmux.wait_for(Duration::from_secs(120), |s| {
        bar_lines(s, "packing")
            .iter()
            .any(|l| has_rate(l) && l.contains("ETA"))
    });
    assert!(seen, "no packing bar with a rate on the screen:\n{screen}");
    let (status, screen) = tmux.finished(Duration::from_secs(300));
    assert_eq!(status, Some(0), "{screen}");
    assert!(screen.contains("packing: done in "), "{screen}");
    assert!(screen.contains("Packed noisy:v1 into"), "{screen}");
    // The bar is cleared when it ends: no half-drawn bar is left on the final screen.
    assert!(bar_lines(&screen, "packing").is_empty(), "{screen}");
}

/// A TCP relay on 127.0.0.1 to `upstream` on 127.0.0.1 that passes at most `rate` bytes a
/// second each way of each connection; its port. It lives as long as the test process.
fn slow_relay(upstream: u16, rate: u64) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    fn pump(mut from: TcpStream, mut to: TcpStream, rate: u64) {
        let started = Instant::now();
        let mut passed = 0u64;
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
            let due = Duration::from_secs_f64(passed as f64 / rate as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(client, server, rate));
            std::thread::spawn(move || pump(s2, c2, rate));
        }
    });
    port
}

#[test]
fn a_push_shows_a_bar_with_its_rate_on_a_terminal() {
    let registry = TestRegistry::start(None);
    let relay = slow_relay(registry.port, 4 << 20);
    let store = Sealer::new();
    let noise = noise::bytes(16 << 20, 0x51ab_1e5e_ed00_0003);
    let name = format!("127.0.0.1:{relay}/apps/noisy:v1");
    store.build_from(
        &name,
        "FROM scratch\nCOPY noise.bin data/\n",
        &[("noise.bin", &noise)],
    );
    let home = store.path("home");
    std::fs::create_dir_all(&home).unwrap();
    // About 4 s of pushing the layer.
    let tmux = Tmux::run(
        "push",
        &format!(
            "HOME='{}' {} push --insecure '{name}'",
            home.display(),
            sealer_line(&store)
        ),
    );
    let (seen, screen) = tmux.wait_for(Duration::from_secs(60), |s| {
        bar_lines(s, "pushing layer 1/1")
            .iter()
            .any(|l| rate(l).is_some_and(|r| r > 0.0) && l.contains("ETA"))
    });
    assert!(seen, "no pushing bar with a rate on the screen:\n{screen}");
    let (status, screen) = tmux.finished(Duration::from_secs(120));
    assert_eq!(status, Some(0), "{screen}");
    assert!(screen.contains(&format!("Pushed {name}")), "{screen}");
    assert!(bar_lines(&screen, "pushing").is_empty(), "{screen}");
}

#[test]
fn a_build_step_spins_with_its_elapsed_time_and_says_how_long_it_took() {
    let store = Sealer::new();
    let context = store.context(
        "slow",
        &[(
            "Kubefile",
            b"FROM scratch\nRUN sleep 4 && mkdir -p x && echo hi > x/y\nCMD true\n",
        )],
    );
    let tmux = Tmux::run(
        "build",
        &format!(
            "{} build --no-cache -t slow:v1 '{}'",
            sealer_line(&store),
            context.display()
        ),
    );
    // While RUN sleeps: a spinner line naming the step, with its elapsed time.
    let (seen, screen) = tmux.wait_for(Duration::from_secs(60), |s| {
        s.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() >= 4
                && words[1] == "STEP"
                && words[2] == "2/3"
                && words[3].ends_with('s')
                && words[3]
                    .trim_end_matches('s')
                    .parse::<u64>()
                    .is_ok_and(|n| n >= 1)
        })
    });
    assert!(
        seen,
        "no spinner with the elapsed time of STEP 2/3:\n{screen}"
    );
    let (status, screen) = tmux.finished(Duration::from_secs(120));
    assert_eq!(status, Some(0), "{screen}");
    let layer = screen
        .lines()
        .find(|l| l.starts_with(" ---> layer "))
        .unwrap_or_else(|| panic!("no layer line:\n{screen}"));
    let took: f64 = layer
        .rsplit_once(" in ")
        .and_then(|(_, t)| t.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no time on {layer:?}"));
    assert!((4.0..60.0).contains(&took), "{layer}");
    // The spinner is gone once the step is done.
    assert!(
        !screen
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("STEP")),
        "{screen}"
    );
}

#[test]
fn an_install_shows_a_bar_per_host_a_stalled_host_and_an_aligned_table() {
    let Some(bed) = Testbed::up_for_test(2) else {
        return;
    };
    let (master, node) = (&bed.hosts()[0], &bed.hosts()[1]);
    let store = Sealer::new();
    let noise = noise::bytes(12 << 20, 0x51ab_1e5e_ed00_0002);
    store.build_from(
        "noisy:v1",
        "FROM scratch\nCOPY noise.bin data/\n",
        &[("noise.bin", &noise)],
    );
    // About 12 s of sending per host: long enough to read the bars and cut a link.
    for host in [master, node] {
        bed.shape(host, "8mbit").unwrap();
    }
    let tmux = Tmux::run(
        "install",
        &format!(
            "{} run noisy:v1 -m {} -n {} --pk '{}' --known-hosts '{}' --data-root /var/lib/sealer-tty",
            sealer_line(&store),
            master.ip,
            node.ip,
            bed.key_path().display(),
            bed.known_hosts_path().display()
        ),
    );
    let node_label = format!("[{}] sending", node.ip);
    let master_label = format!("[{}] sending", master.ip);
    // Hosts walk their stages independently: each bar is looked for on every screen read, and
    // the node's link is cut while its own bar moves.
    let moving = |s: &str, label: &str| {
        bar_lines(s, label)
            .iter()
            .any(|l| rate(l).is_some_and(|r| r > 0.0))
    };
    let master_seen = std::cell::Cell::new(false);
    // Before the frames, each host's agent upload has a bar of its own.
    let agent_labels = [master, node].map(|h| format!("[{}] agent", h.ip));
    let agent_seen = std::cell::Cell::new(false);
    let (seen, screen) = tmux.wait_for(Duration::from_secs(120), |s| {
        if moving(s, &master_label) {
            master_seen.set(true);
        }
        if agent_labels.iter().any(|l| {
            bar_lines(s, l)
                .iter()
                .any(|b| rate(b).is_some_and(|r| r > 0.0) && b.contains("ETA"))
        }) {
            agent_seen.set(true);
        }
        moving(s, &node_label)
    });
    let cut = Instant::now();
    bed.link_down(node).unwrap();
    assert!(
        seen,
        "no moving bar for {node_label} on the screen:\n{screen}"
    );
    assert!(
        agent_seen.get(),
        "no bar with a rate for the agent's upload ({agent_labels:?}) was ever on the screen"
    );

    // The node's bar says it is stalled, and its rate has decayed.
    // The master keeps sending meanwhile: its bar may come and go while the node stalls.
    let (stalled, screen) = tmux.wait_for(Duration::from_secs(40), |s| {
        if moving(s, &master_label) {
            master_seen.set(true);
        }
        bar_lines(s, &node_label)
            .iter()
            .any(|l| l.contains(" stalled "))
    });
    bed.link_up(node).unwrap();
    // The master's bar, if it was not on the screen yet, shows while the node is stalled.
    let (master_moved, screen_now) = tmux.wait_for(Duration::from_secs(60), |s| {
        master_seen.get() || moving(s, &master_label)
    });
    assert!(
        master_moved,
        "no moving bar for {master_label} on the screen:\n{screen_now}"
    );
    assert!(
        stalled,
        "the cut host was not marked stalled {:?} after the cut:\n{screen}",
        cut.elapsed()
    );
    let line = bar_lines(&screen, &node_label)
        .into_iter()
        .find(|l| l.contains(" stalled "))
        .unwrap()
        .to_string();
    // 8 Mbit/s is about 1 MiB/s while it moves; 10 s of nothing leaves under a third of it
    // (indicatif weighs a sample by 0.1^(age/15 s)), and it keeps falling.
    let decayed = rate(&line).is_some_and(|r| r < 350.0 * 1024.0);
    assert!(decayed, "the stalled host's rate did not decay: {line}");

    let (status, screen) = tmux.finished(Duration::from_secs(240));
    for host in [master, node] {
        bed.unshape(host).unwrap();
    }
    assert_eq!(status, Some(0), "{screen}");
    // The table: the header's columns start where every row's values start.
    let header = screen
        .lines()
        .find(|l| l.starts_with("HOST "))
        .unwrap_or_else(|| panic!("no table:\n{screen}"));
    let column = |name: &str| header.find(name).unwrap();
    let (roles, status_col) = (column("ROLES"), column("STATUS"));
    for (host, role) in [(master, "master"), (node, "node")] {
        let row = screen
            .lines()
            .find(|l| l.starts_with(&host.ip.to_string()) && l.contains("installed"))
            .unwrap_or_else(|| panic!("no row for {}:\n{screen}", host.ip));
        assert_eq!(row.find(role), Some(roles), "{header}\n{row}");
        assert_eq!(row.find("installed"), Some(status_col), "{header}\n{row}");
    }
}
