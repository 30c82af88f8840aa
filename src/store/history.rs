//! The release history: one record per release or rollback, the last
//! `KEEP` (50) of them, in `root/history.json` (written whole, like the state).

use std::path::Path;

pub use crate::deploy::record::{Record, StepTime};
use crate::store::{files, layout};

/// Records kept.
pub(crate) const KEEP: usize = 50;

/// The history as read back: its records, oldest first, and what was
/// wrong with the file, if anything.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Why some records could not be read, and what bgd did; `None` for a
    /// whole file (or none).
    pub note: Option<String>,
}

/// The records, oldest first; a missing file is an empty history. A file
/// cut short (a torn write) gives every record before the cut; with
/// `history.json.prev` (the file before its last append) the longer of the
/// two is used, so at most the last record is lost. The note says what was
/// lost and where a copy of the damaged file is.
pub fn load(root: &Path) -> Loaded {
    let path = layout::history_file(root);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::default(),
        Err(e) => {
            let note = format!(
                "cannot read {} ({e}): `bgctl history` shows nothing until it can",
                path.display()
            );
            return Loaded {
                records: Vec::new(),
                note: Some(note),
            };
        }
    };
    let (records, damage) = parse(&bytes);
    let Some(damage) = damage else {
        return Loaded {
            records,
            note: None,
        };
    };
    let (prev, _) = std::fs::read(files::previous(&path))
        .map(|b| parse(&b))
        .unwrap_or_default();
    let (records, from) = if prev.len() > records.len() {
        (prev, format!(", from {}", files::previous(&path).display()))
    } else {
        (records, String::new())
    };
    let kept = files::keep_damaged(&path);
    let note = format!(
        "{} is damaged ({damage}): {} records were read{from}, the rest is lost; {kept}",
        path.display(),
        records.len()
    );
    Loaded {
        records,
        note: Some(note),
    }
}

/// Reads the records of a history file: all of them, or, from a damaged
/// one, every record before the damage (a record that is JSON but not a
/// record is skipped) and what was wrong.
pub fn parse(bytes: &[u8]) -> (Vec<Record>, Option<String>) {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    struct Collect<'a>(&'a mut Vec<Record>, &'a mut usize);
    impl<'de> DeserializeSeed<'de> for Collect<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Collect<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of release records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(v) = seq.next_element::<serde_json::Value>()? {
                match serde_json::from_value(v) {
                    Ok(r) => self.0.push(r),
                    Err(_) => *self.1 += 1,
                }
            }
            Ok(())
        }
    }
    let (mut records, mut skipped) = (Vec::new(), 0);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = Collect(&mut records, &mut skipped)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    let damage = match (read, skipped) {
        (Ok(()), 0) => None,
        (Ok(()), n) => Some(format!("{n} entries are not release records")),
        (Err(e), 0) => Some(e.to_string()),
        (Err(e), n) => Some(format!("{e}; {n} entries are not release records")),
    };
    (records, damage)
}

/// Appends `record`, keeping the last [`KEEP`]; a damaged file is replaced
/// by what could be read of it, and the note of [`load`] returned. Blocking.
pub(crate) fn append(root: &Path, record: Record) -> (std::io::Result<()>, Option<String>) {
    // One writer at a time: appends run on blocking threads and each is a
    // read-modify-write of the whole file.
    static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let Loaded {
        records: mut all,
        note,
    } = load(root);
    all.push(record);
    let excess = all.len().saturating_sub(KEEP);
    all.drain(..excess);
    let data = serde_json::to_vec_pretty(&all).expect("records serialize infallibly");
    let path = layout::history_file(root);
    // A damaged file is not kept as `.prev`: the one there is readable.
    let written = match note {
        None => files::write_keeping_previous(&path, &data),
        Some(_) => crate::store::state::write_atomically(&path, &data),
    };
    (written, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use crate::deploy::Step;

    fn record(i: u64) -> Record {
        Record {
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
        }
    }

    #[test]
    fn keeps_the_last_records() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(KEEP as u64 + 5) {
            append(dir.path(), record(i)).0.unwrap();
        }
        let all = load(dir.path()).records;
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].release, 5);
        assert_eq!(all.last().unwrap().release, KEEP as u64 + 4);
    }

    /// history.json cut anywhere: at most the last record is lost (the
    /// issue: cut in half, it read as "no releases yet", and the next
    /// release rewrote it with one record).
    #[test]
    fn a_torn_history_loses_at_most_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=7 {
            append(dir.path(), record(i)).0.unwrap();
        }
        let path = layout::history_file(dir.path());
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 1, whole.len() / 3, whole.len() / 2, whole.len() - 2] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let got = load(dir.path());
            let ids: Vec<u64> = got.records.iter().map(|r| r.release).collect();
            assert!(ids.len() >= 6, "cut at {cut}: {ids:?}");
            assert_eq!(ids[..6], [1, 2, 3, 4, 5, 6], "cut at {cut}");
            let note = got.note.expect("the damage is said");
            assert!(
                note.contains("is damaged") && note.contains("the rest is lost"),
                "{note}"
            );
        }
        // The next append keeps what was read.
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let (written, note) = append(dir.path(), record(8));
        written.unwrap();
        assert!(note.is_some());
        let ids: Vec<u64> = load(dir.path()).records.iter().map(|r| r.release).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 8]);
        assert!(dir.path().join("history.json.damaged").exists());
    }

    /// Without a previous version, a torn file still gives every record
    /// before the tear; a record that is not one is skipped.
    #[test]
    fn parse_keeps_what_comes_before_the_damage() {
        let two = serde_json::to_vec(&[record(1), record(2)]).unwrap();
        let (r, e) = parse(&two[..two.len() - 5]);
        assert_eq!(r.len(), 1);
        assert!(e.is_some());
        let mut odd = serde_json::to_value([record(1), record(2)]).unwrap();
        odd.as_array_mut()
            .unwrap()
            .insert(1, serde_json::json!({"x": 1}));
        let (r, e) = parse(&serde_json::to_vec(&odd).unwrap());
        assert_eq!(r.len(), 2);
        assert_eq!(e.as_deref(), Some("1 entries are not release records"));
        assert_eq!(parse(b"[]"), (vec![], None));
    }
}
