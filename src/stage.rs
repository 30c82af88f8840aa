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

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::color::Color;

/// Where a build is copied before it is swapped into place.
pub fn staging_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!(".staging-{id}"))
}

pub fn color_dir(root: &Path, color: Color) -> PathBuf {
    root.join(color.as_str())
}

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

/// Sizes of what was copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Who gets the copies; `None` leaves them bgd's.
    owner: Option<(u32, u32)>,
}

/// Copies `src` into the staging directory and swaps it into `color`'s
/// place. Blocking; run it on a blocking thread. On error nothing of the
/// staging directory is left and the color directory is as it was.
///
/// With an `owner` (the app's uid and gid), every copied entry is handed to
/// that user, so an app that does not run as bgd's user can read its build.
pub fn stage(
    root: &Path,
    src: &Path,
    color: Color,
    id: u64,
    owner: Option<(u32, u32)>,
) -> io::Result<Copied> {
    let staging = staging_dir(root, id);
    let result = (|| {
        let mut copied = Copied {
            owner,
            ..Copied::default()
        };
        copy_tree(src, &staging, &mut copied)?;
        sync_filesystem(&staging)?;
        swap_into_place(&staging, &color_dir(root, color))?;
        fsync_dir(root)?;
        Ok(copied)
    })();
    // After a swap the staging path holds the color's previous contents.
    remove_tree(&staging);
    result
}

/// Removes staging directories left by a bgd that died mid-release.
pub fn remove_leftovers(root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".staging-") {
            tracing::info!("removing leftover {}", entry.path().display());
            remove_tree(&entry.path());
        }
    }
    Ok(())
}

fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

fn copy_tree(src: &Path, dst: &Path, copied: &mut Copied) -> io::Result<()> {
    let meta = fs::symlink_metadata(src).map_err(|e| at(src, e))?;
    fs::create_dir(dst).map_err(|e| at(dst, e))?;
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(|e| at(src, e))?
        .collect::<io::Result<_>>()
        .map_err(|e| at(src, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| at(&from, e))?;
        if ft.is_dir() {
            copy_tree(&from, &to, copied)?;
            continue; // copy_tree handed the directory over itself
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| at(&from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| at(&to, e))?;
        } else if ft.is_file() {
            copied.bytes += fs::copy(&from, &to).map_err(|e| at(&from, e))?;
            copied.files += 1;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a {}: a build may hold only files, directories and symlinks; remove it from the build",
                    from.display(),
                    special_kind(&entry.metadata().map_err(|e| at(&from, e))?)
                ),
            ));
        }
        chown(&to, copied.owner)?;
    }
    chown(dst, copied.owner)?;
    // Set the mode last, so a read-only directory can be filled first.
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| at(dst, e))?;
    Ok(())
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
