//! Building a child process: its fds, environment, process group and signal
//! state. The only `pre_exec` in bgd lives here.
//!
//! `LISTEN_PID` must equal the child's own pid, which the parent only learns
//! after `fork`, when a threaded program may no longer allocate or `setenv`.
//! So a child that receives sockets is started as `bgd __bgd_exec PROGRAM
//! ARGS...`: a fresh, single-threaded bgd that sets `LISTEN_PID=getpid()`
//! and execs the app ([`trampoline`]). The pid survives `exec`, so the app
//! sees its own pid.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::config::identity::Identity;

/// The argv\[1\] that makes `bgd` act as the exec trampoline.
pub const TRAMPOLINE_ARG: &str = "__bgd_exec";

/// At most this many sockets are passed to a child.
pub(crate) const MAX_FDS: usize = 64;

/// Variables of bgd's own that must never reach a child by accident.
fn is_scrubbed(key: &OsStr) -> bool {
    let k = key.as_encoded_bytes();
    k == b"NOTIFY_SOCKET" || k.starts_with(b"WATCHDOG_") || k.starts_with(b"LISTEN_")
}

/// What to run and what it inherits.
pub(crate) struct Spec<'a> {
    /// Program and arguments; a program containing `/` resolves against `cwd`.
    pub command: &'a [String],
    pub cwd: &'a Path,
    /// Set on top of bgd's own environment, after scrubbing it.
    pub env: Vec<(String, String)>,
    /// Sockets passed as fds 3.. in this order, named in `LISTEN_FDNAMES`.
    pub fds: Vec<(String, RawFd)>,
    /// Run as this user instead of bgd's.
    pub identity: Option<&'a Identity>,
    /// The color's `cgroup.procs`, open for writing: the child joins that
    /// cgroup before it execs (see `contain.rs`).
    pub cgroup: Option<RawFd>,
    /// SIGKILL it when bgd dies (`PR_SET_PDEATHSIG`): for hooks and
    /// checks. The app and its relay outlive bgd, so that a new bgd can
    /// adopt them (issue 13).
    pub die_with_bgd: bool,
}

/// A started child: the leader of its own process group (pgid == pid).
pub(crate) struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Starts `spec` in a new process group with stdin from /dev/null and
/// stdout/stderr on pipes. The caller must register `pid` with the
/// [`Reaper`](super::reaper::Reaper) before its next `.await`.
pub(crate) fn spawn(spec: &Spec) -> io::Result<Spawned> {
    if spec.fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "more than {MAX_FDS} sockets to pass"
        )));
    }
    let mut cmd = if spec.fds.is_empty() {
        let mut c = Command::new(&spec.command[0]);
        c.args(&spec.command[1..]);
        c
    } else {
        // /proc/self/exe still works when the bgd binary was replaced on disk.
        let mut c = Command::new("/proc/self/exe");
        c.arg0("bgd-exec").arg(TRAMPOLINE_ARG).args(spec.command);
        c
    };
    cmd.current_dir(spec.cwd)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| !is_scrubbed(k)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !spec.fds.is_empty() {
        let names: Vec<&str> = spec.fds.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", spec.fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    }

    // Everything the child-side closure touches is built here, before fork.
    let parent = nix::unistd::getpid().as_raw();
    let mut sources = [-1 as RawFd; MAX_FDS];
    for (slot, (_, fd)) in sources.iter_mut().zip(&spec.fds) {
        *slot = *fd;
    }
    let count = spec.fds.len();
    let cgroup = spec.cgroup;
    let die_with_bgd = spec.die_with_bgd;
    let ids = spec.identity.map(|i| {
        let groups: Vec<libc::gid_t> = i.groups.iter().map(|g| g.as_raw()).collect();
        (i.uid.as_raw(), i.gid.as_raw(), groups)
    });
    // SAFETY: the closure runs between fork and exec in the child of a
    // threaded process. It allocates nothing, takes no locks, and calls only
    // async-signal-safe functions (write, setgroups, setgid, setuid, prctl,
    // getppid, fcntl, dup2, sigaction) on data built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // First, while still privileged: the cgroup file is bgd's.
            if let Some(fd) = cgroup {
                crate::supervise::contain::join_self(fd)?;
            }
            if let Some((uid, gid, groups)) = &ids {
                drop_privileges(*uid, *gid, groups)?;
            }
            child_setup(parent, &sources[..count], die_with_bgd)
        });
    }
    let mut child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    let stdout = child
        .stdout
        .take()
        .expect("stdout was set to piped above")
        .into();
    let stderr = child
        .stderr
        .take()
        .expect("stderr was set to piped above")
        .into();
    // Dropping a std Child neither waits nor kills; the Reaper reaps it.
    drop(child);
    Ok(Spawned {
        pid,
        stdout,
        stderr,
    })
}

/// setgroups, setgid, setuid, in that order: once the uid is dropped the
/// groups can no longer be changed. Runs in the child before [`child_setup`],
/// because changing credentials clears `PR_SET_PDEATHSIG`.
fn drop_privileges(uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: plain syscalls on integers and a slice built before the fork.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs in the child between fork and exec; see the SAFETY note in [`spawn`].
fn child_setup(parent: libc::pid_t, sources: &[RawFd], die_with_bgd: bool) -> io::Result<()> {
    // SAFETY: the whole block is plain syscalls on integers; nothing
    // allocates.
    unsafe {
        // A hook or check must not outlive bgd. bgd spawns only from its
        // one runtime thread, which lives as long as the process, so the
        // "parent thread exited" rule of PDEATHSIG matches bgd's exit.
        if die_with_bgd
            && libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if die_with_bgd && libc::getppid() != parent {
            // bgd died between fork and prctl.
            libc::_exit(1);
        }
        // Move every source above the target range first, so that a source
        // already sitting on 3.. is not overwritten before it is copied.
        let n = sources.len() as RawFd;
        let mut high = [-1 as RawFd; MAX_FDS];
        for (i, &fd) in sources.iter().enumerate() {
            let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3 + n);
            if h < 0 {
                return Err(io::Error::last_os_error());
            }
            high[i] = h;
        }
        for (i, &h) in high[..sources.len()].iter().enumerate() {
            // dup2 clears FD_CLOEXEC on the target; the high copies close at exec.
            if libc::dup2(h, 3 + i as RawFd) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Ignored signals survive exec (a shell that starts bgd in the
        // background ignores SIGINT and SIGQUIT). std already resets the mask.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
    Ok(())
}

/// Kills a process group with SIGKILL when dropped, unless forgotten
/// (`std::mem::forget`) once its leader has exited and been reaped: a helper
/// process (a check, a hook) abandoned mid-way never outlives its caller.
pub(crate) struct KillGroupOnDrop(pub(crate) Pid);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Marks every fd above stderr that bgd inherited as close-on-exec, so that
/// whatever bgd's parent leaked to it (a shell's or CI runner's fds) never
/// reaches an app. Call first thing in `main`, while single-threaded.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on an integer fd; one that was the read_dir's own and
        // is closed by now fails with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// `bgd __bgd_exec PROGRAM ARGS...`: runs single-threaded, before anything
/// else in bgd's `main`. Sets `LISTEN_PID` to this process's pid and execs
/// the app in place. Returns only on failure, with the exit code to use.
pub fn trampoline(mut args: impl Iterator<Item = OsString>) -> i32 {
    let Some(program) = args.next() else {
        eprintln!("bgd: {TRAMPOLINE_ARG} needs a program to run");
        return 2;
    };
    let err = Command::new(&program)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    let cwd = std::env::current_dir().unwrap_or_default();
    eprintln!(
        "bgd: cannot run {} in {}: {err}",
        Path::new(&program).display(),
        cwd.display()
    );
    127
}
