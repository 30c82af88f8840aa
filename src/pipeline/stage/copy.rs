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

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::setid::copy_mode;
use super::{at, chown, parallel, Copied, Options, StageError, PROGRESS_EVERY};
use crate::pipeline::fingerprint::Fingerprint;
use crate::pipeline::walk::{self, Kind, Meta};

/// The top of a copy and where it goes.
#[derive(Clone, Copy)]
pub(super) struct Dirs<'p> {
    /// What is copied: the build, or (for a rollback) a kept copy.
    pub src: &'p Path,
    /// The kept copy being made, if this walk makes one.
    pub kept: Option<&'p Path>,
    /// The newest kept release, whose unchanged files the kept copy links
    /// instead of copying.
    pub prev: Option<&'p Path>,
    /// The color's staging directory.
    pub color: &'p Path,
}

/// One directory of the copy and where it goes: [`Dirs`], owned.
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
    name: OsString,
    /// As the walk listed it: the copy must read this inode, and find it
    /// unchanged afterwards.
    meta: Meta,
    /// Left out of the fingerprint (`watch.ignore`, the marker): if it
    /// changes or goes away while it is copied, it is left out of the copy
    /// instead of failing the release.
    ignored: bool,
}

/// One copy in progress: what it copies and what it has seen.
pub(super) struct Copy<'a> {
    pub opts: &'a Options,
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
    made: Vec<(PathBuf, Meta, bool)>,
}

impl<'a> Copy<'a> {
    pub fn new(opts: &'a Options) -> Copy<'a> {
        Copy {
            opts,
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
        let bgd = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        for (dst, meta, color) in self.made.iter().rev() {
            let owner = match (*color, self.opts.owner) {
                (true, Some(owner)) => {
                    chown(dst, Some(owner))?;
                    owner
                }
                _ => fs::symlink_metadata(dst).map_or(bgd, |m| (m.uid(), m.gid())),
            };
            let mode = copy_mode(meta, owner.0, owner.1);
            fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(|e| at(dst, e))?;
            set_times(dst, meta)?;
        }
        self.dirs = self.made.drain(..).map(|(d, _, _)| d).collect();
        Ok(())
    }

    /// The first pass: creates the directories and symlinks, lists the
    /// files, and fingerprints the tree, in name order (`walk.rs`: no
    /// recursion, at most [`walk::MAX_DEPTH`] levels).
    fn walk(&mut self, d: Dirs<'_>) -> Result<(), StageError> {
        let top = walk::stat(d.src).map_err(|e| at(d.src, e))?;
        self.make_dirs(d.kept, d.color, &top)?;
        self.places.push(Place {
            src: d.src.to_path_buf(),
            kept: d.kept.map(Path::to_path_buf),
            prev: d.prev.map(Path::to_path_buf),
            color: d.color.to_path_buf(),
        });
        // The place of each directory on the way down to the entry.
        let mut parents = vec![0];
        walk::walk(d.src, Some(walk::MAX_DEPTH), |e| {
            self.entry(e, &mut parents)
        })
        .map_err(|e: StageError| match e {
            StageError::Io(io) => walk_error(io),
            other => other,
        })
    }

    fn make_dirs(&mut self, kept: Option<&Path>, color: &Path, meta: &Meta) -> io::Result<()> {
        for dst in kept.into_iter().chain([color]) {
            fs::create_dir(dst).map_err(|e| at(dst, e))?;
            self.made.push((dst.to_path_buf(), *meta, dst == color));
        }
        Ok(())
    }

    /// One entry of the walk; returns whether to walk into it.
    fn entry(&mut self, e: &walk::Entry, parents: &mut Vec<usize>) -> Result<bool, StageError> {
        if self.opts.cancel.load(Ordering::Relaxed) {
            return Err(StageError::Aborted);
        }
        parents.truncate(e.depth);
        let place = parents[e.depth - 1];
        let ignored =
            self.opts.ignore.is_match(e.rel) || self.opts.marker.as_deref() == Some(e.rel);
        if !ignored {
            self.fingerprint.add(e.rel, e.meta, e.link);
        }
        let p = &self.places[place];
        let (kept, prev, to) = (
            p.kept.as_ref().map(|k| k.join(e.name)),
            p.prev.as_ref().map(|k| k.join(e.name)),
            p.color.join(e.name),
        );
        match (e.meta.kind, e.link) {
            (Kind::File, _) => {
                let name = e.name.to_owned();
                let meta = *e.meta;
                self.found.push(File { place, name, meta, ignored });
                Ok(false)
            }
            (Kind::Dir, _) => {
                self.make_dirs(kept.as_deref(), &to, e.meta)?;
                parents.push(self.places.len());
                self.places.push(Place { src: e.path.to_path_buf(), kept, prev, color: to });
                Ok(true)
            }
            (Kind::Symlink, Some(target)) => {
                for dst in kept.iter().chain([&to]) {
                    std::os::unix::fs::symlink(target, dst).map_err(|e| at(dst, e))?;
                    set_times(dst, e.meta)?;
                }
                chown(&to, self.opts.owner)?;
                Ok(false)
            }
            (kind, _) => Err(StageError::Refused(format!(
                "{} is a {}: a build may hold only files, directories and symlinks; remove it from the build",
                e.path.display(),
                match kind {
                    Kind::Special(what) => what,
                    _ => "special file",
                }
            ))),
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

/// A walk's error as staging reports it: a tree that changed under the
/// walk, one too deep, or an I/O error.
fn walk_error(e: io::Error) -> StageError {
    if let Some(path) = walk::changed(&e) {
        return StageError::Changed(path.to_path_buf());
    }
    if let Some(deep) = walk::too_deep(&e) {
        return StageError::Refused(deep.to_string());
    }
    StageError::Io(e)
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
        let steady = !self.opts.changing;
        let source = match &place.kept {
            Some(k) => {
                let (k, prev) = (
                    k.join(&f.name),
                    place.prev.as_ref().map(|p| p.join(&f.name)),
                );
                let linked = prev.is_some_and(|p| {
                    same_file(&p, meta) && same_content(&p, &from, meta) && link(&p, &k).is_ok()
                });
                if !linked {
                    match copy_file(&from, &k, Some((meta, steady)), meta, None) {
                        Err(e) if gone_or_changed(&e) => return self.left_out(f, &from, e),
                        r => r?,
                    }
                    self.kept_bytes.fetch_add(meta.len(), Ordering::Relaxed);
                    written.push(k.clone());
                }
                Some(k)
            }
            None => None,
        };
        let to = place.color.join(&f.name);
        let linked = self.opts.hardlink && link(source.as_deref().unwrap_or(&from), &to).is_ok();
        if !linked {
            // From the kept copy just made (bgd's own), or else the build.
            let copied = match &source {
                Some(k) => copy_file(k, &to, None, meta, self.opts.owner),
                None => copy_file(&from, &to, Some((meta, steady)), meta, self.opts.owner),
            };
            match copied {
                Err(e) if source.is_none() && gone_or_changed(&e) => {
                    return self.left_out(f, &from, e)
                }
                r => r?,
            }
            written.push(to.clone());
        }
        self.written_bytes.fetch_add(
            meta.blocks_bytes() * written.len() as u64,
            Ordering::Relaxed,
        );
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(written);
        let bytes = self.bytes.fetch_add(meta.len(), Ordering::Relaxed) + meta.len();
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

impl FilePass<'_> {
    /// A file that changed or went away while it was copied: left out of
    /// the copy if the fingerprint ignores it or the source may change
    /// (`Options::changing`), else the copy fails with
    /// [`StageError::Changed`].
    fn left_out(&self, f: &File, from: &Path, e: StageError) -> Result<(), StageError> {
        if f.ignored || self.opts.changing {
            tracing::debug!("left {} out of the copy: {e}", from.display());
            return Ok(());
        }
        Err(StageError::Changed(from.to_path_buf()))
    }
}

/// Sizes of a listed file.
trait Sizes {
    /// Bytes.
    fn len(&self) -> u64;
    /// Bytes allocated (a sparse file's data).
    fn blocks_bytes(&self) -> u64;
}

impl Sizes for Meta {
    fn len(&self) -> u64 {
        self.size
    }

    fn blocks_bytes(&self) -> u64 {
        (self.blocks * 512).min(self.size.next_multiple_of(4096))
    }
}

/// Whether a copy failed because its source changed or went away.
fn gone_or_changed(e: &StageError) -> bool {
    match e {
        StageError::Changed(_) => true,
        StageError::Io(e) => e.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Opens a file the walk listed as `expect`, for reading: never through a
/// symlink (`O_NOFOLLOW`), never blocking on a FIFO (`O_NONBLOCK`, which
/// regular files ignore), and only if it is still the inode the walk
/// listed (a directory above it swapped for a symlink leads elsewhere).
/// Anything else is [`StageError::Changed`]: refused, not followed (bgd
/// may run as root; open(2)).
fn open_listed(path: &Path, expect: Option<&Meta>) -> Result<fs::File, StageError> {
    let changed = || StageError::Changed(path.to_path_buf());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => changed(),
            _ => StageError::Io(at(path, e)),
        })?;
    let now = file
        .metadata()
        .map(|m| Meta::of(&m))
        .map_err(|e| at(path, e))?;
    if now.kind != Kind::File || expect.is_some_and(|m| !m.same_inode(&now)) {
        return Err(changed());
    }
    Ok(file)
}

/// Whether the kept file at `prev` looks like the build's file with `meta`:
/// same size, mtime and the mode a kept copy of it gets (as rsync's
/// `--link-dest` decides; a kept copy has its source's mtime). Enough for
/// an estimate; a link also needs [`same_content`].
pub(super) fn same_file(prev: &Path, meta: &Meta) -> bool {
    fs::symlink_metadata(prev).is_ok_and(|p| {
        p.is_file()
            && p.len() == meta.size
            && p.mtime() == meta.mtime
            && p.mtime_nsec() == meta.mtime_nsec
            && p.mode() & 0o7777 == copy_mode(meta, p.uid(), p.gid())
    })
}

/// Whether the files at `a` and `b` hold the same bytes. Size, mtime and
/// mode can agree while the contents differ: two checkouts of a repository
/// give files of equal size the same mtime (found by the fleet test, whose
/// v1 and v2 were linked as one). Reading both costs no write.
fn same_content(a: &Path, b: &Path, expect: &Meta) -> bool {
    use std::io::Read;
    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), open_listed(b, Some(expect))) else {
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

/// Copies a file's contents (holes stay holes, `sparse.rs`; data by the
/// kernel's `copy_file_range`, a reflink on filesystems that share
/// extents), hands it to `owner`, and gives it `meta`'s mode (less a
/// setuid or setgid bit of another owner, `setid.rs`) and mtime. When
/// `expect` is given (the source is the build), the file must be the inode
/// the walk listed and, if `steady`, must not change while it is read.
/// (Starting its
/// writeback here with `sync_file_range` was measured: it doubled the cost
/// per file, and the parallel flush afterwards does not need it.)
fn copy_file(
    from: &Path,
    to: &Path,
    expect: Option<(&Meta, bool)>,
    meta: &Meta,
    owner: Option<(u32, u32)>,
) -> Result<(), StageError> {
    let src = open_listed(from, expect.map(|(m, _)| m))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| at(to, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dst, Some(uid), Some(gid)).map_err(|e| at(to, e))?;
    }
    super::sparse::copy_contents(&src, &dst, meta.size).map_err(|e| at(to, e))?;
    if let Some((listed, true)) = expect {
        // Written to while it was copied (an append, a rewrite in place).
        let now = src
            .metadata()
            .map(|m| Meta::of(&m))
            .map_err(|e| at(from, e))?;
        let same =
            (now.size, now.mtime, now.mtime_nsec) == (listed.size, listed.mtime, listed.mtime_nsec);
        if !same {
            return Err(StageError::Changed(from.to_path_buf()));
        }
    }
    let mine = dst.metadata().map_err(|e| at(to, e))?;
    let mode = copy_mode(meta, mine.uid(), mine.gid());
    dst.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| at(to, e))?;
    let mtime = TimeSpec::new(meta.mtime, meta.mtime_nsec);
    futimens(&dst, &TimeSpec::UTIME_OMIT, &mtime).map_err(|e| at(to, e.into()))?;
    Ok(())
}

/// Gives `path` (not following a symlink) the mtime in `meta`.
fn set_times(path: &Path, meta: &Meta) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(meta.mtime, meta.mtime_nsec),
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
        assert!(open_listed(&file, None).is_ok());
        for swapped in [&link, &fifo] {
            let e = open_listed(swapped, None).unwrap_err();
            assert!(matches!(&e, StageError::Changed(p) if p == swapped), "{e}");
        }
        // Another file where the walk listed this one (a directory above
        // it swapped for a symlink): refused.
        let listed = walk::lstat(&file).unwrap();
        let other = dir.path().join("other");
        fs::write(&other, "y").unwrap();
        assert!(matches!(
            open_listed(&other, Some(&listed)),
            Err(StageError::Changed(_))
        ));
    }
}
