//! Making a staged tree durable at a cost that follows the build, not the
//! filesystem.
//!
//! One `syncfs` writes back every dirty page of the whole filesystem:
//! measured, a 1-file build took 957 ms to stage after another process had
//! written 1.5 GB without syncing. Instead each file written is flushed
//! (`fdatasync`) and each new directory (`fsync`), from a few threads at
//! once, so that a journalling filesystem commits many of them together.
//! Unrelated dirty data is not written. Measured here (ext4): 10,000 small
//! files flush in about 450 ms this way against 75 ms for one `syncfs` on a
//! quiet filesystem, but `syncfs` grows with other programs' dirty data and
//! this does not. See bench measurement 8.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Threads that flush at once: each mostly waits for the disk.
const FLUSHERS: usize = 8;

/// Files per flushing thread below which fewer threads are used.
const PER_THREAD: usize = 64;

/// Flushes every file in `files` (data and what is needed to read it) and
/// then every directory in `dirs`, so that all of them survive a crash.
pub(super) fn flush(files: &[PathBuf], dirs: &[PathBuf]) -> io::Result<()> {
    in_parallel(files, |f| fs::File::open(f)?.sync_data())?;
    in_parallel(dirs, |d| fs::File::open(d)?.sync_all())
}

/// Runs `op` on every path, from up to [`FLUSHERS`] threads; the first
/// error (with its path) wins.
fn in_parallel(paths: &[PathBuf], op: fn(&Path) -> io::Result<()>) -> io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let threads = paths.len().div_ceil(PER_THREAD).clamp(1, FLUSHERS);
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter().try_for_each(|p| {
                        op(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a flushing thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>()
            .map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_every_path_and_names_the_one_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..200)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                fs::write(&p, "x").unwrap();
                p
            })
            .collect();
        flush(&files, &[dir.path().to_path_buf()]).unwrap();
        let missing = dir.path().join("gone");
        let e = flush(&[missing.clone()], &[]).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
