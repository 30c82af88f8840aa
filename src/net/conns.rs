//! What the kernel says about a color's connections.
//!
//! For draining and diagnostics: how many connections wait in a listener's
//! accept queue, which sockets a color's processes hold, and what the
//! kernel's TCP sockets are, in the states asked for.
//!
//! This module only reads the kernel's view (`getsockopt`, `fstat`, /proc,
//! a sock_diag dump). It never accepts, reads, writes or shuts down a socket
//! it observes, and never changes a socket's flags.
//!
//! Sockets are matched by inode. A socket fd's `fstat` `st_ino`, the target
//! `socket:[N]` of a /proc/PID/fd link and the inode that sock_diag reports
//! (the inode column of /proc/net/tcp, too) are the same number. A
//! connection that nobody has `accept()`ed yet has no socket inode, and the
//! kernel reports 0.
//!
//! Everything here is a snapshot that may be stale by the time it is
//! returned. A sock_diag dump describes the network namespace of the
//! process that asks, and /proc the pid namespace it is mounted for. bgd
//! and its colors share both.
//!
//! Every function that reads /proc or asks sock_diag blocks while it does.
//! The event loop must call them on the blocking pool.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// The LISTEN state in include/net/tcp_states.h: `tcpi_state`, and the
/// state [`sockets`] reports.
const TCP_LISTEN: u8 = 0x0A;

/// The number of connections waiting in a listening TCP socket's accept
/// queue. These connections have completed the handshake and nobody has
/// `accept()`ed them yet. Handshakes still under way are not counted (see
/// [`handshakes`]).
///
/// Read with `getsockopt(IPPROTO_TCP, TCP_INFO)` (tcp(7)). On a listening
/// socket, the kernel puts the length of the accept queue in `tcpi_unacked`
/// (see `tcp_get_info` in net/ipv4/tcp.c). This is the same number as the
/// listener's `rx_queue` in /proc/net/tcp and `idiag_rqueue` in sock_diag. Fails with `InvalidInput` if the
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

/// A listening socket's backlog as the kernel applies it: `tcpi_sacked` of
/// `TCP_INFO` (min(backlog given to listen(2), `net.core.somaxconn`)).
pub fn listen_backlog(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(listener_info(fd)?.tcpi_sacked)
}

/// The processes that hold the socket with inode `inode` open (their
/// /proc/PID/fd links point to `socket:[inode]`), each with its command
/// line, for messages. Reads every process's fd table: for rare paths.
pub fn socket_holders(inode: u64) -> Vec<(i32, String)> {
    let want = format!("socket:[{inode}]");
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in proc.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()));
        if holds {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            out.push((pid, cmd.join(" ")));
        }
    }
    out
}

/// The inode number of a socket: `st_ino` from fstat(2). [`sockets`] reports
/// this number, and the socket's /proc/PID/fd links point to `socket:[N]`
/// with the same number (proc(5)). Fails with
/// `InvalidInput` if `fd` is not a socket.
pub fn socket_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    #[allow(clippy::useless_conversion)] // st_ino is u32 on some targets
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

/// One TCP socket, as the kernel reports it: a row of [`sockets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    /// The local address and port. For a listener bound to all interfaces,
    /// this is 0.0.0.0 or `::`.
    pub local: SocketAddr,
    /// The peer's address and port. For a listener, this is 0.0.0.0:0 or
    /// `[::]:0`.
    pub remote: SocketAddr,
    /// The TCP state.
    pub state: TcpState,
    /// The socket's inode (see [`socket_inode`]). It is 0 when the row has
    /// no socket a process could hold. That is the case for a connection
    /// still in an accept queue, a handshake under way, and a connection
    /// that was closed and is winding down (TIME_WAIT, for one).
    pub inode: u64,
}

/// The kernel's TCP state (include/net/tcp_states.h): `idiag_state` in a
/// sock_diag reply, and the `st` column of /proc/net/tcp in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// 01: the connection is open. This includes connections still in an
    /// accept queue.
    Established,
    /// 03: the handshake is under way. The kernel reports each pending
    /// connection (its request socket, `TCP_NEW_SYN_RECV`) in this state,
    /// with inode 0. A listener with `TCP_DEFER_ACCEPT` also keeps a
    /// completed handshake in this state until the first data arrives.
    SynRecv,
    /// 0A: a listening socket.
    Listen,
    /// Any other state, with its code: 06 TIME_WAIT, 08 CLOSE_WAIT, and so on.
    Other(u8),
}

impl TcpState {
    fn from_code(code: u8) -> TcpState {
        match code {
            0x01 => TcpState::Established,
            0x03 => TcpState::SynRecv,
            TCP_LISTEN => TcpState::Listen,
            other => TcpState::Other(other),
        }
    }

    fn code(self) -> u8 {
        match self {
            TcpState::Established => 0x01,
            TcpState::SynRecv => 0x03,
            TcpState::Listen => TCP_LISTEN,
            TcpState::Other(code) => code,
        }
    }
}

/// The largest datagram a dump reply comes in. The kernel fills a dump's
/// datagrams up to the size of the reader's last receive buffer, capped at
/// 32 KiB (`netlink_recvmsg` in net/netlink/af_netlink.c); a larger one
/// would be reported as truncated.
const DIAG_DATAGRAM: usize = 64 * 1024;

/// The TCP sockets of bgd's network namespace, IPv4 and IPv6, that are in
/// one of `states`. The kernel is asked through sock_diag (sock_diag(7),
/// include/uapi/linux/inet_diag.h) and leaves out every socket in another
/// state itself, so the cost grows with the number of sockets returned, not
/// with the thousands of TIME_WAIT rows that /proc/net/tcp would list under
/// load. With [`TcpState::SynRecv`], the handshakes under way are included
/// (the kernel's request sockets). A dump is not atomic: a connection whose
/// state changes during it may appear twice or not at all.
///
/// Fails with `InvalidInput` for an [`TcpState::Other`] code above 31, and
/// with the kernel's error when it refuses the dump (EAFNOSUPPORT, say, when
/// a sandbox forbids netlink sockets).
pub fn sockets(states: &[TcpState]) -> io::Result<Vec<TcpEntry>> {
    let mut mask = 0u32;
    for state in states {
        let bit = 1u32.checked_shl(u32::from(state.code())).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no such TCP state: {state:?}"),
            )
        })?;
        mask |= bit;
    }
    let mut entries = Vec::new();
    let socket = diag_socket().map_err(|e| at("a sock_diag netlink socket", e))?;
    for (seq, family, name) in [(1, diag::AF_INET, "IPv4"), (2, diag::AF_INET6, "IPv6")] {
        dump(&socket, seq, family, mask, &mut entries)
            .map_err(|e| at(&format!("asking the kernel for its {name} TCP sockets"), e))?;
    }
    Ok(entries)
}

/// The sock_diag crates, under one name.
mod diag {
    pub(super) use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    pub(super) use netlink_packet_sock_diag::{
        inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
        SockDiagMessage, AF_INET, AF_INET6, IPPROTO_TCP,
    };
    pub(super) use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
}

/// A netlink socket that speaks to the kernel's sock_diag.
fn diag_socket() -> io::Result<diag::Socket> {
    let socket = diag::Socket::new(diag::NETLINK_SOCK_DIAG)?;
    socket.connect(&diag::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Asks for the TCP sockets of `family` whose state is in `mask` (a bit
/// per state code), with sequence number `seq`, and appends them to `out`.
/// The reply comes in as many datagrams as it needs, each with one or more
/// messages (`NLM_F_MULTI`), until `NLMSG_DONE`.
fn dump(
    socket: &diag::Socket,
    seq: u32,
    family: u8,
    mask: u32,
    out: &mut Vec<TcpEntry>,
) -> io::Result<()> {
    let socket_id = match family {
        diag::AF_INET => diag::SocketId::new_v4(),
        _ => diag::SocketId::new_v6(),
    };
    let mut header = diag::NetlinkHeader::default();
    header.flags = diag::NLM_F_REQUEST | diag::NLM_F_DUMP;
    header.sequence_number = seq;
    let request = diag::SockDiagMessage::InetRequest(diag::InetRequest {
        family,
        protocol: diag::IPPROTO_TCP,
        extensions: diag::ExtensionFlags::empty(),
        states: diag::StateFlags::from_bits_retain(mask),
        socket_id,
    });
    let mut packet = diag::NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut buf = Vec::with_capacity(DIAG_DATAGRAM);
    loop {
        buf.clear();
        // With MSG_TRUNC, recv returns the datagram's full length.
        let len = socket.recv(&mut buf, libc::MSG_TRUNC)?;
        if len > buf.len() {
            return Err(invalid(format!(
                "a sock_diag reply of {len} bytes did not fit in {}",
                buf.len()
            )));
        }
        if read_datagram(&buf, seq, out)? {
            return Ok(());
        }
    }
}

/// Appends the sockets in one datagram of a dump's reply to `out`; true
/// when it ends the reply. A message of another request is skipped.
fn read_datagram(mut datagram: &[u8], seq: u32, out: &mut Vec<TcpEntry>) -> io::Result<bool> {
    use diag::{NetlinkPayload, SockDiagMessage};
    while !datagram.is_empty() {
        let message = diag::NetlinkMessage::<SockDiagMessage>::deserialize(datagram)
            .map_err(|e| invalid(format!("a sock_diag reply: {e}")))?;
        // Messages start on 4-byte boundaries (NLMSG_ALIGN).
        let next = (message.header.length as usize).next_multiple_of(4);
        datagram = datagram.get(next..).unwrap_or_default();
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                out.push(entry(&r.header));
            }
            NetlinkPayload::Noop => {}
            // A dump that failed half-way ends with the negative errno.
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(io::Error::from_raw_os_error(done.code.saturating_neg()));
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return Err(match e.code {
                    Some(code) => io::Error::from_raw_os_error(code.get().saturating_abs()),
                    None => invalid("an acknowledgement instead of a dump".into()),
                });
            }
            other => return Err(invalid(format!("unexpected sock_diag reply: {other:?}"))),
        }
    }
    Ok(false)
}

fn entry(r: &diag::InetResponseHeader) -> TcpEntry {
    let id = &r.socket_id;
    TcpEntry {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: TcpState::from_code(r.state),
        inode: u64::from(r.inode),
    }
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
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};
    use TcpState::{Established, Listen, Other, SynRecv};

    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
    };

    const TIME_WAIT: TcpState = Other(0x06);

    // /proc/net/tcp and /proc/net/tcp6, read and parsed: what bgd read
    // before it asked sock_diag. The tests hold `sockets` to it, and the
    // ignored `time_wait_rows_*` test times the two.

    /// The rows of /proc/net/tcp and of /proc/net/tcp6 (the latter is
    /// missing when IPv6 is disabled). The kernel writes these files a page
    /// at a time, and the cost grows with every socket in the namespace,
    /// TIME_WAIT ones included.
    fn tcp_table() -> io::Result<Vec<TcpEntry>> {
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

    /// Parses the text of /proc/net/tcp or /proc/net/tcp6. The first line
    /// is a header; each other line is one socket.
    ///
    /// The format is that of `get_tcp4_sock` in net/ipv4/tcp_ipv4.c and
    /// `get_tcp6_sock` in net/ipv6/tcp_ipv6.c (proc(5) has an outline).
    /// Fields are separated by whitespace: slot, local `ADDR:PORT`, remote
    /// `ADDR:PORT`, state, and so on; the inode is the tenth field. A port
    /// is a 16-bit number in hex. An IPv4 address is one 32-bit word and an
    /// IPv6 address four. The kernel prints each word as a host-order
    /// integer in hex, so on a little-endian machine 127.0.0.1 is
    /// `0100007F`. IPv4-mapped IPv6 addresses stay IPv6
    /// (`::ffff:127.0.0.1`).
    fn parse_tcp_table(text: &str) -> io::Result<Vec<TcpEntry>> {
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
        Some(TcpEntry {
            local: parse_endpoint(fields.get(1)?)?,
            remote: parse_endpoint(fields.get(2)?)?,
            state: TcpState::from_code(u8::from_str_radix(fields.get(3)?, 16).ok()?),
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
                (addr("[::1]:48496"), addr("[::1]:54217"), TIME_WAIT, 0),
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

    /// A netlink message: header (length, type, flags, sequence number,
    /// port id, each in host order) and `payload`, padded to 4 bytes.
    fn nl_message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len() as u32;
        let mut m = Vec::new();
        m.extend(len.to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;

    #[test]
    fn a_dump_ends_at_its_own_done_and_reports_the_kernels_errors() {
        let done = |seq, code: i32| nl_message(NLMSG_DONE, seq, &code.to_ne_bytes());
        let read = |datagram: Vec<u8>| read_datagram(&datagram, 7, &mut Vec::new());
        // Another request's DONE is skipped; a datagram without ours goes on.
        assert!(!read(done(6, 0)).unwrap());
        assert!(read([done(6, 0), done(7, 0)].concat()).unwrap());
        // A dump that failed half-way: DONE with a negative errno.
        let err = read(done(7, -libc::ENOBUFS)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS), "{err}");
        // A refused request: NLMSG_ERROR with a negative errno and the
        // request's header.
        let refused = [(-libc::EACCES).to_ne_bytes().as_slice(), &[0; 16]].concat();
        let err = read(nl_message(NLMSG_ERROR, 7, &refused)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        let err = read(vec![1, 2, 3]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn the_kernel_refusing_a_dump_is_an_error() {
        let socket = diag_socket().unwrap();
        // No address family has this number (AF_MAX is below it): EINVAL.
        let err = dump(&socket, 1, 255, 1 << 1, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        let err = sockets(&[Other(32)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert_eq!(sockets(&[]).unwrap(), []);
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

    /// The state and inode of the row for (local, remote) in `table`.
    fn row(table: &[TcpEntry], local: SocketAddr, remote: SocketAddr) -> Option<(TcpState, u64)> {
        let mut rows = table
            .iter()
            .filter(|e| e.local == local && e.remote == remote);
        rows.next().map(|e| (e.state, e.inode))
    }

    /// The row for (local, remote) in [`sockets`] with `states`, and in
    /// /proc/net/tcp (any state).
    fn rows(
        states: &[TcpState],
        local: SocketAddr,
        remote: SocketAddr,
    ) -> [Option<(TcpState, u64)>; 2] {
        [
            row(&sockets(states).unwrap(), local, remote),
            row(&tcp_table().unwrap(), local, remote),
        ]
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
    fn sockets_agree_with_proc_net_tcp_on_the_listener_and_its_connections() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            let addr = l.local_addr().unwrap();
            let nowhere = match addr {
                SocketAddr::V4(_) => self::addr("0.0.0.0:0"),
                SocketAddr::V6(_) => self::addr("[::]:0"),
            };
            let listening = Some((Listen, inode(&l)));
            assert_eq!(rows(&[Listen], addr, nowhere), [listening; 2]);
            let client = TcpStream::connect(addr).unwrap();
            let peer = client.local_addr().unwrap();
            let open = Some((Established, inode(&client)));
            assert_eq!(rows(&[Established], peer, addr), [open; 2]);
            // In the accept queue: no process holds a socket for it yet.
            let queued = Some((Established, 0));
            wait_until(&format!("{addr}'s rows for {peer}"), [queued; 2], || {
                rows(&[Established], addr, peer)
            });
            let (server, _) = l.accept().unwrap();
            let accepted = Some((Established, inode(&server)));
            assert_eq!(rows(&[Established], addr, peer), [accepted; 2]);
            // Only the states asked for.
            assert_eq!(row(&sockets(&[Listen]).unwrap(), addr, peer), None);
            assert_eq!(row(&sockets(&[Established]).unwrap(), addr, nowhere), None);
        }
    }

    #[test]
    fn sockets_read_a_dump_that_takes_many_datagrams() {
        // 200 rows of at least 88 bytes: more than the first datagram of a
        // dump holds (a page at most), and more than one 4 KiB read.
        let l = listener(addr("127.0.0.1:0"), 128);
        let addr = l.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..100 {
            let client = TcpStream::connect(addr).unwrap();
            pairs.push((client, l.accept().unwrap().0));
        }
        let accepted: HashSet<u64> = pairs.iter().map(|(_, server)| inode(server)).collect();
        let found: HashSet<u64> = sockets(&[Established])
            .unwrap()
            .iter()
            .filter(|e| e.local == addr)
            .map(|e| e.inode)
            .collect();
        assert_eq!(found, accepted);
    }

    #[test]
    fn sockets_leave_out_time_wait() {
        for addr in loopbacks() {
            let l = listener(addr, 16);
            let addr = l.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).unwrap();
            let peer = client.local_addr().unwrap();
            let (server, _) = l.accept().unwrap();
            let open = Some((Established, inode(&server)));
            assert_eq!(rows(&[Established, SynRecv], addr, peer), [open; 2]);
            // The side that closes first waits in TIME_WAIT once the other
            // side has closed too.
            drop(server);
            assert_eq!(client.read(&mut [0; 1]).unwrap(), 0);
            drop(client);
            let closed = Some((TIME_WAIT, 0));
            wait_until(&format!("{addr}'s row for {peer}"), closed, || {
                row(&tcp_table().unwrap(), addr, peer)
            });
            assert_eq!(
                row(&sockets(&[Established, SynRecv]).unwrap(), addr, peer),
                None
            );
            // It is there when asked for.
            assert_eq!(row(&sockets(&[TIME_WAIT]).unwrap(), addr, peer), closed);
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
            let table = || sockets(&[Established, SynRecv]).unwrap();
            let count = |ports: &[u16]| {
                let held = group_socket_inodes(our_group()).unwrap();
                established(&table(), ports, &held)
            };
            wait_until(&format!("connections accepted on {addr}"), 2, || {
                count(&[port])
            });
            assert_eq!(count(&[]), 0);
            assert_eq!(established(&table(), &[port], &HashSet::new()), 0);
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
            let table = || sockets(&[Established, SynRecv]).unwrap();
            let pending = || handshakes(&table(), &[addr.port()]);
            wait_until(
                &format!("handshakes on {addr}"),
                HashSet::from([(addr, peer)]),
                pending,
            );
            let half_open = Some((SynRecv, 0));
            assert_eq!(rows(&[SynRecv], addr, peer), [half_open; 2]);
            assert_eq!(handshakes(&table(), &[]), HashSet::new());
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
            let table = sockets(&[Listen]).unwrap();
            let foreign = foreign_listeners(&table, &held, &ours);
            assert!(foreign.contains(&apps.local_addr().unwrap()), "{foreign:?}");
            assert!(
                !foreign.contains(&bgds.local_addr().unwrap()),
                "{foreign:?}"
            );
            assert_eq!(foreign_listeners(&table, &HashSet::new(), &ours), []);
        }
    }

    /// Times one /proc/net/tcp read and one sock_diag dump of the states
    /// the drain asks for, with tens of thousands of TIME_WAIT rows present.
    /// Slow (it opens and closes 20,000 connections), so only on demand:
    /// `cargo test --lib time_wait_rows -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_wait_rows_cost_the_proc_table_but_not_sockets() {
        let drain = || sockets(&[Established, SynRecv]).unwrap();
        let measure = |when: &str| {
            let table = tcp_table().unwrap();
            let waiting = table.iter().filter(|e| e.state == TIME_WAIT).count();
            println!(
                "{when}: {} rows in /proc/net/tcp{{,6}}, {waiting} of them TIME_WAIT; {} from sockets(&[Established, SynRecv])",
                table.len(),
                drain().len()
            );
            println!("  tcp_table(): {:.1?} ms", millis(&|| tcp_table().unwrap()));
            println!("  sockets():   {:.1?} ms", millis(&drain));
            waiting
        };
        measure("before");
        // A new connection from a client port that a TIME_WAIT pair on the
        // same listener still names takes that pair over, and the kernel
        // has some 14,000 ports for connect(): 4 listeners, 5,000 each.
        for _ in 0..4 {
            let l = listener(addr("127.0.0.1:0"), 1024);
            let addr = l.local_addr().unwrap();
            for _ in 0..5_000 {
                let mut client = TcpStream::connect(addr).unwrap();
                drop(l.accept().unwrap().0);
                assert_eq!(client.read(&mut [0; 1]).unwrap(), 0);
            }
        }
        let after = measure("after 20,000 connections closed server side first");
        assert!(after >= 20_000, "{after} TIME_WAIT rows");
    }

    /// How long 5 calls of `f` took each, in ms, sorted.
    fn millis(f: &dyn Fn() -> Vec<TcpEntry>) -> Vec<f64> {
        let mut ms: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    }
}
