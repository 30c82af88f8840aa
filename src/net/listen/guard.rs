//! Nothing outside bgd breaks its steering (issue 25).
//!
//! The steering program indexes the `SO_REUSEPORT` group's socket array,
//! which the kernel keeps: a socket that listens is appended, and one that
//! stops listening (closed, or `shutdown(2)`) is replaced by the last one.
//! Others can change that array and the sockets in it:
//! - an app can `shutdown()` the socket it inherited (some do in their
//!   drain): it leaves the group and can never listen again (`listen()`
//!   answers EINVAL). bgd makes a fresh socket for that color, records the
//!   group's new order and rebuilds the program;
//! - an app can call `listen()` again with another backlog, or flip
//!   `O_NONBLOCK` on the open file description it shares with bgd: bgd puts
//!   the configured values back just before that color starts again, and
//!   never while a process of the color may hold the socket (the flag is
//!   the running app's too: tokio panics on a blocking fd);
//! - another process (a second bgd with a copy of the config, run as the
//!   same user) can bind the same address with `SO_REUSEPORT`, join the
//!   group and attach its own program. A bgd refuses to start on an address
//!   another process listens on, naming it; a socket that joins later is
//!   reported (log and status), and bgd attaches its own program again.
//!
//! [`Inner::repair`] runs before each start and each switch, and
//! [`Listeners::guard`] every few seconds from the daemon.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, listen, sockopt};

use super::bind::bind_one;
use super::{Entry, Inner, Listeners, Socket, SocketState};
use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig};
use crate::net::conns::{self, TcpState};
use crate::net::steer;

impl Inner {
    /// Puts right what an app did to its sockets: a socket that no longer
    /// listens is replaced by a fresh one (the group's order updated); for
    /// `starting`, the color about to start (nothing of it runs), a changed
    /// backlog or `O_NONBLOCK` is put back. Logs each repair and returns
    /// what it did. The caller attaches the program afterwards.
    pub(super) fn repair(&mut self, starting: Option<Color>) -> Vec<String> {
        let (mut done, mut renewed) = (Vec::new(), 0);
        let route = self.color_route();
        for e in self.entries.iter_mut() {
            let Entry::Group { blue, green, order } = e else {
                continue;
            };
            for color in Color::BOTH {
                let (s, other) = match color {
                    Color::Blue => (&mut *blue, &*green),
                    Color::Green => (&mut *green, &*blue),
                };
                if s.state != SocketState::Listening {
                    continue;
                }
                if let Some(m) = renew_if_dead(color, s, order, |order| {
                    // Before the fresh socket joins at the end, the program
                    // must already index the group without the dead one:
                    // the old program's index for the other color may be
                    // the slot the fresh socket takes, where nobody accepts.
                    if other.state == SocketState::Listening {
                        let program = steer::program(&route.indexed(order));
                        if let Err(e) = steer::attach(other.fd.as_fd(), &program) {
                            tracing::warn!("cannot steer before a fresh socket joins: {e}");
                        }
                    }
                }) {
                    done.push(m);
                    renewed += 1;
                    continue;
                }
                if starting == Some(color) {
                    done.extend(restore_settings(color, s));
                }
            }
        }
        for m in &done {
            tracing::warn!("{m}");
        }
        self.renewed += renewed;
        self.save_order();
        done
    }

    /// The inodes of every socket bgd holds for the app.
    fn own_inodes(&self) -> HashSet<u64> {
        (self.entries.iter())
            .flat_map(|e| e.sockets())
            .filter_map(|s| conns::socket_inode(s.fd.as_fd()).ok())
            .collect()
    }

    /// Listening TCP sockets of other processes on the address of one of
    /// bgd's TCP entries, said in one line each (with who holds them).
    fn intruders(&self) -> Vec<String> {
        let addrs: Vec<(String, SocketAddr)> = (self.entries.iter())
            .filter(|e| !matches!(e, Entry::Files { .. }))
            .filter_map(|e| match e.config().address {
                ListenAddr::Tcp(a) => Some((e.config().name.clone(), a)),
                ListenAddr::Unix(_) => None,
            })
            .collect();
        if addrs.is_empty() {
            return Vec::new();
        }
        let Ok(table) = conns::sockets(&[TcpState::Listen]) else {
            return Vec::new();
        };
        let ours = self.own_inodes();
        let mut out = Vec::new();
        for (name, addr) in addrs {
            for e in table.iter().filter(|e| overlaps(e.local, addr)) {
                if e.inode == 0 || ours.contains(&e.inode) {
                    continue;
                }
                out.push(format!(
                    "another process listens on [[listen]] {name:?}'s address {} ({}): in bgd's SO_REUSEPORT group it gets new connections meant for the app, and its own steering program may send them to the wrong color; stop it (each bgd needs an address of its own)",
                    e.local,
                    holders(e.inode)
                ));
            }
        }
        out
    }
}

impl Listeners {
    /// The periodic look (every few seconds, from the daemon): repairs the
    /// sockets, attaches bgd's program again (another process, or an app
    /// through its copy of a socket, may have replaced it) and returns what
    /// is wrong that bgd cannot put right: other processes' sockets in its
    /// groups. Each new alert is logged as an error once.
    pub(crate) fn guard(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.repair(None);
        let alerts = inner.intruders();
        if let Err(e) = inner.steer() {
            tracing::warn!("cannot attach the steering program again: {e}");
        }
        for a in alerts.iter().filter(|a| !inner.alerted.contains(*a)) {
            tracing::error!("{a}");
        }
        for a in inner.alerted.iter().filter(|a| !alerts.contains(*a)) {
            tracing::info!("resolved: {a}");
        }
        inner.alerted = alerts.clone();
        alerts
    }

    /// How many sockets were replaced by fresh ones since bgd started (an
    /// app shut its socket down); a change means that copies kept outside
    /// bgd (the pause's holder) are stale.
    pub(crate) fn renewals(&self) -> u64 {
        self.lock().renewed
    }

    /// What status shows of the sockets: other processes' sockets in bgd's
    /// groups, and sockets that should listen and do not. Read now; repairs
    /// nothing.
    pub(crate) fn alerts(&self) -> Vec<String> {
        let inner = self.lock();
        let mut out = inner.intruders();
        for e in &inner.entries {
            for (color, s) in [
                (Color::Blue, e.socket(Color::Blue)),
                (Color::Green, e.socket(Color::Green)),
            ] {
                let listens = getsockopt(&s.fd, sockopt::AcceptConn).unwrap_or(true);
                if s.state == SocketState::Listening && !listens {
                    out.push(format!(
                        "[[listen]] {:?}: {color}'s socket no longer listens (its app shut it down); bgd makes a fresh one before {color} starts again",
                        s.config.name
                    ));
                }
                if matches!(e, Entry::Shared(_)) {
                    break;
                }
            }
        }
        out
    }
}

/// Refuses to bind `c` (gate mode, before any socket is bound) where
/// another process listens already: bgd's socket would join that process's
/// `SO_REUSEPORT` group, and each would steer the other's connections.
pub(super) fn refuse_taken(c: &ListenConfig) -> anyhow::Result<()> {
    let ListenAddr::Tcp(addr) = c.address else {
        return Ok(());
    };
    if addr.port() == 0 {
        return Ok(());
    }
    let table = match conns::sockets(&[TcpState::Listen]) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("cannot look for other listeners on {addr}: {e}");
            return Ok(());
        }
    };
    if let Some(e) = table.iter().find(|e| overlaps(e.local, addr)) {
        anyhow::bail!(
            "{}: cannot use [[listen]] {:?} at {addr}: address in use by another process: {} \
             (another process holds this address: stop it or pick another port; sharing it through SO_REUSEPORT, each would steer the other's connections)",
            c.location,
            c.name,
            holders(e.inode)
        );
    }
    Ok(())
}

/// Whether a listener on `a` takes connections for `b`: the same port, and
/// the same IP or either one unspecified (same family).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `pid 123 (bgd --config /etc/bgd/app.toml)`, for each process that
/// holds the socket `inode`.
fn holders(inode: u64) -> String {
    let found = conns::socket_holders(inode);
    if found.is_empty() {
        return "a process bgd cannot see (another user's, or gone)".into();
    }
    let each: Vec<String> = found
        .iter()
        .map(|(pid, cmd)| {
            // One line, and short: a command line may hold a whole script.
            let mut cmd: String = cmd
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if cmd.chars().count() > 80 {
                cmd = cmd.chars().take(77).collect::<String>() + "...";
            }
            format!("pid {pid} ({cmd})")
        })
        .collect();
    each.join(", ")
}

/// `s` (of `color`, in a group whose socket array is `order`) no longer
/// listens: a fresh socket takes its place at the end of the group, and
/// `order` follows the kernel (the last socket moved into the slot `s`
/// left). Returns what it did, or `None` if `s` still listens.
fn renew_if_dead(
    color: Color,
    s: &mut Socket,
    order: &mut Vec<Color>,
    steer_without: impl FnOnce(&[Color]),
) -> Option<String> {
    if getsockopt(&s.fd, sockopt::AcceptConn).unwrap_or(true) {
        return None;
    }
    leave(order, color);
    let name = s.config.name.clone();
    let fresh = bind_one(&s.config, true).and_then(|fd| {
        steer_without(order);
        listen(&fd, s.backlog())?;
        Ok(fd)
    });
    match fresh {
        Ok(fd) => {
            // systemd's fd store hands the next bgd this socket, not the
            // dead one (both are stored by name: the old goes first).
            let stored_as = format!("{name}@{color}");
            crate::net::fdstore::remove_stored(&stored_as);
            crate::net::fdstore::store_fd(&fd, &stored_as);
            s.fd = fd;
            s.adopted = false;
            order.push(color);
            Some(format!(
                "[[listen]] {name:?}: {color}'s socket no longer listened (its app shut it down, e.g. shutdown(2) in its drain): \
                 bgd made a fresh socket for {color} and rebuilt the steering program; {color}'s next process gets it"
            ))
        }
        Err(e) => {
            s.state = SocketState::Unbound;
            Some(format!(
                "[[listen]] {name:?}: {color}'s socket no longer listened (its app shut it down) and a fresh one cannot be bound yet: {e}; the next start of {color} binds it"
            ))
        }
    }
}

/// `color`'s socket left a group whose socket array is `order`: the last
/// socket takes its slot (the kernel's `reuseport_detach_sock`).
fn leave(order: &mut Vec<Color>, color: Color) {
    if let Some(i) = order.iter().position(|c| *c == color) {
        let last = order.pop().expect("holds the color found");
        if i < order.len() {
            order[i] = last;
        }
    }
}

/// Puts back the backlog and `O_NONBLOCK` of `s` if an app changed them.
fn restore_settings(color: Color, s: &Socket) -> Vec<String> {
    let mut done = Vec::new();
    let name = &s.config.name;
    let want = i32::from(s.backlog()).min(somaxconn()) as u32;
    if let Ok(now) = conns::listen_backlog(s.fd.as_fd()) {
        if now != want && listen(&s.fd, s.backlog()).is_ok() {
            done.push(format!(
                "[[listen]] {name:?}: {color}'s socket had a backlog of {now} (an app called listen() again): bgd put back {want}"
            ));
        }
    }
    if let Ok(bits) = fcntl(&s.fd, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(bits);
        let nonblocking = flags.contains(OFlag::O_NONBLOCK);
        if nonblocking != s.config.nonblocking {
            let fixed = flags ^ OFlag::O_NONBLOCK;
            if fcntl(&s.fd, FcntlArg::F_SETFL(fixed)).is_ok() {
                done.push(format!(
                    "[[listen]] {name:?}: an app made {color}'s socket {}: bgd put back nonblocking = {} before {color} runs again",
                    if nonblocking { "non-blocking" } else { "blocking" },
                    s.config.nonblocking
                ));
            }
        }
    }
    done
}

/// `net.core.somaxconn`, the cap on any backlog (4096 if unreadable).
fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_overlap_on_the_port_and_an_ip_or_a_wildcard() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("[::]:80"), a("127.0.0.1:80")));
    }

    /// A socket that leaves the group is replaced by the last one: the
    /// order follows, and the fresh socket is appended.
    #[test]
    fn a_socket_that_left_is_replaced_by_the_last_and_rejoins_at_the_end() {
        let mut order = vec![Color::Blue, Color::Green];
        leave(&mut order, Color::Blue);
        assert_eq!(order, [Color::Green]);
        order.push(Color::Blue);
        assert_eq!(order, [Color::Green, Color::Blue]);
        assert_eq!(super::super::route::index_in(&order, Color::Blue), 1);
        assert_eq!(super::super::route::index_in(&order, Color::Green), 0);
    }
}
