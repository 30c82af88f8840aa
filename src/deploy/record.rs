//! The record of one release, rollback, promotion or abort that ended: the
//! core writes it when it ends; the history (`store::history`) keeps the
//! last 50 and `bgctl history` shows them.

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::deploy::failure::Step;

/// One release, rollback, promotion or abort, as `bgctl history` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The release id (a rollback records the id of the build it restarted).
    pub release: u64,
    /// `release` or `rollback`.
    pub kind: String,
    /// `bgctl` or `watch`.
    pub trigger: String,
    pub label: Option<String>,
    pub source: Option<String>,
    pub fingerprint: Option<String>,
    pub color: Color,
    pub started: String,
    pub finished: String,
    pub ok: bool,
    /// "release 7 is live on green (190 ms)", or what failed.
    pub result: String,
    pub failed_step: Option<Step>,
    /// Each step with the milliseconds from the start at which it began.
    pub steps: Vec<StepTime>,
}

/// A step of a release and when it began.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepTime {
    pub step: Step,
    /// Milliseconds from the release's start.
    pub at_ms: u64,
}
