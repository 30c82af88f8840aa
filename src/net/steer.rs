//! The classic BPF program that picks, for each new TCP connection, which
//! color's socket of an `SO_REUSEPORT` group receives it.
//!
//! The kernel runs the program attached to a group
//! (`SO_ATTACH_REUSEPORT_CBPF`, socket(7)) on the SYN of every new
//! connection, and the value it returns indexes the group's sockets in the
//! order they called `listen()`. An index out of range is no error: the
//! kernel then hashes across all sockets (net/core/sock_reuseport.c), so a
//! program here only ever returns the index of a socket that exists.
//! Replacing the program is one `setsockopt`, atomic for the whole group:
//! that is the flip.
//!
//! For TCP the program starts at the segment's payload, so it reads headers
//! through the negative offset `SKF_NET_OFF` (linux/filter.h): the IP header,
//! then the TCP header right after it (IPv4: its length from the IHL field;
//! IPv6: 40 bytes, bgd's own probes carry no extension headers).
//!
//! A [`Route`] sends every connection to one socket, except bgd's own
//! readiness probes, recognised by their exact source address and port,
//! which go to the color each checks. With a canary, the rest are split at
//! random: the program loads the kernel's per-packet random number
//! (`SKF_AD_RANDOM`, an ancillary load of classic BPF, filter.txt in the
//! kernel's networking docs) and sends the connection to the canary when
//! that number is below the canary's share of 2^32.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libc::sock_filter;

/// `SO_ATTACH_REUSEPORT_CBPF` from include/uapi/asm-generic/socket.h (not
/// exported by libc for Linux).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Where new connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The group index of the socket that receives every new connection.
    pub to: u32,
    /// A connection from exactly one of these sources goes to its index
    /// instead (bgd's own readiness checks; at most a few at once).
    pub probes: Vec<(SocketAddr, u32)>,
    /// A canary: the group index that gets this share (1 to 99 percent)
    /// of the other connections, at random.
    pub split: Option<(u32, u8)>,
}

/// The program for `route`: one instruction without probes, 9 (IPv4) or
/// 14 (IPv6) more per probe, and 3 more with a split.
pub fn program(route: &Route) -> Vec<sock_filter> {
    let tail = tail(route);
    if route.probes.is_empty() {
        return tail;
    }
    let net = libc::SKF_NET_OFF as u32;
    // Each block tests one probe's source and returns its index; a mismatch
    // jumps to the next block, and after the last to the default route.
    let mut blocks: Vec<Vec<sock_filter>> = Vec::new();
    for (from, to) in &route.probes {
        let mut b = vec![
            // A = IP version (the high nibble of the first byte).
            stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, net),
            stmt(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 4),
        ];
        match from.ip() {
            IpAddr::V4(ip) => {
                b.push(jeq_else(4));
                b.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, net + 12));
                b.push(jeq_else(u32::from(ip)));
                // X = the IPv4 header's length; then A = the TCP source port.
                b.push(stmt(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, net));
                b.push(stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, net));
            }
            IpAddr::V6(ip) => {
                b.push(jeq_else(6));
                for (i, w) in ip.octets().chunks(4).enumerate() {
                    let word = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
                    b.push(stmt(
                        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
                        net + 8 + 4 * i as u32,
                    ));
                    b.push(jeq_else(word));
                }
                b.push(stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, net + 40));
            }
        }
        b.push(jeq_else(from.port() as u32));
        b.push(ret(*to));
        blocks.push(b);
    }
    let mut p = Vec::new();
    for b in blocks {
        let len = b.len();
        for (i, mut ins) in b.into_iter().enumerate() {
            if ins.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                // Past the rest of this block, to the next one.
                ins.jf = (len - i - 1) as u8;
            }
            p.push(ins);
        }
    }
    p.extend(tail);
    p
}

/// Where a connection that is no probe goes: `to`, or split at random.
fn tail(route: &Route) -> Vec<sock_filter> {
    let Some((canary, percent)) = route.split.filter(|(_, p)| (1..=99).contains(p)) else {
        return vec![ret(route.to)];
    };
    // The share of the 2^32 random values that go to the canary.
    let threshold = ((u64::from(percent) << 32) / 100) as u32;
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, random),
        // A >= threshold: past the canary's return, to `to`.
        sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: threshold,
        },
        ret(canary),
        ret(route.to),
    ]
}

/// Attaches `program` to the reuseport group of `fd` (any socket of the
/// group), replacing the one before for the whole group at once.
pub fn attach(fd: BorrowedFd<'_>, program: &[sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the
    // kernel copies the instructions before returning.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks once, at start-up, that this kernel lets bgd steer: two
/// throwaway sockets on 127.0.0.1 in one `SO_REUSEPORT` group take a
/// program. The error says what to change.
pub fn check_kernel() -> anyhow::Result<()> {
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt};
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let test = || -> io::Result<()> {
        let mut port = 0;
        let mut keep = Vec::new();
        for _ in 0..2 {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            setsockopt(&fd, sockopt::ReusePort, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port))?;
            let bound: SockaddrIn = nix::sys::socket::getsockname(fd.as_raw_fd())?;
            port = bound.port();
            listen(&fd, Backlog::new(1).map_err(io::Error::from)?)?;
            keep.push(fd);
        }
        attach(
            keep[0].as_fd(),
            // With a split: the random load a canary needs must be
            // accepted too.
            &program(&Route {
                to: 1,
                probes: vec![],
                split: Some((0, 50)),
            }),
        )
    };
    test().map_err(|e| {
        anyhow::anyhow!(
            "this kernel refuses the traffic gate's steering program (SO_REUSEPORT with SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+): {e}; \
             set traffic.mode = \"shared\" in the config to run with one socket shared by both colors"
        )
    })
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `if A == k` go on, else jump (the offset is set once the block is whole).
fn jeq_else(k: u32) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn ret(k: u32) -> sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    /// Two listening sockets in one reuseport group on `ip`, index 0 then 1.
    fn group(ip: IpAddr) -> Option<(TcpListener, TcpListener)> {
        let a = reuseport_listener(SocketAddr::new(ip, 0))?;
        let b = reuseport_listener(a.local_addr().ok()?)?;
        Some((a, b))
    }

    fn reuseport_listener(addr: SocketAddr) -> Option<TcpListener> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReusePort, &true).ok()?;
        let bound = match addr {
            SocketAddr::V4(a) => {
                nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(a))
            }
            SocketAddr::V6(a) => {
                nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn6::from(a))
            }
        };
        bound.ok()?;
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(64).ok()?).ok()?;
        let l = TcpListener::from(fd);
        l.set_nonblocking(true).ok()?;
        Some(l)
    }

    /// Which listener got a connection from `client`: 0 or 1.
    fn landed(g: &(TcpListener, TcpListener), client: &TcpStream) -> usize {
        let me = client.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (i, l) in [&g.0, &g.1].into_iter().enumerate() {
                if let Ok((_, peer)) = l.accept() {
                    assert_eq!(peer, me, "a connection nobody made");
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "the connection landed nowhere");
            std::thread::yield_now();
        }
    }

    /// Connects to `to` from `from` (port 0: any).
    fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
        let s = socket2_like(from);
        s.connect(to).unwrap()
    }

    struct Bound(OwnedFd);
    impl Bound {
        fn connect(self, to: SocketAddr) -> std::io::Result<TcpStream> {
            let r = match to {
                SocketAddr::V4(a) => nix::sys::socket::connect(
                    self.0.as_raw_fd(),
                    &nix::sys::socket::SockaddrIn::from(a),
                ),
                SocketAddr::V6(a) => nix::sys::socket::connect(
                    self.0.as_raw_fd(),
                    &nix::sys::socket::SockaddrIn6::from(a),
                ),
            };
            r?;
            Ok(TcpStream::from(self.0))
        }
        fn local(&self) -> SocketAddr {
            let a: nix::sys::socket::SockaddrStorage =
                nix::sys::socket::getsockname(self.0.as_raw_fd()).unwrap();
            if let Some(a) = a.as_sockaddr_in() {
                SocketAddr::V4((*a).into())
            } else {
                SocketAddr::V6((*a.as_sockaddr_in6().unwrap()).into())
            }
        }
    }

    fn socket2_like(from: SocketAddr) -> Bound {
        let family = if from.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            ))
        };
        match from {
            SocketAddr::V4(a) => {
                nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(a))
            }
            SocketAddr::V6(a) => {
                nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn6::from(a))
            }
        }
        .unwrap();
        Bound(fd)
    }

    fn check_family(ip: IpAddr) {
        let Some(g) = group(ip) else {
            eprintln!("skipped: no {ip} on this machine");
            return;
        };
        let addr = g.0.local_addr().unwrap();
        for to in [0, 1] {
            let route = Route {
                to,
                probes: vec![],
                split: None,
            };
            attach(g.0.as_fd(), &program(&route)).unwrap();
            for _ in 0..20 {
                let c = connect_from(SocketAddr::new(ip, 0), addr);
                assert_eq!(landed(&g, &c), to as usize, "ret {to}");
            }
        }
        // The probes' exact sources go where they say; all else to `to`.
        for (to, cand) in [(0, 1), (1, 0)] {
            let probe = socket2_like(SocketAddr::new(ip, 0));
            let other = socket2_like(SocketAddr::new(ip, 0));
            let route = Route {
                to,
                probes: vec![(other.local(), to), (probe.local(), cand)],
                split: None,
            };
            attach(g.1.as_fd(), &program(&route)).unwrap();
            let c = probe.connect(addr).unwrap();
            assert_eq!(landed(&g, &c), cand as usize, "the probe");
            let c = other.connect(addr).unwrap();
            assert_eq!(landed(&g, &c), to as usize, "the other probe");
            for _ in 0..20 {
                let c = connect_from(SocketAddr::new(ip, 0), addr);
                assert_eq!(landed(&g, &c), to as usize, "a client");
            }
        }
    }

    #[test]
    fn the_program_steers_ipv4_connections_and_the_probe() {
        check_family(IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn the_program_steers_ipv6_connections_and_the_probe() {
        check_family(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn every_mismatch_jumps_to_the_next_probe_or_the_default() {
        let route = Route {
            to: 0,
            probes: vec![
                ("127.0.0.1:4000".parse().unwrap(), 1),
                ("[::1]:4001".parse().unwrap(), 1),
            ],
            split: None,
        };
        let p = program(&route);
        assert_eq!(p.len(), 9 + 14 + 1);
        // A mismatch in the first block lands on the second block's start
        // (9); in the second, on the default route, the last instruction.
        for (i, ins) in p.iter().enumerate() {
            if ins.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                let target = i + 1 + ins.jf as usize;
                assert_eq!(target, if i < 9 { 9 } else { p.len() - 1 }, "at {i}");
            }
        }
        assert_eq!((p[8].k, p[22].k, p[23].k), (1, 1, 0));
    }

    /// A 20 % canary gets 20 % ± 5 % of 1,000 new connections, and the
    /// probe still reaches its color whatever the split says.
    #[test]
    fn a_split_sends_the_canary_its_share_at_random() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let g = group(ip).expect("127.0.0.1");
        let addr = g.0.local_addr().unwrap();
        let probe = socket2_like(SocketAddr::new(ip, 0));
        let route = Route {
            to: 0,
            probes: vec![(probe.local(), 0)],
            split: Some((1, 20)),
        };
        attach(g.0.as_fd(), &program(&route)).unwrap();
        assert_eq!(landed(&g, &probe.connect(addr).unwrap()), 0, "the probe");
        let n = 1000;
        let canary = (0..n)
            .filter(|_| landed(&g, &connect_from(SocketAddr::new(ip, 0), addr)) == 1)
            .count();
        assert!(
            (150..=250).contains(&canary),
            "{canary} of {n} went to the 20% canary"
        );
        // 0 and 100 are no split: everything goes to `to`.
        for percent in [0, 100] {
            let route = Route {
                to: 1,
                probes: vec![],
                split: Some((0, percent)),
            };
            attach(g.0.as_fd(), &program(&route)).unwrap();
            for _ in 0..20 {
                let c = connect_from(SocketAddr::new(ip, 0), addr);
                assert_eq!(landed(&g, &c), 1, "split {percent}");
            }
        }
    }
}
