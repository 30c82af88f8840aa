//! The app's listening sockets, which bgd binds and holds for its whole life.
//!
//! bgd keeps its own copy of every socket open, so an accept queue outlives
//! any process that accepts from it; bgd never accepts on them, never
//! `shutdown()`s them and never changes their `O_NONBLOCK` flag once an app
//! holds them (it belongs to the open file description that every child
//! shares). `[[listen]] nonblocking = true` sets it when the socket is
//! created or adopted, before any app runs: in gate mode on both colors'
//! sockets (each shared only by bgd and one color), in shared mode on the
//! one socket both colors share.
//!
//! In gate mode (`traffic.mode = "gate"`, the default) each color has its
//! own socket per `[[listen]]` entry, and only the receiving color gets new
//! public connections:
//! - TCP: both colors' sockets form one `SO_REUSEPORT` group; a classic BPF
//!   program ([`crate::net::steer`]) picks the receiving color's socket for each
//!   new connection, and bgd's own readiness probe (by its exact source
//!   address) reaches the candidate. Blue always calls `listen()` first, so
//!   blue is index 0 and green index 1, and neither leaves the group while
//!   bgd runs.
//! - Unix (no `SO_REUSEPORT`): each color's socket has a private name
//!   beside the public path (`.NAME.blue`, `.NAME.green`); the public path
//!   is a hard link to the receiving color's, replaced by `rename()`, which
//!   is atomic for new `connect()`s.
//!
//! The one exception: while no color has been live, the color being started
//! receives the public connections, as there is no other to serve them.
//!
//! In shared mode both colors accept from one socket.
//!
//! A socket is bound at start-up (so a port in use is reported before any
//! app runs) but `listen()` is called only when the first color starts. If
//! that first start fails, [`Listeners::unlisten`] closes and re-binds it,
//! so clients are refused rather than left waiting on a queue nobody will
//! ever accept from.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::socket::{getsockname, listen, Backlog, SockaddrStorage};

use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig, TrafficMode};
use crate::net::steer::{self, Route};

mod adopt;
mod bind;

pub(crate) use bind::remove_stale_unix_socket;
use bind::{bind_one, bind_unix, hint, placeholder};

pub(crate) struct Listeners {
    inner: Mutex<Inner>,
    /// systemd's fd store holds every socket: a restart of bgd gets them back.
    stored: AtomicBool,
    mode: TrafficMode,
}

struct Inner {
    entries: Vec<Entry>,
    /// Gate: the color new public connections go to; `None` until a color
    /// has been live.
    receiving: Option<Color>,
    /// Gate: the color being started while none has been live.
    first: Option<Color>,
    /// Gate: bgd's readiness probes under way, by their source address,
    /// and the color each must reach (a release's and a restart's can run
    /// at once).
    probes: Vec<(SocketAddr, Color)>,
    /// Gate, TCP: a canary color and its share of new connections, in
    /// percent; the receiving color gets the rest.
    canary: Option<(Color, u8)>,
}

/// One `[[listen]]` entry.
enum Entry {
    /// Shared mode: one socket for both colors.
    Shared(Socket),
    /// Gate, TCP: one socket per color in one `SO_REUSEPORT` group.
    Group { blue: Socket, green: Socket },
    /// Gate, Unix: one socket per color, each with a private name.
    Files { blue: UnixSide, green: UnixSide },
}

struct Socket {
    /// As configured, but with the port the kernel picked for a port 0, so
    /// that a re-bind (and the other color's socket) gets the same address.
    config: ListenConfig,
    fd: OwnedFd,
    state: SocketState,
    /// Handed over by systemd: never closed and re-bound by bgd.
    adopted: bool,
}

/// A color's Unix socket and the private name it is bound at.
struct UnixSide {
    socket: Socket,
    private: PathBuf,
    /// The socket file's (device, inode), to tell whether the public path
    /// still names it.
    file: (u64, u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketState {
    Bound,
    Listening,
    /// A re-bind failed; `fd` is an unbound placeholder until one succeeds.
    Unbound,
}

/// Where bgd's readiness probe connects to reach one color through the
/// address clients use.
#[derive(Debug, Clone)]
pub(crate) enum ProbeTarget {
    /// Connect from `from`'s IP (any port) to `to`; the probe's source is
    /// routed to the color with [`Listeners::route_probe`] first.
    Tcp { to: SocketAddr, from: IpAddr },
    /// Connect to the color's own socket file.
    Unix(PathBuf),
    /// Shared mode: the color's private probe socket.
    Own(SocketAddr),
}

impl Socket {
    fn bound(config: &ListenConfig, reuseport: bool) -> anyhow::Result<Socket> {
        let fd = bind_one(config, reuseport).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot bind [[listen]] {:?} at {}: {e}{}",
                config.location,
                config.name,
                config.address,
                hint(&e)
            )
        })?;
        Socket {
            config: config.clone(),
            fd,
            state: SocketState::Bound,
            adopted: false,
        }
        .with_bound_port()
    }

    fn adopted(config: &ListenConfig, a: adopt::Adopted) -> anyhow::Result<Socket> {
        bind::adopt_flags(&a.fd, config)?;
        Socket {
            config: config.clone(),
            fd: a.fd,
            state: if a.listening {
                SocketState::Listening
            } else {
                SocketState::Bound
            },
            adopted: true,
        }
        .with_bound_port()
    }

    /// Records the port the kernel picked for a configured port 0.
    fn with_bound_port(mut self) -> anyhow::Result<Socket> {
        if let ListenAddr::Tcp(addr) = &mut self.config.address {
            let bound: SockaddrStorage = getsockname(self.fd.as_raw_fd())?;
            let port = bound.as_sockaddr_in().map(|a| a.port());
            if let Some(port) = port.or_else(|| bound.as_sockaddr_in6().map(|a| a.port())) {
                addr.set_port(port);
            }
        }
        Ok(self)
    }

    fn listen(&mut self, reuseport: bool) -> io::Result<()> {
        if self.state == SocketState::Unbound {
            self.fd = bind_one(&self.config, reuseport)?;
            self.state = SocketState::Bound;
        }
        if self.state == SocketState::Bound {
            let backlog = Backlog::new(self.config.backlog).unwrap_or(Backlog::MAXCONN);
            listen(&self.fd, backlog)?;
            self.state = SocketState::Listening;
        }
        Ok(())
    }

    /// Closes and re-binds, without listening: queued clients are reset.
    fn reset(&mut self, rebind: impl FnOnce(&ListenConfig) -> io::Result<OwnedFd>) {
        if self.state != SocketState::Listening || self.adopted {
            return;
        }
        // The old socket must be closed before its address can be bound
        // again; an unbound placeholder holds the slot meanwhile.
        match placeholder() {
            Ok(p) => drop(std::mem::replace(&mut self.fd, p)),
            Err(e) => return tracing::warn!("cannot reset [[listen]] {:?}: {e}", self.config.name),
        }
        match rebind(&self.config) {
            Ok(fd) => {
                self.fd = fd;
                self.state = SocketState::Bound;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot bind [[listen]] {:?} again yet: {e}; the next release binds it",
                    self.config.name
                );
                self.state = SocketState::Unbound;
            }
        }
    }
}

impl UnixSide {
    fn bind(config: &ListenConfig, color: Color) -> anyhow::Result<UnixSide> {
        let private = private_name(config, color);
        let fd = bind_unix(&private, config).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot bind [[listen]] {:?} for {color} at {}: {e}{}",
                config.location,
                config.name,
                private.display(),
                hint(&e)
            )
        })?;
        let file = file_id(&private)?;
        let socket = Socket {
            config: config.clone(),
            fd,
            state: SocketState::Bound,
            adopted: false,
        };
        Ok(UnixSide {
            socket,
            private,
            file,
        })
    }

    /// A socket systemd passed: it keeps (or gets) its private name.
    fn adopted(config: &ListenConfig, color: Color, a: adopt::Adopted) -> anyhow::Result<UnixSide> {
        let private = private_name(config, color);
        let bound_at = match bind::socket_address(&a.fd)? {
            bind::Bound::Unix(Some(p)) => p,
            _ => anyhow::bail!(
                "{}: systemd passed an unnamed socket for [[listen]] {:?}",
                config.location,
                config.name
            ),
        };
        let file = file_id(&bound_at)?;
        if file_id(&private).ok() != Some(file) {
            link_over(&bound_at, &private)?;
        }
        Ok(UnixSide {
            socket: Socket::adopted(config, a)?,
            private,
            file,
        })
    }
}

/// `.NAME.COLOR` beside the public path: the same directory, so the same
/// filesystem, so it can be hard-linked over the public path.
fn private_name(config: &ListenConfig, color: Color) -> PathBuf {
    let ListenAddr::Unix(public) = &config.address else {
        unreachable!("only Unix entries have socket files")
    };
    let file = public.file_name().unwrap_or_default().to_string_lossy();
    public.with_file_name(format!(".{file}.{color}"))
}

fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Makes `to` a hard link to the file `from` names, replacing whatever `to`
/// was in one `rename()`.
fn link_over(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = to.with_file_name(format!(
        ".{}.bgd-tmp",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn public_path(config: &ListenConfig) -> Option<&Path> {
    match &config.address {
        ListenAddr::Unix(p) => Some(p),
        ListenAddr::Tcp(_) => None,
    }
}

/// Where a client reaches the app: a TCP address, or a Unix socket's
/// public path.
#[derive(Debug, Clone)]
pub(crate) enum Public {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The address to connect to for a socket bound to `ip`: loopback for an
/// unspecified one.
fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// The group index of `color`'s socket: blue listens first.
fn index(color: Color) -> u32 {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Entry {
    fn build(
        c: &ListenConfig,
        mode: TrafficMode,
        inherited: &mut Option<Vec<Option<(OwnedFd, String)>>>,
    ) -> anyhow::Result<Entry> {
        let tcp = matches!(c.address, ListenAddr::Tcp(_));
        let Some(inherited) = inherited else {
            return Ok(match (mode, tcp) {
                (TrafficMode::Shared, _) => Entry::Shared(Socket::bound(c, false)?),
                (TrafficMode::Gate, true) => {
                    let blue = Socket::bound(c, true)?;
                    // Green takes blue's port: a configured port 0 is now known.
                    let green = Socket::bound(&blue.config, true)?;
                    Entry::Group { blue, green }
                }
                (TrafficMode::Gate, false) => {
                    let public = public_path(c).expect("a Unix entry");
                    remove_stale_unix_socket(public).map_err(|e| {
                        anyhow::anyhow!(
                            "{}: cannot use [[listen]] {:?} at {}: {e}",
                            c.location,
                            c.name,
                            public.display()
                        )
                    })?;
                    Entry::Files {
                        blue: UnixSide::bind(c, Color::Blue)?,
                        green: UnixSide::bind(c, Color::Green)?,
                    }
                }
            });
        };
        adopt_entry(c, mode, tcp, inherited)
    }

    fn sockets(&self) -> Vec<&Socket> {
        match self {
            Entry::Shared(s) => vec![s],
            Entry::Group { blue, green } => vec![blue, green],
            Entry::Files { blue, green } => vec![&blue.socket, &green.socket],
        }
    }

    fn socket(&self, color: Color) -> &Socket {
        match (self, color) {
            (Entry::Shared(s), _) => s,
            (Entry::Group { blue, .. }, Color::Blue) => blue,
            (Entry::Group { green, .. }, Color::Green) => green,
            (Entry::Files { blue, .. }, Color::Blue) => &blue.socket,
            (Entry::Files { green, .. }, Color::Green) => &green.socket,
        }
    }

    fn config(&self) -> &ListenConfig {
        &self.sockets()[0].config
    }
}

/// An entry from the sockets systemd passed: the colors' own sockets from
/// the fd store (`NAME@blue`, `NAME@green`), else the socket unit's socket
/// (`NAME`) as blue's, and a new one for green.
fn adopt_entry(
    c: &ListenConfig,
    mode: TrafficMode,
    tcp: bool,
    inherited: &mut [Option<(OwnedFd, String)>],
) -> anyhow::Result<Entry> {
    if mode == TrafficMode::Shared {
        let a = adopt::take(c, &c.name, true, inherited)?
            .ok_or_else(|| adopt::missing(c, inherited))?;
        return Ok(Entry::Shared(Socket::adopted(c, a)?));
    }
    let blue = adopt::take(c, &format!("{}@blue", c.name), false, inherited)?;
    let green = adopt::take(c, &format!("{}@green", c.name), false, inherited)?;
    // The socket unit's socket: blue's, unless the fd store had blue's
    // already (then it is the same socket, and bgd drops its own copy).
    let unit = adopt::take(c, &c.name, true, inherited)?;
    let blue = match (blue, unit) {
        (Some(b), _) => b,
        (None, Some(u)) => {
            if tcp && !nix::sys::socket::getsockopt(&u.fd, nix::sys::socket::sockopt::ReusePort)? {
                anyhow::bail!(
                    "{}: the socket systemd passed for [[listen]] {:?} has no SO_REUSEPORT, which the traffic gate needs for the other color's socket: \
                     add ReusePort=yes to the socket unit, or set traffic.mode = \"shared\"",
                    c.location, c.name
                );
            }
            u
        }
        (None, None) => return Err(adopt::missing(c, inherited)),
    };
    if tcp {
        let blue = Socket::adopted(c, blue)?;
        let green = match green {
            Some(g) => Socket::adopted(c, g)?,
            None => Socket::bound(&blue.config, true)?,
        };
        return Ok(Entry::Group { blue, green });
    }
    let blue = UnixSide::adopted(c, Color::Blue, blue)?;
    let green = match green {
        Some(g) => UnixSide::adopted(c, Color::Green, g)?,
        None => UnixSide::bind(c, Color::Green)?,
    };
    Ok(Entry::Files { blue, green })
}

impl Inner {
    fn route(&self) -> Route {
        let to = self.receiving.or(self.first).unwrap_or(Color::Blue);
        Route {
            to: index(to),
            probes: self
                .probes
                .iter()
                .map(|(from, c)| (*from, index(*c)))
                .collect(),
            split: self.canary.map(|(c, percent)| (index(c), percent)),
        }
    }

    /// Attaches the program for the current route to every TCP group that
    /// listens.
    fn steer(&self) -> io::Result<()> {
        let program = steer::program(&self.route());
        for e in &self.entries {
            if let Entry::Group { blue, green } = e {
                let listening = [blue, green]
                    .into_iter()
                    .find(|s| s.state == SocketState::Listening);
                if let Some(s) = listening {
                    steer::attach(s.fd.as_fd(), &program)?;
                }
            }
        }
        Ok(())
    }
}

impl Listeners {
    /// Takes each `[[listen]]` socket from `inherited` (systemd's socket
    /// activation or fd store), or binds it without listening if nothing was
    /// inherited. Fails with the entry's location and a hint when a socket
    /// cannot be bound, when an inherited one does not match the config, or
    /// (gate mode) when this kernel refuses the steering program.
    pub(crate) fn adopt_or_bind(
        configs: &[ListenConfig],
        mode: TrafficMode,
        inherited: Vec<(OwnedFd, String)>,
    ) -> anyhow::Result<Listeners> {
        if mode == TrafficMode::Gate
            && configs
                .iter()
                .any(|c| matches!(c.address, ListenAddr::Tcp(_)))
        {
            steer::check_kernel()?;
        }
        let mut inherited: Option<Vec<Option<(OwnedFd, String)>>> =
            (!inherited.is_empty()).then(|| inherited.into_iter().map(Some).collect());
        let mut entries = Vec::new();
        for c in configs {
            entries.push(Entry::build(c, mode, &mut inherited)?);
        }
        for (_, name) in inherited.into_iter().flatten().flatten() {
            tracing::warn!("systemd passed a socket named {name:?} that no [[listen]] entry names: closing bgd's copy");
            crate::net::fdstore::remove_stored(&name);
        }
        Ok(Listeners {
            inner: Mutex::new(Inner {
                entries,
                receiving: None,
                first: None,
                probes: Vec::new(),
                canary: None,
            }),
            stored: AtomicBool::new(false),
            mode,
        })
    }

    /// Starts listening on every socket that is not yet listening (blue
    /// before green), re-binding any that an earlier
    /// [`unlisten`](Self::unlisten) could not, and steers: `candidate` is
    /// the color being started, which receives the public connections only
    /// while no color has been live.
    pub(crate) fn ensure_listening(&self, candidate: Color) -> io::Result<()> {
        let mut inner = self.lock();
        // The first color started gets the public connections until one is
        // live (at boot, the live color's restart; a release started
        // meanwhile does not take them over).
        if inner.receiving.is_none() && inner.first.is_none() {
            inner.first = Some(candidate);
        }
        let route = steer::program(&inner.route());
        for e in inner.entries.iter_mut() {
            match e {
                Entry::Shared(s) => s.listen(false)?,
                Entry::Group { blue, green } => {
                    blue.listen(true)?;
                    // Steer before green joins, so no connection lands on
                    // green by the kernel's hash meanwhile.
                    steer::attach(blue.fd.as_fd(), &route)?;
                    green.listen(true)?;
                }
                Entry::Files { blue, green } => {
                    blue.socket.listen(false)?;
                    green.socket.listen(false)?;
                }
            }
        }
        inner.steer()
    }

    /// Closes and re-binds every socket without listening: queued clients are
    /// reset. Only for when no color runs and none has been live. A socket
    /// that cannot be bound again right now is left unbound (and logged);
    /// the next start binds it.
    pub(crate) fn unlisten(&self) {
        // Under systemd (socket activation or the fd store) another copy of
        // the socket stays listening whatever bgd does, and bgd could not
        // bind the address again: leave such sockets alone.
        if self.stored.load(Ordering::Relaxed) {
            return;
        }
        let mut inner = self.lock();
        inner.first = None;
        inner.probes.clear();
        for e in inner.entries.iter_mut() {
            match e {
                Entry::Shared(s) => s.reset(|c| bind_one(c, false)),
                Entry::Group { blue, green } => {
                    blue.reset(|c| bind_one(c, true));
                    green.reset(|c| bind_one(c, true));
                }
                Entry::Files { blue, green } => {
                    for side in [blue, green] {
                        let private = side.private.clone();
                        side.socket.reset(|c| bind_unix(&private, c));
                        if let Ok(id) = file_id(&side.private) {
                            side.file = id;
                        }
                    }
                }
            }
        }
    }

    /// Steers new public connections to `to`, for good: TCP groups get a
    /// new program (one `setsockopt` each), Unix public paths are linked to
    /// `to`'s socket. Ends any probe route and any canary split.
    pub(crate) fn steer(&self, to: Color) -> io::Result<()> {
        let mut inner = self.lock();
        inner.receiving = Some(to);
        inner.first = None;
        inner.probes.clear();
        inner.canary = None;
        inner.steer()?;
        for e in &inner.entries {
            if let Entry::Files { blue, green } = e {
                let side = if to == Color::Blue { blue } else { green };
                let public = public_path(&side.socket.config).expect("a Unix entry");
                link_over(&side.private, public)?;
            }
        }
        Ok(())
    }

    /// Gives `canary` `percent` % of new TCP connections at random and the
    /// receiving color the rest (one `setsockopt` per group); 0 ends the
    /// split. Unix sockets cannot be split: the core refuses canaries when
    /// a Unix listener exists.
    pub(crate) fn split(&self, canary: Color, percent: u8) -> io::Result<()> {
        let mut inner = self.lock();
        inner.canary = (percent > 0).then_some((canary, percent.min(99)));
        inner.steer()
    }

    /// Why new connections cannot be split between the colors here, if
    /// they cannot: shared mode, or a Unix listener.
    pub(crate) fn no_split(&self) -> Option<String> {
        if self.mode == TrafficMode::Shared {
            return Some("traffic.mode is \"shared\" (one socket for both colors)".into());
        }
        let inner = self.lock();
        inner.entries.iter().find_map(|e| match e {
            Entry::Files { .. } => Some(format!(
                "[[listen]] {:?} is a Unix socket, which the kernel cannot split",
                e.config().name
            )),
            _ => None,
        })
    }

    /// The color that receives new public connections (gate mode; `None`
    /// in shared mode, where both colors accept).
    pub(crate) fn receiving(&self) -> Option<Color> {
        if self.mode == TrafficMode::Shared {
            return None;
        }
        let inner = self.lock();
        inner.receiving.or(inner.first)
    }

    /// Where bgd's readiness probe reaches `color` through the address
    /// clients use: the first TCP entry, else the color's first Unix
    /// socket file. `None` in shared mode, where the probe has its own
    /// socket.
    pub(crate) fn probe_target(&self, color: Color) -> Option<ProbeTarget> {
        if self.mode == TrafficMode::Shared {
            return None;
        }
        let inner = self.lock();
        let tcp = inner
            .entries
            .iter()
            .find_map(|e| match (e, &e.config().address) {
                (Entry::Group { .. }, ListenAddr::Tcp(a)) => Some(*a),
                _ => None,
            });
        if let Some(a) = tcp {
            let ip = loopback_for(a.ip());
            return Some(ProbeTarget::Tcp {
                to: SocketAddr::new(ip, a.port()),
                from: ip,
            });
        }
        inner.entries.iter().find_map(|e| match (e, color) {
            (Entry::Files { blue, .. }, Color::Blue) => {
                Some(ProbeTarget::Unix(blue.private.clone()))
            }
            (Entry::Files { green, .. }, Color::Green) => {
                Some(ProbeTarget::Unix(green.private.clone()))
            }
            _ => None,
        })
    }

    /// Sends connections from exactly `from` to `color` (bgd's probe),
    /// instead of the earlier probe to `color`; every other connection goes
    /// where it went.
    pub(crate) fn route_probe(&self, from: SocketAddr, color: Color) -> io::Result<()> {
        let mut inner = self.lock();
        inner.probes.retain(|(_, c)| *c != color);
        inner.probes.push((from, color));
        inner.steer()
    }

    /// Ends the probe route to `color`.
    pub(crate) fn clear_probe(&self, color: Color) {
        let mut inner = self.lock();
        let before = inner.probes.len();
        inner.probes.retain(|(_, c)| *c != color);
        if inner.probes.len() != before {
            if let Err(e) = inner.steer() {
                tracing::warn!("cannot end the probe route to {color}: {e}");
            }
        }
    }

    /// Gate mode: a copy of each of `color`'s listening sockets (sharing
    /// its open file description: its flags must not be changed), with the
    /// public address that now reaches the receiving color, for
    /// `rescue.rs`. Empty in shared mode.
    pub(crate) fn orphans(&self, color: Color) -> Vec<(OwnedFd, Public)> {
        if self.mode == TrafficMode::Shared {
            return Vec::new();
        }
        let inner = self.lock();
        inner
            .entries
            .iter()
            .filter_map(|e| {
                let s = e.socket(color);
                if s.state != SocketState::Listening {
                    return None;
                }
                let public = match &s.config.address {
                    ListenAddr::Tcp(a) => {
                        Public::Tcp(SocketAddr::new(loopback_for(a.ip()), a.port()))
                    }
                    ListenAddr::Unix(p) => Public::Unix(p.clone()),
                };
                let fd = s.fd.try_clone().ok()?;
                Some((fd, public))
            })
            .collect()
    }

    /// The (name, fd) pairs `color` inherits, in `[[listen]]` order. The fds
    /// stay valid while `self` lives and no [`unlisten`](Self::unlisten) runs.
    pub(crate) fn fds_for(&self, color: Color) -> Vec<(String, RawFd)> {
        self.lock()
            .entries
            .iter()
            .map(|e| {
                let s = e.socket(color);
                (s.config.name.clone(), s.fd.as_raw_fd())
            })
            .collect()
    }

    /// Connections waiting in `color`'s accept queues (TCP, gate mode),
    /// from `TCP_INFO` on bgd's copies.
    pub(crate) fn accept_queue(&self, color: Color) -> u32 {
        self.lock()
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Group { .. }))
            .map(|e| crate::net::conns::accept_queue(e.socket(color).fd.as_fd()).unwrap_or(0))
            .sum()
    }

    /// The private paths of `color`'s Unix sockets (gate mode).
    pub(crate) fn unix_paths(&self, color: Color) -> Vec<PathBuf> {
        self.lock()
            .entries
            .iter()
            .filter_map(|e| match (e, color) {
                (Entry::Files { blue, .. }, Color::Blue) => Some(blue.private.clone()),
                (Entry::Files { green, .. }, Color::Green) => Some(green.private.clone()),
                _ => None,
            })
            .collect()
    }

    /// The local ports of the TCP entries.
    pub(crate) fn ports(&self) -> Vec<u16> {
        self.lock()
            .entries
            .iter()
            .filter_map(|e| match e.config().address {
                ListenAddr::Tcp(a) => Some(a.port()),
                ListenAddr::Unix(_) => None,
            })
            .collect()
    }

    /// The inodes of every socket bgd holds for the app.
    pub(crate) fn inodes(&self) -> HashSet<u64> {
        self.lock()
            .entries
            .iter()
            .flat_map(|e| e.sockets())
            .filter_map(|s| crate::net::conns::socket_inode(s.fd.as_fd()).ok())
            .collect()
    }

    /// Every socket's name and public address (a configured port 0 as
    /// bound), for status.
    pub(crate) fn addresses(&self) -> Vec<(String, String)> {
        self.lock()
            .entries
            .iter()
            .map(|e| (e.config().name.clone(), e.config().address.to_string()))
            .collect()
    }

    /// Puts each Unix public path back if something removed or replaced it
    /// (an app that unlinks its socket path when it exits); returns what it
    /// restored, for the log.
    pub(crate) fn keep_public_paths(&self) -> Vec<String> {
        let inner = self.lock();
        let Some(to) = inner.receiving else {
            return Vec::new();
        };
        let mut restored = Vec::new();
        for e in &inner.entries {
            let Entry::Files { blue, green } = e else {
                continue;
            };
            let side = if to == Color::Blue { blue } else { green };
            let public = public_path(&side.socket.config).expect("a Unix entry");
            if file_id(public).ok() == Some(side.file) {
                continue;
            }
            let from = if file_id(&side.private).ok() == Some(side.file) {
                side.private.as_path()
            } else {
                restored.push(format!(
                    "[[listen]] {:?}: {to}'s socket has no name left (both {} and {} were removed); it is bound again at the next release",
                    side.socket.config.name,
                    public.display(),
                    side.private.display()
                ));
                continue;
            };
            match link_over(from, public) {
                Ok(()) => restored.push(format!(
                    "[[listen]] {:?}: {} was removed or replaced (an app that unlinks its socket path when it exits?); it names {to}'s socket again",
                    side.socket.config.name,
                    public.display()
                )),
                Err(e) => restored.push(format!(
                    "[[listen]] {:?}: cannot restore {}: {e}",
                    side.socket.config.name,
                    public.display()
                )),
            }
        }
        restored
    }

    /// Pushes every socket into systemd's fd store (a no-op outside
    /// systemd): a shared socket under its name, a color's as `NAME@COLOR`.
    pub(crate) fn store_in_systemd(&self) {
        let all = self.named();
        let stored = all.iter().all(|(name, fd)| {
            crate::net::fdstore::store_fd(
                // SAFETY: `fd` is one of bgd's sockets, open while `self` lives.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) },
                name,
            )
        });
        self.stored
            .store(stored && !all.is_empty(), Ordering::Relaxed);
    }

    /// Every socket, named as in systemd's fd store and as a relay hands
    /// them back: `NAME@blue` and `NAME@green` in gate mode, `NAME` in
    /// shared mode. The fds stay valid while `self` lives.
    pub(crate) fn named(&self) -> Vec<(String, RawFd)> {
        let inner = self.lock();
        let mut out = Vec::new();
        for e in &inner.entries {
            let name = &e.config().name;
            match e {
                Entry::Shared(s) => out.push((name.clone(), s.fd.as_raw_fd())),
                _ => out.extend(
                    Color::BOTH
                        .iter()
                        .map(|c| (format!("{name}@{c}"), e.socket(*c).fd.as_raw_fd())),
                ),
            }
        }
        out
    }

    /// Removes the Unix socket files bgd created, unless systemd's fd store
    /// keeps the sockets for the next bgd. Called on a clean exit.
    pub(crate) fn remove_unix_paths(&self) {
        if self.stored.load(Ordering::Relaxed) {
            return;
        }
        for e in &self.lock().entries {
            if e.sockets().iter().any(|s| s.adopted) {
                continue;
            }
            if let Some(p) = public_path(e.config()) {
                let _ = std::fs::remove_file(p);
            }
            if let Entry::Files { blue, green } = e {
                let _ = std::fs::remove_file(&blue.private);
                let _ = std::fs::remove_file(&green.private);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("listener lock is never held across a panic")
    }
}
