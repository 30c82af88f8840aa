//! Containment: every process of a color, found, counted and signalled as
//! one, however it forked, `setsid()`ed or daemonized (issue 13).
//!
//! With a writable cgroup v2 hierarchy each color runs in its own cgroup
//! (cgroups(7), the kernel's cgroup-v2.rst):
//! - under systemd with `Delegate=yes`, the unit's cgroup is bgd's to
//!   manage: bgd moves itself into a leaf (`supervisor`) and the colors are
//!   `blue` and `green` beside it (no controllers are enabled: see
//!   `delegated`);
//! - otherwise the colors are `bgd-HASH/blue` and `bgd-HASH/green` below
//!   bgd's own cgroup (HASH from the root, so a restarted bgd finds them),
//!   with no controllers (bgd's own cgroup holds processes).
//!
//! A child joins its color's cgroup between fork and exec (`spawn.rs`
//! writes "0" to the pre-opened `cgroup.procs`). A color is gone when its
//! `cgroup.events` says `populated 0`; SIGKILL to all of it is one write to
//! `cgroup.kill` (Linux 5.14).
//!
//! Without one, bgd falls back to the process group plus its subreaper
//! role: a process of the color is one in the leader's process group, or
//! one whose environment carries this root's `BG_ROOT` and the color's
//! `BG_COLOR` (what `setsid()` cannot shed).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::color::Color;

/// How bgd finds the processes of a color.
#[derive(Debug)]
pub(crate) struct Containment {
    mode: Mode,
    /// bgd's root, whose path the app's `BG_ROOT` carries.
    root: PathBuf,
}

#[derive(Debug)]
enum Mode {
    /// Each color in `base/blue` and `base/green`.
    Cgroup { base: PathBuf },
    /// No writable cgroup v2: why not.
    ProcessGroup { why: String },
}

/// What status shows of a color's processes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Usage {
    pub processes: u32,
    /// `memory.current`, where the memory controller is enabled.
    pub memory_bytes: Option<u64>,
    /// `usage_usec` of `cpu.stat`.
    pub cpu_usec: Option<u64>,
}

impl Containment {
    /// Sets up a cgroup per color if a cgroup v2 hierarchy is writable here,
    /// else the process-group fallback. Never fails; says which in the log.
    pub(crate) fn setup(root: &Path) -> Containment {
        let off = std::env::var_os("BGD_NO_CGROUP").is_some_and(|v| !v.is_empty());
        let mode = match if off {
            Err("BGD_NO_CGROUP is set".into())
        } else {
            cgroup_base(root)
        } {
            Ok(base) => Mode::Cgroup { base },
            Err(why) => Mode::ProcessGroup { why },
        };
        let c = Containment {
            mode,
            root: root.to_path_buf(),
        };
        tracing::debug!("containment: {}", c.describe());
        c
    }

    /// Process-group containment only (tests, and `traffic.mode` checks).
    #[cfg(test)]
    pub(crate) fn process_group(root: &Path) -> Containment {
        Containment {
            mode: Mode::ProcessGroup {
                why: "asked for".into(),
            },
            root: root.to_path_buf(),
        }
    }

    /// `cgroup PATH`, or `process group (why)`: for status and the log.
    pub(crate) fn describe(&self) -> String {
        match &self.mode {
            Mode::Cgroup { base } => format!("cgroup {}", base.display()),
            Mode::ProcessGroup { why } => {
                format!("process group and BG_ROOT/BG_COLOR (no cgroup: {why})")
            }
        }
    }

    fn dir(&self, color: Color) -> Option<PathBuf> {
        match &self.mode {
            Mode::Cgroup { base } => Some(base.join(color.as_str())),
            Mode::ProcessGroup { .. } => None,
        }
    }

    /// The color's `cgroup.procs`, open for a child to join it (`None` in
    /// the fallback).
    pub(crate) fn join_fd(&self, color: Color) -> io::Result<Option<OwnedFd>> {
        let Some(dir) = self.dir(color) else {
            return Ok(None);
        };
        let f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"))?;
        Ok(Some(f.into()))
    }

    /// Every live process of `color` (`leader`'s group in the fallback).
    pub(crate) fn members(&self, color: Color, leader: Pid) -> Vec<Pid> {
        match self.dir(color) {
            Some(dir) => read_procs(&dir),
            None => self.fallback_members(color, leader),
        }
    }

    /// Whether any process of `color` still runs (zombies do not count).
    pub(crate) fn alive(&self, color: Color, leader: Pid) -> bool {
        match self.dir(color) {
            Some(dir) => populated(&dir),
            None => !self.fallback_members(color, leader).is_empty(),
        }
    }

    /// Kills what a previous bgd left of `color` that is not being adopted:
    /// everything in its cgroup, or (fallback) every process carrying this
    /// root's `BG_ROOT` and the color's `BG_COLOR`. Waits up to 5 s for it
    /// to be gone, so that the sockets it held are closed.
    pub(crate) fn kill_leftovers(&self, color: Color) {
        let left = match self.dir(color) {
            Some(dir) => read_procs(&dir),
            // No group is known: the environment alone says.
            None => self.fallback_members(color, Pid::from_raw(i32::MAX)),
        };
        if left.is_empty() {
            return;
        }
        tracing::warn!(%color, "killing {} processes of {color} a previous bgd left running", left.len());
        self.signal(color, left[0], Signal::SIGKILL);
        for pid in &left {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && left
                .iter()
                .any(|p| pgrp_and_state(p.as_raw()).is_some_and(|(_, s)| s != 'Z' && s != 'X'))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Whether `pid` is a process of `color` (always, in the fallback: the
    /// caller checked its start time).
    pub(crate) fn holds(&self, color: Color, pid: Pid) -> bool {
        match self.dir(color) {
            Some(dir) => read_procs(&dir).contains(&pid),
            None => true,
        }
    }

    /// Sends `sig` to every process of `color`.
    pub(crate) fn signal(&self, color: Color, leader: Pid, sig: Signal) {
        if sig == Signal::SIGKILL {
            if let Some(dir) = self.dir(color) {
                if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        match self.dir(color) {
            Some(dir) => {
                for pid in read_procs(&dir) {
                    let _ = kill(pid, sig);
                }
            }
            None => {
                // Once each: a second stop signal means "now" to many apps.
                let _ = killpg(leader, sig);
                for pid in self.fallback_members(color, leader) {
                    if pgrp_and_state(pid.as_raw()).is_some_and(|(g, _)| g != leader.as_raw()) {
                        let _ = kill(pid, sig);
                    }
                }
            }
        }
    }

    /// The processes, memory and CPU of `color`.
    pub(crate) fn usage(&self, color: Color, leader: Option<Pid>) -> Usage {
        match self.dir(color) {
            Some(dir) => Usage {
                processes: read_procs(&dir).len() as u32,
                memory_bytes: fs::read_to_string(dir.join("memory.current"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                cpu_usec: fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|s| stat_field(&s, "usage_usec")),
            },
            None => Usage {
                processes: leader.map_or(0, |l| self.fallback_members(color, l).len() as u32),
                ..Usage::default()
            },
        }
    }

    /// `[app] memory_max` and `cpu_weight` on both colors, where the
    /// controllers are enabled; `Err` says why not.
    pub(crate) fn limit(
        &self,
        memory_max: Option<&str>,
        cpu_weight: Option<u32>,
    ) -> Result<(), String> {
        if memory_max.is_none() && cpu_weight.is_none() {
            return Ok(());
        }
        let Mode::Cgroup { base } = &self.mode else {
            return Err("no cgroup: app.memory_max and app.cpu_weight need each color in a cgroup v2 (bgd as root, or under systemd with Delegate=yes) and the controllers enabled for them".into());
        };
        for color in Color::BOTH {
            let dir = base.join(color.as_str());
            let set = |file: &str, value: String, key: &str| {
                fs::write(dir.join(file), &value).map_err(|e| {
                    format!("cannot set {key} ({}): {e}; its controller is not enabled for the colors' cgroups below {}: bgd enables none itself (under systemd 252 a restarted bgd must be able to join its unit's cgroup), so enable it in the parent's cgroup.subtree_control, or remove {key}", dir.join(file).display(), base.display())
                })
            };
            if let Some(m) = memory_max {
                set("memory.max", m.to_string(), "app.memory_max")?;
            }
            if let Some(w) = cpu_weight {
                set("cpu.weight", w.to_string(), "app.cpu_weight")?;
            }
        }
        Ok(())
    }

    /// Processes of `color` by their process group or their environment.
    fn fallback_members(&self, color: Color, leader: Pid) -> Vec<Pid> {
        let root = format!("BG_ROOT={}", self.root.display()).into_bytes();
        let col = format!("BG_COLOR={color}").into_bytes();
        let Ok(proc) = fs::read_dir("/proc") else {
            return vec![];
        };
        proc.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Some((pgrp, state)) = pgrp_and_state(*pid) else {
                    return false;
                };
                if state == 'Z' || state == 'X' {
                    return false;
                }
                pgrp == leader.as_raw() || {
                    let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                    vars.contains(&root.as_slice()) && vars.contains(&col.as_slice())
                }
            })
            .map(Pid::from_raw)
            .collect()
    }
}

/// One helper command's containment (issue 25): a hook (`prepare`,
/// `after_live`) or a `health.exec` check, and everything it starts, even
/// in the background or after `setsid()`. Made by [`Containment::step`];
/// dropping it kills all of it, so nothing outlives its step or bgd's stop.
/// With cgroups it is its own cgroup `base/step-PID-N`, removed once empty;
/// in the fallback, the processes whose environment carries its tag.
pub(crate) struct Step {
    /// `base/step-PID-N`, when cgroups are used.
    dir: Option<PathBuf>,
    /// Its `cgroup.procs`, open for the child to join between fork and exec.
    join: Option<OwnedFd>,
    /// `BGD_STEP` for the child's environment: found by it in the fallback.
    tag: String,
}

impl Step {
    /// The fd the child writes itself into (see `join_self`).
    pub(crate) fn join_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.join.as_ref().map(|f| f.as_raw_fd())
    }

    /// The variable that marks the command's processes.
    pub(crate) fn env(&self) -> (String, String) {
        ("BGD_STEP".into(), self.tag.clone())
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.join = None;
        match self.dir.take() {
            Some(dir) => {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
                for pid in read_procs(&dir) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                if fs::remove_dir(&dir).is_err() {
                    // Its processes are still dying: removed once they are
                    // gone, off the caller's thread.
                    std::thread::spawn(move || remove_when_empty(&dir));
                }
            }
            None => kill_tagged(&self.tag),
        }
    }
}

/// Removes the cgroup `dir` once its processes are gone (up to 5 s).
fn remove_when_empty(dir: &Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while fs::remove_dir(dir).is_err() && std::time::Instant::now() < until {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGKILL to every process whose environment has `BGD_STEP=tag`, again
/// while any is left (what forked between two looks), for up to 1 s.
fn kill_tagged(tag: &str) {
    let want = format!("BGD_STEP={tag}").into_bytes();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let found: Vec<i32> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| pgrp_and_state(*pid).is_some_and(|(_, s)| s != 'Z' && s != 'X'))
            .filter(|pid| {
                let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                env.split(|b| *b == 0).any(|v| v == want.as_slice())
            })
            .collect();
        if found.is_empty() || std::time::Instant::now() >= until {
            return;
        }
        for pid in found {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Containment {
    /// A containment for one helper command (see [`Step`]). Falls back to
    /// its environment tag if its cgroup cannot be made.
    pub(crate) fn step(&self) -> Step {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        if let Mode::Cgroup { base } = &self.mode {
            let dir = base.join(format!("step-{tag}"));
            let made = fs::create_dir(&dir).and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(dir.join("cgroup.procs"))
            });
            match made {
                Ok(f) => {
                    return Step {
                        dir: Some(dir),
                        join: Some(f.into()),
                        tag,
                    }
                }
                Err(e) => {
                    let _ = fs::remove_dir(&dir);
                    tracing::warn!("cannot make a cgroup for a hook or check ({}): {e}; its processes are found by their environment", dir.display());
                }
            }
        }
        Step {
            dir: None,
            join: None,
            tag,
        }
    }

    /// At start: kills and removes what a bgd that died left of its helper
    /// commands (`step-*` cgroups).
    pub(crate) fn remove_stale_steps(&self) {
        let Mode::Cgroup { base } = &self.mode else {
            return;
        };
        for e in fs::read_dir(base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("step-") {
                let dir = e.path();
                let _ = fs::write(dir.join("cgroup.kill"), "1");
                remove_when_empty(&dir);
            }
        }
    }

    /// On a clean exit (no color runs): removes the colors' cgroups and,
    /// unless it is systemd's unit, the `bgd-HASH` directory above them, so
    /// nothing of bgd is left in the hierarchy. What still holds processes
    /// (a relay finishing) is waited for, up to 5 s.
    pub(crate) fn remove_tree(&self) {
        let Mode::Cgroup { base } = &self.mode else {
            return;
        };
        self.remove_stale_steps();
        for color in Color::BOTH {
            let dir = base.join(color.as_str());
            if !read_procs(&dir).is_empty() {
                tracing::warn!("{} still holds processes: left in place", dir.display());
                continue;
            }
            remove_when_empty(&dir);
        }
        let own = base
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("bgd-"));
        if own {
            if let Err(e) = fs::remove_dir(base) {
                tracing::warn!("cannot remove {}: {e}", base.display());
            }
        }
    }
}

/// The cgroup under which the colors go, created; `Err` says why there is
/// none.
fn cgroup_base(root: &Path) -> Result<PathBuf, String> {
    let mount = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
    let own = own_cgroup().ok_or("bgd's cgroup v2 path is not in /proc/self/cgroup")?;
    let own_dir = mount.join(own.trim_start_matches('/'));
    let base = if let Some(unit) = delegated(&own_dir) {
        unit
    } else {
        own_dir.join(format!(
            "bgd-{:016x}",
            fnv1a(root.as_os_str().as_encoded_bytes())
        ))
    };
    for dir in [base.join("blue"), base.join("green")] {
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot write {}: {e}", dir.join("cgroup.procs").display()))?;
    }
    Ok(base)
}

/// Under systemd with `Delegate=yes` the unit's cgroup is bgd's: bgd moves
/// itself into `supervisor` (where a reexec finds it) and returns the
/// unit's cgroup. Anywhere else, `None`.
fn delegated(own: &Path) -> Option<PathBuf> {
    let is_unit = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".service"))
    };
    std::env::var_os("INVOCATION_ID")?;
    // After a reexec bgd is already in its leaf.
    if own.file_name().is_some_and(|n| n == "supervisor") {
        return own.parent().filter(|u| is_unit(u)).map(Path::to_path_buf);
    }
    if !is_unit(own) {
        return None;
    }
    let leaf = own.join("supervisor");
    let moved = fs::create_dir_all(&leaf)
        .and_then(|()| fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()));
    if let Err(e) = moved {
        tracing::debug!("not a delegated cgroup ({}): {e}", own.display());
        return None;
    }
    // No controllers are enabled here: with them, the unit's own cgroup
    // could hold no process, and systemd (before DelegateSubgroup=, v254)
    // puts a restarted bgd there. Memory and CPU limits need them.
    Some(own.to_path_buf())
}

/// Where the cgroup v2 hierarchy is mounted (/proc/self/mountinfo,
/// proc(5)): `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// bgd's own cgroup v2 path, the `0::PATH` line of /proc/self/cgroup.
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn read_procs(dir: &Path) -> Vec<Pid> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| pgrp_and_state(*pid).is_some_and(|(_, s)| s != 'Z' && s != 'X'))
        .map(Pid::from_raw)
        .collect()
}

fn populated(dir: &Path) -> bool {
    let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    // A cgroup whose last process is a zombie still counts as populated
    // until it is reaped; bgd reaps promptly, and a zombie serves nothing.
    stat_field(&events, "populated") != Some(0) && !read_procs(dir).is_empty()
}

/// `key N` from a flat-keyed cgroup file.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Fields 5 (process group) and 3 (state) of /proc/PID/stat.
fn pgrp_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgrp = rest.nth(1)?.parse().ok()?;
    Some((pgrp, state))
}

/// FNV-1a, 64 bits: a stable short name for a root.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes "0" to a `cgroup.procs` fd: the calling process joins that
/// cgroup. Async-signal-safe: for the child between fork and exec.
pub(crate) fn join_self(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: write(2) of a 1-byte static buffer to an fd opened before fork.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let events = "populated 1\nfrozen 0\n";
        assert_eq!(stat_field(events, "populated"), Some(1));
        assert_eq!(stat_field(events, "frozen"), Some(0));
        assert_eq!(
            stat_field("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            Some(1234)
        );
        assert_eq!(stat_field(events, "nothing"), None);
    }

    #[test]
    fn a_root_names_the_same_cgroup_each_time() {
        assert_eq!(fnv1a(b"/srv/app/state"), fnv1a(b"/srv/app/state"));
        assert_ne!(fnv1a(b"/srv/app/state"), fnv1a(b"/srv/other/state"));
    }

    #[test]
    fn the_fallback_finds_this_process_by_its_group() {
        let me = nix::unistd::getpid();
        let c = Containment::process_group(Path::new("/nonexistent-root"));
        let pgrp = nix::unistd::getpgrp();
        assert!(c.members(Color::Blue, pgrp).contains(&me));
        assert!(c.alive(Color::Blue, pgrp));
    }
}
