//! The phases of the deployment, as enums that carry their own data: a
//! state that makes no sense cannot be built. A live color holds its
//! process; a rollback has no source; a release before its swap has no swap
//! time.
//!
//! New phases (standby, canary share, baking, adopted) go here, beside the
//! ones they extend; `ColorPhase::name` is what status shows for each.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use nix::unistd::Pid;

use super::{ClientId, Launch, Process, TaskId, Timings};
use crate::color::Color;
use crate::history::StepTime;
use crate::protocol::Step;
use crate::reaper::Exit;
use crate::state::{Build, State};

/// What one color is doing.
#[derive(Debug)]
pub enum ColorPhase<P> {
    /// No process runs from it.
    Stopped,
    /// The release in progress is bringing it up; its task owns the process.
    Starting,
    /// It serves, and the core owns its process.
    Live { process: P },
    /// It is the live color by the record, but its process died (or bgd
    /// just started): a restart task runs (`task`) or waits for its backoff
    /// (`None`). `failed` says why the last restart failed.
    Restarting {
        task: Option<TaskId>,
        failed: Option<String>,
    },
    /// Its stop signal was sent; a drain owns the process.
    Draining { pid: Pid },
}

impl<P> ColorPhase<P> {
    /// The word status shows: `live`, `starting`, `draining`, `restarting`,
    /// `stopped`, or `empty` for a stopped color that holds no build.
    pub fn name(&self, has_build: bool) -> &'static str {
        match self {
            ColorPhase::Stopped if has_build => "stopped",
            ColorPhase::Stopped => "empty",
            ColorPhase::Starting => "starting",
            ColorPhase::Live { .. } => "live",
            ColorPhase::Restarting { .. } => "restarting",
            ColorPhase::Draining { .. } => "draining",
        }
    }

    /// Why the color is not serving, when status should say so.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ColorPhase::Restarting { failed, .. } => failed.as_deref(),
            _ => None,
        }
    }
}

/// One color as the core sees it.
#[derive(Debug)]
pub struct Slot<P> {
    pub phase: ColorPhase<P>,
    /// When it entered its phase.
    pub since: SystemTime,
    /// Restarts of the build it holds.
    pub restarts: u32,
    /// Restarts since it last ran for `HEALTHY_UPTIME`; sets the backoff.
    pub streak: u32,
    /// How its last process ended.
    pub last_exit: Option<Exit>,
}

impl<P: Process> Slot<P> {
    pub(super) fn new(since: SystemTime) -> Slot<P> {
        Slot {
            phase: ColorPhase::Stopped,
            since,
            restarts: 0,
            streak: 0,
            last_exit: None,
        }
    }

    /// The pid status shows: the live or draining process.
    pub fn pid(&self) -> Option<Pid> {
        match &self.phase {
            ColorPhase::Live { process } => Some(process.pid()),
            ColorPhase::Draining { pid } => Some(*pid),
            _ => None,
        }
    }

    /// Enters `phase` at `at`, returning the phase it leaves.
    pub(super) fn enter(&mut self, phase: ColorPhase<P>, at: SystemTime) -> ColorPhase<P> {
        self.since = at;
        std::mem::replace(&mut self.phase, phase)
    }
}

/// Who asked for a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A client, through the control socket.
    Client,
    /// The build watcher, for the tree with this fingerprint.
    Watch(String),
}

impl Trigger {
    /// As the history records it: `bgctl` or `watch`.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Client => "bgctl",
            Trigger::Watch(_) => "watch",
        }
    }
}

/// A release stages a new build; a rollback starts what the dormant color holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Release {
        source: PathBuf,
        trigger: Trigger,
        /// What the dormant color held before this release cleared its
        /// record; put back if the release ends before staging swaps.
        replaced: Option<Build>,
    },
    Rollback,
}

impl Kind {
    /// `release` or `rollback`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Release { .. } => "release",
            Kind::Rollback => "rollback",
        }
    }

    pub fn trigger(&self) -> Trigger {
        match self {
            Kind::Release { trigger, .. } => trigger.clone(),
            Kind::Rollback => Trigger::Client,
        }
    }
}

/// Where the release in progress stands.
#[derive(Debug)]
pub enum ReleasePhase<P> {
    /// A release cleared the dormant color's record and is writing it;
    /// `before` is restored if that fails, and `launch` starts once it is
    /// written.
    Admitting { before: State, launch: Launch },
    /// Its task validates, stages, starts and waits for readiness.
    /// `staged`: the new build was swapped into the color's directory.
    Preparing { staged: bool },
    /// The new color is ready and the swap is being written; `before` is
    /// restored if that fails.
    Committing {
        process: P,
        timings: Timings,
        before: State,
    },
    /// The new color is live; the old one (`old_pid`) drains.
    Draining {
        timings: Timings,
        swapped: Instant,
        old_pid: Pid,
    },
}

/// The release or rollback in progress; releases never overlap. It lasts
/// until the old color has drained.
#[derive(Debug)]
pub struct Release<P> {
    pub task: TaskId,
    /// The release id of the build being started.
    pub id: u64,
    /// The color being started.
    pub color: Color,
    pub label: Option<String>,
    pub kind: Kind,
    /// Who waits for the outcome.
    pub client: Option<ClientId>,
    pub since: SystemTime,
    pub started: Instant,
    /// Each step reached and when, for status and the history.
    pub steps: Vec<StepTime>,
    pub phase: ReleasePhase<P>,
}

impl<P> Release<P> {
    /// The step it is at.
    pub fn step(&self) -> Step {
        match self.steps.last() {
            Some(s) => s.step,
            None if matches!(self.kind, Kind::Rollback) => Step::Start,
            None => Step::Validate,
        }
    }

    /// Records reaching `step` at `at`, unless it is the current one.
    pub(super) fn reach(&mut self, step: Step, at: Instant) {
        if self.steps.last().is_none_or(|s| s.step != step) {
            let at_ms = at.saturating_duration_since(self.started).as_millis() as u64;
            self.steps.push(StepTime { step, at_ms });
        }
    }
}

/// bgd's own lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// The first stop signal: drain every color, then exit.
    Draining,
    /// The second: every color was killed.
    Killing,
}
