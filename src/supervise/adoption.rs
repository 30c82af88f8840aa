//! Adoption: a bgd that starts while the app still runs (the old bgd was
//! killed, or `bgctl reexec` replaced it in place) takes the running colors
//! over instead of starting them again (issue 13).
//!
//! While a color runs, `root/run/COLOR.json` records its main process: pid,
//! start time (field 22 of /proc/PID/stat, proc(5), in clock ticks since
//! boot) and release. A new bgd adopts a recorded process only if that pid
//! still runs *and* started at the recorded time (and, with cgroups, is in
//! the color's cgroup), so a pid the kernel has since given to another
//! process is never adopted. It then connects to the color's relay
//! (`relay.rs`), which gives back the listening sockets and the output
//! lines it kept meanwhile.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::deploy::state::State;
use crate::store::files::Notes;
use crate::store::layout;
use crate::supervise::contain::Containment;

/// What `root/run/COLOR.json` records of a running color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot.
    pub start_time: u64,
    pub release: u64,
    /// Shared mode: the color's private probe socket.
    #[serde(default)]
    pub probe_addr: Option<SocketAddr>,
}

/// Writes the record of `color` (temp file, fsync, rename).
pub(crate) fn record(root: &Path, color: Color, r: &RunRecord) {
    let path = layout::run_record(root, color);
    let data = serde_json::to_vec(r).expect("a run record serializes");
    let written = fs::create_dir_all(layout::run_dir(root))
        .and_then(|()| crate::store::state::write_atomically(&path, &data));
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// Parses a run record's text.
pub fn parse_record(bytes: &[u8]) -> Result<RunRecord, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Forgets `color`'s record: nothing of it runs.
pub(crate) fn forget(root: &Path, color: Color) {
    let path = layout::run_record(root, color);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// Field 22 of /proc/PID/stat, or `None` if `pid` does not run (a zombie
/// does not count).
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // rest[0] is field 3 (state): field N is rest[N - 3].
    if matches!(rest.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    rest.get(22 - 3)?.parse().ok()
}

/// When a process that started `ticks` clock ticks after boot (field 22 of
/// /proc/PID/stat) started: `btime` of /proc/stat plus the ticks over
/// `sysconf(_SC_CLK_TCK)` (proc(5)). Accurate to a second (btime's unit).
pub(crate) fn started_at(ticks: u64) -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let after_boot = std::time::Duration::from_secs_f64(ticks as f64 / hz as f64);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + after_boot)
}

/// A running color a new bgd can take over.
pub(crate) struct Found {
    pub color: Color,
    pub record: RunRecord,
    /// The connection to its relay, and what was read after the header.
    pub relay: std::os::unix::net::UnixStream,
    pub rest: Vec<u8>,
}

/// The colors left running by a previous bgd that can be adopted, and the
/// listening sockets their relays hold (from the first one). A record that
/// names another process now, or whose relay is gone, is dropped, and what
/// is left of that color is killed.
///
/// A record that is missing or cannot be read (torn, or never written on a
/// full disk) does not make bgd kill a color that serves: the color's
/// relay, if it answers, names its app, which is adopted if it runs in the
/// color's cgroup; its release comes from `state`. `notes` says so.
pub(crate) fn find(
    root: &Path,
    contain: &Containment,
    state: &State,
    notes: &Notes,
) -> (Vec<Found>, Vec<(OwnedFd, String)>) {
    let mut found = Vec::new();
    let mut sockets = Vec::new();
    for color in Color::BOTH {
        let path = layout::run_record(root, color);
        let text = match fs::read(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string().into_bytes()),
        };
        let record = text.as_deref().map(parse_record);
        let adopted = match record {
            Some(Ok(record)) => adoptable(root, color, record, contain),
            Some(Err(why)) => from_relay(root, color, contain, state)
                .inspect(|(r, ..)| notes.set(&topic(color), format!("{} could not be read ({why}): bgd adopted {color} (pid {}) through its relay, and wrote the record again", path.display(), r.pid)))
                .map_err(|e| {
                    notes.set(&topic(color), format!("{} could not be read ({why}), and {color} could not be adopted without it ({e}): what ran of {color} was stopped", path.display()));
                    e
                }),
            None => match from_relay(root, color, contain, state) {
                Ok(a) => {
                    notes.set(&topic(color), format!("{} was missing: bgd adopted {color} (pid {}) through its relay, and wrote the record again", path.display(), a.0.pid));
                    Ok(a)
                }
                // Nothing of it runs: the usual case.
                Err(_) => {
                    contain.kill_leftovers(color);
                    end_relays(root, color);
                    continue;
                }
            },
        };
        match adopted {
            Ok((record, relay, fds, rest)) => {
                tracing::info!(%color, pid = record.pid, "adopting {color} (pid {}, release {}), left running by a previous bgd", record.pid, record.release);
                if sockets.is_empty() {
                    sockets = fds;
                }
                found.push(Found {
                    color,
                    record,
                    relay,
                    rest,
                });
            }
            Err(why) => {
                tracing::warn!(%color, "not adopting {color}: {why}");
                forget(root, color);
                contain.kill_leftovers(color);
                end_relays(root, color);
            }
        }
    }
    (found, sockets)
}

/// Kills every relay of `color` that a previous bgd left (found by the
/// `BGD_RELAY_SOCKET` in its environment) and waits, up to 2 s, until they
/// are gone. Their copies of the listening sockets must be closed before
/// bgd binds new ones: the kernel appends a new socket to an existing
/// reuseport group and fills a closed socket's slot with the group's last,
/// so a stale copy would leave the steering program's indexes pointing at
/// sockets nobody accepts on (socket(7), SO_ATTACH_REUSEPORT_CBPF).
fn end_relays(root: &Path, color: Color) {
    let want = layout::relay_socket(root, color);
    // The same socket path, however the root was spelled (a symlink, a
    // relative path) when the relay was started.
    let same = |p: &Path| {
        p.file_name() == want.file_name()
            && match (
                p.parent().map(fs::canonicalize),
                want.parent().map(fs::canonicalize),
            ) {
                (Some(Ok(a)), Some(Ok(b))) => a == b,
                _ => p == want,
            }
    };
    let proc = match fs::read_dir("/proc") {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%color, "cannot look for relays of {color} a previous bgd left ({e}): if one still runs, new connections may go to its sockets until it ends");
            return;
        }
    };
    let relays: Vec<i32> = proc
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_relay = cmdline
                .split(|b| *b == 0)
                .nth(1)
                .is_some_and(|a| a == crate::supervise::relay::RELAY_ARG.as_bytes());
            is_relay && {
                let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                env.split(|b| *b == 0)
                    .filter_map(|v| v.strip_prefix(b"BGD_RELAY_SOCKET="))
                    .any(|v| same(Path::new(std::ffi::OsStr::from_bytes(v))))
            }
        })
        .collect();
    if relays.is_empty() {
        return;
    }
    tracing::info!(%color, "ending {} relay(s) of {color} a previous bgd left", relays.len());
    for pid in &relays {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while relays.iter().any(|p| start_time(*p).is_some()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let left: Vec<i32> = relays
        .into_iter()
        .filter(|p| start_time(*p).is_some())
        .collect();
    if !left.is_empty() {
        tracing::warn!(%color, "relays of {color} still run 2 s after SIGKILL (pids {left:?}): new connections may go to their sockets until they end");
    }
}

type Adoptable = (
    RunRecord,
    std::os::unix::net::UnixStream,
    Vec<(OwnedFd, String)>,
    Vec<u8>,
);

/// The note topic of `color`'s run record.
fn topic(color: Color) -> String {
    format!("run/{color}.json")
}

/// Adopts `color` through its relay alone, for a record that is missing
/// or unreadable: the relay names its app's pid; the app must run and be
/// in the color's cgroup. The record is written again.
fn from_relay(
    root: &Path,
    color: Color,
    contain: &Containment,
    state: &State,
) -> Result<Adoptable, String> {
    let socket = layout::relay_socket(root, color);
    let (relay, pid, fds, rest) = crate::supervise::relay::reconnect_any(&socket)
        .map_err(|e| format!("its relay does not answer ({e})"))?;
    let start_time = start_time(pid).ok_or_else(|| format!("pid {pid} no longer runs"))?;
    if !contain.holds(color, Pid::from_raw(pid)) {
        return Err(format!("pid {pid} is not in {color}'s cgroup"));
    }
    // Shared mode: the private probe socket is among the relay's.
    let probe_addr = fds
        .iter()
        .find(|(_, name)| name == crate::config::PROBE_FD_NAME)
        .and_then(|(fd, _)| {
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
                std::os::fd::AsRawFd::as_raw_fd(fd),
            )
            .ok()
        })
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                })
        });
    let record = RunRecord {
        pid,
        start_time,
        release: state.build(color).map_or(0, |b| b.release),
        probe_addr,
    };
    self::record(root, color, &record);
    Ok((record, relay, fds, rest))
}

fn adoptable(
    root: &Path,
    color: Color,
    record: RunRecord,
    contain: &Containment,
) -> Result<Adoptable, String> {
    match start_time(record.pid) {
        None => return Err(format!("pid {} no longer runs", record.pid)),
        Some(t) if t != record.start_time => {
            return Err(format!(
                "pid {} is another process now (it started at tick {t}, the recorded one at {})",
                record.pid, record.start_time
            ))
        }
        Some(_) => {}
    }
    if !contain.holds(color, Pid::from_raw(record.pid)) {
        return Err(format!("pid {} is not in {color}'s cgroup", record.pid));
    }
    let (relay, fds, rest) =
        crate::supervise::relay::reconnect(&layout::relay_socket(root, color), record.pid)
            .map_err(|e| format!("its relay does not answer ({e})"))?;
    Ok((record, relay, fds, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_when_its_stat_says() {
        let ticks = start_time(std::process::id() as i32).expect("this process runs");
        let at = started_at(ticks).expect("/proc/stat has btime");
        let now = std::time::SystemTime::now();
        // btime is in whole seconds, and this test process is young.
        let age = now.duration_since(at).unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(600), "{age:?}");
        assert!(at <= now + std::time::Duration::from_secs(1));
    }
}
