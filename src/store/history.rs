//! The release history: one record per release or rollback, the last
//! `KEEP` (50) of them, in `root/history.json` (written whole, like the state).

use std::path::Path;

pub use crate::deploy::record::{Record, StepTime};
use crate::store::layout;

/// Records kept.
pub(crate) const KEEP: usize = 50;

/// The records, oldest first; a missing or unreadable file is an empty
/// history (it is never needed to run).
pub(crate) fn load(root: &Path) -> Vec<Record> {
    match std::fs::read(layout::history_file(root)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", layout::history_file(root).display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Appends `record`, keeping the last [`KEEP`]. Blocking.
pub(crate) fn append(root: &Path, record: Record) -> std::io::Result<()> {
    // One writer at a time: appends run on blocking threads and each is a
    // read-modify-write of the whole file.
    static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = load(root);
    all.push(record);
    let excess = all.len().saturating_sub(KEEP);
    all.drain(..excess);
    let data = serde_json::to_vec_pretty(&all).expect("records serialize infallibly");
    crate::store::state::write_atomically(&layout::history_file(root), &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use crate::deploy::Step;

    #[test]
    fn keeps_the_last_records() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(KEEP as u64 + 5) {
            let r = Record {
                release: i,
                kind: "release".into(),
                trigger: "bgctl".into(),
                label: None,
                source: Some("/b".into()),
                fingerprint: None,
                color: Color::Blue,
                started: "t".into(),
                finished: "t".into(),
                ok: true,
                result: "ok".into(),
                failed_step: None,
                steps: vec![StepTime {
                    step: Step::Stage,
                    at_ms: 1,
                }],
            };
            append(dir.path(), r).unwrap();
        }
        let all = load(dir.path());
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].release, 5);
        assert_eq!(all.last().unwrap().release, KEEP as u64 + 4);
    }
}
