//! What survives a restart of bgd, as the core sees it: which color is
//! live, which build each color directory holds, and the kept releases.
//! Plain data: `store::state` reads and writes it (`root/state.json`).

use serde::{Deserialize, Serialize};

use crate::color::Color;

/// The version `state.json` carries; a bgd refuses a state of another.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    pub live: Option<Color>,
    /// The id the next release gets.
    pub next_release: u64,
    pub blue: Option<Build>,
    pub green: Option<Build>,
    /// The releases bgd keeps a copy of in `root/releases/<id>` (see
    /// `stage`), and the failed ones it remembers, oldest first. Missing
    /// in a state written before releases were kept: `releases::take_over`
    /// fills it at start.
    #[serde(default)]
    pub releases: Vec<Kept>,
    /// A pause in progress (`bgctl pause`): a bgd that starts while one is
    /// recorded stays paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<crate::deploy::Paused>,
}

/// A release as `root/releases` keeps it: a pristine copy made when it was
/// staged, which no app ever runs in or writes to (a color runs from its own
/// copy of it), or only this record, if it failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    pub release: u64,
    pub label: Option<String>,
    /// The directory it was copied from.
    pub source: String,
    pub fingerprint: Option<String>,
    /// When its kept copy was made (or, if it failed, when it failed);
    /// RFC 3339, UTC.
    pub made: String,
    /// It passed its readiness check and went live once: it can be rolled
    /// back to.
    pub went_live: bool,
    /// Its release failed: its copy is removed, this record stays so that
    /// `bgctl releases` lists it.
    #[serde(default)]
    pub failed: bool,
}

impl Kept {
    /// The record of `build`'s kept copy, made now.
    pub fn of(build: &Build) -> Kept {
        Kept {
            release: build.release,
            label: build.label.clone(),
            source: build.source.clone(),
            fingerprint: build.fingerprint.clone(),
            made: build.staged_at.clone(),
            went_live: build.went_live,
            failed: false,
        }
    }

    /// The record a color gets when this kept copy is staged into it at
    /// `staged_at`.
    pub fn build(&self, staged_at: String) -> Build {
        Build {
            release: self.release,
            label: self.label.clone(),
            source: self.source.clone(),
            staged_at,
            went_live: self.went_live,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// The build a color directory holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Build {
    pub release: u64,
    pub label: Option<String>,
    /// The directory it was copied from.
    pub source: String,
    /// RFC 3339, UTC.
    pub staged_at: String,
    /// Whether this build ever passed its readiness check and went live.
    /// Rollback refuses a build that never did.
    #[serde(default)]
    pub went_live: bool,
    /// The source tree's fingerprint when it was copied (see `fingerprint::Fingerprint`).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl State {
    /// The state of a root bgd has never run in.
    pub fn empty() -> State {
        State {
            version: STATE_VERSION,
            next_release: 1,
            ..State::default()
        }
    }

    pub fn build(&self, c: Color) -> Option<&Build> {
        match c {
            Color::Blue => self.blue.as_ref(),
            Color::Green => self.green.as_ref(),
        }
    }

    /// The kept release `id`, if any.
    pub fn kept(&self, id: u64) -> Option<&Kept> {
        self.releases.iter().find(|k| k.release == id)
    }

    /// The kept release `id`, to change it.
    pub fn kept_mut(&mut self, id: u64) -> Option<&mut Kept> {
        self.releases.iter_mut().find(|k| k.release == id)
    }

    /// `None` records that the color's directory holds no usable build.
    pub fn set_build(&mut self, c: Color, b: Option<Build>) {
        match c {
            Color::Blue => self.blue = b,
            Color::Green => self.green = b,
        }
    }
}
