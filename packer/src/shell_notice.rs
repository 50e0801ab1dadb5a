//! What `sh app.run` prints: a `.run` file is a program, and a shell that is handed it says why
//! it cannot run it and how to (chmod +x, or copy it off a noexec mount) instead of
//! `Syntax error: "(" unexpected`.
//!
//! The kernel checks only the ELF magic, the file type and the machine of a static executable,
//! so bytes 7..16 of the stub's ELF identification (OS ABI, ABI version and padding) are free
//! (byte 6, the ELF version, stays 1: binutils refuse any other). The packer writes `<<\SEALR`
//! and a newline there: `sh` reads the first line as a command that is not found (it says
//! `ELF: not found`, there is no room to silence it) whose here-document (quoted, so nothing in
//! it is expanded) is the rest of the ELF image, up to a line `SEALR`.
//! That line and a short POSIX script follow the stub in the padding before the header, and the
//! script ends with `exit`, so the shell never reads the payload. The delimiter is the first of
//! a few five-letter words that no line of the stub equals (dash drops NUL bytes, so lines are
//! compared without them). `bash` refuses any file that starts with the ELF magic (`cannot
//! execute binary file`) before reading it: nothing in the file can change that.

/// Bytes 6..16 of the ELF identification as the stub has them from the linker: EI_VERSION 1,
/// then OS ABI, ABI version and padding, all zero.
const PLAIN_IDENT_TAIL: [u8; 10] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Where the first shell line ends (it is ELF identification bytes 0..16).
const IDENT_END: usize = 16;

/// The candidates for the here-document delimiter (five bytes each), most readable first.
const DELIMITERS: &[&[u8; 5]] = &[
    b"SEALR", b"SEAL0", b"SEAL1", b"SEAL2", b"SEAL3", b"SEAL4", b"SEAL5", b"SEAL6", b"SEAL7",
    b"SEAL8", b"SEAL9",
];

/// How the stub's head is changed and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellNotice {
    /// The new bytes 6..16 of the stub.
    pub ident_tail: [u8; 10],
    /// Written right after the stub: the delimiter line and the script.
    pub script: Vec<u8>,
}

/// The notice for `stub` (the whole ELF file), or `None` when the stub is not a plain ELF64
/// (a test stub, or one already changed), which is then packed as it is.
pub fn for_stub(stub: &[u8]) -> Option<ShellNotice> {
    if stub.len() < 64
        || &stub[..4] != b"\x7fELF"
        || stub[4] != 2
        || stub[6..IDENT_END] != PLAIN_IDENT_TAIL
    {
        return None;
    }
    let delimiter = DELIMITERS
        .iter()
        .copied()
        .find(|d| !has_line(&stub[IDENT_END..], *d))?;
    let mut ident_tail = [0u8; 10];
    // EI_VERSION stays 1: binutils (strip, objdump) refuse any other.
    ident_tail[..4].copy_from_slice(b"\x01<<\\");
    ident_tail[4..9].copy_from_slice(delimiter);
    ident_tail[9] = b'\n';
    let mut script = vec![b'\n'];
    script.extend_from_slice(delimiter);
    script.push(b'\n');
    script.extend_from_slice(SCRIPT.as_bytes());
    Some(ShellNotice { ident_tail, script })
}

/// Whether a line of `bytes` (split at newlines, NUL bytes dropped) is exactly `delimiter`.
fn has_line(bytes: &[u8], delimiter: &[u8]) -> bool {
    bytes
        .split(|b| *b == b'\n')
        .any(|line| line.iter().filter(|b| **b != 0).eq(delimiter.iter()))
}

/// The script `sh` runs: what the file is, why this shell cannot run it, what to do.
const SCRIPT: &str = r#"# sh app.run: this file is a program (a static executable), not a shell script.
p=$0
case $p in */*) run=$p ;; *) run=./$p ;; esac
echo "$p is a sealer installer: a program, not a shell script; sh and bash cannot run it. Run it as $run" >&2
mnt=$(findmnt -n -o TARGET -T "$p" 2>/dev/null)
if findmnt -n -o OPTIONS -T "$p" 2>/dev/null | tr ',' '\n' | grep -qx noexec; then
    echo "  it lies on $mnt, mounted noexec (no program runs from there, whatever its mode): copy it to a directory on an exec mount and run it there (cp $p /root/ && chmod +x /root/${p##*/} && /root/${p##*/}), or remount: mount -o remount,exec $mnt" >&2
elif [ ! -x "$p" ]; then
    echo "  it is not executable yet: chmod +x $p && $run" >&2
fi
exit 126
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with(body: &[u8]) -> Vec<u8> {
        let mut stub = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
        stub.resize(64, 0);
        stub.extend_from_slice(body);
        stub
    }

    #[test]
    fn the_delimiter_is_a_word_no_line_of_the_stub_is() {
        let notice = for_stub(&elf_with(b"\nSEALR\n\0SEA\0L0\0\nSEAL1")).unwrap();
        assert_eq!(&notice.ident_tail, b"\x01<<\\SEAL2\n");
        assert!(notice.script.starts_with(b"\nSEAL2\n"));
        assert!(notice.script.ends_with(b"exit 126\n"));
    }

    #[test]
    fn a_stub_that_is_not_plain_elf_is_left_alone() {
        assert_eq!(for_stub(b"not really a stub"), None);
        let mut changed = elf_with(b"");
        changed[7] = 3;
        assert_eq!(for_stub(&changed), None);
    }
}
