//! How a host is addressed: [`HostAddress`] (an IP address, the name it was given by, and the
//! SSH port written with it), the one form in which host lists, the Clusterfile, the SSH
//! transport, `known_hosts` lookups and reports name a host.
//!
//! Owns reading one written address (`10.0.0.2`, `10.0.0.2:2222`, `[fd00::2]:2222`, `fd00::2`,
//! `node1`, `node1:2222`) and resolving a host name, once, through the system resolver
//! (`/etc/hosts`, then DNS as `/etc/nsswitch.conf` says). Ranges and comma lists are
//! [`crate::clusterfile::parse_host_list`]'s; it calls [`parse_address`] for single items.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A host as written and resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddress {
    pub ip: IpAddr,
    /// The host name the address was resolved from, when a name was written.
    pub name: Option<String>,
    /// The SSH port written with the address (`:2222`); `None` takes the configured one.
    pub port: Option<u16>,
}

impl HostAddress {
    pub fn ip(ip: IpAddr) -> Self {
        HostAddress {
            ip,
            name: None,
            port: None,
        }
    }

    /// `10.0.0.2`, `10.0.0.2:2222` or `[fd00::2]:2222`: the address, with the port when it is
    /// not 22 (IPv6 in brackets then, so the port cannot be read as part of the address).
    pub fn endpoint(&self) -> String {
        endpoint(self.ip, self.port.unwrap_or(22))
    }
}

/// `name (endpoint)` for a host given by name, else the endpoint.
impl fmt::Display for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} ({})", self.endpoint()),
            None => f.write_str(&self.endpoint()),
        }
    }
}

/// `ip` on port 22, `ip:port` (IPv4) or `[ip]:port` (IPv6) on another.
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    match (ip, port) {
        (ip, 22) => ip.to_string(),
        (IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
        (ip, port) => format!("{ip}:{port}"),
    }
}

/// The host field OpenSSH writes in `known_hosts`: `ip` for port 22, `[ip]:port` otherwise
/// (for both families).
pub fn known_hosts_pattern(ip: IpAddr, port: u16) -> String {
    if port == 22 {
        ip.to_string()
    } else {
        format!("[{ip}]:{port}")
    }
}

/// Why a written address was refused; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// Splits `host:port`, `[v6]:port`, `[v6]` or `host` into the host text and the port.
/// An unbracketed IPv6 address (more than one `:`) has no port.
pub fn split_port(item: &str) -> Result<(&str, Option<u16>), AddressError> {
    let item = item.trim();
    let port = |text: &str| -> Result<u16, AddressError> {
        text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            AddressError(format!("`{item}`: `{text}` is not a port number (1-65535)"))
        })
    };
    if let Some(rest) = item.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(AddressError(format!(
                "`{item}`: the `[` is not closed; write IPv6 with a port as [fd00::2]:2222"
            )));
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(port(p)?))),
                None => Err(AddressError(format!(
                    "`{item}`: expected `:PORT` after `]`"
                ))),
            },
        };
    }
    match item.matches(':').count() {
        1 => {
            let (host, p) = item.split_once(':').unwrap_or((item, ""));
            Ok((host, Some(port(p)?)))
        }
        _ => Ok((item, None)),
    }
}

/// True for a DNS host name (letters, digits and `-` in dot-separated labels, the last label
/// not all digits, so a mistyped address such as `10.0.0` is not taken for a name).
pub fn is_host_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() || text.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = text.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()))
}

/// Resolves `name` through the system resolver; the first address it gives is the host's.
pub fn resolve_name(name: &str) -> Result<IpAddr, AddressError> {
    let found: Vec<SocketAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| {
            AddressError(format!(
                "`{name}` is not an IP address and does not resolve as a host name ({e}); give its address, or add it to /etc/hosts"
            ))
        })?
        .collect();
    found.first().map(SocketAddr::ip).ok_or_else(|| {
        AddressError(format!(
            "`{name}` resolves to no address; give its address, or add it to /etc/hosts"
        ))
    })
}

/// One written host: an address or a host name (resolved now), with an optional `:PORT`.
pub fn parse_address(item: &str) -> Result<HostAddress, AddressError> {
    let (host, port) = split_port(item)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        if item.trim().starts_with('[') && ip.is_ipv4() {
            return Err(AddressError(format!(
                "`{item}`: brackets are for IPv6 addresses; write {host}:PORT"
            )));
        }
        return Ok(HostAddress {
            ip,
            name: None,
            port,
        });
    }
    if item.trim().starts_with('[') {
        return Err(AddressError(format!(
            "`{item}`: `{host}` is not an IPv6 address"
        )));
    }
    if !is_host_name(host) {
        return Err(AddressError(format!(
            "`{}` is not an IP address or a host name",
            item.trim()
        )));
    }
    Ok(HostAddress {
        ip: resolve_name(host)?,
        name: Some(host.to_string()),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_ports_in_both_families() {
        let a = parse_address("10.0.0.2:2222").unwrap();
        assert_eq!((a.ip.to_string(), a.port), ("10.0.0.2".into(), Some(2222)));
        assert_eq!(a.to_string(), "10.0.0.2:2222");
        let a = parse_address("[fd00::2]:2222").unwrap();
        assert_eq!((a.ip.to_string(), a.port), ("fd00::2".into(), Some(2222)));
        assert_eq!(a.to_string(), "[fd00::2]:2222");
        let a = parse_address("fd00::2").unwrap();
        assert_eq!((a.port, a.to_string()), (None, "fd00::2".into()));
        let a = parse_address("[fd00::2]").unwrap();
        assert_eq!(a.port, None);
        assert_eq!(parse_address(" 10.0.0.2 ").unwrap().port, None);
        assert_eq!(endpoint("10.0.0.2".parse().unwrap(), 22), "10.0.0.2");
        assert_eq!(
            known_hosts_pattern("10.0.0.2".parse().unwrap(), 2222),
            "[10.0.0.2]:2222"
        );
    }

    #[test]
    fn names_resolve_once_and_show_beside_their_address() {
        let a = parse_address("localhost:2222").unwrap();
        assert!(a.ip.is_loopback(), "{a:?}");
        assert_eq!(a.name.as_deref(), Some("localhost"));
        assert_eq!(
            a.to_string(),
            format!("localhost ({})", endpoint(a.ip, 2222))
        );
    }

    #[test]
    fn bad_ports_brackets_and_garbage_are_refused_with_the_item_named() {
        for (item, words) in [
            ("10.0.0.2:0", "not a port"),
            ("10.0.0.2:70000", "not a port"),
            ("10.0.0.2:", "not a port"),
            ("[fd00::2", "not closed"),
            ("[fd00::2]2222", "expected `:PORT`"),
            ("[10.0.0.2]:22", "brackets are for IPv6"),
            ("[node1]:22", "not an IPv6 address"),
            ("10.0.0", "not an IP address or a host name"),
            ("x_y", "not an IP address or a host name"),
            ("-bad", "not an IP address or a host name"),
        ] {
            let err = parse_address(item).unwrap_err().0;
            assert!(
                err.contains(words) && err.contains(item.trim_end_matches(':')),
                "{item}: {err}"
            );
        }
    }
}
