//! Binding one socket, and what a socket is bound to.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    SockaddrIn6, SockaddrStorage, UnixAddr,
};

use crate::config::{ListenAddr, ListenConfig};

/// What a socket is bound to.
pub(super) enum Bound {
    Tcp(std::net::SocketAddr),
    Unix(Option<std::path::PathBuf>),
}

impl Bound {
    /// A configured port 0 matches any port on the same IP.
    pub(super) fn matches(&self, want: &ListenAddr) -> bool {
        match (self, want) {
            (Bound::Tcp(a), ListenAddr::Tcp(w)) => {
                a.ip() == w.ip() && (w.port() == 0 || a.port() == w.port())
            }
            (Bound::Unix(Some(a)), ListenAddr::Unix(w)) => a == w,
            _ => false,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Tcp(a) => write!(f, "{a}"),
            Bound::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            Bound::Unix(None) => write!(f, "an unnamed Unix socket"),
        }
    }
}

pub(super) fn socket_address(fd: &OwnedFd) -> io::Result<Bound> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    if let Some(a) = addr.as_sockaddr_in() {
        return Ok(Bound::Tcp(std::net::SocketAddr::V4(
            std::net::SocketAddrV4::from(*a),
        )));
    }
    if let Some(a) = addr.as_sockaddr_in6() {
        return Ok(Bound::Tcp(std::net::SocketAddr::V6(
            std::net::SocketAddrV6::from(*a),
        )));
    }
    if let Some(a) = addr.as_unix_addr() {
        return Ok(Bound::Unix(a.path().map(|p| p.to_path_buf())));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "not an IP or Unix socket",
    ))
}

/// An unbound socket that holds a slot while a re-bind is pending.
pub(super) fn placeholder() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// The flags of a new socket for `[[listen]]` with `nonblocking`: never
/// changed after bind, so no holder ever sees the flag flip.
fn flags(nonblocking: bool) -> SockFlag {
    if nonblocking {
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK
    } else {
        SockFlag::SOCK_CLOEXEC
    }
}

/// Binds `c`'s address without listening. `reuseport`: the socket joins
/// an `SO_REUSEPORT` group with the other color's (gate mode). With
/// `c.nonblocking` the socket is `O_NONBLOCK` from its creation.
pub(super) fn bind_one(c: &ListenConfig, reuseport: bool) -> io::Result<OwnedFd> {
    match &c.address {
        ListenAddr::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family, SockType::Stream, flags(c.nonblocking), None)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            if reuseport {
                setsockopt(&fd, sockopt::ReusePort, &true)?;
            }
            match addr {
                std::net::SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(*a))?,
                std::net::SocketAddr::V6(a) => {
                    // "[::]:80" means IPv6 only, as written; list 0.0.0.0:80 too for v4.
                    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
                    bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))?
                }
            }
            Ok(fd)
        }
        ListenAddr::Unix(path) => bind_unix(path, c),
    }
}

/// Binds a Unix stream socket at `path` (a stale socket file there is
/// removed first) and gives the file `c.mode`; `O_NONBLOCK` with
/// `c.nonblocking`.
pub(super) fn bind_unix(path: &Path, c: &ListenConfig) -> io::Result<OwnedFd> {
    remove_stale_unix_socket(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        flags(c.nonblocking),
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(c.mode))?;
    Ok(fd)
}

/// `[[listen]] nonblocking = true` on a socket systemd passed: sets
/// `O_NONBLOCK` before any app of this bgd holds it (what the socket
/// unit's `NonBlocking=yes` does). `false` leaves the flag as systemd set it.
pub(super) fn adopt_flags(fd: &OwnedFd, c: &ListenConfig) -> io::Result<()> {
    if c.nonblocking {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let now = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(now | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// A socket file left by a dead process is removed; one that still accepts
/// connections, or a file that is not a socket, is refused.
pub fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; move it away or pick another path",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use: another process accepts on it (is another bgd running?)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// What to do about a failed bind.
pub(super) fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => " (another process holds this address: stop it or pick another port)",
        Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE; Unix paths need a writable directory)",
        Some(libc::ENOENT) => " (the socket's directory does not exist: create it first)",
        Some(libc::EADDRNOTAVAIL) => " (no interface on this machine has that IP address)",
        _ => "",
    }
}
