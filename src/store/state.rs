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
use crate::store::layout;

/// Reads the state; a root without one starts empty.
/// Reads the state; a root without one starts empty.
pub fn load(root: &Path) -> anyhow::Result<State> {
    let path = layout::state_file(root);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::empty()),
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

/// Writes the state whole (see [`write_atomically`]).
pub fn save(state: &State, root: &Path) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(state).expect("state serializes infallibly");
    write_atomically(&layout::state_file(root), &data)
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
    use crate::deploy::state::Build;

    #[test]
    fn state_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = load(dir.path()).unwrap();
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
        assert_eq!(load(dir.path()).unwrap(), s);
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
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(e.contains("move it away"), "{e}");
    }
}
