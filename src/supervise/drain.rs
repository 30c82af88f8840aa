//! Stopping a color that no longer receives connections, without losing
//! one: quiesce, then the stop signal, then SIGKILL at the deadline.
//!
//! In gate mode the old color gets no new connection after the swap, but
//! three kinds of connection still belong to it: those waiting in its
//! accept queue, handshakes that were steered to it just before the swap,
//! and connections it accepted (idle keep-alive ones included). Closing a
//! listener resets what is in its queue (nginx #1300, Envoy PR #15818), and
//! most servers drop idle keep-alive connections the moment they get their
//! stop signal, which resets a request a client has just sent on one. So
//! bgd first waits, up to `app.drain_delay`, until the color's queue is
//! empty, those handshakes are done and its connections have ended on their
//! own (clients close idle ones; servers end one after N requests), as the
//! kernel reports them ([`crate::net::conns`] for TCP, [`crate::net::unix_peers`] for
//! Unix sockets); only then does it send the stop signal.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::color::Color;
use crate::net::conns::{
    self,
    TcpState::{Established, SynRecv},
};
use crate::net::listen::Listeners;
use crate::supervise::process::AppProcess;
use crate::supervise::reaper::Exit;

/// How often the kernel's view is read while quiescing.
const POLL: Duration = Duration::from_millis(20);

/// How a stop ended.
pub(crate) struct Stopped {
    pub exit: Exit,
    /// The color was still running at the drain deadline (this long) and
    /// was killed.
    pub forced: Option<Duration>,
}

/// What was left when the quiesce ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Left {
    pub queued: u32,
    pub handshakes: usize,
    pub connections: usize,
    /// Why the kernel's view could not be read: then nothing is known to be
    /// quiet, and bgd waits the whole `drain_delay`.
    pub unknown: Option<String>,
}

impl Left {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Left::default()
    }
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.unknown {
            return write!(
                f,
                "the kernel's view of the connections could not be read ({why})"
            );
        }
        write!(
            f,
            "{} open connections, {} in the accept queue, {} handshakes",
            self.connections, self.queued, self.handshakes
        )
    }
}

/// Waits until `color` (whose process group is `pgid`) has no queued,
/// half-open or open connection on the app's TCP ports, or until `delay`
/// has passed; returns what was left (empty when it quiesced).
/// Each look asks the kernel for its ESTABLISHED and SYN_RECV sockets only
/// (it leaves out the TIME_WAIT ones a busy port piles up by the thousand)
/// and reads /proc; both block, so each look runs on the blocking pool.
pub(crate) async fn quiesce(
    listeners: Arc<Listeners>,
    color: Color,
    pgid: i32,
    delay: Duration,
) -> Left {
    let ports = listeners.ports();
    let unix = listeners.unix_paths(color);
    if (ports.is_empty() && unix.is_empty()) || delay.is_zero() {
        return Left::default();
    }
    let until = tokio::time::Instant::now() + delay;
    // Handshakes under way now may have been steered to this color before
    // the swap; later ones go to the new color.
    let mut pending: Option<HashSet<(SocketAddr, SocketAddr)>> = None;
    // Two empty looks in a row: a connection caught between the queue and
    // the app in one look shows in the next.
    let mut empty = 0;
    loop {
        let (l, p, u) = (listeners.clone(), ports.clone(), unix.clone());
        let looked = tokio::task::spawn_blocking(move || {
            let mut pending = pending.unwrap_or_else(|| {
                conns::sockets(&[SynRecv])
                    .map(|t| conns::handshakes(&t, &p))
                    .unwrap_or_default()
            });
            let mut left = look(&l, color, pgid, &p, &mut pending);
            // Unix: queued and open connections alike carry the color's
            // private socket path.
            for path in &u {
                match crate::net::unix_peers::connections(path) {
                    Ok(n) => left.connections += n,
                    Err(e) => left.unknown = Some(format!("{}: {e}", path.display())),
                }
            }
            (left, pending)
        })
        .await;
        let (left, still) = match looked {
            Ok(l) => l,
            Err(e) => {
                let unknown = Some(format!("the look failed: {e}"));
                (
                    Left {
                        unknown,
                        ..Left::default()
                    },
                    HashSet::new(),
                )
            }
        };
        pending = Some(still);
        empty = if left.is_empty() { empty + 1 } else { 0 };
        if empty == 2 || tokio::time::Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One look at the kernel's view (blocking). A connection moves from the
/// queue to the app while it is read, so the color's sockets are read
/// before and after the kernel's list of connections, and the queue after
/// it: a connection the app held at either moment counts.
fn look(
    listeners: &Listeners,
    color: Color,
    pgid: i32,
    ports: &[u16],
    pending: &mut HashSet<(SocketAddr, SocketAddr)>,
) -> Left {
    let mut inodes = conns::group_socket_inodes(pgid).unwrap_or_default();
    let table = match conns::sockets(&[Established, SynRecv]) {
        Ok(t) => t,
        Err(e) => {
            let unknown = Some(format!("sock_diag: {e}"));
            return Left {
                unknown,
                ..Left::default()
            };
        }
    };
    inodes.extend(conns::group_socket_inodes(pgid).unwrap_or_default());
    let now = conns::handshakes(&table, ports);
    pending.retain(|h| now.contains(h));
    Left {
        queued: listeners.accept_queue(color),
        handshakes: pending.len(),
        connections: conns::established(&table, ports, &inodes),
        unknown: None,
    }
}

/// Stops `proc`: in gate mode it first quiesces (up to `delay`), then gets
/// `sig`, then SIGKILL at `deadline`.
pub(crate) async fn stop(
    listeners: Arc<Listeners>,
    proc: &AppProcess,
    quiet: bool,
    delay: Duration,
    sig: nix::sys::signal::Signal,
    deadline: Duration,
) -> Stopped {
    if quiet {
        let left = quiesce(listeners, proc.color, proc.pid.as_raw(), delay).await;
        if !left.is_empty() {
            tracing::info!(color = %proc.color, "after app.drain_delay ({}): {left}; sending {sig}", humantime::format_duration(delay));
        }
    }
    let killed = proc.stop(sig, deadline).await;
    Stopped {
        exit: killed.0,
        forced: killed.1.then_some(deadline),
    }
}
