//! Connections left in the accept queue of a color that died and will not
//! be started again: a canary that crashed, a baking color that crashed
//! and was switched away from, a color that was drained (a frozen or wedged
//! app killed at `drain_timeout`) with connections still queued, a live
//! color that was restarting when a pause began. None of them is left for
//! the next build of that color to find (issue 25), except in the color a
//! pause holds connections on: there the next build is meant to serve
//! them, and relaying them would bring them back to the same queue.
//!
//! A queued connection whose client has already hung up (it gave up
//! waiting: the kernel holds its FIN) is reset, not relayed: its request
//! is never executed, by the live color or later.
//!
//! bgd holds every color's listening socket, so what the kernel queued for
//! the dead color in the moment before bgd steered away from it stays
//! queued, and nobody would ever accept it: the client would hang until its
//! own timeout. Closing the socket would reset those clients instead (and
//! `net.ipv4.tcp_migrate_req` is off by default). So bgd accepts them
//! itself and relays each, byte for byte, to a new connection to the public
//! address, which now reaches the live color. This is the only time bytes
//! of the app's traffic pass through bgd, and only for those few
//! connections (socket(7), accept(2); the migration sysctl is in the
//! kernel's ip-sysctl docs).
//!
//! bgd's copy of a socket shares its open file description with whoever
//! listens next, so its `O_NONBLOCK` flag is never changed: each accept
//! follows a `poll` that says one is waiting, and runs on the blocking pool.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::color::Color;
use crate::net::listen::{Listeners, Public};

/// How long a look at a queue waits; the rescue ends after two empty looks
/// in a row.
const LOOK: Duration = Duration::from_millis(50);

/// Accepts what is queued on `color`'s sockets and relays each connection
/// to the live color. Returns how many it relayed.
pub(crate) async fn rescue(listeners: Arc<Listeners>, color: Color) -> usize {
    let (mut relayed, mut reset) = (0, 0);
    // The receiving color's queue is where the public address leads (a
    // pause holds connections there): relayed there, each would come back
    // to the same queue, for ever. What waits there is for its next build.
    if listeners.receiving() == Some(color) {
        return 0;
    }
    for (fd, public) in listeners.orphans(color) {
        let fd = Arc::new(fd);
        let mut empty = 0;
        while empty < 2 {
            let f = fd.clone();
            let got = tokio::task::spawn_blocking(move || accept_waiting(&f)).await;
            match got {
                Ok(Ok(Some(conn))) if hung_up(&conn) => {
                    empty = 0;
                    reset += 1;
                    reset_now(conn);
                }
                Ok(Ok(Some(conn))) => {
                    empty = 0;
                    relayed += 1;
                    tokio::spawn(relay(conn, public.clone()));
                }
                Ok(Ok(None)) => empty += 1,
                Ok(Err(e)) => {
                    tracing::warn!(%color, "cannot take over a queued connection: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
    }
    if relayed > 0 {
        tracing::warn!(%color, "{relayed} connections were queued for {color} when it died: relayed to the live color");
    }
    if reset > 0 {
        tracing::warn!(%color, "{reset} connections queued for {color} had been given up by their clients: reset, their requests not executed");
    }
    relayed
}

/// Whether the client of an accepted connection has already closed its
/// side (POLLRDHUP: its FIN is queued).
fn hung_up(conn: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, for an fd that `conn` keeps open;
    // a zero timeout does not wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// Closes `conn` with a reset (SO_LINGER 0), so no one reads its request.
fn reset_now(conn: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd `conn` keeps open, with a linger struct on
    // the stack whose size is passed.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// One queued connection, if `poll` says one waits within [`LOOK`].
fn accept_waiting(fd: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, for an fd that `fd` keeps open.
    let n = unsafe { libc::poll(&mut p, 1, LOOK.as_millis() as libc::c_int) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if n == 0 || p.revents & libc::POLLIN == 0 {
        return Ok(None);
    }
    // SAFETY: accept4 on a listening fd `fd` keeps open; the new fd is
    // owned by the OwnedFd below. It is non-blocking (its own file
    // description: the listener's flags are untouched).
    let c = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ECONNABORTED) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `c` is a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(c) }))
}

/// Copies bytes both ways between `conn` and a new connection to `public`
/// until both sides are done.
async fn relay(conn: OwnedFd, public: Public) {
    let result = match public {
        Public::Tcp(addr) => {
            let client = tokio::net::TcpStream::from_std(std::net::TcpStream::from(conn));
            match (client, tokio::net::TcpStream::connect(addr).await) {
                (Ok(mut a), Ok(mut b)) => tokio::io::copy_bidirectional(&mut a, &mut b)
                    .await
                    .map(drop),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Public::Unix(path) => {
            let client =
                tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(conn));
            match (client, tokio::net::UnixStream::connect(&path).await) {
                (Ok(mut a), Ok(mut b)) => tokio::io::copy_bidirectional(&mut a, &mut b)
                    .await
                    .map(drop),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("relaying a rescued connection ended: {e}");
    }
}
