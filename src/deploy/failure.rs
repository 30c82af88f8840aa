//! Why a request was refused or a release failed, and the steps of a
//! release: the core decides them, bgctl shows them (its exit code is the
//! kind's, `ops::exit`), and the control protocol carries them as they are.

use serde::{Deserialize, Serialize};

/// The steps of a release, in order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Validate,
    Stage,
    /// `hooks.prepare` in the staged directory.
    Prepare,
    Start,
    WaitReady,
    Swap,
    Drain,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Validate => "validate",
            Step::Stage => "stage",
            Step::Prepare => "prepare",
            Step::Start => "start",
            Step::WaitReady => "wait_ready",
            Step::Swap => "swap",
            Step::Drain => "drain",
        })
    }
}

/// Why a request was refused or a release failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The release step that failed, if a release was running.
    pub step: Option<Step>,
    pub message: String,
    /// The last lines the new color printed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request itself was wrong: bad JSON, unknown command, wrong version,
    /// a build directory that does not exist, nothing to roll back to.
    BadRequest,
    /// Another release is running, or bgd is shutting down.
    Busy,
    /// Copying the build failed (I/O error, disk full), or the state
    /// could not be written because the disk is full.
    Stage,
    /// The new color could not start, exited, or was not ready in time.
    App,
    /// bgd itself failed (could not write its state, ...).
    Internal,
    /// The build changed while it was copied: auto-release stages it
    /// again after the next quiet period; a release by hand is refused.
    Changed,
    /// The peer may not use the control socket.
    Denied,
    /// The build went live (or became a canary) and was then rolled back
    /// or aborted, by bgd during its bake or canary, or by hand
    /// (`bgctl release --wait-bake`).
    RolledBack,
}

/// Why a write of the state ([`Input::Committed`](super::Input::Committed))
/// failed: the error, and whether the disk (or the quota) was full. A full
/// disk is a staging failure for the client (`FailureKind::Stage`, exit 6),
/// as when it fills during the copy; anything else is bgd's own
/// (`FailureKind::Internal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailed {
    pub message: String,
    pub full: bool,
}

impl WriteFailed {
    /// The kind of failure a client is told.
    pub fn kind(&self) -> FailureKind {
        if self.full {
            FailureKind::Stage
        } else {
            FailureKind::Internal
        }
    }
}

impl From<&str> for WriteFailed {
    fn from(message: &str) -> Self {
        WriteFailed {
            message: message.into(),
            full: false,
        }
    }
}

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    pub fn new(kind: FailureKind, step: Option<Step>, message: impl Into<String>) -> Self {
        Failure {
            kind,
            step,
            message: message.into(),
            log_tail: Vec::new(),
        }
    }
}
