//! The walk that copies a build: into its kept copy (`root/releases/.new-<id>`,
//! hard-linking each file that the newest kept release already holds
//! unchanged) and into the color's staging directory (a copy of its own of
//! every file, so the app never writes into a kept copy). It fingerprints
//! the source as it goes and lists what it wrote, to be made durable.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::{at, chown, special_kind, Copied, Options, StageError, PROGRESS_EVERY};
use crate::fingerprint::Fingerprint;

/// One directory of the walk and where it goes.
#[derive(Clone, Copy)]
pub(super) struct Dirs<'p> {
    /// What is copied: the build, or (for a rollback) a kept copy.
    pub src: &'p Path,
    /// The kept copy being made, if this walk makes one.
    pub kept: Option<&'p Path>,
    /// The same directory in the newest kept release, whose unchanged
    /// files the kept copy links instead of copying.
    pub prev: Option<&'p Path>,
    /// The color's staging directory.
    pub color: &'p Path,
}

impl Dirs<'_> {
    fn join(&self, name: &std::ffi::OsStr) -> (PathBuf, Option<PathBuf>, Option<PathBuf>, PathBuf) {
        (
            self.src.join(name),
            self.kept.map(|k| k.join(name)),
            self.prev.map(|p| p.join(name)),
            self.color.join(name),
        )
    }
}

/// One copy in progress: what it copies and what it has seen.
pub(super) struct Copy<'a> {
    pub opts: &'a Options,
    /// The top of what is copied, for relative paths in the fingerprint.
    pub top: &'a Path,
    pub copied: Copied,
    pub fingerprint: Fingerprint,
    /// When progress was last reported.
    pub reported: std::time::Instant,
    /// Files written (not linked), to be made durable.
    pub files: Vec<PathBuf>,
    /// Directories created, to be made durable.
    pub dirs: Vec<PathBuf>,
}

impl<'a> Copy<'a> {
    pub fn new(opts: &'a Options, top: &'a Path) -> Copy<'a> {
        Copy {
            opts,
            top,
            copied: Copied::default(),
            fingerprint: Fingerprint::new(),
            reported: std::time::Instant::now(),
            files: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// Copies directory `d.src` (a real directory, or the build's top, which
    /// may be reached through a symlink).
    pub fn tree(&mut self, d: Dirs<'_>) -> Result<(), StageError> {
        let meta = fs::metadata(d.src).map_err(|e| at(d.src, e))?;
        for dst in d.kept.iter().copied().chain([d.color]) {
            fs::create_dir(dst).map_err(|e| at(dst, e))?;
        }
        let mut entries: Vec<_> = fs::read_dir(d.src)
            .map_err(|e| at(d.src, e))?
            .collect::<io::Result<_>>()
            .map_err(|e| at(d.src, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if self.opts.cancel.load(Ordering::Relaxed) {
                return Err(StageError::Aborted);
            }
            self.entry(d, &entry.file_name())?;
        }
        // Modes and times last: a read-only directory is filled first, and
        // filling it changes its mtime.
        for dst in d.kept.iter().copied().chain([d.color]) {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| at(dst, e))?;
            set_times(dst, &meta)?;
            self.dirs.push(dst.to_path_buf());
        }
        chown(d.color, self.opts.owner)?;
        Ok(())
    }

    fn entry(&mut self, d: Dirs<'_>, name: &std::ffi::OsStr) -> Result<(), StageError> {
        let (from, kept, prev, to) = d.join(name);
        let meta = fs::symlink_metadata(&from).map_err(|e| at(&from, e))?;
        let ft = meta.file_type();
        let link = ft
            .is_symlink()
            .then(|| fs::read_link(&from))
            .transpose()
            .map_err(|e| at(&from, e))?;
        let rel = from
            .strip_prefix(self.top)
            .expect("the copy stays under the build's top");
        if !(self.opts.ignore.is_match(rel) || self.opts.marker.as_deref() == Some(rel)) {
            self.fingerprint.add(rel, &meta, link.as_deref());
        }
        if ft.is_dir() {
            let sub = Dirs {
                src: &from,
                kept: kept.as_deref(),
                prev: prev.as_deref(),
                color: &to,
            };
            return self.tree(sub); // tree() hands the directory over itself
        } else if let Some(target) = link {
            for dst in kept.iter().chain([&to]) {
                std::os::unix::fs::symlink(&target, dst).map_err(|e| at(dst, e))?;
                set_times(dst, &meta)?;
            }
        } else if ft.is_file() {
            self.file(&from, kept.as_deref(), prev.as_deref(), &to, &meta)?;
        } else {
            return Err(StageError::Refused(format!(
                "{} is a {}: a build may hold only files, directories and symlinks; remove it from the build",
                from.display(),
                special_kind(&meta)
            )));
        }
        chown(&to, self.opts.owner)?;
        Ok(())
    }

    /// Puts one file into the kept copy (a link to the newest kept
    /// release's copy if that one is unchanged) and into the color (a copy
    /// of its own, or with `stage = "hardlink"` a link to the kept copy).
    fn file(
        &mut self,
        from: &Path,
        kept: Option<&Path>,
        prev: Option<&Path>,
        to: &Path,
        meta: &fs::Metadata,
    ) -> io::Result<()> {
        let source = match kept {
            Some(k) => {
                let linked = prev.is_some_and(|p| {
                    same_file(p, meta) && same_content(p, from) && link(p, k).is_ok()
                });
                if !linked {
                    copy_file(from, k, meta)?;
                    self.files.push(k.to_path_buf());
                    self.copied.kept_bytes += meta.len();
                }
                k
            }
            None => from,
        };
        if !(self.opts.hardlink && link(source, to).is_ok()) {
            copy_file(source, to, meta)?;
            self.files.push(to.to_path_buf());
        }
        self.copied.bytes += meta.len();
        self.copied.files += 1;
        if let Some(report) = &self.opts.progress {
            if self.reported.elapsed() >= PROGRESS_EVERY {
                self.reported = std::time::Instant::now();
                report(self.copied.files, self.copied.bytes);
            }
        }
        Ok(())
    }
}

/// Whether the kept file at `prev` looks like the build's file with `meta`:
/// same size, mtime and mode (as rsync's `--link-dest` decides; a kept copy
/// has its source's mtime). Enough for an estimate; a link also needs
/// [`same_content`].
pub(super) fn same_file(prev: &Path, meta: &fs::Metadata) -> bool {
    fs::symlink_metadata(prev).is_ok_and(|p| {
        p.is_file()
            && p.len() == meta.len()
            && p.mtime() == meta.mtime()
            && p.mtime_nsec() == meta.mtime_nsec()
            && p.mode() == meta.mode()
    })
}

/// Whether the files at `a` and `b` hold the same bytes. Size, mtime and
/// mode can agree while the contents differ: two checkouts of a repository
/// give files of equal size the same mtime (found by the fleet test, whose
/// v1 and v2 were linked as one). Reading both costs no write.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = match a.read(&mut x) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return b.read(&mut y[..1]).is_ok_and(|m| m == 0);
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

fn link(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)
}

/// Copies a file's contents (the kernel's `copy_file_range`: a reflink on
/// filesystems that share extents), its mode and its times. (Starting its
/// writeback here with `sync_file_range` was measured: it doubled the cost
/// per file, and the parallel flush afterwards does not need it.)
fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut src = fs::File::open(from).map_err(|e| at(from, e))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| at(to, e))?;
    io::copy(&mut src, &mut dst).map_err(|e| at(to, e))?;
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| at(to, e))?;
    futimens(&dst, &TimeSpec::UTIME_OMIT, &mtime(meta)).map_err(|e| at(to, e.into()))
}

fn mtime(meta: &fs::Metadata) -> TimeSpec {
    TimeSpec::new(meta.mtime(), meta.mtime_nsec())
}

/// Gives `path` (not following a symlink) the mtime in `meta`.
fn set_times(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime(meta),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| at(path, e.into()))
}
