//! Short forms for people: a byte count (`12.3 MiB`) and a digest (`sha256:0123456789ab`). Every
//! size and digest the two binaries print goes through here.

/// Human-readable byte count: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1 layer`, `2 layers`: a count and its noun, plural unless it is one.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A digest cut to its algorithm and 12 hex digits (`sha256:0123456789ab`), as messages show it.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => {
            format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
        }
        None => digest.chars().take(12).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_900_000), "12.3 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn digests_keep_their_algorithm_and_twelve_digits() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            short_digest(&format!("sha256:{hex}")),
            "sha256:0123456789ab"
        );
        assert_eq!(
            short_digest(&format!("sha512:{hex}")),
            "sha512:0123456789ab"
        );
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        assert_eq!(short_digest(&hex), "0123456789ab");
    }
}
