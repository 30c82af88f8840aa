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
//! - `traffic.rs`  after a swap: the standby, the bake window, canaries,
//!   the repeated health checks, and switching back without a start
//!
//! The core is generic over the process handle `P` so that it can own a
//! running color without knowing what a process is: the daemon uses
//! `AppProcess`, the tests a plain pid.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;
use serde::Serialize;

use crate::color::Color;
use crate::deploy::state::{Build, State};

mod admit;
pub mod answer;
pub(crate) mod auto;
pub mod clients;
pub mod compare;
mod exit;
pub mod failure;
mod input;
pub mod kept;
mod liveness;
pub mod pause;
mod phase;
mod preview;
mod reclaim;
pub mod record;
mod restart;
pub mod rollout;
mod shutdown;
pub mod state;
mod swap;
#[cfg(test)]
mod tests;
mod traffic;

pub use answer::{Answer, CanaryShare, Outcome, Swapped};
pub use exit::Exit;
pub use failure::{Failure, FailureKind, Step, WriteFailed};
pub use input::{Checked, Drained, Exited, Input, TaskReport};
pub use liveness::daemonized;
pub use pause::{PauseAsk, PauseView, Paused};
pub use phase::{ColorPhase, Health, Kind, Release, ReleasePhase, Shutdown, Slot, Trigger};
pub use record::{Record, StepTime};
pub use traffic::{Bake, Canary, Policy, Shares};

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

impl Now {
    /// The wall-clock time of the monotonic moment `at`, seen from now.
    pub fn wall_at(&self, at: Instant) -> SystemTime {
        self.wall + at.saturating_duration_since(self.mono)
    }
}

/// What the core needs to know of a running color's process.
pub trait Process {
    /// The process leader's pid, also its process group id.
    fn pid(&self) -> Pid;

    /// How the leader ended, once bgd knows it did (in memory: the reaper
    /// set it); `None` while it runs. Read at the moment of a switch, so a
    /// leader whose exit event is still on its way is not made live.
    fn exited(&self) -> Option<Exit> {
        None
    }
}

/// What a release, rollback or restart task is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub task: TaskId,
    /// The color to start: the dormant one, or the live one for a restart.
    pub color: Color,
    /// The build to stage first; `None` starts what the color holds (or
    /// stages `kept`).
    pub source: Option<PathBuf>,
    /// A kept release to stage a copy of first (a rollback to it): the
    /// record the color gets once it is staged.
    pub kept: Option<Build>,
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
    pub record: crate::deploy::record::Record,
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
    /// live); the other color's socket gets none, and a canary split ends.
    Steer(Color),
    /// `percent` % of new connections go to `canary`, the rest to the
    /// other color; 0 ends the split.
    Split {
        canary: Color,
        percent: u8,
    },
    /// The clients in `[traffic] testers` go to this color from now on (a
    /// preview's or a canary's); `None`: where everyone goes.
    Testers(Option<Color>),
    /// Send [`Input::Due`] at this moment.
    WakeAt(Instant),
    /// Check `color`'s process `pid` every `health.interval` and report
    /// each check as [`Input::Checked`] (it now gets new connections).
    Monitor {
        color: Color,
        pid: Pid,
    },
    /// Stop checking `color`.
    Unmonitor(Color),
    /// `color` died and will not be started again, and no longer receives
    /// connections: relay what is still queued on its sockets to the live
    /// color (see `rescue.rs`).
    Rescue(Color),
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
    /// Remove the kept copies of these releases (`root/releases/<id>`),
    /// off the release's path: the state no longer names them.
    Forget(Vec<u64>),
    /// Kill a process nobody needs any more (its whole group, SIGKILL).
    Discard(P),
    /// Ask the drain of `color`'s process `pid` to hand it back if it has
    /// not sent its stop signal yet; answered with [`Input::Reclaimed`].
    Reclaim {
        color: Color,
        pid: Pid,
    },
    /// SIGKILL this process group now.
    Kill {
        color: Color,
        pid: Pid,
    },
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
    /// Answer a client; [`Answer::Done`] and [`Answer::Failed`] are its last.
    Reply {
        client: ClientId,
        answer: Answer,
    },
    /// A release or rollback ended.
    Ended(Box<Ended>),
    /// Nothing is live: stop listening, so clients are refused, not queued.
    Unlisten,
    /// `Some(color)`: a pause holds new connections on `color`'s sockets
    /// (listening, with a copy of every socket kept outside bgd so that
    /// the queue survives bgd); `None`: the pause ended, drop that copy.
    Hold(Option<Color>),
    /// Tell systemd READY=1 (sent once).
    Ready,
    /// Tell systemd STOPPING=1.
    Stopping,
    Log(Level, String),
    /// Publish a lifecycle event (`bgctl events`, the metrics). For what the
    /// daemon cannot read off the other effects.
    Notify(Notice),
}

/// What the core tells the event feed (`bgctl events`, the metrics)
/// beyond what the daemon reads off the other effects.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Release `release` on `color` stayed healthy for its bake window.
    BakePassed { release: u64, color: Color },
    /// Release `release` on `color` failed during its bake while bgd could
    /// not switch back (`reason` says what failed and why not).
    BakeFailed {
        release: u64,
        color: Color,
        reason: String,
    },
    /// A pause began: new connections wait on `color` (`--max` in ms).
    Paused { color: Color, max_ms: Option<u64> },
    /// The pause stopped the app: no app process runs.
    PauseStopped { color: Color },
    /// The pause lasted `--max`: the page starts (`page`), or bgd warns.
    PauseMax { color: Color, page: bool },
    /// Release `release` on `color` ended the pause after `ms`.
    PauseEnded { release: u64, color: Color, ms: u64 },
}

impl Notice {
    /// Its event's name: `bake_passed`, `bake_failed`, `paused`,
    /// `pause_stopped`, `pause_max`, `pause_ended`.
    pub fn name(&self) -> &'static str {
        match self {
            Notice::BakePassed { .. } => "bake_passed",
            Notice::BakeFailed { .. } => "bake_failed",
            Notice::Paused { .. } => "paused",
            Notice::PauseStopped { .. } => "pause_stopped",
            Notice::PauseMax { .. } => "pause_max",
            Notice::PauseEnded { .. } => "pause_ended",
        }
    }
}

/// The deployment state and its rules. One owner: the daemon's loop.
pub struct Core<P> {
    /// What survives a restart of bgd; written only through effects.
    state: State,
    /// `[traffic]` and `health.failures`, replaced by a reload.
    policy: Policy,
    blue: Slot<P>,
    green: Slot<P>,
    release: Option<Release<P>>,
    /// The canary running beside the live color, if any.
    canary: Option<Canary>,
    /// The live color's bake window, if it runs.
    bake: Option<Bake>,
    shutdown: Shutdown,
    /// What a recorded pause (`state.pause`) needs beyond its record.
    pause: pause::PauseRun,
    /// Draining processes that got their stop signal, and the moment their
    /// drain ends at the latest (`drain_timeout` after it).
    signalled: Vec<(Pid, SystemTime)>,
    /// A rollback waiting for a draining color to be handed back.
    reclaiming: Option<reclaim::Reclaiming>,
    ready_sent: bool,
    next_task: TaskId,
    /// Effects of the input being handled.
    out: Vec<Effect<P>>,
}

impl<P: Process> Core<P> {
    /// A core for the state read at start-up. Nothing runs yet: send
    /// [`Input::Boot`].
    pub fn new(state: State, policy: Policy, now: Now) -> Core<P> {
        Core {
            state,
            policy,
            blue: Slot::new(now.wall),
            green: Slot::new(now.wall),
            release: None,
            canary: None,
            bake: None,
            shutdown: Shutdown::Running,
            pause: pause::PauseRun::default(),
            signalled: Vec::new(),
            reclaiming: None,
            ready_sent: false,
            next_task: FIRST_OTHER_TASK,
            out: Vec::new(),
        }
    }

    /// Applies `input` and returns what to do, in order.
    pub fn handle(&mut self, now: Now, input: Input<P>) -> Vec<Effect<P>> {
        match input {
            Input::Boot => self.boot(now),
            Input::Adopt { color, process } => self.adopt(now, color, process),
            Input::Release {
                source,
                label,
                trigger,
                client,
                canary,
                preview,
                wait_bake,
            } => {
                let ask = admit::Ask {
                    label,
                    trigger,
                    client,
                    canary,
                    preview,
                    wait_bake,
                };
                self.begin_release(now, source, ask)
            }
            Input::Rollback { client, to } => self.begin_rollback(now, client, to),
            Input::Promote { percent, client } => self.promote(now, percent, client),
            Input::Abort { client } => self.abort_canary(now, client, None),
            Input::Checked(c) => self.on_checked(now, c),
            Input::Due => self.on_due(now),
            Input::Task(TaskReport::Progress {
                task,
                step,
                message,
            }) => self.on_progress(now, task, step, message),
            Input::Task(TaskReport::Staged { task, build }) => self.on_staged(task, build),
            Input::Task(TaskReport::Prepared { task, result }) => {
                self.on_prepared(now, task, result)
            }
            Input::Committed(result) => self.on_committed(now, result),
            Input::Drained(d) => self.on_drained(now, d),
            Input::Exited(e) => self.on_exited(now, e),
            Input::RestartDue { color } => self.on_restart_due(now, color),
            Input::Stop => self.on_stop(now),
            Input::Pause(ask) => self.begin_pause(now, ask),
            Input::Resume { client } => self.resume(now, client),
            Input::Signalled { color, pid } => self.on_signalled(now, color, pid),
            Input::Reclaimed { color, process } => self.on_reclaimed(now, color, process),
        }
        self.pause_tick(now);
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

    /// The release id of the standby's build, while one is kept warm.
    pub fn standby_release(&self) -> Option<u64> {
        Color::BOTH
            .into_iter()
            .find(|c| matches!(self.slot(*c).phase, ColorPhase::Standby { .. }))
            .and_then(|c| self.state.build(c))
            .map(|b| b.release)
    }

    /// The pid of the live color's process, if it runs.
    pub fn live_pid(&self) -> Option<Pid> {
        self.state.live.and_then(|c| self.slot(c).pid())
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
        self.take_if(color, |p| matches!(p, ColorPhase::Live { .. }))
    }

    /// Takes the process out of `color` if it is live, a canary or a
    /// standby, like [`take_live`](Self::take_live).
    fn take_running(&mut self, color: Color) -> Option<P> {
        self.take_if(color, |p| p.process().is_some())
    }

    fn take_if(&mut self, color: Color, which: fn(&ColorPhase<P>) -> bool) -> Option<P> {
        let slot = self.slot_mut(color);
        if !which(&slot.phase) {
            return None;
        }
        let checked = slot.phase.checked();
        let process = match std::mem::replace(&mut slot.phase, ColorPhase::Stopped) {
            ColorPhase::Live { process }
            | ColorPhase::Canary { process }
            | ColorPhase::Standby { process, .. } => process,
            other => {
                slot.phase = other;
                return None;
            }
        };
        if checked {
            self.emit(Effect::Unmonitor(color));
        }
        Some(process)
    }

    /// `color` enters `phase` at `at`: its repeated health checks start
    /// when it begins to get new connections and stop when it no longer
    /// does. Returns the phase it leaves.
    fn enter(&mut self, color: Color, phase: ColorPhase<P>, at: SystemTime) -> ColorPhase<P> {
        let checked = |p: &ColorPhase<P>| p.checked().then(|| p.process().map(P::pid)).flatten();
        let (before, after) = (checked(&self.slot(color).phase), checked(&phase));
        let old = self.slot_mut(color).enter(phase, at);
        if before != after {
            if before.is_some() {
                self.emit(Effect::Unmonitor(color));
            }
            if let Some(pid) = after {
                self.slot_mut(color).health = Health::default();
                self.emit(Effect::Monitor { color, pid });
            }
        }
        old
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

    fn reply(&mut self, client: Option<ClientId>, answer: Answer) {
        if let Some(client) = client {
            self.out.push(Effect::Reply { client, answer });
        }
    }

    /// The last answer to `client`: it went well.
    fn done(&mut self, client: Option<ClientId>, outcome: Outcome) {
        self.reply(client, Answer::Done(outcome));
    }

    /// Tells `client` the work it waits for reached `step`.
    fn progress(&mut self, client: Option<ClientId>, step: Step, message: String) {
        self.reply(client, Answer::Progress { step, message });
    }

    fn refuse(&mut self, client: Option<ClientId>, failure: Failure) {
        self.reply(client, Answer::Failed(failure));
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
