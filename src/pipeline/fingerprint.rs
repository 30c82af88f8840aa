//! A cheap summary of a build tree, to tell whether two trees are the same
//! build without comparing their contents: the watcher fingerprints the
//! settled tree, staging fingerprints what it copies, and `state.json` keeps
//! the fingerprint of each color's build.

use std::hash::Hasher;
use std::path::Path;

use globset::GlobSet;

use crate::pipeline::walk::{self, Meta};

/// A cheap summary of a tree: every entry's relative path, type, size,
/// mtime, mode and symlink target, depth first in name order. Two trees
/// with the same fingerprint are taken as the same build.
pub struct Fingerprint {
    hasher: Fnv64,
}

/// FNV-1a, 64 bits: fixed across builds of bgd, unlike std's hasher, so a
/// fingerprint in `state.json` still matches after bgd is upgraded.
struct Fnv64(u64);

impl Hasher for Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fingerprint {
    /// The fingerprint of an empty tree; [`add`](Self::add) each entry.
    pub fn new() -> Fingerprint {
        Fingerprint {
            hasher: Fnv64(0xcbf2_9ce4_8422_2325),
        }
    }

    /// Adds one entry; `rel` is its path inside the tree.
    pub fn add(&mut self, rel: &Path, meta: &Meta, link: Option<&Path>) {
        let h = &mut self.hasher;
        h.write(rel.as_os_str().as_encoded_bytes());
        h.write_u8(0);
        h.write_u32(meta.mode);
        h.write_u64(if meta.is_dir() { 0 } else { meta.size });
        h.write_i64(meta.mtime);
        h.write_i64(meta.mtime_nsec);
        if let Some(l) = link {
            h.write(l.as_os_str().as_encoded_bytes());
        }
        h.write_u8(0xff);
    }

    /// The fingerprint of the entries added so far, as 16 hex digits.
    pub fn finish(&self) -> String {
        format!("{:016x}", self.hasher.finish())
    }

    /// The fingerprint of the tree at `root`, leaving out ignored paths and
    /// the marker; `None` if `root` is not a readable directory, or changed
    /// while it was read. The walk is iterative (`walk.rs`): no depth
    /// makes it overflow a stack.
    pub fn of_tree(root: &Path, ignore: &GlobSet, marker: Option<&Path>) -> Option<String> {
        if !root.is_dir() {
            return None;
        }
        let mut f = Fingerprint::new();
        let skip = |rel: &Path| ignore.is_match(rel) || marker == Some(rel);
        walk::walk::<std::io::Error>(root, None, |e| {
            if !skip(e.rel) {
                f.add(e.rel, e.meta, e.link);
            }
            Ok(true)
        })
        .ok()?;
        Some(f.finish())
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed_across_builds_of_bgd() {
        // FNV-1a's offset basis, and its published value for "a": a
        // fingerprint in state.json must still match after an upgrade.
        assert_eq!(Fingerprint::new().finish(), "cbf29ce484222325");
        let mut f = Fingerprint::new();
        f.hasher.write(b"a");
        assert_eq!(f.finish(), "af63dc4c8601ec8c");
    }

    #[test]
    fn a_mode_change_alone_counts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        let none = GlobSet::empty();
        let first = Fingerprint::of_tree(root, &none, None).unwrap();
        // chmod changes the ctime, not the mtime: only the mode differs.
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_ne!(Fingerprint::of_tree(root, &none, None).unwrap(), first);
    }

    #[test]
    fn fingerprint_sees_content_changes_but_not_ignored_files_or_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), "1").unwrap();
        let ignore = globset::GlobSetBuilder::new()
            .add(globset::Glob::new("*.tmp").unwrap())
            .build()
            .unwrap();
        let marker = Path::new(".release");
        let fp = || Fingerprint::of_tree(root, &ignore, Some(marker)).unwrap();
        let first = fp();
        assert_eq!(fp(), first);
        std::fs::write(root.join("x.tmp"), "junk").unwrap();
        std::fs::write(root.join(".release"), "").unwrap();
        assert_eq!(fp(), first, "ignored files and the marker do not count");
        std::fs::write(root.join("sub/a"), "22").unwrap();
        assert_ne!(fp(), first);
        assert_eq!(
            Fingerprint::of_tree(&root.join("missing"), &ignore, None),
            None
        );
    }
}
