//! Copying a file's contents so that its holes stay holes.
//!
//! `copy_file_range` over a whole file fills its holes on a filesystem
//! that cannot share extents (ext4): a 200 MiB sparse file holding 20 KiB
//! was written out as 200 MiB, twice (the kept copy and the color's). So
//! the data segments are found with `lseek(SEEK_DATA)` and
//! `lseek(SEEK_HOLE)` (lseek(2)) and only they are copied, each with
//! `copy_file_range` (a reflink where the filesystem shares extents); the
//! file is then extended to its length, which leaves a trailing hole.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Copies the `len` bytes of `src` into the empty `dst`, holes as holes.
/// Returns the bytes of data written (less than `len` for a sparse file).
pub(super) fn copy_contents(src: &File, dst: &File, len: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut at: i64 = 0;
    loop {
        let data = match lseek(src, at, Whence::SeekData) {
            Ok(d) => d,
            // No data after `at`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return dense(src, dst),
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src, data, Whence::SeekHole)?;
        written += copy_range(src, dst, data as u64, (hole - data) as u64)?;
        at = hole;
    }
    dst.set_len(len)?;
    Ok(written)
}

/// Copies `n` bytes at offset `at` of `src` to the same offset of `dst`.
/// Stops early at the end of `src` (a file that shrank: the caller sees
/// its new size).
fn copy_range(src: &File, dst: &File, mut at: u64, mut n: u64) -> io::Result<u64> {
    let mut copied = 0;
    while n > 0 {
        let (mut i, mut o) = (at as i64, at as i64);
        let chunk = n.min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut i), dst, Some(&mut o), chunk) {
            Ok(0) => break,
            Ok(k) => {
                at += k as u64;
                n -= k as u64;
                copied += k as u64;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                return Ok(copied + positional(src, dst, at, n)?)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(copied)
}

/// [`copy_range`] by reads and writes, where `copy_file_range` is refused.
fn positional(src: &File, dst: &File, mut at: u64, mut n: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 128 << 10];
    let mut copied = 0;
    while n > 0 {
        let want = buf.len().min(n as usize);
        let k = src.read_at(&mut buf[..want], at)?;
        if k == 0 {
            break;
        }
        dst.write_all_at(&buf[..k], at)?;
        at += k as u64;
        n -= k as u64;
        copied += k as u64;
    }
    Ok(copied)
}

/// The whole file, where holes cannot be found.
fn dense(mut src: &File, mut dst: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; 128 << 10];
    let mut copied = 0;
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            return Ok(copied);
        }
        dst.write_all(&buf[..k])?;
        copied += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// 200 MiB with 20 KiB of data at its start, middle and end: the copy
    /// allocates about 20 KiB too, and holds the same bytes.
    #[test]
    fn holes_stay_holes_and_the_bytes_are_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let len: u64 = 200 << 20;
        let src = File::create(&a).unwrap();
        src.set_len(len).unwrap();
        for at in [0, len / 2, len - 4096] {
            src.write_all_at(&[7u8; 4096], at).unwrap();
        }
        src.sync_all().unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::options()
            .write(true)
            .create_new(true)
            .open(&b)
            .unwrap();
        let written = copy_contents(&src, &dst, len).unwrap();
        dst.sync_all().unwrap();
        assert!(written < 1 << 20, "{written} bytes written");
        let m = std::fs::metadata(&b).unwrap();
        assert_eq!(m.len(), len);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
        for at in [0, len / 2, len / 2 + 4096, len - 4096] {
            src.read_exact_at(&mut x, at).unwrap();
            File::open(&b).unwrap().read_exact_at(&mut y, at).unwrap();
            assert_eq!(x, y, "at {at}");
        }
    }

    /// A file that is all hole, and one with a trailing hole.
    #[test]
    fn an_empty_sparse_file_and_a_trailing_hole() {
        let dir = tempfile::tempdir().unwrap();
        for (data, len) in [(0u64, 1u64 << 30), (5, 1 << 20)] {
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            let _ = std::fs::remove_file(&b);
            let src = File::create(&a).unwrap();
            src.set_len(len).unwrap();
            src.write_all_at(&vec![1u8; data as usize], 0).unwrap();
            let dst = File::options()
                .write(true)
                .create_new(true)
                .open(&b)
                .unwrap();
            copy_contents(&File::open(&a).unwrap(), &dst, len).unwrap();
            let m = std::fs::metadata(&b).unwrap();
            assert_eq!(m.len(), len);
            assert!(m.blocks() * 512 <= 64 << 10, "{}", m.blocks() * 512);
        }
    }
}
