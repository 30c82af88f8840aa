//! One listening socket bgd holds: bound, listening, or (after a failed
//! re-bind) an unbound placeholder.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{getsockname, listen, Backlog, SockaddrStorage};

use super::adopt;
use super::bind::{self, bind_one, hint, placeholder};
use crate::config::{ListenAddr, ListenConfig};

pub(super) struct Socket {
    /// As configured, but with the port the kernel picked for a port 0, so
    /// that a re-bind (and the other color's socket) gets the same address.
    pub(super) config: ListenConfig,
    pub(super) fd: OwnedFd,
    pub(super) state: SocketState,
    /// Handed over by systemd: never closed and re-bound by bgd.
    pub(super) adopted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketState {
    Bound,
    Listening,
    /// A re-bind failed; `fd` is an unbound placeholder until one succeeds.
    Unbound,
}

impl Socket {
    pub(super) fn bound(config: &ListenConfig, reuseport: bool) -> anyhow::Result<Socket> {
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

    pub(super) fn adopted(config: &ListenConfig, a: adopt::Adopted) -> anyhow::Result<Socket> {
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

    /// Listens, binding first if a re-bind is pending. Returns whether it
    /// began to listen now (it joined its group, if it has one).
    pub(super) fn listen(&mut self, reuseport: bool) -> io::Result<bool> {
        if self.state == SocketState::Unbound {
            self.fd = bind_one(&self.config, reuseport)?;
            self.state = SocketState::Bound;
        }
        if self.state == SocketState::Bound {
            listen(&self.fd, self.backlog())?;
            self.state = SocketState::Listening;
            return Ok(true);
        }
        Ok(false)
    }

    /// `[[listen]] backlog`, as listen(2) takes it.
    pub(super) fn backlog(&self) -> Backlog {
        Backlog::new(self.config.backlog).unwrap_or(Backlog::MAXCONN)
    }

    /// Closes and re-binds, without listening: queued clients are reset.
    pub(super) fn reset(&mut self, rebind: impl FnOnce(&ListenConfig) -> io::Result<OwnedFd>) {
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
