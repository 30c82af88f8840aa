//! bgd as a systemd service: sockets handed over by socket activation or
//! the fd store, and the sd_notify messages bgd sends.
//!
//! Every message is a no-op when bgd does not run under systemd
//! (`NOTIFY_SOCKET` unset). Sockets go into the fd store (`FDSTORE=1`) as
//! soon as they are bound, so `systemctl restart` of bgd hands the same
//! sockets to the next bgd and the port never closes.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

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

/// Whether bgd runs under a service manager that listens to it.
pub(crate) fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub(crate) fn ready() {
    send(&[NotifyState::Ready]);
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as systemd wants it.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// One line; systemd shows it in `systemctl status`.
pub(crate) fn status(line: &str) {
    let line = line.replace('\n', " ");
    send(&[NotifyState::Status(&line)]);
}

/// Asks systemd for `by` more time for the start or stop in progress.
pub(crate) fn extend_timeout(by: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(
        by.as_micros().min(u32::MAX as u128) as u32,
    )]);
}

/// How often to send `WATCHDOG=1`: half of `WatchdogSec=`, if set.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Pushes a listening socket into the fd store under `name`. Returns
/// whether systemd took it.
pub(crate) fn store_fd(fd: impl AsFd, name: &str) -> bool {
    if !under_systemd() {
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
    send(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}
