//! What an image declares it needs of a host, as `sealer.image.*` labels: the OSes and the
//! oldest kernel it supports, the TCP ports it needs free, the commands its hooks call. This
//! module owns the grammar of those values: the build refuses a malformed one at its LABEL line
//! (so a typo never reaches a site), and preflight reads the ports with the same parser. It
//! does not decide whether a host passes; `deploy::preflight` does.

/// Image label: the operating systems the image supports, as os-release IDs with an optional
/// minimum `VERSION_ID` (`debian>=11, ubuntu>=22.04, rhel>=8`); a host matches by `ID` or
/// `ID_LIKE`. Without it, any OS passes.
pub const LABEL_OS: &str = "sealer.image.os";
/// Image label: the oldest kernel the image runs on (`5.4`).
pub const LABEL_KERNEL: &str = "sealer.image.kernel";
/// Image label: TCP ports that must be free on every host before the first install
/// (`2379,2380`).
pub const LABEL_PORTS: &str = "sealer.image.ports";
/// Image label: commands every host must have for the image's hooks and install commands
/// (`bash,systemctl,iptables`).
pub const LABEL_COMMANDS: &str = "sealer.image.commands";

/// Labels under `sealer.image.` that something reads: the four above, and sealer's own
/// (the container image list, the extension annotation, the digest).
const KNOWN: &[&str] = &[
    LABEL_OS,
    LABEL_KERNEL,
    LABEL_PORTS,
    LABEL_COMMANDS,
    "sealer.image.container.images",
    "sealer.image.extension",
    "sealer.image.digest",
];

/// The words of a list value: separated by commas and/or white space.
fn words(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
}

/// The TCP ports of a [`LABEL_PORTS`] value; `Err` names the first word that is not a port.
pub fn parse_ports(value: &str) -> Result<Vec<u16>, String> {
    words(value)
        .map(|word| {
            word.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{word:?} is not a TCP port (1-65535)"))
        })
        .collect()
}

/// Whether `v` starts with a number and is numbers separated by `.` (`5.4`, `22.04`, `11`).
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `id` is an os-release `ID` (lowercase letters, digits, `.`, `_`, `-`).
fn is_os_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Checks the value of label `name` when it is one of the `sealer.image.*` labels: `Ok` for any
/// other label, `Err` saying what is wrong and what a right value looks like.
pub fn check_label(name: &str, value: &str) -> Result<(), String> {
    let Some(_) = name.strip_prefix("sealer.image.") else {
        return Ok(());
    };
    let wrong = |why: String, example: &str| {
        Err(format!(
            "LABEL {name}={value:?}: {why}; write it like {name}=\"{example}\""
        ))
    };
    match name {
        LABEL_OS => {
            let mut any = false;
            for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                any = true;
                let (id, min) = match entry.split_once(">=") {
                    Some((id, min)) => (id.trim(), Some(min.trim())),
                    None => (entry, None),
                };
                if !is_os_id(id) {
                    return wrong(
                        format!("{id:?} is not an os-release ID (lowercase letters, digits, '.', '_', '-', as ID= in /etc/os-release)"),
                        "debian>=11, ubuntu>=22.04",
                    );
                }
                if let Some(min) = min.filter(|m| !is_version(m)) {
                    return wrong(
                        format!("{min:?} in {entry:?} is not a VERSION_ID (numbers separated by '.')"),
                        "debian>=11, ubuntu>=22.04",
                    );
                }
            }
            if !any {
                return wrong("no OS is named".into(), "debian>=11, ubuntu>=22.04");
            }
            Ok(())
        }
        LABEL_KERNEL if !is_version(value.trim()) => wrong(
            "not a kernel version (numbers separated by '.', compared with the leading numbers of `uname -r`)".into(),
            "5.4",
        ),
        LABEL_PORTS => match parse_ports(value) {
            Ok(ports) if ports.is_empty() => wrong("no port is named".into(), "2379,2380"),
            Ok(_) => Ok(()),
            Err(why) => wrong(why, "2379,2380"),
        },
        LABEL_COMMANDS => {
            let mut any = false;
            for word in words(value) {
                any = true;
                let ok = word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-/".contains(&b));
                if !ok {
                    return wrong(
                        format!("{word:?} is not a command name"),
                        "bash,systemctl,iptables",
                    );
                }
            }
            if !any {
                return wrong("no command is named".into(), "bash,systemctl,iptables");
            }
            Ok(())
        }
        _ if KNOWN.contains(&name) => Ok(()),
        _ => Err(format!(
            "LABEL {name}: no sealer.image label of that name is read, so it would do nothing; the ones that act are {}, {}, {} and {} (docs/preflight.md)",
            LABEL_OS, LABEL_KERNEL, LABEL_PORTS, LABEL_COMMANDS
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_values_pass_and_other_labels_are_not_read() {
        for (name, value) in [
            (LABEL_OS, "debian>=11, ubuntu>=22.04, rhel>=8"),
            (LABEL_OS, "debian"),
            (LABEL_KERNEL, "5.4"),
            (LABEL_PORTS, "2379,2380 6443"),
            (LABEL_COMMANDS, "bash, systemctl,/usr/sbin/iptables"),
            ("sealer.image.container.images", "anything"),
            ("app.kubernetes.io/version", "whatever"),
        ] {
            assert_eq!(check_label(name, value), Ok(()), "{name}={value}");
        }
    }

    #[test]
    fn malformed_values_and_unknown_names_say_what_is_wrong() {
        for (name, value, says) in [
            (LABEL_OS, "Debian>=11", "\"Debian\" is not an os-release ID"),
            (
                LABEL_OS,
                "debian>=eleven",
                "\"eleven\" in \"debian>=eleven\"",
            ),
            (LABEL_OS, " , ", "no OS is named"),
            (LABEL_KERNEL, "v5.4", "not a kernel version"),
            (LABEL_PORTS, "2379,etcd", "\"etcd\" is not a TCP port"),
            (LABEL_PORTS, "70000", "\"70000\" is not a TCP port"),
            (LABEL_PORTS, "", "no port is named"),
            (
                LABEL_COMMANDS,
                "bash;rm",
                "\"bash;rm\" is not a command name",
            ),
            (
                "sealer.image.port",
                "2379",
                "no sealer.image label of that name",
            ),
        ] {
            let err = check_label(name, value).unwrap_err();
            assert!(err.contains(says), "{name}={value}: {err}");
        }
        assert_eq!(parse_ports("2379, 2380"), Ok(vec![2379, 2380]));
    }
}
