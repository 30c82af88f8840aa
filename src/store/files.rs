//! Writing bgd's own files so that a torn one costs at most its last
//! change, and saying so when one cannot be read or written.
//!
//! Each file is written whole (temp file, fsync, rename, fsync of the
//! directory), and [`write_keeping_previous`] first keeps the version it
//! replaces as `FILE.prev` (a hard link, so there is never a moment
//! without `FILE`). A reader that finds `FILE` unreadable (cut short by a
//! disk that lost writes, edited by hand) falls back on `FILE.prev`, keeps
//! a copy of the damaged file as `FILE.damaged` for the operator, and
//! leaves a [`Notes`] entry that `bgctl status` shows: nothing is forgotten
//! without a word.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `FILE.prev`: the version of `FILE` before its last write.
pub fn previous(path: &Path) -> PathBuf {
    with_suffix(path, ".prev")
}

/// `FILE.damaged`: a copy of `FILE` as it was when bgd could not read it.
pub fn damaged(path: &Path) -> PathBuf {
    with_suffix(path, ".damaged")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Writes `path` whole, keeping what it held as [`previous`].
pub fn write_keeping_previous(path: &Path, data: &[u8]) -> io::Result<()> {
    let prev = previous(path);
    match fs::remove_file(&prev) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::hard_link(path, &prev) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    crate::store::state::write_atomically(path, data)
}

/// Keeps a copy of the damaged `path` as [`damaged`] (best effort, the
/// newest damage wins); returns the copy's name for the note.
pub fn keep_damaged(path: &Path) -> String {
    let to = damaged(path);
    match fs::copy(path, &to) {
        Ok(_) => format!("a copy of it is {}", to.display()),
        Err(e) => format!("it could not be copied to {} ({e})", to.display()),
    }
}

/// What bgd could not read or write whole of its own files, and what it
/// did about it, by topic (one note per file and kind): `bgctl status`
/// shows them. Shared by the daemon and the writers that run off its loop.
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<BTreeMap<String, String>>>);

impl Notes {
    /// Sets the note on `topic` (replacing one there).
    pub fn set(&self, topic: &str, note: String) {
        tracing::warn!("{note}");
        self.lock().insert(topic.to_string(), note);
    }

    /// Removes the note on `topic`, if any.
    pub fn clear(&self, topic: &str) {
        self.lock().remove(topic);
    }

    /// Every note, by topic.
    pub fn all(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_version_is_kept_and_never_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.json");
        write_keeping_previous(&f, b"1").unwrap();
        assert!(!previous(&f).exists());
        write_keeping_previous(&f, b"2").unwrap();
        write_keeping_previous(&f, b"3").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"3");
        assert_eq!(fs::read(previous(&f)).unwrap(), b"2");
        fs::write(&f, b"torn").unwrap();
        assert!(keep_damaged(&f).contains("x.json.damaged"));
        assert_eq!(fs::read(damaged(&f)).unwrap(), b"torn");
    }
}
