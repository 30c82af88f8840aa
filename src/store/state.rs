//! `root/state.json` and the `root/live` symlink: what survives a restart
//! of bgd (the type is `deploy::state::State`).
//!
//! Every write goes to a temp file in the same directory, is fsynced, renamed
//! over the old file, and the directory is fsynced: a crash leaves either
//! the old state or the new one, never a torn file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;

use crate::color::Color;
use crate::deploy::state::{State, STATE_VERSION};
use crate::store::{files, layout};

/// Reads the state; a root without one starts empty. A `state.json` that
/// cannot be read (cut short, edited by hand) is replaced by the version
/// before its last write (`state.json.prev`): at most that last change is
/// lost, and the returned note says so (`bgctl status` shows it). With
/// neither readable, bgd refuses to start (it would forget which color is
/// live, and could stop the one that serves).
pub fn load(root: &Path) -> anyhow::Result<(State, Option<String>)> {
    let path = layout::state_file(root);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((State::empty(), None)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let damage = match parse(&text) {
        Ok(state) => return Ok((state, None)),
        Err(e) => e,
    };
    let prev = files::previous(&path);
    let prev_text = fs::read(&prev).map_err(|e| e.to_string());
    let state = prev_text
        .clone()
        .and_then(|t| parse(&t))
        .map_err(|why| {
            anyhow::anyhow!(
                "{} cannot be read ({damage}), and neither can {} ({why}): bgd does not start without knowing which color is live. Fix the file, or move both away to start with no live color (the running app is then not adopted)",
                path.display(),
                prev.display()
            )
        })?;
    let kept = files::keep_damaged(&path);
    // Put back, so that the next write keeps a readable `.prev`.
    if let Ok(t) = &prev_text {
        if let Err(e) = write_atomically(&path, t) {
            tracing::warn!("cannot put back {}: {e}", path.display());
        }
    }
    let note = format!(
        "{} could not be read ({damage}): bgd started from {}, the state before its last change, which may be lost; {kept}",
        path.display(),
        prev.display()
    );
    Ok((state, Some(note)))
}

/// Parses `state.json`'s text; the error says what is wrong with it.
pub fn parse(text: &[u8]) -> Result<State, String> {
    let state: State =
        serde_json::from_slice(text).map_err(|e| format!("not valid bgd state: {e}"))?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "state version {}, this bgd reads version {STATE_VERSION}",
            state.version
        ));
    }
    Ok(state)
}

/// Writes the state whole (see [`write_atomically`]).
pub fn save(state: &State, root: &Path) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(state).expect("state serializes infallibly");
    files::write_keeping_previous(&layout::state_file(root), &data)
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

/// The color `root/live` points at, if it is a symlink to one.
pub fn pointed_live(root: &Path) -> Option<Color> {
    let target = fs::read_link(layout::live_link(root)).ok()?;
    Color::BOTH
        .into_iter()
        .find(|c| target.as_os_str() == c.as_str())
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
    use crate::deploy::state::Build;

    #[test]
    fn state_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = load(dir.path()).unwrap().0;
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
        save(&s, dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), (s.clone(), None));
        save(&s, dir.path()).unwrap();
        let mut leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        leftovers.sort();
        assert_eq!(leftovers, vec!["state.json", "state.json.prev"]);
    }

    /// A torn state.json: the state before its last change, said; with
    /// no previous version either, bgd refuses to start.
    #[test]
    fn a_torn_state_falls_back_on_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::empty();
        save(&s, dir.path()).unwrap();
        s.live = Some(Color::Blue);
        s.next_release = 2;
        save(&s, dir.path()).unwrap();
        let whole = fs::read(layout::state_file(dir.path())).unwrap();
        fs::write(layout::state_file(dir.path()), &whole[..whole.len() / 2]).unwrap();
        let (back, _) = load(dir.path()).unwrap();
        assert_eq!(back, State::empty(), "the one before the last write");
        assert_eq!(
            load(dir.path()).unwrap(),
            (State::empty(), None),
            "put back"
        );
        fs::write(layout::state_file(dir.path()), &whole[..whole.len() / 2]).unwrap();
        let note = load(dir.path()).unwrap().1;
        let note = note.unwrap();
        assert!(
            note.contains("could not be read") && note.contains("state.json.prev"),
            "{note}"
        );
        assert!(dir.path().join("state.json.damaged").exists());
        fs::write(files::previous(&layout::state_file(dir.path())), "{").unwrap();
        fs::write(layout::state_file(dir.path()), "{\"vers").unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(
            e.contains("neither can") && e.contains("move both away"),
            "{e}"
        );
    }
}
