//! Walking a tree without recursion, and without being led out of it.
//!
//! Every walk of a build or of bgd's own trees goes through here: the copy
//! (`stage/copy.rs`), the fingerprint, the space estimate, `bgctl
//! releases`' sizes, the manifests of kept copies and removal. A recursive
//! walk uses a stack frame per level: a build 1,900 directories deep
//! overflowed the 2 MiB stack of the thread that copied it and aborted bgd.
//! Here the levels are a `Vec` on the heap.
//!
//! A directory is read through a descriptor opened with `O_NOFOLLOW` and
//! checked to be the directory its parent listed (same device and inode),
//! and its entries are looked at with `fstatat` relative to that
//! descriptor: a directory swapped for a symlink while the walk runs (a
//! deploy user pointing `build/lib` at `/etc` after bgd listed it) is
//! refused as [`Changed`], never followed. Only the top may be reached
//! through a symlink (a build released as `current`).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

/// How deep a build may be: directories below its top. A path in the
/// color (`root/.staging-N/` and the build's own path) must stay under
/// Linux's 4,096 bytes (`PATH_MAX`), which a tree of one-letter
/// directories reaches at about 2,040 levels; bgd refuses a deeper build
/// by name before it copies anything.
pub const MAX_DEPTH: usize = 2_000;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: never copied.
    Special(&'static str),
}

/// What a walk keeps of an entry's `stat` (`lstat`: a symlink is itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// `st_mode`: the type bits and the permission bits.
    pub mode: u32,
    /// Bytes (a directory's is whatever the filesystem says).
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
    /// 512-byte blocks allocated: less than `size` for a sparse file.
    pub blocks: u64,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    fn kind_of(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Special("FIFO"),
            libc::S_IFSOCK => Kind::Special("socket"),
            libc::S_IFBLK | libc::S_IFCHR => Kind::Special("device"),
            _ => Kind::Special("special file"),
        }
    }

    pub fn of_stat(st: &FileStat) -> Meta {
        Meta {
            kind: Self::kind_of(st.st_mode),
            mode: st.st_mode,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            dev: st.st_dev,
            ino: st.st_ino,
            blocks: st.st_blocks as u64,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    pub fn of(m: &fs::Metadata) -> Meta {
        Meta {
            kind: Self::kind_of(m.mode()),
            mode: m.mode(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            dev: m.dev(),
            ino: m.ino(),
            blocks: m.blocks(),
            uid: m.uid(),
            gid: m.gid(),
        }
    }

    /// The permission bits, setuid, setgid and sticky included.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The same inode as `other`.
    pub fn same_inode(&self, other: &Meta) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// The `stat` of `path`, following a symlink (the top of a walk).
pub fn stat(path: &Path) -> io::Result<Meta> {
    fs::metadata(path).map(|m| Meta::of(&m))
}

/// The `lstat` of `path`.
pub fn lstat(path: &Path) -> io::Result<Meta> {
    fs::symlink_metadata(path).map(|m| Meta::of(&m))
}

/// One entry, as a walk shows it to its visitor.
pub struct Entry<'a> {
    pub path: &'a Path,
    /// Its path below the top.
    pub rel: &'a Path,
    pub name: &'a std::ffi::OsStr,
    pub meta: &'a Meta,
    /// A symlink's target.
    pub link: Option<&'a Path>,
    /// 1 for the top's own entries.
    pub depth: usize,
}

/// A directory or file that was not what its listing said when bgd came
/// back to it: something changed the tree during the walk.
#[derive(Debug)]
pub struct Changed(pub PathBuf);

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} changed while bgd read it", self.0.display())
    }
}

impl std::error::Error for Changed {}

/// A directory deeper than the walk allows.
#[derive(Debug)]
pub struct TooDeep(pub PathBuf);

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is more than {MAX_DEPTH} directories deep: bgd copies builds at most {MAX_DEPTH} levels deep (a path must fit in 4,096 bytes); make the build shallower",
            self.0.display()
        )
    }
}

impl std::error::Error for TooDeep {}

/// The [`Changed`] path an error carries, if it is one.
pub fn changed(e: &io::Error) -> Option<&Path> {
    e.get_ref()?
        .downcast_ref::<Changed>()
        .map(|c| c.0.as_path())
}

/// The [`TooDeep`] an error carries, if it is one.
pub fn too_deep(e: &io::Error) -> Option<&TooDeep> {
    e.get_ref()?.downcast_ref::<TooDeep>()
}

fn changed_error(path: &Path) -> io::Error {
    io::Error::other(Changed(path.to_path_buf()))
}

/// An entry of a directory listing.
struct Listed {
    name: OsString,
    meta: Meta,
    link: Option<PathBuf>,
}

/// Opens the directory at `path` (through a symlink only if `follow`) and
/// checks it is `expect` (the inode its parent listed).
fn open_dir(path: &Path, expect: Option<&Meta>, follow: bool) -> io::Result<nix::dir::Dir> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let dir = nix::dir::Dir::open(path, flags, Mode::empty()).map_err(|e| match e {
        // A symlink (ELOOP) or a file (ENOTDIR) where a directory was listed.
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR if expect.is_some() => {
            changed_error(path)
        }
        e => at(path, e.into()),
    })?;
    let st = nix::sys::stat::fstat(&dir).map_err(|e| at(path, e.into()))?;
    if expect.is_some_and(|m| (m.dev, m.ino) != (st.st_dev, st.st_ino)) {
        return Err(changed_error(path));
    }
    Ok(dir)
}

/// The entries of the directory at `path`, in name order, each `lstat`ed
/// relative to the directory's descriptor.
fn list(path: &Path, expect: Option<&Meta>, follow: bool) -> io::Result<Vec<Listed>> {
    list_open(&mut open_dir(path, expect, follow)?, path)
}

/// The entries of `dir`, open at `path`: [`list`].
fn list_open(dir: &mut nix::dir::Dir, path: &Path) -> io::Result<Vec<Listed>> {
    let names: Vec<OsString> = dir
        .iter()
        .map(|e| e.map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| at(path, e.into()))?;
    let mut listed = Vec::with_capacity(names.len());
    for name in names {
        if name == "." || name == ".." {
            continue;
        }
        let st =
            match nix::sys::stat::fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Listed, then gone: no longer part of the tree.
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(at(&path.join(&name), e.into())),
            };
        let meta = Meta::of_stat(&st);
        let link = match meta.kind {
            Kind::Symlink => Some(PathBuf::from(
                nix::fcntl::readlinkat(&*dir, name.as_os_str())
                    .map_err(|e| at(&path.join(&name), e.into()))?,
            )),
            _ => None,
        };
        listed.push(Listed { name, meta, link });
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listed)
}

/// One directory being walked: the rest of its entries.
struct Frame {
    dir: PathBuf,
    entries: std::vec::IntoIter<Listed>,
}

/// Walks the tree below `top` depth first, each directory's entries in
/// name order and each directory before what it holds, calling `visit` on
/// every entry (not on `top` itself, which may be a symlink to a
/// directory). `visit` returns whether to walk into a directory. A
/// directory deeper than `max_depth` is refused as [`TooDeep`].
pub fn walk<E: From<io::Error>>(
    top: &Path,
    max_depth: Option<usize>,
    mut visit: impl FnMut(&Entry) -> Result<bool, E>,
) -> Result<(), E> {
    let mut stack = vec![Frame {
        dir: top.to_path_buf(),
        entries: list(top, None, true)?.into_iter(),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(l) = frame.entries.next() else {
            stack.pop();
            continue;
        };
        let path = frame.dir.join(&l.name);
        let depth = stack.len();
        let rel = path.strip_prefix(top).unwrap_or(&path);
        let entry = Entry {
            path: &path,
            rel,
            name: &l.name,
            meta: &l.meta,
            link: l.link.as_deref(),
            depth,
        };
        if visit(&entry)? && l.meta.is_dir() {
            if max_depth.is_some_and(|m| depth > m) {
                return Err(io::Error::other(TooDeep(path)).into());
            }
            let entries = list(&path, Some(&l.meta), false)?.into_iter();
            stack.push(Frame { dir: path, entries });
        }
    }
    Ok(())
}

/// Removes the tree at `path` (a file or symlink alone, or a directory
/// and everything in it) without recursion and without following a
/// symlink: entries are unlinked through their directory's descriptor,
/// opened `O_NOFOLLOW` and checked, and a read-only directory is made
/// writable first (a build may hold 0555 directories). Missing is done.
pub fn remove(path: &Path) -> io::Result<()> {
    let top = match lstat(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(at(path, e)),
    };
    if !top.is_dir() {
        return fs::remove_file(path).map_err(|e| at(path, e));
    }
    // Directories in the order they were emptied of files; removed last
    // to first, so each is empty of directories when its turn comes.
    let mut dirs = Vec::new();
    let mut pending = vec![(path.to_path_buf(), top)];
    while let Some((dir, meta)) = pending.pop() {
        let mut fd = open_dir(&dir, Some(&meta), false)?;
        let _ = nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700));
        for l in list_open(&mut fd, &dir)? {
            let child = dir.join(&l.name);
            if l.meta.is_dir() {
                pending.push((child, l.meta));
                continue;
            }
            let flag = nix::unistd::UnlinkatFlags::NoRemoveDir;
            match nix::unistd::unlinkat(&fd, l.name.as_os_str(), flag) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(at(&child, e.into())),
            }
        }
        dirs.push(dir);
    }
    for dir in dirs.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(dir, e)),
        }
    }
    Ok(())
}

/// Adds the path to an error.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `depth` one-letter directories below `top`, made with
    /// relative `mkdir`s (the full path would pass `PATH_MAX` past ~2,000).
    pub(crate) fn deep_tree(top: &Path, depth: usize) {
        let mut p = top.to_path_buf();
        for _ in 0..depth {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("f"), "deep").unwrap();
    }

    /// 1,900 levels walked on a thread with a 64 KiB stack: a recursive
    /// walk needs far more.
    #[test]
    fn a_deep_tree_is_walked_on_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        deep_tree(dir.path(), 1_900);
        let top = dir.path().to_path_buf();
        let seen = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let mut n = 0;
                walk::<io::Error>(&top, Some(MAX_DEPTH), |_| {
                    n += 1;
                    Ok(true)
                })
                .map(|()| n)
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(seen, 1_901, "every directory and the file");
        let top = dir.path().to_path_buf();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove(&top))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!dir.path().exists());
    }

    #[test]
    fn a_tree_deeper_than_allowed_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        deep_tree(dir.path(), 12);
        let e = walk::<io::Error>(dir.path(), Some(10), |_| Ok(true)).unwrap_err();
        let deep = too_deep(&e).expect("a TooDeep error");
        assert_eq!(
            deep.0
                .strip_prefix(dir.path())
                .unwrap()
                .components()
                .count(),
            11
        );
        assert!(
            e.to_string().contains("more than 2000 directories deep"),
            "{e}"
        );
    }

    /// The order a fingerprint needs: depth first, names sorted, each
    /// directory before its contents; symlinks are reported, not followed.
    #[test]
    fn entries_come_depth_first_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir_all(t.join("b/c")).unwrap();
        fs::write(t.join("a"), "").unwrap();
        fs::write(t.join("b/c/x"), "").unwrap();
        fs::write(t.join("b/z"), "").unwrap();
        std::os::unix::fs::symlink("/etc", t.join("b/l")).unwrap();
        let mut seen = Vec::new();
        walk::<io::Error>(t, None, |e| {
            seen.push((e.rel.display().to_string(), e.link.map(Path::to_path_buf)));
            Ok(true)
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/x", "b/l", "b/z"]);
        assert_eq!(seen[4].1.as_deref(), Some(Path::new("/etc")));
    }

    /// A directory swapped for a symlink after it was listed is refused,
    /// not followed.
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("lib")).unwrap();
        fs::create_dir_all(dir.path().join("secret")).unwrap();
        fs::write(dir.path().join("secret/key"), "k").unwrap();
        let mut seen = Vec::new();
        let e = walk::<io::Error>(&t, None, |e| {
            if e.rel == Path::new("lib") {
                fs::remove_dir(t.join("lib")).unwrap();
                std::os::unix::fs::symlink(dir.path().join("secret"), t.join("lib")).unwrap();
            }
            seen.push(e.rel.to_path_buf());
            Ok(true)
        })
        .unwrap_err();
        assert_eq!(changed(&e), Some(t.join("lib").as_path()), "{e}");
        assert_eq!(seen, [PathBuf::from("lib")], "nothing of secret/ was seen");
        // Removal does not follow it either.
        remove(&t).unwrap();
        assert!(dir.path().join("secret/key").exists());
    }

    #[test]
    fn read_only_directories_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("ro")).unwrap();
        fs::write(t.join("ro/f"), "").unwrap();
        fs::set_permissions(t.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        remove(&t).unwrap();
        assert!(!t.exists());
        remove(&t).unwrap();
    }
}
