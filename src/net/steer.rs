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
//! A [`Route`] is tried in this order:
//! 1. bgd's own probes (readiness and repeated checks, `bgctl compare`),
//!    recognised by their exact source address and port, go to the color
//!    each reaches;
//! 2. testers (`[traffic] testers`, during a preview or a canary): a client
//!    whose source address lies in one of the networks goes to the new
//!    color;
//! 3. a canary's split: by client (the default), the source address
//!    (IPv4: all of it; IPv6: its /64) is hashed to a point in [0, 2^32)
//!    ([`client_point`]) and a point below the share goes to the canary, so
//!    one client stays on one build and a larger share only adds clients;
//!    per connection, the kernel's per-packet random number
//!    (`SKF_AD_RANDOM`, an ancillary load of classic BPF, filter.txt in the
//!    kernel's networking docs) is compared instead;
//! 4. everything else goes to `to`.
//!
//! Testers and the client hash need the IP version first: the program
//! branches to an IPv4 and an IPv6 part, each of which stores the source
//! address in the scratch memory (`M[]`) once and tests the networks
//! against it. IPv4 networks of one prefix length share one mask and a
//! compare each; IPv6 networks are a short block each. Conditional jumps
//! have 8-bit offsets and go forward only, so a run of compares is chained
//! to a `ret` at most 250 instructions ahead, and the long jumps use
//! `BPF_JA` (a 32-bit offset). A program holds at most
//! `BPF_MAXINSNS` (4,096) instructions; the config refuses a testers list
//! that would not fit ([`crate::deploy::clients::check_fits`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libc::sock_filter;

use crate::deploy::clients::{ipv4_groups, mask32, CanaryBy, Cidr, CHUNK};

#[cfg(test)]
mod bench;
#[cfg(test)]
mod cbpf;
#[cfg(test)]
mod client_tests;

/// `SO_ATTACH_REUSEPORT_CBPF` from include/uapi/asm-generic/socket.h (not
/// exported by libc for Linux).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// The multiplier of the client hash: 2^32 divided by the golden ratio
/// (Knuth's multiplicative hashing, TAOCP vol. 3, 6.4). Multiplying
/// consecutive keys by it spreads them evenly over [0, 2^32).
pub const GOLDEN: u32 = 0x9E37_79B1;

/// Where new connections go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The group index of the socket that receives every new connection.
    pub to: u32,
    /// A connection from exactly one of these sources goes to its index
    /// instead (bgd's own probes; at most a few at once).
    pub probes: Vec<(SocketAddr, u32)>,
    /// A canary: the group index that gets this share (1 to 99 percent)
    /// of the other connections, picked as `split_by` says.
    pub split: Option<(u32, u8)>,
    /// How `split` picks: by client address (the default) or at random.
    pub split_by: CanaryBy,
    /// Clients whose source address lies in one of these networks go to
    /// this index (`[traffic] testers`, during a preview or a canary).
    pub testers: Option<(u32, Vec<Cidr>)>,
}

/// Where the client hash puts `ip` in [0, 2^32): IPv4 the address times
/// [`GOLDEN`]; IPv6 its /64, the two words `h` and `l` as
/// `(h * GOLDEN + l) * GOLDEN`, all modulo 2^32. The program computes the
/// same; a client whose point is below `percent`% of 2^32 ([`threshold`])
/// gets the canary. The tests and the benchmark check the program against
/// it.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the program computes it; tests check it")
)]
pub fn client_point(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => u32::from(a).wrapping_mul(GOLDEN),
        IpAddr::V6(a) => {
            let o = a.octets();
            let h = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
            let l = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
            h.wrapping_mul(GOLDEN).wrapping_add(l).wrapping_mul(GOLDEN)
        }
    }
}

/// The share `percent` (0 to 100) of 2^32: the points below it get the
/// canary.
pub fn threshold(percent: u8) -> u32 {
    ((u64::from(percent.min(100)) << 32) / 100).min(u64::from(u32::MAX)) as u32
}

/// The program for `route`: one instruction without probes, 9 (IPv4) or
/// 14 (IPv6) more per probe; a random split adds 3; testers or the client
/// hash add the dispatch by IP version (29 at most, both splits included)
/// and the testers' ([`crate::deploy::clients::instructions`]).
pub fn program(route: &Route) -> Vec<sock_filter> {
    let mut p = probes(&route.probes);
    p.extend(clients(route));
    p
}

/// One block per probe: it tests the probe's source and returns its index;
/// a mismatch jumps to the next block, and after the last to what follows.
fn probes(probes: &[(SocketAddr, u32)]) -> Vec<sock_filter> {
    let net = libc::SKF_NET_OFF as u32;
    let mut p = Vec::new();
    for (from, to) in probes {
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
        p.extend(past_block(b));
    }
    p
}

/// Sets each `jeq_else` of `block` to jump past the block's end.
fn past_block(block: Vec<sock_filter>) -> Vec<sock_filter> {
    let len = block.len();
    block
        .into_iter()
        .enumerate()
        .map(|(i, mut ins)| {
            if ins.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 && ins.jf == 0 {
                ins.jf = (len - i - 1) as u8;
            }
            ins
        })
        .collect()
}

/// What follows the probes: testers, the split, the default route.
fn clients(route: &Route) -> Vec<sock_filter> {
    let split = route.split.filter(|(_, p)| (1..=99).contains(p));
    let testers = route.testers.as_ref().filter(|(_, l)| !l.is_empty());
    let by_client = split.is_some() && route.split_by == CanaryBy::Client;
    if testers.is_none() && !by_client {
        return random_tail(route.to, split);
    }
    let v4 = family(route, Family::V4, testers, split);
    let v6 = family(route, Family::V6, testers, split);
    let net = libc::SKF_NET_OFF as u32;
    let mut p = vec![
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, net),
        stmt(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 4),
        // IPv4: to the IPv4 part, right after the JA below.
        jump(libc::BPF_JEQ, 4, 3, 0),
        // IPv6: to the JA to the IPv6 part.
        jump(libc::BPF_JEQ, 6, 1, 0),
        // Neither (not for TCP): the default.
        ret(route.to),
        stmt(libc::BPF_JMP | libc::BPF_JA, v4.len() as u32),
    ];
    p.extend(v4);
    p.extend(v6);
    p
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    V4,
    V6,
}

/// The part of the program for one IP version: the source address into
/// the scratch memory (IPv4 `M[0]`; IPv6 `M[0..4]`, one word each), each
/// tester of that version, then the split and the default.
fn family(
    route: &Route,
    fam: Family,
    testers: Option<&(u32, Vec<Cidr>)>,
    split: Option<(u32, u8)>,
) -> Vec<sock_filter> {
    let net = libc::SKF_NET_OFF as u32;
    let mut p = Vec::new();
    let (first, words) = match fam {
        Family::V4 => (net + 12, 1),
        Family::V6 => (net + 8, 4),
    };
    for i in 0..words {
        p.push(stmt(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            first + 4 * i,
        ));
        p.push(stmt(libc::BPF_ST, i));
    }
    if let Some((to, list)) = testers {
        match fam {
            Family::V4 => {
                for (prefix, nets) in ipv4_groups(list) {
                    p.extend(ipv4_group(prefix, &nets, *to));
                }
            }
            Family::V6 => {
                for c in list {
                    if let IpAddr::V6(a) = c.addr {
                        p.extend(ipv6_tester(a.octets(), c.prefix, *to));
                    }
                }
            }
        }
    }
    match split {
        Some((canary, percent)) if route.split_by == CanaryBy::Client => {
            let mem = libc::BPF_LD | libc::BPF_W | libc::BPF_MEM;
            p.push(stmt(mem, 0));
            p.push(stmt(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K, GOLDEN));
            if fam == Family::V6 {
                // A = (h * GOLDEN + l) * GOLDEN: the /64.
                p.push(stmt(libc::BPF_LDX | libc::BPF_W | libc::BPF_MEM, 1));
                p.push(stmt(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_X, 0));
                p.push(stmt(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K, GOLDEN));
            }
            p.extend(below_share(canary, percent, route.to));
        }
        split => p.extend(random_tail(route.to, split)),
    }
    p
}

/// The IPv4 networks of one prefix length: the client's address from
/// `M[0]`, masked once, then compared with each network; runs of at most
/// [`CHUNK`] compares share a return (a match jumps to it: conditional
/// jumps reach 255 instructions ahead), and a jump past it follows each
/// run. A /0 holds every address: it is the return alone.
fn ipv4_group(prefix: u8, nets: &[u32], to: u32) -> Vec<sock_filter> {
    if prefix == 0 {
        return vec![ret(to)];
    }
    let mut b = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_MEM, 0)];
    if prefix < 32 {
        b.push(stmt(
            libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
            mask32(prefix),
        ));
    }
    for run in nets.chunks(CHUNK) {
        for (i, net) in run.iter().enumerate() {
            // To the run's return: past the rest of the run and the jump.
            b.push(jump(libc::BPF_JEQ, *net, (run.len() - i) as u8, 0));
        }
        b.push(stmt(libc::BPF_JMP | libc::BPF_JA, 1));
        b.push(ret(to));
    }
    b
}

/// One IPv6 network: for each 32-bit word with prefix bits, load it from
/// `M[i]`, mask a partial word, compare; a mismatch skips to the end of
/// the block; a match of every word returns `to`.
fn ipv6_tester(octets: [u8; 16], prefix: u8, to: u32) -> Vec<sock_filter> {
    let mut b = Vec::new();
    for (i, w) in octets.chunks(4).enumerate() {
        let bits = (i32::from(prefix) - 32 * i as i32).clamp(0, 32) as u8;
        if bits == 0 {
            break;
        }
        let word = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
        b.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_MEM, i as u32));
        if bits < 32 {
            b.push(stmt(
                libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
                mask32(bits),
            ));
        }
        b.push(jeq_else(word & mask32(bits)));
    }
    b.push(ret(to));
    past_block(b)
}

/// `A < threshold(percent)`: the canary; else `to`.
fn below_share(canary: u32, percent: u8, to: u32) -> Vec<sock_filter> {
    vec![
        // A >= threshold: past the canary's return, to `to`.
        jump(libc::BPF_JGE, threshold(percent), 1, 0),
        ret(canary),
        ret(to),
    ]
}

/// Where a connection that is no probe goes: `to`, or split at random.
fn random_tail(to: u32, split: Option<(u32, u8)>) -> Vec<sock_filter> {
    let Some((canary, percent)) = split.filter(|(_, p)| (1..=99).contains(p)) else {
        return vec![ret(to)];
    };
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let mut p = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, random)];
    p.extend(below_share(canary, percent, to));
    p
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
        // Both kinds of split, and testers: the random load, the scratch
        // memory and the multiplication a canary by client needs must be
        // accepted too.
        let tester = |s: &str| Cidr::parse(s).map(|(c, _)| c).ok();
        let testers = [tester("127.0.0.77"), tester("2001:db8::/48")];
        for split_by in [CanaryBy::Connection, CanaryBy::Client] {
            let route = Route {
                to: 1,
                split: Some((0, 50)),
                split_by,
                testers: Some((0, testers.iter().flatten().copied().collect())),
                ..Route::default()
            };
            attach(keep[0].as_fd(), &program(&route))?;
        }
        Ok(())
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

/// A conditional jump on `A op k`: `jt` ahead if true, `jf` if false.
fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
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
    pub(super) fn group(ip: IpAddr) -> Option<(TcpListener, TcpListener)> {
        let a = reuseport_listener(SocketAddr::new(ip, 0))?;
        let b = reuseport_listener(a.local_addr().ok()?)?;
        Some((a, b))
    }

    pub(super) fn reuseport_listener(addr: SocketAddr) -> Option<TcpListener> {
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
    pub(super) fn landed(g: &(TcpListener, TcpListener), client: &TcpStream) -> usize {
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
    pub(super) fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
        let s = socket2_like(from);
        s.connect(to).unwrap()
    }

    pub(super) struct Bound(OwnedFd);
    impl Bound {
        pub(super) fn connect(self, to: SocketAddr) -> std::io::Result<TcpStream> {
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
        pub(super) fn local(&self) -> SocketAddr {
            let a: nix::sys::socket::SockaddrStorage =
                nix::sys::socket::getsockname(self.0.as_raw_fd()).unwrap();
            if let Some(a) = a.as_sockaddr_in() {
                SocketAddr::V4((*a).into())
            } else {
                SocketAddr::V6((*a.as_sockaddr_in6().unwrap()).into())
            }
        }
    }

    pub(super) fn socket2_like(from: SocketAddr) -> Bound {
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
                ..Route::default()
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
                ..Route::default()
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
            ..Route::default()
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
            split_by: CanaryBy::Connection,
            ..Route::default()
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
                ..Route::default()
            };
            attach(g.0.as_fd(), &program(&route)).unwrap();
            for _ in 0..20 {
                let c = connect_from(SocketAddr::new(ip, 0), addr);
                assert_eq!(landed(&g, &c), 1, "split {percent}");
            }
        }
    }
}
