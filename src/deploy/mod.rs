//! The deployment core: every decision about colors, releases, restarts and
//! shutdown, and no IO.
//!
//! [`Core::handle`] takes one [`Input`] (what happened, with the moment it
//! happened) and returns the [`Effect`]s the daemon must carry out, in order.
//! The core reads no clock, touches no file, spawns nothing and logs
//! nothing: it changes its own phases and says what to do. That is why every
//! rule here is a table test in `tests.rs`, without a runtime.
//!
//! The phases live in [`phase`]: each color's [`ColorPhase`], the
//! [`Release`] in progress with its [`ReleasePhase`], and [`Shutdown`]. The
//! rules are split by concern:
//! - `admit.rs`    whether a release or rollback may begin, and beginning it
//! - `swap.rs`     a ready color becomes live, the old one drains, the end
//! - `restart.rs`  a live color that died is started again, with backoff
//! - `shutdown.rs` the first stop drains, the second kills
//!
//! The core is generic over the process handle `P` so that it can own a
//! running color without knowing what a process is: the daemon uses
//! `AppProcess`, the tests a plain pid.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;
use serde::Serialize;

use crate::color::Color;
use crate::protocol::{ColorStatus, Failure, ReleaseProgress, Reply, Step};
use crate::reaper::Exit;
use crate::state::{Build, State};

mod admit;
mod phase;
mod restart;
mod shutdown;
mod swap;
#[cfg(test)]
mod tests;

pub use phase::{ColorPhase, Kind, Release, ReleasePhase, Shutdown, Slot, Trigger};

/// Names one release, rollback or restart task, so that events of an older
/// task are never taken for the current one's. A release's task id is its
/// release id; others are numbered from [`FIRST_OTHER_TASK`] and never stored.
pub type TaskId = u64;

/// Task ids of rollbacks and restarts start here, far above any release id.
pub const FIRST_OTHER_TASK: TaskId = 1 << 62;

/// Names one waiting client of a release or rollback; the daemon maps it to
/// the connection.
pub type ClientId = u64;

/// A color that ran this long before dying is restarted at once.
pub const HEALTHY_UPTIME: Duration = Duration::from_secs(30);

/// The longest wait before restarting a color that keeps dying young.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// When an input happened, read once by the daemon: the core reads no clock.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For durations (step times, drain time, uptime).
    pub mono: Instant,
    /// For what is shown and recorded (status `since`, history).
    pub wall: SystemTime,
}

/// What the core needs to know of a running color's process.
pub trait Process {
    /// The process leader's pid, also its process group id.
    fn pid(&self) -> Pid;
}

/// What a release, rollback or restart task is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub task: TaskId,
    /// The color to start: the dormant one, or the live one for a restart.
    pub color: Color,
    /// The build to stage first; `None` starts what the color holds.
    pub source: Option<PathBuf>,
    pub label: Option<String>,
    /// The release id the color's directory holds (for `BG_RELEASE`).
    pub release: u64,
    /// For an auto-release: the fingerprint the tree must still have.
    pub expect: Option<String>,
}

/// Durations of a release's steps in milliseconds, for its reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub stage_ms: u64,
    pub start_ms: u64,
    pub ready_ms: u64,
}

/// Why a task brought no ready color, and how the process it started
/// ended, if it started one.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub failure: Failure,
    pub exit: Option<Exit>,
}

/// Everything the core reacts to.
pub enum Input<P> {
    /// bgd started: bring up the color the state says was live.
    Boot,
    /// `bgctl release DIR`, or the build watcher (`Trigger::Watch`).
    Release {
        source: PathBuf,
        label: Option<String>,
        trigger: Trigger,
        client: Option<ClientId>,
    },
    /// `bgctl rollback`.
    Rollback { client: Option<ClientId> },
    /// A task reached a step.
    Progress {
        task: TaskId,
        step: Step,
        message: String,
    },
    /// A task swapped a new build into its color's directory.
    Staged { task: TaskId, build: Build },
    /// A task ended: a ready color, or why not.
    Prepared {
        task: TaskId,
        result: Result<(P, Timings), Failed>,
    },
    /// The outcome of the last [`Effect::Commit`]: `Err` says what failed.
    Committed(Result<(), String>),
    /// A drain ([`Effect::Drain`]) stopped the process `pid` of `color`;
    /// `forced`: it was still running at the drain deadline (that long)
    /// and was killed, cutting requests in flight.
    Drained {
        color: Color,
        pid: Pid,
        exit: Exit,
        forced: Option<Duration>,
    },
    /// A process bgd did not ask to stop exited; `tail` is its last output.
    Exited {
        color: Color,
        pid: Pid,
        exit: Exit,
        uptime: Duration,
        tail: Vec<String>,
    },
    /// The wait asked for by [`Effect::RestartAfter`] has passed.
    RestartDue { color: Color },
    /// SIGTERM or SIGINT.
    Stop,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A release or rollback that ended, for the history, auto-release and the
/// last result in status.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub record: crate::history::Record,
    pub trigger: Trigger,
    /// `None` when it succeeded.
    pub failure: Option<Failure>,
}

/// What the daemon must do, in order.
pub enum Effect<P> {
    /// Write the state; a failure is logged and changes nothing.
    Save(State),
    /// Write the state, then report the outcome as [`Input::Committed`]
    /// before anything else: the next step depends on it.
    Commit(State),
    /// Point `root/live` at this color.
    PointLive(Color),
    /// New public connections go to this color from now on (it just became
    /// live); the other color's socket gets none.
    Steer(Color),
    /// Start a task that stages (if asked), starts and waits for readiness.
    Launch(Launch),
    /// Stop a task: staging stops before it swaps anything in, and the
    /// process it started is killed.
    Abort(TaskId),
    /// Stop this process gracefully (stop signal, then SIGKILL at the drain
    /// deadline) and report [`Input::Drained`].
    Drain {
        color: Color,
        process: P,
    },
    /// Kill a process nobody needs any more (its whole group, SIGKILL).
    Discard(P),
    /// SIGKILL this process group now.
    Kill(Pid),
    /// Send [`Input::RestartDue`] after this long.
    RestartAfter {
        color: Color,
        delay: Duration,
    },
    /// Run `hooks.after_live` for the build that just went live.
    AfterLive {
        color: Color,
        release: u64,
    },
    /// Answer a client; [`Reply::Done`] and [`Reply::Error`] are its last.
    Reply {
        client: ClientId,
        reply: Reply,
    },
    /// A release or rollback ended.
    Ended(Box<Ended>),
    /// Nothing is live: stop listening, so clients are refused, not queued.
    Unlisten,
    /// Tell systemd READY=1 (sent once).
    Ready,
    /// Tell systemd STOPPING=1.
    Stopping,
    Log(Level, String),
    /// Publish a lifecycle event (`bgctl events`, the metrics). For what the
    /// daemon cannot read off the other effects: a canary's share, a bake
    /// that passed, an automatic rollback.
    #[allow(dead_code)] // until issue 12 (canary, bake, automatic rollback) emits it
    Notify(crate::events::Kind),
}

/// The deployment state and its rules. One owner: the daemon's loop.
pub struct Core<P> {
    /// What survives a restart of bgd; written only through effects.
    state: State,
    blue: Slot<P>,
    green: Slot<P>,
    release: Option<Release<P>>,
    shutdown: Shutdown,
    ready_sent: bool,
    next_task: TaskId,
    /// Effects of the input being handled.
    out: Vec<Effect<P>>,
}

impl<P: Process> Core<P> {
    /// A core for the state read at start-up. Nothing runs yet: send
    /// [`Input::Boot`].
    pub fn new(state: State, now: Now) -> Core<P> {
        Core {
            state,
            blue: Slot::new(now.wall),
            green: Slot::new(now.wall),
            release: None,
            shutdown: Shutdown::Running,
            ready_sent: false,
            next_task: FIRST_OTHER_TASK,
            out: Vec::new(),
        }
    }

    /// Applies `input` and returns what to do, in order.
    pub fn handle(&mut self, now: Now, input: Input<P>) -> Vec<Effect<P>> {
        match input {
            Input::Boot => self.boot(now),
            Input::Release {
                source,
                label,
                trigger,
                client,
            } => self.begin_release(now, source, label, trigger, client),
            Input::Rollback { client } => self.begin_rollback(now, client),
            Input::Progress {
                task,
                step,
                message,
            } => self.on_progress(now, task, step, message),
            Input::Staged { task, build } => self.on_staged(task, build),
            Input::Prepared { task, result } => self.on_prepared(now, task, result),
            Input::Committed(result) => self.on_committed(now, result),
            Input::Drained {
                color,
                pid,
                exit,
                forced,
            } => self.on_drained(now, color, pid, exit, forced),
            Input::Exited {
                color,
                pid,
                exit,
                uptime,
                tail,
            } => self.on_exited(now, color, pid, exit, uptime, tail),
            Input::RestartDue { color } => self.on_restart_due(now, color),
            Input::Stop => self.on_stop(now),
        }
        std::mem::take(&mut self.out)
    }

    /// What survives a restart of bgd, as last committed or being committed.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn slot(&self, color: Color) -> &Slot<P> {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    pub fn release(&self) -> Option<&Release<P>> {
        self.release.as_ref()
    }

    pub fn shutdown(&self) -> Shutdown {
        self.shutdown
    }

    /// Nothing new may begin now: a release runs, bgd is stopping, or the
    /// dormant color still drains (see [`admissible`](Self::admissible)).
    pub fn busy(&self) -> bool {
        self.admissible().is_err()
    }

    /// READY=1 was sent: the live color (if any) came up or failed to.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// Stopping, and nothing runs any more: the daemon may exit.
    pub fn finished(&self) -> bool {
        self.shutdown != Shutdown::Running
            && self.release.is_none()
            && Color::BOTH
                .iter()
                .all(|c| matches!(self.slot(*c).phase, ColorPhase::Stopped))
    }

    /// The pid of the live color's process, if it runs.
    pub fn live_pid(&self) -> Option<Pid> {
        self.state.live.and_then(|c| self.slot(c).pid())
    }

    /// One color as `bgctl status` shows it.
    pub fn color_status(&self, color: Color) -> ColorStatus {
        let slot = self.slot(color);
        let build = self.state.build(color);
        ColorStatus {
            state: slot.phase.name(build.is_some()).into(),
            pid: slot.pid().map(|p| p.as_raw() as u32),
            release: build.map(|b| b.release),
            label: build.and_then(|b| b.label.clone()),
            source: build.map(|b| b.source.clone()),
            since: Some(crate::rfc3339(slot.since)),
            restarts: slot.restarts,
            last_exit: slot.last_exit.map(|e| e.to_string()),
            reason: slot.phase.reason().map(str::to_string),
        }
    }

    /// The release in progress as `bgctl status` shows it.
    pub fn progress(&self) -> Option<ReleaseProgress> {
        self.release.as_ref().map(|r| ReleaseProgress {
            id: r.id,
            color: r.color,
            step: r.step(),
            label: r.label.clone(),
            since: crate::rfc3339(r.since),
        })
    }

    fn slot_mut(&mut self, color: Color) -> &mut Slot<P> {
        match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }

    /// Takes the live process out of `color`, leaving it `Stopped` for the
    /// caller to set its next phase; `None` (and nothing changed) if it is
    /// not live.
    fn take_live(&mut self, color: Color) -> Option<P> {
        let slot = self.slot_mut(color);
        match std::mem::replace(&mut slot.phase, ColorPhase::Stopped) {
            ColorPhase::Live { process } => Some(process),
            other => {
                slot.phase = other;
                None
            }
        }
    }

    fn fresh_task(&mut self) -> TaskId {
        let id = self.next_task;
        self.next_task += 1;
        id
    }

    fn emit(&mut self, effect: Effect<P>) {
        self.out.push(effect);
    }

    fn log(&mut self, level: Level, message: impl Into<String>) {
        self.out.push(Effect::Log(level, message.into()));
    }

    /// Logs the last `n` lines of a color's output, oldest first.
    fn log_tail(&mut self, level: Level, color: Color, tail: &[String], n: usize) {
        for line in &tail[tail.len().saturating_sub(n)..] {
            self.log(level, format!("{color} | {line}"));
        }
    }

    fn reply(&mut self, client: Option<ClientId>, reply: Reply) {
        if let Some(client) = client {
            self.out.push(Effect::Reply { client, reply });
        }
    }

    fn refuse(&mut self, client: Option<ClientId>, failure: Failure) {
        self.reply(client, Reply::Error(failure));
    }

    /// READY=1, once: the live color came up, or failed to, or there is none.
    fn ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            self.out.push(Effect::Ready);
        }
    }

    fn save(&mut self) {
        self.out.push(Effect::Save(self.state.clone()));
    }
}

/// The delay before restart number `streak + 1` of a color that keeps
/// dying young: 0.1 s, 0.2 s, 0.4 s ... up to [`MAX_BACKOFF`]. A color that
/// had run for [`HEALTHY_UPTIME`] starts over at streak 0: at once.
pub fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    (Duration::from_millis(100) * 2u32.saturating_pow(streak.min(16) - 1)).min(MAX_BACKOFF)
}
