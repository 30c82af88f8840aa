//! Whether the filesystem of bgd's root can hold a build, asked before
//! anything is copied.

use std::io;
use std::path::Path;

use super::copy::same_file;
use super::StageError;
use crate::pipeline::walk::{self, Kind};

/// What staging a build will write, in bytes: each file's allocated
/// blocks (a sparse file's data, not its length: copies keep its holes),
/// rounded up to whole 4 KiB blocks; each directory one block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Into the kept copy: the files the newest kept release does not hold
    /// unchanged.
    pub kept: u64,
    /// Into the color's own copy (nothing with `stage = "hardlink"`).
    pub color: u64,
}

const BLOCK: u64 = 4096;

/// Refuses, with what to do, a build at `src` that the filesystem of
/// `root` cannot hold, before anything is copied: its kept copy (besides
/// what it can link to the newest kept release) and the color's copy,
/// against the space free for bgd. `Ok` says what it needs.
///
/// A build deeper than [`walk::MAX_DEPTH`] is [`StageError::Refused`] here
/// already; a build that does not fit is [`StageError::NoSpace`].
pub fn check_space(root: &Path, src: &Path, hardlink: bool) -> Result<Need, StageError> {
    let prev = super::newest_kept(root);
    let mut need = Need::default();
    estimate(src, prev.as_deref(), hardlink, &mut need).map_err(|e| match walk::too_deep(&e) {
        Some(deep) => StageError::Refused(deep.to_string()),
        None => StageError::NoSpace(format!("cannot size the build {}: {e}", src.display())),
    })?;
    let free = free_bytes(root).map_err(|e| {
        StageError::NoSpace(format!(
            "cannot ask how much space {} has: {e}",
            root.display()
        ))
    })?;
    let total = need.kept + need.color;
    if total > free {
        return Err(StageError::NoSpace(format!(
            "not enough space for this build: it needs {} on the filesystem of bgd's root {} ({} for its kept copy, {} for the color's copy) and {} are free; nothing was copied. Free space there, or lower `keep` (`bgctl releases` shows what kept releases take)",
            mb(total),
            root.display(),
            mb(need.kept),
            mb(need.color),
            mb(free)
        )));
    }
    Ok(need)
}

/// Bytes free for an unprivileged user on the filesystem that holds `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// `bytes` as megabytes with one decimal, for messages.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Adds what staging the tree at `dir` writes to `need` (iterative:
/// `walk.rs`).
fn estimate(dir: &Path, prev: Option<&Path>, hardlink: bool, need: &mut Need) -> io::Result<()> {
    need.kept += BLOCK;
    need.color += BLOCK;
    walk::walk::<io::Error>(dir, Some(walk::MAX_DEPTH), |e| {
        match e.meta.kind {
            Kind::Dir => {
                need.kept += BLOCK;
                need.color += BLOCK;
            }
            Kind::File => {
                let size = (e.meta.blocks * 512).div_ceil(BLOCK) * BLOCK;
                if !prev.is_some_and(|p| same_file(&p.join(e.rel), e.meta)) {
                    need.kept += size;
                }
                if !hardlink {
                    need.color += size;
                }
            }
            _ => {}
        }
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_build_larger_than_the_free_space_is_refused_with_figures() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("b");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), vec![0u8; 5000]).unwrap();
        let need = check_space(dir.path(), &src, false).unwrap();
        assert_eq!(
            need,
            Need {
                kept: 4096 + 8192,
                color: 4096 + 8192
            }
        );
        let hard = check_space(dir.path(), &src, true).unwrap();
        assert_eq!(hard.color, 4096);
    }

    /// A 1 GiB file with 20 KiB of data needs 20 KiB per copy, not 1 GiB
    /// (it was refused with "needs 2147.5 MB").
    #[test]
    fn a_sparse_file_needs_its_data_only() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("b");
        fs::create_dir(&src).unwrap();
        let f = fs::File::create(src.join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(&[1u8; 20 << 10], 0).unwrap();
        f.sync_all().unwrap();
        let need = check_space(dir.path(), &src, false).unwrap();
        assert!(need.kept + need.color < 1 << 20, "{need:?}");
    }
}
