//! Deterministic test data: the same seed gives the same bytes in every test file.

/// `len` incompressible bytes from a xorshift64 generator started at `seed` (made odd, so never 0).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes that compress to about a third: every third byte from the generator, the others
/// from a short repeating alphabet.
pub fn partly_compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                x as u8
            } else {
                b'a' + (i % 13) as u8
            }
        })
        .collect()
}
