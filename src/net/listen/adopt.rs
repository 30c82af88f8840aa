//! Taking the sockets systemd passed (socket activation or the fd store).

use std::os::fd::OwnedFd;

use nix::sys::socket::{getsockopt, sockopt, SockType};

use super::bind::socket_address;
use crate::config::ListenConfig;

/// A socket systemd passed.
pub(super) struct Adopted {
    pub fd: OwnedFd,
    /// `listen()` was called on it already (by systemd or an earlier bgd).
    pub listening: bool,
}

/// Takes the socket systemd passed under `name` or, with `by_address`, an
/// unnamed one bound to `c`'s address; checks its type and address. Every
/// other copy under the same name (the socket unit's and the fd store's)
/// is dropped: they are the same socket.
pub(super) fn take(
    c: &ListenConfig,
    name: &str,
    by_address: bool,
    inherited: &mut [Option<(OwnedFd, String)>],
) -> anyhow::Result<Option<Adopted>> {
    let by_name = inherited
        .iter()
        .position(|i| i.as_ref().is_some_and(|(_, n)| n == name));
    let by_addr = || {
        inherited.iter().position(|i| {
            by_address
                && i.as_ref().is_some_and(|(fd, n)| {
                    (n == "unknown" || n.is_empty())
                        && socket_address(fd).is_ok_and(|a| a.matches(&c.address))
                })
        })
    };
    let Some(i) = by_name.or_else(by_addr) else {
        return Ok(None);
    };
    let Some((fd, got)) = inherited[i].take() else {
        return Ok(None);
    };
    for dup in inherited.iter_mut() {
        if dup.as_ref().is_some_and(|(_, n)| n == &got) {
            *dup = None;
        }
    }
    let kind: SockType = getsockopt(&fd, sockopt::SockType)?;
    if kind != SockType::Stream {
        anyhow::bail!("{}: systemd passed socket {got:?} of type {kind:?}; [[listen]] {:?} needs a stream socket (ListenStream=)", c.location, c.name);
    }
    let actual = socket_address(&fd)?;
    if !actual.matches(&c.address) {
        anyhow::bail!(
            "{}: systemd passed socket {got:?} bound to {actual}, but [[listen]] {:?} says {}: make the socket unit's ListenStream= and the config agree \
             (if the address changed in the config, the old socket comes from the fd store: `systemctl stop` the service once to flush it)",
            c.location, c.name, c.address
        );
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn)?;
    tracing::info!(
        "took [[listen]] {:?} ({actual}) from systemd as {got:?}",
        c.name
    );
    Ok(Some(Adopted { fd, listening }))
}

/// The error for a `[[listen]]` entry systemd passed no socket for.
pub(super) fn missing(c: &ListenConfig, inherited: &[Option<(OwnedFd, String)>]) -> anyhow::Error {
    let names: Vec<&str> = inherited
        .iter()
        .flatten()
        .map(|(_, n)| n.as_str())
        .collect();
    anyhow::anyhow!(
        "{}: systemd passed no socket for [[listen]] {:?} (it passed {names:?}): give the socket unit a ListenStream= with FileDescriptorName={}, \
         or stop the service fully (`systemctl stop`) so its fd store is flushed",
        c.location, c.name, c.name
    )
}
