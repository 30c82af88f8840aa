//! Copying a build into a color's directory without ever exposing a
//! half-written tree.
//!
//! The build is copied into `root/.staging-<id>` (same filesystem as the
//! color directories), flushed with one `syncfs`, and then swapped with the
//! dormant color's directory by `renameat2(RENAME_EXCHANGE)`: one atomic
//! step, after which the old contents sit in the staging path and are
//! removed. The live color's directory is never touched. Symlinks are copied
//! as symlinks and never followed; FIFOs, sockets and devices are refused.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use globset::GlobSet;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::color::Color;
use crate::fingerprint::Fingerprint;
use crate::layout::{self, color_dir, shared_dir, staging_dir, trash_dir};

/// Checks that `dir` is a readable directory; returns its absolute path.
pub fn validate(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_absolute() {
        return Err(format!("build path {} is not absolute", dir.display()));
    }
    let meta = fs::metadata(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("build directory {} does not exist", dir.display()),
        _ => format!("cannot read build directory {}: {e}", dir.display()),
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "build path {} is not a directory: pass the directory that holds the build",
            dir.display()
        ));
    }
    fs::read_dir(dir).map_err(|e| format!("cannot list build directory {}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// How to stage.
#[derive(Clone, Default)]
pub struct Options {
    /// The app's uid and gid: every copied entry is handed to them, so an app
    /// that does not run as bgd's user can read its build.
    pub owner: Option<(u32, u32)>,
    /// Left out of the fingerprint (`watch.ignore`); still copied.
    pub ignore: GlobSet,
    /// Left out of the fingerprint (`watch.marker`); still copied.
    pub marker: Option<PathBuf>,
    /// The fingerprint the tree had when it was chosen: if it differs while
    /// or after it is copied, the copy is discarded.
    pub expect: Option<String>,
    /// Set to abort: staging stops before it swaps anything into place.
    pub cancel: Arc<AtomicBool>,
    /// `shared` entries: each becomes a symlink to `root/shared/<entry>`.
    pub shared: Vec<PathBuf>,
    /// Hard-link files instead of copying them (`stage = "hardlink"`);
    /// across filesystems it copies.
    pub hardlink: bool,
    /// Told (files, bytes) copied so far, at most every [`PROGRESS_EVERY`].
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

/// How often a large copy reports its progress.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The build holds something that cannot be deployed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "the build changed while it was copied; it is staged again after the next quiet period"
    )]
    Changed,
    #[error("the release was aborted")]
    Aborted,
}

/// Sizes of what was copied and the source's fingerprint.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    pub fingerprint: String,
}

/// Copies `src` into the staging directory and swaps it into `color`'s
/// place. Blocking; run it on a blocking thread. On error nothing of the
/// staging directory is left and the color directory is as it was.
pub fn stage(
    root: &Path,
    src: &Path,
    color: Color,
    id: u64,
    opts: &Options,
) -> Result<Copied, StageError> {
    let staging = staging_dir(root, id);
    let result = (|| {
        let mut copy = Copy {
            opts,
            root: src,
            copied: Copied::default(),
            fingerprint: Fingerprint::new(),
            reported: std::time::Instant::now(),
        };
        copy.tree(src, &staging)?;
        copy.copied.fingerprint = copy.fingerprint.finish();
        if let Some(expect) = &opts.expect {
            let now = Fingerprint::of_tree(src, &opts.ignore, opts.marker.as_deref());
            if &copy.copied.fingerprint != expect || now.as_ref() != Some(expect) {
                return Err(StageError::Changed);
            }
        }
        link_shared(root, &staging, opts)?;
        sync_filesystem(&staging)?;
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(StageError::Aborted);
        }
        swap_into_place(&staging, &color_dir(root, color))?;
        // The new build is in place now, whatever happens next: an error
        // from here on must not make the caller think the color still
        // holds its old build.
        if let Err(e) = fsync_dir(root) {
            tracing::warn!("cannot fsync {} after staging: {e}", root.display());
        }
        Ok(copy.copied)
    })();
    if result.is_ok() {
        // The staging path now holds the color's previous contents. Removing
        // a large tree takes a while: set it aside, and let the caller remove
        // it off the release's path ([`remove_trash`]).
        if fs::rename(&staging, trash_dir(root, id)).is_ok() {
            return result;
        }
    }
    remove_tree(&staging);
    result
}

/// Removes what a successful [`stage`] of release `id` set aside. Blocking.
pub fn remove_trash(root: &Path, id: u64) {
    remove_tree(&trash_dir(root, id));
}

/// Points each `shared` entry of the staged tree at `root/shared/<entry>`
/// (created if missing) with a relative symlink, so both colors see the same
/// files and they survive releases. A build that holds such a path itself
/// has it replaced, with a warning: the shared data wins.
fn link_shared(root: &Path, staging: &Path, opts: &Options) -> io::Result<()> {
    for entry in &opts.shared {
        let target = shared_dir(root).join(entry);
        if !target.is_dir() {
            fs::create_dir_all(&target).map_err(|e| at(&target, e))?;
            chown(&target, opts.owner)?;
        }
        let link = staging.join(entry);
        if fs::symlink_metadata(&link).is_ok() {
            tracing::warn!(
                "the build holds {}, a shared path: replacing it with the shared directory",
                entry.display()
            );
            if link.is_dir() && !link.is_symlink() {
                remove_tree(&link);
            } else {
                fs::remove_file(&link).map_err(|e| at(&link, e))?;
            }
        }
        let parent = link.parent().expect("a shared entry is inside the build");
        fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
        // From staging/<entry> up to root: one ".." per component of the
        // entry (the staged tree is renamed to root/<color> later, the same depth).
        let up: PathBuf = std::iter::repeat_n("..", entry.components().count()).collect();
        let relative = up.join(layout::SHARED).join(entry);
        std::os::unix::fs::symlink(&relative, &link).map_err(|e| at(&link, e))?;
        let _ = std::os::unix::fs::lchown(&link, opts.owner.map(|o| o.0), opts.owner.map(|o| o.1));
    }
    Ok(())
}

/// Removes staging directories left by a bgd that died mid-release.
pub fn remove_leftovers(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout::is_leftover(&name) {
            tracing::info!("removing leftover {}", entry.path().display());
            remove_tree(&entry.path());
        }
    }
    Ok(())
}

/// Removes a tree, making read-only directories writable first if needed
/// (a build may hold 0555 directories).
fn remove_tree(path: &Path) {
    fn writable(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                writable(&e.path());
            }
        }
    }
    let result = fs::remove_dir_all(path).or_else(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => {
            writable(path);
            fs::remove_dir_all(path)
        }
        _ => Err(e),
    });
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

/// One copy in progress: what it copies and what it has seen.
struct Copy<'a> {
    opts: &'a Options,
    /// The build's top directory, for relative paths in the fingerprint.
    root: &'a Path,
    copied: Copied,
    fingerprint: Fingerprint,
    /// When progress was last reported.
    reported: std::time::Instant,
}

impl Copy<'_> {
    /// Copies directory `src` (a real directory, or the build's top, which
    /// may be reached through a symlink) to `dst`.
    fn tree(&mut self, src: &Path, dst: &Path) -> Result<(), StageError> {
        let meta = fs::metadata(src).map_err(|e| at(src, e))?;
        fs::create_dir(dst).map_err(|e| at(dst, e))?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(|e| at(src, e))?
            .collect::<io::Result<_>>()
            .map_err(|e| at(src, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if self.opts.cancel.load(Ordering::Relaxed) {
                return Err(StageError::Aborted);
            }
            let from = entry.path();
            let to = dst.join(entry.file_name());
            let meta = fs::symlink_metadata(&from).map_err(|e| at(&from, e))?;
            let ft = meta.file_type();
            let link = ft
                .is_symlink()
                .then(|| fs::read_link(&from))
                .transpose()
                .map_err(|e| at(&from, e))?;
            let rel = from
                .strip_prefix(self.root)
                .expect("the copy stays under the build's top");
            if !(self.opts.ignore.is_match(rel) || self.opts.marker.as_deref() == Some(rel)) {
                self.fingerprint.add(rel, &meta, link.as_deref());
            }
            if ft.is_dir() {
                self.tree(&from, &to)?;
                continue; // tree() hands the directory over itself
            } else if let Some(target) = link {
                std::os::unix::fs::symlink(&target, &to).map_err(|e| at(&to, e))?;
            } else if ft.is_file() {
                self.copied.bytes += self.file(&from, &to, &meta)?;
                self.copied.files += 1;
                if let Some(report) = &self.opts.progress {
                    if self.reported.elapsed() >= PROGRESS_EVERY {
                        self.reported = std::time::Instant::now();
                        report(self.copied.files, self.copied.bytes);
                    }
                }
            } else {
                return Err(StageError::Refused(format!(
                    "{} is a {}: a build may hold only files, directories and symlinks; remove it from the build",
                    from.display(),
                    special_kind(&meta)
                )));
            }
            chown(&to, self.opts.owner)?;
        }
        // Set the mode last, so a read-only directory can be filled first.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| at(dst, e))?;
        chown(dst, self.opts.owner)?;
        Ok(())
    }
}

impl Copy<'_> {
    /// Copies one file (the kernel reflinks it where the filesystem can), or
    /// hard-links it when asked and possible; returns its size.
    fn file(&self, from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<u64> {
        if self.opts.hardlink {
            match fs::hard_link(from, to) {
                Ok(()) => return Ok(meta.len()),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) => return Err(at(from, e)),
            }
        }
        fs::copy(from, to).map_err(|e| at(from, e))
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))
        }
        None => Ok(()),
    }
}

fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Adds the path to an I/O error, and a hint when the disk is full.
fn at(path: &Path, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSPC) => ": no space left on the device that holds bgd's root; free space there and release again",
        Some(libc::EDQUOT) => ": disk quota exceeded on bgd's root; raise the quota and release again",
        _ => "",
    };
    io::Error::new(e.kind(), format!("{}: {e}{hint}", path.display()))
}

/// One `syncfs` flushes every file just copied, far cheaper than an fsync each.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = fs::File::open(path)?;
    nix::unistd::syncfs(&dir).map_err(|e| at(path, e.into()))
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Atomically puts `staging` at `target`. If `target` exists the two are
/// exchanged; filesystems without RENAME_EXCHANGE fall back to two renames.
fn swap_into_place(staging: &Path, target: &Path) -> io::Result<()> {
    if !target.exists() {
        return fs::rename(staging, target).map_err(|e| at(target, e));
    }
    match renameat2(
        AT_FDCWD,
        staging,
        AT_FDCWD,
        target,
        RenameFlags::RENAME_EXCHANGE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            let aside = staging.with_extension("old");
            fs::rename(target, &aside).map_err(|e| at(target, e))?;
            fs::rename(staging, target).map_err(|e| at(target, e))?;
            fs::rename(&aside, staging).map_err(|e| at(staging, e))
        }
        Err(e) => Err(at(target, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_fingerprint_matches_a_fresh_walk() {
        let dir = tempfile::tempdir().unwrap();
        let (src, root) = (dir.path().join("src"), dir.path().join("root"));
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("a/b/f", src.join("link")).unwrap();
        fs::create_dir(&root).unwrap();
        let expect = Fingerprint::of_tree(&src, &GlobSet::empty(), None);
        let opts = Options {
            expect: expect.clone(),
            ..Options::default()
        };
        let copied = stage(&root, &src, Color::Blue, 1, &opts).unwrap();
        assert_eq!(Some(copied.fingerprint), expect);
        assert_eq!(
            fs::read_link(root.join("blue/link")).unwrap(),
            Path::new("a/b/f")
        );
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "only blue/ is left"
        );

        let opts = Options {
            expect: Some("something else".into()),
            ..Options::default()
        };
        assert!(matches!(
            stage(&root, &src, Color::Green, 2, &opts),
            Err(StageError::Changed)
        ));
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "the discarded copy is gone"
        );
    }
}
