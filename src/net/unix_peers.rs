//! What the kernel says about the connections of a listening Unix socket,
//! from /proc/net/unix (proc(5)). Read only.
//!
//! A Unix stream connection made to a listener is a socket that carries
//! the listener's address (the kernel copies it at `connect()`, see
//! `unix_stream_connect` in net/unix/af_unix.c), both while it waits in the
//! listener's queue and once it is accepted, until it is closed. So the
//! rows with the listener's path that are not listeners themselves are
//! exactly its queued and open connections. bgd binds each color's socket at
//! a private path, so this counts one color's.

use std::io;
use std::path::Path;

/// `__SO_ACCEPTCON` in the Flags column: the row is a listening socket.
const ACCEPTCON: u32 = 0x0001_0000;
/// `SOCK_STREAM` in the Type column.
const STREAM: u32 = 1;

/// Queued and open stream connections to the listener bound at `path`.
/// Blocking: reads /proc/net/unix.
pub(crate) fn connections(path: &Path) -> io::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    Ok(count(&table, path))
}

/// [`connections`] over the text of /proc/net/unix: columns `Num RefCount
/// Protocol Flags Type St Inode Path`, hexadecimal except Inode.
fn count(table: &str, path: &Path) -> usize {
    let want = path.as_os_str().to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            f.len() >= 8
                && f[7..].join(" ") == want
                && hex(3).is_some_and(|flags| flags & ACCEPTCON == 0)
                && hex(4) == Some(STREAM)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, want: usize, f: impl Fn() -> usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while f() != want {
            assert!(Instant::now() < deadline, "{what}: {} not {want}", f());
            std::thread::yield_now();
        }
    }

    #[test]
    fn queued_and_accepted_connections_count_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let n = || connections(&path).unwrap();
        assert_eq!(n(), 0, "the listener itself does not count");
        let clients: Vec<_> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        wait_for("queued", 3, n);
        let accepted: Vec<_> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        assert_eq!(n(), 3, "accepted and open");
        drop(accepted);
        wait_for("closed", 0, n);
        drop(clients);
        // Another listener's connections are not this one's.
        let other = dir.path().join("other.sock");
        let _l2 = UnixListener::bind(&other).unwrap();
        let _c = UnixStream::connect(&other).unwrap();
        assert_eq!(n(), 0);
        assert_eq!(connections(&other).unwrap(), 1);
    }

    #[test]
    fn the_table_is_read_by_path_flags_and_type() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/app sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 4243 /run/app sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 03 0 /run/app sock\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 4244 /run/app sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 4245\n";
        // The listener, a datagram socket and an unnamed peer do not count.
        assert_eq!(count(table, Path::new("/run/app sock")), 2);
        assert_eq!(count(table, Path::new("/run/app")), 0);
    }
}
