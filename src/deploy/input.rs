//! What the core reacts to: [`Input`], and the one payload type of each
//! subsystem's report (the daemon wraps none of them in types of its own).

use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::Pid;

use super::{ClientId, Failed, TaskId, Timings, Trigger};
use crate::color::Color;
use crate::deploy::state::Build;
use crate::deploy::{Exit, Step, WriteFailed};

/// Everything the core reacts to. Each subsystem's report is one type
/// of its own, which the daemon passes on as it came.
pub enum Input<P> {
    /// bgd started: bring up the color the state says was live (unless it
    /// was adopted).
    Boot,
    /// At start-up, before `Boot`: `color` was still running, left by a
    /// previous bgd (killed, or replaced by `bgctl reexec`), and bgd took
    /// it over (issue 13).
    Adopt { color: Color, process: P },
    /// `bgctl release DIR`, or the build watcher (`Trigger::Watch`).
    Release {
        source: PathBuf,
        label: Option<String>,
        trigger: Trigger,
        client: Option<ClientId>,
        /// `--canary PERCENT` (1 to 99).
        canary: Option<u8>,
        /// `--preview`: once ready, only the testers reach it (issue 23).
        preview: bool,
        /// `--wait-bake`.
        wait_bake: bool,
    },
    /// `bgctl rollback [--to ID|LABEL]`.
    Rollback {
        client: Option<ClientId>,
        /// The kept release to go to; `None`: the standby, else the
        /// previous good release.
        to: Option<String>,
    },
    /// `bgctl promote [PERCENT]`: the canary's share becomes `percent`
    /// (1 to 100), or it becomes live (`None`, or 100).
    Promote {
        percent: Option<u8>,
        client: Option<ClientId>,
    },
    /// `bgctl abort`: the canary gets no more connections and drains.
    Abort { client: Option<ClientId> },
    /// One repeated health check (see [`Effect::Monitor`](super::Effect::Monitor)).
    Checked(Checked),
    /// A moment asked for with [`Effect::WakeAt`] has come (or a later one).
    Due,
    /// A release, rollback or restart task's report.
    Task(TaskReport<P>),
    /// The outcome of the last [`Effect::Commit`]: `Err` says what failed.
    Committed(Result<(), WriteFailed>),
    /// A drain ([`Effect::Drain`]) stopped a color's process.
    Drained(Drained),
    /// A process bgd did not ask to stop exited.
    Exited(Exited),
    /// The wait asked for by [`Effect::RestartAfter`] has passed.
    RestartDue { color: Color },
    /// SIGTERM or SIGINT.
    Stop,
    /// `bgctl pause [--max D] [--page DIR]` (see `pause.rs`).
    Pause(super::PauseAsk),
    /// `bgctl resume`: the build live before the pause serves again.
    Resume { client: Option<ClientId> },
    /// A drain sent its stop signal to `color`'s process `pid`: from now on
    /// it can no longer be switched back to (see `reclaim.rs`).
    Signalled { color: Color, pid: Pid },
    /// The answer to [`Effect::Reclaim`](super::Effect::Reclaim): the
    /// draining process, handed back before its stop signal, or `None`
    /// (it was signalled, or is gone).
    Reclaimed { color: Color, process: Option<P> },
}

/// What a release, rollback or restart task reports, in this order:
/// progress, at most one `Staged`, then exactly one `Prepared` (unless it
/// was aborted). `pipeline::prepare` sends them.
#[derive(Debug)]
pub enum TaskReport<P> {
    /// It reached a step.
    Progress {
        task: TaskId,
        step: Step,
        message: String,
    },
    /// It swapped the new build into its color's directory.
    Staged { task: TaskId, build: Build },
    /// It ended: a ready color, or why not.
    Prepared {
        task: TaskId,
        result: Result<(P, Timings), Failed>,
    },
}

/// A drain stopped the process `pid` of `color`.
#[derive(Debug, Clone, PartialEq)]
pub struct Drained {
    pub color: Color,
    pub pid: Pid,
    pub exit: Exit,
    /// It was still running at the drain deadline (that long) and was
    /// killed, cutting requests in flight.
    pub forced: Option<Duration>,
}

/// A process bgd did not ask to stop exited.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    pub color: Color,
    pub pid: Pid,
    pub exit: Exit,
    /// How long it ran.
    pub uptime: Duration,
    /// Its last lines of output, oldest first.
    pub tail: Vec<String>,
    /// How many other processes of its color still ran when it exited (it
    /// daemonized, or left workers behind).
    pub strays: usize,
}

/// One repeated health check of `color`'s process `pid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub color: Color,
    pub pid: Pid,
    /// `Err` says what failed (`GET /healthz answered 500`).
    pub result: Result<(), String>,
}
