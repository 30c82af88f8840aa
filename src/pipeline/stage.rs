//! Copying a build into a color's directory, and keeping a pristine copy of
//! it, without ever exposing a half-written tree.
//!
//! A release's build is copied twice in one walk (`copy.rs`):
//! - into its **kept copy**, `root/releases/.new-<id>`: each file that the
//!   newest kept release holds unchanged (same size, mtime and mode) is a
//!   hard link to that one, so keeping costs only what changed;
//! - into `root/.staging-<id>`, the color's own copy (the kernel's
//!   `copy_file_range`, a reflink where the filesystem shares extents).
//!   The app runs from this copy and may write into it: no file of it is
//!   shared with a kept copy, so a kept copy never changes.
//!
//! The files are copied from several threads (`parallel.rs`). Both copies
//! are flushed (`durable.rs`: file by file, or by one `syncfs` when little
//! else is dirty, so the cost follows the build, not other programs' dirty
//! data), the kept copy is renamed to
//! `root/releases/<id>`, and the staged tree is swapped with the dormant
//! color's directory by `renameat2(RENAME_EXCHANGE)`: one atomic step, after
//! which the old contents sit in the staging path and are removed. A
//! rollback to a kept release stages a copy of its kept copy the same way.
//! The live color's directory is never touched. Symlinks are copied as
//! symlinks and never followed; FIFOs, sockets and devices are refused.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use globset::GlobSet;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::color::Color;
use crate::pipeline::fingerprint::Fingerprint;
use crate::store::layout::{self, color_dir, shared_dir, staging_dir, trash_dir};

mod copy;
mod durable;
pub mod manifest;
mod parallel;
mod setid;
mod space;
mod sparse;

pub use space::{check_space, free_bytes, mb, Need};

/// Checks that `dir` is a readable directory that neither holds bgd's
/// `root` nor lies inside it (other than a color's directory or a kept
/// release); returns its absolute path. Nothing is copied before this.
pub fn validate(dir: &Path, root: &Path) -> Result<PathBuf, String> {
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
    outside_root(dir, root)?;
    Ok(dir.to_path_buf())
}

/// Refuses a build directory that holds `root` (the copy would copy itself
/// into its own staging directory, again and again), or that lies inside
/// `root` other than a color's directory or a kept release.
fn outside_root(dir: &Path, root: &Path) -> Result<(), String> {
    let (Ok(d), Ok(r)) = (dir.canonicalize(), root.canonicalize()) else {
        return Ok(()); // a root that does not exist yet holds nothing
    };
    if r.starts_with(&d) {
        return Err(format!(
            "build directory {} contains bgd's root {}: release a directory that does not hold it, or move `root` out of the build",
            dir.display(),
            root.display()
        ));
    }
    let allowed = |p: &Path| {
        Color::BOTH.iter().any(|c| p == layout::color_dir(&r, *c))
            || p.parent() == Some(layout::releases_dir(&r).as_path())
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(layout::kept_release_id)
                    .is_some()
    };
    if d.starts_with(&r) && !allowed(&d) {
        return Err(format!(
            "build directory {} lies inside bgd's root {}: release a directory outside it (a color's directory or a kept release in root/releases may be released)",
            dir.display(),
            root.display()
        ));
    }
    Ok(())
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
    /// Hard-link the color's files to the kept copy instead of copying
    /// them (`stage = "hardlink"`): the app must then never write into its
    /// files.
    pub hardlink: bool,
    /// Told (files, bytes) copied so far, at most every [`PROGRESS_EVERY`].
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
    /// The source may change while it is copied (a running color's
    /// directory, kept when bgd takes over an older root): what it holds
    /// is copied as read instead of being refused as
    /// [`StageError::Changed`]. A build never may.
    pub changing: bool,
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
    /// The build changed while it was copied: this entry (or, when the
    /// whole tree's fingerprint changed, the build's top) was not as the
    /// walk listed it. Nothing of the copy is kept.
    #[error("the build changed while it was copied ({} changed)", .0.display())]
    Changed(PathBuf),
    #[error("the release was aborted")]
    Aborted,
    /// The build does not fit, or could not be sized: what it needs.
    #[error("{0}")]
    NoSpace(String),
}

/// Sizes of what was copied and the source's fingerprint.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub files: u64,
    /// Bytes of the files staged into the color.
    pub bytes: u64,
    /// Bytes copied into the kept copy; the rest was linked to the newest
    /// kept release.
    pub kept_bytes: u64,
    pub fingerprint: String,
}

/// Copies `src` into the kept copy of release `id` and into the staging
/// directory, and swaps the staged tree into `color`'s place. Blocking; run
/// it on a blocking thread. On error nothing of either copy is left and the
/// color directory is as it was.
pub fn stage(
    root: &Path,
    src: &Path,
    color: Color,
    id: u64,
    opts: &Options,
) -> Result<Copied, StageError> {
    let kept = layout::release_new_dir(root, id);
    let prev = newest_kept(root);
    let result = (|| {
        fs::create_dir_all(layout::releases_dir(root))
            .map_err(|e| at(&layout::releases_dir(root), e))?;
        let dirs = copy::Dirs {
            src,
            kept: Some(&kept),
            prev: prev.as_deref(),
            color: &staging_dir(root, id),
        };
        let copied = copy_tree(root, dirs, opts)?;
        manifest::write(&kept, &layout::release_manifest(root, id))?;
        let whole = layout::release_dir(root, id);
        fs::rename(&kept, &whole).map_err(|e| at(&whole, e))?;
        fsync_dir(&layout::releases_dir(root))?;
        Ok(copied)
    })();
    if result.is_err() {
        remove_tree(&kept);
    }
    finish(root, color, id, result)
}

/// Stages a copy of kept release `kept` into `color`'s place, as release
/// task `task` (for a rollback). Blocking, like [`stage`].
pub fn stage_kept(
    root: &Path,
    kept: u64,
    color: Color,
    task: u64,
    opts: &Options,
) -> Result<Copied, StageError> {
    let src = layout::release_dir(root, kept);
    if !src.is_dir() {
        return Err(StageError::Refused(format!(
            "the kept copy of release {kept} ({}) is gone: roll back to another release (`bgctl releases` lists them)",
            src.display()
        )));
    }
    check_kept(root, kept).map_err(StageError::Refused)?;
    let dirs = copy::Dirs {
        src: &src,
        kept: None,
        prev: None,
        color: &staging_dir(root, task),
    };
    let result = copy_tree(root, dirs, opts);
    finish(root, color, task, result)
}

/// Copies `dirs.src` with the shared links, checks the fingerprint it
/// expects, and makes both copies durable.
fn copy_tree(root: &Path, dirs: copy::Dirs<'_>, opts: &Options) -> Result<Copied, StageError> {
    let mut copy = copy::Copy::new(opts);
    let dirty = durable::dirty();
    copy.tree(dirs)?;
    copy.copied.fingerprint = copy.fingerprint.finish();
    // The tree as it is now must be the tree the walk listed (files added
    // or removed meanwhile), and, for auto-release, the settled tree.
    let now = Fingerprint::of_tree(dirs.src, &opts.ignore, opts.marker.as_deref());
    let settled = opts
        .expect
        .as_ref()
        .is_none_or(|e| e == &copy.copied.fingerprint);
    if now.as_ref() != Some(&copy.copied.fingerprint) || !settled {
        return Err(StageError::Changed(dirs.src.to_path_buf()));
    }
    durable::flush(&copy.files, &copy.dirs, copy.written_bytes, dirty)?;
    // After the flush: a shared entry replaces what the build held there.
    let parents = link_shared(root, dirs.color, opts)?;
    durable::flush(&[], &parents, 0, None)?;
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(StageError::Aborted);
    }
    Ok(copy.copied)
}

/// Swaps the staging directory of task `id` into `color`'s place if the
/// copy succeeded, and sets aside (or removes) what it leaves there.
fn finish(
    root: &Path,
    color: Color,
    id: u64,
    copied: Result<Copied, StageError>,
) -> Result<Copied, StageError> {
    let staging = staging_dir(root, id);
    let result = copied.and_then(|c| {
        swap_into_place(&staging, &color_dir(root, color))?;
        // The new build is in place now, whatever happens next: an error
        // from here on must not make the caller think the color still
        // holds its old build.
        if let Err(e) = fsync_dir(root) {
            tracing::warn!("cannot fsync {} after staging: {e}", root.display());
        }
        Ok(c)
    });
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

/// Makes `dir` (a color's directory, at start) the kept copy of release
/// `id`: a plain copy, flushed, then renamed into `root/releases/<id>`.
/// Blocking.
pub fn keep_copy_of(root: &Path, dir: &Path, id: u64) -> Result<(), StageError> {
    let new = layout::release_new_dir(root, id);
    fs::create_dir_all(layout::releases_dir(root))
        .map_err(|e| at(&layout::releases_dir(root), e))?;
    remove_tree(&new);
    let opts = Options {
        changing: true,
        ..Options::default()
    };
    let dirs = copy::Dirs {
        src: dir,
        kept: None,
        prev: None,
        color: &new,
    };
    let result = (|| {
        let mut copy = copy::Copy::new(&opts);
        let dirty = durable::dirty();
        copy.tree(dirs)?;
        durable::flush(&copy.files, &copy.dirs, copy.written_bytes, dirty)?;
        manifest::write(&new, &layout::release_manifest(root, id))?;
        let whole = layout::release_dir(root, id);
        fs::rename(&new, &whole).map_err(|e| at(&whole, e))?;
        Ok(fsync_dir(&layout::releases_dir(root))?)
    })();
    if result.is_err() {
        remove_tree(&new);
    }
    result
}

/// Checks kept release `id`'s copy against its manifest before it goes
/// live again; `Err` says what differs and what to do. A copy without a
/// manifest (made by an older bgd) passes, with a warning. Blocking.
pub fn check_kept(root: &Path, id: u64) -> Result<(), String> {
    let dir = layout::release_dir(root, id);
    match manifest::check(&dir, &layout::release_manifest(root, id)) {
        Ok(manifest::Check::Whole) => Ok(()),
        Ok(manifest::Check::Unrecorded) => {
            tracing::warn!("the kept copy of release {id} has no manifest: it is not checked");
            Ok(())
        }
        Ok(manifest::Check::Differs(found, count)) => Err(format!(
            "the kept copy of release {id} ({}) is damaged: {}; it is not the build that went live. Roll back to another release (`bgctl releases` marks the damaged ones), or release that build again",
            dir.display(),
            manifest::describe(&found, count)
        )),
        Err(e) => Err(format!(
            "cannot check the kept copy of release {id} ({}): {e}",
            dir.display()
        )),
    }
}

/// The newest whole kept copy in `root/releases`, whose unchanged files a
/// new kept copy links to.
fn newest_kept(root: &Path) -> Option<PathBuf> {
    let newest = fs::read_dir(layout::releases_dir(root))
        .ok()?
        .flatten()
        .filter_map(|e| layout::kept_release_id(e.file_name().to_str()?))
        .max()?;
    Some(layout::release_dir(root, newest))
}

/// Removes kept release `id`'s copy: one rename aside, then the removal,
/// which may take a while (run it off the release's path). Blocking.
pub fn remove_kept(root: &Path, id: u64) {
    let (dir, aside) = (
        layout::release_dir(root, id),
        layout::release_trash_dir(root, id),
    );
    match fs::rename(&dir, &aside) {
        Ok(()) => remove_tree(&aside),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return tracing::warn!("cannot remove {}: {e}", dir.display()),
    }
    remove_tree(&layout::release_manifest(root, id));
}

/// Removes what a successful [`stage`] of release `id` set aside. Blocking.
pub fn remove_trash(root: &Path, id: u64) {
    remove_tree(&trash_dir(root, id));
}

/// Points each `shared` entry of the staged tree at `root/shared/<entry>`
/// (created if missing) with a relative symlink, so both colors see the same
/// files and they survive releases. A build that holds such a path itself
/// has it replaced, with a warning: the shared data wins.
/// Returns the directories that got a link, to be made durable.
fn link_shared(root: &Path, staging: &Path, opts: &Options) -> io::Result<Vec<PathBuf>> {
    let mut parents = Vec::new();
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
        parents.push(parent.to_path_buf());
    }
    Ok(parents)
}

/// Removes staging directories and half-made or half-removed kept copies
/// left by a bgd that died mid-release.
pub fn remove_leftovers(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout::is_leftover(&name) {
            tracing::info!("removing leftover {}", entry.path().display());
            remove_tree(&entry.path());
        }
    }
    for entry in fs::read_dir(layout::releases_dir(root))
        .into_iter()
        .flatten()
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout::is_release_leftover(&name) {
            tracing::info!("removing leftover {}", entry.path().display());
            remove_tree(&entry.path());
        }
    }
    Ok(())
}

/// Removes a tree, making read-only directories writable first if needed
/// (a build may hold 0555 directories), without recursion and without
/// following a symlink out of it (`walk::remove`); a failure is logged.
pub(crate) fn remove_tree(path: &Path) {
    if let Err(e) = crate::pipeline::walk::remove(path) {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

pub(super) fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| at(path, e))
        }
        None => Ok(()),
    }
}

/// Adds the path to an I/O error, and a hint when the disk is full.
pub(super) fn at(path: &Path, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSPC) => ": no space left on the device that holds bgd's root; free space there and release again",
        Some(libc::EDQUOT) => ": disk quota exceeded on bgd's root; raise the quota and release again",
        _ => "",
    };
    io::Error::new(e.kind(), format!("{}: {e}{hint}", path.display()))
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
        assert_eq!(entries(&root), ["blue", "releases"], "no staging left");
        assert_eq!(entries(&layout::releases_dir(&root)), ["1", "1.manifest"]);
        assert_eq!(
            Fingerprint::of_tree(&layout::release_dir(&root, 1), &GlobSet::empty(), None),
            expect,
            "the kept copy has the build's modes and times"
        );

        let opts = Options {
            expect: Some("something else".into()),
            ..Options::default()
        };
        assert!(matches!(
            stage(&root, &src, Color::Green, 2, &opts),
            Err(StageError::Changed(_))
        ));
        assert_eq!(
            entries(&root),
            ["blue", "releases"],
            "the discarded copy is gone"
        );
        assert_eq!(
            entries(&layout::releases_dir(&root)),
            ["1", "1.manifest"],
            "and its kept copy"
        );
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn ino(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    }

    /// A kept copy links what the newest kept release holds unchanged; the
    /// color never shares a file with a kept copy, so the app's writes
    /// there leave every kept copy as it was.
    #[test]
    fn kept_copies_share_unchanged_files_and_the_color_shares_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (src, root) = (dir.path().join("src"), dir.path().join("root"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir(&root).unwrap();
        fs::write(src.join("same"), "same").unwrap();
        fs::write(src.join("changes"), "v1").unwrap();
        stage(&root, &src, Color::Blue, 1, &Options::default()).unwrap();
        fs::write(src.join("changes"), "v2, longer").unwrap();
        let copied = stage(&root, &src, Color::Green, 2, &Options::default()).unwrap();
        assert_eq!(copied.kept_bytes, 10, "only the changed file was copied");
        let (k1, k2) = (layout::release_dir(&root, 1), layout::release_dir(&root, 2));
        assert_eq!(ino(&k1.join("same")), ino(&k2.join("same")));
        assert_ne!(ino(&k1.join("changes")), ino(&k2.join("changes")));
        let green = color_dir(&root, Color::Green);
        assert_ne!(ino(&green.join("same")), ino(&k2.join("same")));
        fs::write(green.join("same"), "written by the app").unwrap();
        assert_eq!(fs::read_to_string(k1.join("same")).unwrap(), "same");

        // A rollback stages a fresh copy of a kept release.
        stage_kept(&root, 1, Color::Green, 99, &Options::default()).unwrap();
        assert_eq!(fs::read_to_string(green.join("same")).unwrap(), "same");
        assert_eq!(fs::read_to_string(green.join("changes")).unwrap(), "v1");
        assert!(matches!(
            stage_kept(&root, 7, Color::Green, 100, &Options::default()),
            Err(StageError::Refused(_))
        ));
    }

    /// Two builds whose file has the same size, mtime and mode but other
    /// bytes (two checkouts do that) are kept apart, not linked as one.
    #[test]
    fn a_file_that_only_looks_unchanged_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (src, root) = (dir.path().join("src"), dir.path().join("root"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir(&root).unwrap();
        let file = src.join("server.py");
        fs::write(&file, "VERSION = 1").unwrap();
        let when = fs::metadata(&file).unwrap().modified().unwrap();
        stage(&root, &src, Color::Blue, 1, &Options::default()).unwrap();
        fs::write(&file, "VERSION = 2").unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(when)
            .unwrap();
        stage(&root, &src, Color::Green, 2, &Options::default()).unwrap();
        let k2 = layout::release_dir(&root, 2).join("server.py");
        assert_eq!(fs::read_to_string(&k2).unwrap(), "VERSION = 2");
        let green = color_dir(&root, Color::Green).join("server.py");
        assert_eq!(fs::read_to_string(green).unwrap(), "VERSION = 2");
    }

    #[test]
    fn a_build_that_holds_the_root_or_lies_inside_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app/state");
        fs::create_dir_all(root.join("blue")).unwrap();
        fs::create_dir_all(root.join("releases/3")).unwrap();
        fs::create_dir_all(root.join("shared/data")).unwrap();
        let e = validate(&dir.path().join("app"), &root).unwrap_err();
        assert!(
            e.contains("contains bgd's root") && !e.contains('\n'),
            "{e}"
        );
        let e = validate(&root.join("shared/data"), &root).unwrap_err();
        assert!(e.contains("lies inside bgd's root"), "{e}");
        validate(&root.join("blue"), &root).unwrap();
        validate(&root.join("releases/3"), &root).unwrap();
    }
}
