//! The sd_notify messages bgd sends as a systemd service (`Type=notify`):
//! READY, STOPPING, WATCHDOG, RELOADING, STATUS, EXTEND_TIMEOUT_USEC
//! (sd_notify(3)). The sockets (socket activation and the fd store) are
//! `net::fdstore`'s.
//!
//! Every message is a no-op when bgd does not run under systemd
//! (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;

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

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}
