//! The app's listening sockets, which bgd binds and holds for its whole life.
//!
//! bgd keeps its own copy of every socket open, so the kernel's accept queue
//! outlives any color; bgd never accepts on them, never `shutdown()`s them and
//! never changes their `O_NONBLOCK` flag (it belongs to the open file
//! description that every child shares).
//!
//! A socket is bound at start-up (so a port in use is reported before any
//! app runs) but `listen()` is called only when the first color starts. If
//! that first start fails, [`Listeners::unlisten`] closes and re-binds it, so
//! clients are refused rather than left waiting on a queue nobody will ever
//! accept from.
//!
//! Today both colors get the same sockets ([`Listeners::fds_for`]); the
//! color is an argument so that a per-color `SO_REUSEPORT` mode can hand each
//! color its own socket in one group without changing the callers.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr,
};

use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig};

pub struct Listeners {
    sockets: Mutex<Vec<Socket>>,
    /// systemd's fd store holds every socket: a restart of bgd gets them back.
    stored: std::sync::atomic::AtomicBool,
}

struct Socket {
    /// As configured, but with the port the kernel picked for a port 0, so
    /// that a re-bind gets the same address.
    config: ListenConfig,
    fd: OwnedFd,
    state: SocketState,
    /// Handed over by systemd: never closed and re-bound by bgd.
    adopted: bool,
}

impl Socket {
    /// Records the port the kernel picked for a configured port 0.
    fn with_bound_port(mut self) -> io::Result<Socket> {
        if let ListenAddr::Tcp(addr) = &mut self.config.address {
            let bound: SockaddrStorage = getsockname(self.fd.as_raw_fd())?;
            let port = bound.as_sockaddr_in().map(|a| a.port());
            if let Some(port) = port.or_else(|| bound.as_sockaddr_in6().map(|a| a.port())) {
                addr.set_port(port);
            }
        }
        Ok(self)
    }
}

/// Finds `c`'s socket among those systemd passed: by name, or by address
/// when systemd gave no names; checks its type and address.
fn adopt(c: &ListenConfig, inherited: &mut [Option<(OwnedFd, String)>]) -> anyhow::Result<Socket> {
    let by_name = inherited
        .iter()
        .position(|i| i.as_ref().is_some_and(|(_, n)| n == &c.name));
    let by_addr = || {
        inherited.iter().position(|i| {
            i.as_ref().is_some_and(|(fd, n)| {
                (n == "unknown" || n.is_empty())
                    && socket_address(fd).is_ok_and(|a| a.matches(&c.address))
            })
        })
    };
    let Some(i) = by_name.or_else(by_addr) else {
        let names: Vec<&str> = inherited
            .iter()
            .flatten()
            .map(|(_, n)| n.as_str())
            .collect();
        anyhow::bail!(
            "{}: systemd passed no socket for [[listen]] {:?} (it passed {names:?}): give the socket unit a ListenStream= with FileDescriptorName={}, \
             or stop the service fully (`systemctl stop`) so its fd store is flushed",
            c.location, c.name, c.name
        );
    };
    let (fd, name) = inherited[i].take().expect("position found it");
    // Duplicates (the same socket from the socket unit and the fd store) are dropped.
    for dup in inherited.iter_mut() {
        if dup.as_ref().is_some_and(|(_, n)| n == &name) {
            *dup = None;
        }
    }
    let kind: SockType = getsockopt(&fd, sockopt::SockType)?;
    if kind != SockType::Stream {
        anyhow::bail!("{}: systemd passed socket {name:?} of type {kind:?}; [[listen]] {:?} needs a stream socket (ListenStream=)", c.location, c.name);
    }
    let actual = socket_address(&fd)?;
    if !actual.matches(&c.address) {
        anyhow::bail!(
                        "{}: systemd passed socket {name:?} bound to {actual}, but [[listen]] {:?} says {}: make the socket unit's ListenStream= and the config agree \
             (if the address changed in the config, the old socket comes from the fd store: `systemctl stop` the service once to flush it)",
            c.location, c.name, c.address
        );
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn)?;
    let state = if listening {
        SocketState::Listening
    } else {
        SocketState::Bound
    };
    tracing::info!("took [[listen]] {:?} ({actual}) from systemd", c.name);
    Ok(Socket {
        config: c.clone(),
        fd,
        state,
        adopted: true,
    })
}

/// What a socket is bound to.
enum Bound {
    Tcp(std::net::SocketAddr),
    Unix(Option<std::path::PathBuf>),
}

impl Bound {
    /// A configured port 0 matches any port on the same IP.
    fn matches(&self, want: &ListenAddr) -> bool {
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

fn socket_address(fd: &OwnedFd) -> io::Result<Bound> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketState {
    Bound,
    Listening,
    /// A re-bind failed; `fd` is an unbound placeholder until one succeeds.
    Unbound,
}

impl Listeners {
    /// Takes each `[[listen]]` socket from `inherited` (systemd's socket
    /// activation or fd store), or binds it without listening if nothing was
    /// inherited. Fails with the entry's location and a hint when a socket
    /// cannot be bound, or when an inherited one does not match the config.
    pub fn adopt_or_bind(
        configs: &[ListenConfig],
        inherited: Vec<(OwnedFd, String)>,
    ) -> anyhow::Result<Listeners> {
        let from_systemd = !inherited.is_empty();
        let mut inherited: Vec<Option<(OwnedFd, String)>> =
            inherited.into_iter().map(Some).collect();
        let mut sockets = Vec::new();
        for c in configs {
            let socket = if from_systemd {
                adopt(c, &mut inherited)?
            } else {
                let fd = bind_one(c).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot bind [[listen]] {:?} at {}: {e}{}",
                        c.location,
                        c.name,
                        c.address,
                        hint(&e)
                    )
                })?;
                Socket {
                    config: c.clone(),
                    fd,
                    state: SocketState::Bound,
                    adopted: false,
                }
            };
            sockets.push(socket.with_bound_port()?);
        }
        for (_, name) in inherited.into_iter().flatten() {
            tracing::warn!("systemd passed a socket named {name:?} that no [[listen]] entry names: closing bgd's copy");
            crate::systemd::remove_stored(&name);
        }
        Ok(Listeners {
            sockets: Mutex::new(sockets),
            stored: Default::default(),
        })
    }

    /// Starts listening on every socket that is not yet listening, re-binding
    /// any that an earlier [`unlisten`](Self::unlisten) could not.
    pub fn ensure_listening(&self) -> io::Result<()> {
        for s in self.lock().iter_mut() {
            if s.state == SocketState::Unbound {
                s.fd = bind_one(&s.config)?;
                s.state = SocketState::Bound;
            }
            if s.state == SocketState::Bound {
                let backlog = Backlog::new(s.config.backlog).unwrap_or(Backlog::MAXCONN);
                listen(&s.fd, backlog)?;
                s.state = SocketState::Listening;
            }
        }
        Ok(())
    }

    /// Closes and re-binds every socket without listening: queued clients are
    /// reset. Only for when no color runs and none has been live. A socket
    /// that cannot be bound again right now is left unbound (and logged);
    /// the next start binds it.
    pub fn unlisten(&self) {
        // Under systemd (socket activation or the fd store) another copy of
        // the socket stays listening whatever bgd does, and bgd could not
        // bind the address again: leave such sockets alone.
        if self.stored.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for s in self
            .lock()
            .iter_mut()
            .filter(|s| s.state == SocketState::Listening && !s.adopted)
        {
            // The old socket must be closed before its address can be bound
            // again; an unbound placeholder holds the slot meanwhile.
            match placeholder() {
                Ok(p) => drop(std::mem::replace(&mut s.fd, p)),
                Err(e) => {
                    tracing::warn!("cannot reset [[listen]] {:?}: {e}", s.config.name);
                    continue;
                }
            }
            match bind_one(&s.config) {
                Ok(fd) => {
                    s.fd = fd;
                    s.state = SocketState::Bound;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot bind [[listen]] {:?} again yet: {e}; the next release binds it",
                        s.config.name
                    );
                    s.state = SocketState::Unbound;
                }
            }
        }
    }

    /// The (name, fd) pairs a color inherits, in `[[listen]]` order. The fds
    /// stay valid while `self` lives and no [`unlisten`](Self::unlisten) runs.
    pub fn fds_for(&self, _color: Color) -> Vec<(String, RawFd)> {
        self.lock()
            .iter()
            .map(|s| (s.config.name.clone(), s.fd.as_raw_fd()))
            .collect()
    }

    /// Every socket's name and bound address, for status.
    pub fn addresses(&self) -> Vec<crate::protocol::ListenStatus> {
        self.lock()
            .iter()
            .map(|s| crate::protocol::ListenStatus {
                name: s.config.name.clone(),
                address: s.config.address.to_string(),
            })
            .collect()
    }

    /// Pushes every socket into systemd's fd store (a no-op outside systemd).
    pub fn store_in_systemd(&self) {
        let sockets = self.lock();
        let all = sockets
            .iter()
            .all(|s| crate::systemd::store_fd(&s.fd, &s.config.name));
        self.stored.store(
            all && !sockets.is_empty(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Removes the Unix socket files bgd created, unless systemd's fd store
    /// keeps the sockets for the next bgd. Called on a clean exit.
    pub fn remove_unix_paths(&self) {
        if self.stored.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for s in self.lock().iter().filter(|s| !s.adopted) {
            if let ListenAddr::Unix(p) = &s.config.address {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Socket>> {
        self.sockets
            .lock()
            .expect("listener lock is never held across a panic")
    }
}

fn placeholder() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn bind_one(c: &ListenConfig) -> io::Result<OwnedFd> {
    match &c.address {
        ListenAddr::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
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
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(c.mode))?;
            Ok(fd)
        }
    }
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

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => " (another process holds this address: stop it or pick another port)",
        Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE; Unix paths need a writable directory)",
        Some(libc::ENOENT) => " (the socket's directory does not exist: create it first)",
        Some(libc::EADDRNOTAVAIL) => " (no interface on this machine has that IP address)",
        _ => "",
    }
}
