//! The holder: a small process of bgd's own that keeps a copy of every
//! listening socket while a pause lasts (issue 24), so that the
//! connections waiting in an accept queue nobody accepts from survive
//! bgd's death. Under systemd the fd store keeps the sockets too; the
//! holder is what keeps them without it.
//!
//! It runs as `bgd __bgd_hold` with the sockets at fds 3.., named in
//! `BGD_RELAY_FDNAMES` as in systemd's fd store, and listens on
//! `root/run/hold.sock` (`BGD_RELAY_SOCKET`). Each connection gets the
//! sockets the way a relay hands them over (`relay.rs`: one message, the
//! fds by `SCM_RIGHTS` and a line naming them after the app field `0`), and
//! is closed. It runs until bgd kills it: when the pause ends, or when a
//! bgd that starts finds no pause recorded. `root/run/hold.json` records
//! its pid and start time, so that only that process is ever killed.
//!
//! The holder's copies are the same sockets as bgd's (dups of one open
//! file description), never new ones, so they change nothing in a
//! reuseport group's indexes.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::store::layout;
use crate::supervise::adoption::start_time;
use crate::supervise::relay::{self, Named};

/// The argv\[1\] that makes `bgd` act as a pause's holder.
pub const HOLD_ARG: &str = "__bgd_hold";

/// The app field of the holder's hand-over line (a relay puts its app's
/// pid there).
const APP: i32 = 0;

/// `root/run/hold.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    pid: i32,
    /// Field 22 of /proc/PID/stat.
    start_time: u64,
}

/// `bgd __bgd_hold`: hands its sockets to each bgd that connects, until
/// it is killed. Returns the exit code.
pub fn main() -> i32 {
    let Some(path) = std::env::var_os("BGD_RELAY_SOCKET").map(PathBuf::from) else {
        eprintln!("bgd: {HOLD_ARG} needs BGD_RELAY_SOCKET");
        return 2;
    };
    let sockets: Named = std::env::var("BGD_RELAY_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .filter(|n| !n.is_empty())
        .enumerate()
        .map(|(i, n)| {
            // SAFETY: bgd passed the sockets at fds 3.., one per name;
            // nothing else in this process owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i as RawFd) };
            (fd, n.to_string())
        })
        .collect();
    let _ = fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bgd holder: cannot bind {}: {e}", path.display());
            return 1;
        }
    };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = relay::hand_over(&conn, &APP.to_string(), &sockets);
    }
    0
}

/// Whether the holder recorded in `root` runs.
pub(crate) fn runs(root: &Path) -> bool {
    recorded(root).is_some()
}

/// The holder's record, if that process still runs as recorded.
fn recorded(root: &Path) -> Option<Record> {
    let text = fs::read_to_string(layout::hold_record(root)).ok()?;
    let r: Record = serde_json::from_str(&text).ok()?;
    (start_time(r.pid) == Some(r.start_time)).then_some(r)
}

/// Starts a holder of `sockets` (named as in the fd store) for `root`,
/// unless one runs already.
pub(crate) fn start(root: &Path, sockets: Vec<(String, RawFd)>) -> io::Result<()> {
    if runs(root) {
        return Ok(());
    }
    spawn_holder(root, sockets)
}

/// Replaces the running holder, if any, by one that keeps `sockets`: bgd
/// replaced a socket an app shut down, and the old holder keeps the dead
/// one, which a bgd started later would take back. The new holder starts
/// before the old one is killed, so the sockets always have a keeper.
pub(crate) fn renew(root: &Path, sockets: Vec<(String, RawFd)>) -> io::Result<()> {
    let Some(old) = recorded(root) else {
        return Ok(());
    };
    spawn_holder(root, sockets)?;
    let _ = nix::sys::signal::kill(Pid::from_raw(old.pid), nix::sys::signal::Signal::SIGKILL);
    Ok(())
}

fn spawn_holder(root: &Path, sockets: Vec<(String, RawFd)>) -> io::Result<()> {
    let path = layout::hold_socket(root);
    fs::create_dir_all(layout::run_dir(root))?;
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let env = vec![
        ("BGD_RELAY_SOCKET".to_string(), path.display().to_string()),
        ("BGD_RELAY_FDNAMES".to_string(), names.join(":")),
    ];
    let command = ["/proc/self/exe".to_string(), HOLD_ARG.to_string()];
    let spawned = crate::supervise::spawn::spawn(&crate::supervise::spawn::Spec {
        command: &command,
        cwd: layout::run_dir(root).as_path(),
        env,
        fds: sockets,
        identity: None,
        cgroup: None,
        die_with_bgd: false,
    })?;
    // It says nothing on its own output; bgd's reaper reaps it.
    drop((spawned.stdout, spawned.stderr));
    let pid = spawned.pid.as_raw();
    let record = Record {
        pid,
        start_time: start_time(pid).unwrap_or(0),
    };
    let data = serde_json::to_vec(&record).expect("a hold record serializes");
    crate::store::state::write_atomically(&layout::hold_record(root), &data)?;
    tracing::info!(
        pid,
        "a holder (pid {pid}) keeps the sockets while the pause lasts"
    );
    Ok(())
}

/// Takes a copy of the sockets from the holder a previous bgd left, at
/// start-up (blocking, bounded by a 2 s timeout). Empty if none runs.
pub(crate) fn take(root: &Path) -> Named {
    if recorded(root).is_none() {
        return Vec::new();
    }
    match relay::reconnect(&layout::hold_socket(root), APP) {
        Ok((_, sockets, _)) => {
            tracing::info!(
                "took {} sockets back from the pause's holder",
                sockets.len()
            );
            sockets
        }
        Err(e) => {
            tracing::warn!("the pause's holder does not answer ({e}): ending it");
            end(root);
            Vec::new()
        }
    }
}

/// Ends the holder (SIGKILL), if the recorded one runs, and forgets it.
pub(crate) fn end(root: &Path) {
    if let Some(r) = recorded(root) {
        let _ = nix::sys::signal::kill(Pid::from_raw(r.pid), nix::sys::signal::Signal::SIGKILL);
        tracing::info!(pid = r.pid, "ended the pause's holder (pid {})", r.pid);
    }
    let _ = fs::remove_file(layout::hold_record(root));
    let _ = fs::remove_file(layout::hold_socket(root));
}
