//! What a `done` line carries in `result`: one shape per request, typed on
//! both sides. bgd builds it from the core's [`deploy::Outcome`] (and its
//! own answers); bgctl reads it back into the same types.
//!
//! The JSON is protocol version 1's, unchanged: a release, rollback,
//! promotion or abort answers `{"outcome": "released", "release": 7, ...,
//! "ms": {"total": 190, ...}}`; status, releases and history answer their
//! own objects; events without `follow` answer `null`.

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::deploy::compare::Comparison;
use crate::deploy::{self, Record, Timings};
use crate::pipeline::releases::Listing;

use super::{Reply, Status};

/// The `result` of a `done` line. Serialized without a tag of its own:
/// each shape is told apart by its fields (an outcome by its `outcome`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Done {
    /// `release`, `rollback`, `promote`, `abort`, `reexec`.
    Outcome(Outcome),
    /// `status`, `watch`.
    Status(Box<Status>),
    /// `releases`.
    Releases(Listing),
    /// `compare`: both builds' answers, path by path.
    Compare(Box<Comparison>),
    /// `history`: the records, oldest first.
    History(Vec<Record>),
    /// `events` without `follow`: `null`.
    Nothing,
}

/// How a release, rollback, promotion, abort or reexec ended well, named
/// in `"outcome"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Released(Swap),
    RolledBack(Swap),
    Promoted(Swap),
    /// The canary drained; `color` is the canary's.
    Aborted(Swap),
    /// A canary gets `canary` % of new connections.
    Canary(Share),
    /// A new build is ready beside the live one, and only the testers
    /// reach it (`canary` is 0).
    Preview(Share),
    BakePassed {
        release: u64,
        color: Color,
        message: String,
    },
    /// A newer release went live during this one's bake.
    Superseded {
        release: u64,
        message: String,
    },
    /// The canary was promoted by hand while this client waited on it.
    PromotedByHand {
        release: u64,
        message: String,
    },
    /// bgd re-executes its binary in place.
    Reexec {
        message: String,
    },
    /// `pause`: no app process runs; new connections wait on `color`.
    Paused {
        color: Color,
        message: String,
    },
}

/// A swap that ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Swap {
    pub release: u64,
    pub label: Option<String>,
    /// The color that serves `release` (an abort: the canary that drained).
    pub color: Color,
    /// The other color.
    pub previous: Color,
    /// How the other color's process ended, when it drained.
    pub previous_exit: Option<String>,
    /// Set when the old color was killed at `drain_timeout`: the warning.
    pub forced_drain: Option<String>,
    pub ms: SwapMs,
    /// What the log and the history say.
    pub message: String,
}

/// How long a swap's steps took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwapMs {
    /// From the request to the end.
    pub total: u64,
    pub stage: u64,
    pub start: u64,
    pub ready: u64,
    /// From the swap to the old color's stop.
    pub drain: u64,
}

/// A canary's share of new connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Share {
    pub release: u64,
    pub color: Color,
    /// Its share of new connections, in percent.
    pub canary: u8,
    /// The steps that brought it up (`release --canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<StepMs>,
    pub message: String,
}

/// How long the steps before a canary's split took, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepMs {
    pub stage: u64,
    pub start: u64,
    pub ready: u64,
}

impl From<&deploy::Outcome> for Outcome {
    fn from(o: &deploy::Outcome) -> Outcome {
        let message = o.to_string();
        match o {
            deploy::Outcome::Released(s) => Outcome::Released(Swap::from(&**s)),
            deploy::Outcome::RolledBack(s) => Outcome::RolledBack(Swap::from(&**s)),
            deploy::Outcome::Promoted(s) => Outcome::Promoted(Swap::from(&**s)),
            deploy::Outcome::Aborted(s) => Outcome::Aborted(Swap::from(&**s)),
            deploy::Outcome::Canary(c) => Outcome::Canary(Share::of(c, message)),
            deploy::Outcome::Preview(c) => Outcome::Preview(Share::of(c, message)),
            deploy::Outcome::BakePassed { release, color } => Outcome::BakePassed {
                release: *release,
                color: *color,
                message,
            },
            deploy::Outcome::Superseded { release } => Outcome::Superseded {
                release: *release,
                message,
            },
            deploy::Outcome::PromotedByHand { release } => Outcome::PromotedByHand {
                release: *release,
                message,
            },
            deploy::Outcome::Paused { color, .. } => Outcome::Paused {
                color: *color,
                message,
            },
        }
    }
}

impl From<deploy::Answer> for Reply {
    fn from(a: deploy::Answer) -> Reply {
        match a {
            deploy::Answer::Progress { step, message } => Reply::Progress { step, message },
            deploy::Answer::Done(o) => Reply::Done {
                result: Done::Outcome(Outcome::from(&o)),
            },
            deploy::Answer::Failed(f) => Reply::Error(f),
        }
    }
}

impl From<&deploy::Swapped> for Swap {
    fn from(s: &deploy::Swapped) -> Swap {
        let t = s.timings;
        Swap {
            release: s.release,
            label: s.label.clone(),
            color: s.color,
            previous: s.color.other(),
            previous_exit: s.previous_exit.map(|e| e.to_string()),
            forced_drain: s.forced_drain.clone(),
            ms: SwapMs {
                total: s.total_ms,
                stage: t.stage_ms,
                start: t.start_ms,
                ready: t.ready_ms,
                drain: s.drain_ms,
            },
            message: s.message.clone(),
        }
    }
}

impl Share {
    fn of(c: &deploy::CanaryShare, message: String) -> Share {
        Share {
            release: c.release,
            color: c.color,
            canary: c.percent,
            ms: c.timings.map(StepMs::from),
            message,
        }
    }
}

impl From<Timings> for StepMs {
    fn from(t: Timings) -> StepMs {
        StepMs {
            stage: t.stage_ms,
            start: t.start_ms,
            ready: t.ready_ms,
        }
    }
}

impl Outcome {
    /// What bgd said of it.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Released(s)
            | Outcome::RolledBack(s)
            | Outcome::Promoted(s)
            | Outcome::Aborted(s) => &s.message,
            Outcome::Canary(c) | Outcome::Preview(c) => &c.message,
            Outcome::BakePassed { message, .. }
            | Outcome::Superseded { message, .. }
            | Outcome::PromotedByHand { message, .. }
            | Outcome::Paused { message, .. }
            | Outcome::Reexec { message } => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::protocol::{decode_reply, encode, Reply};

    fn side(role: &str) -> crate::deploy::compare::Side {
        crate::deploy::compare::Side {
            role: role.into(),
            color: Color::Green,
            release: Some(2),
            label: None,
        }
    }

    /// Each shape comes back as itself through a `done` line: the
    /// untagged `Done` tells them apart by their fields alone.
    #[test]
    fn every_result_comes_back_as_its_own_shape() {
        let swap = Swap {
            release: 7,
            label: Some("v7".into()),
            color: Color::Green,
            previous: Color::Blue,
            previous_exit: Some("exit code 0".into()),
            forced_drain: None,
            ms: SwapMs::default(),
            message: "release 7 is live on green (190 ms)".into(),
        };
        let listing = Listing {
            releases: Vec::new(),
            keep: 5,
            kept_bytes: 0,
            colors_bytes: 0,
            free_bytes: 1,
        };
        for done in [
            Done::Outcome(Outcome::Released(swap.clone())),
            Done::Outcome(Outcome::Aborted(swap)),
            Done::Outcome(Outcome::Reexec {
                message: "m".into(),
            }),
            Done::Status(Box::new(Status {
                name: "app".into(),
                ..Status::default()
            })),
            Done::Releases(listing),
            Done::Compare(Box::new(Comparison {
                live: side("live"),
                other: side("preview"),
                requests: 5,
                paths: vec![crate::deploy::compare::report("/".into(), &[], &[])],
            })),
            Done::History(Vec::new()),
            Done::Nothing,
        ] {
            let line = encode(&Reply::Done {
                result: done.clone(),
            });
            match decode_reply(&line).unwrap() {
                Reply::Done { result } => assert_eq!(result, done, "{line:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_release_answers_the_version_1_fields() {
        let line = encode(&Reply::Done {
            result: Done::Outcome(Outcome::Released(Swap {
                release: 2,
                label: None,
                color: Color::Green,
                previous: Color::Blue,
                previous_exit: None,
                forced_drain: None,
                ms: SwapMs {
                    total: 9,
                    ..SwapMs::default()
                },
                message: "m".into(),
            })),
        });
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["event"], "done");
        assert_eq!(v["result"]["outcome"], "released");
        assert_eq!(v["result"]["release"], 2);
        assert_eq!(v["result"]["color"], "green");
        assert_eq!(v["result"]["ms"]["total"], 9);
    }
}
