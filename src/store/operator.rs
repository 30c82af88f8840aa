//! `root/operator.json`: what the operator decided about auto-release (the
//! pause, and the tree held back after a failure or a rollback), so that
//! it survives a restart of bgd. Written whole, like the state.

use std::io;
use std::path::Path;

use crate::deploy::auto::Operator;
use crate::store::layout;

/// Reads the operator's decisions; a missing or unreadable file decided
/// nothing (and an unreadable one is logged).
pub fn load(root: &Path) -> Operator {
    let path = layout::operator_file(root);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", path.display());
            Operator::default()
        }),
        Err(_) => Operator::default(),
    }
}

/// Writes the operator's decisions whole. Blocking. The error names the
/// file.
pub fn save(root: &Path, op: &Operator) -> io::Result<()> {
    let path = layout::operator_file(root);
    let data = serde_json::to_vec_pretty(op).expect("operator decisions serialize");
    crate::store::state::write_atomically(&path, &data)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decisions_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Operator::default());
        let op = Operator {
            paused: true,
            hold: Some(("fp".into(), "a rollback made an older build live".into())),
        };
        save(dir.path(), &op).unwrap();
        assert_eq!(load(dir.path()), op);
    }
}
