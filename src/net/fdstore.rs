//! The sockets systemd hands bgd: by socket activation (`LISTEN_FDS`,
//! sd_listen_fds(3)) and from the fd store (`FDSTORE=1`, `FDNAME=`;
//! `FileDescriptorStoreMax=` in the unit). Sockets go into the store as
//! soon as they are bound, so `systemctl restart` of bgd hands the same
//! sockets to the next bgd and the port never closes. Outside systemd
//! (`NOTIFY_SOCKET` unset) nothing is stored.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use sd_notify::NotifyState;

/// The sockets systemd passed (`LISTEN_FDS` naming bgd's pid), with their
/// `LISTEN_FDNAMES` names (`"unknown"` when unnamed). Clears the `LISTEN_*`
/// variables.
///
/// # Safety
/// Changes the environment: call it while bgd is single-threaded, first
/// thing in `main`.
pub unsafe fn take_listen_fds() -> Vec<(OwnedFd, String)> {
    // SAFETY: the caller guarantees no other thread runs.
    match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
        // SAFETY: systemd passed these fds to this process (LISTEN_PID is
        // ours) and nothing else in bgd owns them yet.
        Ok(fds) => fds
            .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
            .collect(),
        Err(e) => {
            eprintln!("bgd: ignoring LISTEN_FDS from systemd: {e}");
            Vec::new()
        }
    }
}

/// Pushes a listening socket into the fd store under `name`. Returns
/// whether systemd took it.
pub(crate) fn store_fd(fd: impl AsFd, name: &str) -> bool {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return false;
    }
    // FDPOLL=0: a bound socket that does not listen yet (no color has been
    // live) polls as POLLHUP, and systemd would drop it from the store.
    let states = [
        NotifyState::FdStore,
        NotifyState::FdName(name),
        NotifyState::Custom("FDPOLL=0"),
    ];
    match sd_notify::notify_with_fds(&states, &[fd.as_fd()]) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot push socket {name:?} into systemd's fd store: {e}");
            false
        }
    }
}

/// Drops the sockets named `name` from the fd store (a `[[listen]]` entry
/// that was removed from the config), so no client waits on them.
pub(crate) fn remove_stored(name: &str) {
    let states = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
    if let Err(e) = sd_notify::notify(&states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}
