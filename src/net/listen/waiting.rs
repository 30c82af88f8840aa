//! How many connections wait to be accepted: what a pause (issue 24)
//! holds in the kernel. Read only.

use std::os::fd::AsFd;

use super::{Entry, Listeners};
use crate::color::Color;
use crate::config::ListenAddr;

impl Listeners {
    /// Connections waiting in `color`'s accept queues (in shared mode, the
    /// shared sockets'), over every `[[listen]]` entry. TCP: `tcpi_unacked`
    /// of `TCP_INFO` on bgd's copy ([`crate::net::conns::accept_queue`]).
    /// Unix: the connections to the socket's file (`unix_peers.rs`), which
    /// are all queued while no process holds the socket to accept.
    /// Blocking: reads /proc/net/unix when a Unix listener exists.
    pub(crate) fn waiting(&self, color: Color) -> u64 {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .map(|e| {
                let unix = match (e, &e.config().address) {
                    (Entry::Files { blue, green }, _) => Some(match color {
                        Color::Blue => blue.private.clone(),
                        Color::Green => green.private.clone(),
                    }),
                    (Entry::Shared(_), ListenAddr::Unix(p)) => Some(p.clone()),
                    _ => None,
                };
                match unix {
                    Some(path) => crate::net::unix_peers::connections(&path).unwrap_or(0) as u64,
                    None => u64::from(
                        crate::net::conns::accept_queue(e.socket(color).fd.as_fd()).unwrap_or(0),
                    ),
                }
            })
            .sum()
    }
}
