//! `root/operator.json`: what the operator decided about auto-release (the
//! pause, and the tree held back after a failure or a rollback), so that
//! it survives a restart of bgd. Written whole, like the state.

use std::io;
use std::path::Path;

use crate::deploy::auto::Operator;
use crate::store::{files, layout};

/// Reads the operator's decisions; a missing file decided nothing. A file
/// that cannot be read (cut short, edited by hand) must not undo a pause:
/// the version before its last write (`operator.json.prev`) gives the
/// hold, and auto-release is paused (the decision that was lost may have
/// been a pause) until `bgctl watch resume`. The note says so.
pub fn load(root: &Path) -> (Operator, Option<String>) {
    let path = layout::operator_file(root);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Operator::default(), None),
        Err(e) => return damaged(root, &e.to_string()),
    };
    match parse(&bytes) {
        Ok(op) => (op, None),
        Err(e) => damaged(root, &e),
    }
}

/// `operator.json`, unreadable for `why`: the previous version's hold,
/// paused.
fn damaged(root: &Path, why: &str) -> (Operator, Option<String>) {
    let path = layout::operator_file(root);
    let prev = std::fs::read(files::previous(&path))
        .ok()
        .and_then(|b| parse(&b).ok())
        .unwrap_or_default();
    let kept = files::keep_damaged(&path);
    let note = format!(
        "{} could not be read ({why}): auto-release is paused until `bgctl watch resume`, since the lost decision may have been a pause; {kept}",
        path.display()
    );
    let op = Operator {
        paused: true,
        ..prev
    };
    // Written as decided, so that the pause also outlives the next start.
    let data = serde_json::to_vec_pretty(&op).expect("operator decisions serialize");
    if let Err(e) = crate::store::state::write_atomically(&path, &data) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
    (op, Some(note))
}

/// Parses `operator.json`'s text.
pub fn parse(bytes: &[u8]) -> Result<Operator, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Writes the operator's decisions whole. Blocking. The error names the
/// file.
pub fn save(root: &Path, op: &Operator) -> io::Result<()> {
    let path = layout::operator_file(root);
    let data = serde_json::to_vec_pretty(op).expect("operator decisions serialize");
    files::write_keeping_previous(&path, &data)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decisions_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), (Operator::default(), None));
        let op = Operator {
            paused: true,
            hold: Some(("fp".into(), "a rollback made an older build live".into())),
        };
        save(dir.path(), &op).unwrap();
        assert_eq!(load(dir.path()), (op, None));
    }

    /// A torn operator.json keeps the hold it had before and pauses.
    #[test]
    fn a_torn_file_pauses_and_keeps_the_previous_hold() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Some(("fp".into(), "held".into()));
        save(
            dir.path(),
            &Operator {
                paused: false,
                hold: hold.clone(),
            },
        )
        .unwrap();
        save(
            dir.path(),
            &Operator {
                paused: false,
                hold: None,
            },
        )
        .unwrap();
        std::fs::write(layout::operator_file(dir.path()), "{\"paus").unwrap();
        let (op, note) = load(dir.path());
        assert_eq!(op, Operator { paused: true, hold });
        assert!(note
            .unwrap()
            .contains("auto-release is paused until `bgctl watch resume`"));
    }
}
