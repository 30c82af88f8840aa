//! What the core answers a client that waits for a release, rollback,
//! promotion or abort: typed, so that the words and the figures come from
//! one place. The daemon turns an [`Answer`] into the control protocol's
//! reply (`ops::protocol::Reply`); the core knows no wire format.

use std::fmt;

use crate::color::Color;
use crate::deploy::{Exit, Failure, Step, Timings};

/// One answer to a waiting client; [`Answer::Done`] and [`Answer::Failed`]
/// are its last.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The work it waits for reached `step`.
    Progress { step: Step, message: String },
    /// It went well.
    Done(Outcome),
    /// It was refused, or failed; the live color serves on.
    Failed(Failure),
}

/// How a request the core handled ended well.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A release made its build live and the old color stopped (or went
    /// on standby).
    Released(Box<Swapped>),
    /// An earlier build is live again.
    RolledBack(Box<Swapped>),
    /// A canary became live.
    Promoted(Box<Swapped>),
    /// A canary was drained; the other color gets every new connection.
    Aborted(Box<Swapped>),
    /// A canary gets `percent` % of new connections beside the live color:
    /// `release --canary` once it is ready, or `promote PERCENT`.
    Canary(CanaryShare),
    /// A new build is ready beside the live color, and only the testers
    /// reach it: `release --preview` (its `percent` is 0).
    Preview(CanaryShare),
    /// The live build stayed healthy for its bake window.
    BakePassed { release: u64, color: Color },
    /// A newer release went live during this one's bake.
    Superseded { release: u64 },
    /// The canary this client waited on was promoted by hand: its bake
    /// shows in `bgctl status`.
    PromotedByHand { release: u64 },
    /// `bgctl pause`: no app process runs; new connections wait on
    /// `color`'s socket.
    Paused { color: Color, message: String },
}

/// A swap that ended: which build `color` serves now, what happened to
/// the other color, and how long each step took.
#[derive(Debug, Clone, PartialEq)]
pub struct Swapped {
    pub release: u64,
    pub label: Option<String>,
    /// The color that serves `release` (for an abort: the canary that
    /// drained).
    pub color: Color,
    /// How the other color's process ended, when it drained.
    pub previous_exit: Option<Exit>,
    /// Set when the old color was killed at `drain_timeout`: what to warn.
    pub forced_drain: Option<String>,
    pub timings: Timings,
    /// From the request to the end, in milliseconds.
    pub total_ms: u64,
    /// From the swap to the old color's stop, in milliseconds.
    pub drain_ms: u64,
    /// The line the log and the history got.
    pub message: String,
}

/// A canary's share of new connections, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryShare {
    pub release: u64,
    pub color: Color,
    /// 1 to 99; 0 for a preview.
    pub percent: u8,
    /// The steps that brought it up, for `release --canary`; `None` for a
    /// `promote`.
    pub timings: Option<Timings>,
    pub message: String,
}

impl Outcome {
    /// The swap it ended with, if it was one.
    pub fn swapped(&self) -> Option<&Swapped> {
        match self {
            Outcome::Released(s)
            | Outcome::RolledBack(s)
            | Outcome::Promoted(s)
            | Outcome::Aborted(s) => Some(s),
            _ => None,
        }
    }
}

/// The outcome in words, as the log and bgctl say it.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Released(s)
            | Outcome::RolledBack(s)
            | Outcome::Promoted(s)
            | Outcome::Aborted(s) => f.write_str(&s.message),
            Outcome::Canary(c) | Outcome::Preview(c) => f.write_str(&c.message),
            Outcome::BakePassed { release, color } => {
                write!(f, "release {release} on {color} passed its bake")
            }
            Outcome::Superseded { release } => write!(
                f,
                "release {release} was superseded during its bake: another release is live"
            ),
            Outcome::PromotedByHand { release } => write!(
                f,
                "the canary of release {release} was promoted by hand: `bgctl status` shows its bake"
            ),
            Outcome::Paused { message, .. } => f.write_str(message),
        }
    }
}
