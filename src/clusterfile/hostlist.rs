//! The one host-list parser: `-m/--masters`, `-n/--nodes`, `ipList` items, `ips` items and plugin
//! `on:` selectors all go through [`parse_host_list`]. It turns comma lists and inclusive ranges
//! (`192.168.0.2-192.168.0.9`) into [`HostAddress`]es; single items (`10.0.0.2:2222`,
//! `[fd00::2]:2222`, host names) are read by [`crate::address::parse_address`]. It knows
//! nothing about roles or SSH.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::address::{parse_address, split_port, HostAddress};

/// The most addresses one range may expand to; a typo such as `10.0.0.1-10.9.0.1` should be an
/// error, not a million hosts.
pub const MAX_RANGE_LEN: u128 = 4096;

/// The most hosts one cluster may have, counted after ranges are expanded: many small ranges
/// add up too (300 ranges of 4096 are 1.2 million hosts).
pub const MAX_HOSTS: usize = 4096;

/// Why a host list could not be read; the message names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostListError(pub String);

/// Parses `a,b,c` where each item is an address (with an optional `:PORT`), a host name
/// (resolved now) or an inclusive range `first-last` of the same family. Whitespace around
/// items is ignored, empty items (a trailing comma) are skipped. The order is kept; duplicates
/// are left for the caller, which knows which field to blame.
pub fn parse_host_list(list: &str) -> Result<Vec<HostAddress>, HostListError> {
    let mut ips = Vec::new();
    for item in list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        ips.extend(parse_host_item(item)?);
        check_host_count(ips.len())?;
    }
    Ok(ips)
}

/// Refuses more than [`MAX_HOSTS`] hosts in total.
pub fn check_host_count(count: usize) -> Result<(), HostListError> {
    if count > MAX_HOSTS {
        return Err(HostListError(format!(
            "the hosts add up to {count} addresses or more, more than the {MAX_HOSTS} a cluster may have; check the ranges for typos"
        )));
    }
    Ok(())
}

/// Parses one item: an address or name with an optional `:PORT`, or a range `first-last`
/// (`10.0.0.2-10.0.0.4:2222` gives every address of the range that port).
pub fn parse_host_item(item: &str) -> Result<Vec<HostAddress>, HostListError> {
    let item = item.trim();
    let range = split_port(item)
        .ok()
        .and_then(|(host, port)| host.split_once('-').map(|(a, b)| (a, b, port)))
        .filter(|(a, b, _)| {
            a.trim().parse::<IpAddr>().is_ok() || b.trim().parse::<IpAddr>().is_ok()
        });
    let Some((first, last, port)) = range else {
        return parse_address(item)
            .map(|address| vec![address])
            .map_err(|e| HostListError(e.0));
    };
    let parse = |s: &str| {
        s.trim().parse::<IpAddr>().map_err(|_| {
            HostListError(format!(
                "`{item}`: `{}` is not an IP address (ranges look like 192.168.0.2-192.168.0.9)",
                s.trim()
            ))
        })
    };
    let (first, last) = (parse(first)?, parse(last)?);
    let (start, end) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => {
            return Err(HostListError(format!(
                "`{item}`: a range must not mix IPv4 and IPv6"
            )))
        }
    };
    if start > end {
        return Err(HostListError(format!(
            "`{item}`: the range ends before it starts"
        )));
    }
    if end - start >= MAX_RANGE_LEN {
        return Err(HostListError(format!(
            "`{item}`: the range holds {} addresses, more than the {MAX_RANGE_LEN} allowed; check for a typo",
            end - start + 1
        )));
    }
    Ok((start..=end)
        .map(|n| match first {
            // Both ends are IPv4 here, so `n` fits in 32 bits.
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        })
        .map(|ip| HostAddress {
            ip,
            name: None,
            port,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<HostAddress> {
        list.iter()
            .map(|s| HostAddress::ip(s.parse().unwrap()))
            .collect()
    }

    #[test]
    fn ports_names_and_ranges_with_a_port_mix_in_one_list() {
        let got =
            parse_host_list("10.0.0.2:2222,[fd00::2]:22,10.0.1.1-10.0.1.2:2200,localhost").unwrap();
        let shown: Vec<String> = got.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown[..4],
            ["10.0.0.2:2222", "fd00::2", "10.0.1.1:2200", "10.0.1.2:2200"]
        );
        assert_eq!(got[4].name.as_deref(), Some("localhost"));
        assert!(got[4].ip.is_loopback());
    }

    #[test]
    fn comma_list_and_range_expand_in_order() {
        let got = parse_host_list("10.0.0.9, 192.168.0.2-192.168.0.4,").unwrap();
        assert_eq!(
            got,
            ips(&["10.0.0.9", "192.168.0.2", "192.168.0.3", "192.168.0.4"])
        );
    }

    #[test]
    fn range_crosses_an_octet_boundary() {
        let got = parse_host_list("10.0.0.254-10.0.1.1").unwrap();
        assert_eq!(
            got,
            ips(&["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"])
        );
    }

    #[test]
    fn ipv6_range_expands() {
        let got = parse_host_list("fd00::1-fd00::3").unwrap();
        assert_eq!(got, ips(&["fd00::1", "fd00::2", "fd00::3"]));
    }

    #[test]
    fn single_address_range_is_one_host() {
        assert_eq!(
            parse_host_list("1.2.3.4-1.2.3.4").unwrap(),
            ips(&["1.2.3.4"])
        );
    }

    #[test]
    fn backwards_mixed_huge_and_garbage_ranges_are_refused_with_the_item_named() {
        let err = parse_host_list("10.0.0.9-10.0.0.1").unwrap_err();
        assert!(err.0.contains("10.0.0.9-10.0.0.1") && err.0.contains("ends before"));
        let err = parse_host_list("10.0.0.1-fd00::1").unwrap_err();
        assert!(err.0.contains("mix IPv4 and IPv6"), "{err}");
        let err = parse_host_list("10.0.0.1-10.9.0.1").unwrap_err();
        assert!(err.0.contains("more than"), "{err}");
        let err = parse_host_list("x_x").unwrap_err();
        assert!(err.0.contains("`x_x` is not an IP address"), "{err}");
        let err = parse_host_list("10.0.0.1-10.0.0").unwrap_err();
        assert!(err.0.contains("`10.0.0` is not an IP address"), "{err}");
    }

    #[test]
    fn many_small_ranges_are_refused_past_the_host_limit() {
        let list: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    "10.{}.{}.0-10.{}.{}.255",
                    i / 16,
                    i % 16 * 16,
                    i / 16,
                    i % 16 * 16 + 15
                )
            })
            .collect();
        let err = parse_host_list(&list.join(",")).unwrap_err();
        assert!(err.0.contains(&MAX_HOSTS.to_string()), "{err}");
        let exactly: Vec<String> = (0..MAX_HOSTS / 256)
            .map(|i| format!("10.0.{i}.0-10.0.{i}.255"))
            .collect();
        assert_eq!(
            parse_host_list(&exactly.join(",")).unwrap().len(),
            MAX_HOSTS
        );
    }

    #[test]
    fn a_clusterfile_of_many_small_ranges_is_refused_past_the_host_limit() {
        let mut text = String::from(
            "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata: {name: big}\nspec:\n  hosts:\n",
        );
        for i in 0..300 {
            let (a, b) = (i / 16, i % 16 * 16);
            text.push_str(&format!(
                "    - {{ips: [10.{a}.{b}.0-10.{a}.{}.255], roles: [master]}}\n",
                b + 15
            ));
        }
        let err = crate::clusterfile::Clusterfile::parse(&text)
            .and_then(|cf| cf.into_cluster())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("more than the {MAX_HOSTS}")), "{err}");
        // Masters and nodes count together.
        let flags = crate::clusterfile::ClusterFlags {
            masters: Some("10.0.0.0-10.0.15.255".into()),
            nodes: Some("10.1.0.0-10.1.0.1".into()),
            ..Default::default()
        };
        let err = crate::clusterfile::from_flags(&flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("more than the {MAX_HOSTS}")), "{err}");
    }
}
