//! One running color: the app's process group, its exit status and its
//! captured output.
//!
//! An [`AppProcess`] is owned by exactly one party at a time (the release that
//! starts it, then the daemon while it is live, then the drain that stops
//! it). Dropping one whose group may still be running kills the group with
//! SIGKILL, so an aborted release can never leave processes behind.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::color::Color;
use crate::config::template;
use crate::config::PROBE_FD_NAME;
use crate::store::layout;
use crate::supervise::adoption::{self, RunRecord};
use crate::supervise::logs::{LogHub, LogLine};
use crate::supervise::notify::NotifySocket;
use crate::supervise::reaper::Exit;
use crate::supervise::{relay, spawn};
use crate::Ctx;

/// Lines of output kept per color for failure reports.
const TAIL_LINES: usize = 40;
/// Longest line logged; the rest of a longer line is cut.
const MAX_LINE: usize = 8 * 1024;

/// Whether the process `pid` runs (it exists and is neither a zombie nor
/// dead), from /proc/PID/stat at this moment.
pub fn leader_runs(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Whether the process `pid` is stopped (state `T` or `t` in
/// /proc/PID/stat: SIGSTOP, or a tracer).
pub fn stopped(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')')?.1.trim_start().chars().next())
        .is_some_and(|state| state == 'T' || state == 't')
}

pub struct AppProcess {
    pub color: Color,
    /// Also the process group id.
    pub pid: Pid,
    pub started: SystemTime,
    /// Set by the reaper task; `None` while the leader runs.
    exit: watch::Receiver<Option<Exit>>,
    /// The app's captured output.
    output: Arc<Output>,
    /// Set once the whole group is known to be gone; its pgid may then be
    /// reused by an unrelated process, so it is never signalled again.
    group_gone: AtomicBool,
    /// bgd's copy of the private probe socket; closed when this drops.
    _probe: Option<std::net::TcpListener>,
    pub probe_addr: Option<SocketAddr>,
    pub notify: Option<NotifySocket>,
    /// bgd's root, where the group is recorded while it may run.
    root: PathBuf,
    /// Finds every process of the color: its cgroup, or its group and
    /// environment.
    contain: Arc<crate::supervise::contain::Containment>,
}

impl AppProcess {
    /// Starts the app from `dir` as `color`, with the listening sockets and,
    /// as the health config asks, a probe socket and a notify socket.
    pub fn start(ctx: &Ctx, color: Color, release: u64, dir: &Path) -> anyhow::Result<AppProcess> {
        let cfg = &ctx.config;
        let mut fds = ctx.listeners.fds_for(color);
        let mut env = color_env(ctx, color, release);
        let (probe, notify) = health_sockets(ctx, color, &mut fds, &mut env)?;
        let command = expand_command(&cfg.app.command, &fds)?;
        check_program(&command[0], dir)?;
        let cgroup = ctx.contain.join_fd(color).with_context(|| {
            format!("cannot open {color}'s cgroup ({})", ctx.contain.describe())
        })?;
        let spawned = spawn::spawn(&spawn::Spec {
            command: &command,
            cwd: dir,
            env,
            fds,
            identity: cfg.app.identity.as_ref(),
            cgroup: cgroup.as_ref().map(|fd| fd.as_raw_fd()),
            die_with_bgd: false,
        })
        .with_context(|| format!("cannot start {:?} in {}", cfg.app.command[0], dir.display()))?;
        // No .await may come between spawn and watch: see reaper.rs.
        let exited = ctx.reaper.watch(spawned.pid);
        let (probe, probe_addr) = probe.map_or((None, None), |(l, a)| (Some(l), Some(a)));
        let pid = spawned.pid.as_raw();
        let record = RunRecord {
            pid,
            start_time: adoption::start_time(pid).unwrap_or(0),
            release,
            probe_addr,
        };
        adoption::record(&cfg.fixed.root, color, &record);
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(status) = exited.await {
                let _ = exit_tx.send(Some(status));
            }
        });
        let output = Arc::new(Output::default());
        capture_through_relay(
            ctx,
            color,
            spawned.pid,
            (spawned.stdout, spawned.stderr),
            &output,
        );
        tracing::info!(%color, pid, release, "started {}", dir.display());
        Ok(AppProcess {
            color,
            pid: spawned.pid,
            started: SystemTime::now(),
            exit,
            output,
            group_gone: AtomicBool::new(false),
            _probe: probe,
            probe_addr,
            notify,
            root: cfg.fixed.root.clone(),
            contain: ctx.contain.clone(),
        })
    }

    /// Takes over `found`, a color a previous bgd left running: its exit is
    /// watched through the reaper if it is bgd's child (after a reexec),
    /// else through a pidfd (its status is then unknown); its output comes
    /// from its relay.
    pub fn adopt(ctx: &Ctx, found: adoption::Found) -> AppProcess {
        let color = found.color;
        let pid = Pid::from_raw(found.record.pid);
        let (exit_tx, exit) = watch::channel(None);
        let ours = parent_of(pid) == Some(nix::unistd::getpid().as_raw());
        let reaped = ours.then(|| ctx.reaper.watch(pid));
        tokio::spawn(async move {
            let status = match reaped {
                Some(r) => r.await.unwrap_or(Exit::Unknown),
                None => {
                    wait_pidfd(pid, found.record.start_time).await;
                    Exit::Unknown
                }
            };
            let _ = exit_tx.send(Some(status));
        });
        let output = Arc::new(Output::default());
        let (o, hub) = (output.clone(), ctx.logs.clone());
        match found
            .relay
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(found.relay))
        {
            Ok(conn) => {
                tokio::spawn(relay_lines(conn, found.rest, color, pid, o, hub));
            }
            Err(e) => {
                tracing::warn!(%color, "cannot read the relay of {color}: {e}");
                output.eof.send_modify(|n| *n = 2);
            }
        }
        let record = found.record;
        // Its uptime counts from its own start, not from the adoption.
        let started = adoption::started_at(record.start_time).unwrap_or_else(SystemTime::now);
        AppProcess {
            color,
            pid,
            started,
            exit,
            output,
            group_gone: AtomicBool::new(false),
            _probe: None,
            probe_addr: record.probe_addr,
            notify: None,
            root: ctx.config.fixed.root.clone(),
            contain: ctx.contain.clone(),
        }
    }

    /// The leader's exit status once it has exited.
    pub fn exit_status(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits for the leader to exit.
    pub async fn exited(&self) -> Exit {
        self.wait_exit().await
    }

    /// A future for the leader's exit that does not borrow `self`, for a task
    /// that watches a color it does not own.
    pub fn wait_exit(&self) -> impl std::future::Future<Output = Exit> + Send + 'static {
        let mut rx = self.exit.clone();
        async move {
            match rx.wait_for(|e| e.is_some()).await {
                Ok(e) => e.expect("checked by wait_for"),
                // The sender lives until the status is sent; it only goes away
                // without one when the runtime shuts down.
                Err(_) => Exit::Signal(libc::SIGKILL),
            }
        }
    }

    /// Like [`wait_exit`](Self::wait_exit), and then also the uptime and the
    /// last lines of output, for a report that must not block the daemon.
    pub fn wait_exit_with_tail(
        &self,
    ) -> impl std::future::Future<Output = (Exit, Duration, Vec<String>)> + Send + 'static {
        let (exit, output, started) = (self.wait_exit(), self.output.clone(), self.started);
        async move {
            let status = exit.await;
            let uptime = started.elapsed().unwrap_or_default();
            (status, uptime, output.tail_after_exit().await)
        }
    }

    /// Sends `sig` to every process of the color: its cgroup, or its
    /// process group and the processes that carry its environment.
    pub fn signal(&self, sig: Signal) {
        if self.group_gone.load(Ordering::Relaxed) {
            return;
        }
        self.contain.signal(self.color, self.pid, sig);
    }

    /// Whether any process of the color still runs; once none does, it is
    /// never signalled again (its numbers may be reused).
    fn group_alive(&self) -> bool {
        if self.group_gone.load(Ordering::Relaxed) {
            return false;
        }
        if self.contain.alive(self.color, self.pid) {
            return true;
        }
        self.group_gone.store(true, Ordering::Relaxed);
        adoption::forget(&self.root, self.color);
        false
    }

    /// Graceful stop: `sig` to the group, then SIGKILL to the group if any
    /// process of it is left after `deadline`. Returns once the whole group is
    /// gone and reaped, with the leader's exit status and whether SIGKILL
    /// was needed.
    pub async fn stop(&self, sig: Signal, deadline: Duration) -> (Exit, bool) {
        self.signal(sig);
        let until = tokio::time::Instant::now() + deadline;
        let mut killed = false;
        if tokio::time::timeout_at(until, self.wait_group_gone())
            .await
            .is_err()
        {
            tracing::warn!(color = %self.color, pid = self.pid.as_raw(), "still running {deadline:?} after {sig}: sending SIGKILL to its process group");
            self.kill().await;
            killed = true;
        }
        (self.exited().await, killed)
    }

    /// SIGKILL to the group; returns once it is gone. Without a cgroup the
    /// group is found by a scan, and a process forked just after it would
    /// be missed: the SIGKILL is sent again every 200 ms until none is left.
    pub async fn kill(&self) {
        loop {
            self.signal(Signal::SIGKILL);
            let gone = self.wait_group_gone();
            if tokio::time::timeout(Duration::from_millis(200), gone)
                .await
                .is_ok()
            {
                return;
            }
        }
    }

    /// Waits for the leader's exit, then for the rest of the group (workers
    /// the app forked, re-parented to bgd and reaped by the reaper). The
    /// kernel has no event for "group empty", so this polls, only while a
    /// stop is in progress.
    async fn wait_group_gone(&self) {
        self.exited().await;
        let mut every = Duration::from_millis(5);
        while self.group_alive() {
            tokio::time::sleep(every).await;
            every = (every * 2).min(Duration::from_millis(100));
        }
    }

    /// The last lines the app printed, oldest first. After an exit it first
    /// waits briefly for the pipes to drain so the final words are included.
    pub async fn log_tail(&self) -> Vec<String> {
        if self.exit_status().is_some() {
            self.output.tail_after_exit().await
        } else {
            self.output.tail()
        }
    }
}

/// What the health config asks the app to be given: shared mode's probe
/// socket (in gate mode the probe reaches the color through the public
/// address, see `Listeners::probe_target`) and a notify socket.
type HealthSockets = (
    Option<(std::net::TcpListener, SocketAddr)>,
    Option<NotifySocket>,
);

fn health_sockets(
    ctx: &Ctx,
    color: Color,
    fds: &mut Vec<(String, RawFd)>,
    env: &mut Vec<(String, String)>,
) -> anyhow::Result<HealthSockets> {
    let cfg = &ctx.config;
    let shared = cfg.fixed.traffic == crate::config::TrafficMode::Shared;
    let probe = if cfg.health.http.is_some() && shared {
        let (l, addr) = probe_socket()?;
        env.push(("BG_PROBE_ADDR".into(), addr.to_string()));
        fds.push((PROBE_FD_NAME.to_string(), l.as_raw_fd()));
        Some((l, addr))
    } else {
        None
    };
    let notify = if cfg.health.notify {
        let n = NotifySocket::bind(
            &layout::notify_socket(&cfg.fixed.root, color),
            cfg.app.identity.as_ref(),
        )?;
        env.push(("NOTIFY_SOCKET".into(), n.path().display().to_string()));
        Some(n)
    } else {
        None
    };
    Ok((probe, notify))
}

/// A program named with a `/` must be a file in the build.
fn check_program(program: &str, dir: &Path) -> anyhow::Result<()> {
    if program.contains('/') && !dir.join(program).is_file() {
        anyhow::bail!(
            "app.command[0] {program:?} is not a file in the build ({}): check the command or the build",
            dir.join(program).display()
        );
    }
    Ok(())
}

/// Shared mode's private probe socket: `health.http` reaches the color
/// through it, as both colors accept from the public sockets.
fn probe_socket() -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind the probe socket on 127.0.0.1")?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() || self.group_alive() {
            tracing::warn!(color = %self.color, pid = self.pid.as_raw(), "abandoned while running: killing its process group");
            self.signal(Signal::SIGKILL);
        }
        adoption::forget(&self.root, self.color);
    }
}

/// `app.command` with its `{fd:NAME}` templates expanded against the
/// sockets the app gets, `fds` (in fd order, from 3).
fn expand_command(command: &[String], fds: &[(String, RawFd)]) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    command
        .iter()
        .enumerate()
        .map(|(i, arg)| {
            template::expand(arg, &names).map_err(|e| {
                // The config check passed, so only a reload that changed
                // [[listen]] (kept as it was until bgd restarts) gets here.
                anyhow::anyhow!(
                    "app.command[{i}]: {} (a reload does not change [[listen]]: restart bgd)",
                    e.message
                )
            })
        })
        .collect()
}

/// The environment of everything bgd runs for a color (the app, health
/// checks, hooks): `[app] env` (its `{fd:NAME}` templates expanded to the
/// app's fd numbers), then `BG_COLOR`, `BG_RELEASE`, `BG_ROOT` and
/// `BG_SHARED`.
pub fn color_env(ctx: &Ctx, color: Color, release: u64) -> Vec<(String, String)> {
    let cfg = &ctx.config;
    let names = cfg.fd_names();
    let mut env: Vec<(String, String)> = cfg
        .app
        .env
        .iter()
        .map(|(k, v)| {
            // Checked when the config was read; a value that no longer
            // expands (see expand_command) is passed as written.
            let v = template::expand(v, &names).unwrap_or_else(|_| v.clone());
            (k.clone(), v)
        })
        .collect();
    env.push(("BG_COLOR".into(), color.to_string()));
    env.push(("BG_RELEASE".into(), release.to_string()));
    // The color's own directory: where its code is (root/live flips only
    // at the swap, after the new color is ready).
    env.push((
        "BG_DIR".into(),
        layout::color_dir(&cfg.fixed.root, color)
            .display()
            .to_string(),
    ));
    env.push(("BG_ROOT".into(), cfg.fixed.root.display().to_string()));
    env.push((
        "BG_SHARED".into(),
        layout::shared_dir(&cfg.fixed.root).display().to_string(),
    ));
    env
}

/// A color's captured output: the last lines, and how many of the two
/// pipes have reached end of file.
#[derive(Default)]
struct Output {
    tail: Mutex<VecDeque<String>>,
    eof: watch::Sender<u8>,
}

impl Output {
    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .expect("tail lock is never held across a panic")
            .iter()
            .cloned()
            .collect()
    }

    /// The tail once both pipes are drained, or after 500 ms if a forked
    /// process still holds them open.
    async fn tail_after_exit(&self) -> Vec<String> {
        let mut eof = self.eof.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(500), eof.wait_for(|n| *n >= 2)).await;
        self.tail()
    }

    fn push(&self, line: String) {
        let mut t = self
            .tail
            .lock()
            .expect("tail lock is never held across a panic");
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// Logs each line of one output stream and keeps the last ones.
/// Hands the app's output pipes to a relay of the color (so that they
/// outlive bgd) and reads the lines back from it. bgd keeps its own copies
/// of the pipes until the relay answers: if none does, it reads them
/// directly (the app then gets SIGPIPE once bgd is gone).
fn capture_through_relay(
    ctx: &Ctx,
    color: Color,
    pid: Pid,
    (stdout, stderr): (OwnedFd, OwnedFd),
    output: &Arc<Output>,
) {
    let path = layout::relay_socket(&ctx.config.fixed.root, color);
    let hub = ctx.logs.clone();
    let started = relay::start(
        &path,
        pid.as_raw(),
        (&stdout, &stderr),
        ctx.listeners.named(),
    );
    let output = output.clone();
    tokio::spawn(async move {
        let reached = match started {
            Ok(()) => relay::connect(&path, pid.as_raw()).await,
            Err(e) => Err(e),
        };
        match reached {
            Ok((conn, rest)) => {
                // The relay reads the pipes now.
                drop((stdout, stderr));
                relay_lines(conn, rest, color, pid, output, hub).await
            }
            Err(e) => {
                tracing::warn!(%color, "no relay for {color} ({e}): its output is read directly, and the app will not outlive bgd");
                for (fd, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
                    tokio::spawn(capture(fd, stream, color, pid, output.clone(), hub.clone()));
                }
            }
        }
    });
}

/// The app's lines as its relay sends them, into its tail and the log hub.
async fn relay_lines(
    conn: tokio::net::UnixStream,
    rest: Vec<u8>,
    color: Color,
    pid: Pid,
    output: Arc<Output>,
    hub: Arc<LogHub>,
) {
    relay::read_frames(conn, rest, |frame| match frame {
        relay::Frame::Line { stdout, text } => {
            let stream = if stdout { "stdout" } else { "stderr" };
            take_line(text, stream, color, pid, &output, &hub)
        }
        relay::Frame::End => output.eof.send_modify(|n| *n += 1),
    })
    .await;
}

/// One line of the app's output: logged, kept for failure reports, and
/// sent to `bgctl logs`.
fn take_line(text: String, stream: &str, color: Color, pid: Pid, output: &Output, hub: &LogHub) {
    // bgd's own log may be a terminal: the app's control characters are
    // escaped there (`bgctl logs --json` has them as they were).
    let shown = crate::supervise::logs::escape_controls(&text);
    tracing::info!(target: "app", %color, pid = pid.as_raw(), stream, "{shown}");
    output.push(text.clone());
    hub.push(LogLine {
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        color,
        pid: pid.as_raw() as u32,
        stream: stream.to_string(),
        line: text,
    });
}

/// Field 4 of /proc/PID/stat: the parent's pid.
fn parent_of(pid: Pid) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits until `pid` (started at `start_time`, field 22 of its stat)
/// exits, through a pidfd (pidfd_open(2), Linux 5.3): it becomes readable
/// then. Where no pidfd can be had (an older kernel, a seccomp filter), it
/// looks at the start time once a second instead.
async fn wait_pidfd(pid: Pid, start_time: u64) {
    // SAFETY: pidfd_open with a pid and no flags returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // The pidfd names the process only if it is still the recorded one.
    if fd < 0 || adoption::start_time(pid.as_raw()) != Some(start_time) {
        if fd >= 0 {
            // SAFETY: closing the fd just opened, which nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        while adoption::start_time(pid.as_raw()) == Some(start_time) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        return;
    }
    // SAFETY: the fd was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the AsyncFd owns `fd`, an open pidfd, for its whole life.
    if let Ok(a) = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    } {
        let _ = a.readable().await;
    }
}

async fn capture(
    fd: OwnedFd,
    stream: &'static str,
    color: Color,
    pid: Pid,
    output: Arc<Output>,
    hub: Arc<LogHub>,
) {
    read_lines(fd, |text| {
        take_line(text, stream, color, pid, &output, &hub)
    })
    .await;
    output.eof.send_modify(|n| *n += 1);
}

/// Calls `on_line` with each line read from `fd` until end of file. Bytes
/// that are not UTF-8 are replaced, a trailing `\r` is dropped, and a line
/// longer than [`MAX_LINE`] is cut (the rest of it skipped), so a child that
/// never prints a newline cannot grow bgd's memory.
pub async fn read_lines(fd: OwnedFd, mut on_line: impl FnMut(String)) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut line = Vec::new();
    let mut emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        on_line(text.trim_end_matches('\r').to_string());
        line.clear();
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(c) => c,
        };
        let newline = chunk.iter().position(|b| *b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        let used = newline.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            emit(&mut line);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}
