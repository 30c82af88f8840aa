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
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig, TrafficMode};
use crate::net::steer;

mod adopt;
mod bind;
mod entry;
mod guard;
mod order;
mod route;
mod socket;
mod unix;
mod waiting;

pub(crate) use bind::remove_stale_unix_socket;
use bind::{bind_one, bind_unix};
use route::loopback_for;
pub(crate) use route::ProbeTarget;
use socket::{Socket, SocketState};
use unix::{file_id, UnixSide};

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
    /// What the last [`Listeners::guard`] found wrong (each logged once).
    alerted: Vec<String>,
    /// Gate, TCP: the testers, how a canary splits, and where the testers
    /// go now.
    clients: route::Clients,
    /// Gate: `bgctl compare`'s requests under way, by their exact source
    /// address, and the color each must reach.
    compares: Vec<(SocketAddr, Color)>,
    /// How many sockets [`guard`](Listeners::guard) or a start replaced
    /// since bgd started (see `guard.rs`): whoever keeps copies of the
    /// sockets outside bgd must take the fresh ones.
    renewed: u64,
    /// Where the groups' order is recorded (`order.rs`), and what was
    /// written there last.
    order_file: Option<PathBuf>,
    saved: order::Orders,
}

impl Inner {
    /// Listens on every socket that does not yet (blue before green),
    /// tracking each group's order and steering as each joins.
    fn listen_all(&mut self) -> io::Result<()> {
        let route = self.color_route();
        for e in self.entries.iter_mut() {
            match e {
                Entry::Shared(s) => {
                    s.listen(false)?;
                }
                Entry::Group { blue, green, order } => {
                    if blue.listen(true)? {
                        order.push(Color::Blue);
                    }
                    // Steer before green joins, so no connection lands on
                    // green by the kernel's hash meanwhile.
                    steer::attach(blue.fd.as_fd(), &steer::program(&route.indexed(order)))?;
                    if green.listen(true)? {
                        order.push(Color::Green);
                    }
                }
                Entry::Files { blue, green } => {
                    blue.socket.listen(false)?;
                    green.socket.listen(false)?;
                }
            }
        }
        Ok(())
    }
}

/// One `[[listen]]` entry.
/// Where a client reaches the app: a TCP address, or a Unix socket's
/// public path.
#[derive(Debug, Clone)]
pub(crate) enum Public {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

enum Entry {
    /// Shared mode: one socket for both colors.
    Shared(Socket),
    /// Gate, TCP: one socket per color in one `SO_REUSEPORT` group.
    /// `order` is the group's socket array as the kernel keeps it: a socket
    /// that listens is appended, one that stops listening is replaced by
    /// the last (see `guard.rs`); the program's indexes come from it.
    Group {
        blue: Socket,
        green: Socket,
        order: Vec<Color>,
    },
    /// Gate, Unix: one socket per color, each with a private name.
    Files { blue: UnixSide, green: UnixSide },
}

impl Listeners {
    /// Takes each `[[listen]]` socket from `inherited` (systemd's socket
    /// activation or fd store), or binds it without listening if nothing was
    /// inherited. Fails with the entry's location and a hint when a socket
    /// cannot be bound, when an inherited one does not match the config, or
    /// (gate mode) when this kernel refuses the steering program.
    ///
    /// `order_file` (`root/run/group.json`) records each group's order
    /// for the next bgd, and tells this one the order of sockets taken
    /// back that already listen (see `order.rs`).
    pub(crate) fn adopt_or_bind(
        configs: &[ListenConfig],
        mode: TrafficMode,
        inherited: Vec<(OwnedFd, String)>,
        order_file: Option<PathBuf>,
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
        let recorded = order_file.as_deref().map(order::load).unwrap_or_default();
        let mut entries = Vec::new();
        for c in configs {
            entries.push(Entry::build(c, mode, &mut inherited, &recorded)?);
        }
        for (_, name) in inherited.into_iter().flatten().flatten() {
            tracing::warn!("systemd passed a socket named {name:?} that no [[listen]] entry names: closing bgd's copy");
            crate::net::fdstore::remove_stored(&name);
        }
        let mut inner = Inner {
            entries,
            receiving: None,
            first: None,
            probes: Vec::new(),
            canary: None,
            alerted: Vec::new(),
            clients: route::Clients::default(),
            compares: Vec::new(),
            renewed: 0,
            order_file,
            saved: recorded,
        };
        inner.save_order();
        Ok(Listeners {
            inner: Mutex::new(inner),
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
        // What an app did to the sockets it inherited is put right first.
        inner.repair(Some(candidate));
        let listened = inner.listen_all();
        inner.save_order();
        listened?;
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
                Entry::Group { blue, green, order } => {
                    blue.reset(|c| bind_one(c, true));
                    green.reset(|c| bind_one(c, true));
                    // An adopted socket is never reset: it stays in the
                    // group, and with two sockets the one left is at 0.
                    let listens = |s: &Socket| s.state == SocketState::Listening;
                    let (b, g) = (listens(blue), listens(green));
                    order.retain(|c| match c {
                        Color::Blue => b,
                        Color::Green => g,
                    });
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
        inner.save_order();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("listener lock is never held across a panic")
    }
}
