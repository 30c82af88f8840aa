//! The walk that copies a build: into its kept copy (`root/releases/.new-<id>`,
//! hard-linking each file that the newest kept release already holds
//! unchanged) and into the color's staging directory (a copy of its own of
//! every file, so the app never writes into a kept copy). It fingerprints
//! the source as it goes and lists what it wrote, to be made durable.
//!
//! Three passes: one thread walks the source in name order (the
//! fingerprint needs an order), creating the directories and symlinks and
//! listing the files; the files are then copied or linked from several
//! threads (`parallel.rs`: each file mostly waits for the filesystem); last,
//! the directories get their modes and times, deepest first (filling a
//! directory changes its mtime, and a read-only one must be filled first).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::{at, chown, parallel, special_kind, Copied, Options, StageError, PROGRESS_EVERY};
use crate::pipeline::fingerprint::Fingerprint;

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

/// [`Dirs`], owned: the directory a listed file is in.
struct Place {
    src: PathBuf,
    kept: Option<PathBuf>,
    prev: Option<PathBuf>,
    color: PathBuf,
}

/// A regular file the walk found, to be copied by the file pass.
struct File {
    /// Index of its directory in [`Copy::places`].
    place: usize,
    name: std::ffi::OsString,
    meta: Stat,
}

/// What the copy keeps of a file's metadata (a listed file costs its name
/// and these 32 bytes until it is copied).
pub(super) struct Stat {
    /// Bytes.
    len: u64,
    mode: u32,
    mtime: i64,
    mtime_nsec: i64,
}

impl From<&fs::Metadata> for Stat {
    fn from(m: &fs::Metadata) -> Stat {
        Stat {
            len: m.len(),
            mode: m.mode(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// One copy in progress: what it copies and what it has seen.
pub(super) struct Copy<'a> {
    pub opts: &'a Options,
    /// The top of what is copied, for relative paths in the fingerprint.
    pub top: &'a Path,
    pub copied: Copied,
    pub fingerprint: Fingerprint,
    /// Files written (not linked), to be made durable.
    pub files: Vec<PathBuf>,
    /// Bytes those files hold.
    pub written_bytes: u64,
    /// Directories created, to be made durable.
    pub dirs: Vec<PathBuf>,
    places: Vec<Place>,
    found: Vec<File>,
    /// Directories created, with their source's metadata and whether they
    /// are the color's (handed to the app's owner), in creation order.
    made: Vec<(PathBuf, fs::Metadata, bool)>,
}

impl<'a> Copy<'a> {
    pub fn new(opts: &'a Options, top: &'a Path) -> Copy<'a> {
        Copy {
            opts,
            top,
            copied: Copied::default(),
            fingerprint: Fingerprint::new(),
            files: Vec::new(),
            written_bytes: 0,
            dirs: Vec::new(),
            places: Vec::new(),
            found: Vec::new(),
            made: Vec::new(),
        }
    }

    /// Copies directory `d.src` (a real directory, or the build's top, which
    /// may be reached through a symlink) and everything under it.
    pub fn tree(&mut self, d: Dirs<'_>) -> Result<(), StageError> {
        self.walk(d)?;
        self.copy_files()?;
        for (dst, meta, color) in self.made.iter().rev() {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| at(dst, e))?;
            set_times(dst, meta)?;
            if *color {
                chown(dst, self.opts.owner)?;
            }
        }
        self.dirs = self.made.drain(..).map(|(d, _, _)| d).collect();
        Ok(())
    }

    /// The first pass: creates `d`'s directories and symlinks, lists its
    /// files, and fingerprints it, in name order.
    fn walk(&mut self, d: Dirs<'_>) -> Result<(), StageError> {
        let meta = fs::metadata(d.src).map_err(|e| at(d.src, e))?;
        for dst in d.kept.iter().copied().chain([d.color]) {
            fs::create_dir(dst).map_err(|e| at(dst, e))?;
            self.made
                .push((dst.to_path_buf(), meta.clone(), dst == d.color));
        }
        let place = self.places.len();
        self.places.push(Place {
            src: d.src.to_path_buf(),
            kept: d.kept.map(Path::to_path_buf),
            prev: d.prev.map(Path::to_path_buf),
            color: d.color.to_path_buf(),
        });
        let mut entries: Vec<_> = fs::read_dir(d.src)
            .map_err(|e| at(d.src, e))?
            .collect::<io::Result<_>>()
            .map_err(|e| at(d.src, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if self.opts.cancel.load(Ordering::Relaxed) {
                return Err(StageError::Aborted);
            }
            self.entry(d, place, entry.file_name())?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        d: Dirs<'_>,
        place: usize,
        name: std::ffi::OsString,
    ) -> Result<(), StageError> {
        let from = d.src.join(&name);
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
        if ft.is_file() {
            let meta = Stat::from(&meta);
            self.found.push(File { place, name, meta });
            return Ok(());
        }
        let (kept, prev, to) = (
            d.kept.map(|k| k.join(&name)),
            d.prev.map(|p| p.join(&name)),
            d.color.join(&name),
        );
        if ft.is_dir() {
            let sub = Dirs {
                src: &from,
                kept: kept.as_deref(),
                prev: prev.as_deref(),
                color: &to,
            };
            self.walk(sub)
        } else if let Some(target) = link {
            for dst in kept.iter().chain([&to]) {
                std::os::unix::fs::symlink(&target, dst).map_err(|e| at(dst, e))?;
                set_times(dst, &meta)?;
            }
            Ok(chown(&to, self.opts.owner)?)
        } else {
            Err(StageError::Refused(format!(
                "{} is a {}: a build may hold only files, directories and symlinks; remove it from the build",
                from.display(),
                special_kind(&meta)
            )))
        }
    }

    /// The second pass: every file the walk listed, from several threads.
    fn copy_files(&mut self) -> Result<(), StageError> {
        let found = std::mem::take(&mut self.found);
        let pass = FilePass {
            opts: self.opts,
            places: &self.places,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            kept_bytes: AtomicU64::new(0),
            written: Mutex::new(Vec::new()),
            written_bytes: AtomicU64::new(0),
            reported: Mutex::new(std::time::Instant::now()),
        };
        // A panicking thread is an error like any other: the caller then
        // removes both half-made trees.
        let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parallel::for_each(&found, |f| pass.file(f))
        }));
        copied.unwrap_or_else(|_| {
            Err(StageError::Io(io::Error::other(
                "a copying thread of bgd panicked (a bug: see bgd's log)",
            )))
        })?;
        self.copied.files += pass.files.into_inner();
        self.copied.bytes += pass.bytes.into_inner();
        self.copied.kept_bytes += pass.kept_bytes.into_inner();
        self.written_bytes += pass.written_bytes.into_inner();
        self.files
            .extend(pass.written.into_inner().unwrap_or_else(|p| p.into_inner()));
        Ok(())
    }
}

/// What the file pass's threads share.
struct FilePass<'a> {
    opts: &'a Options,
    places: &'a [Place],
    files: AtomicU64,
    bytes: AtomicU64,
    kept_bytes: AtomicU64,
    /// Files written (not linked), to be made durable.
    written: Mutex<Vec<PathBuf>>,
    /// Bytes those files hold.
    written_bytes: AtomicU64,
    /// When progress was last reported.
    reported: Mutex<std::time::Instant>,
}

impl FilePass<'_> {
    /// Puts one file into the kept copy (a link to the newest kept
    /// release's copy if that one is unchanged) and into the color (a copy
    /// of its own, or with `stage = "hardlink"` a link to the kept copy).
    fn file(&self, f: &File) -> Result<(), StageError> {
        if self.opts.cancel.load(Ordering::Relaxed) {
            return Err(StageError::Aborted);
        }
        let place = &self.places[f.place];
        let (from, meta) = (place.src.join(&f.name), &f.meta);
        let mut written = Vec::with_capacity(2);
        let source = match &place.kept {
            Some(k) => {
                let (k, prev) = (
                    k.join(&f.name),
                    place.prev.as_ref().map(|p| p.join(&f.name)),
                );
                let linked = prev.is_some_and(|p| {
                    same_file(&p, meta) && same_content(&p, &from) && link(&p, &k).is_ok()
                });
                if !linked {
                    copy_file(&from, &k, meta)?;
                    self.kept_bytes.fetch_add(meta.len, Ordering::Relaxed);
                    written.push(k.clone());
                }
                k
            }
            None => from,
        };
        let to = place.color.join(&f.name);
        if !(self.opts.hardlink && link(&source, &to).is_ok()) {
            copy_file(&source, &to, meta)?;
            written.push(to.clone());
        }
        chown(&to, self.opts.owner)?;
        self.written_bytes
            .fetch_add(meta.len * written.len() as u64, Ordering::Relaxed);
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(written);
        let bytes = self.bytes.fetch_add(meta.len, Ordering::Relaxed) + meta.len;
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let (Some(report), Ok(mut last)) = (&self.opts.progress, self.reported.try_lock()) {
            if last.elapsed() >= PROGRESS_EVERY {
                *last = std::time::Instant::now();
                report(files, bytes);
            }
        }
        Ok(())
    }
}

/// Opens a file the walk listed as a regular file, for reading: never
/// through a symlink (`O_NOFOLLOW`), and never blocking on a FIFO
/// (`O_NONBLOCK`, which regular files ignore), so that a file swapped for
/// either between the listing and the copy is refused, not followed (bgd
/// may run as root; open(2)).
fn open_listed(path: &Path) -> io::Result<fs::File> {
    let changed = || {
        io::Error::other(format!(
            "{}: changed while it was copied (it is no longer a regular file); release again once the build is complete",
            path.display()
        ))
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => changed(),
            _ => at(path, e),
        })?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(changed()),
        Err(e) => Err(at(path, e)),
    }
}

/// Whether the kept file at `prev` looks like the build's file with `meta`:
/// same size, mtime and mode (as rsync's `--link-dest` decides; a kept copy
/// has its source's mtime). Enough for an estimate; a link also needs
/// [`same_content`].
pub(super) fn same_file(prev: &Path, meta: &Stat) -> bool {
    fs::symlink_metadata(prev).is_ok_and(|p| {
        p.is_file()
            && p.len() == meta.len
            && p.mtime() == meta.mtime
            && p.mtime_nsec() == meta.mtime_nsec
            && p.mode() == meta.mode
    })
}

/// Whether the files at `a` and `b` hold the same bytes. Size, mtime and
/// mode can agree while the contents differ: two checkouts of a repository
/// give files of equal size the same mtime (found by the fleet test, whose
/// v1 and v2 were linked as one). Reading both costs no write.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), open_listed(b)) else {
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
fn copy_file(from: &Path, to: &Path, meta: &Stat) -> io::Result<()> {
    let mut src = open_listed(from)?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| at(to, e))?;
    io::copy(&mut src, &mut dst).map_err(|e| at(to, e))?;
    dst.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
        .map_err(|e| at(to, e))?;
    let mtime = TimeSpec::new(meta.mtime, meta.mtime_nsec);
    futimens(&dst, &TimeSpec::UTIME_OMIT, &mtime).map_err(|e| at(to, e.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A listed file swapped for a symlink or a FIFO before the copy opens
    /// it is refused by name, not followed and not waited on.
    #[test]
    fn a_file_swapped_after_the_listing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (file, link, fifo) = (
            dir.path().join("file"),
            dir.path().join("link"),
            dir.path().join("fifo"),
        );
        fs::write(&file, "x").unwrap();
        std::os::unix::fs::symlink(&file, &link).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_listed(&file).is_ok());
        for swapped in [&link, &fifo] {
            let e = open_listed(swapped).unwrap_err().to_string();
            assert!(e.contains("changed while it was copied"), "{e}");
            assert!(e.contains(&swapped.display().to_string()), "{e}");
        }
    }
}
