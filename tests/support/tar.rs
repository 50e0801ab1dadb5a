//! Tar archives built in memory, as layers and build contexts hold them.

/// The modification time of every entry: fixed, so the same entries give the same bytes.
pub const MTIME: u64 = 1_650_000_000;

/// A GNU tar of regular files `(name, content, mode)` followed by symlinks `(name, target)`.
pub fn tar_of(files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(MTIME);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(MTIME);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// A GNU tar of regular files `(name, content)`, each with mode 0644.
pub fn files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8], u32)> = files.iter().map(|(n, d)| (*n, *d, 0o644)).collect();
    tar_of(&entries, &[])
}
