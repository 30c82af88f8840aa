//! What survives a restart of bgd: which color is live and which build each
//! color directory holds, in `root/state.json`, plus the `root/live` symlink.
//!
//! Every write goes to a temp file in the same directory, is fsynced, renamed
//! over the old file, and the directory is fsynced: a crash leaves either
//! the old state or the new one, never a torn file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::layout;

const STATE_VERSION: u32 = 1;

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
    /// Reads the state; a root without one starts empty.
    pub fn load(root: &Path) -> anyhow::Result<State> {
        let path = layout::state_file(root);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    next_release: 1,
                    ..State::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: State = serde_json::from_slice(&text).with_context(|| {
            format!("{} is not valid bgd state; it is only ever replaced whole, so it was edited by hand: fix it or move it away to start with no live color", path.display())
        })?;
        if state.version != STATE_VERSION {
            anyhow::bail!(
                "{} has state version {}, this bgd reads version {STATE_VERSION}",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    pub fn save(&self, root: &Path) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(self).expect("state serializes infallibly");
        write_atomically(&layout::state_file(root), &data)
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

/// Writes `path` whole or not at all.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("state files live in bgd's root");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Points `root/live` at `color` by renaming a new symlink over the old one.
pub fn point_live_symlink(root: &Path, color: Color) -> io::Result<()> {
    let tmp = layout::live_link_tmp(root);
    let _ = fs::remove_file(&tmp);
    // Relative (the color directory's name), so the root may be moved.
    std::os::unix::fs::symlink(color.as_str(), &tmp)?;
    fs::rename(&tmp, layout::live_link(root))?;
    fs::File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::load(dir.path()).unwrap();
        assert_eq!(s.live, None);
        assert_eq!(s.next_release, 1);
        s.live = Some(Color::Green);
        s.set_build(
            Color::Green,
            Some(Build {
                release: 3,
                label: Some("v3".into()),
                source: "/b".into(),
                staged_at: "t".into(),
                went_live: true,
                fingerprint: Some("0123".into()),
            }),
        );
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec!["state.json"]);
    }

    #[test]
    fn corrupt_state_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(layout::state_file(dir.path()), "{").unwrap();
        let e = format!("{:#}", State::load(dir.path()).unwrap_err());
        assert!(e.contains("move it away"), "{e}");
    }
}
