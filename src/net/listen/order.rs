//! The order of a TCP entry's sockets in its `SO_REUSEPORT` group, kept
//! in `root/run/group.json` for the bgd that takes the sockets back.
//!
//! The steering program picks a socket by its index in the group's array
//! (`SO_ATTACH_REUSEPORT_CBPF`, socket(7)), and the kernel tells no one
//! that array. A socket joins at the end when it listens; one that stops
//! listening is replaced by the last (see `guard.rs`). bgd tracks the
//! array as it changes it, but a bgd that starts with sockets that already
//! listen (from systemd's fd store, a relay or the pause's holder) cannot
//! see how they came to be in that order: after an app shut its socket
//! down and bgd replaced it, green can come before blue (issue 25: bgd
//! never assumes the group's order). So each change is written here, and
//! a bgd that takes the sockets back reads it.
//!
//! The write is a rename of a fresh file, not synced: it must survive
//! bgd's death, not the machine's (after a reboot no socket is left).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{Entry, Inner};
use crate::color::Color;

impl Inner {
    /// Records each group's order if it changed since the last record.
    pub(super) fn save_order(&mut self) {
        let now: Orders = (self.entries.iter())
            .filter_map(|e| match e {
                Entry::Group { order, .. } => Some((e.config().name.clone(), order.clone())),
                _ => None,
            })
            .collect();
        if now == self.saved {
            return;
        }
        if let Some(path) = &self.order_file {
            save(path, &now);
        }
        self.saved = now;
    }
}

/// Each entry's name and its group's order.
pub(super) type Orders = BTreeMap<String, Vec<Color>>;

/// What `path` records; empty if it is missing or unreadable (bgd then
/// assumes blue joined first, as when systemd's sockets are new).
pub(super) fn load(path: &Path) -> Orders {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `orders` to `path` (through `path.tmp` and a rename).
pub(super) fn save(path: &Path, orders: &Orders) {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec(orders).expect("orders serialize");
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::write(&tmp, data))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(
            "cannot record the sockets' order in {}: {e}; a bgd started after this one's death may steer by the wrong index until it is restarted with fresh sockets",
            path.display()
        );
    }
}

/// The order of adopted sockets: `recorded` if it names exactly the
/// colors whose sockets listen, else blue first (systemd's sockets are
/// new, or the record is stale).
pub(super) fn adopted(recorded: Option<&Vec<Color>>, listening: &[Color]) -> Vec<Color> {
    match recorded {
        Some(r) if r.len() == listening.len() && listening.iter().all(|c| r.contains(c)) => {
            r.clone()
        }
        _ => listening.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Color::{Blue, Green};

    #[test]
    fn a_record_that_names_the_listening_sockets_decides_their_order() {
        // (recorded, listening, the order taken)
        type Case = (Option<Vec<Color>>, &'static [Color], &'static [Color]);
        let cases: [Case; 6] = [
            (None, &[Blue, Green], &[Blue, Green]),
            (Some(vec![Green, Blue]), &[Blue, Green], &[Green, Blue]),
            (Some(vec![Green]), &[Green], &[Green]),
            // Stale: it names a socket that does not listen, or misses one.
            (Some(vec![Green, Blue]), &[Green], &[Green]),
            (Some(vec![Green]), &[Blue, Green], &[Blue, Green]),
            (Some(vec![]), &[], &[]),
        ];
        for (recorded, listening, want) in cases {
            assert_eq!(
                adopted(recorded.as_ref(), listening),
                want,
                "{recorded:?} {listening:?}"
            );
        }
    }

    #[test]
    fn what_is_saved_is_loaded_and_a_damaged_file_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/group.json");
        assert!(load(&path).is_empty());
        let orders: Orders = [("http".to_string(), vec![Green, Blue])].into();
        save(&path, &orders);
        assert_eq!(load(&path), orders);
        fs::write(&path, b"{\"http\": [\"gre").unwrap();
        assert!(load(&path).is_empty());
    }
}
