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
use crate::deploy::record::StepTime;
use crate::deploy::state::{Build, State};
use crate::deploy::Exit;
use crate::deploy::Step;

/// What one color is doing.
#[derive(Debug)]
pub enum ColorPhase<P> {
    /// No process runs from it.
    Stopped,
    /// The release in progress is bringing it up; its task owns the process.
    Starting,
    /// It serves, and the core owns its process. During a canary it gets
    /// the share of new connections the canary does not.
    Live { process: P },
    /// A canary: it gets [`Canary::percent`](super::Canary) % of new
    /// connections, the live color the rest.
    Canary { process: P },
    /// The previous live color, kept warm after a swap with no new
    /// connections until `until` (`traffic.standby`): a rollback switches
    /// back to it without starting anything.
    Standby { process: P, until: Instant },
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
            ColorPhase::Canary { .. } => "canary",
            ColorPhase::Standby { .. } => "standby",
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

    /// The process the core owns in this phase (live, canary or standby).
    pub fn process(&self) -> Option<&P> {
        match self {
            ColorPhase::Live { process }
            | ColorPhase::Canary { process }
            | ColorPhase::Standby { process, .. } => Some(process),
            _ => None,
        }
    }

    /// Whether its health is checked every `health.interval`: it gets new
    /// connections.
    pub fn checked(&self) -> bool {
        matches!(self, ColorPhase::Live { .. } | ColorPhase::Canary { .. })
    }
}

/// What the repeated health checks (`health.interval`) say of a color.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Failed checks in a row.
    pub failing: u32,
    /// The last failure, while `failing` > 0.
    pub last: Option<String>,
    /// Whether this streak was already found unhealthy: once per streak,
    /// even when a reload lowers `health.failures` below it.
    pub acted: bool,
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
    /// Its current process's repeated health checks.
    pub health: Health,
}

impl<P: Process> Slot<P> {
    pub(super) fn new(since: SystemTime) -> Slot<P> {
        Slot {
            phase: ColorPhase::Stopped,
            since,
            restarts: 0,
            streak: 0,
            last_exit: None,
            health: Health::default(),
        }
    }

    /// The pid status shows: the live, canary, standby or draining process.
    pub fn pid(&self) -> Option<Pid> {
        match &self.phase {
            ColorPhase::Draining { pid } => Some(*pid),
            phase => phase.process().map(P::pid),
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
    /// bgd itself: the bake window or a canary's checks failed.
    Automatic,
}

impl Trigger {
    /// As the history records it: `bgctl`, `watch` or `automatic`.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Client => "bgctl",
            Trigger::Watch(_) => "watch",
            Trigger::Automatic => "automatic",
        }
    }
}

/// A release stages a new build; a rollback starts what the dormant color
/// holds, or switches back to its standby; a promotion makes a canary
/// live; an abort drains a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Release {
        source: PathBuf,
        trigger: Trigger,
        /// What the dormant color held before this release cleared its
        /// record; put back if the release ends before staging swaps.
        replaced: Option<Build>,
    },
    /// `automatic` says why bgd rolled back by itself. `replaced`: a
    /// rollback that stages a kept copy cleared what the dormant color held
    /// (put back if it ends before staging swaps).
    Rollback {
        automatic: Option<String>,
        replaced: Option<Build>,
    },
    /// `automatic`: the last of `traffic.steps` ran its time.
    Promote { automatic: bool },
    /// `automatic` says why bgd aborted the canary by itself.
    Abort { automatic: Option<String> },
}

impl Kind {
    /// What the dormant color held before this release or rollback
    /// cleared its record to stage into it.
    pub fn replaced(&self) -> Option<&Build> {
        match self {
            Kind::Release { replaced, .. } | Kind::Rollback { replaced, .. } => replaced.as_ref(),
            _ => None,
        }
    }

    /// `release`, `rollback`, `promote` or `abort`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Release { .. } => "release",
            Kind::Rollback { .. } => "rollback",
            Kind::Promote { .. } => "promote",
            Kind::Abort { .. } => "abort",
        }
    }

    pub fn trigger(&self) -> Trigger {
        match self {
            Kind::Release { trigger, .. } => trigger.clone(),
            Kind::Rollback {
                automatic: Some(_), ..
            }
            | Kind::Abort { automatic: Some(_) }
            | Kind::Promote { automatic: true } => Trigger::Automatic,
            _ => Trigger::Client,
        }
    }
}

/// Where the release in progress stands.
#[derive(Debug)]
pub enum ReleasePhase<P> {
    /// A release cleared the dormant color's record and is writing it;
    /// `before` is restored if that fails, and `launch` starts once it is
    /// written (and the standby `evicting`, if any, has drained).
    Admitting {
        before: State,
        launch: Launch,
        evicting: Option<Pid>,
    },
    /// The dormant color still ran as a standby: `launch` starts once its
    /// process `pid` has drained.
    Evicting { pid: Pid, launch: Launch },
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
    /// `--canary PERCENT`: once ready, the new color gets this share of new
    /// connections instead of all of them; 0 for `--preview`: the testers
    /// alone reach it.
    pub canary: Option<u8>,
    /// `--wait-bake`: the client's answer waits until the bake window (and
    /// the canary steps) passed.
    pub wait_bake: bool,
    pub since: SystemTime,
    pub started: Instant,
    /// Each step reached and when, for status and the history.
    pub steps: Vec<StepTime>,
    pub phase: ReleasePhase<P>,
}

impl<P> Release<P> {
    /// What task `task` does to release `id` (with its label) on `color`,
    /// begun at `now` in `phase`, with no canary and no client waiting for
    /// the bake: a rollback, a switch back, an abort.
    pub(super) fn begun(
        now: super::Now,
        task: TaskId,
        (id, label): (u64, Option<String>),
        color: Color,
        kind: Kind,
        client: Option<ClientId>,
        phase: ReleasePhase<P>,
    ) -> Release<P> {
        Release {
            task,
            id,
            color,
            label,
            kind,
            client,
            canary: None,
            wait_bake: false,
            since: now.wall,
            started: now.mono,
            steps: Vec::new(),
            phase,
        }
    }

    /// The step it is at.
    pub fn step(&self) -> Step {
        match self.steps.last() {
            Some(s) => s.step,
            None if !matches!(self.kind, Kind::Release { .. }) => Step::Start,
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
