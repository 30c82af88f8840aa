//! Lifecycle events as `bgctl events` carries them.

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::deploy::Step;

/// One lifecycle event, as `bgctl events --json` prints it and
/// `events` replies carry it (the event hub keeps and broadcasts them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Counts from 1 at bgd's start; a gap means a follower missed events.
    pub seq: u64,
    /// When it was published: RFC 3339, UTC, with milliseconds.
    pub at: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// `release` or `rollback`, as in the history.
pub type ReleaseKind = String;

/// What happened. Serialized with its name in `"type"` (`"release_began"`,
/// `"step"`, ...), next to the fields of that variant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A release or rollback was admitted and begins.
    ReleaseBegan {
        release: u64,
        /// `release` or `rollback`.
        kind: ReleaseKind,
        /// `bgctl` or `watch`.
        trigger: String,
        /// The color being started.
        color: Color,
        label: Option<String>,
    },
    /// The release in progress reached `step`.
    Step { release: u64, step: Step },
    /// The new color passed its health checks (`ms` since the release began).
    Ready { release: u64, color: Color, ms: u64 },
    /// The new color is recorded live and receives new connections.
    Swapped {
        release: u64,
        from: Option<Color>,
        to: Color,
    },
    /// A color stopped after its drain (`forced`: killed at `drain_timeout`).
    Drained {
        color: Color,
        pid: u32,
        forced: bool,
    },
    /// A release ended well: `color` serves release `release`.
    Released {
        release: u64,
        trigger: String,
        color: Color,
        /// From the release's start to the old color's stop.
        ms: u64,
        /// How long each step took, in order.
        steps: Vec<StepTook>,
    },
    /// A release or rollback failed at `step`; the old color stays live.
    Failed {
        release: u64,
        /// `release` or `rollback`.
        kind: ReleaseKind,
        trigger: String,
        color: Color,
        step: Option<Step>,
        message: String,
        ms: u64,
        steps: Vec<StepTook>,
    },
    /// An older build is live again: by `bgctl rollback` (`manual`) or by
    /// bgd itself after a bad bake (`automatic`).
    RolledBack {
        release: u64,
        color: Color,
        kind: RollbackKind,
        ms: u64,
        steps: Vec<StepTook>,
    },
    /// The live color's process died (or its restart failed); bgd starts it
    /// again after `delay_ms`. `restarts` counts them for this build.
    Restarting {
        color: Color,
        restarts: u32,
        delay_ms: u64,
        /// How the process ended, or why the last restart failed.
        reason: String,
    },
    /// The live color serves again after a restart.
    Restarted { color: Color, pid: u32 },
    /// bgd took over a color that was already running (issue 13: a new bgd
    /// adopting the app an old one left serving).
    Adopted { color: Color, pid: u32 },
    /// The config file was read again (SIGHUP); `message` says what applied.
    Reloaded { ok: bool, message: String },
    /// The canary `color` now gets `share` (0..1) of new connections, the
    /// other color the rest; `canary_by` says how (`client` or
    /// `connection`), and the `testers` networks reach it too.
    CanaryShare {
        color: Color,
        share: f64,
        #[serde(default)]
        canary_by: String,
        #[serde(default)]
        testers: u32,
    },
    /// Release `release` is ready on `color` and only the clients in the
    /// `testers` networks reach it (`bgctl release --preview`).
    Preview {
        release: u64,
        color: Color,
        testers: u32,
    },
    /// The canary `color` was promoted: it gets every new connection.
    Promoted { release: u64, color: Color },
    /// The canary `color` was stopped; the other color gets every new connection.
    Aborted {
        release: u64,
        color: Color,
        reason: String,
    },
    /// Release `release` on `color` stayed healthy for its bake window.
    BakePassed { release: u64, color: Color },
    /// Release `release` on `color` failed during its bake while bgd could
    /// not switch back (`reason` says what failed and why not); it stays
    /// live.
    BakeFailed {
        release: u64,
        color: Color,
        reason: String,
    },
    /// `bgctl pause`: new connections wait on `color`'s socket, where
    /// nobody accepts (`max_ms`: `--max`).
    Paused { color: Color, max_ms: Option<u64> },
    /// The pause stopped the app: no app process runs.
    PauseStopped { color: Color },
    /// The pause lasted `--max`: the maintenance page starts (`page`), or
    /// there is none and the clients keep waiting.
    PauseMax { color: Color, page: bool },
    /// Release `release` on `color` ended the pause, `ms` after it began.
    PauseEnded { release: u64, color: Color, ms: u64 },
}

/// How a rollback came about; the `kind` label of `bgd_rollbacks_total`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RollbackKind {
    /// `bgctl rollback`.
    Manual,
    /// bgd rolled back by itself (a failed bake or canary).
    Automatic,
}

impl RollbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackKind::Manual => "manual",
            RollbackKind::Automatic => "automatic",
        }
    }
}

/// How long one step of a release took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepTook {
    pub step: Step,
    pub ms: u64,
}

impl EventKind {
    /// The name in `"type"`: `release_began`, `step`, ...
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ReleaseBegan { .. } => "release_began",
            EventKind::Step { .. } => "step",
            EventKind::Ready { .. } => "ready",
            EventKind::Swapped { .. } => "swapped",
            EventKind::Drained { .. } => "drained",
            EventKind::Released { .. } => "released",
            EventKind::Failed { .. } => "failed",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Restarted { .. } => "restarted",
            EventKind::Adopted { .. } => "adopted",
            EventKind::Reloaded { .. } => "reloaded",
            EventKind::CanaryShare { .. } => "canary_share",
            EventKind::Preview { .. } => "preview",
            EventKind::Promoted { .. } => "promoted",
            EventKind::Aborted { .. } => "aborted",
            EventKind::BakePassed { .. } => "bake_passed",
            EventKind::BakeFailed { .. } => "bake_failed",
            EventKind::Paused { .. } => "paused",
            EventKind::PauseStopped { .. } => "pause_stopped",
            EventKind::PauseMax { .. } => "pause_max",
            EventKind::PauseEnded { .. } => "pause_ended",
        }
    }
}
