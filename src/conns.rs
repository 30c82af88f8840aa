//! What the kernel says about a color's connections.
//!
//! For draining and diagnostics: how many connections wait in a listener's
//! accept queue, which sockets a color's processes hold, and what the
//! kernel's TCP table says about those sockets.
//!
//! This module only reads the kernel's view (`getsockopt`, `fstat`, /proc).
//! It never accepts, reads, writes or shuts down a socket it observes, and
//! never changes a socket's flags.
//!
//! Sockets are matched by inode. A socket fd's `fstat` `st_ino`, the target
//! `socket:[N]` of a /proc/PID/fd link and the inode column of
//! /proc/net/tcp are the same number. A connection that nobody has
//! `accept()`ed yet has no socket inode, and the table shows 0.
//!
//! Everything here is a snapshot that may be stale by the time it is
//! returned. /proc/net/tcp describes the network namespace of the process
//! that reads it, and /proc the pid namespace it is mounted for. bgd and
//! its colors share both.
//!
//! Every function that reads /proc blocks while it reads. The event loop
//! must call them on the blocking pool.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// The LISTEN state in include/net/tcp_states.h: `tcpi_state` and the `st`
/// column of /proc/net/tcp.
const TCP_LISTEN: u8 = 0x0A;

/// The number of connections waiting in a listening TCP socket's accept
/// queue. These connections have completed the handshake and nobody has
/// `accept()`ed them yet. Handshakes still under way are not counted (see
/// [`handshakes`]).
///
/// Read with `getsockopt(IPPROTO_TCP, TCP_INFO)` (tcp(7)). On a listening
/// socket, the kernel puts the length of the accept queue in `tcpi_unacked`
/// (see `tcp_get_info` in net/ipv4/tcp.c). This is the same number as the
/// listener's `rx_queue` in /proc/net/tcp. Fails with `InvalidInput` if the
/// socket is not listening. Fails with the kernel's error (EOPNOTSUPP) if it
/// is not a TCP socket.
pub fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(listener_info(fd)?.tcpi_unacked)
}

fn listener_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info contains only integers, so all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is open for the whole call because it is borrowed. The
    // kernel writes at most `len` bytes into `info`, which has that size,
    // and it stores the number of bytes it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < std::mem::offset_of!(libc::tcp_info, tcpi_sacked) + 4 {
        return Err(io::Error::other(format!(
            "TCP_INFO returned only {len} bytes"
        )));
    }
    if info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a listening TCP socket (its TCP state is {:#04x})",
                info.tcpi_state
            ),
        ));
    }
    Ok(info)
}

/// The inode number of a socket: `st_ino` from fstat(2). /proc/net/tcp shows
/// this number in its inode column, and the socket's /proc/PID/fd links
/// point to `socket:[N]` with the same number (proc(5)). Fails with
/// `InvalidInput` if `fd` is not a socket.
pub fn socket_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    Ok(u64::from(st.st_ino))
}

/// The pids of the processes whose process group is `pgid`. The group is
/// field 5 (pgrp) of /proc/PID/stat (proc(5)). The scan skips processes that
/// exit while it runs.
pub fn group_pids(pgid: i32) -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let path = format!("/proc/{pid}/stat");
        let stat = match fs::read_to_string(&path) {
            Ok(stat) => stat,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(at(&path, e)),
        };
        match stat_pgrp(&stat) {
            Some(pgrp) if pgrp == pgid => pids.push(pid),
            Some(_) => {}
            None => return Err(at(&path, invalid("no process group in it".into()))),
        }
    }
    Ok(pids)
}

/// The inodes of the sockets held open by the processes in process group
/// `pgid` (see [`group_pids`]). They are read from the `socket:[N]` targets
/// of the /proc/PID/fd links (proc(5)). The scan skips processes that exit
/// while it runs, and fds they close meanwhile. Reading the fds of a process
/// that runs as another user needs root. Without it the scan fails with
/// `PermissionDenied`.
pub fn group_socket_inodes(pgid: i32) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for pid in group_pids(pgid)? {
        let dir = format!("/proc/{pid}/fd");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(at(&dir, e)),
        };
        for entry in entries {
            match entry.and_then(|e| fs::read_link(e.path())) {
                Ok(link) => inodes.extend(socket_link_inode(link.as_os_str())),
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(at(&dir, e)),
            }
        }
    }
    Ok(inodes)
}

/// The process group in the text of /proc/PID/stat. The group is the third
/// field after the command name. The name (field 2) is written in
/// parentheses and may contain spaces and parentheses itself, so the fields
/// are counted from the last `)`.
fn stat_pgrp(stat: &str) -> Option<i32> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// N in a /proc/PID/fd link that reads `socket:[N]`.
fn socket_link_inode(link: &OsStr) -> Option<u64> {
    let digits = link
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A process that exits takes its /proc entries with it: ENOENT, or ESRCH
/// when it goes in the middle of a read.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn at(path: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One row of /proc/net/tcp or /proc/net/tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    /// The local address and port. For a listener bound to all interfaces,
    /// this is 0.0.0.0 or `::`.
    pub local: SocketAddr,
    /// The peer's address and port. For a listener, this is 0.0.0.0:0 or
    /// `[::]:0`.
    pub remote: SocketAddr,
    /// The TCP state: the `st` column.
    pub state: TcpState,
    /// The socket's inode (see [`socket_inode`]). It is 0 when the row has
    /// no socket a process could hold. That is the case for a connection
    /// still in an accept queue, a handshake under way, and a connection
    /// that was closed and is winding down (TIME_WAIT, for one).
    pub inode: u64,
}

/// The `st` column of /proc/net/tcp: the kernel's TCP state, in hex (see
/// include/net/tcp_states.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// 01: the connection is open. This includes connections still in an
    /// accept queue.
    Established,
    /// 03: the handshake is under way. The table shows each pending
    /// connection (the kernel's request socket, `TCP_NEW_SYN_RECV`) in this
    /// state, with inode 0. A listener with `TCP_DEFER_ACCEPT` also keeps a
    /// completed handshake in this state until the first data arrives.
    SynRecv,
    /// 0A: a listening socket.
    Listen,
    /// Any other state, with its code: 06 TIME_WAIT, 08 CLOSE_WAIT, and so on.
    Other(u8),
}

/// The TCP sockets of bgd's network namespace, IPv4 and IPv6: the rows of
/// /proc/net/tcp and of /proc/net/tcp6. If IPv6 is disabled there is no
/// /proc/net/tcp6, and the result has only the IPv4 rows. The kernel writes
/// these files a page at a time. A connection whose state changes during
/// the read may appear twice or not at all. The cost grows with the number
/// of sockets in the namespace.
pub fn tcp_table() -> io::Result<Vec<TcpEntry>> {
    let mut table = parse_tcp_table(&read_proc("/proc/net/tcp")?.unwrap_or_default())?;
    if let Some(text) = read_proc("/proc/net/tcp6")? {
        table.extend(parse_tcp_table(&text)?);
    }
    Ok(table)
}

/// The contents of `path`, or `None` if the file does not exist.
fn read_proc(path: &str) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(path, e)),
    }
}

/// Parses the text of /proc/net/tcp or /proc/net/tcp6. The first line is a
/// header; each other line is one socket.
///
/// The format is that of `get_tcp4_sock` in net/ipv4/tcp_ipv4.c and
/// `get_tcp6_sock` in net/ipv6/tcp_ipv6.c (proc(5) has an outline). Fields
/// are separated by whitespace: slot, local `ADDR:PORT`, remote `ADDR:PORT`,
/// state, and so on; the inode is the tenth field. A port is a 16-bit
/// number in hex. An IPv4 address is one 32-bit word and an IPv6 address
/// four. The kernel prints each word as a host-order integer in hex, so on
/// a little-endian machine 127.0.0.1 is `0100007F`. IPv4-mapped IPv6
/// addresses stay IPv6 (`::ffff:127.0.0.1`).
pub fn parse_tcp_table(text: &str) -> io::Result<Vec<TcpEntry>> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            parse_line(line).ok_or_else(|| invalid(format!("unexpected TCP table row: {line}")))
        })
        .collect()
}

fn parse_line(line: &str) -> Option<TcpEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = match u8::from_str_radix(fields.get(3)?, 16).ok()? {
        0x01 => TcpState::Established,
        0x03 => TcpState::SynRecv,
        TCP_LISTEN => TcpState::Listen,
        other => TcpState::Other(other),
    };
    Some(TcpEntry {
        local: parse_endpoint(fields.get(1)?)?,
        remote: parse_endpoint(fields.get(2)?)?,
        state,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `ADDR:PORT`, both in hex, as described at [`parse_tcp_table`].
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    if !(addr.len() == 8 || addr.len() == 32) || port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = addr.get(i..i + 8)?;
        if !word.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        bytes.extend(u32::from_str_radix(word, 16).ok()?.to_ne_bytes());
    }
    let ip = match <[u8; 4]>::try_from(bytes.as_slice()) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
    };
    Some(SocketAddr::new(ip, port))
}

/// How many ESTABLISHED connections on one of the local `ports` have their
/// socket in `inodes`. With the socket inodes of a color's process group
/// (see [`group_socket_inodes`]), this counts the connections that color
/// has accepted and still holds open. Connections still in the accept queue
/// have no inode yet and are not counted. A connection the peer has already
/// closed (CLOSE_WAIT) is not counted either.
pub fn established(table: &[TcpEntry], ports: &[u16], inodes: &HashSet<u64>) -> usize {
    table
        .iter()
        .filter(|e| e.state == TcpState::Established && ports.contains(&e.local.port()))
        .filter(|e| inodes.contains(&e.inode))
        .count()
}

/// The (local, remote) addresses of the connections on one of the local
/// `ports` whose handshake is under way: the SYN_RECV rows. No process holds
/// them yet, and they are not yet in the accept queue, so
/// [`accept_queue`] does not count them.
pub fn handshakes(table: &[TcpEntry], ports: &[u16]) -> HashSet<(SocketAddr, SocketAddr)> {
    table
        .iter()
        .filter(|e| e.state == TcpState::SynRecv && ports.contains(&e.local.port()))
        .map(|e| (e.local, e.remote))
        .collect()
}

/// The addresses of the listening sockets that a color's processes hold
/// (`group_inodes`, see [`group_socket_inodes`]) but that are not among
/// bgd's own sockets (`ours`, their [`socket_inode`]s). A result here means
/// the app bound a port itself instead of using the sockets it inherited.
pub fn foreign_listeners(
    table: &[TcpEntry],
    group_inodes: &HashSet<u64>,
    ours: &HashSet<u64>,
) -> Vec<SocketAddr> {
    table
        .iter()
        .filter(|e| e.state == TcpState::Listen)
        .filter(|e| group_inodes.contains(&e.inode) && !ours.contains(&e.inode))
        .map(|e| e.local)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Debug;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};
    use TcpState::{Established, Listen, Other, SynRecv};

    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
    };

    // Rows copied from /proc/net/tcp and /proc/net/tcp6 of an x86_64
    // (little-endian) machine. Each file starts with a header line.
    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// `rows` under the header, parsed: (local, remote, state, inode) each.
    fn parsed(rows: &[&str]) -> Vec<(SocketAddr, SocketAddr, TcpState, u64)> {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        let table = parse_tcp_table(&format!("{HEADER}{text}")).unwrap();
        table
            .iter()
            .map(|e| (e.local, e.remote, e.state, e.inode))
            .collect()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_parser_reads_ipv4_rows_in_host_byte_order() {
        let rows = parsed(&[
            "   1: 020200C0:D799 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 449729 2 000000004f0615b2 100 0 0 10 0     ",
            "16260: 020200C0:D799 020200C0:E1C6 01 00000000:00000000 00:00000000 00000000     0        0 0 1 000000007e046246 20 0 0 10 -1",
            "12994: 0100007F:CC77 0100007F:9F3C 03 00000000:00000000 01:00000062 00000000     0        0 0 0 000000002ce7a1bb",
        ]);
        assert_eq!(
            rows,
            [
                (addr("192.0.2.2:55193"), addr("0.0.0.0:0"), Listen, 449729),
                (
                    addr("192.0.2.2:55193"),
                    addr("192.0.2.2:57798"),
                    Established,
                    0
                ),
                (addr("127.0.0.1:52343"), addr("127.0.0.1:40764"), SynRecv, 0),
            ]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_parser_reads_ipv6_rows_word_by_word() {
        let rows = parsed(&[
            "   3: 000000FD000000000000000002000000:8D6A 000000FD000000000000000002000000:DC9D 01 00000000:00000000 00:00000000 00000000     0        0 449732 2 0000000077ea9dc6 20 0 0 10 -1",
            "  16: 00000000000000000000000001000000:BD70 00000000000000000000000001000000:D3C9 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000050c5c34c",
        ]);
        assert_eq!(
            rows,
            [
                (
                    addr("[fd00::2]:36202"),
                    addr("[fd00::2]:56477"),
                    Established,
                    449732
                ),
                (addr("[::1]:48496"), addr("[::1]:54217"), Other(0x06), 0),
            ]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_parser_keeps_ipv4_mapped_addresses_as_ipv6() {
        let rows = parsed(&[
            "   0: 0000000000000000FFFF00000100007F:D715 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 449690 1 000000003e1f13e1 100 0 0 10 0",
        ]);
        let local = addr("[::ffff:127.0.0.1]:55061");
        assert_eq!(rows, [(local, addr("[::]:0"), Listen, 449690)]);
    }

    #[test]
    fn the_parser_refuses_rows_it_cannot_read() {
        for row in [
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000",
            "   0: 0100007F1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            "   0: 0100007:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            "   0: +100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            "   0: 0100007F:1F90 00000000:0000 XX 00000000:00000000 00:00000000 00000000 0 0 1",
        ] {
            let err = parse_tcp_table(&format!("{HEADER}{row}\n")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{row}");
        }
        assert_eq!(parse_tcp_table(HEADER).unwrap(), []);
    }

    #[test]
    fn the_process_group_is_counted_from_the_last_parenthesis() {
        let stat = "4242 (a) b (c) d) S 1 4240 4240 0 -1 4194560 120 0 0 0";
        assert_eq!(stat_pgrp(stat), Some(4240));
        assert_eq!(stat_pgrp("4242 (sh) S 1"), None);
    }

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(
            socket_link_inode(OsStr::new("socket:[449690]")),
            Some(449690)
        );
        assert_eq!(socket_link_inode(OsStr::new("pipe:[449690]")), None);
        assert_eq!(socket_link_inode(OsStr::new("/tmp/socket:[1]")), None);
    }

    /// The loopback addresses this machine has, with port 0: IPv4, IPv6 and
    /// IPv4-mapped IPv6. Says why it skips one.
    fn loopbacks() -> Vec<SocketAddr> {
        ["127.0.0.1:0", "[::1]:0", "[::ffff:127.0.0.1]:0"]
            .into_iter()
            .map(addr)
            .filter(|a| match TcpListener::bind(a) {
                Ok(_) => true,
                Err(e) => {
                    println!("skipping {a}: it cannot be bound here ({e})");
                    false
                }
            })
            .collect()
    }

    /// A listener on `addr` with an accept queue limit of `backlog`.
    fn listener(addr: SocketAddr, backlog: i32) -> TcpListener {
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap();
        listen(&fd, Backlog::new(backlog).unwrap()).unwrap();
        TcpListener::from(fd)
    }

    /// TCP_DEFER_ACCEPT (tcp(7)): the listener keeps a connection in SYN_RECV
    /// until its first data arrives, which gives a test a lasting handshake.
    fn defer_accept(l: &TcpListener, seconds: libc::c_int) {
        // SAFETY: `l` is open for the call, and the option value is a c_int
        // of the size given.
        let rc = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&seconds as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    /// Polls `probe` until it returns `want`, for at most 5 s. On loopback,
    /// the kernel may finish its side of a connection after `connect`
    /// returns.
    fn wait_until<T: PartialEq + Debug>(what: &str, want: T, mut probe: impl FnMut() -> T) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = probe();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}\nexpected: {want:?}\nactual:   {got:?} (after 5 s)"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The state and inode of the table's row for (local, remote).
    fn row(local: SocketAddr, remote: SocketAddr) -> Option<(TcpState, u64)> {
        let table = tcp_table().unwrap();
        let mut rows = table
            .iter()
            .filter(|e| e.local == local && e.remote == remote);
        rows.next().map(|e| (e.state, e.inode))
    }

    fn inode(fd: &impl AsFd) -> u64 {
        socket_inode(fd.as_fd()).unwrap()
    }

    fn our_group() -> i32 {
        nix::unistd::getpgrp().as_raw()
    }

    #[test]
    fn the_accept_queue_counts_connections_until_they_are_accepted() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            let addr = l.local_addr().unwrap();
            assert_eq!(accept_queue(l.as_fd()).unwrap(), 0, "{addr}");
            let _clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let queue = || accept_queue(l.as_fd()).unwrap();
            wait_until(&format!("accept queue of {addr}"), 3, queue);
            let accepted: Vec<_> = (0..3).map(|_| l.accept().unwrap().0).collect();
            assert_eq!(accept_queue(l.as_fd()).unwrap(), 0, "{addr}");
            let err = accept_queue(accepted[0].as_fd()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn the_tcp_table_shows_the_listener_and_its_connections() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            let addr = l.local_addr().unwrap();
            let nowhere = match addr {
                SocketAddr::V4(_) => self::addr("0.0.0.0:0"),
                SocketAddr::V6(_) => self::addr("[::]:0"),
            };
            assert_eq!(row(addr, nowhere), Some((TcpState::Listen, inode(&l))));
            let client = TcpStream::connect(addr).unwrap();
            let peer = client.local_addr().unwrap();
            assert_eq!(
                row(peer, addr),
                Some((TcpState::Established, inode(&client)))
            );
            // In the accept queue: no process holds a socket for it yet.
            let queued = Some((TcpState::Established, 0));
            wait_until(&format!("{addr}'s row for {peer}"), queued, || {
                row(addr, peer)
            });
            let (server, _) = l.accept().unwrap();
            assert_eq!(
                row(addr, peer),
                Some((TcpState::Established, inode(&server)))
            );
        }
    }

    #[test]
    fn our_process_group_holds_our_sockets() {
        let pid = std::process::id() as i32;
        assert!(group_pids(our_group()).unwrap().contains(&pid));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (listening, connected) = (inode(&l), inode(&client));
        let held = group_socket_inodes(our_group()).unwrap();
        assert!(held.contains(&listening), "{listening} not in {held:?}");
        assert!(held.contains(&connected), "{connected} not in {held:?}");
        drop(l);
        let held = group_socket_inodes(our_group()).unwrap();
        assert!(!held.contains(&listening), "{listening} still in {held:?}");
        // No process group has this number: pids stay below 2^22.
        assert_eq!(group_socket_inodes(i32::MAX).unwrap(), HashSet::new());
    }

    #[test]
    fn established_counts_the_connections_the_group_accepted_and_holds() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            let addr = l.local_addr().unwrap();
            let port = addr.port();
            let _clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
            // The third connection stays in the queue: it has no inode.
            let mut accepted: Vec<_> = (0..2).map(|_| l.accept().unwrap().0).collect();
            let count = |ports: &[u16]| {
                let held = group_socket_inodes(our_group()).unwrap();
                established(&tcp_table().unwrap(), ports, &held)
            };
            wait_until(&format!("connections accepted on {addr}"), 2, || {
                count(&[port])
            });
            assert_eq!(count(&[]), 0);
            assert_eq!(
                established(&tcp_table().unwrap(), &[port], &HashSet::new()),
                0
            );
            drop(accepted.pop());
            wait_until(&format!("connections held on {addr}"), 1, || count(&[port]));
        }
    }

    #[test]
    fn handshakes_lists_the_connections_in_syn_recv() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            defer_accept(&l, 30);
            let addr = l.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).unwrap();
            let peer = client.local_addr().unwrap();
            let pending = || handshakes(&tcp_table().unwrap(), &[addr.port()]);
            wait_until(
                &format!("handshakes on {addr}"),
                HashSet::from([(addr, peer)]),
                pending,
            );
            assert_eq!(handshakes(&tcp_table().unwrap(), &[]), HashSet::new());
            assert_eq!(accept_queue(l.as_fd()).unwrap(), 0);
            // The first data completes the handshake: queued, no longer pending.
            client.write_all(b"x").unwrap();
            wait_until(&format!("accept queue of {addr}"), 1, || {
                accept_queue(l.as_fd()).unwrap()
            });
            assert_eq!(pending(), HashSet::new());
        }
    }

    #[test]
    fn a_listener_the_group_holds_is_foreign_unless_it_is_ours() {
        for addr in loopbacks() {
            let bgds = listener(addr, 16);
            let apps = listener(addr, 16);
            let ours = HashSet::from([inode(&bgds)]);
            let held = group_socket_inodes(our_group()).unwrap();
            let table = tcp_table().unwrap();
            let foreign = foreign_listeners(&table, &held, &ours);
            assert!(foreign.contains(&apps.local_addr().unwrap()), "{foreign:?}");
            assert!(
                !foreign.contains(&bgds.local_addr().unwrap()),
                "{foreign:?}"
            );
            assert_eq!(foreign_listeners(&table, &HashSet::new(), &ours), []);
        }
    }
}
